"""compile_query: policy checks, and the SQL it emits (run on real SQLite databases).

The node for county 130102 enforces the province's catalogue merged with the county's
document (tighter budget, threshold, share, narrower domains and bounds).
"""

from __future__ import annotations

import dataclasses
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import opendp.prelude as dp
import pytest
from exportrows import varied_rows, write_csv
from hypothesis import given, settings
from hypothesis import strategies as st

from fedscreen.errors import QueryRefused
from fedscreen.node import store
from fedscreen.node.home import NodeConfig, init_home
from fedscreen.node.ingest import ingest_paths
from fedscreen.policy import CategoryRule, Measure, NumericRule, Policy
from fedscreen.query.compile import Plan, compile_query
from fedscreen.query.mechanisms import quantile_scores
from fedscreen.query.spec import BoolOp, Comparison, QuerySpec
from fedscreen.query.spec import Measure as SpecMeasure
from fedscreen.query.sqlparse import parse_sql

dp.enable_features("contrib")

YEAR = "2024-2025"
Y = f"WHERE academic_year = '{YEAR}'"


#: the merged policy of a node for county 130102 (no home needed to compute it)
_POLICY = NodeConfig(
    home=Path("/nonexistent"), node_id="130102", name="x", county_code="130102"
).policy()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[NodeConfig, Policy]:
    """A node with 600 screenings for 2024-2025 (read only in this module)."""
    base = tmp_path_factory.mktemp("compile")
    config = init_home(base / "node", node_id="130102", name="长安区")
    path = write_csv(base / "s.csv", varied_rows(600))
    _, rejected = ingest_paths(config, [path])
    assert not rejected, rejected
    return config, config.policy()


@pytest.fixture
def conn(loaded: tuple[NodeConfig, Policy]) -> Iterator[sqlite3.Connection]:
    connection = store.connect(loaded[0].database)
    try:
        yield connection
    finally:
        connection.close()


def _plan(sql: str, policy: Policy) -> Plan:
    return compile_query(parse_sql(sql), policy)


def _run(plan: Plan, conn: sqlite3.Connection) -> list[list[Any]]:
    """Aggregates per cell, in plan.cells order (cells without rows: zeros)."""
    width = len(plan.spec.group_by)
    rows = {
        tuple(r[:width]): [v or 0 for v in r[width:]] for r in conn.execute(plan.sql, plan.params)
    }
    return [rows.get(cell, [0] * plan.aggregates) for cell in plan.cells]


# --- the merged policy the node enforces ---------------------------------------------


def test_node_enforces_the_tighter_county_policy(loaded: tuple[NodeConfig, Policy]) -> None:
    limits = loaded[1].limits
    assert limits.max_epsilon_per_query == 0.5  # province: 1.0
    assert limits.epsilon_per_node_per_year == 6.0  # province: 10.0
    assert limits.analyst_share == 0.4  # province: 0.5
    assert limits.publication_threshold == 20  # province: 10
    assert limits.analyst_budget("anyone") == pytest.approx(2.4)
    assert limits.analyst_budget("hebei-monitoring-centre") == pytest.approx(3.6)  # 0.6 × 6
    screenings = loaded[1].datasets["screenings"]
    assert {"school_id", "economic_hardship"} <= screenings.withheld
    rule = screenings.columns["interview_days"]
    assert isinstance(rule, NumericRule)
    assert rule.bounds == (0, 90)
    assert rule.candidates == (0, 1, 2, 3, 4, 5, 6, 7, 10, 14, 21, 28, 35, 42, 56, 60, 90)


# --- SQL results equal hand-written reference SQL on the same database -----------------

