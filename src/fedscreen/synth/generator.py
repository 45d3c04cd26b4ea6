"""The statistical model behind ``fedscreen synth``: schools, students and their answers.

A county is planned once (schools, locations, staffing, how many students each
school has in each grade); rows are then produced one student at a time, so a
million-row export never sits in memory. Every student's values are a pure
function of (seed, county, profile, school, cohort, index) — the student's identity and
background — and of the academic year for the screening itself. Two effects of
this: any school can be regenerated on its own (``--per-school``), and running the
next academic year with the same seed, county, size and profile keeps the schools
and, for continuing cohorts, the same students under the same student numbers,
which is what the node's cross-year linkage needs.

The screening model follows ``DOMAIN.md`` ("Realistic synthetic data"): a latent
PHQ-9 severity band is drawn from the grade band's shares, with the positive
(≥10) probability scaled by the sex / rural / left-behind / single-parent
multipliers; the PHQ-9 total, item 9, the GAD-7 total, the MHT and the UPI are
drawn conditionally on that band, item answers are built to sum exactly to the
chosen totals, and the warning level and follow-up record are drawn from the
scores.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from operator import truediv
from typing import Final

from fedscreen.errors import ConfigError
from fedscreen.screening import exports
from fedscreen.synth.prng import ONE, Keyed, Stream, cumulative, normal_table, threshold

__all__ = [
    "PROFILES",
    "County",
    "GradeCell",
    "Profile",
    "Row",
    "School",
    "generate",
]

#: one export row: values in the column order of ``exports.SCREENING_COLUMNS`` (or
#: ``exports.SCHOOL_COLUMNS``); codes in English, ``""`` for an empty cell, ints for counts
Row = tuple[str | int, ...]

# --- targets from DOMAIN.md ------------------------------------------------------------

#: PHQ-9 band shares none / mild / moderate / moderately severe / severe, per grade band
PHQ_SHARES: Final = {
    "upper_primary": (0.70, 0.20, 0.06, 0.03, 0.01),
    "junior": (0.55, 0.25, 0.11, 0.06, 0.03),
    "senior": (0.50, 0.27, 0.12, 0.07, 0.04),
    "vocational": (0.52, 0.26, 0.12, 0.06, 0.04),
    "university": (0.62, 0.24, 0.08, 0.04, 0.02),
}
#: PHQ-9 totals of each band (the instrument's cut-offs 5/10/15/20)
PHQ_RANGES: Final = ((0, 4), (5, 9), (10, 14), (15, 19), (20, 27))
#: relative risk of PHQ-9 >= 10
SEX_RISK: Final = {"M": 0.87, "F": 1.15}
RURAL_RISK: Final = 1.15
LEFT_BEHIND_RISK: Final = 1.3
SINGLE_PARENT_RISK: Final = 1.5
#: PHQ-9 item 9 >= 1 share per grade band (the primary figure is moot: PHQ-9 is not
#: given to upper primary, see exports.BAND_INSTRUMENTS)
ITEM9_RATE: Final = {
    "upper_primary": 0.04,
    "junior": 0.08,
    "senior": 0.08,
    "vocational": 0.08,
    "university": 0.06,
}
#: MHT content total >= 65 share per grade band
MHT_OBVIOUS_RATE: Final = {
    "upper_primary": 0.015,
    "junior": 0.05,
    "senior": 0.05,
    "vocational": 0.05,
}
UPI_CLASS_I: Final = 0.08
UPI_CLASS_II: Final = 0.10
#: share of the students of one grade band among a county's screened students: Hebei has
#: ~3.4 M pupils in grades 4-6, 3.1 M junior, 1.8 M senior, 1.05 M vocational, ~0.45 M freshmen
BAND_STUDENT_SHARES: Final = {
    "upper_primary": 0.35,
    "junior": 0.32,
    "senior": 0.18,
    "vocational": 0.11,
    "university": 0.046,
}
MALE_SHARE: Final = 0.51
SINGLE_PARENT_RATE: Final = 0.10
#: left-behind / economic hardship by school location (DOMAIN: ~20% rural, 5% urban; ~8%)
LEFT_BEHIND_RATE: Final = {"urban": 0.05, "town": 0.12, "rural": 0.20}
HARDSHIP_RATE: Final = {"urban": 0.05, "town": 0.08, "rural": 0.11}

# --- the model's own assumptions -------------------------------------------------------

#: grade number: a cohort is the academic start year minus this, constant as it moves up
GRADE_NUMBER: Final = {
    "P4": 4, "P5": 5, "P6": 6, "J7": 7, "J8": 8, "J9": 9, "S10": 10, "S11": 11, "S12": 12,
    "V1": 10, "V2": 11, "V3": 12, "U1": 13,
}  # fmt: skip
#: years older than an on-time pupil (-1, 0, +1, +2): repeaters and late starters
AGE_OFFSET_WEIGHTS: Final = {
    "upper_primary": (0.02, 0.85, 0.11, 0.02),
    "junior": (0.02, 0.84, 0.12, 0.02),
    "senior": (0.02, 0.82, 0.13, 0.03),
    "vocational": (0.01, 0.62, 0.27, 0.10),
    "university": (0.02, 0.63, 0.27, 0.08),
}
#: boarding share by (school type, grade band) and location (urban, town, rural)
BOARDING: Final = {
    ("primary", "upper_primary"): (0.0, 0.05, 0.12),
    ("nine_year", "upper_primary"): (0.0, 0.05, 0.15),
    ("nine_year", "junior"): (0.10, 0.35, 0.55),
    ("junior", "junior"): (0.05, 0.35, 0.55),
    ("complete_secondary", "junior"): (0.10, 0.40, 0.60),
    ("complete_secondary", "senior"): (0.50, 0.80, 0.90),
    ("senior", "senior"): (0.45, 0.80, 0.90),
    ("vocational", "vocational"): (0.60, 0.75, 0.80),
    ("university", "university"): (0.97, 0.97, 0.97),
}
CLASS_SIZE: Final = {
    "upper_primary": 42, "junior": 48, "senior": 52, "vocational": 45, "university": 35,
}  # fmt: skip
#: relative school size by location (village schools are small)
LOCATION_SIZE: Final = {"urban": 1.6, "town": 1.0, "rural": 0.5}
#: shift of a school's staffing chances from the county rate, by location
LOCATION_STAFFING: Final = {"urban": 0.06, "town": 0.0, "rural": -0.08}
#: chance that a school with a mental-health teacher has a full-time one (DOMAIN: 7.4% of
#: teachers full-time in one city)
FULL_TIME_CHANCE: Final = {
    "primary": 0.04, "nine_year": 0.06, "junior": 0.08, "complete_secondary": 0.25,
    "senior": 0.30, "vocational": 0.20,
}  # fmt: skip
#: PHQ-9 within-band weight ratio: lower totals of a band are more common
PHQ_TOTAL_DECAY: Final = (0.85, 0.85, 0.85, 0.85, 0.75)
#: relative chance of item 9 >= 1, of MHT >= 65 and of UPI class I / II by latent PHQ-9 band;
#: scaled per grade band so the overall rates meet the targets above
ITEM9_BY_BAND: Final = (0.01, 0.06, 0.20, 0.35, 0.60)
MHT_BY_BAND: Final = (0.2, 0.8, 2.5, 4.5, 7.0)
UPI_I_BY_BAND: Final = (0.03, 0.08, 0.20, 0.35, 0.50)
UPI_II_BY_BAND: Final = (0.07, 0.13, 0.17, 0.20, 0.20)
#: MHT content total of a student without an obvious problem: mean by grade band, shift by
#: latent band, spread (MHT norms: secondary means around 30 of 90)
MHT_MEAN: Final = {"upper_primary": 24.0, "junior": 30.0, "senior": 31.0, "vocational": 30.0}
MHT_SHIFT: Final = (-4.0, 2.0, 6.0, 9.0, 12.0)
MHT_SD: Final = 10.0
#: MHT lie-scale totals: valid 0..6, invalid 7..10
LIE_VALID_WEIGHTS: Final = (14, 22, 22, 18, 12, 8, 4)
LIE_INVALID_WEIGHTS: Final = (6, 3, 1.5, 0.5)
#: GAD-7 total = a * PHQ-9 total + b + sd * z: correlation ~0.7, >=10 rate ~0.7 x PHQ-9's
GAD_SLOPE: Final = 0.61
GAD_INTERCEPT: Final = 0.8
GAD_SD: Final = 3.5
#: UPI item 25 (suicidal thoughts) "yes" chance with / without PHQ-9 item 9 >= 1 (~1% overall)
UPI_ITEM25: Final = (0.001, 0.14)
#: warning level chances (red, orange, yellow) by risk tier from the scores:
#: 3 = crisis signs (item 9 >= 2, PHQ-9 severe, UPI item 25), 2 = PHQ-9 moderately severe,
#: item 9 = 1, UPI class I, MHT >= 65; 1 = PHQ-9 or GAD-7 >= 10, UPI class II; 0 = none
WARNING_BY_TIER: Final = (
    (0.0, 0.001, 0.012),
    (0.0, 0.03, 0.18),
    (0.01, 0.12, 0.42),
    (0.11, 0.38, 0.30),
)
WARNING_LEVELS: Final = ("none", "yellow", "orange", "red")


@dataclass(frozen=True)
class _FollowUp:
    """How a warning of one colour is followed up."""

    closed: float  # share already lifted by the time of the export
    plan: float  # share with a one-student-one-plan
    interview: float  # share with the second-stage interview done
    delay: tuple[int, int]  # days from screening to the interview
    referred: float
    scheduled: tuple[int, int]  # follow-ups scheduled


FOLLOW_UP: Final = {
    "red": _FollowUp(0.08, 0.95, 1.0, (0, 3), 0.50, (8, 16)),
    "orange": _FollowUp(0.15, 0.85, 0.97, (1, 10), 0.20, (4, 8)),
    "yellow": _FollowUp(0.30, 0.25, 0.85, (3, 30), 0.02, (1, 4)),
}
REFERRAL_VISITED: Final = 0.78
FOLLOW_UP_COMPLETION: Final = (0.80, 0.95)
#: risk-factor chances among warned students; family and economic depend on the flags so
#: that they land near 20% and 15%
RISK_ACADEMIC: Final = 0.60
RISK_FAMILY: Final = (0.15, 0.50)  # (not single-parent, single-parent)
RISK_EMOTIONAL: Final = 0.20
RISK_ECONOMIC: Final = (0.10, 0.60)  # (no hardship, hardship)
RISK_BULLYING: Final = {
    "upper_primary": 0.12, "junior": 0.13, "senior": 0.07, "vocational": 0.09, "university": 0.04,
}  # fmt: skip
RISK_EMPLOYMENT: Final = {"V1": 0.10, "V2": 0.15, "V3": 0.30, "U1": 0.35}
RISK_OTHER: Final = 0.08


# --- county profiles --------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """A kind of county: school mix, where schools are, and how well they are staffed."""

    name: str
    description: str
    #: share of schools of each type (a university is drawn separately)
    school_types: dict[str, float]
    #: per school type, the share of schools in (urban, town, rural) locations
    locations: dict[str, tuple[float, float, float]]
    #: range of the county's share of schools with a mental-health teacher (DOMAIN: 70-100%)
    teacher_rate: tuple[float, float]
    #: range of the county's share of schools with a counselling room
    room_rate: tuple[float, float]
    #: chance that the county hosts a university
    university: float


PROFILES: Final = {
    "mixed": Profile(
        name="mixed",
        description="a county seat with towns and villages (the default)",
        school_types={
            "primary": 0.42, "junior": 0.17, "senior": 0.08, "nine_year": 0.12,
            "complete_secondary": 0.07, "vocational": 0.08,
        },
        locations={
            "primary": (0.20, 0.30, 0.50), "nine_year": (0.10, 0.30, 0.60),
            "junior": (0.30, 0.40, 0.30), "complete_secondary": (0.40, 0.45, 0.15),
            "senior": (0.60, 0.35, 0.05), "vocational": (0.50, 0.45, 0.05),
            "university": (1.0, 0.0, 0.0),
        },
        teacher_rate=(0.80, 0.95),
        room_rate=(0.80, 0.97),
        university=0.3,
    ),
    "urban": Profile(
        name="urban",
        description="a city district: mostly urban schools, well staffed, hosts a university",
        school_types={
            "primary": 0.40, "junior": 0.18, "senior": 0.12, "nine_year": 0.06,
            "complete_secondary": 0.10, "vocational": 0.10,
        },
        locations={
            "primary": (0.75, 0.20, 0.05), "nine_year": (0.50, 0.35, 0.15),
            "junior": (0.80, 0.20, 0.0), "complete_secondary": (0.80, 0.20, 0.0),
            "senior": (0.90, 0.10, 0.0), "vocational": (0.85, 0.15, 0.0),
            "university": (1.0, 0.0, 0.0),
        },
        teacher_rate=(0.92, 1.0),
        room_rate=(0.92, 1.0),
        university=1.0,
    ),
    "rural": Profile(
        name="rural",
        description="a rural county: village schools, more left-behind children, thin staffing",
        school_types={
            "primary": 0.46, "junior": 0.14, "senior": 0.06, "nine_year": 0.18,
            "complete_secondary": 0.06, "vocational": 0.06,
        },
        locations={
            "primary": (0.05, 0.25, 0.70), "nine_year": (0.02, 0.28, 0.70),
            "junior": (0.10, 0.45, 0.45), "complete_secondary": (0.20, 0.60, 0.20),
            "senior": (0.35, 0.60, 0.05), "vocational": (0.30, 0.60, 0.10),
            "university": (1.0, 0.0, 0.0),
        },
        teacher_rate=(0.70, 0.85),
        room_rate=(0.70, 0.88),
        university=0.05,
    ),
}  # fmt: skip

_LOCATIONS: Final = ("urban", "town", "rural")
#: school types whose schools every county has, so every grade band below university appears
_REQUIRED_TYPES: Final = ("primary", "junior", "senior", "vocational")


# --- the plan ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GradeCell:
    """One grade of one school in one academic year."""

    grade: str
    cohort: int  # academic start year minus the grade number: stable as the cohort moves up
    students: int


@dataclass(frozen=True)
class School:
    """A school of the county, with its staffing and this year's students per grade."""

    index: int
    school_id: str
    name: str
    school_type: str
    location: str
    ft_teachers: int
    pt_teachers: int
    counselling_room: bool
    cells: tuple[GradeCell, ...]

    @property
    def students(self) -> int:
        """Rows this school contributes to the screening export."""
        return sum(cell.students for cell in self.cells)


