"""handle_query: a node's handling of signed queries from the federation (issue 12).

Every refusal — a bad or stale envelope, a passed deadline, a query the engine refuses —
is recorded in the refusal table and the node's log, and charges nothing. Real node home,
real authority and analyst identity, real OpenDP.
"""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from exportrows import varied_rows, write_csv
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedscreen._util.canonical import canonical_json
from fedscreen.crypto.envelope import ANSWER_V1, QUERY_V1, Envelope, sign_envelope, verify_envelope
from fedscreen.errors import QueryRefused
from fedscreen.node import store
from fedscreen.node.home import NodeConfig, init_home, load_config
from fedscreen.node.ingest import ingest_paths
from fedscreen.node.requests import handle_query
from fedscreen.protocol.query import SignedQuery, issue_query, new_query_id, sign_query
from fedscreen.protocol.refusal import CODES, parse_reason
from fedscreen.query.sqlparse import parse_sql
from fedscreen.tlog import memberlog
from fedscreen.trust import authority
from fedscreen.trust.identity import (
    Identity,
    create_identity,
    issue_here,
    load_identity,
    update_manifest,
)
from fedscreen.trust.manifest import Manifest

YEAR = "2024-2025"
SQL = f"SELECT sex, COUNT(*) FROM screenings WHERE academic_year = '{YEAR}' GROUP BY sex"


