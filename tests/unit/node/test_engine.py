"""The query engine on a real node: answers, the cache, refusals, and the released intervals.

Every test runs the real engine (SQLite file, merged county policy, OpenDP noise). The
county 130102 policy is tighter than the province's: per-query cap ε 0.5, ε 6 per year,
analysts 0.4 of it (the monitoring centre 0.6), threshold 20, and any query above ε 0.3
waits for the operator's approval — so these tests spend at most ε 0.3 per query.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from exportrows import SENIOR_AGES, school_row, varied_rows, write_csv

from fedscreen.errors import QueryRefused
from fedscreen.node import ledger, store
from fedscreen.node.cells import ratio, release
from fedscreen.node.engine import (
    MAX_RECORDED_CHARS,
    Answer,
    QueryRequest,
    answer_query,
)
from fedscreen.node.home import NodeConfig, init_home, load_config
from fedscreen.node.ingest import ingest_paths
from fedscreen.policy import Policy
from fedscreen.policy import digest as policy_digest
from fedscreen.query import mechanisms
from fedscreen.query.compile import compile_query
from fedscreen.query.spec import BoolOp, Comparison, Condition, Measure, QuerySpec
from fedscreen.query.sqlparse import parse_sql
from fedscreen.tlog import memberlog

YEAR = "2024-2025"
EARLIER = "2023-2024"
Y = f"WHERE academic_year = '{YEAR}'"

#: tables a refused query must leave exactly as they were
DATA_TABLES = (
    "screening",
    "ingest_batch",
    "meta",
    "school",
    "school_grade",
    "ledger_charge",
    "query_answer",
    "query_approval",
)
#: standard deviations between each statistical assertion and its tolerance bound
SIGMAS = 5.0


# --- helpers ----------------------------------------------------------------------


def load(config: NodeConfig, path: Path, rows: list[dict[str, str]]) -> None:
    _, rejected = ingest_paths(config, [write_csv(path, rows)])
    assert not rejected, rejected


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A node home holding 600 screenings for 2024-2025 and 300 for 2023-2024."""
    base = tmp_path_factory.mktemp("engine")
    config = init_home(base / "node", node_id="130102", name="长安区")
    load(config, base / "a.csv", varied_rows(600))
    load(config, base / "b.csv", varied_rows(300, year=EARLIER, first=5_000))
    return config.home


@pytest.fixture
def node(template: Path, tmp_path: Path) -> NodeConfig:
    """A private copy of the template node (files copied while no connection is open)."""
    home = tmp_path / "node"
    shutil.copytree(template, home)
    return load_config(home)


@pytest.fixture
def conn(node: NodeConfig) -> Iterator[sqlite3.Connection]:
    connection = store.connect(node.database)
    try:
        yield connection
    finally:
        connection.close()


def ask(
    config: NodeConfig,
    conn: sqlite3.Connection,
    sql: str,
    *,
    analyst: str = "alice",
    epsilon: float | None = 0.1,
    accuracy: float | None = None,
    policy: Policy | None = None,
) -> Answer:
    request = QueryRequest(analyst, None, epsilon=epsilon, accuracy=accuracy, text=sql)
    return answer_query(config, policy or config.policy(), request, conn=conn)


def charges(conn: sqlite3.Connection) -> list[tuple[str, str, int, int]]:
    return conn.execute(
        "SELECT academic_year, analyst, epsilon_micro, answer_id FROM ledger_charge "
        "ORDER BY charge_id"
    ).fetchall()


def refusals(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    return conn.execute(
        "SELECT analyst, query, reason FROM query_refusal ORDER BY refusal_id"
    ).fetchall()


def snapshot(conn: sqlite3.Connection) -> dict[str, tuple[int, str]]:
    """Row count and a digest of every row, per data table, and the data tables' schema."""
    out: dict[str, tuple[int, str]] = {}
    for table in DATA_TABLES:
        rows = conn.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()
        out[table] = (len(rows), hashlib.sha256(repr(rows).encode()).hexdigest())
    schema = conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'tlog%' "
        "AND name NOT LIKE 'log%' AND name NOT LIKE 'sqlite_%' ORDER BY name"
    ).fetchall()
    out["schema"] = (len(schema), hashlib.sha256(repr(schema).encode()).hexdigest())
    return out


def exact_coverage(scale: float, half: int) -> float:
    """P(|noise| <= half) for discrete Laplace noise of this scale."""
    p = math.exp(-1 / scale)
    return 1 - 2 * p ** (half + 1) / (1 + p)


# --- answers ------------------------------------------------------------------------


