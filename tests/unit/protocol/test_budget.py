"""Budget statements: made from a real node's ledger, signed, verified, and the arithmetic.

The node is county 130102 (``policies/counties/130102.toml``): ε 6 per academic year,
analysts 0.4 of it (ε 2.4), the provincial monitoring centre 0.6 (ε 3.6), a per-query
cap of ε 0.5 and the operator's approval above ε 0.3 — so charges here are ε ≤ 0.3.
Charges are made by the real engine (SQLite, OpenDP), never written by hand.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from exportrows import varied_rows, write_csv
from hypothesis import given, settings
from hypothesis import strategies as st

from fedscreen._util.canonical import canonical_json
from fedscreen.coordinator.runtime import UNVERIFIED_STATEMENTS, keep_statement, settle_statements
from fedscreen.coordinator.sessions import SessionRegistry
from fedscreen.crypto.envelope import ANSWER_V1, sign_envelope
from fedscreen.crypto.signing import SigningKey
from fedscreen.errors import QueryRefused, VerificationError
from fedscreen.node import ledger, store
from fedscreen.node.engine import QueryRequest, answer_query
from fedscreen.node.home import NodeConfig, init_home
from fedscreen.node.ingest import ingest_paths
from fedscreen.node.statement import sign_statement, statement_body
from fedscreen.policy import Policy
from fedscreen.policy import digest as policy_digest
from fedscreen.protocol.budget import (
    BUDGET_V1,
    MICRO,
    BudgetStatement,
    from_micro,
    to_micro,
    verify_budgets,
    verify_statement,
)
from fedscreen.trust import authority
from fedscreen.trust.identity import create_identity, issue_here
from fedscreen.trust.manifest import Manifest

YEAR = "2024-2025"
EARLIER = "2023-2024"
NODE = "130102"
OTHER = "130104"
ALICE = "alice"
CENTRE = "hebei-monitoring-centre"  # the county policy gives it a larger share
MICRO = MICRO


def question(n: int, year: str = YEAR) -> str:
    """Distinct questions (an identical one would be answered from the store, free)."""
    return f"SELECT COUNT(*) FROM screenings WHERE academic_year = '{year}' AND phq9_total >= {n}"


@dataclass
class Setup:
    node: NodeConfig
    manifest: Manifest
    #: another node of the same federation, with its own key
    other: NodeConfig
    analyst: Path


@pytest.fixture
def setup(node_home: NodeConfig, tmp_path: Path) -> Setup:
    auth = tmp_path / "auth"
    authority.init_authority(auth, federation="test")
    issue_here(auth, node_home.home)
    other = init_home(tmp_path / "other", node_id=OTHER, name="桥西区")
    issue_here(auth, other.home)
    create_identity(tmp_path / "analyst", member_id=ALICE, role="analyst", name="Alice")
    issue_here(auth, tmp_path / "analyst")
    for path, rows in (
        (tmp_path / "now.csv", varied_rows(120)),
        (tmp_path / "before.csv", varied_rows(80, year=EARLIER, first=5_000)),
    ):
        _, rejected = ingest_paths(node_home, [write_csv(path, rows)])
        assert not rejected, rejected
    return Setup(node_home, authority.current_manifest(auth), other, tmp_path / "analyst")


@pytest.fixture
def conn(setup: Setup) -> Iterator[sqlite3.Connection]:
    connection = store.connect(setup.node.database)
    try:
        yield connection
    finally:
        connection.close()


def charge(
    config: NodeConfig,
    conn: sqlite3.Connection,
    analyst: str,
    n: int,
    epsilon: float,
    *,
    year: str = YEAR,
    policy: Policy | None = None,
) -> None:
    """One real answer by the engine: the ledger charges ``epsilon`` to ``analyst``."""
    request = QueryRequest(analyst=analyst, spec=None, epsilon=epsilon, text=question(n, year))
    answer = answer_query(config, policy or config.policy(), request, conn=conn)
    assert not answer.cached


def signed(config: NodeConfig, conn: sqlite3.Connection, policy: Policy | None = None) -> bytes:
    body = statement_body(conn, policy or config.policy(), config.node_id)
    return sign_statement(body, key=config.signing_key())


# --- from the ledger --------------------------------------------------------------------


def test_statement_of_an_untouched_node_has_the_whole_budget(
    setup: Setup, conn: sqlite3.Connection
) -> None:
    statement = verify_statement(signed(setup.node, conn), manifest=setup.manifest, node_id=NODE)
    assert statement.body["spent"] == {}
    assert statement.years == ()
    assert statement.spent(YEAR) == 0
    assert statement.spent(YEAR, ALICE) == 0
    assert statement.remaining(YEAR, ALICE) == 2.4
    assert statement.remaining(YEAR, CENTRE) == 3.6


def test_statement_reflects_real_charges_and_the_county_policy(
    setup: Setup, conn: sqlite3.Connection
) -> None:
    config = setup.node
    policy = config.policy()
    charge(config, conn, ALICE, 10, 0.3)
    charge(config, conn, ALICE, 11, 0.3)
    charge(config, conn, CENTRE, 12, 0.2)
    charge(config, conn, ALICE, 13, 0.1, year=EARLIER)
    before_ms = int(time.time() * 1000)
    statement = verify_statement(signed(config, conn), manifest=setup.manifest, node_id=NODE)

    body = statement.body
    assert body["version"] == 1
    assert body["node_id"] == NODE
    assert body["unit"] == "micro-epsilon"
    assert body["spent"] == {
        YEAR: {"node_micro": 800_000, "analysts": {ALICE: 600_000, CENTRE: 200_000}},
        EARLIER: {"node_micro": 100_000, "analysts": {ALICE: 100_000}},
    }
    assert body["limits"] == {
        "epsilon_per_node_per_year": 6.0,
        "max_epsilon_per_query": 0.5,
        "approval_above_epsilon": 0.3,
        "analyst_share": 0.4,
        "analyst_shares": {CENTRE: 0.6},
        "publication_threshold": policy.limits.publication_threshold,
        "max_groups": policy.limits.max_groups,
    }
    assert statement.node_id == NODE
    assert before_ms - 60_000 <= statement.issued_at_ms <= before_ms + 60_000
    assert statement.policy_digest == policy_digest(policy)
    assert (statement.epsilon_per_node_per_year, statement.max_epsilon_per_query) == (6.0, 0.5)
    assert statement.approval_above_epsilon == 0.3
    assert statement.limits == policy.limits
    assert statement.years == (EARLIER, YEAR)

    # the same figures the node's own ledger decides with
    for analyst in (ALICE, CENTRE):
        own = ledger.spent(conn, YEAR, analyst)
        assert statement.spent_micro(YEAR) == own.node_micro
        assert statement.spent_micro(YEAR, analyst) == own.analyst_micro
        assert statement.analyst_budget(analyst) == policy.limits.analyst_budget(analyst)
    assert statement.spent(YEAR) == 0.8
    assert statement.spent(YEAR, ALICE) == 0.6
    assert statement.spent(YEAR, "nobody") == 0
    assert statement.analyst_budget(ALICE) == pytest.approx(2.4)
    assert statement.analyst_budget(CENTRE) == pytest.approx(3.6)
    # alice: min(6 − 0.8, 2.4 − 0.6); the centre's override: min(6 − 0.8, 3.6 − 0.2)
    assert statement.remaining(YEAR, ALICE) == 1.8
    assert statement.remaining(YEAR, CENTRE) == 3.4
    assert statement.remaining(EARLIER, ALICE) == 2.3
    # a year with no charges is untouched
    assert statement.spent("2022-2023") == 0
    assert statement.remaining("2022-2023", ALICE) == 2.4


def test_remaining_is_exactly_what_the_engine_still_accepts(
    setup: Setup, conn: sqlite3.Connection
) -> None:
    """With the node total binding (not the analyst's share), the real engine agrees to the µε."""
    config = setup.node
    base = config.policy()
    limits = dataclasses.replace(
        base.limits,
        epsilon_per_node_per_year=0.75,
        analyst_share=0.8,
        analysts={},
        approval_above_epsilon=None,
    )
    policy = dataclasses.replace(base, limits=limits)
    charge(config, conn, "bob", 20, 0.3, policy=policy)
    charge(config, conn, ALICE, 21, 0.3, policy=policy)

    def statement() -> BudgetStatement:
        return verify_statement(signed(config, conn, policy), manifest=setup.manifest, node_id=NODE)

    first = statement()
    # alice alone could spend 0.6 − 0.3, but the node has only 0.75 − 0.6 left
    assert first.remaining_micro(YEAR, ALICE) == 150_000
    assert first.remaining(YEAR, ALICE) == 0.15
    with pytest.raises(QueryRefused, match=r"the node has ε=0\.15 left"):
        first.check_budget(YEAR, ALICE, epsilon=0.150001)
    first.check_budget(YEAR, ALICE, epsilon=0.15)
    # the node itself refuses one µε more, and accepts exactly what is left
    with pytest.raises(QueryRefused, match=r"the node has ε=0\.15 left"):
        charge(config, conn, ALICE, 22, 0.150001, policy=policy)
    charge(config, conn, ALICE, 23, 0.15, policy=policy)
    after = statement()
    assert after.remaining(YEAR, ALICE) == 0
    assert after.remaining(YEAR, "bob") == 0
    assert after.spent(YEAR) == 0.75


# --- verification -------------------------------------------------------------------------


def _reencode(envelope: bytes, change: Any) -> bytes:
    """The envelope with its payload altered by ``change`` (the signature kept)."""
    doc = json.loads(envelope)
    body = json.loads(base64.b64decode(doc["payload"]))
    change(body)
    doc["payload"] = base64.b64encode(canonical_json(body)).decode()
    return json.dumps(doc).encode()


def test_tampered_foreign_and_misattributed_statements_are_rejected(
    setup: Setup, conn: sqlite3.Connection
) -> None:
    charge(setup.node, conn, ALICE, 30, 0.2)
    genuine = signed(setup.node, conn)
    verify_statement(genuine, manifest=setup.manifest, node_id=NODE)
    body = json.loads(base64.b64decode(json.loads(genuine)["payload"]))

    # a relay that lowers what was spent breaks the node's signature
    def lower(doc: dict[str, Any]) -> None:
        doc["spent"][YEAR]["node_micro"] = 0
        doc["spent"][YEAR]["analysts"][ALICE] = 0

    with pytest.raises(VerificationError, match="does not verify"):
        verify_statement(_reencode(genuine, lower), manifest=setup.manifest, node_id=NODE)
    # signed by a key the manifest does not list, or by another member's key
    for key in (SigningKey.generate(), setup.other.signing_key()):
        with pytest.raises(VerificationError, match="no signature from a trusted key"):
            verify_statement(sign_statement(body, key=key), manifest=setup.manifest, node_id=NODE)
    # the node's genuine statement presented as another node's
    with pytest.raises(VerificationError, match="no signature from a trusted key"):
        verify_statement(genuine, manifest=setup.manifest, node_id=OTHER)
    # a node signing a statement that claims to be another node's
    claimed = sign_statement(body, key=setup.other.signing_key())
    with pytest.raises(VerificationError, match="names node '130102', not '130104'"):
        verify_statement(claimed, manifest=setup.manifest, node_id=OTHER)
    # only nodes make statements; unknown members make none
    with pytest.raises(VerificationError, match="is an analyst, not a node"):
        verify_statement(genuine, manifest=setup.manifest, node_id=ALICE)
    with pytest.raises(VerificationError, match="not an active member"):
        verify_statement(genuine, manifest=setup.manifest, node_id="139999")
    # the node's answer key signing the same bytes as another payload type is no statement
    as_answer = sign_envelope(
        payload_type=ANSWER_V1, payload=canonical_json(body), key=setup.node.signing_key()
    )
    with pytest.raises(VerificationError, match=BUDGET_V1.replace("+", r"\+")):
        verify_statement(as_answer.to_json().encode(), manifest=setup.manifest, node_id=NODE)
    with pytest.raises(VerificationError):
        verify_statement(b"not json", manifest=setup.manifest, node_id=NODE)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.update(version=2), "version"),
        (lambda b: b.update(unit="epsilon"), "unit"),
        (lambda b: b.pop("spent"), "spent"),
        (lambda b: b.update(issued_at_ms=True), "issued_at_ms"),
        (lambda b: b["limits"].update(epsilon_per_node_per_year="6"), "must be a number"),
        (lambda b: b["limits"].update(max_epsilon_per_query=-1.0), ">= 0"),
        (lambda b: b["spent"][YEAR].update(node_micro=1), "not the sum"),
        (lambda b: b["spent"][YEAR]["analysts"].update(alice=0.5), "non-negative integer"),
        (lambda b: b["spent"][YEAR]["analysts"].update(bob=True), "non-negative integer"),
    ],
)
def test_a_malformed_statement_is_rejected_even_when_signed(
    setup: Setup, conn: sqlite3.Connection, change: Any, message: str
) -> None:
    charge(setup.node, conn, ALICE, 40, 0.1)
    body = statement_body(conn, setup.node.policy(), NODE)
    change(body)
    envelope = sign_statement(body, key=setup.node.signing_key())
    with pytest.raises(VerificationError, match=f"malformed budget statement.*{message}"):
        verify_statement(envelope, manifest=setup.manifest, node_id=NODE)


