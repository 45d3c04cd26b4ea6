"""Budget statements and refusal reasons across a real federation.

The same federation as ``test_federation.py`` (its builder and helpers, reused):
a real coordinator and three real node processes on 127.0.0.1, mutual TLS,
SQLite ledgers. Nodes sign budget statements when welcomed and after every
answer or refusal; the coordinator keeps the newest per node; the analyst
fetches and verifies them (``fetch_budgets``, ``fedscreen budgets``). Every
wait is bounded by ``READY_TIMEOUT_S``; the tests run in file order and leave
every node running normally.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from test_federation import (
    ANALYST,
    COORDINATOR,
    EPSILON,
    NODES,
    READY_TIMEOUT_S,
    YEAR,
    Federation,
    _cli,
    _failure,
    _query,
    _submit,
    _verified,
    run,
    running_federation,
)

from fedscreen.analyst.budgets import fetch_budgets
from fedscreen.cli.query import print_release
from fedscreen.node.home import load_config
from fedscreen.policy import digest as policy_digest
from fedscreen.protocol.budget import Budgets, to_micro
from fedscreen.trust.identity import load_identity

#: a county document that caps a query at ε 0.05, below the tests' ε 0.1
STRICT_COUNTY = 'version = "test-strict-1"\n\n[limits]\nmax_epsilon_per_query = 0.05\n'


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with running_federation(tmp_path_factory.mktemp("budgets")) as federation:
        yield federation


def _fetch(fed: Federation, home: Path | None = None) -> Budgets:
    return run(lambda: fetch_budgets(home or fed.analyst.home, fed.address))


def _fetch_until(fed: Federation, ready: Callable[[Budgets], bool], what: str) -> Budgets:
    """Fetch the statements until ``ready`` holds (bounded): they travel after the answers."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        budgets = _fetch(fed)
        if ready(budgets):
            return budgets
        assert time.monotonic() < deadline, f"{what}: {budgets}"
        time.sleep(0.1)


def _ledger_micro(fed: Federation, node_id: str, *, analyst: str | None = None) -> int:
    """µε the node's own ledger holds for YEAR (in total, or for ``analyst``)."""
    conn = fed.db(node_id)
    try:
        return int(
            conn.execute(
                "SELECT COALESCE(SUM(epsilon_micro), 0) FROM ledger_charge "
                "WHERE academic_year = ? AND (? IS NULL OR analyst = ?)",
                (YEAR, analyst, analyst),
            ).fetchone()[0]
        )
    finally:
        conn.close()


def _sql(n: int) -> str:
    """A question not asked before (an identical one is answered from the store, free)."""
    return (
        "SELECT sex, COUNT(*) FROM screenings "
        f"WHERE academic_year = '{YEAR}' AND phq9_total >= {n} GROUP BY sex"
    )


def test_statements_reflect_the_charge_at_every_node(fed: Federation) -> None:
    # every node sent a statement when it was welcomed
    before = _fetch_until(fed, lambda b: set(b.statements) == set(NODES), "first statements")
    assert before.connected == NODES
    assert before.missing == ()
    spent = {n: before.statements[n].spent_micro(YEAR, ANALYST) for n in NODES}

    query, envelope = _query(fed, _sql(11))
    submitted = run(lambda: _submit(fed, envelope))
    assert _verified(fed, query, submitted)["answered"] == sorted(NODES)

    cost = to_micro(EPSILON)
    after = _fetch_until(
        fed,
        lambda b: all(b.statements[n].spent_micro(YEAR, ANALYST) == spent[n] + cost for n in NODES),
        "statements after the charge",
    )
    assert after.connected == NODES
    assert after.missing == ()
    for node_id in NODES:
        statement = after.statements[node_id]
        assert statement.issued_at_ms > before.statements[node_id].issued_at_ms
        # exactly the node's own ledger, and its own policy
        assert statement.spent_micro(YEAR) == _ledger_micro(fed, node_id)
        assert statement.spent_micro(YEAR, ANALYST) == _ledger_micro(fed, node_id, analyst=ANALYST)
        policy = load_config(fed.node_home(node_id)).policy()
        assert statement.policy_digest == policy_digest(policy)
        assert statement.limits == policy.limits
        limits = policy.limits
        assert statement.remaining_micro(YEAR, ANALYST) == min(
            to_micro(limits.epsilon_per_node_per_year) - statement.spent_micro(YEAR),
            to_micro(limits.analyst_budget(ANALYST)) - statement.spent_micro(YEAR, ANALYST),
        )


def test_a_stopped_node_keeps_its_last_statement(fed: Federation) -> None:
    victim = NODES[1]
    last = _fetch_until(fed, lambda b: victim in b.statements, "a statement").statements[victim]
    fed.kill_node(victim)
    try:
        gone = _fetch_until(fed, lambda b: victim not in b.connected, "the coordinator to notice")
        assert gone.connected == tuple(n for n in NODES if n != victim)
        assert gone.statements[victim].issued_at_ms == last.issued_at_ms
        assert gone.statements[victim].body == last.body
        assert gone.missing == ()

        # a query meanwhile says why the node is missing
        query, envelope = _query(fed, _sql(12))
        body = _verified(fed, query, run(lambda: _submit(fed, envelope)))
        assert body["missing"] == [victim]
        assert body["missing_reasons"] == {victim: "not connected"}
    finally:
        fed.start_node(victim)
    # welcomed again, it sends a fresh statement
    back = _fetch_until(
        fed,
        lambda b: victim in b.connected and b.statements[victim].issued_at_ms > last.issued_at_ms,
        "a fresh statement",
    )
    assert back.connected == NODES