REFERENCE: list[tuple[str, str]] = [
    (
        f"SELECT sex, COUNT(*) FROM screenings {Y} GROUP BY sex",
        f"SELECT sex, COUNT(*) FROM screenings {Y} GROUP BY sex",
    ),
    (
        f"SELECT grade, location, COUNT(*) FROM screenings {Y} AND boarding = 1 GROUP BY 1, 2",
        f"SELECT grade, location, COUNT(*) FROM screenings {Y} AND boarding = 1 "
        "GROUP BY grade, location",
    ),
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND phq9_total BETWEEN 5 AND 9",
        f"SELECT COUNT(*) FROM screenings {Y} AND phq9_total >= 5 AND phq9_total <= 9",
    ),
    # NULL fails every filter, also under NOT and NOT IN
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND NOT phq9_total >= 10",
        f"SELECT COUNT(*) FROM screenings {Y} AND phq9_total < 10",
    ),
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND phq9_band NOT IN ('none', 'mild')",
        f"SELECT COUNT(*) FROM screenings {Y} AND phq9_band IN "
        "('moderate', 'moderately_severe', 'severe')",
    ),
    (
        f"SELECT sex, SUM(phq9_total) FROM screenings {Y} GROUP BY sex",
        f"SELECT sex, SUM(phq9_total) FROM screenings {Y} GROUP BY sex",
    ),
    (
        f"SELECT AVG(phq9_total) FROM screenings {Y}",
        f"SELECT SUM(phq9_total), COUNT(phq9_total) FROM screenings {Y}",
    ),
    (
        f"SELECT location, RATE(phq9_total >= 10 OR boarding = 1) FROM screenings {Y} "
        "GROUP BY location",
        "SELECT location, SUM(phq9_total >= 10 OR boarding = 1), COUNT(*) "
        f"FROM screenings {Y} GROUP BY location",
    ),
    (
        f"SELECT HISTOGRAM(participation) FROM screenings {Y}",
        f"SELECT participation, COUNT(*) FROM screenings {Y} GROUP BY participation",
    ),
]


@pytest.mark.parametrize(("query", "reference"), REFERENCE)
def test_compiled_sql_matches_reference_sql(
    query: str, reference: str, loaded: tuple[NodeConfig, Policy], conn: sqlite3.Connection
) -> None:
    plan = _plan(query, loaded[1])
    width = len(plan.spec.group_by)
    expected = {tuple(r[:width]): [v or 0 for v in r[width:]] for r in conn.execute(reference)}
    got = _run(plan, conn)
    assert [expected.get(cell, [0] * plan.aggregates) for cell in plan.cells] == got
    assert any(any(v for v in cell) for cell in got), "the data should make this non-trivial"


def test_quantile_sql_counts_below_and_above(
    loaded: tuple[NodeConfig, Policy], conn: sqlite3.Connection
) -> None:
    plan = _plan(
        f"SELECT sex, QUANTILE(phq9_total, 0.5) FROM screenings {Y} GROUP BY sex", loaded[1]
    )
    assert plan.candidates == tuple(range(28))
    assert plan.aggregates == 2 * len(plan.candidates)
    got = _run(plan, conn)
    for cell, values in zip(plan.cells, got, strict=True):
        totals = [
            t
            for (t,) in conn.execute(
                f"SELECT phq9_total FROM screenings {Y} AND sex = ? AND phq9_total IS NOT NULL",
                cell,
            )
        ]
        assert values[0::2] == [sum(t < c for t in totals) for c in plan.candidates]
        assert values[1::2] == [sum(t > c for t in totals) for c in plan.candidates]


# --- cells: the cartesian product of public domains, never the data ---------------------


def test_cells_are_the_product_of_public_domains(loaded: tuple[NodeConfig, Policy]) -> None:
    plan = _plan(f"SELECT grade_band, sex, COUNT(*) FROM screenings {Y} GROUP BY 1, 2", loaded[1])
    # the county narrowed grade_band (no university)
    bands = ("upper_primary", "junior", "senior", "vocational")
    assert plan.cells == tuple((b, s) for b in bands for s in ("M", "F"))
    plan = _plan(
        "SELECT COUNT(*) FROM screenings WHERE academic_year IN ('2024-2025', '2023-2024') "
        "GROUP BY academic_year",
        loaded[1],
    )
    assert plan.cells == (("2023-2024",), ("2024-2025",))
    plan = _plan(f"SELECT COUNT(*) FROM screenings {Y}", loaded[1])
    assert plan.cells == ((),)


def test_group_rows_outside_the_domain_are_not_counted(
    loaded: tuple[NodeConfig, Policy], conn: sqlite3.Connection
) -> None:
    plan = _plan(f"SELECT phq9_band, COUNT(*) FROM screenings {Y} GROUP BY 1", loaded[1])
    counted = sum(v[0] for v in _run(plan, conn))
    (with_band,) = conn.execute(
        f"SELECT COUNT(*) FROM screenings {Y} AND phq9_band IS NOT NULL"
    ).fetchone()
    (everyone,) = conn.execute(f"SELECT COUNT(*) FROM screenings {Y}").fetchone()
    assert counted == with_band < everyone  # absent students (NULL band) are no cell


