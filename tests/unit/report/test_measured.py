"""Measured tables: their SQL parses back to them, SQLite agrees with ``holds``, and a
served query's cells are exactly the table cells of its groups.

Tables are random: category columns of the catalogue's ``screenings`` within
``max_groups``, and filters built from =, !=, IN, NOT IN, AND, OR and NOT with values
that need quoting. SQLite is the referee: a table's own SQL (``table_sql``) runs over
an in-memory table holding each table cell once, so the groups it returns are the cells
that meet the filter in SQLite's semantics (untyped columns: 1 and '1' differ, as in
``holds``).
"""

from __future__ import annotations

import itertools
import math
import sqlite3
from collections.abc import Sequence

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fedscreen.policy.default import PROVINCE_FILE, default_policy_dir
from fedscreen.policy.load import load_policy
from fedscreen.policy.model import CategoryRule
from fedscreen.query.spec import BoolOp, Comparison, Condition, Measure, QuerySpec, Value
from fedscreen.query.sqlparse import MAX_SQL_CHARS, parse_sql
from fedscreen.report.measured import (
    Table,
    column_order,
    domain,
    holds,
    served_cells,
    table_sql,
)

POLICY = load_policy(default_policy_dir() / PROVINCE_FILE)
DATASET = POLICY.datasets["screenings"]
PERIOD = DATASET.period
MAX_GROUPS = POLICY.limits.max_groups
YEARS = ("2023-2024", "2024-2025", "2025-2026")
#: the category columns a table may group by (the period aside: its domain is the years)
COLUMNS = [c for c, r in DATASET.columns.items() if isinstance(r, CategoryRule) and c != PERIOD]
#: strings a literal must quote: quotes, doubled quotes, SQL, look-alikes of the codes
AWKWARD = ["it's", "''", "'", "a''b", '"x"', "1", "0", "M' OR '1'='1", "--", "%", "\\", "é"]
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)


def table_of(
    attributes: Sequence[str],
    where: Condition | None,
    years: tuple[str, ...] = ("2024-2025",),
    name: str = "m",
) -> Table:
    ordered = tuple(c for c in column_order(DATASET) if c in attributes)
    return Table(
        name=name,
        dataset="screenings",
        where=where,
        years=years,
        attributes=ordered,
        domains=tuple(domain(DATASET, c, years) for c in ordered),
        members=("q",),
    )


def normal(cond: Condition) -> Condition:
    """``cond`` as the parser writes it: AND in AND and OR in OR flattened, NOT (c IN …)
    as c NOT IN …"""
    if isinstance(cond, Comparison):
        return cond
    args = [normal(a) for a in cond.args]
    if cond.op == "not":
        (inner,) = args
        if isinstance(inner, Comparison) and inner.op == "in":
            return Comparison(inner.column, "not in", inner.values)
        return BoolOp("not", (inner,))
    flat: list[Condition] = []
    for arg in args:
        flat.extend(arg.args if isinstance(arg, BoolOp) and arg.op == cond.op else (arg,))
    return BoolOp(cond.op, tuple(flat))


@st.composite
def comparisons(draw: st.DrawFn, columns: Sequence[str], awkward: bool) -> Comparison:
    column = draw(st.sampled_from(columns))
    codes = domain(DATASET, column, YEARS)
    value = st.sampled_from(codes) | st.sampled_from(AWKWARD) | st.integers(-3, 3)
    if awkward:
        value = value | TEXT | st.integers(-(2**70), 2**70)
    op = draw(st.sampled_from(["=", "!=", "in", "not in"]))
    if op in ("in", "not in"):
        return Comparison(column, op, tuple(draw(st.lists(value, min_size=1, max_size=4))))
    return Comparison(column, op, (draw(value),))


@st.composite
def conditions(
    draw: st.DrawFn, columns: Sequence[str], depth: int = 3, awkward: bool = False
) -> Condition:
    """A filter over ``columns``, at most ``depth`` levels of AND/OR/NOT (the parser
    bounds nesting), in the parser's normal form."""
    if depth == 0 or draw(st.integers(0, 2)) == 0:
        return draw(comparisons(columns, awkward))
    op = draw(st.sampled_from(["and", "or", "not"]))
    inner = conditions(columns, depth - 1, awkward)
    if op == "not":
        return normal(BoolOp("not", (draw(inner),)))
    return normal(BoolOp(op, tuple(draw(st.lists(inner, min_size=2, max_size=3)))))