def test_count_answer_body(node: NodeConfig, conn: sqlite3.Connection) -> None:
    policy = node.policy()
    answer = ask(node, conn, f"SELECT sex, COUNT(*) FROM screenings {Y} GROUP BY sex")
    body = answer.body
    assert not answer.cached
    assert body["epsilon"] == 0.1
    assert body["analyst"] == "alice"
    assert body["node_id"] == "130102"
    assert body["unit_of_privacy"] == "one student in one academic year"
    assert body["policy_digest"] == policy_digest(policy)
    assert body["threshold"] == 20  # the county's, not the province's 10
    assert body["alpha"] == 0.05
    assert body["data_version"] == 2
    assert body["mechanism"] == "discrete_laplace"
    assert body["scale"] == pytest.approx(10.0)
    assert (
        body["query"]
        == parse_sql(f"SELECT sex, COUNT(*) FROM screenings {Y} GROUP BY sex").to_json()
    )
    half = mechanisms.half_width(10.0)
    assert [c["group"] for c in body["cells"]] == [["M"], ["F"]]
    for cell in body["cells"]:
        assert cell["lower"] == cell["value"] - half
        assert cell["upper"] == cell["value"] + half
        assert cell["suppressed"] == (cell["value"] < 20)
        assert cell["display"] == ("< 20" if cell["value"] < 20 else str(cell["value"]))
    # one charge, for the one year read, and the answer is committed when returned
    assert charges(conn) == [(YEAR, "alice", 100_000, answer.answer_id)]
    other = store.connect(node.database)
    try:
        (stored,) = other.execute(
            "SELECT epsilon_micro FROM query_answer WHERE answer_id = ?", (answer.answer_id,)
        ).fetchone()
        assert stored == 100_000
        assert not conn.in_transaction
    finally:
        other.close()


def test_several_years_charge_each_year(node: NodeConfig, conn: sqlite3.Connection) -> None:
    answer = ask(
        node,
        conn,
        "SELECT academic_year, COUNT(*) FROM screenings "
        f"WHERE academic_year IN ('{YEAR}', '{EARLIER}') GROUP BY academic_year",
        epsilon=0.25,
    )
    assert [c["group"] for c in answer.body["cells"]] == [[EARLIER], [YEAR]]
    assert sorted(charges(conn)) == [
        (EARLIER, "alice", 250_000, answer.answer_id),
        (YEAR, "alice", 250_000, answer.answer_id),
    ]


def test_no_year_means_the_latest_year(node: NodeConfig, conn: sqlite3.Connection) -> None:
    answer = ask(node, conn, "SELECT COUNT(*) FROM screenings")
    assert answer.body["query"]["years"] == [YEAR]
    assert [c[0] for c in charges(conn)] == [YEAR]


def test_a_node_without_screenings_refuses(node_home: NodeConfig) -> None:
    conn = store.connect(node_home.database)
    try:
        with pytest.raises(QueryRefused, match="holds no screenings yet"):
            ask(node_home, conn, "SELECT COUNT(*) FROM screenings")
        assert refusals(conn)[0][2] == "no-data: this node holds no screenings yet"
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("sql", "mechanism"),
    [
        (f"SELECT SUM(phq9_total) FROM screenings {Y}", "discrete_laplace"),
        (f"SELECT sex, AVG(phq9_total) FROM screenings {Y} GROUP BY sex", "discrete_laplace ratio"),
        (f"SELECT RATE(phq9_total >= 10) FROM screenings {Y}", "discrete_laplace ratio"),
        (f"SELECT sex, QUANTILE(phq9_total, 0.5) FROM screenings {Y} GROUP BY sex", "exponential"),
    ],
)
def test_every_measure_is_answered_and_charged(
    sql: str, mechanism: str, node: NodeConfig, conn: sqlite3.Connection
) -> None:
    answer = ask(node, conn, sql, epsilon=0.2)
    assert answer.body["mechanism"].startswith(mechanism)
    assert charges(conn) == [(YEAR, "alice", 200_000, answer.answer_id)]
    for cell in answer.body["cells"]:
        if answer.body["query"]["measure"]["kind"] == "quantile":
            assert cell["value"] in range(28)
        elif cell.get("value") is not None and "denominator" in cell:
            low, high = (0, 27) if "AVG" in sql else (0, 1)
            assert low <= cell["lower"] <= cell["value"] <= cell["upper"] <= high


def test_quantile_answer_names_the_mechanism_opendp_runs(
    node: NodeConfig, conn: sqlite3.Connection
) -> None:
    """The signed answer states its mechanism. OpenDP 0.16's ``make_noisy_max`` with
    ``max_divergence`` adds *exponential* noise (report-noisy-max = permute-and-flip; its
    selection frequencies are pinned in test_mechanisms.py), not Gumbel noise — Gumbel is
    what it uses for zCDP. The answer must not claim Gumbel noise."""
    answer = ask(node, conn, f"SELECT QUANTILE(phq9_total, 0.5) FROM screenings {Y}")
    assert "Gumbel" not in answer.body["mechanism"], answer.body["mechanism"]


def test_public_dataset_is_exact_and_free(
    node: NodeConfig, conn: sqlite3.Connection, tmp_path: Path
) -> None:
    rows = [school_row("1301020001", g, eligible=str(100 + i)) for i, g in enumerate(SENIOR_AGES)]
    load(node, tmp_path / "schools.csv", rows)
    request = QueryRequest("alice", None, text=f"SELECT SUM(eligible) FROM school_grades {Y}")
    answer = answer_query(node, node.policy(), request, conn=conn)
    assert answer.body["mechanism"] == "none (public data)"
    assert answer.body["cells"] == [{"group": [], "value": 100 + 101 + 102}]
    assert answer.body["epsilon"] == 0
    assert charges(conn) == []