def test_a_collection_fails_on_any_bad_statement_and_lists_the_silent_nodes(
    setup: Setup, conn: sqlite3.Connection
) -> None:
    genuine = signed(setup.node, conn)
    budgets = verify_budgets(setup.manifest, [(NODE, genuine)], connected=[NODE, NODE])
    assert list(budgets.statements) == [NODE]
    assert budgets.connected == (NODE,)
    assert budgets.missing == (OTHER,)
    with pytest.raises(VerificationError, match="node '130104'"):
        verify_budgets(setup.manifest, [(NODE, genuine), (OTHER, genuine)])
    with pytest.raises(VerificationError, match="two budget statements"):
        verify_budgets(setup.manifest, [(NODE, genuine), (NODE, genuine)])


def test_the_coordinator_keeps_the_newest_statement_per_node(
    setup: Setup, conn: sqlite3.Connection
) -> None:
    policy = setup.node.policy()
    key = setup.node.signing_key()
    envelopes = []
    for at in (2_000, 1_000, 3_000):
        envelopes.append(sign_statement(statement_body(conn, policy, NODE, now_ms=at), key=key))
    registry = SessionRegistry()
    kept = []
    for envelope in envelopes:
        statement = verify_statement(envelope, manifest=setup.manifest, node_id=NODE)
        kept.append(registry.record_budget(statement, envelope))
    # the statement issued at 1 000 ms arrived late: it does not roll the view back
    assert kept == [True, False, True]
    assert registry.budgets[NODE][0].issued_at_ms == 3_000
    assert registry.budgets[NODE][1] == envelopes[2]