@st.composite
def attribute_sets(draw: st.DrawFn, years: tuple[str, ...], min_size: int = 0) -> list[str]:
    """Category columns (maybe the period) whose cells stay within max_groups."""
    wanted = draw(st.lists(st.sampled_from([PERIOD, *COLUMNS]), unique=True, max_size=5))
    kept: list[str] = []
    for column in wanted:
        if math.prod(len(domain(DATASET, c, years)) for c in [*kept, column]) <= MAX_GROUPS:
            kept.append(column)
    assume(len(kept) >= min_size)
    return kept


@st.composite
def tables(
    draw: st.DrawFn, *, awkward: bool = False, min_attributes: int = 0, filtered: bool = False
) -> Table:
    if awkward:
        years = st.lists(st.sampled_from(YEARS) | TEXT, min_size=1, max_size=3, unique=True)
    else:
        years = st.lists(st.sampled_from(YEARS), min_size=1, max_size=3, unique=True)
    chosen = tuple(sorted(draw(years)))
    attributes = draw(attribute_sets(chosen, min_attributes))
    # the filter reads the table's own attributes (so SQLite can test it on its cells) or,
    # for the round trip, any category column
    columns = [c for c in attributes if c != PERIOD] if filtered else COLUMNS
    where = None
    if columns and (filtered or draw(st.booleans())):
        where = draw(conditions(columns, awkward=awkward))
    return table_of(attributes, where, chosen)


# --- the SQL --------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(table=tables(awkward=True))
def test_table_sql_parses_back_to_the_table(table: Table) -> None:
    sql = table_sql(table, DATASET)
    assume(len(sql) <= MAX_SQL_CHARS)
    assert parse_sql(sql) == table.spec()


def test_table_sql_quotes_what_it_must() -> None:
    where = BoolOp(
        "or",
        (
            Comparison("sex", "in", ("M' OR '1'='1", "it's")),
            BoolOp("not", (Comparison("grade_band", "=", ("''",)),)),
        ),
    )
    table = table_of(["sex"], where)
    sql = table_sql(table, DATASET)
    assert "'M'' OR ''1''=''1'" in sql
    assert parse_sql(sql) == table.spec()


# --- holds against SQLite ------------------------------------------------------------------


def sqlite_cells(table: Table) -> set[int]:
    """The cells SQLite counts when it runs the table's SQL over every cell once."""
    columns = [PERIOD, *(a for a in table.attributes if a != PERIOD)]
    database = sqlite3.connect(":memory:")
    try:
        # untyped columns: no affinity, so 1 and '1' stay two values as in the catalogue
        database.execute(f"CREATE TABLE screenings ({', '.join(columns)})")
        rows = []
        for cell in table.cells:
            row = dict(zip(table.attributes, cell, strict=True))
            row.setdefault(PERIOD, table.years[0])
            rows.append([row[c] for c in columns])
        marks = ", ".join("?" * len(columns))
        database.executemany(f"INSERT INTO screenings VALUES ({marks})", rows)
        found = database.execute(table_sql(table, DATASET)).fetchall()
    finally:
        database.close()
    index = {typed(cell): i for i, cell in enumerate(table.cells)}
    assert all(count == 1 for *_, count in found)
    return {index[typed(group)] for *group, _ in found}


def typed(values: Sequence[Value]) -> tuple[tuple[str, Value], ...]:
    return tuple((type(v).__name__, v) for v in values)


@settings(max_examples=300, deadline=None)
@given(table=tables(filtered=True, min_attributes=1))
def test_holds_agrees_with_sqlite_on_every_cell(table: Table) -> None:
    assume(table.where is not None)  # grouped by the period alone: nothing to filter
    assert table.where is not None
    rows = [dict(zip(table.attributes, cell, strict=True)) for cell in table.cells]
    expected = {i for i, row in enumerate(rows) if holds(table.where, row)}
    assert sqlite_cells(table) == expected


