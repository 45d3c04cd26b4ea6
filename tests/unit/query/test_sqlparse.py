"""parse_sql: the accepted SQL subset, period extraction, and shape refusals.

The parser checks shape only (policy checks are in test_compile.py); each refusal
must name the offending part.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedscreen.errors import QueryRefused
from fedscreen.query.spec import BoolOp, Comparison, Condition, Measure, QuerySpec
from fedscreen.query.sqlparse import MAX_SQL_CHARS, parse_sql

Y = "WHERE academic_year = '2024-2025'"
YEARS = ("2024-2025",)


def _spec(
    measure: Measure,
    group_by: tuple[str, ...] = (),
    where: Condition | None = None,
    years: tuple[str, ...] = YEARS,
    dataset: str = "screenings",
) -> QuerySpec:
    return QuerySpec(dataset, measure, group_by, where, years)


COUNT = Measure("count")

ACCEPTED: list[tuple[str, QuerySpec]] = [
    (f"SELECT COUNT(*) FROM screenings {Y}", _spec(COUNT)),
    (f"select count(*) from screenings {Y.lower()}", _spec(COUNT)),
    (f"SELECT COUNT(*) AS n FROM screenings {Y}", _spec(COUNT)),
    (
        f"SELECT sex, COUNT(*) FROM screenings {Y} GROUP BY sex",
        _spec(COUNT, ("sex",)),
    ),
    # GROUP BY by ordinal
    (
        f"SELECT grade_band, sex, COUNT(*) FROM screenings {Y} GROUP BY 1, 2",
        _spec(COUNT, ("grade_band", "sex")),
    ),
    (
        f"SELECT sex, grade_band, COUNT(*) FROM screenings {Y} GROUP BY 2, 1",
        _spec(COUNT, ("grade_band", "sex")),
    ),
    # grouping without selecting the group columns
    (f"SELECT COUNT(*) FROM screenings {Y} GROUP BY sex", _spec(COUNT, ("sex",))),
    (
        f"SELECT SUM(phq9_total) FROM screenings {Y}",
        _spec(Measure("sum", column="phq9_total")),
    ),
    (
        f"SELECT location, AVG(gad7_total) FROM screenings {Y} GROUP BY location",
        _spec(Measure("mean", column="gad7_total"), ("location",)),
    ),
    (
        f"SELECT QUANTILE(phq9_total, 0.5) FROM screenings {Y}",
        _spec(Measure("quantile", column="phq9_total", q=0.5)),
    ),
    (
        f"SELECT sex, quantile(interview_days, 0.9) FROM screenings {Y} GROUP BY sex",
        _spec(Measure("quantile", column="interview_days", q=0.9), ("sex",)),
    ),
    (
        f"SELECT RATE(phq9_total >= 10) FROM screenings {Y}",
        _spec(Measure("rate", condition=Comparison("phq9_total", ">=", (10,)))),
    ),
    (
        f"SELECT sex, rate(phq9_positive = 1 AND gad7_positive = 1) FROM screenings {Y} "
        "GROUP BY sex",
        _spec(
            Measure(
                "rate",
                condition=BoolOp(
                    "and",
                    (
                        Comparison("phq9_positive", "=", (1,)),
                        Comparison("gad7_positive", "=", (1,)),
                    ),
                ),
            ),
            ("sex",),
        ),
    ),
    # HISTOGRAM(col) is a count grouped by the column
    (f"SELECT HISTOGRAM(phq9_band) FROM screenings {Y}", _spec(COUNT, ("phq9_band",))),
    (
        f"SELECT sex, phq9_band, HISTOGRAM(phq9_band) FROM screenings {Y} GROUP BY sex",
        _spec(COUNT, ("sex", "phq9_band")),
    ),
    # BETWEEN is two inclusive comparisons
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND phq9_total BETWEEN 5 AND 9",
        _spec(
            COUNT,
            where=BoolOp(
                "and",
                (Comparison("phq9_total", ">=", (5,)), Comparison("phq9_total", "<=", (9,))),
            ),
        ),
    ),
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND phq9_total NOT BETWEEN 5 AND 9",
        _spec(
            COUNT,
            where=BoolOp(
                "not",
                (
                    BoolOp(
                        "and",
                        (
                            Comparison("phq9_total", ">=", (5,)),
                            Comparison("phq9_total", "<=", (9,)),
                        ),
                    ),
                ),
            ),
        ),
    ),
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND grade IN ('S10', 'S11')",
        _spec(COUNT, where=Comparison("grade", "in", ("S10", "S11"))),
    ),
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND grade NOT IN ('S10', 'S11')",
        _spec(COUNT, where=Comparison("grade", "not in", ("S10", "S11"))),
    ),
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND NOT grade IN ('S10')",
        _spec(COUNT, where=Comparison("grade", "not in", ("S10",))),
    ),
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND NOT (sex = 'F')",
        _spec(COUNT, where=BoolOp("not", (Comparison("sex", "=", ("F",)),))),
    ),
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND (sex = 'F' OR boarding = 1)",
        _spec(
            COUNT,
            where=BoolOp("or", (Comparison("sex", "=", ("F",)), Comparison("boarding", "=", (1,)))),
        ),
    ),
    # literal on the left: the comparison is flipped
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND 10 <= phq9_total",
        _spec(COUNT, where=Comparison("phq9_total", ">=", (10,))),
    ),
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND phq9_total != 3",
        _spec(COUNT, where=Comparison("phq9_total", "!=", (3,))),
    ),
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND phq9_total <> 3",
        _spec(COUNT, where=Comparison("phq9_total", "!=", (3,))),
    ),
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND phq9_total > -2.5",
        _spec(COUNT, where=Comparison("phq9_total", ">", (-2.5,))),
    ),
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND sex = 'F' -- a comment",
        _spec(COUNT, where=Comparison("sex", "=", ("F",))),
    ),
    # nested ANDs flatten, whatever the parentheses
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND (sex = 'F' AND (boarding = 1 AND grade = 'S10'))",
        _spec(
            COUNT,
            where=BoolOp(
                "and",
                (
                    Comparison("sex", "=", ("F",)),
                    Comparison("boarding", "=", (1,)),
                    Comparison("grade", "=", ("S10",)),
                ),
            ),
        ),
    ),
    (
        "SELECT COUNT(*) FROM school_grades WHERE academic_year = '2024-2025'",
        _spec(COUNT, dataset="school_grades"),
    ),
]


@pytest.mark.parametrize(("sql", "expected"), ACCEPTED, ids=[s for s, _ in ACCEPTED])
def test_accepted_forms(sql: str, expected: QuerySpec) -> None:
    assert parse_sql(sql) == expected


# --- the period ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "years", "rest"),
    [
        ("WHERE academic_year = '2024-2025'", ("2024-2025",), None),
        ("WHERE '2024-2025' = academic_year", ("2024-2025",), None),
        ("WHERE (academic_year = '2024-2025')", ("2024-2025",), None),
        # IN: several years, sorted
        (
            "WHERE academic_year IN ('2024-2025', '2023-2024')",
            ("2023-2024", "2024-2025"),
            None,
        ),
        # the period is taken out of the top-level AND; the rest stays
        (
            "WHERE sex = 'F' AND academic_year = '2023-2024'",
            ("2023-2024",),
            Comparison("sex", "=", ("F",)),
        ),
        (
            "WHERE sex = 'F' AND academic_year = '2023-2024' AND boarding = 0",
            ("2023-2024",),
            BoolOp("and", (Comparison("sex", "=", ("F",)), Comparison("boarding", "=", (0,)))),
        ),
        # no period: the engine picks the latest year
        ("", (), None),
        ("WHERE sex = 'M'", (), Comparison("sex", "=", ("M",))),
        # not at the top level of an AND: an ordinary condition, not the period
        (
            "WHERE academic_year = '2024-2025' OR sex = 'F'",
            (),
            BoolOp(
                "or",
                (
                    Comparison("academic_year", "=", ("2024-2025",)),
                    Comparison("sex", "=", ("F",)),
                ),
            ),
        ),
        (
            "WHERE academic_year != '2024-2025'",
            (),
            Comparison("academic_year", "!=", ("2024-2025",)),
        ),
        (
            "WHERE NOT academic_year = '2024-2025'",
            (),
            BoolOp("not", (Comparison("academic_year", "=", ("2024-2025",)),)),
        ),
    ],
)
def test_period_extraction(where: str, years: tuple[str, ...], rest: Condition | None) -> None:
    spec = parse_sql(f"SELECT COUNT(*) FROM screenings {where}")
    assert spec.years == years
    assert spec.where == rest


def test_period_given_twice_is_refused() -> None:
    with pytest.raises(QueryRefused, match="academic_year is given twice"):
        parse_sql(
            "SELECT COUNT(*) FROM screenings "
            "WHERE academic_year = '2024-2025' AND academic_year = '2023-2024'"
        )


def test_group_by_period() -> None:
    spec = parse_sql(
        "SELECT COUNT(*) FROM screenings WHERE academic_year IN ('2023-2024', '2024-2025') "
        "GROUP BY academic_year"
    )
    assert spec.group_by == ("academic_year",)
    assert spec.years == ("2023-2024", "2024-2025")


def test_selecting_the_grouped_period_column_is_accepted() -> None:
    """``SELECT academic_year, ... GROUP BY academic_year`` is the documented form
    (``SELECT <group columns>, <measure> ... GROUP BY <group columns>``), and the compiler
    groups by the period. (It used to be refused with "selected columns must be the GROUP
    BY columns: " naming nothing.)"""
    sql = (
        "SELECT academic_year, sex, COUNT(*) FROM screenings "
        "WHERE academic_year IN ('2023-2024', '2024-2025') GROUP BY academic_year, sex"
    )
    spec = parse_sql(sql)
    assert spec.group_by == ("academic_year", "sex")
    assert spec.years == ("2023-2024", "2024-2025")


# --- refusals (shape) ---------------------------------------------------------------

REFUSED: list[tuple[str, str]] = [
    ("", "exactly one statement allowed, got 0"),
    ("SELEKT 1", "not valid SQL|only SELECT"),
    (f"SELECT COUNT(*) FROM screenings {Y}; SELECT COUNT(*) FROM screenings {Y}", "got 2"),
    (f"SELECT COUNT(*) FROM screenings {Y}; DROP TABLE screening", "got 2"),
    ("DROP TABLE screening", "not DROP"),
    ("DELETE FROM screening", "not DELETE"),
    ("UPDATE screening SET sex = 'M'", "not UPDATE"),
    ("INSERT INTO ledger_charge VALUES (1)", "not INSERT"),
    ("PRAGMA table_info(screening)", "not PRAGMA"),
    ("ATTACH DATABASE 'x.db' AS x", "not ATTACH"),
    (f"SELECT COUNT(*) FROM screenings {Y} UNION SELECT COUNT(*) FROM screenings", "UNION"),
    (f"SELECT COUNT(*) FROM screenings JOIN school_grades ON 1 = 1 {Y}", "JOIN"),
    (f"SELECT COUNT(*) FROM screenings, school_grades {Y}", "JOIN"),
    (f"SELECT COUNT(*) FROM (SELECT * FROM screenings) {Y}", "subqueries.*SELECT \\* FROM"),
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND sex IN (SELECT sex FROM screenings)",
        "subqueries.*SELECT sex FROM screenings",
    ),
    (f"SELECT COUNT(*) FROM screenings {Y} AND EXISTS (SELECT 1)", "subqueries"),
    (f"WITH t AS (SELECT 1) SELECT COUNT(*) FROM screenings {Y}", "WITH"),
    (f"SELECT sex, COUNT(*) FROM screenings {Y} GROUP BY sex HAVING COUNT(*) > 1", "HAVING"),
    (f"SELECT sex, COUNT(*) FROM screenings {Y} GROUP BY sex ORDER BY 2", "ORDER BY"),
    (f"SELECT COUNT(*) FROM screenings {Y} LIMIT 1", "LIMIT"),
    (f"SELECT DISTINCT sex FROM screenings {Y}", "DISTINCT"),
    (f"SELECT COUNT(DISTINCT sex) FROM screenings {Y}", "COUNT\\(DISTINCT sex\\)"),
    (f"SELECT COUNT(sex) FROM screenings {Y}", "only COUNT\\(\\*\\).*COUNT\\(sex\\)"),
    (f"SELECT MAX(phq9_total) FROM screenings {Y}", "function MAX\\(phq9_total\\)"),
    (f"SELECT LOWER(sex), COUNT(*) FROM screenings {Y} GROUP BY 1", "function LOWER\\(sex\\)"),
    (f"SELECT sqlite_version() FROM screenings {Y}", "SQLITE_VERSION"),
    (f"SELECT LOAD_EXTENSION('x') FROM screenings {Y}", "LOAD_EXTENSION"),
    (f"SELECT COUNT(*) FROM screenings {Y} AND ABS(phq9_total) > 3", "ABS\\(phq9_total\\)"),
    (f"SELECT COUNT(*) FROM screenings {Y} AND phq9_total LIKE '1%'", "LIKE"),
    (f"SELECT COUNT(*) FROM screenings {Y} AND phq9_total IS NULL", "IS NULL"),
    (f"SELECT COUNT(*) FROM screenings {Y} AND sex = sex", "only literal values.*sex"),
    (f"SELECT COUNT(*) FROM screenings {Y} AND phq9_total = 1 + 1", "1 \\+ 1"),
    (f"SELECT COUNT(*) FROM screenings {Y} AND sex = ?", "only literal values.*\\?"),
    (f"SELECT COUNT(*) FROM screenings {Y} AND sex = :v", "only literal values.*:v"),
    (f'SELECT COUNT(*) FROM screenings {Y} AND sex = "F"', 'only literal values.*"F"'),
    (f"SELECT COUNT(*) FROM screenings {Y} AND sex = NULL", "NULL"),
    (f"SELECT COUNT(*) FROM screenings {Y} AND boarding = TRUE", "TRUE"),
    (f"SELECT COUNT(*) FROM screenings {Y} AND sex IN ()", "IN needs values|not valid SQL"),
    (f"SELECT COUNT(*), SUM(phq9_total) FROM screenings {Y}", "exactly one measure.*got 2"),
    (f"SELECT sex FROM screenings {Y}", "exactly one measure.*got 0"),
    (f"SELECT sex, COUNT(*) FROM screenings {Y}", "selected columns must be.*sex"),
    (
        f"SELECT sex, COUNT(*) FROM screenings {Y} GROUP BY grade",
        "selected columns must be.*grade, sex",
    ),
    (f"SELECT sex, COUNT(*) FROM screenings {Y} GROUP BY sex, sex", "grouped twice"),
    (
        f"SELECT sex, HISTOGRAM(sex) FROM screenings {Y} GROUP BY sex",
        "grouped twice",
    ),
    (f"SELECT sex, COUNT(*) FROM screenings {Y} GROUP BY 3", "GROUP BY 3 does not point"),
    (f"SELECT sex, COUNT(*) FROM screenings {Y} GROUP BY 2", "GROUP BY 2 does not point"),
    (
        f"SELECT COUNT(*) FROM screenings {Y} GROUP BY LOWER(sex)",
        "GROUP BY only on columns.*LOWER\\(sex\\)",
    ),
    (f"SELECT COUNT(*) FROM main.screenings {Y}", "one dataset.*main.screenings"),
    (f"SELECT COUNT(*) FROM screenings AS s {Y}", "aliases"),
    (f"SELECT COUNT(*) {Y}", "FROM <dataset> is required"),
    (f"SELECT COUNT(*) FROM Screenings {Y}", "dataset name 'Screenings'"),
    (f"SELECT screenings.sex, COUNT(*) FROM screenings {Y} GROUP BY 1", "qualified column"),
    (f"SELECT SEX, COUNT(*) FROM screenings {Y} GROUP BY 1", "column name 'SEX'"),
    # identifiers that are not plain: quoted names, injection in a column name
    (
        f'SELECT "sex; DROP TABLE screening", COUNT(*) FROM screenings {Y} GROUP BY 1',
        'quoted identifier "sex; DROP TABLE screening"',
    ),
    (f"SELECT COUNT(*) FROM screenings {Y} AND `sex` = 'F'", "quoted identifier"),
    (f"SELECT COUNT(*) FROM screenings {Y} AND [sex] = 'F'", "quoted identifier"),
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND sex = 'F'); DROP TABLE screening; --",
        "not valid SQL",
    ),
    (f"SELECT QUANTILE(phq9_total, 1.5) FROM screenings {Y}", "strictly between 0 and 1"),
    (f"SELECT QUANTILE(phq9_total, 0) FROM screenings {Y}", "strictly between 0 and 1"),
    (f"SELECT QUANTILE(phq9_total, 1) FROM screenings {Y}", "strictly between 0 and 1"),
    (f"SELECT QUANTILE(phq9_total, 'x') FROM screenings {Y}", "strictly between 0 and 1"),
    (f"SELECT RATE(sex = 'F', 1) FROM screenings {Y}", "function RATE"),
    (f"SELECT HISTOGRAM(sex, grade) FROM screenings {Y}", "function HISTOGRAM"),
    (f"SELECT SUM(DISTINCT phq9_total) FROM screenings {Y}", "DISTINCT"),
    (f"SELECT SUM(phq9_total + 1) FROM screenings {Y}", "expected a column"),
    (f"SELECT COUNT(*) FROM screenings {Y} AND sex = -'F'", "cannot negate a string"),
    ("SELECT COUNT(*) FROM screenings WHERE sex = '" + "x" * MAX_SQL_CHARS + "'", "longer than"),
]


