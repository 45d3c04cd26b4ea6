"""The federation's logic end to end, in process: signed query -> node answers -> release.

(The gRPC transport around it is tested in tests/integration.)
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from exportrows import screening_row, write_csv
from localnode import answer_locally

from fedscreen._util.canonical import canonical_json
from fedscreen.analyst.query import make_query, verify_release
from fedscreen.cli.main import main
from fedscreen.cli.query import print_release
from fedscreen.coordinator.core import Coordinator, init_coordinator
from fedscreen.coordinator.quarantine import screen_answer
from fedscreen.coordinator.runtime import screen
from fedscreen.coordinator.sessions import NodeReply
from fedscreen.crypto.envelope import (
    ANSWER_V1,
    RELEASE_V1,
    Envelope,
    sign_envelope,
    verify_envelope,
)
from fedscreen.errors import ConfigError, QueryRefused, VerificationError
from fedscreen.node import store
from fedscreen.node.home import NodeConfig, init_home
from fedscreen.node.ingest import ingest_paths
from fedscreen.node.requests import handle_query
from fedscreen.protocol.answer import verify_answer
from fedscreen.protocol.query import SignedQuery, new_query_id, sign_query
from fedscreen.protocol.release import release_body
from fedscreen.query.sqlparse import parse_sql
from fedscreen.tlog.checkpoint import (
    Checkpoint,
    member_origin,
    parse_and_verify_note,
    sign_checkpoint,
)
from fedscreen.trust import authority
from fedscreen.trust.identity import create_identity, issue_here, load_identity, update_manifest

SQL = "SELECT sex, COUNT(*) FROM screenings WHERE academic_year = '2024-2025' GROUP BY sex"
COUNTIES = ("130104", "130105", "130107")  # no county documents: the provincial policy applies


@dataclass
class Federation:
    auth: Path
    coordinator: Path
    analyst: Path
    auditor: Path
    nodes: dict[str, NodeConfig]


@pytest.fixture
def fed(tmp_path: Path) -> Federation:
    auth = tmp_path / "auth"
    authority.init_authority(auth, federation="test")
    init_coordinator(tmp_path / "coord", member_id="coordinator", name="省平台")
    issue_here(auth, tmp_path / "coord")
    for home, member, role in (
        (tmp_path / "analyst", "analyst-1", "analyst"),
        (tmp_path / "auditor", "auditor-1", "auditor"),
    ):
        create_identity(home, member_id=member, role=role, name=member)
        issue_here(auth, home)
    nodes = {}
    for n, code in enumerate(COUNTIES):
        config = init_home(tmp_path / code, node_id=code, name=code)
        issue_here(auth, config.home)
        rows = [
            screening_row(i, county_code=code, sex="F" if i % 3 else "M")
            for i in range(1, 101 + 50 * n)
        ]
        ingest_paths(config, [write_csv(tmp_path / f"{code}.csv", rows)])
        if n == len(COUNTIES) - 1:  # one county also holds the year before
            earlier = [
                screening_row(i, county_code=code, academic_year="2023-2024",
                              screening_date="2023-10-09")
                for i in range(1, 61)
            ]  # fmt: skip
            ingest_paths(config, [write_csv(tmp_path / f"{code}-2023.csv", earlier)])
        nodes[code] = config
    text = authority.manifest_text(auth)
    for home in [
        tmp_path / "coord",
        tmp_path / "analyst",
        tmp_path / "auditor",
        *(c.home for c in nodes.values()),
    ]:
        update_manifest(home, text)
    return Federation(auth, tmp_path / "coord", tmp_path / "analyst", tmp_path / "auditor", nodes)


def _charged(config: NodeConfig) -> int:
    conn = store.connect(config.database)
    try:
        return int(
            conn.execute("SELECT COALESCE(SUM(epsilon_micro), 0) FROM ledger_charge").fetchone()[0]
        )
    finally:
        conn.close()


def test_query_end_to_end_with_a_missing_node(fed: Federation) -> None:
    query, envelope = make_query(fed.analyst, SQL, epsilon=0.5, accuracy=None)
    coordinator = Coordinator.open(fed.coordinator)
    try:
        accepted = coordinator.accept(envelope, now_ms=query.issued_at_ms)
        answers = {code: answer_locally(fed.nodes[code], envelope) for code in COUNTIES[:2]}
        release = coordinator.release(accepted, answers, missing=[COUNTIES[2]])
    finally:
        coordinator.close()
    manifest = load_identity(fed.analyst).manifest()
    verified = verify_release(
        release.envelope, manifest=manifest, query=query, answers=release.answers
    )
    body = verified.body
    assert body["missing"] == [COUNTIES[2]]
    assert body["missing_reasons"] == {COUNTIES[2]: "no answer"}  # the caller gave no reason
    assert body["coverage"] == pytest.approx(2 / 3)
    for i, cell in enumerate(body["province"]):
        assert cell["value"] == sum(body["per_node"][n][i]["value"] for n in COUNTIES[:2])
        assert cell["lower"] < cell["value"] < cell["upper"]


def test_a_tampered_release_or_answer_does_not_verify(fed: Federation) -> None:
    query, envelope = make_query(fed.analyst, SQL, epsilon=0.5, accuracy=None)
    coordinator = Coordinator.open(fed.coordinator)
    try:
        accepted = coordinator.accept(envelope, now_ms=query.issued_at_ms)
        answers = {code: answer_locally(fed.nodes[code], envelope) for code in COUNTIES}
        release = coordinator.release(accepted, answers, missing=[])
    finally:
        coordinator.close()
    manifest = load_identity(fed.analyst).manifest()
    swapped = dict(release.answers)
    swapped[COUNTIES[0]], swapped[COUNTIES[1]] = swapped[COUNTIES[1]], swapped[COUNTIES[0]]
    with pytest.raises(VerificationError):
        verify_release(release.envelope, manifest=manifest, query=query, answers=swapped)
    other, _ = make_query(fed.analyst, SQL, epsilon=0.4, accuracy=None)
    with pytest.raises(VerificationError, match="another query"):
        verify_release(release.envelope, manifest=manifest, query=other, answers=release.answers)


def test_a_replayed_query_is_answered_from_the_stored_answer(fed: Federation) -> None:
    node = fed.nodes[COUNTIES[0]]
    _, envelope = make_query(fed.analyst, SQL, epsilon=0.5, accuracy=None)
    first = json.loads(answer_locally(node, envelope))
    charged = _charged(node)
    # new data arrives, then the same signed envelope is delivered again
    ingest_paths(
        node,
        [
            write_csv(
                node.home / "more.csv",
                [
                    screening_row(900 + i, county_code=node.county_code, school_id="1301049999")
                    for i in range(5)
                ],
            )
        ],
    )
    second = json.loads(answer_locally(node, envelope))
    assert _charged(node) == charged > 0
    assert _payload(first)["answer"] == _payload(second)["answer"]


def _payload(envelope: dict) -> dict:  # type: ignore[type-arg]
    return json.loads(base64.b64decode(envelope["payload"]))  # type: ignore[no-any-return]


def test_nodes_refuse_queries_not_signed_by_an_analyst(fed: Federation) -> None:
    node = fed.nodes[COUNTIES[0]]
    for home in (fed.auditor, node.home, fed.coordinator):
        ident = load_identity(home)
        query = SignedQuery(new_query_id(), ident.member_id, _now(), parse_sql(SQL), 0.5, None, ())
        envelope = sign_query(query, key=ident.signing_key()).to_json().encode()
        with pytest.raises(QueryRefused, match="not a valid analyst query"):
            answer_locally(node, envelope)
    assert _charged(node) == 0
    conn = store.connect(node.database)
    try:
        assert conn.execute("SELECT COUNT(*) FROM query_refusal").fetchone()[0] == 3
    finally:
        conn.close()


def test_a_stale_query_and_one_for_other_nodes_are_refused(fed: Federation) -> None:
    node = fed.nodes[COUNTIES[0]]
    ident = load_identity(fed.analyst)
    stale = SignedQuery(
        new_query_id(), ident.member_id, _now() - 3_600_000, parse_sql(SQL), 0.5, None, ()
    )
    with pytest.raises(QueryRefused, match="stale"):
        answer_locally(node, sign_query(stale, key=ident.signing_key()).to_json().encode())
    elsewhere = SignedQuery(
        new_query_id(), ident.member_id, _now(), parse_sql(SQL), 0.5, None, (COUNTIES[1],)
    )
    with pytest.raises(QueryRefused, match="not addressed"):
        answer_locally(node, sign_query(elsewhere, key=ident.signing_key()).to_json().encode())


def test_the_coordinator_refuses_early(fed: Federation) -> None:
    coordinator = Coordinator.open(fed.coordinator)
    try:
        query, envelope = make_query(
            fed.analyst,
            "SELECT school_id, COUNT(*) FROM screenings WHERE academic_year = '2024-2025' "
            "GROUP BY school_id",
            epsilon=0.5,
            accuracy=None,
        )
        with pytest.raises(QueryRefused, match="withheld"):
            coordinator.accept(envelope, now_ms=query.issued_at_ms)
        ident = load_identity(fed.auditor)
        forged = SignedQuery(new_query_id(), "analyst-1", _now(), parse_sql(SQL), 0.5, None, ())
        with pytest.raises(VerificationError):
            coordinator.accept(
                sign_query(forged, key=ident.signing_key()).to_json().encode(), now_ms=_now()
            )
    finally:
        coordinator.close()


def test_unknown_nodes_are_named_by_code_point_and_counted(fed: Federation) -> None:
    """An analyst's terminal never gets raw control or bidi characters back, nor a list
    of thousands of ids."""
    coordinator = Coordinator.open(fed.coordinator)
    try:
        odd = ["1301\u202e02", "\x1b[31mRED", *(f"9{n:05}" for n in range(5000))]
        query, envelope = make_query(fed.analyst, SQL, epsilon=0.3, accuracy=None, nodes=odd)
        with pytest.raises(QueryRefused) as refused:
            coordinator.accept(envelope, now_ms=query.issued_at_ms)
        message = str(refused.value)
        assert "\x1b" not in message
        assert "\u202e" not in message
        assert "(U+202E)" in message
        assert message.endswith("and 4992 more")
    finally:
        coordinator.close()


def _now() -> int:
    return int(time.time() * 1000)


def _export(homes: list[Path], out: Path) -> Path:
    args = [a for h in homes for a in ("--home", str(h))]
    assert main(["audit", "export", *args, "--out", str(out)]) == 0
    return out


def _release_round(fed: Federation, sql: str = SQL) -> None:
    query, envelope = make_query(fed.analyst, sql, epsilon=0.3, accuracy=None)
    coordinator = Coordinator.open(fed.coordinator)
    try:
        accepted = coordinator.accept(envelope, now_ms=query.issued_at_ms)
        answers = {code: answer_locally(fed.nodes[code], envelope) for code in COUNTIES}
        coordinator.release(accepted, answers, missing=[])
    finally:
        coordinator.close()


def test_coordinator_and_node_logs_verify_together(fed: Federation, tmp_path: Path) -> None:
    _release_round(fed)
    _release_round(
        fed,
        "SELECT grade_band, RATE(phq9_total >= 10) FROM screenings "
        "WHERE academic_year = '2024-2025' GROUP BY grade_band",
    )
    homes = [fed.coordinator, *(c.home for c in fed.nodes.values())]
    bundle = _export(homes, tmp_path / "all.json")
    manifest = fed.auth / "manifest.json"
    assert main(["audit", "verify", str(bundle), "--manifest", str(manifest)]) == 0


def test_a_release_that_is_not_the_combination_is_caught(fed: Federation, tmp_path: Path) -> None:
    query, envelope = make_query(fed.analyst, SQL, epsilon=0.3, accuracy=None)
    coordinator = Coordinator.open(fed.coordinator)
    try:
        accepted = coordinator.accept(envelope, now_ms=query.issued_at_ms)
        answers = {code: answer_locally(fed.nodes[code], envelope) for code in COUNTIES}
        verified = {
            n: (
                raw,
                verify_answer(
                    Envelope.from_json(raw),
                    manifest=coordinator.manifest,
                    node_id=n,
                    expected_query=accepted,
                    public=False,
                ),
            )
            for n, raw in answers.items()
        }
        body = release_body(
            coordinator_id="coordinator",
            query=accepted,
            answers=verified,
            missing=[],
            targeted=list(COUNTIES),
            threshold=10,
            public=False,
        )
        body["province"][0]["value"] += 100  # a dishonest coordinator inflates a figure
        signed = sign_envelope(
            payload_type=RELEASE_V1, payload=canonical_json(body), key=coordinator.key
        ).to_json()
        for n, (raw, _) in sorted(verified.items()):
            coordinator._append(
                {
                    "kind": "answer",
                    "query_id": accepted.query_id,
                    "node": n,
                    "envelope": raw.decode(),
                }
            )
        coordinator._append({"kind": "release", "query_id": accepted.query_id, "envelope": signed})
    finally:
        coordinator.close()
    bundle = _export([fed.coordinator], tmp_path / "c.json")
    assert (
        main(["audit", "verify", str(bundle), "--manifest", str(fed.auth / "manifest.json")]) == 2
    )


def _dishonest(body: dict, field: str) -> None:  # type: ignore[type-arg]
    """Change one field a reader of the release relies on."""
    first = sorted(body["per_node"])[0]
    if field == "per_node":
        body["per_node"][first][0]["value"] += 50
    elif field == "answered":
        body["answered"] = body["answered"][1:]
    elif field == "epsilon":
        body["answers"][0]["epsilon"] = 0.0
    elif field == "missing":
        body["missing"] = [COUNTIES[0]]
    elif field == "query":
        body["query"]["group_by"] = []


@pytest.mark.parametrize("field", ["per_node", "answered", "epsilon", "missing", "query"])
def test_every_field_of_a_release_must_be_its_answers(fed: Federation, field: str) -> None:
    """A coordinator that re-signs a release with a changed county figure, answering
    nodes, ε, missing nodes or query is caught by the analyst (and the auditor)."""
    query, envelope = make_query(fed.analyst, SQL, epsilon=0.3, accuracy=None)
    coordinator = Coordinator.open(fed.coordinator)
    try:
        accepted = coordinator.accept(envelope, now_ms=query.issued_at_ms)
        answers = {code: answer_locally(fed.nodes[code], envelope) for code in COUNTIES}
        release = coordinator.release(accepted, answers, missing=[])
        body = _payload(json.loads(release.envelope))
        _dishonest(body, field)
        forged = sign_envelope(
            payload_type=RELEASE_V1, payload=canonical_json(body), key=coordinator.key
        ).to_json()
    finally:
        coordinator.close()
    manifest = load_identity(fed.analyst).manifest()
    with pytest.raises(VerificationError, match="the release"):
        verify_release(forged.encode(), manifest=manifest, query=query, answers=release.answers)


def test_a_split_view_is_caught(fed: Federation, tmp_path: Path) -> None:
    node = fed.nodes[COUNTIES[0]]
    backup = tmp_path / "backup.db"
    conn = store.connect(node.database)
    conn.execute("VACUUM INTO ?", (str(backup),))
    conn.close()
    _release_round(fed)  # the coordinator now holds an answer (and checkpoint) from this node
    # the node shows auditors another history: its database from before that answer,
    # which then continues with other entries
    for suffix in ("", "-wal", "-shm"):
        Path(f"{node.database}{suffix}").unlink(missing_ok=True)
    shutil.copy(backup, node.database)
    answer_locally(
        node,
        make_query(
            fed.analyst,
            "SELECT grade, COUNT(*) FROM screenings "
            "WHERE academic_year = '2024-2025' GROUP BY grade",
            epsilon=0.2,
            accuracy=None,
        )[1],
    )
    bundle = _export([fed.coordinator, node.home], tmp_path / "split.json")
    evidence = tmp_path / "evidence"
    assert (
        main(
            [
                "audit",
                "verify",
                str(bundle),
                "--manifest",
                str(fed.auth / "manifest.json"),
                "--evidence-dir",
                str(evidence),
            ]
        )
        == 3
    )
    assert len(list(evidence.iterdir())) == 2


def test_the_release_states_the_share_of_eligible_students_covered(fed: Federation) -> None:
    query, envelope = make_query(fed.analyst, SQL, epsilon=0.3, accuracy=None)
    coordinator = Coordinator.open(fed.coordinator)
    try:
        accepted = coordinator.accept(envelope, now_ms=query.issued_at_ms)
        answers = {code: answer_locally(fed.nodes[code], envelope) for code in COUNTIES[:2]}
        eligible = {COUNTIES[0]: 600, COUNTIES[1]: 300, COUNTIES[2]: 100}
        release = coordinator.release(accepted, answers, missing=[COUNTIES[2]], eligible=eligible)
    finally:
        coordinator.close()
    assert release.body["population"] == {
        "eligible_answered": 900,
        "eligible_targeted": 1000,
        "share": 0.9,
        "unknown": [],
    }


def test_the_release_says_why_each_missing_node_is_missing(fed: Federation, tmp_path: Path) -> None:
    query, envelope = make_query(fed.analyst, SQL, epsilon=0.3, accuracy=None)
    refused = "refused: this query would cost ε=0.3, above the per-query cap 0.2"
    coordinator = Coordinator.open(fed.coordinator)
    try:
        accepted = coordinator.accept(envelope, now_ms=query.issued_at_ms)
        first = answer_locally(fed.nodes[COUNTIES[0]], envelope)
        # one node's answer passed off as another's does not verify: no answer either
        answers = {COUNTIES[0]: first, COUNTIES[1]: first}
        release = coordinator.release(
            accepted, answers, missing=[COUNTIES[2]], reasons={COUNTIES[2]: refused}
        )
    finally:
        coordinator.close()
    manifest = load_identity(fed.analyst).manifest()
    body = verify_release(
        release.envelope, manifest=manifest, query=query, answers=release.answers
    ).body
    assert body["answered"] == [COUNTIES[0]]
    assert body["missing"] == [COUNTIES[1], COUNTIES[2]]
    assert body["missing_reasons"] == {
        COUNTIES[1]: "its answer did not verify: envelope has no signature from a trusted key",
        COUNTIES[2]: refused,
    }
    out = io.StringIO()
    print_release(body, out=out)
    shown = out.getvalue().split("Did not answer\n", 1)[1].splitlines()
    assert shown[0].split() == ["node", "why"]
    assert shown[2].split(maxsplit=1) == [
        COUNTIES[1],
        "its answer did not verify: envelope has no signature from a trusted key",
    ]
    assert shown[3].split(maxsplit=1) == [COUNTIES[2], refused]
    # the offline auditor recomputes the release with the reasons in it
    bundle = _export([fed.coordinator], tmp_path / "c.json")
    manifest_file = str(fed.auth / "manifest.json")
    assert main(["audit", "verify", str(bundle), "--manifest", manifest_file]) == 0


# ------------------------------------------------ answers bound to their query (issue 11)


def _answer_for_year(config: NodeConfig, envelope: bytes, year: str) -> bytes:
    conn = store.connect(config.database)
    try:
        manifest = load_identity(config.home).manifest()
        return handle_query(
            config, config.policy(), manifest, envelope, conn=conn, academic_year=year
        )
    finally:
        conn.close()


def test_answers_to_another_query_are_missing_with_the_reason(fed: Federation) -> None:
    query, envelope = make_query(fed.analyst, SQL, epsilon=0.3, accuracy=None)
    # the same question at another ε, and another question: answered, then moved over
    _, other_eps = make_query(fed.analyst, SQL, epsilon=0.2, accuracy=None)
    _, other_sql = make_query(fed.analyst, SQL.replace("sex", "grade_band"), epsilon=0.3,
                              accuracy=None)  # fmt: skip
    coordinator = Coordinator.open(fed.coordinator)
    try:
        accepted = coordinator.accept(envelope, now_ms=query.issued_at_ms)
        answers = {
            COUNTIES[0]: answer_locally(fed.nodes[COUNTIES[0]], envelope),
            COUNTIES[1]: answer_locally(fed.nodes[COUNTIES[1]], other_eps),
            COUNTIES[2]: answer_locally(fed.nodes[COUNTIES[2]], other_sql),
        }
        release = coordinator.release(accepted, answers, missing=[])
    finally:
        coordinator.close()
    assert release.body["answered"] == [COUNTIES[0]]
    reasons = release.body["missing_reasons"]
    assert reasons[COUNTIES[1]] == (
        f"its answer did not verify: the answer from {COUNTIES[1]} answers another query id"
    )
    assert reasons[COUNTIES[2]].endswith("answers another query id")
    body = verify_release(
        release.envelope,
        manifest=load_identity(fed.analyst).manifest(),
        query=query,
        answers=release.answers,
    ).body
    assert body["missing"] == [COUNTIES[1], COUNTIES[2]]


def test_a_well_signed_malformed_answer_makes_its_node_missing(fed: Federation) -> None:
    query, envelope = make_query(fed.analyst, SQL, epsilon=0.3, accuracy=None)
    good = answer_locally(fed.nodes[COUNTIES[0]], envelope)
    node = fed.nodes[COUNTIES[1]]
    honest = json.loads(base64.b64decode(json.loads(answer_locally(node, envelope))["payload"]))
    honest["answer"]["cells"][0]["value"] = "many"  # signed by the node's own key
    malformed = sign_envelope(
        payload_type=ANSWER_V1, payload=canonical_json(honest), key=node.signing_key()
    )
    coordinator = Coordinator.open(fed.coordinator)
    try:
        accepted = coordinator.accept(envelope, now_ms=query.issued_at_ms)
        release = coordinator.release(
            accepted,
            {COUNTIES[0]: good, COUNTIES[1]: malformed.to_json().encode()},
            missing=[COUNTIES[2]],
        )
    finally:
        coordinator.close()
    assert release.body["answered"] == [COUNTIES[0]]
    reason = release.body["missing_reasons"][COUNTIES[1]]
    assert reason.startswith(f"its answer did not verify: malformed answer from {COUNTIES[1]}")
    assert len(reason) < 300


def test_a_query_without_years_is_pinned_to_one_year(fed: Federation) -> None:
    sql = "SELECT sex, COUNT(*) FROM screenings GROUP BY sex"
    query, envelope = make_query(fed.analyst, sql, epsilon=0.3, accuracy=None)
    coordinator = Coordinator.open(fed.coordinator)
    try:
        accepted = coordinator.accept(envelope, now_ms=query.issued_at_ms)
        # most nodes announced 2024-2025
        announced = {COUNTIES[0]: "2024-2025", COUNTIES[1]: "2024-2025", COUNTIES[2]: "2023-2024"}
        assert coordinator.academic_year_for(accepted, announced) == "2024-2025"
        # a tie goes to the older year: one node announcing a newer year cannot steer the
        # federation to a year the others have not loaded (finding A8)
        tie = {COUNTIES[0]: "2023-2024", COUNTIES[1]: "2024-2025"}
        assert coordinator.academic_year_for(accepted, tie) == "2023-2024"
        tie3 = {COUNTIES[0]: "2025-2026", COUNTIES[1]: "2024-2025", COUNTIES[2]: "2023-2024"}
        assert coordinator.academic_year_for(accepted, tie3) == "2023-2024"
        assert coordinator.academic_year_for(accepted, {}) is None
        named, _ = make_query(fed.analyst, SQL, epsilon=0.3, accuracy=None)
        assert coordinator.academic_year_for(named, announced) is None
        config = fed.coordinator / "coordinator.toml"
        config.write_text(
            config.read_text() + '\n[query]\nacademic_year = "2023-2024"\n', encoding="utf-8"
        )
        assert coordinator.academic_year_for(accepted, announced) == "2023-2024"
        answers = {
            COUNTIES[0]: _answer_for_year(fed.nodes[COUNTIES[0]], envelope, "2024-2025"),
            COUNTIES[1]: _answer_for_year(fed.nodes[COUNTIES[1]], envelope, "2024-2025"),
            COUNTIES[2]: _answer_for_year(fed.nodes[COUNTIES[2]], envelope, "2023-2024"),
        }
        # pinned: an answer for another year is not used
        pinned = coordinator.release(accepted, answers, missing=[], academic_year="2024-2025")
        # no pin (no node announced a year): the year most answers are for
        unpinned = coordinator.release(accepted, answers, missing=[])
        # no pin and a tie between the answers: the older year, as for announced years (A8)
        tied = {node: answers[node] for node in (COUNTIES[0], COUNTIES[2])}
        older = coordinator.release(accepted, tied, missing=[COUNTIES[1]])
        config.write_text(config.read_text().replace('"2023-2024"', '"last year"'))
        with pytest.raises(ConfigError, match="academic_year"):
            coordinator.academic_year_for(accepted, announced)
    finally:
        coordinator.close()
    manifest = load_identity(fed.analyst).manifest()
    for release in (pinned, unpinned):
        body = verify_release(
            release.envelope, manifest=manifest, query=query, answers=release.answers
        ).body
        assert body["academic_year"] == "2024-2025"
        assert body["answered"] == [COUNTIES[0], COUNTIES[1]]
        assert "another academic year" in body["missing_reasons"][COUNTIES[2]]
    tie_body = verify_release(
        older.envelope, manifest=manifest, query=query, answers=older.answers
    ).body
    assert tie_body["academic_year"] == "2023-2024"
    assert tie_body["answered"] == [COUNTIES[2]]
    assert "another academic year" in tie_body["missing_reasons"][COUNTIES[0]]


def _forked_answer(config: NodeConfig, honest: bytes, other: SignedQuery) -> bytes:
    """The node's answer to ``other``, signed by the node, carrying a checkpoint of the
    same size as the one in ``honest`` but another root: a forked log."""
    member = load_identity(config.home).manifest().member(config.node_id, role="node")
    payload = json.loads(
        verify_envelope(
            Envelope.from_json(honest),
            expected_payload_type=ANSWER_V1,
            trusted_keys={member.key_id: member.signing_key},
        )
    )
    origin = member_origin("node", config.node_id)
    good = parse_and_verify_note(payload["checkpoint"], verifiers={origin: member.signing_key})
    key = config.signing_key()
    payload["checkpoint"] = sign_checkpoint(Checkpoint(origin, good.size, b"\x01" * 32), key=key)
    payload["query_id"], payload["query_sha256"] = other.query_id, other.digest
    forged = sign_envelope(payload_type=ANSWER_V1, payload=canonical_json(payload), key=key)
    return forged.to_json().encode()


def test_a_node_quarantined_between_its_answer_and_the_release_is_not_used(
    fed: Federation, tmp_path: Path
) -> None:
    """Finding A2: queries A and B in flight; the node's answer to A is screened and kept,
    its answer to B shows a forked log and quarantines it; A's release, made after, must
    not use its earlier answer — else the honest coordinator's log fails audit."""
    query_a, envelope_a = make_query(fed.analyst, SQL, epsilon=0.3, accuracy=None)
    query_b, envelope_b = make_query(fed.analyst, SQL, epsilon=0.3, accuracy=None)
    bad = COUNTIES[0]
    coordinator = Coordinator.open(fed.coordinator)
    try:
        accepted_a = coordinator.accept(envelope_a, now_ms=query_a.issued_at_ms)
        accepted_b = coordinator.accept(envelope_b, now_ms=query_b.issued_at_ms)
        answers = {code: answer_locally(fed.nodes[code], envelope_a) for code in COUNTIES}
        for code, raw in answers.items():
            screened = screen_answer(
                coordinator, coordinator.book, node_id=code, envelope=raw, proof=[],
                sent_size=0, now_ms=_now(),
            )  # fmt: skip
            assert screened is None
        forked = _forked_answer(fed.nodes[bad], answers[bad], accepted_b)
        why = screen_answer(
            coordinator, coordinator.book, node_id=bad, envelope=forked, proof=[],
            sent_size=0, now_ms=_now(),
        )  # fmt: skip
        assert why is not None
        assert why.startswith("quarantined:")
        coordinator.book.flush()
        release = coordinator.release(accepted_a, answers, [])
    finally:
        coordinator.close()
    assert release.body["answered"] == list(COUNTIES[1:])
    assert release.body["missing"] == [bad]
    assert release.body["missing_reasons"][bad].startswith("quarantined: ")
    manifest = load_identity(fed.analyst).manifest()
    verify_release(release.envelope, manifest=manifest, query=query_a, answers=release.answers)
    bundle = _export([fed.coordinator], tmp_path / "coordinator.json")
    assert (
        main(["audit", "verify", str(bundle), "--manifest", str(fed.auth / "manifest.json")]) == 0
    )