@pytest.mark.parametrize("pinned", [True, False])
def test_public_data_for_a_year_without_school_tables_is_refused_no_data(
    pinned: bool, node: NodeConfig, conn: sqlite3.Connection, tmp_path: Path
) -> None:
    """Finding F4: school tables are loaded for YEAR only; a year without them (pinned by
    the coordinator or named in the query) is refused no-data, not answered an exact 0.
    Screenings exist for EARLIER, so the school-table batches are what is checked."""
    load(node, tmp_path / "schools.csv", [school_row("1301020001", "S10")])
    sql = "SELECT SUM(eligible) FROM school_grades"
    request = (
        QueryRequest("alice", None, text=sql, academic_year=EARLIER)
        if pinned
        else QueryRequest("alice", None, text=f"{sql} WHERE academic_year = '{EARLIER}'")
    )
    with pytest.raises(QueryRefused, match=f"no school tables for {EARLIER}"):
        answer_query(node, node.policy(), request, conn=conn)
    assert refusals(conn)[-1][2] == f"no-data: this node holds no school tables for {EARLIER}"
    assert charges(conn) == []
    # the year that is loaded is still answered
    loaded = QueryRequest("alice", None, text=sql, academic_year=YEAR)
    assert answer_query(node, node.policy(), loaded, conn=conn).body["cells"][0]["value"] > 0


# --- the cache ----------------------------------------------------------------------


def test_identical_query_returns_the_same_answer_without_a_charge(
    node: NodeConfig, conn: sqlite3.Connection, tmp_path: Path
) -> None:
    sql = f"SELECT sex, COUNT(*) FROM screenings {Y} GROUP BY sex"
    first = ask(node, conn, sql)
    again = ask(node, conn, sql)
    assert again.cached
    assert again.answer_id == first.answer_id
    assert again.body == first.body  # the same noisy values: averaging teaches nothing
    # another spelling of the same question is the same question
    respelled = ask(node, conn, f"select sex, count(*) from screenings {Y.lower()} group by 1")
    assert respelled.cached
    assert respelled.body == first.body
    assert len(charges(conn)) == 1

    # another ε is another question: new noise, new charge
    dearer = ask(node, conn, sql, epsilon=0.2)
    assert not dearer.cached
    assert dearer.answer_id != first.answer_id
    assert len(charges(conn)) == 2

    # new data: the data version moves on and the same question is answered afresh
    load(node, tmp_path / "more.csv", varied_rows(50, first=20_000, school="1301020002"))
    fresh = ask(node, conn, sql)
    assert not fresh.cached
    assert fresh.answer_id not in (first.answer_id, dearer.answer_id)
    assert fresh.body["data_version"] == first.body["data_version"] + 1
    assert len(charges(conn)) == 3
    assert [c[2] for c in charges(conn)] == [100_000, 200_000, 100_000]
    # and that answer is cached in turn
    assert ask(node, conn, sql).body == fresh.body
    assert len(charges(conn)) == 3


def test_cache_survives_a_new_connection(node: NodeConfig, conn: sqlite3.Connection) -> None:
    sql = f"SELECT RATE(boarding = 1) FROM screenings {Y}"
    first = ask(node, conn, sql)
    other = store.connect(node.database)
    try:
        again = ask(node, other, sql)
    finally:
        other.close()
    assert again.cached
    assert again.body == first.body
    assert len(charges(conn)) == 1


# --- refusals: a reason naming the part, nothing changed but the refusal record --------

