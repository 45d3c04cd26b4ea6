"""The synthetic county model: determinism, the ingest's constraints, and the target rates."""

from __future__ import annotations

import csv
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import date
from functools import cache
from pathlib import Path

import pytest

import fedscreen.synth
from fedscreen.errors import ConfigError
from fedscreen.screening import exports
from fedscreen.screening.instruments import instruments, parse_items
from fedscreen.synth import County, generate, write_export
from fedscreen.synth._answers import PHQ_SHARES
from fedscreen.synth._roster import GRADE_NUMBER

SCREENING_KEYS = [c.key for c in exports.SCREENING_COLUMNS]
Rows = list[dict[str, str | int]]


def rows_of(county: County) -> Rows:
    return [dict(zip(SCREENING_KEYS, row, strict=True)) for row in county.screenings()]


@cache
def stats_rows(profile: str, seed: int) -> Rows:
    """~20k rows, shared by the statistical tests (generation is the slow part)."""
    return rows_of(generate("130102", 20_000, "2024-2025", seed, profile))


def rate(rows: Rows, hit: Callable[[dict[str, str | int]], bool]) -> float:
    """The share of ``rows`` for which ``hit`` holds."""
    return sum(1 for r in rows if hit(r)) / len(rows)


def at_least(column: str, value: int) -> Callable[[dict[str, str | int]], bool]:
    """A predicate: the (integer, non-empty) column is >= value."""
    return lambda r: r[column] != "" and int(r[column]) >= value


def equals(column: str, value: str) -> Callable[[dict[str, str | int]], bool]:
    return lambda r: r[column] == value


def test_public_api_is_pinned() -> None:
    assert set(fedscreen.synth.__all__) == {
        "PROFILES", "County", "ExportSummary", "GradeCell", "Profile", "Row", "School",
        "WrittenFile", "generate", "generate_university", "write_export", "write_table",
    }  # fmt: skip
    assert all(hasattr(fedscreen.synth, name) for name in fedscreen.synth.__all__)


def test_same_seed_same_county() -> None:
    a = generate("130102", 1500, "2024-2025", 7)
    b = generate("130102", 1500, "2024-2025", 7)
    assert a.schools == b.schools
    assert list(a.screenings()) == list(b.screenings())
    assert list(a.school_table()) == list(b.school_table())


def test_different_seeds_differ() -> None:
    a = rows_of(generate("130102", 1500, "2024-2025", 1))
    b = rows_of(generate("130102", 1500, "2024-2025", 2))
    assert len(a) == len(b) == 1500
    assert {r["student_no"] for r in a}.isdisjoint({r["student_no"] for r in b})
    assert [r["phq9_items"] for r in a] != [r["phq9_items"] for r in b]


def test_rows_match_students_and_schools() -> None:
    county = generate("130102", 4321, "2024-2025", 5)
    assert county.students == sum(1 for _ in county.screenings()) == 4321
    assert 25 <= len(county.schools) <= 60
    for school in county.schools:
        assert tuple(c.grade for c in school.cells) == exports.SCHOOL_GRADES[school.school_type]
        assert sum(1 for _ in county.screenings(school)) == school.students