@pytest.mark.parametrize(
    ("query", "sensitivity", "bounds"),
    [
        ("SELECT COUNT(*) FROM screenings", 1, None),
        ("SELECT RATE(sex = 'F') FROM screenings", 1, None),
        ("SELECT SUM(phq9_total) FROM screenings", 27, (0, 27)),
        ("SELECT AVG(mht_total) FROM screenings", 90, (0, 90)),
        ("SELECT SUM(followups_done) FROM screenings", 52, (0, 52)),
        # county: interview days clamp at 90, not the province's 180
        ("SELECT AVG(interview_days) FROM screenings", 90, (0, 90)),
        ("SELECT QUANTILE(interview_days, 0.5) FROM screenings", 1, (0, 90)),
    ],
)
def test_sensitivity_and_bounds(
    query: str, sensitivity: int, bounds: tuple[int, int] | None, loaded: tuple[NodeConfig, Policy]
) -> None:
    plan = _plan(f"{query} {Y}", loaded[1])
    assert plan.sensitivity == sensitivity
    assert plan.bounds == bounds


# --- the SQL text: policy names, fixed keywords, placeholders ------------------------

_KEYWORDS = {
    "SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "IS", "NULL", "GROUP", "BY",
    "COUNT", "SUM", "MIN", "MAX", "CASE", "WHEN", "THEN", "ELSE", "END",
}  # fmt: skip


def _assert_safe(plan: Plan, policy: Policy) -> None:
    names = set(policy.datasets[plan.spec.dataset].columns) | {plan.spec.dataset}
    for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", plan.sql):
        assert word in _KEYWORDS or word in names, word
    for forbidden in ("'", '"', ";", "--", "/*"):
        assert forbidden not in plan.sql
    assert plan.sql.count("?") == len(plan.params)


@pytest.mark.parametrize("query", [q for q, _ in REFERENCE])
def test_sql_holds_only_policy_names_and_placeholders(
    query: str, loaded: tuple[NodeConfig, Policy]
) -> None:
    _assert_safe(_plan(query, loaded[1]), loaded[1])


@settings(max_examples=100, deadline=None, database=None)
@given(
    value=st.text(min_size=1, max_size=30)
    | st.sampled_from(["F' OR 1=1 --", "F'); DROP TABLE screening; --", 'M" OR "1"="1']),
    column=st.sampled_from(["sex", "grade", "phq9_band"]),
)
def test_values_never_reach_the_sql_text(value: str, column: str) -> None:
    """Any string value is checked against the public domain; accepted values are params."""
    policy = _POLICY
    spec = QuerySpec(
        "screenings", SpecMeasure("count"), (), Comparison(column, "=", (value,)), (YEAR,)
    )
    rule = policy.datasets["screenings"].columns[column]
    assert isinstance(rule, CategoryRule)
    if value in rule.domain:
        plan = compile_query(spec, policy)
        _assert_safe(plan, policy)
        assert value in plan.params
    else:
        with pytest.raises(QueryRefused, match=f"is not in the public domain of {column}"):
            compile_query(spec, policy)


# --- refusals -----------------------------------------------------------------------