REFUSED: list[tuple[str, dict[str, Any], str]] = [
    (f"SELECT COUNT(*) FROM screenings {Y} AND nosuch = 1", {}, "nosuch"),
    (f"SELECT nosuch, COUNT(*) FROM screenings {Y} GROUP BY nosuch", {}, "nosuch"),
    (f"SELECT COUNT(*) FROM screenings JOIN school_grades ON 1 = 1 {Y}", {}, "JOIN"),
    (f"SELECT COUNT(*) FROM screenings, school {Y}", {}, "JOIN"),
    (f"SELECT COUNT(*) FROM (SELECT * FROM screening) {Y}", {}, "subquer"),
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND sex IN (SELECT sex FROM screening)",
        {},
        "subquer",
    ),
    (f"SELECT MAX(phq9_total) FROM screenings {Y}", {}, "MAX"),
    (f"SELECT COUNT(*) FROM screenings {Y} AND LENGTH(sex) = 1", {}, "LENGTH"),
    (f"SELECT school_id, COUNT(*) FROM screenings {Y} GROUP BY school_id", {}, "school_id"),
    (f"SELECT economic_hardship, COUNT(*) FROM screenings {Y} GROUP BY 1", {}, "economic_hardship"),
    (f"SELECT student_key, COUNT(*) FROM screenings {Y} GROUP BY 1", {}, "student_key"),
    (f"SELECT class_id, COUNT(*) FROM screenings {Y} GROUP BY 1", {}, "class_id"),
    (f"SELECT COUNT(*) FROM screenings {Y} AND class_id = 'S10-3'", {}, "class_id"),
    (f"SELECT COUNT(*) FROM screenings {Y}; SELECT COUNT(*) FROM screenings", {}, "one statement"),
    (f"SELECT COUNT(*) FROM screenings {Y}; DROP TABLE screening", {}, "one statement"),
    ("DELETE FROM ledger_charge", {}, "DELETE"),
    (f"SELECT COUNT(*) FROM screenings {Y} AND sex = 'F'' OR 1=1 --'", {}, "F' OR 1=1 --"),
    (
        f'SELECT "sex; DROP TABLE screening", COUNT(*) FROM screenings {Y} GROUP BY 1',
        {},
        "sex; DROP TABLE screening",
    ),
    (f"SELECT COUNT(*) FROM screenings {Y} AND sex = 'F'); DROP TABLE screening; --", {}, "SQL"),
    (f"SELECT COUNT(*) FROM screenings {Y} AND sex = 'X'", {}, "'X'"),
    (f"SELECT COUNT(*) FROM screenings {Y} AND school_type = 'university'", {}, "'university'"),
    (f"SELECT COUNT(*) FROM screenings {Y} AND boarding = 2", {}, "boarding"),
    ("SELECT COUNT(*) FROM screenings WHERE academic_year = '1999-2000'", {}, "1999-2000"),
    (f"SELECT COUNT(*) FROM screenings {Y} AND phq9_total < {2**64}", {}, "phq9_total"),
    (f"SELECT COUNT(*) FROM screenings {Y} AND phq9_total < 1{'0' * 400}", {}, "phq9_total"),
    (
        f"SELECT grade, sex, location, age_band, COUNT(*) FROM screenings {Y} GROUP BY 1, 2, 3, 4",
        {},
        "360 cells",
    ),
    # the county's cap is 0.5 (the province allows 1.0)
    (f"SELECT COUNT(*) FROM screenings {Y}", {"epsilon": 0.6}, "cap 0.5"),
    (f"SELECT COUNT(*) FROM screenings {Y}", {"epsilon": None, "accuracy": 1.0}, "cap 0.5"),
    (f"SELECT COUNT(*) FROM screenings {Y}", {"epsilon": 0.0}, "epsilon"),
    (f"SELECT COUNT(*) FROM screenings {Y}", {"epsilon": -0.1}, "epsilon"),
    (f"SELECT COUNT(*) FROM screenings {Y}", {"epsilon": math.nan}, "epsilon"),
    (f"SELECT COUNT(*) FROM screenings {Y}", {"epsilon": math.inf}, "epsilon"),
    (f"SELECT COUNT(*) FROM screenings {Y}", {"epsilon": None}, "epsilon or accuracy"),
    (f"SELECT COUNT(*) FROM screenings {Y}", {"accuracy": 20.0}, "epsilon or accuracy"),
    (
        f"SELECT QUANTILE(phq9_total, 0.5) FROM screenings {Y}",
        {"epsilon": None, "accuracy": 20.0},
        "quantile",
    ),
]


@pytest.mark.parametrize(("sql", "options", "part"), REFUSED, ids=[s[:90] for s, _, _ in REFUSED])
def test_refused_queries_change_nothing_but_the_refusal_record(
    sql: str, options: dict[str, Any], part: str, node: NodeConfig, conn: sqlite3.Connection
) -> None:
    ask(node, conn, f"SELECT COUNT(*) FROM screenings {Y}")  # something in the ledger already
    before = snapshot(conn)
    refused_before = refusals(conn)
    with pytest.raises(QueryRefused) as refused:
        ask(node, conn, sql, **options)
    reason = str(refused.value)
    assert part in reason, reason
    assert snapshot(conn) == before
    assert refusals(conn) == [*refused_before, ("alice", sql, reason)]
    assert not conn.in_transaction
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


TYPED: list[tuple[QuerySpec, str]] = [
    (
        QuerySpec(
            "screenings", Measure("count"), (), Comparison("phq9_total", ">", (math.nan,)), (YEAR,)
        ),
        "phq9_total",
    ),
    (
        QuerySpec(
            "screenings", Measure("count"), (), Comparison("phq9_total", ">", (math.inf,)), (YEAR,)
        ),
        "phq9_total",
    ),
    (
        QuerySpec("screenings", Measure("quantile", column="phq9_total", q=1.5), (), None, (YEAR,)),
        "1.5",
    ),
    (
        QuerySpec(
            "screenings", Measure("quantile", column="phq9_total", q=math.nan), (), None, (YEAR,)
        ),
        "QUANTILE",
    ),
    (
        QuerySpec("screenings", Measure("quantile", column="phq9_total"), (), None, (YEAR,)),
        "QUANTILE",
    ),
    (
        QuerySpec("screenings", Measure("count"), ("sex; DROP TABLE screening",), None, (YEAR,)),
        "sex; DROP TABLE screening",
    ),
    (
        QuerySpec("screenings", Measure("count"), (), None, ("2024-2025') OR (1=1",)),
        "2024-2025') OR (1=1",
    ),
]