@dataclass(frozen=True)
class County:
    """A planned synthetic county; rows are generated lazily from the plan."""

    code: str
    year: str
    seed: int
    profile: Profile
    schools: tuple[School, ...]

    @property
    def students(self) -> int:
        """Rows of the screening export (one per student)."""
        return sum(school.students for school in self.schools)

    def screenings(self, school: School | None = None) -> Iterator[Row]:
        """Stream the screening export's rows (all schools, or one), in column order."""
        model = _Model(self)
        for each in self.schools if school is None else (school,):
            for cell in each.cells:
                yield from model.cell_rows(each, cell)

    def school_table(self) -> Iterator[Row]:
        """The school table: one row per school and grade, enrolment counted from the students."""
        model = _Model(self)
        for school in self.schools:
            room = "yes" if school.counselling_room else "no"
            for cell in school.cells:
                male = model.count_male(school, cell)
                yield (
                    self.year, school.school_id, school.name, self.code, school.school_type,
                    school.location, cell.grade, male, cell.students - male, cell.students,
                    school.ft_teachers, school.pt_teachers, room,
                )  # fmt: skip


_YEAR = re.compile(r"(\d{4})-(\d{4})")


def generate(county: str, students: int, year: str, seed: int, profile: str = "mixed") -> County:
    """Plan a synthetic county of ``students`` screening rows for academic year ``year``.

    Raises ``ConfigError`` for a malformed county code or year, an unknown profile or a
    non-positive number of students.
    """
    if not (len(county) == 6 and county.isascii() and county.isdigit()):
        raise ConfigError(f"county code must be six digits (GB/T 2260), got {county!r}")
    match = _YEAR.fullmatch(year)
    if not match or int(match[2]) != int(match[1]) + 1:
        raise ConfigError(f"academic year must look like 2024-2025, got {year!r}")
    if students < 1:
        raise ConfigError(f"--students must be at least 1, got {students}")
    if students >= 10**7:
        raise ConfigError("at most 9,999,999 students per county")
    try:
        chosen = PROFILES[profile]
    except KeyError:
        names = ", ".join(sorted(PROFILES))
        raise ConfigError(f"unknown profile {profile!r} (choose from {names})") from None
    schools = _plan(county, students, int(match[1]), seed, chosen)
    return County(code=county, year=year, seed=seed, profile=chosen, schools=schools)