REFUSED: list[tuple[str, str]] = [
    (f"SELECT COUNT(*) FROM screening {Y}", "unknown dataset 'screening'"),
    (f"SELECT COUNT(*) FROM ledger_charge {Y}", "unknown dataset 'ledger_charge'"),
    (f"SELECT nosuch, COUNT(*) FROM screenings {Y} GROUP BY 1", "unknown column nosuch"),
    (f"SELECT COUNT(*) FROM screenings {Y} AND nosuch = 1", "unknown column nosuch"),
    # withheld by the province (school_id) and by the county (economic_hardship)
    (f"SELECT school_id, COUNT(*) FROM screenings {Y} GROUP BY 1", "column school_id is withheld"),
    (f"SELECT COUNT(*) FROM screenings {Y} AND school_id = '1301020001'", "school_id is withheld"),
    (
        f"SELECT RATE(school_id = '1301020001') FROM screenings {Y}",
        "school_id is withheld",
    ),
    (
        f"SELECT economic_hardship, COUNT(*) FROM screenings {Y} GROUP BY 1",
        "economic_hardship is withheld",
    ),
    # identifiers and bookkeeping are not in the catalogue
    (f"SELECT student_key, COUNT(*) FROM screenings {Y} GROUP BY 1", "unknown column student_key"),
    (f"SELECT class_id, COUNT(*) FROM screenings {Y} GROUP BY 1", "unknown column class_id"),
    (f"SELECT COUNT(*) FROM screenings {Y} AND class_id = 'S10-3'", "unknown column class_id"),
    (f"SELECT COUNT(*) FROM screenings {Y} AND id = 1", "unknown column id"),
    (f"SELECT COUNT(*) FROM screenings {Y} AND bounded = 1", "unknown column bounded"),
    (f"SELECT COUNT(*) FROM screenings {Y} AND batch_id = 1", "unknown column batch_id"),
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND screening_date = '2024-10-08'",
        "unknown column screening_date",
    ),
    # what a column may be used for
    (
        f"SELECT left_behind, COUNT(*) FROM screenings {Y} GROUP BY 1",
        "left_behind may not be used for GROUP BY",
    ),
    (
        f"SELECT phq9_total, COUNT(*) FROM screenings {Y} GROUP BY 1",
        "phq9_total may not be used for GROUP BY",
    ),
    (f"SELECT SUM(phq9_band) FROM screenings {Y}", "phq9_band may not be used for SUM"),
    (f"SELECT SUM(interview_days) FROM screenings {Y}", "interview_days may not be used for SUM"),
    (
        f"SELECT QUANTILE(followups_done, 0.5) FROM screenings {Y}",
        "followups_done may not be used for QUANTILE",
    ),
    (f"SELECT AVG(sex) FROM screenings {Y}", "column sex may not be used for MEAN"),
    # values outside the public domain (the county's narrower one)
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND sex = 'X'",
        "'X' is not in the public domain of sex",
    ),
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND school_type = 'university'",
        "'university' is not in the public domain of school_type",
    ),
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND county_code = '130104'",
        "'130104' is not in the public domain of county_code",
    ),
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND boarding = 2",
        "2 is not in the public domain of boarding",
    ),
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND boarding = 1.0",
        "1.0 is not in the public domain of boarding",
    ),
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND boarding = '1'",
        "'1' is not in the public domain of boarding",
    ),
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND sex IN ('F', 'Z')",
        "'Z' is not in the public domain of sex",
    ),
    (f"SELECT RATE(grade = 'U1') FROM screenings {Y}", "'U1' is not in the public domain of grade"),
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND sex = 'F'' OR 1=1 --'",
        '"F\' OR 1=1 --" is not in the public domain of sex',
    ),
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND phq9_total > 'x'",
        "phq9_total is numeric; 'x' is not a number",
    ),
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND phq9_total > 1e999",
        "number out of range for phq9_total: 1e999",
    ),
    # too many cells: 12 grades × 2 sexes × 3 locations × 5 age bands
    (
        f"SELECT grade, sex, location, age_band, COUNT(*) FROM screenings {Y} GROUP BY 1, 2, 3, 4",
        "360 cells exceed the limit of 200",
    ),
    ("SELECT COUNT(*) FROM screenings", "no academic year given"),
]


@pytest.mark.parametrize(("query", "reason"), REFUSED, ids=[q[:80] for q, _ in REFUSED])
def test_refusals_name_the_offending_part(
    query: str, reason: str, loaded: tuple[NodeConfig, Policy]
) -> None:
    with pytest.raises(QueryRefused, match=re.escape(reason)):
        _plan(query, loaded[1])


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (
            QuerySpec(
                "screenings", SpecMeasure("count"), ("sex; DROP TABLE screening",), None, (YEAR,)
            ),
            "'sex; DROP TABLE screening' is not a plain identifier",
        ),
        (
            QuerySpec("screenings; DROP TABLE screening", SpecMeasure("count"), (), None, (YEAR,)),
            "unknown dataset 'screenings; DROP TABLE screening'",
        ),
        (
            QuerySpec(
                "screenings",
                SpecMeasure("count"),
                (),
                Comparison("sex = sex OR 1", "=", ("F",)),
                (YEAR,),
            ),
            "'sex = sex OR 1' is not a plain identifier",
        ),
        (
            QuerySpec(
                "screenings",
                SpecMeasure("sum", column="phq9_total) FROM screening --"),
                (),
                None,
                (YEAR,),
            ),
            "is not a plain identifier",
        ),
        (
            QuerySpec(
                "screenings",
                SpecMeasure(
                    "rate", condition=BoolOp("not", (Comparison("student_key", "=", ("x",)),))
                ),
                (),
                None,
                (YEAR,),
            ),
            "unknown column student_key",
        ),
        (
            QuerySpec("screenings", SpecMeasure("rate"), (), None, (YEAR,)),
            "RATE needs a condition",
        ),
    ],
)
def test_typed_specs_are_checked_like_parsed_ones(
    spec: QuerySpec, reason: str, loaded: tuple[NodeConfig, Policy]
) -> None:
    """A typed spec (not from parse_sql) gets no shape check: the compiler must hold."""
    with pytest.raises(QueryRefused, match=re.escape(reason)):
        compile_query(spec, loaded[1])