def test_statements_are_verified_when_read_the_newest_good_one_kept(
    setup: Setup, conn: sqlite3.Connection
) -> None:
    """The coordinator verifies statements when someone reads them (Budgets, Status), not
    one per answer: of those kept meanwhile the newest that verifies counts, with the
    time it arrived; one that does not verify, or is older than the one held, is dropped."""
    policy, key = setup.node.policy(), setup.node.signing_key()
    good = [
        sign_statement(statement_body(conn, policy, NODE, now_ms=t), key=key)
        for t in (1_000, 2_000)
    ]
    forged = sign_statement(
        statement_body(conn, policy, NODE, now_ms=9_000), key=SigningKey.generate()
    )
    registry = SessionRegistry()
    for envelope in [*good, forged]:
        keep_statement(registry, NODE, envelope)
    assert registry.budgets == {}  # nothing verified yet
    settle_statements(setup.manifest, registry)
    assert registry.budgets[NODE] == (
        verify_statement(good[1], manifest=setup.manifest, node_id=NODE),
        good[1],
    )
    assert registry.unverified == {}
    keep_statement(registry, NODE, good[0])  # late: older than the one held
    settle_statements(setup.manifest, registry)
    assert registry.budgets[NODE][1] == good[1]
    for n in range(UNVERIFIED_STATEMENTS + 3):  # a node that is never read keeps a few only
        keep_statement(registry, NODE, good[n % 2])
    assert len(registry.unverified[NODE]) == UNVERIFIED_STATEMENTS


