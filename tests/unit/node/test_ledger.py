"""The privacy ledger: µε arithmetic, the budget decision, the tables, and exhaustion.

The node for county 130102 has ε 6 per academic year, analysts 0.4 of it (ε 2.4) and the
provincial monitoring centre 0.6 (ε 3.6); queries above ε 0.3 need the operator's
approval, so the budget tests spend ε 0.3 per query.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from exportrows import screening_row, write_csv
from hypothesis import given, settings
from hypothesis import strategies as st

from fedscreen.errors import QueryRefused
from fedscreen.node import ledger, store
from fedscreen.node.engine import QueryRequest, answer_query
from fedscreen.node.home import NodeConfig, load_config
from fedscreen.node.ingest import ingest_paths
from fedscreen.protocol.budget import MICRO, Spent, check_budget, from_micro, to_micro

YEAR = "2024-2025"
EARLIER = "2023-2024"
GRADES = {"S10": 15, "S11": 16, "S12": 17}
#: every grade in the county's domain × sex: distinct questions (no cache hits)
QUESTIONS = [
    f"SELECT COUNT(*) FROM screenings WHERE academic_year = '{YEAR}' "
    f"AND grade = '{grade}' AND sex = '{sex}'"
    for grade in ("P4", "P5", "P6", "J7", "J8", "J9", "S10", "S11", "S12", "V1", "V2", "V3")
    for sex in ("M", "F")
]
EPSILON = 0.3  # the most a query may cost here without the operator's approval


# --- µε arithmetic --------------------------------------------------------------------


def test_micro_units() -> None:
    assert MICRO == 1_000_000
    assert to_micro(0.1) == 100_000
    assert to_micro(0.3) == 300_000  # 0.3 · 10⁶ = 300000.00000000006: float noise is no µε
    assert to_micro(1.0) == 1_000_000
    assert to_micro(0.1000001) == 100_001
    assert to_micro(0.10000001) == 100_001  # rounded up: never undercharge
    assert to_micro(1e-6) == 1
    assert from_micro(2_400_000) == 2.4


@settings(max_examples=300, deadline=None, database=None)
@given(micro=st.integers(min_value=1, max_value=100 * MICRO))
def test_whole_micro_amounts_round_trip(micro: int) -> None:
    assert to_micro(from_micro(micro)) == micro


@settings(max_examples=300, deadline=None, database=None)
@given(epsilon=st.floats(min_value=1e-6, max_value=100.0))
def test_charges_are_never_below_the_epsilon_spent(epsilon: float) -> None:
    charged = to_micro(epsilon)
    # within the float slack of one part in 10¹² of a µε, and at most one µε above
    assert charged >= epsilon * MICRO - 1e-6
    assert charged <= epsilon * MICRO + 1


@pytest.mark.parametrize("epsilon", [1e-7, 1e-12, 1e-13, 5e-324])
def test_a_positive_epsilon_costs_at_least_one_micro(epsilon: float) -> None:
    """``to_micro`` subtracts a slack of 1e-6 µε before rounding up, so any ε below 1e-12
    (and 1e-12 itself) becomes 0 µε: the engine then stores and releases an answer with
    no ledger charge. A positive ε must cost at least 1 µε (or be refused)."""
    assert to_micro(epsilon) >= 1


# --- the budget decision (pure) ---------------------------------------------------------


@settings(max_examples=300, deadline=None, database=None)
@given(
    node_spent=st.integers(0, 7 * MICRO),
    analyst_spent=st.integers(0, 7 * MICRO),
    cost=st.integers(1, MICRO),
)
def test_check_budget_allows_exactly_what_fits(
    node_spent: int, analyst_spent: int, cost: int
) -> None:
    node_budget, analyst_budget = 6 * MICRO, 2_400_000
    analyst_spent = min(analyst_spent, node_spent)
    fits = cost <= node_budget - node_spent and cost <= analyst_budget - analyst_spent
    spent = Spent(YEAR, node_spent, analyst_spent)
    if fits:
        check_budget(
            spent,
            cost_micro=cost,
            node_budget_micro=node_budget,
            analyst_budget_micro=analyst_budget,
            analyst="alice",
        )
    else:
        with pytest.raises(QueryRefused, match=f"^budget: .* left for {YEAR}; this query costs"):
            check_budget(
                spent,
                cost_micro=cost,
                node_budget_micro=node_budget,
                analyst_budget_micro=analyst_budget,
                analyst="alice",
            )


def test_check_budget_messages() -> None:
    kwargs = {"node_budget_micro": 6 * MICRO, "analyst_budget_micro": 2_400_000}
    # exactly the rest fits
    check_budget(Spent(YEAR, 5_700_000, 0), cost_micro=300_000, analyst="a", **kwargs)
    check_budget(Spent(YEAR, 2_100_000, 2_100_000), cost_micro=300_000, analyst="a", **kwargs)
    with pytest.raises(QueryRefused) as node_full:
        check_budget(Spent(YEAR, 5_800_000, 0), cost_micro=300_000, analyst="a", **kwargs)
    assert str(node_full.value) == (
        f"budget: the node has ε=0.2 left for {YEAR}; this query costs ε=0.3"
    )
    with pytest.raises(QueryRefused) as analyst_full:
        check_budget(Spent(YEAR, 2_400_000, 2_400_000), cost_micro=1, analyst="a", **kwargs)
    assert str(analyst_full.value) == (
        f"budget: analyst a has ε=0 left for {YEAR}; this query costs ε=1e-06"
    )
    # overspent (e.g. the policy was tightened): 0 left, not a negative number
    with pytest.raises(QueryRefused, match="the node has ε=0 left"):
        check_budget(Spent(YEAR, 7 * MICRO, 0), cost_micro=1, analyst="a", **kwargs)


# --- the tables -------------------------------------------------------------------------


@pytest.fixture
def db(node_home: NodeConfig) -> Iterator[sqlite3.Connection]:
    conn = store.connect(node_home.database)
    try:
        yield conn
    finally:
        conn.close()


def _answer_row(conn: sqlite3.Connection, key: str, micro: int) -> int:
    cursor = conn.execute(
        "INSERT INTO query_answer (cache_key, analyst, spec, epsilon_micro, policy_digest, "
        "data_version, answer, created_at) VALUES (?, 'alice', '{}', ?, 'd', 1, '{}', 't')",
        (key, micro),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def test_charge_spent_and_budget_table(db: sqlite3.Connection) -> None:
    db.execute("BEGIN IMMEDIATE")
    first = _answer_row(db, "k1", 250_000)
    ledger.charge(
        db, years=(YEAR, EARLIER), analyst="alice", cost_micro=250_000, answer_id=first, at="t"
    )
    second = _answer_row(db, "k2", 100_000)
    ledger.charge(db, years=(YEAR,), analyst="bob", cost_micro=100_000, answer_id=second, at="t")
    db.execute("COMMIT")
    assert ledger.spent(db, YEAR, "alice") == Spent(YEAR, 350_000, 250_000)
    assert ledger.spent(db, YEAR, "bob") == Spent(YEAR, 350_000, 100_000)
    assert ledger.spent(db, EARLIER, "bob") == Spent(EARLIER, 250_000, 0)
    assert ledger.spent(db, "2025-2026", "alice") == Spent("2025-2026", 0, 0)
    assert ledger.budget_table(db) == [
        (EARLIER, "alice", 250_000),
        (YEAR, "alice", 250_000),
        (YEAR, "bob", 100_000),
    ]


def test_schema_refuses_free_or_orphan_charges(db: sqlite3.Connection) -> None:
    answer = _answer_row(db, "k", 100_000)
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        ledger.charge(db, years=(YEAR,), analyst="a", cost_micro=0, answer_id=answer, at="t")
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        ledger.charge(db, years=(YEAR,), analyst="a", cost_micro=1, answer_id=999, at="t")
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        _answer_row(db, "k", 100_000)
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        _answer_row(db, "k-negative", -1)
    assert ledger.budget_table(db) == []


def test_record_refusal(db: sqlite3.Connection) -> None:
    ledger.record_refusal(db, analyst="eve", query="SELECT 1", reason="only SELECT", at="t")
    assert db.execute("SELECT analyst, query, reason FROM query_refusal").fetchall() == [
        ("eve", "SELECT 1", "only SELECT")
    ]
    assert ledger.budget_table(db) == []


# --- exhaustion through the engine, and after a restart ----------------------------------


def _rows(count: int, year: str, first: int) -> list[dict[str, str]]:
    rows = []
    for i in range(count):
        grade = list(GRADES)[i % 3]
        rows.append(
            screening_row(
                first + i,
                academic_year=year,
                screening_date=f"{year[:4]}-10-08",
                grade=grade,
                age=GRADES[grade],
                sex="MF"[i % 2],
            )
        )
    return rows


@pytest.fixture
def node(node_home: NodeConfig, tmp_path: Path) -> NodeConfig:
    for year, first in ((YEAR, 1), (EARLIER, 1_000)):
        path = write_csv(tmp_path / f"{year}.csv", _rows(120, year, first))
        _, rejected = ingest_paths(node_home, [path])
        assert not rejected
    return node_home


def _ask(config: NodeConfig, conn: sqlite3.Connection, sql: str, analyst: str) -> None:
    request = QueryRequest(analyst, None, epsilon=EPSILON, text=sql)
    answer_query(config, config.policy(), request, conn=conn)


def _state(conn: sqlite3.Connection) -> tuple[list[tuple[str, str, int]], int]:
    (answers,) = conn.execute("SELECT COUNT(*) FROM query_answer").fetchone()
    return ledger.budget_table(conn), int(answers)


def test_budget_exhaustion_refuses_for_free_and_survives_a_restart(node: NodeConfig) -> None:
    conn = store.connect(node.database)
    try:
        # alice: 8 × 0.3 = her 2.4
        for sql in QUESTIONS[:8]:
            _ask(node, conn, sql, "alice")
        before = _state(conn)
        with pytest.raises(QueryRefused, match=f"analyst alice has ε=0 left for {YEAR}"):
            _ask(node, conn, QUESTIONS[8], "alice")
        assert _state(conn) == before  # a refusal costs nothing
        (reason,) = conn.execute(
            "SELECT reason FROM query_refusal WHERE analyst = 'alice' AND query = ?",
            (QUESTIONS[8],),
        ).fetchone()
        assert reason.startswith("budget: analyst alice has ε=0 left")
        # a question answered before is still answered (the same answer, free)
        _ask(node, conn, QUESTIONS[0], "alice")
        assert _state(conn) == before
        # another year has its own budget
        _ask(node, conn, QUESTIONS[8].replace(YEAR, EARLIER), "alice")
    finally:
        conn.close()

    # a new connection, and the configuration read afresh: still refused
    config = load_config(node.home)
    conn = store.connect(config.database)
    try:
        with pytest.raises(QueryRefused, match="analyst alice has ε=0 left"):
            _ask(config, conn, QUESTIONS[9], "alice")
        # bob spends his 2.4, the monitoring centre only what is left of the node's 6
        for sql in QUESTIONS[8:16]:
            _ask(config, conn, sql, "bob")
        for sql in QUESTIONS[16:20]:
            _ask(config, conn, sql, "hebei-monitoring-centre")
        with pytest.raises(QueryRefused, match=f"the node has ε=0 left for {YEAR}"):
            _ask(config, conn, QUESTIONS[20], "hebei-monitoring-centre")
        # a query over both years is refused when one of them is spent, and charges neither
        before = _state(conn)
        both = QUESTIONS[21].replace(
            f"academic_year = '{YEAR}'", f"academic_year IN ('{YEAR}', '{EARLIER}')"
        )
        with pytest.raises(QueryRefused, match=f"the node has ε=0 left for {YEAR}"):
            _ask(config, conn, both, "carol")
        assert _state(conn) == before
        spent = {(y, a): m for y, a, m in ledger.budget_table(conn)}
        assert spent == {
            (YEAR, "alice"): 2_400_000,
            (YEAR, "bob"): 2_400_000,
            (YEAR, "hebei-monitoring-centre"): 1_200_000,
            (EARLIER, "alice"): 300_000,
        }
        assert ledger.spent(conn, YEAR, "carol").node_micro == 6 * MICRO
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()