@pytest.mark.parametrize(
    "query",
    [
        "SELECT COUNT(*) FROM screenings WHERE academic_year = '1999-2000'",
        "SELECT COUNT(*) FROM screenings WHERE academic_year = 2024",
        "SELECT COUNT(*) FROM screenings WHERE academic_year IN ('2024-2025', 'x')",
    ],
)
def test_years_outside_the_public_domain_are_refused(
    query: str, loaded: tuple[NodeConfig, Policy]
) -> None:
    """academic_year is a category column with a public domain (2023-2024 .. 2025-2026): the
    period taken from WHERE is checked like any other value, so no budget is ever charged
    for a year such as '1999-2000', '2024' or 'x'."""
    with pytest.raises(QueryRefused, match="public domain of academic_year"):
        _plan(query, loaded[1])


def test_typed_spec_with_an_injected_year_is_refused(loaded: tuple[NodeConfig, Policy]) -> None:
    """Through a typed spec too: the year would travel as a parameter (no injection), but a
    year outside the public domain is refused before it could become a budget year."""
    spec = QuerySpec("screenings", SpecMeasure("count"), (), None, ("2024-2025') OR (1=1",))
    with pytest.raises(QueryRefused, match="public domain of academic_year"):
        compile_query(spec, loaded[1])


@pytest.mark.parametrize("literal", [str(2**63), str(10**400)], ids=["2**63", "10**400"])
def test_numbers_sqlite_cannot_hold_are_refused(
    literal: str, loaded: tuple[NodeConfig, Policy], conn: sqlite3.Connection
) -> None:
    """An integer literal beyond SQLite's 64-bit range in a numeric filter is refused (not an
    OverflowError from math.isfinite at compile time, for 10**400, or from SQLite when the
    SQL runs, for 2**63 — a traceback instead of a recorded refusal)."""
    query = f"SELECT COUNT(*) FROM screenings {Y} AND phq9_total < {literal}"
    try:
        plan = _plan(query, loaded[1])
    except QueryRefused:
        return
    conn.execute(plan.sql, plan.params).fetchall()


# --- quantile: SQL counts give OpenDP's scores, on random data -------------------------


def _quantile_policy(
    policy: Policy, bounds: tuple[int, int], candidates: tuple[int, ...]
) -> Policy:
    screenings = policy.datasets["screenings"]
    rule = NumericRule(bounds, frozenset({Measure.FILTER, Measure.QUANTILE}), candidates)
    dataset = dataclasses.replace(screenings, columns={**screenings.columns, "phq9_total": rule})
    return dataclasses.replace(policy, datasets={**policy.datasets, "screenings": dataset})


@settings(max_examples=60, deadline=None, database=None)
@given(
    data=st.lists(st.integers(-5, 35) | st.none(), max_size=50),
    candidates=st.lists(st.integers(0, 27), min_size=1, max_size=10, unique=True),
    q=st.sampled_from([0.5, 0.25, 0.75]),
)
def test_quantile_sql_scores_equal_opendp_on_clamped_data(
    data: list[int | None], candidates: list[int], q: float
) -> None:
    """Counts from the compiled SQL (clamping to bounds, skipping NULL) give the same scores
    as OpenDP's scorer on the clamped non-null values. (Dyadic levels only: for other
    levels see test_mechanisms.py::test_quantile_scores_equal_opendp_scores.)"""
    bounds = (0, 27)
    policy = _quantile_policy(_POLICY, bounds, tuple(sorted(candidates)))
    plan = compile_query(
        QuerySpec(
            "screenings", SpecMeasure("quantile", column="phq9_total", q=q), (), None, (YEAR,)
        ),
        policy,
    )
    db = sqlite3.connect(":memory:")
    try:
        db.execute("CREATE TABLE screenings (academic_year TEXT, phq9_total INTEGER)")
        db.executemany("INSERT INTO screenings VALUES (?, ?)", [(YEAR, v) for v in data])
        db.execute("INSERT INTO screenings VALUES ('2023-2024', 3)")  # another year: not read
        (row,) = db.execute(plan.sql, plan.params).fetchall()
    finally:
        db.close()
    counts = [v or 0 for v in row]
    scores, sensitivity = quantile_scores(counts[0::2], counts[1::2], q)
    clamped = [min(max(v, bounds[0]), bounds[1]) for v in data if v is not None]
    scorer = dp.t.make_quantile_score_candidates(
        dp.vector_domain(dp.atom_domain(T="i64")),
        dp.symmetric_distance(),
        list(plan.candidates),
        q,
    )
    assert scores == list(scorer(clamped))
    assert sensitivity == scorer.map(1)