@pytest.mark.parametrize(
    ("spec", "part"),
    TYPED,
    ids=["nan-value", "inf-value", "q-1.5", "q-nan", "q-missing", "bad-group", "bad-year"],
)
def test_refused_typed_specs_change_nothing_and_release_the_lock(
    spec: QuerySpec, part: str, node: NodeConfig, conn: sqlite3.Connection
) -> None:
    """A typed spec (QueryRequest.spec, built in Python) skips the parser and from_json: the
    engine must still refuse it with a reason, record the refusal (its query text is the
    spec's canonical form — which does not exist for a NaN), and leave no lock held."""
    before = snapshot(conn)
    count = len(refusals(conn))
    with pytest.raises(QueryRefused) as refused:
        answer_query(node, node.policy(), QueryRequest("bob", spec, epsilon=0.1), conn=conn)
    assert part.lower() in str(refused.value).lower(), str(refused.value)
    assert snapshot(conn) == before
    assert len(refusals(conn)) == count + 1
    assert refusals(conn)[-1][2] == str(refused.value)
    assert not conn.in_transaction
    other = sqlite3.connect(node.database, timeout=0.5)
    try:
        other.execute("BEGIN IMMEDIATE")  # the write lock is free
        other.execute("ROLLBACK")
    finally:
        other.close()


def test_query_above_the_approval_threshold_waits_and_costs_nothing(
    node: NodeConfig, conn: sqlite3.Connection
) -> None:
    """The county asks for approval above ε 0.3: such a query is refused (recorded, free)
    until the operator approves that exact request."""
    sql = f"SELECT COUNT(*) FROM screenings {Y}"
    before = snapshot(conn)
    with pytest.raises(QueryRefused, match="approval") as refused:
        ask(node, conn, sql, epsilon=0.4)
    assert refusals(conn)[-1] == ("alice", sql, str(refused.value))
    after = snapshot(conn)
    for table in ("screening", "ledger_charge", "query_answer"):
        assert after[table] == before[table]
    (approval_id,) = conn.execute(
        "SELECT approval_id FROM query_approval WHERE status = 'pending'"
    ).fetchone()
    conn.execute("BEGIN IMMEDIATE")
    ledger.decide_approval(conn, approval_id, approve=True, at="2025-01-01T00:00:00+00:00")
    conn.execute("COMMIT")
    answer = ask(node, conn, sql, epsilon=0.4)
    assert charges(conn) == [(YEAR, "alice", 400_000, answer.answer_id)]


def test_a_positive_epsilon_is_never_charged_as_zero(
    node: NodeConfig, conn: sqlite3.Connection
) -> None:
    """The ledger rounds charges up to whole µε, but with a slack of 1e-6 µε: an ε below
    1e-12 rounds to 0 µε, so the answer (noised at that ε) is released and stored with
    epsilon_micro 0 and no ledger charge at all. Either refuse it or charge ≥ 1 µε."""
    sql = f"SELECT COUNT(*) FROM screenings {Y}"
    try:
        answer = ask(node, conn, sql, epsilon=1e-13)
    except QueryRefused:
        assert charges(conn) == []
        return
    assert charges(conn) != [], "a released answer was not charged"
    assert all(micro >= 1 for _, _, micro, _ in charges(conn))
    assert answer.body["epsilon"] > 0


@pytest.mark.parametrize(
    ("sql", "accuracy"),
    [
        (f"SELECT COUNT(*) FROM screenings {Y}", 20.0),
        (f"SELECT SUM(phq9_total) FROM screenings {Y}", 600.0),
        (f"SELECT RATE(boarding = 1) FROM screenings {Y}", 40.0),
        # the numerator of a mean is a clamped sum (sensitivity 27): it needs a wide target
        (f"SELECT AVG(phq9_total) FROM screenings {Y}", 600.0),
    ],
    ids=["count", "sum", "rate", "mean"],
)
def test_accuracy_request_gives_that_half_width_per_noisy_part(
    sql: str, accuracy: float, node: NodeConfig, conn: sqlite3.Connection
) -> None:
    """QueryRequest.accuracy is "the half-width of the 95% interval wanted for each noisy
    count or sum" — for a mean, the clamped-sum numerator included."""
    answer = ask(node, conn, sql, epsilon=None, accuracy=accuracy)
    (cell,) = answer.body["cells"]
    if "scale" in answer.body:
        scales = [answer.body["scale"]]
    else:
        scales = [cell["numerator"]["scale"], cell["denominator"]["scale"]]
    for scale in scales:
        assert mechanisms.half_width(scale) <= accuracy, (scale, mechanisms.half_width(scale))


