"""The rows behind ``fedscreen synth``: ``generate`` plans a county, ``County`` streams it.

A county is planned once (schools, locations, staffing, how many students each
school has in each grade: ``_roster``); rows are then produced one student at a time, so a
million-row export never sits in memory. Every student's values are a pure
function of (seed, county, profile, school, cohort, index) — the student's identity and
background — and of the academic year for the screening itself. Two effects of
this: any school can be regenerated on its own (``--per-school``), and running the
next academic year with the same seed, county, size and profile keeps the schools
and, for continuing cohorts, the same students under the same student numbers,
which is what the node's cross-year linkage needs. The screening answers, warning
levels and follow-up records are drawn from the model in ``_answers``.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import date
from typing import Final

from fedscreen.errors import ConfigError
from fedscreen.screening import exports
from fedscreen.synth._answers import (
    GAD_INTERCEPT,
    GAD_SD,
    GAD_SLOPE,
    ITEM9_VALUE,
    LIE_INVALID,
    LIE_VALID,
    MHT_OBVIOUS_TOTALS,
    MHT_SD,
    NORMAL,
    PHQ_RANGES,
    WARNING_CUTS,
    WARNING_LEVELS,
    BandTables,
    answer_pools,
    clamp,
    follow_up,
    reference_risk,
    upi_answers,
)
from fedscreen.synth._roster import (
    AGE_OFFSET_WEIGHTS,
    BOARDING,
    CLASS_SIZE,
    HARDSHIP_RATE,
    LEFT_BEHIND_RATE,
    LOCATIONS,
    MALE_SHARE,
    PROFILES,
    SINGLE_PARENT_RATE,
    GradeCell,
    Profile,
    School,
    allocate,
    plan,
    plan_university,
)
from fedscreen.synth.prng import Keyed, Stream, cumulative, threshold

__all__ = [
    "PROFILES",
    "County",
    "GradeCell",
    "Profile",
    "Row",
    "School",
    "generate",
    "generate_university",
]

#: one export row: values in the column order of ``exports.SCREENING_COLUMNS`` (or
#: ``exports.SCHOOL_COLUMNS``); codes in English, ``""`` for an empty cell, ints for counts
Row = tuple[str | int, ...]


@dataclass(frozen=True)
class County:
    """A planned synthetic county; rows are generated lazily from the plan."""

    code: str
    year: str
    seed: int
    profile: Profile
    schools: tuple[School, ...]
    #: what student numbers begin with ("": "G" and the county code, as 学籍号 do); a
    #: university's own numbers begin with its code, so two universities never share one
    student_prefix: str = ""

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
        """The school table: one row per school and grade, enrolment counted from the students
        (a university's own node: its whole enrolment, the freshmen eligible)."""
        model = _Model(self)
        for school in self.schools:
            room = "yes" if school.counselling_room else "no"
            for cell in school.cells:
                male = model.count_male(school, cell)
                female = cell.students - male
                if school.enrolment:
                    # the older years, split as the freshmen are
                    older = school.enrolment - cell.students
                    older_male = round(older * male / cell.students) if cell.students else 0
                    male, female = male + older_male, female + older - older_male
                yield (
                    self.year, school.school_id, school.name, self.code, school.school_type,
                    school.location, cell.grade, male, female, cell.students,
                    school.ft_teachers, school.pt_teachers, room,
                )  # fmt: skip

    def only(self, school_id: str) -> County:
        """The county's one school ``school_id`` (a school node's data): the same rows as
        in the whole county's export."""
        for school in self.schools:
            if school.school_id == school_id:
                return replace(self, schools=(school,))
        first, last = self.schools[0].school_id, self.schools[-1].school_id
        raise ConfigError(
            f"school {school_id!r} is not one of county {self.code}'s {len(self.schools)} "
            f"schools ({first} .. {last})"
        )

    def without(self, school_ids: Iterable[str]) -> County:
        """The county without the schools that run their own nodes."""
        leave = set(school_ids)
        unknown = leave - {school.school_id for school in self.schools}
        if unknown:
            raise ConfigError(f"not schools of county {self.code}: {', '.join(sorted(unknown))}")
        return replace(self, schools=tuple(s for s in self.schools if s.school_id not in leave))


_YEAR = re.compile(r"(\d{4})-(\d{4})")


def _check(county: str, students: int, year: str) -> int:
    """The academic start year; ConfigError for a malformed county, year or size."""
    if not (len(county) == 6 and county.isascii() and county.isdigit()):
        raise ConfigError(f"county code must be six digits (GB/T 2260), got {county!r}")
    match = _YEAR.fullmatch(year)
    if not match or int(match[2]) != int(match[1]) + 1:
        raise ConfigError(f"academic year must look like 2024-2025, got {year!r}")
    if students < 1:
        raise ConfigError(f"--students must be at least 1, got {students}")
    if students >= 10**7:
        raise ConfigError("at most 9,999,999 students per county")
    return int(match[1])


def generate(
    county: str,
    students: int,
    year: str,
    seed: int,
    profile: str = "mixed",
    *,
    universities: bool = True,
) -> County:
    """Plan a synthetic county of ``students`` screening rows for academic year ``year``.

    ``universities=False``: the same county without its university, if it has one
    (universities run their own nodes). Raises ``ConfigError`` for a malformed county
    code or year, an unknown profile or a non-positive number of students.
    """
    start = _check(county, students, year)
    try:
        chosen = PROFILES[profile]
    except KeyError:
        names = ", ".join(sorted(PROFILES))
        raise ConfigError(f"unknown profile {profile!r} (choose from {names})") from None
    schools = plan(county, students, start, seed, chosen)
    if not universities:
        # the same plan without its university (planned last): every other school keeps
        # its students, as a university's own node and its county's node split them
        schools = tuple(s for s in schools if s.school_type != "university")
    return County(code=county, year=year, seed=seed, profile=chosen, schools=schools)


#: the streams of a university's own node are keyed by its code (the profile's name is
#: part of every stream key), so two universities in one county are different students
_UNIVERSITY: Final = Profile(
    name="university",
    description="a university that runs its own node",
    school_types={},
    locations={"university": (1.0, 0.0, 0.0)},
    teacher_rate=(1.0, 1.0),
    room_rate=(1.0, 1.0),
    university=1.0,
)


def generate_university(
    university_id: str, county: str, students: int, year: str, seed: int
) -> County:
    """A university's own node's data: ``students`` freshmen (grade U1) screened in ``year``
    on a campus registered in ``county``, and its one row of the school table."""
    start = _check(county, students, year)
    if not re.fullmatch(r"[0-9A-Za-z_-]{4,20}", university_id):
        raise ConfigError(f"university code {university_id!r}: 4-20 letters or digits")
    school = plan_university(university_id, students, start, seed)
    profile = replace(_UNIVERSITY, name=f"university:{university_id}")
    return County(
        code=county,
        year=year,
        seed=seed,
        profile=profile,
        schools=(school,),
        student_prefix=f"U{university_id}",
    )


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
    counts = allocate(256, [weight for _, weight in _SURNAMES])
    return tuple(name for name, count in zip(names, counts, strict=True) for _ in range(count))


_SURNAME_TABLE: Final = _surname_table()
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


_MIN_AGE: Final = exports.MIN_AGE
_MAX_AGE: Final = exports.MAX_AGE
_YES_NO: Final = ("no", "yes")  # indexed by a bool
#: risk_factors .. followups_done of a student not screened, or screened and not warned
_NOT_SCREENED: Final = ("",) * 9 + ("none", "none", "", "no", "", "none", 0, 0)
_NO_WARNING: Final = ("", "none", "none", "", "no", "", "none", 0, 0)


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
        self.pools = answer_pools(seed)
        self.reference = {band: reference_risk(band) for band in exports.GRADE_BANDS}

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
        boarding_cut = threshold(BOARDING[kind, band][LOCATIONS.index(location)])
        lb_cut = threshold(0.0 if band == "university" else LEFT_BEHIND_RATE[location])
        sp_cut = threshold(SINGLE_PARENT_RATE)
        hardship_cut = threshold(0.10 if band == "university" else HARDSHIP_RATE[location])
        age_cuts = cumulative(AGE_OFFSET_WEIGHTS[band])
        # an on-time pupil of cohort c started grade 1 in September c+1, aged 6 by 31 August
        birth_base = [date(cell.cohort - 6 - years, 9, 1).toordinal() for years in (-1, 0, 1, 2)]
        n_classes = max(1, math.ceil(cell.students / CLASS_SIZE[band]))
        classes = [f"{grade}-{k + 1:02d}" for k in range(n_classes)]
        # --- instruments: cuts for the latent band by (male, left-behind, single-parent)
        t = BandTables(band, location == "rural", self.reference[band])
        warn_cuts = WARNING_CUTS
        # --- bound locals for the loop
        identity, screening = self.identity.values, self.screening.values
        births, iso, normal = self.births, self.iso, NORMAL
        pools = self.pools
        phq_pool, gad_pool, mht_pool, lie_pool = pools.phq, pools.gad, pools.mht, pools.lie
        sn_mul, sn_add, id_area, code = self.sn_mul, self.sn_add, self.id_area, county.code
        fixed = (code, school.school_id, kind, location, grade)
        academic_year, year_end, follow_ups = county.year, self.year_end, self.follow_up.values
        base_key = self.key(school, cell, 0)
        sn_prefix = county.student_prefix or "G" + code
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
            age = clamp(day_year - birth_year - (day_md < birth_md), _MIN_AGE, _MAX_AGE)
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
                    item9 = 1 + bisect_right(ITEM9_VALUE, s[8])
                    phq = max(phq, item9)  # the lowest totals of a band cannot hold a high item 9
                item9 = max(item9, phq - 24)  # items 1-8 hold at most 24
                phq_items, phq_total = phq_pool[phq - item9][s[9] & 63] + str(item9), phq
                gad = clamp(
                    round(GAD_SLOPE * phq + GAD_INTERCEPT + GAD_SD * normal[s[10] >> 4]), 0, 21
                )
                gad_items, gad_total = gad_pool[gad][s[11] & 63], gad
            obvious = False
            mht = 0
            if has_mht:
                if s[12] < t.mht_obvious[level]:
                    mht = 65 + bisect_right(MHT_OBVIOUS_TOTALS, s[13])
                else:
                    mht = clamp(round(t.mht_mean[level] + MHT_SD * normal[s[13] >> 4]), 0, 64)
                if s[15] < invalid_cut:
                    lie = 7 + bisect_right(LIE_INVALID, s[16])
                else:
                    lie = bisect_right(LIE_VALID, s[16])
                    obvious = mht >= 65
                mht_items, mht_total = mht_pool[mht][s[14] & 63] + lie_pool[lie][s[17] & 63], mht
            upi_class, item25 = "", False
            if has_upi:
                upi_items, upi_total, upi_class, item25 = upi_answers(
                    s, level, item9, t.upi[level], pools.upi
                )

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
                record = follow_up(
                    follow_ups(kb), warning, day, band, grade, sp, hardship, iso, year_end
                )
                yield (*head, *taken, *record)

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


def _weekday(ordinal: int) -> int:
    """The ordinal itself, or the next Monday if it falls on a weekend."""
    weekday = date.fromordinal(ordinal).weekday()
    return ordinal + (7 - weekday if weekday >= 5 else 0)
