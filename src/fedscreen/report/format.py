"""Readable labels for the report's raw codes, and the report's number formats.

Group values arrive as the codes stored at the nodes (``upper_primary``, ``J7``,
``F``, ``1``…); a reader of a provincial report should see words. Unknown codes
are shown as they are, so a new code never breaks a report, it only looks raw.
"""

from __future__ import annotations

import math
from typing import Final

PROVINCE: Final = "province"
#: what a secure statistic shows where other statistics show cities and counties
SECURE_ONLY: Final = "province only: secure aggregation"
#: what a secure statistic whose release states no figure shows, before the reason
SECURE_FAILED: Final = "no figure: secure aggregation did not complete"

#: column names → table headers
_DIMENSIONS: Final[dict[str, str]] = {
    "grade_band": "Grade band",
    "grade": "Grade",
    "sex": "Sex",
    "warning_level": "Warning level",
    "warning_status": "Warning status",
    "location": "School location",
    "left_behind": "Left-behind",
    "phq9_band": "PHQ-9 severity",
    "gad7_band": "GAD-7 severity",
    "upi_band": "UPI class",
    "academic_year": "Academic year",
    "instrument": "Instrument",
    "school_type": "School type",
    "risk_academic": "Academic pressure",
    "risk_family": "Family change",
    "risk_emotional": "Emotional",
    "risk_economic": "Economic hardship",
    "risk_bullying": "Bullying",
    "has_mh_teacher": "Has a mental-health teacher",
    "counselling_room": "Has a counselling room",
    "meets_teacher_target": "Meets the teacher ratio",
}

_GRADES: Final[dict[str, str]] = {
    **{f"P{n}": f"Grade {n}" for n in (4, 5, 6)},
    **{f"J{n}": f"Grade {n}" for n in (7, 8, 9)},
    **{f"S{n}": f"Grade {n}" for n in (10, 11, 12)},
    **{f"V{n}": f"Vocational {n}" for n in (1, 2, 3)},
    "U1": "University year 1",
}

#: codes whose meaning does not depend on the column, in their natural order
_CODES: Final[dict[str, str]] = {
    "upper_primary": "Upper primary",
    "junior": "Junior secondary",
    "senior": "Senior secondary",
    "vocational": "Vocational",
    "university": "University freshmen",
    **_GRADES,
    "M": "Male",
    "F": "Female",
    "yellow": "Yellow",
    "orange": "Orange",
    "red": "Red",
    "open": "Open",
    "closed": "Closed",
    "urban": "Urban",
    "town": "Town",
    "rural": "Rural",
    "none": "None",
    "mild": "Mild",
    "moderate": "Moderate",
    "moderately_severe": "Moderately severe",
    "severe": "Severe",
    "I": "Class I",
    "II": "Class II",
    "III": "Class III",
    "phq9": "PHQ-9",
    "gad7": "GAD-7",
    "mht": "MHT",
    "upi": "UPI",
}

#: 0/1 columns with their own words; other 0/1 columns read "<column>: yes/no"
_FLAGS: Final[dict[str, tuple[str, str]]] = {
    "left_behind": ("Not left-behind", "Left-behind"),
}

_ORDER: Final[dict[str, int]] = {code: i for i, code in enumerate(_CODES)}


def dimension_label(dim: str) -> str:
    """A column name as a header: known names in words, others with spaces."""
    return _DIMENSIONS.get(dim) or dim.replace("_", " ").strip().capitalize() or dim


def code_label(dim: str, code: str) -> str:
    """One group value in words (unknown codes unchanged)."""
    if code in ("0", "1"):
        no, yes = _FLAGS.get(dim, (f"{dimension_label(dim)}: no", f"{dimension_label(dim)}: yes"))
        return yes if code == "1" else no
    if code in _CODES:
        return _CODES[code]
    # the "flags" form puts the flag's column name in the group
    return _DIMENSIONS.get(code, code)


def code_rank(code: str) -> int | None:
    """Position of a known code in its natural order (grade bands young to old…)."""
    if code in ("0", "1"):
        return int(code)
    return _ORDER.get(code)


def _minus(text: str) -> str:
    # a typographic minus, and never "-0.0"
    return "\u2212" + text[1:] if text.startswith("-") else text


def _plain(value: float, unit: str) -> str:
    if unit in ("percent", "points"):
        # points: a difference of two percentages, in percentage points
        text = f"{value * 100:.1f}"
        return _minus("0.0" if text == "-0.0" else text) + ("%" if unit == "percent" else " pp")
    if unit == "count":
        return _minus(f"{round(value):,}")
    text = f"{value:,.1f}"
    return _minus("0.0" if text == "-0.0" else text)


def format_value(value: float | None, unit: str) -> str:
    """A value as the report prints it: 21.4%, 12,345, 3,512.4; "—" for none."""
    if value is None or not math.isfinite(value):
        return "—"
    text = _plain(value, unit)
    return f"{text} days" if unit == "days" else text


def format_interval(lower: float | None, upper: float | None, unit: str) -> str:
    """A 95% interval as "19.8% – 23.1%" (days said once, at the end)."""
    if lower is None or upper is None or not (math.isfinite(lower) and math.isfinite(upper)):
        return "—"
    text = f"{_plain(lower, unit)} – {_plain(upper, unit)}"
    return f"{text} days" if unit == "days" else text


def format_tick(value: float, unit: str, step: float) -> str:
    """An axis tick with just enough decimals for ``step`` (5%, 2.5%, 0.1%)."""
    scale = 100.0 if unit in ("percent", "points") else 1.0
    decimals = 0
    while decimals < 4 and abs(round(step * scale, decimals) - step * scale) > 1e-9 * scale:
        decimals += 1
    text = _minus(f"{value * scale:,.{decimals}f}")
    if text.lstrip("\u2212").strip("0.,") == "":
        text = "0"
    return text + {"percent": "%", "points": " pp"}.get(unit, "")


def format_epsilon(epsilon: float) -> str:
    """ε with at most three decimals and no float noise (0.1 + 0.2 → 0.3)."""
    return f"{round(epsilon, 3):g}"