def _school_count(students: int) -> int:
    # ~25 schools for a thousand students up to ~60 for a million; tiny runs get fewer
    if students < 1000:
        return max(5, min(25, math.ceil(students / 40)))
    return round(25 + 35 * min(1.0, math.log10(students / 1000) / 3))


def _allocate(total: int, weights: Sequence[float]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` (largest remainder; ties to the first)."""
    whole = float(sum(weights))
    if whole <= 0:
        return [0] * len(weights)
    exact = [total * w / whole for w in weights]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (counts[i] - exact[i], i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _plan(code: str, students: int, start: int, seed: int, profile: Profile) -> tuple[School, ...]:
    # the plan ignores the year except for the cohorts, so schools stay put across years
    rng = Stream(seed, code, profile.name, "schools")
    n_schools = _school_count(students)
    has_university = rng.chance(profile.university)
    # one school of each required type first, the rest in proportion to the profile's mix
    types = list(profile.school_types)
    spare = n_schools - has_university - len(_REQUIRED_TYPES)
    extra = _allocate(spare, list(profile.school_types.values()))
    counts = {t: (t in _REQUIRED_TYPES) + n for t, n in zip(types, extra, strict=True)}
    kinds = [t for t in types for _ in range(counts[t])] + ["university"] * has_university

    teacher_rate = rng.uniform(*profile.teacher_rate)
    room_rate = rng.uniform(*profile.room_rate)
    drafts: list[tuple[str, str, float]] = []  # (type, location, size weight)
    for kind in kinds:
        location = _LOCATIONS[rng.weighted(profile.locations[kind])]
        drafts.append((kind, location, math.exp(rng.normal(0.0, 0.45)) * LOCATION_SIZE[location]))

    # students: split by grade band first (so the band mix is realistic whatever the school
    # mix), then over the band's (school, grade) cells by school size and cohort size
    bands = [b for b in exports.GRADE_BANDS if b != "university" or has_university]
    band_totals = dict(
        zip(bands, _allocate(students, [BAND_STUDENT_SHARES[b] for b in bands]), strict=True)
    )
    cell_students: dict[tuple[int, str], int] = {}
    for band in bands:
        keys: list[tuple[int, str]] = []
        weights: list[float] = []
        for index, (kind, _, size) in enumerate(drafts):
            for grade in exports.SCHOOL_GRADES[kind]:
                if exports.GRADE_BAND[grade] == band:
                    cohort = start - GRADE_NUMBER[grade]
                    wave = Stream(seed, code, profile.name, "cohort", index, cohort).uniform(
                        0.85, 1.15
                    )
                    keys.append((index, grade))
                    weights.append(size * wave)
        cell_students.update(zip(keys, _allocate(band_totals[band], weights), strict=True))

    names = _SchoolNames(rng)
    schools: list[School] = []
    for index, (kind, location, _) in enumerate(drafts):
        cells = tuple(
            GradeCell(grade, start - GRADE_NUMBER[grade], cell_students[index, grade])
            for grade in exports.SCHOOL_GRADES[kind]
        )
        staffing = LOCATION_STAFFING[location]
        if kind == "university":
            # ratio rule: >= max(2, enrolment / 4000); enrolment ~ 4 cohorts of freshmen.
            # Most universities meet it, some fall one or two short.
            need = max(2, math.ceil(4 * cells[0].students / 4000))
            ft = need if rng.chance(0.75) else max(1, need - 1 - rng.below(2))
            pt, room = rng.integer(2, 6), True
        else:
            ft = pt = 0
            if rng.chance(teacher_rate + staffing):
                if rng.chance(FULL_TIME_CHANCE[kind]):
                    ft = 1 + (
                        kind in ("senior", "complete_secondary", "vocational") and rng.chance(0.2)
                    )
                    pt = rng.below(2)
                else:
                    pt = 1 + rng.weighted((0.6, 0.3, 0.1))
            room = rng.chance(room_rate + staffing)
        schools.append(
            School(
                index=index,
                school_id=f"{code}{index + 1:04d}",
                name=names.name(kind, location),
                school_type=kind,
                location=location,
                ft_teachers=ft,
                pt_teachers=pt,
                counselling_room=room,
                cells=cells,
            )
        )
    return tuple(schools)


_NUMERALS: Final = "一二三四五六七八九"
_STREETS: Final = (
    "东关", "西关", "南街", "北街", "城关", "新华", "永安", "和平", "建设", "胜利",
    "红旗", "光明", "东风", "前进", "兴隆", "太平", "富强", "长青", "德胜", "育才",
)  # fmt: skip
_VILLAGES: Final = (
    "李庄", "王村", "张家营", "高庄", "马头", "柳林", "杨屯", "赵庄", "孙村", "石桥",
    "南皋", "北辛庄", "东王", "西韩", "河头", "大营", "小寨", "宋庄", "于家", "刘固",
)  # fmt: skip
_TOWNS: Final = (
    "东城", "西城", "南关", "北关", "城东", "留营", "固城", "永宁", "白鹤", "青岗",
    "龙泉", "双庙", "新集", "安平", "大屯", "马庄", "庙前", "秦营", "古塔", "沙河",
)  # fmt: skip


def _chinese_number(n: int) -> str:
    if n <= 9:
        return _NUMERALS[n - 1]
    tens, ones = divmod(n, 10)
    return ("" if tens == 1 else _NUMERALS[tens - 1]) + "十" + (_NUMERALS[ones - 1] if ones else "")


class _SchoolNames:
    """Plausible school names: numbered in the county seat, named after the place elsewhere."""

    def __init__(self, rng: Stream) -> None:
        self._rng = rng
        self._numbers: dict[str, int] = {}
        self._used: set[str] = set()

    def _numbered(self, kind: str) -> str:
        self._numbers[kind] = self._numbers.get(kind, 0) + 1
        return "第" + _chinese_number(self._numbers[kind])

    def name(self, kind: str, location: str) -> str:
        rng = self._rng
        place = rng.choice(_VILLAGES if location == "rural" else _TOWNS)
        street = rng.choice(_STREETS)
        if kind == "university":
            name = rng.choice(("燕赵", "冀中", "太行", "渤海")) + rng.choice(
                ("学院", "职业技术学院")
            )
        elif kind == "vocational":
            name = "职业技术教育中心" if location == "urban" else f"{place}职业中学"
        elif kind == "primary":
            name = {
                "urban": f"{street}小学",
                "town": f"{place}镇中心小学",
                "rural": f"{place}小学",
            }[location]
        elif kind == "nine_year":
            name = f"{street if location == 'urban' else place}九年一贯制学校"
        elif kind == "senior":
            name = self._numbered(kind) + "高级中学" if location == "urban" else f"{place}高级中学"
        else:  # junior, complete secondary
            name = self._numbered("secondary") + "中学" if location == "urban" else f"{place}中学"
        # two schools may draw the same place: number the later ones
        unique, n = name, 1
        while unique in self._used:
            n += 1
            unique = f"{name}（{n}）"
        self._used.add(unique)
        return unique


# --- students ---------------------------------------------------------------------------

_SURNAMES: Final = (
    ("王", 7.1), ("李", 7.0), ("张", 6.8), ("刘", 5.4), ("陈", 4.5), ("杨", 3.1), ("赵", 2.3),
    ("黄", 2.2), ("周", 2.1), ("吴", 2.0), ("徐", 1.7), ("孙", 1.5), ("胡", 1.3), ("朱", 1.3),
    ("高", 1.2), ("林", 1.2), ("何", 1.2), ("郭", 1.2), ("马", 1.1), ("罗", 0.9), ("梁", 0.9),
    ("宋", 0.8), ("郑", 0.8), ("谢", 0.7), ("韩", 0.7), ("唐", 0.7), ("冯", 0.6), ("于", 0.6),
    ("董", 0.6), ("田", 0.5),
)  # fmt: skip
_GIVEN_MALE: Final = "浩宇轩子博文俊杰明涛磊鹏昊辰泽睿嘉航铭宁凯伟强晨阳毅然瑞翔豪"
_GIVEN_FEMALE: Final = "欣怡佳雨涵梓琪思婷悦可馨雅琳静蕾萱娜丽晴雪颖彤婉诗茜瑶楠芳妍"
#: GB 11643 ID-number weights and check characters
_ID_WEIGHTS: Final = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK: Final = "10X98765432"


def _digit_sum(digits: str, weights: Sequence[int]) -> int:
    return sum(int(d) * w for d, w in zip(digits, weights, strict=True))


def _surname_table() -> tuple[str, ...]:
    # 256 slots filled by frequency: a surname is one table lookup with a byte
    names = [name for name, _ in _SURNAMES]
    counts = _allocate(256, [weight for _, weight in _SURNAMES])
    return tuple(name for name, count in zip(names, counts, strict=True) for _ in range(count))


_SURNAME_TABLE: Final = _surname_table()
_NORMAL: Final = normal_table(4096)
_SEQ_PART: Final = tuple(_digit_sum(f"{s:03d}", _ID_WEIGHTS[14:]) for s in range(1000))


class _Birth(dict[int, tuple[str, int, int, int]]):
    """Date ordinal -> (YYYYMMDD, year, month * 100 + day, ID-check part), filled on demand."""

    def __missing__(self, ordinal: int) -> tuple[str, int, int, int]:
        day = date.fromordinal(ordinal)
        text = day.strftime("%Y%m%d")
        value = (text, day.year, day.month * 100 + day.day, _digit_sum(text, _ID_WEIGHTS[6:14]))
        self[ordinal] = value
        return value


class _Iso(dict[int, str]):
    """Date ordinal -> ISO date, filled on demand (strftime per row would cost ~1 µs)."""

    def __missing__(self, ordinal: int) -> str:
        text = date.fromordinal(ordinal).isoformat()
        self[ordinal] = text
        return text


_ASCII_DIGITS: Final = bytes((48 + i) % 256 for i in range(256))  # value -> "0".."9"


class _Pool(dict[int, tuple[str, ...]]):
    """Answer strings by total: ``pool[t][i]`` is one of 64 answer patterns summing to ``t``.

    Building item answers per student would dominate the run time, so each instrument
    keeps 64 patterns per total, drawn once per county (items weighted so that some
    are endorsed more often than others), and a student picks one with a random index.
    Item answers are local-only data; the ingest checks and scores them, nobody reads them.
    """

    SIZE: Final = 64

    def __init__(self, seed: int, name: str, weights: Sequence[float], cap: int) -> None:
        super().__init__()
        self._seed, self._name, self._weights, self._cap = seed, name, tuple(weights), cap

    def __missing__(self, total: int) -> tuple[str, ...]:
        # each item has ``cap`` slots; a weighted sample of ``total`` slots without
        # replacement (Efraimidis-Spirakis keys) gives item answers summing to ``total``
        slots = [i for i, _ in enumerate(self._weights) for _ in range(self._cap)]
        slot_weights = [self._weights[i] for i in slots]
        if not 0 <= total <= len(slots):
            raise ValueError(f"{self._name}: total {total} out of 0..{len(slots)}")
        rng = Stream(self._seed, "pool", self._name, total)
        patterns: list[str] = []
        for _ in range(self.SIZE):
            # keys log(u) / w: the largest win; map() keeps the arithmetic in C
            keys = list(map(truediv, map(math.log, rng.floats(len(slots))), slot_weights))
            counts = bytearray(len(self._weights))
            for j in sorted(range(len(slots)), key=keys.__getitem__, reverse=True)[:total]:
                counts[slots[j]] += 1
            patterns.append(counts.translate(_ASCII_DIGITS).decode("ascii"))
        value = tuple(patterns)
        self[total] = value
        return value


#: PHQ-9 items 1-8 (item 9 is drawn on its own): sleep and tiredness are endorsed most
_PHQ_WEIGHTS: Final = (1.0, 1.0, 1.3, 1.4, 0.9, 0.9, 1.1, 0.6)
_GAD_WEIGHTS: Final = (1.2, 1.0, 1.2, 1.0, 0.8, 1.1, 0.8)
#: MHT content items by scale: learning anxiety is the most endorsed scale in Chinese norms
_MHT_WEIGHTS: Final = (
    (1.6,) * 15 + (1.1,) * 10 + (0.8,) * 10 + (1.2,) * 10 + (1.2,) * 10 + (0.9,) * 15
    + (0.8,) * 10 + (0.9,) * 10
)  # fmt: skip
_UPI_AUX: Final = (("000",), ("100", "010", "001"), ("110", "101", "011"), ("111",))


@dataclass(frozen=True)
class _Pools:
    phq: _Pool
    gad: _Pool
    mht: _Pool
    lie: _Pool
    upi: _Pool


@lru_cache(maxsize=8)
def _pools(seed: int) -> _Pools:
    # shared by every model of a seed: building the MHT patterns is the costly part of set-up
    return _Pools(
        phq=_Pool(seed, "phq9", _PHQ_WEIGHTS, 3),
        gad=_Pool(seed, "gad7", _GAD_WEIGHTS, 3),
        mht=_Pool(seed, "mht", _MHT_WEIGHTS, 1),
        lie=_Pool(seed, "mht-lie", (1.0,) * 10, 1),
        upi=_Pool(seed, "upi", (1.0,) * 52, 1),
    )


_MIN_AGE: Final = exports.MIN_AGE
_MAX_AGE: Final = exports.MAX_AGE
_YES_NO: Final = ("no", "yes")  # indexed by a bool
#: risk_factors .. followups_done of a student not screened, or screened and not warned
_NOT_SCREENED: Final = ("",) * 9 + ("none", "none", "", "no", "", "none", 0, 0)
_NO_WARNING: Final = ("", "none", "none", "", "no", "", "none", 0, 0)
_ITEM9_VALUE: Final = cumulative((0.70, 0.30 * 0.65, 0.30 * 0.35))  # 1, 2, 3 given >= 1
_MHT_OBVIOUS_TOTALS: Final = cumulative([0.8**k for k in range(21)])  # 65 .. 85
_LIE_VALID: Final = cumulative(LIE_VALID_WEIGHTS)
_LIE_INVALID: Final = cumulative(LIE_INVALID_WEIGHTS)
_WARNING_CUTS: Final = tuple(
    cumulative((1 - sum(p), p[2], p[1], p[0])) for p in WARNING_BY_TIER
)  # none, yellow, orange, red


class _BandTables:
    """Cuts for one grade band at one kind of location, scaled so the band meets its targets."""

    def __init__(self, band: str, rural: bool, reference: float) -> None:
        shares = PHQ_SHARES[band]
        place = RURAL_RISK if rural else 1.0
        self.latent = [
            _latent_cuts(
                shares,
                SEX_RISK["M" if male else "F"] * place * (LEFT_BEHIND_RISK if lb else 1.0)
                * (SINGLE_PARENT_RISK if sp else 1.0) / reference,
            )
            for male in (False, True) for lb in (False, True) for sp in (False, True)
        ]  # fmt: skip
        self.phq_totals = [
            cumulative([decay**k for k in range(high - low + 1)])
            for (low, high), decay in zip(PHQ_RANGES, PHQ_TOTAL_DECAY, strict=True)
        ]
        self.item9 = _scaled_cuts(ITEM9_RATE[band], shares, ITEM9_BY_BAND)
        self.mht_obvious = _scaled_cuts(MHT_OBVIOUS_RATE.get(band, 0.0), shares, MHT_BY_BAND)
        self.mht_mean = [MHT_MEAN.get(band, 0.0) + shift for shift in MHT_SHIFT]
        one = UPI_CLASS_I / _dot(shares, UPI_I_BY_BAND)
        two = UPI_CLASS_II / _dot(shares, UPI_II_BY_BAND)
        self.upi = [
            cumulative((a * one, b * two, max(0.0, 1 - a * one - b * two)))
            for a, b in zip(UPI_I_BY_BAND, UPI_II_BY_BAND, strict=True)
        ]


def _scaled_cuts(rate: float, shares: Sequence[float], relative: Sequence[float]) -> list[int]:
    """Per latent band, cuts for an event with chances ``relative`` scaled to ``rate`` overall."""
    scale = rate / _dot(shares, relative)
    return [threshold(min(1.0, r * scale)) for r in relative]


class _Model:
    """Everything the row loop needs, precomputed for one county and year."""

    def __init__(self, county: County) -> None:
        self.county = county
        seed, code = county.seed, county.code
        self.start = int(county.year[:4])
        self.year_end = date(self.start + 1, 8, 31).toordinal()
        self.identity = Keyed(seed, code, county.profile.name, "identity")
        self.screening = Keyed(seed, code, county.profile.name, county.year, "screening")
        self.follow_up = Keyed(seed, code, county.profile.name, county.year, "follow-up")
        # student number: an affine bijection of the 12-digit student key, so numbers are
        # unique by construction and look unordered
        scramble = Stream(seed, code, "student-no")
        multiplier = scramble.below(10**12) | 1
        self.sn_mul = multiplier + 2 if multiplier % 5 == 0 else multiplier
        self.sn_add = scramble.below(10**12)
        self.id_area = _digit_sum(code, _ID_WEIGHTS[:6])
        self.births = _Birth()
        self.iso = _Iso()
        self.pools = _pools(seed)
        self.reference = {band: _reference_risk(band) for band in exports.GRADE_BANDS}

    # the per-student key: < 10**12 as long as there are < 1000 schools and < 10**7 per cell
    @staticmethod
    def key(school: School, cell: GradeCell, i: int) -> int:
        return school.index * 10**9 + (cell.cohort % 100) * 10**7 + i

    def count_male(self, school: School, cell: GradeCell) -> int:
        """Male students of a cell: the same draw as in ``cell_rows`` (value 0 of the identity)."""
        values = self.identity.values
        cut = threshold(MALE_SHARE)
        base = self.key(school, cell, 0)
        return sum(values((base + i).to_bytes(8, "little"))[0] < cut for i in range(cell.students))

    def cell_rows(self, school: School, cell: GradeCell) -> Iterator[Row]:
        """The rows of one grade of one school: the hot loop, so its tables are locals."""
        county, grade = self.county, cell.grade
        band, kind, location = exports.GRADE_BAND[grade], school.school_type, school.location
        instruments = exports.BAND_INSTRUMENTS[band]
        has_phq, has_mht, has_upi = (
            "phq9" in instruments,
            "mht" in instruments,
            "upi" in instruments,
        )
        primary = band == "upper_primary"
        # --- this school's screening plan for the year: day(s), mode, turnout, care taken
        sched = Stream(
            county.seed, county.code, county.profile.name, county.year, "schedule", school.index
        )
        main_day, makeups = self._screening_days(sched, kind, grade)
        online_school = sched.chance({"urban": 0.95, "town": 0.85, "rural": 0.6}[location])
        online_cut = threshold(0.97 if online_school else 0.1)
        absent_cut = threshold(sched.uniform(0.01, 0.03))
        refused_cut = absent_cut + threshold(sched.uniform(0.003, 0.012))
        invalid_cut = threshold(sched.uniform(0.02, 0.04))
        makeup_cut = threshold(0.08)
        # --- demographics
        male_cut = threshold(MALE_SHARE)
        boarding_cut = threshold(BOARDING[kind, band][_LOCATIONS.index(location)])
        lb_cut = threshold(0.0 if band == "university" else LEFT_BEHIND_RATE[location])
        sp_cut = threshold(SINGLE_PARENT_RATE)
        hardship_cut = threshold(0.10 if band == "university" else HARDSHIP_RATE[location])
        age_cuts = cumulative(AGE_OFFSET_WEIGHTS[band])
        # an on-time pupil of cohort c started grade 1 in September c+1, aged 6 by 31 August
        birth_base = [date(cell.cohort - 6 - years, 9, 1).toordinal() for years in (-1, 0, 1, 2)]
        n_classes = max(1, math.ceil(cell.students / CLASS_SIZE[band]))
        classes = [f"{grade}-{k + 1:02d}" for k in range(n_classes)]
        # --- instruments: cuts for the latent band by (male, left-behind, single-parent)
        t = _BandTables(band, location == "rural", self.reference[band])
        warn_cuts = _WARNING_CUTS
        # --- bound locals for the loop
        identity, screening = self.identity.values, self.screening.values
        births, iso, normal = self.births, self.iso, _NORMAL
        pools = self.pools
        phq_pool, gad_pool, mht_pool, lie_pool = pools.phq, pools.gad, pools.mht, pools.lie
        sn_mul, sn_add, id_area, code = self.sn_mul, self.sn_add, self.id_area, county.code
        fixed = (code, school.school_id, kind, location, grade)
        academic_year = county.year
        base_key = self.key(school, cell, 0)
        sn_prefix = "G" + code
        for i in range(cell.students):
            key = base_key + i
            kb = key.to_bytes(8, "little")
            # --- who the student is (the same in every year)
            v = identity(kb)
            male = v[0] < male_cut
            lb = v[3] < lb_cut
            sp = v[4] < sp_cut
            hardship = v[5] < hardship_cut
            given = _GIVEN_MALE if male else _GIVEN_FEMALE
            name = _SURNAME_TABLE[v[6] >> 8] + given[v[7] % 30]
            if v[9] < 49152:  # three quarters have two-character given names
                name += given[v[8] % 30]
            born = birth_base[bisect_right(age_cuts, v[1])] + v[10] % 365
            birth, birth_year, birth_md, birth_part = births[born]
            seq = (v[13] % 500) * 2 + male  # GB 11643: the 17th digit is odd for men
            # a deliberately wrong check character: these numbers can never be real ones
            check = _ID_CHECK[(id_area + birth_part + _SEQ_PART[seq] + 1 + v[14] % 10) % 11]
            id_number = f"{code}{birth}{seq:03d}{check}"
            phone = f"12{((v[11] << 16) | v[12]) % 10**9:09d}"  # 12x: no mobile number uses it
            student_no = f"{sn_prefix}{(key * sn_mul + sn_add) % 10**12:012d}"

            # --- this year's screening
            s = screening(kb)
            if s[0] < refused_cut:
                participation = "absent" if s[0] < absent_cut else "refused"
                consent = "yes" if participation == "absent" and s[1] < 52428 else "no"
                day = main_day
            else:
                participation, consent = "screened", "yes"
                day = makeups[s[3] & 3] if s[2] < makeup_cut else main_day
            _, day_year, day_md, _ = births[day]
            age = _clamp(day_year - birth_year - (day_md < birth_md), _MIN_AGE, _MAX_AGE)
            head = (
                student_no, name, id_number, phone, *fixed, classes[i % n_classes],
                "M" if male else "F", age, _YES_NO[v[2] < boarding_cut], _YES_NO[lb], _YES_NO[sp],
                _YES_NO[hardship], academic_year,
            )  # fmt: skip
            if participation != "screened":
                yield (*head, participation, "", "", consent, *_NOT_SCREENED)
                continue

            # latent severity band, then totals drawn within it and items that sum to them
            level = bisect_right(t.latent[male * 4 + lb * 2 + sp], s[5])
            phq_items = gad_items = mht_items = upi_items = ""
            phq_total: int | str = ""
            gad_total: int | str = ""
            mht_total: int | str = ""
            upi_total: int | str = ""
            item9 = phq = gad = 0
            if has_phq:
                phq = PHQ_RANGES[level][0] + bisect_right(t.phq_totals[level], s[6])
                if s[7] < t.item9[level]:
                    item9 = 1 + bisect_right(_ITEM9_VALUE, s[8])
                    phq = max(phq, item9)  # the lowest totals of a band cannot hold a high item 9
                item9 = max(item9, phq - 24)  # items 1-8 hold at most 24
                phq_items, phq_total = phq_pool[phq - item9][s[9] & 63] + str(item9), phq
                gad = _clamp(
                    round(GAD_SLOPE * phq + GAD_INTERCEPT + GAD_SD * normal[s[10] >> 4]), 0, 21
                )
                gad_items, gad_total = gad_pool[gad][s[11] & 63], gad
            obvious = False
            mht = 0
            if has_mht:
                if s[12] < t.mht_obvious[level]:
                    mht = 65 + bisect_right(_MHT_OBVIOUS_TOTALS, s[13])
                else:
                    mht = _clamp(round(t.mht_mean[level] + MHT_SD * normal[s[13] >> 4]), 0, 64)
                if s[15] < invalid_cut:
                    lie = 7 + bisect_right(_LIE_INVALID, s[16])
                else:
                    lie = bisect_right(_LIE_VALID, s[16])
                    obvious = mht >= 65
                mht_items, mht_total = mht_pool[mht][s[14] & 63] + lie_pool[lie][s[17] & 63], mht
            upi_class, item25 = "", False
            if has_upi:
                upi_items, upi_total, upi_class, item25 = self._upi(s, level, item9, t.upi[level])

            # the warning level follows the scores (the second-stage interview decides);
            # primary pupils take only the MHT, so the class teacher's view (latent) counts too
            if primary:
                tier = 3 if level == 4 else 2 if obvious or level == 3 else 1 if mht >= 45 else 0
            elif item9 >= 2 or phq >= 20 or item25:
                tier = 3
            elif phq >= 15 or item9 == 1 or upi_class == "I" or obvious:
                tier = 2
            else:
                tier = 1 if phq >= 10 or gad >= 10 or upi_class == "II" else 0
            warning = WARNING_LEVELS[bisect_right(warn_cuts[tier], s[26])]
            taken = (
                "screened", iso[day], "online" if s[4] < online_cut else "paper", "yes",
                phq_items, phq_total, gad_items, gad_total,
                mht_items, mht_total, upi_items, upi_total,
            )  # fmt: skip
            if warning == "none":
                yield (*head, *taken, *_NO_WARNING)
            else:
                yield (*head, *taken, *self._follow_up(kb, warning, day, band, grade, sp, hardship))

    def _screening_days(self, sched: Stream, kind: str, grade: str) -> tuple[int, list[int]]:
        """A grade's main screening day and four make-up days, on weekdays within the year."""
        start = self.start
        if kind == "university":  # freshmen: after enrolment and military training
            first = date(start, 9, 10).toordinal() + sched.below(35)
        elif sched.chance(0.1):  # some schools screen in spring
            first = date(start + 1, 3, 1).toordinal() + sched.below(75)
        else:
            first = date(start, 9, 15).toordinal() + sched.below(70)
        day = first + exports.SCHOOL_GRADES[kind].index(grade) * sched.below(3)
        days = [_weekday(min(day, self.year_end - 3))]
        for _ in range(4):
            days.append(min(self.year_end, _weekday(days[0] + sched.integer(3, 14))))
        return days[0], days[1:]

    def _upi(
        self, s: tuple[int, ...], level: int, item9: int, cuts: tuple[int, ...]
    ) -> tuple[str, int, str, bool]:
        """UPI answers for a class drawn from the latent band; totals are exact by construction."""
        item25 = s[18] < threshold(UPI_ITEM25[item9 >= 1])
        upi_class = "I" if item25 else ("I", "II", "III")[bisect_right(cuts, s[19])]
        z = _NORMAL[s[21] >> 4]
        reason = s[20] % 100
        specials = [0, 0, 0]  # items 8, 16, 26
        aux = counselling = 0
        if upi_class == "III":
            total = _clamp(round(5 + 2.5 * level + 4 * z), 0, 19)
        elif upi_class == "II":
            if reason < 35:
                total = 20 + s[22] % 5
            else:
                if reason < 75:
                    specials[s[22] % 3] = 1
                else:
                    aux = 1
                total = _clamp(round(8 + 2 * level + 4 * z), 1, 19)
        else:
            if item25:
                total = _clamp(round(16 + 3 * level + 6 * z), 1, 45)
            elif reason < 40:
                total = 25 + _clamp(round(abs(5 * z)), 0, 20)
            elif reason < 65:
                aux = 2 + (s[22] % 4 == 0)
                total = _clamp(round(12 + 2 * level + 6 * z), 0, 40)
            else:
                counselling = 1
                total = _clamp(round(12 + 2 * level + 6 * z), 0, 40)
        others = total - sum(specials) - item25
        if others < 0:
            others, total = 0, total - others
        o = self.pools.upi[others][s[24] & 63]
        lie = s[25]
        lies = ["1" if (lie >> (2 * k)) & 3 == 0 else "0" for k in range(4)]  # each yes 1 in 4
        s8, s16, s26 = map(str, specials)
        items = (
            o[0:4] + lies[0] + o[4:6] + s8 + o[6:13] + s16 + o[13:16] + lies[1] + o[16:20]
            + ("1" if item25 else "0") + s26 + o[20:28] + lies[2] + o[28:42] + lies[3] + o[42:52]
            + _UPI_AUX[aux][s[23] % len(_UPI_AUX[aux])] + str(counselling)
        )  # fmt: skip
        return items, total, upi_class, item25

    def _follow_up(
        self, kb: bytes, warning: str, day: int, band: str, grade: str, sp: bool, hardship: bool
    ) -> tuple[str | int, ...]:
        """risk_factors .. followups_done for a warned student."""
        f = self.follow_up.values(kb)
        rule = FOLLOW_UP[warning]
        factors = [
            name
            for name, p, value in (
                ("academic", RISK_ACADEMIC, f[8]),
                ("employment", RISK_EMPLOYMENT.get(grade, 0.0), f[9]),
                ("economic", RISK_ECONOMIC[hardship], f[10]),
                ("emotional", RISK_EMOTIONAL, f[11]),
                ("family", RISK_FAMILY[sp], f[12]),
                ("bullying", RISK_BULLYING[band], f[13]),
                ("other", RISK_OTHER, f[14]),
            )
            if value < threshold(p)
        ]
        closed = f[0] < threshold(rule.closed)
        plan = ("closed" if closed else "active") if f[1] < threshold(rule.plan) else "none"
        interview = ""
        if f[2] < threshold(rule.interview):
            low, high = rule.delay
            interview = self.iso[min(self.year_end, day + low + f[3] % (high - low + 1))]
        referred = f[4] < threshold(rule.referred)
        visited = ("yes" if f[5] < threshold(REFERRAL_VISITED) else "no") if referred else ""
        low, high = rule.scheduled
        scheduled = low + f[6] % (high - low + 1)
        low_rate, high_rate = FOLLOW_UP_COMPLETION
        done = round(scheduled * (low_rate + (high_rate - low_rate) * f[7] / ONE))
        return (
            ";".join(factors), warning, "closed" if closed else "open", interview,
            "yes" if referred else "no", visited, plan, scheduled, done,
        )  # fmt: skip


def _clamp(x: int, low: int, high: int) -> int:
    return low if x < low else high if x > high else x


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _weekday(ordinal: int) -> int:
    """The ordinal itself, or the next Monday if it falls on a weekend."""
    weekday = date.fromordinal(ordinal).weekday()
    return ordinal + (7 - weekday if weekday >= 5 else 0)


def _latent_cuts(shares: Sequence[float], risk: float) -> tuple[int, ...]:
    """Cuts over the five PHQ-9 bands with the positive share scaled by ``risk``."""
    positive = sum(shares[2:])
    scaled = min(0.9, positive * risk)
    negative = 1.0 - positive
    weights = [shares[0] / negative * (1 - scaled), shares[1] / negative * (1 - scaled)]
    weights += [share / positive * scaled for share in shares[2:]]
    return cumulative(weights)


def _reference_risk(band: str) -> float:
    """Mean risk multiplier of a grade band in the "mixed" reference county.

    Dividing by it keeps the band's PHQ-9 >= 10 rate at its target in a mixed county,
    while rural counties (more rural and left-behind pupils) come out higher, as they should.
    """
    mixed = PROFILES["mixed"]
    weights = dict.fromkeys(_LOCATIONS, 0.0)
    for kind, share in [*mixed.school_types.items(), ("university", 1.0)]:
        if any(exports.GRADE_BAND[g] == band for g in exports.SCHOOL_GRADES[kind]):
            for location, loc_share in zip(_LOCATIONS, mixed.locations[kind], strict=True):
                weights[location] += share * loc_share * LOCATION_SIZE[location]
    sex = MALE_SHARE * SEX_RISK["M"] + (1 - MALE_SHARE) * SEX_RISK["F"]
    single = 1 + SINGLE_PARENT_RATE * (SINGLE_PARENT_RISK - 1)
    place = 0.0
    for location, weight in weights.items():
        lb = 0.0 if band == "university" else LEFT_BEHIND_RATE[location]
        rural = RURAL_RISK if location == "rural" else 1.0
        place += weight * rural * (1 + lb * (LEFT_BEHIND_RISK - 1))
    return sex * single * place / sum(weights.values())
