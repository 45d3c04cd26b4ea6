"""Validate export rows and turn them into stored rows.

Each parser checks every field of a row against its domain, collects *all* the
problems of the row (so a user fixes a file in one round), and returns the row
to store — with direct identifiers already removed — or ``None``. A message quotes
a cell only through ``limits.shown`` (codes and numbers, never names or long numbers).
This is ingest's hot path: lookups are precomputed dicts, and a row is one call.
"""

from __future__ import annotations

import datetime as dt
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from fedscreen.errors import Problem
from fedscreen.node import store
from fedscreen.node.limits import column_name, column_names, shown
from fedscreen.screening import exports
from fedscreen.screening.exports import Column
from fedscreen.screening.instruments import Instrument, instruments, parse_items

YES_NO_ALIASES: Final = {
    **{k: 1 for k in ("yes", "y", "true", "1", "是", "有")},
    **{k: 0 for k in ("no", "n", "false", "0", "否", "无")},
}
STUDENT_NO: Final = re.compile(r"[0-9A-Za-z]{6,32}")
SCHOOL_ID: Final = re.compile(r"[0-9A-Za-z_-]{4,20}")
ACADEMIC_YEAR: Final = re.compile(r"(\d{4})-(\d{4})")
#: typical age at the start of each grade; accepted ages are typical - 2 .. typical + 3
TYPICAL_AGE: Final = {
    "P4": 9, "P5": 10, "P6": 11, "J7": 12, "J8": 13, "J9": 14,
    "S10": 15, "S11": 16, "S12": 17, "V1": 15, "V2": 16, "V3": 17, "U1": 18,
}  # fmt: skip
MAX_FOLLOWUPS: Final = 366
MAX_CLASS_ID: Final = 32
#: the student key is a truncated HMAC-SHA256: 128 bits keep collisions negligible
STUDENT_KEY_BYTES: Final = 16
#: extra columns schools' systems add; read and dropped, never stored
DROPPED_COLUMNS: Final = (Column("notes", "备注", required=False, identifier=True),)


@dataclass(frozen=True)
class Holder:
    """Whose rows a node accepts: a county's (any of its schools), a university's (its
    own freshmen only) or a school node's (its one school)."""

    kind: str = "county"
    #: the one school_id every row must carry ("" for a county node)
    school_id: str = ""

    def check(
        self, school_id: str, school_type: str | None, bad: Callable[[str, str], None]
    ) -> None:
        """Report a row that is not this node's to hold."""
        if self.school_id and school_id != self.school_id:
            mine = f"this {self.kind} node's school {self.school_id}"
            bad("school_id", f"{shown(school_id)} is not {mine}")
        if self.kind == "university" and school_type and school_type != "university":
            bad("school_type", f"{school_type}: a university node holds its own freshmen only")
        if self.kind == "school" and school_type == "university":
            bad("school_type", "university: a school node holds one primary or secondary school")


