"""The node's SQLite database: connection settings and schema.

Tables:

``screening``
    every loaded screening row, without direct identifiers; ``student_key`` is an
    HMAC of the student number under the node secret, so a student can be followed
    across files and years inside the node and nowhere else. ``bounded`` marks the
    rows of the contribution-bounded view (see below).
``school`` / ``school_grade``
    the school tables: staffing per school, enrolment and eligibility per grade;
    views ``school_grades`` (per grade) and ``schools`` (per school) are public.
``ingest_batch``
    one row per loaded file: digest, rows, schools, year, time, what it replaced.
``meta``
    key/value facts such as the data version, bumped by every load.

**The unit of privacy** is one student in one academic year. The view
``screenings`` holds at most one row per student per academic year — the
student's latest screening that year (a screened row beats an absent or refused
one; then the later screening date; then the later load) — and that row carries
every instrument's result from that screening. One student therefore changes
any count over the view by at most one, and a query never needs a join (a
comorbidity is two columns of one row). The ``bounded`` flag is maintained at
load time, so queries read stored rows instead of ranking them per query.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

import sqlite_utils

from fedscreen._util import sqlite
from fedscreen.node import ledger
from fedscreen.screening.instruments import instruments

#: page cache per connection, KiB. Random student keys make index inserts cache-hungry,
#: but the key index of a million students (~40 MiB) mostly fits: 32 MiB keeps a 1 GB
#: export's ingest, parent and workers together, under 512 MiB (bench_ingest_limits.py)
#: at 2.1x raw executemany (bench_ingest.py; 2.0x with 128 MiB)
CACHE_KIB: Final = 32_768

SCREENING_BASE_COLUMNS: Final[dict[str, type]] = {
    "id": int,
    "batch_id": int,
    "student_key": bytes,
    "academic_year": str,
    "county_code": str,
    "school_id": str,
    "school_type": str,
    "location": str,
    "grade": str,
    "grade_band": str,
    "class_id": str,
    "sex": str,
    "age_band": str,
    "boarding": int,
    "left_behind": int,
    "single_parent": int,
    "economic_hardship": int,
    "participation": str,
    "screened": int,
    "screening_date": str,
    "mode": str,
    "consent": int,
}
RISK_COLUMNS: Final = (
    "risk_academic",
    "risk_employment",
    "risk_economic",
    "risk_emotional",
    "risk_family",
    "risk_bullying",
    "risk_other",
)
FOLLOWUP_COLUMNS: Final[dict[str, type]] = {
    "warning_level": str,
    "warning_status": str,
    "interview_done": int,
    "interview_days": int,
    "referred": int,
    "referral_visited": int,
    "plan_status": str,
    "followups_scheduled": int,
    "followups_done": int,
}


def instrument_columns() -> dict[str, type]:
    """Stored result columns of every packaged instrument, derived from its definition."""
    columns: dict[str, type] = {}
    for code, inst in instruments().items():
        columns[f"{code}_total"] = int
        columns[f"{code}_band"] = str
        columns[f"{code}_valid"] = int
        for flag in inst.flag_names:
            columns[f"{code}_{flag}"] = int
    return columns


def screening_columns() -> dict[str, type]:
    """All stored columns of ``screening``, in table order (``bounded`` last)."""
    return {
        **SCREENING_BASE_COLUMNS,
        **instrument_columns(),
        **dict.fromkeys(RISK_COLUMNS, int),
        **FOLLOWUP_COLUMNS,
        "bounded": int,
    }


#: columns the view ``screenings`` derives from stored ones: the city (GB/T 2260: the
#: county code's first four digits), so a city's figures are one GROUP BY away
DERIVED_COLUMNS: Final = {"city_code": "substr(county_code, 1, 4)"}


#: columns of the view ``screenings`` (everything but keys and batch bookkeeping)
def view_columns() -> list[str]:
    """Columns of the contribution-bounded view ``screenings``."""
    hidden = {"id", "batch_id", "student_key", "bounded", "class_id", "screening_date"}
    return [*(c for c in screening_columns() if c not in hidden), *DERIVED_COLUMNS]


def _view_sql() -> str:
    stored = [c for c in view_columns() if c not in DERIVED_COLUMNS]
    derived = [f"{expr} AS {name}" for name, expr in DERIVED_COLUMNS.items()]
    return (
        f"CREATE VIEW screenings AS SELECT {', '.join([*stored, *derived])} "
        "FROM screening WHERE bounded = 1"
    )


def _current_views(conn: sqlite3.Connection) -> None:
    """Bring the view ``screenings`` of a database made by an earlier version up to date
    (a view holds no data: it is dropped and made again, in one transaction)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(screenings)")}
    if not have or set(view_columns()) <= have:
        return
    with sqlite.transaction(conn):
        conn.execute("DROP VIEW screenings")
        conn.execute(_view_sql())