def test_the_release_names_the_nodes_the_query_was_pushed_to(fed: Federation) -> None:
    """Finding T1: a node revoked while the query runs stays targeted (it was asked), and
    the analyst's check — missing = asked less answered — holds."""
    query, envelope = make_query(fed.analyst, SQL, epsilon=0.3, accuracy=None)
    coordinator = Coordinator.open(fed.coordinator)
    try:
        accepted = coordinator.accept(envelope, now_ms=query.issued_at_ms)
        asked = coordinator.node_ids
        answers = {code: answer_locally(fed.nodes[code], envelope) for code in COUNTIES[1:]}
        authority.revoke(fed.auth, COUNTIES[0])
        update_manifest(fed.coordinator, authority.manifest_text(fed.auth))
        coordinator.reload_manifest()
        assert COUNTIES[0] not in coordinator.node_ids
        release = coordinator.release(
            accepted, answers, [COUNTIES[0]], reasons={COUNTIES[0]: "link lost"}, targeted=asked
        )
    finally:
        coordinator.close()
    assert release.body["targeted"] == list(asked)
    assert release.body["missing"] == [COUNTIES[0]]
    # the analyst still holds the manifest the query was made under
    manifest = load_identity(fed.analyst).manifest()
    verify_release(release.envelope, manifest=manifest, query=query, answers=release.answers)


def test_a_release_drops_the_verdicts_its_screening_kept(fed: Federation) -> None:
    """Answers are verified once, when screened, and the verdict kept for the release; the
    release drops it, so no answer (whose size its node decides) stays in memory after."""
    query, envelope = make_query(fed.analyst, SQL, epsilon=0.3, accuracy=None)
    coordinator = Coordinator.open(fed.coordinator)
    try:
        accepted = coordinator.accept(envelope, now_ms=query.issued_at_ms)
        answers = {code: answer_locally(fed.nodes[code], envelope) for code in COUNTIES}
        replies = {code: NodeReply(raw, sent_size=0) for code, raw in answers.items()}
        screen(coordinator, accepted, replies, academic_year=None)
        assert len(coordinator._verified._entries) == len(COUNTIES)  # kept for the release
        coordinator.book.flush()
        release = coordinator.release(accepted, answers, [])
        assert coordinator._verified._entries == {}
    finally:
        coordinator.close()
    assert release.missing == ()
    assert sorted(release.answers) == sorted(COUNTIES)