@dataclass
class Node:
    config: NodeConfig
    analyst: Identity
    manifest: Manifest
    conn: sqlite3.Connection

    def handle(self, envelope: bytes, **options: Any) -> bytes:
        return handle_query(
            self.config, self.config.policy(), self.manifest, envelope, conn=self.conn, **options
        )

    def sign(self, query: SignedQuery) -> bytes:
        return sign_query(query, key=self.analyst.signing_key()).to_json().encode()

    def sign_payload(self, payload: dict[str, Any] | bytes) -> bytes:
        raw = payload if isinstance(payload, bytes) else canonical_json(payload)
        envelope = sign_envelope(payload_type=QUERY_V1, payload=raw, key=self.analyst.signing_key())
        return envelope.to_json().encode()

    def query(self, **overrides: Any) -> SignedQuery:
        fields: dict[str, Any] = {
            "query_id": new_query_id(),
            "analyst": self.analyst.member_id,
            "issued_at_ms": now_ms(),
            "spec": parse_sql(SQL),
            "epsilon": 0.01,
            "accuracy": None,
            "nodes": (),
        }
        return SignedQuery(**{**fields, **overrides})

    def refusals(self) -> list[tuple[str, str, str]]:
        return self.conn.execute(
            "SELECT analyst, query, reason FROM query_refusal ORDER BY refusal_id"
        ).fetchall()

    def charged(self) -> int:
        (micro,) = self.conn.execute(
            "SELECT COALESCE(SUM(epsilon_micro), 0) FROM ledger_charge"
        ).fetchone()
        return int(micro)

    def last_log_entry(self) -> dict[str, Any]:
        entries = memberlog.export_log(self.conn, member_id=self.config.node_id).entries
        payload = json.loads(entries[-1])["payload"]
        return json.loads(base64.b64decode(payload))  # type: ignore[no-any-return]

    def assert_refused(
        self, envelope: bytes, part: str, code: str, **options: Any
    ) -> tuple[str, str, str]:
        """Refused with ``code``, naming ``part``, recorded in the table and the log, nothing
        charged."""
        charged, count = self.charged(), len(self.refusals())
        with pytest.raises(QueryRefused) as refused:
            self.handle(envelope, **options)
        reason = str(refused.value)
        assert part in reason, reason
        assert parse_reason(reason)[0] == code, reason
        assert len(self.refusals()) == count + 1
        record = self.refusals()[-1]
        assert record[2] == reason
        entry = self.last_log_entry()
        assert (entry["kind"], entry["reason"], entry["epsilon"]) == ("refusal", reason, 0)
        assert self.charged() == charged
        assert not self.conn.in_transaction
        return record


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An authority, an analyst and node 130102 holding 300 screenings for 2024-2025."""
    base = tmp_path_factory.mktemp("requests")
    auth = base / "auth"
    authority.init_authority(auth, federation="test")
    create_identity(base / "analyst", member_id="analyst-1", role="analyst", name="analyst")
    issue_here(auth, base / "analyst")
    config = init_home(base / "node", node_id="130102", name="长安区")
    issue_here(auth, config.home)
    _, rejected = ingest_paths(config, [write_csv(base / "s.csv", varied_rows(300))])
    assert not rejected, rejected
    text = authority.manifest_text(auth)
    for home in (base / "analyst", config.home):
        update_manifest(home, text)
    return base


@pytest.fixture
def node(template: Path, tmp_path: Path) -> Iterator[Node]:
    shutil.copytree(template / "node", tmp_path / "node")
    config = load_config(tmp_path / "node")
    analyst = load_identity(template / "analyst")
    conn = store.connect(config.database)
    try:
        yield Node(config, analyst, load_identity(config.home).manifest(), conn)
    finally:
        conn.close()


def test_a_fresh_query_is_answered_and_charged(node: Node) -> None:
    node.handle(node.sign(node.query()), deadline_unix_ms=now_ms() + 60_000)
    assert node.charged() == 10_000
    assert node.last_log_entry()["kind"] == "answer"


def test_a_query_past_its_deadline_is_refused_recorded_and_free(node: Node) -> None:
    query = node.query()
    analyst, query_id, _ = node.assert_refused(
        node.sign(query), "deadline", "deadline-passed", deadline_unix_ms=now_ms() - 1
    )
    assert (analyst, query_id) == (query.analyst, query.query_id)
    # the same query within its deadline is answered: the refusal stored nothing
    node.handle(node.sign(query), deadline_unix_ms=now_ms() + 60_000)
    assert node.charged() == 10_000


def test_a_stale_query_is_refused_recorded_and_free(node: Node) -> None:
    stale = node.query(issued_at_ms=now_ms() - 3_600_000)
    node.assert_refused(node.sign(stale), "stale query", "stale")


@pytest.mark.parametrize(
    "options",
    [{"epsilon": 1e-300}, {"epsilon": 5e-324}, {"epsilon": None, "accuracy": 1e8}],
    ids=["1e-300", "subnormal", "accuracy-1e8"],
)
def test_an_epsilon_below_one_micro_epsilon_is_refused_for_free(
    node: Node, options: dict[str, Any]
) -> None:
    node.assert_refused(node.sign(node.query(**options)), "below 1e-06", "policy")
    # and does not poison the cache for a genuine 1 µε query
    node.handle(node.sign(node.query(epsilon=1e-6)))
    assert node.charged() == 1


def _payload(node: Node, spec: Any) -> dict[str, Any]:
    return {
        "query_id": new_query_id(),
        "analyst": node.analyst.member_id,
        "issued_at_ms": now_ms(),
        "spec": spec,
        "epsilon": 0.01,
        "accuracy": None,
        "nodes": [],
    }


def test_a_deeply_nested_spec_is_refused_for_free(node: Node) -> None:
    cond: dict[str, Any] = {"column": "sex", "op": "=", "values": ["F"]}
    for _ in range(200):
        cond = {"op": "not", "args": [cond]}
    spec = {"dataset": "screenings", "measure": {"kind": "count"}, "where": cond, "years": [YEAR]}
    node.assert_refused(node.sign_payload(_payload(node, spec)), "deeper than 16", "invalid-query")


def test_a_payload_deeper_than_any_json_parser_is_refused_for_free(node: Node) -> None:
    """json.loads itself raises RecursionError on this payload: still a recorded refusal."""
    raw = canonical_json(_payload(node, None)).replace(
        b'"spec":null', b'"spec":' + b"[" * 100_000 + b"]" * 100_000
    )
    node.assert_refused(node.sign_payload(raw), "not a valid analyst query", "invalid-query")


_SPECS = st.recursive(
    st.none()
    | st.integers()
    | st.floats()
    | st.sampled_from(["screenings", "sex", "count", "rate", "not", "and", "=", "F", YEAR]),
    lambda inner: st.lists(inner, max_size=4)
    | st.fixed_dictionaries(
        {},
        optional={
            k: inner
            for k in ("dataset", "measure", "where", "years", "group_by", "kind", "op", "args",
                      "column", "values", "condition", "q")
        },
    ),
    max_leaves=25,
)  # fmt: skip
_FLOATS = st.none() | st.floats() | st.sampled_from([1e-300, 1e-6, 0.01, 1e308])


@settings(
    max_examples=40,
    deadline=5000,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(spec=_SPECS, epsilon=_FLOATS, accuracy=_FLOATS)
def test_any_signed_query_is_answered_or_refused_and_recorded(
    node: Node, spec: Any, epsilon: float | None, accuracy: float | None
) -> None:
    payload = {**_payload(node, spec), "epsilon": epsilon, "accuracy": accuracy}
    try:
        envelope = node.sign_payload(payload)
    except ValueError:  # NaN or infinity: JSON cannot carry them, so no analyst can sign them
        return
    charged, count = node.charged(), len(node.refusals())
    reason = None
    try:
        node.handle(envelope)
    except QueryRefused as refused:
        reason = str(refused)
    if reason is None:
        assert len(node.refusals()) == count
    else:
        assert len(node.refusals()) == count + 1
        assert node.refusals()[-1][2] == reason
        assert parse_reason(reason)[0] in CODES
        assert node.charged() == charged
    assert not node.conn.in_transaction


def _signed_answer(node: Node, raw: bytes) -> dict[str, Any]:
    key = node.config.signing_key()
    payload = verify_envelope(
        Envelope.from_json(raw),
        expected_payload_type=ANSWER_V1,
        trusted_keys={key.key_id: key.public_key},
    )
    return json.loads(payload)  # type: ignore[no-any-return]


def test_the_answer_names_the_signed_query_it_answers_now(node: Node) -> None:
    query = node.query()
    signed, envelope = issue_query(query, key=node.analyst.signing_key())
    first = _signed_answer(node, node.handle(envelope.to_json().encode()))
    assert (first["query_id"], first["query_sha256"]) == (query.query_id, signed.digest)
    assert first["charged"] == 0.01
    # the same id signed again (the analyst resubmits it, issued later): the stored body,
    # free, bound to the request it answers now
    again, resigned = issue_query(
        node.query(query_id=query.query_id), key=node.analyst.signing_key()
    )
    assert again.digest != signed.digest
    second = _signed_answer(node, node.handle(resigned.to_json().encode()))
    assert second["answer"] == first["answer"]
    assert (second["query_id"], second["query_sha256"], second["charged"]) == (
        query.query_id,
        again.digest,
        0,
    )
    assert node.charged() == 10_000


def test_a_query_without_years_is_answered_for_the_pinned_year(node: Node) -> None:
    no_year = parse_sql("SELECT sex, COUNT(*) FROM screenings GROUP BY sex")
    pinned = _signed_answer(
        node, node.handle(node.sign(node.query(spec=no_year)), academic_year=YEAR)
    )
    assert pinned["answer"]["query"]["years"] == [YEAR]
    latest = _signed_answer(node, node.handle(node.sign(node.query(spec=no_year))))
    assert latest["answer"]["query"]["years"] == [YEAR]


def test_a_pinned_year_without_screenings_is_refused_at_no_cost(node: Node) -> None:
    """Noise over a year the node never loaded would be charged for nothing."""
    no_year = parse_sql("SELECT sex, COUNT(*) FROM screenings GROUP BY sex")
    envelope = node.sign(node.query(spec=no_year))
    node.assert_refused(
        envelope, "no screenings for 2023-2024", "no-data", academic_year="2023-2024"
    )
    named = parse_sql("SELECT COUNT(*) FROM screenings WHERE academic_year = '2025-2026'")
    node.assert_refused(node.sign(node.query(spec=named)), "2025-2026", "no-data")


def test_a_query_for_other_nodes_is_refused_as_not_addressed(node: Node) -> None:
    node.assert_refused(node.sign(node.query(nodes=("130104",))), "130102", "not-addressed")


def test_nothing_of_an_unverified_envelope_reaches_the_signed_log(node: Node) -> None:
    planted = "planted\u202etext-" + "x" * 5_000
    forged = sign_envelope(payload_type=planted, payload=b"{}", key=node.analyst.signing_key())
    node.assert_refused(forged.to_json().encode(), "not a valid analyst query", "invalid-query")
    unknown = json.loads(node.sign(node.query()))
    unknown["signatures"][0]["keyid"] = planted
    node.assert_refused(json.dumps(unknown).encode(), "not a valid analyst query", "invalid-query")
    node.assert_refused(
        b'{"payloadType": "' + planted.encode() + b'"}', "well-formed", "invalid-query"
    )
    for _, query, reason in node.refusals():
        assert "planted" not in reason
        assert "planted" not in query


def test_a_revoked_analysts_query_is_refused_as_revoked(
    node: Node, template: Path, tmp_path: Path
) -> None:
    """Finding F6c: a query that verifies under a revoked analyst's key is refused with the
    vocabulary's ``revoked`` code (and names the analyst); a mere claim stays invalid."""
    signed = node.sign(node.query())
    other = json.loads(node.sign(node.query()))
    shutil.copytree(template / "auth", tmp_path / "auth")
    revoked = Node(
        node.config, node.analyst, authority.revoke(tmp_path / "auth", "analyst-1"), node.conn
    )
    record = revoked.assert_refused(signed, "analyst-1 is revoked", "revoked")
    assert record[:2] == ("analyst-1", "")
    # the revoked analyst's key id on a payload its signature does not cover: not the analyst
    tampered = json.loads(signed)
    tampered["payload"] = other["payload"]
    record = revoked.assert_refused(
        json.dumps(tampered).encode(), "not a valid analyst query", "invalid-query"
    )
    assert record[0] == "(unverified)"
    # while the analyst was active the same envelope is answered
    assert node.handle(signed)


def test_a_node_moved_by_a_newer_manifest_refuses_until_its_config_agrees(
    node: Node, template: Path
) -> None:
    """A manifest adopted while serving that places this node elsewhere (``pki scope``):
    the node answers nothing as what its node.toml says (refused, recorded, free)."""
    member = node.manifest.member("130102")
    moved = replace(node.manifest, members=tuple(
        replace(m, level="school", scope="county:130104") if m.id == member.id else m
        for m in node.manifest.members
    ))  # fmt: skip
    node.manifest = moved
    node.assert_refused(node.sign(node.query()), "lists node 130102 as a school node", "policy")