@pytest.mark.parametrize(("sql", "reason"), REFUSED, ids=[s[:70] for s, _ in REFUSED])
def test_refused_shapes_name_the_offending_part(sql: str, reason: str) -> None:
    with pytest.raises(QueryRefused, match=reason):
        parse_sql(sql)


def test_injection_in_a_value_stays_a_value() -> None:
    """A quote doubled inside a literal is part of the value, never SQL."""
    spec = parse_sql(f"SELECT COUNT(*) FROM screenings {Y} AND sex = 'F'' OR 1=1 --'")
    assert spec.where == Comparison("sex", "=", ("F' OR 1=1 --",))


# --- round trip: conditions rendered as SQL parse back to themselves -------------------

_COLUMNS = st.sampled_from(["sex", "grade", "phq9_total", "boarding", "mht_band", "x_1"])
_STRINGS = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"), exclude_characters="\\"),
    max_size=12,
)
_NUMBERS = st.integers(min_value=-(10**12), max_value=10**12) | st.floats(
    min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False
)
_VALUES = _STRINGS | _NUMBERS


def _render_value(value: str | int | float) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


@st.composite
def _comparison(draw: st.DrawFn) -> Comparison:
    column = draw(_COLUMNS)
    op = draw(st.sampled_from(["=", "!=", "<", "<=", ">", ">=", "in", "not in"]))
    count = draw(st.integers(1, 4)) if op in ("in", "not in") else 1
    values = tuple(draw(_VALUES) for _ in range(count))
    return Comparison(column, op, values)