# --- the released intervals, statistically ------------------------------------------
#
# Fixed sample sizes and tolerances; each assertion sits ≥ 5 sd inside its bound (the
# margin is asserted too), so a correct implementation fails with probability < 1e-6.

#: ε of the coverage test: exact coverage of the stated interval is 0.9527 at scale 10
COVERAGE_EPSILON = 0.1
COVERAGE_RELEASES = 500
VARIANCE_TOLERANCE = 0.07


def test_released_count_intervals_cover_95_percent(
    node: NodeConfig, conn: sqlite3.Connection
) -> None:
    """500 releases of a 72-cell count (real rows, engine's release()): coverage 94–96%."""
    policy = node.policy()
    plan = compile_query(
        parse_sql(f"SELECT grade, sex, location, COUNT(*) FROM screenings {Y} GROUP BY 1, 2, 3"),
        policy,
    )
    assert len(plan.cells) == 72
    rows = conn.execute(plan.sql, plan.params).fetchall()
    truth = {tuple(r[:3]): r[3] for r in rows}
    true_values = [truth.get(cell, 0) for cell in plan.cells]
    assert sum(true_values) == 600  # absent students are rows (and counted) too
    covered = total = 0
    squares = 0
    half = None
    for _ in range(COVERAGE_RELEASES):
        body = release(plan, rows, COVERAGE_EPSILON, policy.limits.publication_threshold)
        for cell, true in zip(body["cells"], true_values, strict=True):
            half = cell["upper"] - cell["value"]
            assert cell["value"] - cell["lower"] == half
            covered += cell["lower"] <= true <= cell["upper"]
            squares += (cell["value"] - true) ** 2
            total += 1
    assert half == mechanisms.half_width(1 / COVERAGE_EPSILON)
    exact = exact_coverage(1 / COVERAGE_EPSILON, half)
    sd = math.sqrt(exact * (1 - exact) / total)
    assert 0.94 + SIGMAS * sd <= exact <= 0.96 - SIGMAS * sd
    rate = covered / total
    assert 0.94 <= rate <= 0.96, rate
    assert abs(rate - exact) <= SIGMAS * sd
    # and the noise has the discrete Laplace variance 2p/(1-p)^2 (relative sd ≈ sqrt(5/n))
    p = math.exp(-COVERAGE_EPSILON)
    variance = 2 * p / (1 - p) ** 2
    assert SIGMAS * math.sqrt(5.2 / total) <= VARIANCE_TOLERANCE
    assert abs(squares / total - variance) <= VARIANCE_TOLERANCE * variance


@pytest.mark.parametrize(
    ("sql", "epsilon"),
    [
        (
            f"SELECT sex, location, RATE(phq9_total >= 10) FROM screenings {Y} GROUP BY 1, 2",
            0.2,
        ),
        (f"SELECT sex, location, AVG(phq9_total) FROM screenings {Y} GROUP BY 1, 2", 0.5),
    ],
    ids=["rate", "mean"],
)
def test_released_ratio_intervals_cover_at_least_95_percent(
    sql: str, epsilon: float, node: NodeConfig, conn: sqlite3.Connection
) -> None:
    """Rates and means: each part at 97.5%, union bound → ≥ 95%. (Exact coverage here is
    ≈ 0.99, so ≥ 0.95 has > 15 sd of margin at 1,800 samples.)"""
    policy = node.policy()
    plan = compile_query(parse_sql(sql), policy)
    rows = conn.execute(plan.sql, plan.params).fetchall()
    truth = {tuple(r[:2]): r[2] / r[3] for r in rows}
    assert len(truth) == len(plan.cells) == 6
    covered = total = suppressed = 0
    releases = 300
    for _ in range(releases):
        body = release(plan, rows, epsilon, policy.limits.publication_threshold)
        for cell in body["cells"]:
            true = truth[tuple(cell["group"])]
            covered += cell["lower"] <= true <= cell["upper"]
            suppressed += cell["suppressed"]
            total += 1
    assert suppressed <= total // 100  # the cells hold ~90 students: rarely below 20
    assert covered / total >= 0.95, covered / total


def test_ratio_interval_construction() -> None:
    # below the threshold: no value, the whole range
    small = ratio(5, 10.0, 19, 10.0, 0, 1, 20)
    assert small == {"value": None, "lower": 0, "upper": 1, "display": "< 20", "suppressed": True}
    out = ratio(60, 10.0, 200, 10.0, 0, 1, 20)
    half = mechanisms.half_width(10.0, alpha=0.025)  # each part at 97.5%
    assert half == 37
    assert out["value"] == pytest.approx(0.3)
    assert out["lower"] == pytest.approx((60 - half) / (200 + half))
    assert out["upper"] == pytest.approx((60 + half) / (200 - half))
    assert out["display"] == "0.3"
    assert out["suppressed"] is False
    # a negative lower corner is clipped to the lower bound
    assert ratio(30, 10.0, 100, 10.0, 0, 1, 20)["lower"] == 0
    # clipped to the bounds
    clipped = ratio(130, 4.0, 100, 4.0, 0, 1, 20)
    assert clipped["value"] == 1
    assert clipped["upper"] == 1
    # a denominator within its half-width of zero: the upper bound is the bound
    wide = ratio(10, 100.0, 25, 100.0, 0, 27, 20)
    assert wide["upper"] == 27
    assert wide["lower"] == 0


