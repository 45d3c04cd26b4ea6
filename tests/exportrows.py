"""Hand-built export rows for tests: one valid row per call, with overrides.

Tests of single validation rules start from a row known to be valid and break
one field, so each failing file fails for exactly the reason under test.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fedscreen.screening import exports

SCREENING_KEYS = [c.key for c in exports.SCREENING_COLUMNS]
SCHOOL_KEYS = [c.key for c in exports.SCHOOL_COLUMNS]


def screening_row(n: int = 1, **overrides: Any) -> dict[str, str]:
    """A valid senior-high screening row for student number ``n``."""
    row = {
        "student_no": f"G{130102200801010000 + n}",
        "name": "张三",
        "id_number": "130102200801010011",
        "guardian_phone": "13800000000",
        "county_code": "130102",
        "school_id": "1301020001",
        "school_type": "senior",
        "location": "urban",
        "grade": "S10",
        "class_id": "S10-3",
        "sex": "F",
        "age": "15",
        "boarding": "no",
        "left_behind": "no",
        "single_parent": "no",
        "economic_hardship": "no",
        "academic_year": "2024-2025",
        "participation": "screened",
        "screening_date": "2024-10-08",
        "mode": "online",
        "consent": "yes",
        "phq9_items": "012100120",  # total 7: mild
        "phq9_total": "7",
        "gad7_items": "0110010",
        "gad7_total": "3",
        "mht_items": "0" * 90 + "1" * 3 + "0" * 7,  # lie 3: valid
        "mht_total": "0",
        "upi_items": "",
        "upi_total": "",
        "risk_factors": "",
        "warning_level": "none",
        "warning_status": "none",
        "interview_date": "",
        "referred": "no",
        "referral_visited": "",
        "plan_status": "none",
        "followups_scheduled": "0",
        "followups_done": "0",
    }
    row.update({k: str(v) for k, v in overrides.items()})
    return row


def school_row(
    school_id: str = "1301020001", grade: str = "S10", **overrides: Any
) -> dict[str, str]:
    """A valid school-table row."""
    row = {
        "academic_year": "2024-2025",
        "school_id": school_id,
        "school_name": "长安区第一中学",
        "county_code": "130102",
        "school_type": "senior",
        "location": "urban",
        "grade": grade,
        "enrolled_male": "210",
        "enrolled_female": "200",
        "eligible": "410",
        "ft_teachers": "1",
        "pt_teachers": "2",
        "counselling_room": "yes",
    }
    row.update({k: str(v) for k, v in overrides.items()})
    return row


def write_csv(
    path: Path,
    rows: Iterable[dict[str, str]],
    *,
    keys: list[str] | None = None,
    encoding: str = "utf-8",
    headers: str = "en",
) -> Path:
    """Write rows as CSV with English or Chinese headers."""
    rows = list(rows)
    keys = keys or (SCREENING_KEYS if "student_no" in rows[0] else SCHOOL_KEYS)
    columns = {c.key: c for c in exports.SCREENING_COLUMNS + exports.SCHOOL_COLUMNS}
    with path.open("w", encoding=encoding, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([columns[k].zh if headers == "zh" else k for k in keys])
        for row in rows:
            writer.writerow([row.get(k, "") for k in keys])
    return path


#: senior-school grades and a plausible age for each
SENIOR_AGES = {"S10": 15, "S11": 16, "S12": 17}
LOCATIONS = ("urban", "town", "rural")


def phq9_items(total: int) -> str:
    """Nine PHQ-9 answers (0-3) adding up to ``total``."""
    out = []
    for _ in range(9):
        digit = min(3, total)
        out.append(str(digit))
        total -= digit
    return "".join(out)


def varied_rows(
    count: int, *, year: str = "2024-2025", first: int = 1, school: str = "1301020001"
) -> list[dict[str, str]]:
    """Senior-school rows spread over grade, sex, location, boarding and PHQ-9 totals;
    every 11th student is absent (no instrument results: NULL totals)."""
    rows = []
    for i in range(count):
        grade = list(SENIOR_AGES)[i % 3]
        values: dict[str, Any] = {
            "academic_year": year,
            "school_id": school,
            "screening_date": f"{year[:4]}-10-08",
            "grade": grade,
            "age": SENIOR_AGES[grade],
            "sex": "MF"[i % 2],
            "location": LOCATIONS[(i // 2) % 3],
            "boarding": "yes" if i % 5 == 0 else "no",
            "phq9_items": phq9_items(i % 28),
            "phq9_total": "",
        }
        if i % 11 == 0:
            values.update(
                participation="absent",
                screening_date="",
                mode="",
                phq9_items="",
                gad7_items="",
                gad7_total="",
                mht_items="",
                mht_total="",
            )
        rows.append(screening_row(first + i, **values))
    return rows