def connect(path: Path) -> sqlite3.Connection:
    """Open the node database (WAL, ``synchronous=FULL``: see ``fedscreen._util.sqlite``)."""
    conn = sqlite.connect(path, cache_kib=CACHE_KIB)
    _current_views(conn)
    return conn


#: One row per school and year (public facts, not personal data): staffing, counselling
#: room, enrolment and eligibility summed over the school's grades, and the provincial
#: staffing target. A school meets it with at least one full- or part-time mental-health
#: teacher; a university with at least max(2, enrolment / 4000) full-time ones, counted
#: on the enrolment its school table declares.
SCHOOLS_VIEW: Final = """
CREATE VIEW schools AS
SELECT s.academic_year, s.school_id, s.school_type, s.location,
       s.ft_teachers, s.pt_teachers, s.ft_teachers + s.pt_teachers AS mh_teachers,
       CASE WHEN s.ft_teachers + s.pt_teachers > 0 THEN 1 ELSE 0 END AS has_mh_teacher,
       s.counselling_room,
       COALESCE(g.enrolled, 0) AS enrolled, COALESCE(g.eligible, 0) AS eligible,
       CASE WHEN s.school_type = 'university'
            THEN s.ft_teachers >= MAX(2, (COALESCE(g.enrolled, 0) + 3999) / 4000)
            ELSE s.ft_teachers + s.pt_teachers >= 1 END AS meets_teacher_target
FROM school AS s
LEFT JOIN (SELECT academic_year, school_id, SUM(enrolled_male + enrolled_female) AS enrolled,
                  SUM(eligible) AS eligible
           FROM school_grade GROUP BY academic_year, school_id) AS g
USING (academic_year, school_id)
"""


def create_schema(conn: sqlite3.Connection) -> None:
    """Create every table, index and view of a new node database."""
    db = sqlite_utils.Database(conn)
    db.table("meta").create({"key": str, "value": str}, pk="key")
    db.table("meta").insert({"key": "data_version", "value": "0"})
    db.table("ingest_batch").create(
        {
            "batch_id": int,
            "kind": str,
            "file_name": str,
            "digest": str,
            "rows": int,
            "academic_year": str,
            "schools": str,
            "loaded_at": str,
            "replaced": str,
            "replaced_by": int,
        },
        pk="batch_id",
        not_null={"kind", "file_name", "digest", "rows", "academic_year", "loaded_at"},
    )
    db.table("ingest_batch").create_index(["digest"])
    db.table("screening").create(
        screening_columns(),
        pk="id",
        not_null={"batch_id", "student_key", "academic_year", "school_id", "bounded"},
        foreign_keys=[("batch_id", "ingest_batch", "batch_id")],
    )
    db.table("screening").create_index(["academic_year", "student_key"])
    db.table("screening").create_index(["academic_year", "school_id"])
    db.table("school").create(
        {
            "academic_year": str,
            "school_id": str,
            "school_name": str,
            "county_code": str,
            "school_type": str,
            "location": str,
            "ft_teachers": int,
            "pt_teachers": int,
            "counselling_room": int,
            "batch_id": int,
        },
        pk=("academic_year", "school_id"),
        foreign_keys=[("batch_id", "ingest_batch", "batch_id")],
    )
    db.table("school_grade").create(
        {
            "academic_year": str,
            "school_id": str,
            "grade": str,
            "grade_band": str,
            "enrolled_male": int,
            "enrolled_female": int,
            "eligible": int,
            "batch_id": int,
        },
        pk=("academic_year", "school_id", "grade"),
        foreign_keys=[("batch_id", "ingest_batch", "batch_id")],
    )
    for statement in ledger.SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute(_view_sql())
    # the school tables are not personal: a policy may declare this view public
    conn.execute(
        "CREATE VIEW school_grades AS SELECT g.academic_year, g.school_id, s.school_type, "
        "s.location, g.grade, g.grade_band, g.enrolled_male, g.enrolled_female, g.eligible, "
        "s.ft_teachers, s.pt_teachers, s.counselling_room "
        "FROM school_grade AS g JOIN school AS s USING (academic_year, school_id)"
    )
    conn.execute(SCHOOLS_VIEW)


def eligible_students(conn: sqlite3.Connection) -> int:
    """Students eligible for screening in the latest school tables (public data)."""
    row = conn.execute(
        "SELECT COALESCE(SUM(eligible), 0) FROM school_grade "
        "WHERE academic_year = (SELECT MAX(academic_year) FROM school_grade)"
    ).fetchone()
    return int(row[0])


def data_version(conn: sqlite3.Connection) -> int:
    """The current data version; every committed load increments it."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'data_version'").fetchone()
    return int(row[0])