def _conditions(depth: int) -> st.SearchStrategy[Condition]:
    if depth == 0:
        return _comparison()
    inner = _conditions(depth - 1)

    @st.composite
    def build(draw: st.DrawFn) -> Condition:
        kind = draw(st.sampled_from(["leaf", "and", "or", "not"]))
        if kind == "leaf":
            return draw(_comparison())
        if kind == "not":
            arg = draw(inner)
            # NOT (x IN ...) is spelled x NOT IN ...: the parser folds it
            if isinstance(arg, Comparison) and arg.op == "in":
                return Comparison(arg.column, "not in", arg.values)
            return BoolOp("not", (arg,))
        args = draw(st.lists(inner, min_size=2, max_size=3))
        flat: list[Condition] = []
        for arg in args:  # the parser flattens nested ANDs (ORs) of the same operator
            flat.extend(arg.args if isinstance(arg, BoolOp) and arg.op == kind else (arg,))
        return BoolOp(kind, tuple(flat))

    return build()


def _render(cond: Condition) -> str:
    if isinstance(cond, Comparison):
        if cond.op in ("in", "not in"):
            values = ", ".join(_render_value(v) for v in cond.values)
            return f"{cond.column} {cond.op.upper()} ({values})"
        return f"{cond.column} {cond.op} {_render_value(cond.values[0])}"
    if cond.op == "not":
        return f"NOT ({_render(cond.args[0])})"
    return f" {cond.op.upper()} ".join(f"({_render(a)})" for a in cond.args)


@settings(max_examples=100, deadline=None, database=None)
@given(where=_conditions(3))
def test_rendered_conditions_parse_back(where: Condition) -> None:
    """Any condition tree written as SQL parses to the same tree (values exact, typed)."""
    spec = parse_sql(f"SELECT RATE({_render(where)}) FROM screenings {Y} AND ({_render(where)})")
    assert spec.measure == Measure("rate", condition=where)
    assert spec.where == where
    assert spec.years == YEARS