# --- the arithmetic, for every policy and ledger --------------------------------------------


def _statement(
    *,
    budget_micro: int,
    share: float,
    override: float | None,
    alice_micro: int,
    others_micro: int,
) -> BudgetStatement:
    analysts = {ALICE: alice_micro, "bob": others_micro}
    return BudgetStatement.from_body(
        {
            "version": 1,
            "node_id": NODE,
            "issued_at_ms": 0,
            "policy_digest": "sha256:" + "0" * 64,
            "limits": {
                "epsilon_per_node_per_year": from_micro(budget_micro),
                "max_epsilon_per_query": 1.0,
                "approval_above_epsilon": None,
                "analyst_share": share,
                "analyst_shares": {} if override is None else {ALICE: override},
                "publication_threshold": 10,
                "max_groups": 200,
            },
            "spent": {YEAR: {"node_micro": alice_micro + others_micro, "analysts": analysts}},
            "unit": "micro-epsilon",
        }
    )


shares = st.floats(min_value=0.01, max_value=1.0, allow_nan=False)


@settings(max_examples=300, deadline=None, database=None)
@given(
    budget_micro=st.integers(min_value=1, max_value=100 * MICRO),
    share=shares,
    override=st.none() | shares,
    # spent may exceed today's budget: a county may lower its budget mid-year
    alice_micro=st.integers(min_value=0, max_value=120 * MICRO),
    others_micro=st.integers(min_value=0, max_value=120 * MICRO),
)
def test_remaining_is_never_negative_nor_above_either_budget(
    budget_micro: int, share: float, override: float | None, alice_micro: int, others_micro: int
) -> None:
    statement = _statement(
        budget_micro=budget_micro,
        share=share,
        override=override,
        alice_micro=alice_micro,
        others_micro=others_micro,
    )
    left = statement.remaining_micro(YEAR, ALICE)
    node_budget = to_micro(statement.epsilon_per_node_per_year)
    analyst_budget = to_micro(statement.analyst_budget(ALICE))
    assert 0 <= left <= node_budget
    assert left <= analyst_budget
    assert left <= node_budget - alice_micro - others_micro or left == 0
    assert left <= analyst_budget - alice_micro or left == 0
    assert statement.remaining(YEAR, ALICE) == from_micro(left)
    # and it is exactly the boundary of the node's own check
    if left > 0:
        statement.check_budget(YEAR, ALICE, epsilon=from_micro(left))
    with pytest.raises(QueryRefused, match=r"^budget: "):
        statement.check_budget(YEAR, ALICE, epsilon=from_micro(left + 1))


def test_a_scoped_analyst_expects_and_keeps_its_scopes_statements_only(
    setup: Setup, conn: sqlite3.Connection
) -> None:
    genuine = signed(setup.node, conn)
    mine = verify_budgets(setup.manifest, [(NODE, genuine)], scope=f"county:{NODE}")
    assert (list(mine.statements), mine.missing) == ([NODE], ())
    # a statement outside the scope is left out, whatever the coordinator sent
    other = verify_budgets(setup.manifest, [(NODE, genuine)], scope=f"county:{OTHER}")
    assert (list(other.statements), other.missing) == ([], (OTHER,))