def test_release_of_a_public_plan_is_exact(node: NodeConfig) -> None:
    policy = node.policy()
    plan = compile_query(parse_sql(f"SELECT AVG(eligible) FROM school_grades {Y}"), policy)
    body = release(plan, [(300, 2)], 0.0, 20)
    assert body == {
        "mechanism": "none (public data)",
        "cells": [{"group": [], "value": 300, "denominator": 2}],
    }


# --- issue 12: bad input never crashes, hangs, leaks or costs --------------------------


def last_log_entry(config: NodeConfig, conn: sqlite3.Connection) -> dict[str, Any]:
    """The payload of the node's newest log entry."""
    entries = memberlog.export_log(conn, member_id=config.node_id).entries
    envelope = json.loads(entries[-1])
    return json.loads(base64.b64decode(envelope["payload"]))  # type: ignore[no-any-return]


def assert_refused_and_recorded(
    config: NodeConfig,
    conn: sqlite3.Connection,
    sql: str,
    part: str,
    **options: Any,
) -> str:
    """``sql`` is refused naming ``part``; the refusal is in the table and the log; free."""
    before = snapshot(conn)
    with pytest.raises(QueryRefused) as refused:
        ask(config, conn, sql, **options)
    reason = str(refused.value)
    assert part in reason, reason
    assert refusals(conn)[-1] == ("alice", sql, reason)
    entry = last_log_entry(config, conn)
    assert (entry["kind"], entry["query"], entry["reason"], entry["epsilon"]) == (
        "refusal",
        sql,
        reason,
        0,
    )
    assert snapshot(conn) == before
    assert not conn.in_transaction
    return reason


_WHERE = f"SELECT COUNT(*) FROM screenings {Y} AND "
DEEP = [
    ("50 parentheses", _WHERE + "(" * 50 + "sex = 'F'" + ")" * 50),
    ("100 NOT", _WHERE + "NOT " * 100 + "sex = 'F'"),
    ("RATE of 40", "SELECT RATE(" + "(" * 40 + "sex = 'F'" + ")" * 40 + ") FROM screenings"),
    ("signs", _WHERE + "phq9_total > " + "- " * 500 + "1"),
]


@pytest.mark.parametrize(("name", "sql"), DEEP, ids=[n for n, _ in DEEP])
def test_deeply_nested_queries_are_refused_and_recorded(
    name: str, sql: str, node: NodeConfig, conn: sqlite3.Connection
) -> None:
    """They ended in a RecursionError traceback, unrecorded; now a recorded refusal."""
    assert_refused_and_recorded(node, conn, sql, "nested deeper than 16 levels")


def test_texts_that_cannot_be_stored_as_given_are_still_recorded(
    node: NodeConfig, conn: sqlite3.Connection
) -> None:
    """A lone surrogate (from a command line's undecodable bytes) and a huge text: refused,
    and recorded in storable form — the surrogate escaped, the text cut."""
    sql = f"SELECT COUNT(*) FROM screenings {Y} AND sex = '\udcff'"
    with pytest.raises(QueryRefused, match="not valid Unicode"):
        ask(node, conn, sql)
    assert refusals(conn)[-1][1] == sql.replace("\udcff", "\\udcff")
    huge = "SELECT " + "x" * 1_000_000
    with pytest.raises(QueryRefused, match="longer than 4000"):
        ask(node, conn, huge)
    recorded = refusals(conn)[-1][1]
    assert recorded.startswith(huge[:MAX_RECORDED_CHARS])
    assert recorded.endswith("(1,000,007 characters)")
    assert len(recorded) < MAX_RECORDED_CHARS + 40
    assert last_log_entry(node, conn)["query"] == recorded
    assert charges(conn) == []


def test_a_deep_typed_spec_is_refused_and_recorded(
    node: NodeConfig, conn: sqlite3.Connection
) -> None:
    cond: Condition = Comparison("sex", "=", ("F",))
    for _ in range(10_000):
        cond = BoolOp("not", (cond,))
    spec = QuerySpec("screenings", Measure("count"), (), cond, (YEAR,))
    before = snapshot(conn)
    with pytest.raises(QueryRefused, match="deeper than 16"):
        answer_query(node, node.policy(), QueryRequest("bob", spec, epsilon=0.1), conn=conn)
    analyst, query, reason = refusals(conn)[-1]
    assert (analyst, reason) == (
        "bob",
        "policy: conditions nested deeper than 16 levels of AND/OR/NOT",
    )
    assert "nested too deeply to print" in query
    assert snapshot(conn) == before