class HeaderError(Exception):
    """The header row itself is unusable; carries the problems."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(map(str, problems)))
        self.problems = problems


#: a whole number as exports write it: ASCII digits, an optional sign
_WHOLE: Final = re.compile(r"[+-]?[0-9]{1,18}")


def map_header(header: list[str], columns: tuple[Column, ...], path: str) -> dict[str, int]:
    """Column key -> cell index, from English or Chinese header names."""
    aliases = exports.header_aliases(columns + DROPPED_COLUMNS)
    index: dict[str, int] = {}
    problems: list[Problem] = []
    for i, name in enumerate(header):
        key = aliases.get(name) or aliases.get(name.lower())
        if key is None:
            problems.append(Problem(path, 1, column_name(header, i), "unknown column"))
        elif key in index:
            problems.append(Problem(path, 1, name, f"duplicate column (also #{index[key] + 1})"))
        else:
            index[key] = i
    for column in columns:
        if column.required and column.key not in index:
            problems.append(Problem(path, 1, column.key, f"required column missing ({column.zh})"))
    if problems:
        raise HeaderError(problems)
    return index


class _Row:
    """The stripped cells of one row by column key, with problem collection.

    Kept small and flat because it runs once per row, a million times per file.
    """

    __slots__ = ("line", "path", "problems", "values")

    def __init__(
        self, path: str, line: int, values: dict[str, str], problems: list[Problem]
    ) -> None:
        self.path, self.line, self.values, self.problems = path, line, values, problems

    def get(self, key: str) -> str:
        return self.values.get(key, "")

    def bad(self, key: str, reason: str) -> None:
        self.problems.append(Problem(self.path, self.line, key, reason))

    def required(self, key: str) -> str | None:
        value = self.values.get(key, "")
        if not value:
            self.bad(key, "required value missing")
            return None
        return value

    def code(self, key: str, aliases: dict[str, str], *, optional: bool = False) -> str | None:
        value = self.values.get(key, "")
        if not value:
            if not optional:
                self.bad(key, "required value missing")
            return None
        code = aliases.get(value) or aliases.get(value.lower())
        if code is None:
            allowed = ", ".join(sorted(set(aliases.values())))
            self.bad(key, f"{shown(value)} is not one of {allowed}")
        return code

    def yes_no(self, key: str, *, optional: bool = False) -> int | None:
        value = self.values.get(key, "")
        if not value:
            if not optional:
                self.bad(key, "required value missing (yes/no, 是/否)")
            return None
        flag = YES_NO_ALIASES.get(value)
        if flag is None:
            flag = YES_NO_ALIASES.get(value.lower())
            if flag is None:
                self.bad(key, f"{shown(value)} is not yes/no (是/否, 1/0)")
        return flag

    def integer(self, key: str, low: int, high: int) -> int | None:
        value = self.values.get(key, "")
        if not value:
            self.bad(key, "required value missing")
            return None
        # ASCII digits only: int() also reads "٩" and "９", which no export system writes
        if not _WHOLE.fullmatch(value):
            self.bad(key, f"{shown(value)} is not a whole number")
            return None
        number = int(value)
        if not low <= number <= high:
            self.bad(key, f"{shown(value)} outside {low}..{high}")
            return None
        return number

    def date(self, key: str, first: str, last: str) -> str | None:
        value = self.values.get(key, "")
        if not value:
            return None
        try:
            if len(value) != 10 or value[4] != "-":
                raise ValueError
            dt.date.fromisoformat(value)
        except ValueError:
            self.bad(key, f"{shown(value)} is not a date YYYY-MM-DD")
            return None
        if not first <= value <= last:
            self.bad(key, f"{shown(value)} outside {first}..{last}")
            return None
        return value


def _values(keys: tuple[str, ...], order: list[int], cells: list[str]) -> dict[str, str]:
    """Column key -> stripped cell ("" for a missing column or a short row)."""
    size = len(cells)
    return dict(zip(keys, [cells[i].strip() if 0 <= i < size else "" for i in order], strict=True))


def _academic_year(row: _Row) -> str | None:
    value = row.required("academic_year")
    if value is None:
        return None
    match = ACADEMIC_YEAR.fullmatch(value)
    if not match or int(match[2]) != int(match[1]) + 1:
        row.bad("academic_year", f"{shown(value)} is not an academic year like 2024-2025")
        return None
    return value


_SCREENING_KEYS: Final = tuple(c.key for c in exports.SCREENING_COLUMNS)
_SCHOOL_KEYS: Final = tuple(c.key for c in exports.SCHOOL_COLUMNS)
_YEAR_FLAGS: Final = ("boarding", "left_behind", "single_parent", "economic_hardship")


class ScreeningParser:
    """Parses screening-export rows into ``screening`` table rows.

    ``parse`` returns a tuple in the order of ``columns`` (the table's columns
    without ``id`` and ``bounded``). It is written flat, with values looked up
    once per row, because it runs a million times per large file.
    """

    def __init__(
        self,
        *,
        path: str,
        header: list[str],
        county_code: str,
        secret: bytes,
        holder: Holder = Holder(),
    ) -> None:
        self.path = path
        self.holder = holder
        index = map_header(header, exports.SCREENING_COLUMNS, path)
        #: each header cell's name in messages: its column key if known
        self.names = column_names(header, index)
        self.order = [index.get(key, -1) for key in _SCREENING_KEYS]
        self.county_code = county_code
        self.secret = secret
        #: (code, instrument, items column, total column, the stored form of "no result")
        self.instrument_keys: tuple[tuple[str, Instrument, str, str, tuple[None, ...]], ...] = (
            tuple(
                (code, inst, f"{code}_items", f"{code}_total", (None,) * (3 + len(inst.flag_names)))
                for code, inst in instruments().items()
            )
        )
        self.aliases = {
            "school_type": exports.value_aliases(exports.SCHOOL_TYPES),
            "location": exports.value_aliases(exports.LOCATIONS),
            "grade": exports.value_aliases(exports.GRADES),
            "sex": exports.value_aliases(exports.SEXES),
            "participation": exports.value_aliases(exports.PARTICIPATION),
            "mode": exports.value_aliases(exports.MODES),
            "warning_level": exports.value_aliases(exports.WARNING_LEVELS),
            "warning_status": exports.value_aliases(exports.WARNING_STATUSES),
            "plan_status": exports.value_aliases(exports.PLAN_STATUSES),
            "risk_factors": exports.value_aliases(exports.RISK_FACTORS),
        }
        self.risk_codes = tuple(exports.RISK_FACTORS)
        self.columns = [c for c in store.screening_columns() if c not in ("id", "bounded")]
        self.today = dt.date.today().isoformat()
        self.year_bounds: dict[str, tuple[str, str]] = {}

    def student_key(self, student_no: str) -> bytes:
        """HMAC-SHA256 of the student number under the node secret, truncated."""
        return hmac.digest(self.secret, student_no.encode("utf-8"), "sha256")[:STUDENT_KEY_BYTES]

    def parse(
        self, line: int, cells: list[str], problems: list[Problem], batch_id: int = 0
    ) -> tuple[Any, ...] | None:
        """Validate one row; on success return its stored values in ``columns`` order."""
        before = len(problems)
        v = _values(_SCREENING_KEYS, self.order, cells)
        row = _Row(self.path, line, v, problems)
        bad, integer, date, yes_no, code = row.bad, row.integer, row.date, row.yes_no, row.code
        aliases = self.aliases

        student_key = None
        student_no = v["student_no"]
        if not student_no:
            bad("student_no", "required value missing")
        elif STUDENT_NO.fullmatch(student_no):
            student_key = self.student_key(student_no)
        else:
            # never echo an identifier into messages that may be logged or mailed
            bad("student_no", "must be 6-32 letters or digits")
        county = v["county_code"]
        if county != self.county_code:
            bad(
                "county_code",
                f"{shown(county) if county else 'missing'}: not this node's county "
                f"{self.county_code}",
            )
        school_id = v["school_id"]
        if not SCHOOL_ID.fullmatch(school_id):
            bad("school_id", f"{shown(school_id)} is not a school code (4-20 letters/digits)")
        school_type = code("school_type", aliases["school_type"])
        location = code("location", aliases["location"])
        grade = code("grade", aliases["grade"])
        band = exports.GRADE_BAND.get(grade) if grade else None
        if grade and school_type and grade not in exports.SCHOOL_GRADES[school_type]:
            bad("grade", f"{grade} is not taught at a {school_type} school")
        self.holder.check(school_id, school_type, bad)
        class_id = v["class_id"]
        if not class_id or len(class_id) > MAX_CLASS_ID:
            bad("class_id", f"required, at most {MAX_CLASS_ID} characters")
        sex = code("sex", aliases["sex"])
        age = integer("age", exports.MIN_AGE, exports.MAX_AGE)
        if (
            age is not None
            and grade
            and not TYPICAL_AGE[grade] - 2 <= age <= TYPICAL_AGE[grade] + 3
        ):
            bad("age", f"{age} is implausible for grade {grade}")
        flags = [yes_no(key) for key in _YEAR_FLAGS]
        year = v["academic_year"]
        match = ACADEMIC_YEAR.fullmatch(year)
        if not match or int(match[2]) != int(match[1]) + 1:
            bad("academic_year", f"{shown(year)} is not an academic year like 2024-2025")
            first, last = "0000-00-00", "9999-99-99"
        else:
            first, last = self._year_bounds(year)
        participation = code("participation", aliases["participation"])
        screened = participation == "screened"
        consent = yes_no("consent")
        screening_date = date("screening_date", first, last)
        mode = code("mode", aliases["mode"], optional=not screened)
        if screened:
            if consent == 0:
                bad("consent", "a screened student must have consent (yes)")
            if not v["screening_date"]:
                bad("screening_date", "required for a screened student")
        elif participation is not None:
            for key in ("screening_date", "mode"):
                if v[key]:
                    bad(key, f"must be empty when participation is {participation}")
        out: list[Any] = [
            batch_id, student_key, year, county, school_id, school_type, location, grade, band,
            class_id, sex, exports.age_band(age) if age is not None else None, *flags,
            participation, int(screened), screening_date, mode, consent,
        ]  # fmt: skip

        needed = exports.BAND_INSTRUMENTS.get(band, ()) if band else ()
        for inst_code, inst, items_key, total_key, empty in self.instrument_keys:
            text, total_text = v[items_key], v[total_key]
            result: tuple[Any, ...] | None = None
            if not screened:
                if text or total_text:
                    bad(
                        items_key if text else total_key, "must be empty for a student not screened"
                    )
            elif text:
                try:
                    answers = parse_items(text, inst)
                except ValueError as exc:
                    bad(items_key, str(exc))
                else:
                    result = inst.score_text(answers)
                    if total_text and total_text != str(result[0]):
                        bad(
                            total_key,
                            f"{shown(total_text)} does not match the items' total {result[0]}",
                        )
            elif inst_code in needed:
                bad(items_key, f"{inst.name} answers required for {band} students")
            elif total_text:
                bad(total_key, "a total without item answers cannot be checked")
            out.extend(result or empty)

        risks = dict.fromkeys(self.risk_codes, 0)
        if v["risk_factors"]:
            for part in RISK_SEPARATORS.split(v["risk_factors"]):
                part = part.strip()
                if part:
                    found = aliases["risk_factors"].get(part) or aliases["risk_factors"].get(
                        part.lower()
                    )
                    if found is None:
                        bad(
                            "risk_factors",
                            f"{shown(part)} is not one of {', '.join(self.risk_codes)}",
                        )
                    else:
                        risks[found] = 1
        out.extend(risks.values())
        level = code("warning_level", aliases["warning_level"])
        status = code("warning_status", aliases["warning_status"])
        if level is not None and status is not None and (level == "none") != (status == "none"):
            bad("warning_status", f"{status} does not fit warning level {level}")
        if level not in (None, "none") and not screened:
            bad("warning_level", "a warning needs a screening")
        interview = date("interview_date", screening_date or first, last)
        referred = yes_no("referred")
        visited = yes_no("referral_visited", optional=True)
        if referred == 0 and visited == 1:
            bad("referral_visited", "a visit needs a referral (referred = yes)")
        plan = code("plan_status", aliases["plan_status"])
        if plan not in (None, "none") and level == "none":
            bad("plan_status", "a one-student-one-plan record needs a warning level")
        scheduled = integer("followups_scheduled", 0, MAX_FOLLOWUPS)
        done = integer("followups_done", 0, MAX_FOLLOWUPS)
        if scheduled is not None and done is not None and done > scheduled:
            bad("followups_done", f"{done} follow-ups done but only {scheduled} scheduled")
        if len(problems) > before:
            return None
        out += [
            level, status, int(interview is not None),
            (dt.date.fromisoformat(interview) - dt.date.fromisoformat(screening_date)).days
            if interview and screening_date else None,
            referred, 0 if referred == 1 and visited is None else visited,
            plan, scheduled, done,
        ]  # fmt: skip
        return tuple(out)

    def _year_bounds(self, year: str) -> tuple[str, str]:
        bounds = self.year_bounds.get(year)
        if bounds is None:
            first, last = exports.academic_year_bounds(year)
            bounds = self.year_bounds[year] = (first, min(last, self.today))
        return bounds


RISK_SEPARATORS: Final = re.compile(r"[;；,，、|]")


class SchoolParser:
    """Parses school-table rows (one per school and grade)."""

    def __init__(
        self, *, path: str, header: list[str], county_code: str, holder: Holder = Holder()
    ) -> None:
        self.path = path
        self.holder = holder
        index = map_header(header, exports.SCHOOL_COLUMNS, path)
        #: each header cell's name in messages: its column key if known
        self.names = column_names(header, index)
        self.order = [index.get(key, -1) for key in _SCHOOL_KEYS]
        self.county_code = county_code
        self.types = exports.value_aliases(exports.SCHOOL_TYPES)
        self.locations = exports.value_aliases(exports.LOCATIONS)
        self.grades = exports.value_aliases(exports.GRADES)
        #: (year, school) -> the school-level values first seen, to check repeats agree
        self.schools: dict[tuple[str, str], tuple[Any, ...]] = {}

    def parse(self, line: int, cells: list[str], problems: list[Problem]) -> dict[str, Any] | None:
        """Validate one row; on success return its values by column."""
        before = len(problems)
        row = _Row(self.path, line, _values(_SCHOOL_KEYS, self.order, cells), problems)
        out: dict[str, Any] = {"academic_year": _academic_year(row)}
        school_id = out["school_id"] = row.required("school_id")
        if school_id is not None and not SCHOOL_ID.fullmatch(school_id):
            row.bad("school_id", f"{shown(school_id)} is not a school code (4-20 letters/digits)")
        out["school_name"] = row.required("school_name")
        county = out["county_code"] = row.required("county_code")
        if county is not None and county != self.county_code:
            row.bad("county_code", f"{shown(county)} is not this node's county {self.county_code}")
        school_type = out["school_type"] = row.code("school_type", self.types)
        out["location"] = row.code("location", self.locations)
        grade = out["grade"] = row.code("grade", self.grades)
        out["grade_band"] = exports.GRADE_BAND.get(grade) if grade else None
        if grade and school_type and grade not in exports.SCHOOL_GRADES[school_type]:
            row.bad("grade", f"{grade} is not taught at a {school_type} school")
        if school_id is not None:
            self.holder.check(school_id, school_type, row.bad)
        limit = 1_000_000
        male = out["enrolled_male"] = row.integer("enrolled_male", 0, limit)
        female = out["enrolled_female"] = row.integer("enrolled_female", 0, limit)
        eligible = out["eligible"] = row.integer("eligible", 0, limit)
        if None not in (male, female, eligible) and eligible > male + female:  # type: ignore[operator]
            row.bad("eligible", f"{eligible} eligible but only {male + female} enrolled")  # type: ignore[operator]
        out["ft_teachers"] = row.integer("ft_teachers", 0, 10_000)
        out["pt_teachers"] = row.integer("pt_teachers", 0, 10_000)
        out["counselling_room"] = row.yes_no("counselling_room")
        if len(problems) > before:
            return None
        school_values = tuple(
            out[k]
            for k in (
                "school_name",
                "school_type",
                "location",
                "ft_teachers",
                "pt_teachers",
                "counselling_room",
            )
        )
        key = (out["academic_year"], out["school_id"])
        seen = self.schools.setdefault(key, school_values)
        if seen != school_values:
            row.bad(
                "school_id", "school name, type, location or staffing differ from an earlier row"
            )
            return None
        return out


ParseFn = Callable[[int, list[str], list[Problem]], "dict[str, Any] | None"]