@pytest.mark.parametrize(
    ("cond", "row", "expected"),
    [
        (Comparison("phq9_valid", "=", ("1",)), {"phq9_valid": 1}, False),
        (Comparison("phq9_valid", "=", (1,)), {"phq9_valid": "1"}, False),
        (Comparison("phq9_valid", "in", ("1", 0)), {"phq9_valid": 1}, False),
        (Comparison("phq9_valid", "!=", ("1",)), {"phq9_valid": 1}, True),
        (Comparison("phq9_valid", "not in", ("1", "0")), {"phq9_valid": 1}, True),
        (Comparison("phq9_valid", "in", ("1", 1)), {"phq9_valid": 1}, True),
        (Comparison("sex", "=", ("it's",)), {"sex": "it's"}, True),
    ],
)
def test_one_and_the_string_one_never_match(
    cond: Condition, row: dict[str, Value], expected: bool
) -> None:
    assert holds(cond, row) is expected


def test_a_table_without_attributes_is_sql() -> None:
    table = table_of([], Comparison("referred", "=", (1,)))
    sql = table_sql(table, DATASET)
    assert parse_sql(sql) == table.spec()
    assert "GROUP BY" not in sql
    assert sql.startswith("SELECT COUNT(*) FROM")


# --- served cells --------------------------------------------------------------------------


def query_cells(table: Table, group_by: Sequence[str]) -> list[tuple[Value, ...]]:
    """The query's cells as the compiler lists them (the product of its domains)."""
    return list(itertools.product(*(domain(DATASET, c, table.years) for c in group_by)))


@st.composite
def table_and_query(draw: st.DrawFn) -> tuple[Table, QuerySpec]:
    table = draw(tables(min_attributes=1))
    group_by = draw(st.permutations(table.attributes))[: draw(st.integers(0, 5))]
    kind = draw(st.sampled_from(["count", "rate"]))
    measure = Measure("count")
    if kind == "rate":
        columns = [c for c in table.attributes if c != PERIOD]
        assume(columns)
        measure = Measure("rate", condition=draw(conditions(columns)))
    spec = QuerySpec("screenings", measure, tuple(group_by), table.where, table.years)
    return table, spec


@settings(max_examples=300, deadline=None)
@given(case=table_and_query())
def test_served_cells_are_the_table_cells_of_each_group(case: tuple[Table, QuerySpec]) -> None:
    table, spec = case
    cells = query_cells(table, spec.group_by)
    served = served_cells(table, spec, cells)
    assert served.groups == tuple(cells)
    position = [table.attributes.index(c) for c in spec.group_by]
    seen: list[int] = []
    for group, den in zip(cells, served.denominator, strict=True):
        assert list(den) == [
            j
            for j, cell in enumerate(table.cells)
            if typed([cell[p] for p in position]) == typed(group)
        ]
        seen.extend(den)
    # the groups partition the table: every cell counted once
    assert sorted(seen) == list(range(len(table.cells)))
    if spec.measure.kind == "count":
        assert served.numerator is None
        return
    assert served.numerator is not None
    condition = spec.measure.condition
    assert condition is not None
    # SQLite decides which cells meet the RATE's condition
    meeting = sqlite_cells(table_of(table.attributes, condition, table.years))
    for num, den in zip(served.numerator, served.denominator, strict=True):
        assert set(num) <= set(den)
        assert list(num) == [j for j in den if j in meeting]


def test_a_string_code_is_not_an_integer_code() -> None:
    """A domain holding both 1 and '1' keeps them apart in groups and conditions."""
    table = Table(
        name="m",
        dataset="screenings",
        where=None,
        years=("2024-2025",),
        attributes=("phq9_item9", "sex"),
        domains=((1, "1", 0), ("M", "F")),
        members=("q",),
    )
    rate = QuerySpec(
        "screenings",
        Measure("rate", condition=Comparison("phq9_item9", "=", ("1",))),
        ("phq9_item9",),
        None,
        ("2024-2025",),
    )
    served = served_cells(table, rate, [(1,), ("1",), (0,), (True,), (1.0,)])
    # cells: (1, M) (1, F) ("1", M) ("1", F) (0, M) (0, F)
    assert served.denominator == ((0, 1), (2, 3), (4, 5), (), ())
    assert served.numerator == ((), (2, 3), (), (), ())
    count = QuerySpec("screenings", Measure("count"), ("sex",), None, ("2024-2025",))
    assert served_cells(table, count, [("M",), ("F",)]).denominator == ((0, 2, 4), (1, 3, 5))