@pytest.mark.parametrize(
    ("sql", "options"),
    [
        (f"SELECT COUNT(*) FROM screenings {Y}", {"epsilon": 1e-300}),
        (f"SELECT COUNT(*) FROM screenings {Y}", {"epsilon": 5e-324}),
        (f"SELECT COUNT(*) FROM screenings {Y}", {"epsilon": 9.9e-7}),
        (f"SELECT COUNT(*) FROM screenings {Y}", {"epsilon": None, "accuracy": 1e308}),
        (f"SELECT RATE(boarding = 1) FROM screenings {Y}", {"epsilon": None, "accuracy": 1e308}),
        (f"SELECT SUM(phq9_total) FROM screenings {Y}", {"epsilon": 1e-300}),
    ],
    ids=["1e-300", "subnormal", "just-below", "accuracy-1e308", "rate-accuracy-1e308", "sum"],
)
def test_an_epsilon_below_the_ledgers_resolution_is_refused_and_costs_nothing(
    sql: str, options: dict[str, Any], node: NodeConfig, conn: sqlite3.Connection
) -> None:
    """ε=1e-300 was charged as 1 µε but answered at scale 1e300: counts saturated at 2^63−1
    and a 300-digit interval."""
    assert_refused_and_recorded(node, conn, sql, "below 1e-06 (1 µε)", **options)
    assert charges(conn) == []


def test_the_smallest_epsilon_after_a_refused_tiny_one_gets_a_fresh_sane_answer(
    node: NodeConfig, conn: sqlite3.Connection
) -> None:
    """The 1e-300 answer used to be cached under 1 µε and handed to a genuine 1e-6 query."""
    sql = f"SELECT sex, COUNT(*) FROM screenings {Y} GROUP BY sex"
    with pytest.raises(QueryRefused):
        ask(node, conn, sql, epsilon=1e-300)
    answer = ask(node, conn, sql, epsilon=1e-6)
    assert not answer.cached
    assert answer.body["epsilon"] == 1e-6
    assert answer.body["scale"] == pytest.approx(1e6, rel=1e-12)
    half = mechanisms.half_width(answer.body["scale"])
    assert half < 10**7
    for cell in answer.body["cells"]:
        assert abs(cell["value"]) < 2**53
        assert cell["upper"] - cell["lower"] == 2 * half
    assert charges(conn) == [(YEAR, "alice", 1, answer.answer_id)]


@pytest.mark.parametrize(
    ("sql", "parts"),
    [
        (f"SELECT sex, COUNT(*) FROM screenings {Y} GROUP BY sex", 1),
        (f"SELECT RATE(boarding = 1) FROM screenings {Y}", 2),
    ],
    ids=["count", "rate"],
)
def test_the_answer_states_and_uses_the_epsilon_it_charges(
    sql: str, parts: int, node: NodeConfig, conn: sqlite3.Connection
) -> None:
    """ε is charged in whole µε, rounded up; the noise is drawn at that ε, so the stated ε,
    the scale and the charge agree — and two ε that charge the same share one cached answer."""
    first = ask(node, conn, sql, epsilon=0.1234561)
    assert first.body["epsilon"] == 0.123457
    assert charges(conn) == [(YEAR, "alice", 123_457, first.answer_id)]
    if parts == 1:
        assert first.body["scale"] == 1 / 0.123457
    else:
        for cell in first.body["cells"]:
            assert cell["numerator"]["scale"] == 1 / (0.123457 / 2)
            assert cell["denominator"]["scale"] == 1 / (0.123457 / 2)
    again = ask(node, conn, sql, epsilon=0.1234569)
    assert again.cached
    assert again.body == first.body
    assert len(charges(conn)) == 1


def _signed_payload(answer: Answer) -> dict[str, Any]:
    return json.loads(base64.b64decode(json.loads(answer.envelope.to_json())["payload"]))  # type: ignore[no-any-return]


def test_answers_name_the_signed_query_or_none_and_the_year_they_are_for(
    node: NodeConfig, conn: sqlite3.Connection
) -> None:
    sql = "SELECT sex, COUNT(*) FROM screenings GROUP BY sex"
    local = _signed_payload(ask(node, conn, sql))
    assert (local["query_id"], local["query_sha256"]) == (None, None)
    assert local["answer"]["query"]["years"] == [YEAR]  # a local query: the latest year
    request = QueryRequest(
        "alice", parse_sql(sql), epsilon=0.1, query_id="ab" * 16, query_sha256="cd" * 32,
        academic_year=EARLIER,
    )  # fmt: skip
    pinned = _signed_payload(answer_query(node, node.policy(), request, conn=conn))
    assert (pinned["query_id"], pinned["query_sha256"]) == ("ab" * 16, "cd" * 32)
    assert pinned["answer"]["query"]["years"] == [EARLIER]
    assert pinned["charged"] == 0.1


@pytest.mark.parametrize("den", [0, -3])
def test_a_zero_threshold_never_divides_by_a_noisy_denominator_of_zero_or_less(den: int) -> None:
    # a county may set publication_threshold = 0; noise can still make a denominator ≤ 0
    cell = ratio(5, 2.0, den, 2.0, 0, 1, 0)
    assert cell["suppressed"] is True
    assert cell["value"] is None
