"""The county plan behind ``fedscreen synth``: schools, staffing and students per grade.

Also the students' background rates (sex, left-behind, single-parent, hardship, age,
boarding), which both the rows (``generator``) and the screening model (``_answers``) use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from fedscreen.screening import exports
from fedscreen.synth.prng import Stream

# --- targets from DOMAIN.md ------------------------------------------------------------

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

LOCATIONS: Final = ("urban", "town", "rural")
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
    #: a university's enrolment over all years (its school table's enrolment; the cells
    #: hold only the freshmen it screens); 0: the enrolment is the cells' students
    enrolment: int = 0

    @property
    def students(self) -> int:
        """Rows this school contributes to the screening export."""
        return sum(cell.students for cell in self.cells)


def _school_count(students: int) -> int:
    # ~25 schools for a thousand students up to ~60 for a million; tiny runs get fewer
    if students < 1000:
        return max(5, min(25, math.ceil(students / 40)))
    return round(25 + 35 * min(1.0, math.log10(students / 1000) / 3))


def allocate(total: int, weights: Sequence[float]) -> list[int]:
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


def plan(code: str, students: int, start: int, seed: int, profile: Profile) -> tuple[School, ...]:
    # the plan ignores the year except for the cohorts, so schools stay put across years
    rng = Stream(seed, code, profile.name, "schools")
    n_schools = _school_count(students)
    has_university = rng.chance(profile.university)
    # one school of each required type first, the rest in proportion to the profile's mix
    types = list(profile.school_types)
    spare = n_schools - has_university - len(_REQUIRED_TYPES)
    extra = allocate(spare, list(profile.school_types.values()))
    counts = {t: (t in _REQUIRED_TYPES) + n for t, n in zip(types, extra, strict=True)}
    kinds = [t for t in types for _ in range(counts[t])] + ["university"] * has_university

    teacher_rate = rng.uniform(*profile.teacher_rate)
    room_rate = rng.uniform(*profile.room_rate)
    drafts: list[tuple[str, str, float]] = []  # (type, location, size weight)
    for kind in kinds:
        location = LOCATIONS[rng.weighted(profile.locations[kind])]
        drafts.append((kind, location, math.exp(rng.normal(0.0, 0.45)) * LOCATION_SIZE[location]))

    # students: split by grade band first (so the band mix is realistic whatever the school
    # mix), then over the band's (school, grade) cells by school size and cohort size
    bands = [b for b in exports.GRADE_BANDS if b != "university" or has_university]
    band_totals = dict(
        zip(bands, allocate(students, [BAND_STUDENT_SHARES[b] for b in bands]), strict=True)
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
        cell_students.update(zip(keys, allocate(band_totals[band], weights), strict=True))

    names = _SchoolNames(rng)
    schools: list[School] = []
    for index, (kind, location, _) in enumerate(drafts):
        cells = tuple(
            GradeCell(grade, start - GRADE_NUMBER[grade], cell_students[index, grade])
            for grade in exports.SCHOOL_GRADES[kind]
        )
        staffing = LOCATION_STAFFING[location]
        if kind == "university":
            # enrolment ~ 4 cohorts of freshmen
            ft, pt = university_staffing(rng, 4 * cells[0].students)
            room = True
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


def university_staffing(rng: Stream, enrolment: int) -> tuple[int, int]:
    """Full- and part-time mental-health teachers of a university of ``enrolment``.

    Ratio rule (DOMAIN): >= max(2, enrolment / 4000) full-time. Most universities meet
    it, some fall one or two short.
    """
    need = max(2, math.ceil(enrolment / 4000))
    ft = need if rng.chance(0.75) else max(1, need - 1 - rng.below(2))
    return ft, rng.integer(2, 6)


def plan_university(university_id: str, freshmen: int, start: int, seed: int) -> School:
    """A university that runs its own node: ``freshmen`` U1 students screened this year,
    an enrolment of about four such cohorts, staffed by the ratio rule."""
    rng = Stream(seed, university_id, "university")
    enrolment = round(freshmen * rng.uniform(3.6, 4.4))
    ft, pt = university_staffing(rng, enrolment)
    return School(
        index=0,
        school_id=university_id,
        name=_SchoolNames(rng).name("university", "urban"),
        school_type="university",
        location="urban",
        ft_teachers=ft,
        pt_teachers=pt,
        counselling_room=True,
        cells=(GradeCell("U1", start - GRADE_NUMBER["U1"], freshmen),),
        enrolment=enrolment,
    )


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