def test_a_refusing_node_is_missing_with_its_own_reason(fed: Federation) -> None:
    strict = NODES[2]
    home = fed.node_home(strict)
    config_file = home / "node.toml"
    original = config_file.read_text(encoding="utf-8")
    assert original.count("\n[policy]\n") == 1
    (home / "strict.toml").write_text(STRICT_COUNTY, encoding="utf-8")
    config_file.write_text(
        original.replace("\n[policy]\n", '\n[policy]\ncounty = "strict.toml"\n'), encoding="utf-8"
    )
    try:
        fed.restart_node(strict)
        # the new statement already shows the cap: a planner sees the refusal coming
        capped = _fetch_until(
            fed,
            lambda b: b.statements[strict].max_epsilon_per_query == 0.05,
            "the stricter node's statement",
        )
        charged = capped.statements[strict].spent_micro(YEAR, ANALYST)

        query, envelope = _query(fed, _sql(13))
        submitted = run(lambda: _submit(fed, envelope))
        assert submitted.missing == (strict,)
        body = _verified(fed, query, submitted)
        assert body["answered"] == sorted(n for n in NODES if n != strict)
        reason = body["missing_reasons"][strict]
        assert reason == (
            "refused: policy: this query would cost ε=0.1, above the per-query cap 0.05"
        )
        assert list(body["missing_reasons"]) == [strict]
        shown = io.StringIO()
        print_release(body, out=shown)
        assert f"{strict}  {reason}" in shown.getvalue()

        # the refusal brought a fresh statement too, with nothing charged
        after = _fetch_until(
            fed,
            lambda b: b.statements[strict].issued_at_ms > capped.statements[strict].issued_at_ms,
            "a statement after the refusal",
        )
        assert after.statements[strict].spent_micro(YEAR, ANALYST) == charged
    finally:
        config_file.write_text(original, encoding="utf-8")
        fed.restart_node(strict)
    _fetch_until(
        fed,
        lambda b: strict in b.connected and b.statements[strict].max_epsilon_per_query != 0.05,
        "the node back on its usual policy",
    )


def test_only_analysts_and_auditors_may_read_the_statements(fed: Federation) -> None:
    by_auditor = _fetch(fed, fed.auditor.home)
    assert set(by_auditor.statements) == set(NODES)
    for home in (fed.node_home(NODES[0]), fed.coordinator_home):
        member = load_identity(home)

        async def read(member_home: Path = member.home) -> None:
            await fetch_budgets(member_home, fed.address)

        assert _failure(read).code is grpc.StatusCode.PERMISSION_DENIED, member.member_id

    # another federation's member does not get past the TLS handshake
    async def outsider() -> None:
        await fetch_budgets(fed.outsider.home, fed.address, coordinator_id=COORDINATOR)

    assert _failure(outsider).code is grpc.StatusCode.UNAVAILABLE


def test_budgets_command_prints_verified_statements(fed: Federation) -> None:
    common = ("budgets", "--home", str(fed.analyst.home), "--coordinator", fed.address)
    done = _cli(*common, "--format", "json", "--year", YEAR)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["analyst"] == ANALYST
    assert doc["connected"] == list(NODES)
    assert doc["missing"] == []
    budgets = _fetch(fed)
    for node in doc["nodes"]:
        statement = budgets.statements[node["node_id"]]
        assert node["connected"] is True
        assert node["statement"] is True
        [row] = node["years"]
        assert row["year"] == YEAR
        assert row["node_spent"] == statement.spent(YEAR)
        assert row["analyst_spent"] == statement.spent(YEAR, ANALYST)
        assert row["remaining"] == statement.remaining(YEAR, ANALYST)
        assert node["max_epsilon_per_query"] == statement.max_epsilon_per_query

    table = _cli(*common)
    assert table.returncode == 0, table.stderr
    assert "left for analyst" in table.stdout
    for node_id in NODES:
        assert node_id in table.stdout
    by_auditor = _cli("budgets", "--home", str(fed.auditor.home), "--coordinator", fed.address)
    assert by_auditor.returncode == 0, by_auditor.stderr
    assert "not an analyst" in by_auditor.stdout


def test_the_auditor_verifies_releases_that_state_reasons(fed: Federation) -> None:
    bundle = fed.root / "coordinator.bundle"
    done = _cli("coordinator", "export", "--home", str(fed.coordinator_home), "--out", str(bundle))
    assert done.returncode == 0, done.stderr
    verified = _cli(
        "audit", "verify", str(bundle), "--manifest", str(fed.auth / "manifest.json"), "--json"
    )
    assert verified.returncode == 0, (verified.stdout, verified.stderr)
    assert json.loads(verified.stdout)["valid"] is True