@pytest.mark.parametrize(
    ("students", "expected"), [(1000, 25), (20_000, 40), (1_000_000, 60), (10, 5)]
)
def test_school_count_grows_with_size(students: int, expected: int) -> None:
    county = generate("130102", students, "2024-2025", 1)
    assert len(county.schools) == expected
    assert county.students == students
    assert {"primary", "junior", "senior", "vocational"} <= {s.school_type for s in county.schools}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("13010", 10, "2024-2025", 1, "mixed"), "six digits"),
        (("130102", 10, "2024-2026", 1, "mixed"), "2024-2025"),
        (("130102", 10, "2024", 1, "mixed"), "2024-2025"),
        (("130102", 0, "2024-2025", 1, "mixed"), "at least 1"),
        (("130102", 10, "2024-2025", 1, "suburb"), "unknown profile"),
    ],
)
def test_bad_arguments_are_config_errors(
    args: tuple[str, int, str, int, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        generate(*args)


# --- the constraints the node's ingest enforces, on rows read back from a real CSV --------


@pytest.mark.parametrize(("profile", "seed"), [("mixed", 11), ("urban", 12), ("rural", 13)])
def test_csv_rows_satisfy_ingest_constraints(tmp_path: Path, profile: str, seed: int) -> None:
    county = generate("130104", 3000, "2025-2026", seed, profile)
    write_export(county, tmp_path)
    with (tmp_path / "screenings.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3000
    first, last = exports.academic_year_bounds("2025-2026")
    scorers = instruments()
    seen: set[str] = set()
    for r in rows:
        assert r["county_code"] == "130104"
        assert r["academic_year"] == "2025-2026"
        assert re.fullmatch(r"G\d{18}", r["student_no"]), r["student_no"]
        assert r["student_no"] not in seen
        seen.add(r["student_no"])
        assert re.fullmatch(r"\d{17}[\dX]", r["id_number"])
        assert re.fullmatch(r"1\d{10}", r["guardian_phone"])
        assert 2 <= len(r["name"]) <= 3
        assert r["grade"] in exports.SCHOOL_GRADES[r["school_type"]]
        assert r["location"] in exports.LOCATIONS
        assert r["sex"] in exports.SEXES
        # on time a pupil of grade g is g+5 or g+6; allow two years either way
        age, number = int(r["age"]), GRADE_NUMBER[r["grade"]]
        assert exports.MIN_AGE <= age <= exports.MAX_AGE
        assert number + 3 <= age <= number + 8, (r["grade"], age)
        for flag in ("boarding", "left_behind", "single_parent", "economic_hardship", "referred"):
            assert r[flag] in exports.YES_NO
        band = exports.GRADE_BAND[r["grade"]]
        screened = r["participation"] == "screened"
        assert r["participation"] in exports.PARTICIPATION
        if screened:
            assert r["consent"] == "yes"
            assert first <= r["screening_date"] <= last
            date.fromisoformat(r["screening_date"])
            assert r["mode"] in exports.MODES
        else:
            assert r["screening_date"] == r["mode"] == ""
            assert r["warning_level"] == "none"
        for code in exports.INSTRUMENTS:
            items, total = r[f"{code}_items"], r[f"{code}_total"]
            if screened and code in exports.BAND_INSTRUMENTS[band]:
                score = scorers[code].score(parse_items(items, scorers[code]))
                assert score.total == int(total), (code, items, total)
            else:
                assert items == total == ""
        warned = r["warning_level"] != "none"
        assert r["warning_level"] in exports.WARNING_LEVELS
        assert (r["warning_status"] == "none") == (not warned)
        if not warned:
            assert r["plan_status"] == "none"
            assert r["interview_date"] == r["risk_factors"] == ""
            assert r["followups_scheduled"] == "0"
        if r["interview_date"]:
            assert r["screening_date"] <= r["interview_date"] <= last
        if r["referred"] == "yes":
            assert r["referral_visited"] in exports.YES_NO
        else:
            assert r["referral_visited"] == ""
        assert 0 <= int(r["followups_done"]) <= int(r["followups_scheduled"])
        factors = [f for f in r["risk_factors"].split(";") if f]
        assert set(factors) <= set(exports.RISK_FACTORS)
        if "employment" in factors:
            assert band in ("vocational", "university")

    # the school table agrees with the students
    with (tmp_path / "schools.csv").open(encoding="utf-8", newline="") as f:
        schools = list(csv.DictReader(f))
    by_cell = Counter((r["school_id"], r["grade"], r["sex"]) for r in rows)
    staffing: dict[str, tuple[str, str, str]] = {}
    cells = set()
    for s in schools:
        assert s["grade"] in exports.SCHOOL_GRADES[s["school_type"]]
        assert (s["school_id"], s["grade"]) not in cells
        cells.add((s["school_id"], s["grade"]))
        assert int(s["enrolled_male"]) == by_cell[s["school_id"], s["grade"], "M"]
        assert int(s["enrolled_female"]) == by_cell[s["school_id"], s["grade"], "F"]
        assert int(s["eligible"]) == int(s["enrolled_male"]) + int(s["enrolled_female"])
        assert s["counselling_room"] in exports.YES_NO
        staff = (s["ft_teachers"], s["pt_teachers"], s["counselling_room"])
        assert staffing.setdefault(s["school_id"], staff) == staff
    assert {(r["school_id"], r["grade"]) for r in rows} <= cells


# --- realism ------------------------------------------------------------------------------


def test_phq9_positive_rate_per_grade_band_meets_target() -> None:
    rows = [r for r in stats_rows("mixed", 21) + stats_rows("urban", 22) if r["phq9_total"] != ""]
    for band, shares in PHQ_SHARES.items():
        if band == "upper_primary":  # PHQ-9 is not given to primary pupils
            continue
        of_band = [r for r in rows if exports.GRADE_BAND[str(r["grade"])] == band]
        target = sum(shares[2:])
        assert len(of_band) > 700
        assert abs(rate(of_band, at_least("phq9_total", 10)) - target) < 0.03, band
        female = [r for r in of_band if r["sex"] == "F"]
        male = [r for r in of_band if r["sex"] == "M"]
        assert rate(female, at_least("phq9_total", 10)) > rate(male, at_least("phq9_total", 10))


def test_secondary_rates_and_correlations() -> None:
    rows = stats_rows("mixed", 21)
    secondary = [r for r in rows if r["phq9_total"] != "" and r["grade"] != "U1"]
    phq = rate(secondary, at_least("phq9_total", 10))
    gad = rate(secondary, at_least("gad7_total", 10))
    assert 0.6 < gad / phq < 0.8
    assert 0.06 < rate(secondary, lambda r: str(r["phq9_items"])[8] != "0") < 0.10
    assert 0.015 < rate(secondary, lambda r: str(r["phq9_items"])[8] in "23") < 0.035
    mht = [r for r in rows if r["mht_total"] != ""]
    primary = [r for r in mht if exports.GRADE_BAND[str(r["grade"])] == "upper_primary"]
    others = [r for r in mht if exports.GRADE_BAND[str(r["grade"])] != "upper_primary"]
    assert 0.035 < rate(others, at_least("mht_total", 65)) < 0.065
    assert 0.007 < rate(primary, at_least("mht_total", 65)) < 0.025
    assert 0.015 < rate(mht, lambda r: str(r["mht_items"])[90:].count("1") >= 7) < 0.045


def test_coverage_warnings_and_follow_up() -> None:
    rows = stats_rows("mixed", 21)
    screened = [r for r in rows if r["participation"] == "screened"]
    assert 0.955 < len(screened) / len(rows) < 0.985
    assert 0.003 < rate(screened, equals("warning_level", "red")) < 0.008
    assert 0.02 < rate(screened, equals("warning_level", "orange")) < 0.04
    assert 0.06 < rate(screened, equals("warning_level", "yellow")) < 0.10
    red = [r for r in screened if r["warning_level"] == "red"]
    orange = [r for r in screened if r["warning_level"] == "orange"]
    assert 0.25 < rate(red, equals("referred", "yes")) < 0.75
    assert 0.12 < rate(orange, equals("referred", "yes")) < 0.28
    warned = [r for r in screened if r["warning_level"] != "none"]
    assert 0.55 < rate(warned, lambda r: "academic" in str(r["risk_factors"])) < 0.65
    done = sum(int(r["followups_done"]) for r in warned)
    assert 0.80 < done / sum(int(r["followups_scheduled"]) for r in warned) < 0.95


def test_demographics() -> None:
    rows = stats_rows("mixed", 21)
    assert 0.49 < rate(rows, equals("sex", "M")) < 0.53
    rural = [r for r in rows if r["location"] == "rural"]
    urban = [r for r in rows if r["location"] == "urban"]
    assert rate(rural, equals("left_behind", "yes")) > 2 * rate(urban, equals("left_behind", "yes"))
    assert 0.08 < rate(rows, equals("single_parent", "yes")) < 0.12
    assert 0.06 < rate(rows, equals("economic_hardship", "yes")) < 0.10

    # risk multipliers show within the county: rural secondary students screen positive more
    def positive(rows: Rows) -> float:
        return rate([r for r in rows if r["phq9_total"] != ""], at_least("phq9_total", 10))

    assert positive(rural) > positive(urban)


def test_university_upi_classes() -> None:
    scorer = instruments()["upi"]
    freshmen = [r for r in stats_rows("urban", 22) if r["upi_items"] != ""]
    classes = Counter(scorer.score(parse_items(str(r["upi_items"]), scorer)).band for r in freshmen)
    assert len(freshmen) > 700
    assert 0.05 < classes["I"] / len(freshmen) < 0.11
    assert 0.07 < classes["II"] / len(freshmen) < 0.13


def test_profiles_shift_locations_and_staffing() -> None:
    def shares(profile: str) -> tuple[float, float]:
        schools = [
            s
            for seed in range(5)
            for s in generate("130102", 5000, "2024-2025", seed, profile).schools
        ]
        rural = sum(s.location == "rural" for s in schools) / len(schools)
        staffed = sum(s.ft_teachers + s.pt_teachers > 0 for s in schools) / len(schools)
        return rural, staffed

    rural_share, rural_staffed = shares("rural")
    urban_share, urban_staffed = shares("urban")
    assert rural_share > urban_share + 0.3
    assert 0.6 < rural_staffed < urban_staffed <= 1.0
    assert all(
        any(
            s.school_type == "university"
            for s in generate("130102", 3000, "2024-2025", seed, "urban").schools
        )
        for seed in range(3)
    )


def test_next_year_keeps_schools_and_continuing_students() -> None:
    this = generate("130102", 3000, "2024-2025", 4)
    nxt = generate("130102", 3000, "2025-2026", 4)
    assert [(s.school_id, s.name) for s in this.schools] == [
        (s.school_id, s.name) for s in nxt.schools
    ]
    before = {r["student_no"]: r for r in rows_of(this)}
    moved = 0
    for r in rows_of(nxt):
        old = before.get(str(r["student_no"]))
        if old is not None:
            moved += 1
            assert (old["name"], old["sex"], old["id_number"]) == (
                r["name"],
                r["sex"],
                r["id_number"],
            )
            assert GRADE_NUMBER[str(r["grade"])] == GRADE_NUMBER[str(old["grade"])] + 1
            assert r["age"] in (old["age"], int(old["age"]) + 1, int(old["age"]) + 2)
    assert moved > 1000  # everyone but the entering grades (and a little churn)


def test_school_table_counts_every_student() -> None:
    county = generate("130102", 2500, "2024-2025", 3)
    table = list(county.school_table())
    assert sum(int(row[9]) for row in table) == 2500
    by_school = defaultdict(set)
    for row in table:
        by_school[row[1]].add(row[6])
    assert len(by_school) == len(county.schools)
