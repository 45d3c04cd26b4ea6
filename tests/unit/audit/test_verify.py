"""Offline verification of node logs: valid bundles pass, every kind of tampering is caught."""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from exportrows import screening_row, write_csv
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedscreen.audit.bundle import read_bundle
from fedscreen.cli.main import main
from fedscreen.crypto.envelope import LOG_ENTRY_V1, Envelope, sign_envelope
from fedscreen.crypto.signing import SigningKey
from fedscreen.errors import QueryRefused, VerificationError
from fedscreen.node import store
from fedscreen.node.engine import QueryRequest, answer_query
from fedscreen.node.home import NodeConfig
from fedscreen.node.ingest import ingest_paths
from fedscreen.protocol.answer import verify_answer
from fedscreen.protocol.query import SignedQuery, issue_query, new_query_id
from fedscreen.query.sqlparse import parse_sql
from fedscreen.tlog.checkpoint import Checkpoint, sign_checkpoint
from fedscreen.trust.manifest import Manifest, Member, sign_manifest

ANALYST = "analyst-1"
QUERIES = (
    "SELECT sex, COUNT(*) FROM screenings GROUP BY sex",
    "SELECT grade_band, RATE(phq9_total >= 10) FROM screenings GROUP BY grade_band",
    "SELECT sex, COUNT(*) FROM screenings GROUP BY sex",  # cached: logged, costs nothing
    "SELECT school_id, COUNT(*) FROM screenings GROUP BY school_id",  # refused: logged
    "SELECT AVG(phq9_total) FROM screenings",
)


def _ask(config: NodeConfig, sql: str, epsilon: float = 0.2):  # type: ignore[no-untyped-def]
    conn = store.connect(config.database)
    try:
        return answer_query(
            config,
            config.policy(),
            QueryRequest(ANALYST, None, epsilon=epsilon, text=sql),
            conn=conn,
        )
    finally:
        conn.close()


def _run_queries(config: NodeConfig, queries: tuple[str, ...] = QUERIES) -> None:
    for sql in queries:
        with contextlib.suppress(QueryRefused):
            _ask(config, sql)


@pytest.fixture
def node(node_home: NodeConfig, tmp_path: Path) -> NodeConfig:
    rows = [screening_row(n, sex="F" if n % 2 else "M") for n in range(1, 201)]
    ingest_paths(node_home, [write_csv(tmp_path / "s.csv", rows)])
    _run_queries(node_home)
    return node_home


def _manifest(config: NodeConfig, tmp_path: Path, authority: SigningKey | None = None) -> Path:
    authority = authority or SigningKey.generate()
    member = Member(
        "130102", "node", "长安区", config.signing_key().public_key, "00" * 32, "county"
    )
    manifest = Manifest("hebei", 1, "2026-11-29", authority.public_key, (member,))
    path = tmp_path / f"manifest-{authority.key_id}.json"
    path.write_text(sign_manifest(manifest, key=authority), encoding="utf-8")
    return path


def _export(config: NodeConfig, path: Path) -> Path:
    assert main(["audit", "export", "--home", str(config.home), "--out", str(path)]) == 0
    return path


def _verify(bundle: Path, manifest: Path, *extra: str) -> int:
    return main(["audit", "verify", str(bundle), "--manifest", str(manifest), *extra])


def _rewrite(bundle: Path, out: Path, change) -> Path:  # type: ignore[no-untyped-def]
    data = json.loads(bundle.read_text(encoding="utf-8"))
    change(data["logs"][0])
    out.write_text(json.dumps(data), encoding="utf-8")
    return out


def test_a_node_log_verifies_and_its_sums_match_the_ledger(
    node: NodeConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = _export(node, tmp_path / "b.json")
    manifest = _manifest(node, tmp_path)
    capsys.readouterr()
    assert _verify(bundle, manifest, "--json") == 0
    report = json.loads(capsys.readouterr().out)["logs"][0]
    assert (report["size"], report["answers"], report["refusals"]) == (5, 4, 1)
    conn = store.connect(node.database)
    try:
        spent = conn.execute("SELECT SUM(epsilon_micro) FROM ledger_charge").fetchone()[0]
    finally:
        conn.close()
    assert report["node_epsilon"] == {"2024-2025": spent / 1e6}


def test_entries_hold_no_student_level_data(node: NodeConfig, tmp_path: Path) -> None:
    bundle = _export(node, tmp_path / "b.json").read_text(encoding="utf-8")
    decoded = "".join(
        base64.b64decode(e).decode() for e in json.loads(bundle)["logs"][0]["entries"]
    )
    for needle in ("G1301022008", "张三", "student_key", "class_id"):
        assert needle not in decoded


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_flipped_byte_is_detected(
    node: NodeConfig, tmp_path: Path, data: st.DataObject
) -> None:
    bundle = tmp_path / "b.json"
    if not bundle.exists():
        _export(node, bundle)
    manifest = tmp_path / "m.json"
    if not manifest.exists():
        shutil.copy(_manifest(node, tmp_path), manifest)
    log = json.loads(bundle.read_text(encoding="utf-8"))["logs"][0]
    target = data.draw(st.sampled_from(["entry", "checkpoint"]))
    items = log["entries"] if target == "entry" else log["checkpoints"]
    which = data.draw(st.integers(0, len(items) - 1))
    raw = base64.b64decode(items[which]) if target == "entry" else items[which].encode()
    position = data.draw(st.integers(0, len(raw) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = bytearray(raw)
    flipped[position] ^= 1 << bit

    def change(log: dict) -> None:  # type: ignore[type-arg]
        if target == "entry":
            log["entries"][which] = base64.b64encode(bytes(flipped)).decode()
        else:
            log["checkpoints"][which] = bytes(flipped).decode("utf-8", errors="replace")

    tampered = _rewrite(bundle, tmp_path / "t.json", change)
    assert _verify(tampered, manifest) in (2, 3, 4)


def test_truncation_reordering_forgery(node: NodeConfig, tmp_path: Path) -> None:
    bundle = _export(node, tmp_path / "b.json")
    manifest = _manifest(node, tmp_path)

    def truncate(log: dict) -> None:  # type: ignore[type-arg]
        log["entries"] = log["entries"][:-2]

    def reorder(log: dict) -> None:  # type: ignore[type-arg]
        log["entries"][1], log["entries"][2] = log["entries"][2], log["entries"][1]

    forger = SigningKey.generate()

    def forge(log: dict) -> None:  # type: ignore[type-arg]
        payload = json.dumps({"kind": "answer", "index": 2, "node_id": "130102", "epsilon": 0})
        fake = sign_envelope(payload_type=LOG_ENTRY_V1, payload=payload.encode(), key=forger)
        log["entries"].insert(2, base64.b64encode(fake.to_json().encode()).decode())

    assert _verify(_rewrite(bundle, tmp_path / "t1.json", truncate), manifest) == 3
    assert _verify(_rewrite(bundle, tmp_path / "t2.json", reorder), manifest) == 3
    assert _verify(_rewrite(bundle, tmp_path / "t3.json", forge), manifest) == 2


def test_restored_older_database_is_caught_behind_a_trusted_checkpoint(
    node: NodeConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = _manifest(node, tmp_path)
    backup = tmp_path / "backup.db"
    conn = store.connect(node.database)
    conn.execute("VACUUM INTO ?", (str(backup),))
    conn.close()
    _run_queries(node, ("SELECT grade, COUNT(*) FROM screenings GROUP BY grade",))
    saved = tmp_path / "trusted.json"
    assert (
        _verify(_export(node, tmp_path / "b1.json"), manifest, "--save-checkpoint", str(saved)) == 0
    )
    # the operator restores yesterday's database: the newest entry disappears
    for suffix in ("", "-wal", "-shm"):
        Path(f"{node.database}{suffix}").unlink(missing_ok=True)
    shutil.copy(backup, node.database)
    older = _export(node, tmp_path / "b2.json")
    assert _verify(older, manifest) == 0  # on its own it is a consistent, shorter log
    evidence = tmp_path / "evidence"
    capsys.readouterr()
    assert (
        _verify(
            older, manifest, "--trusted-checkpoint", str(saved), "--evidence-dir", str(evidence)
        )
        == 3
    )
    assert "rolled back" in capsys.readouterr().err
    notes = sorted(evidence.iterdir())
    assert len(notes) == 2
    assert all(n.read_text(encoding="utf-8").startswith("fedscreen.node/130102\n") for n in notes)
    # a fork: same size, different history (another database continued from the backup)
    _run_queries(node, ("SELECT location, COUNT(*) FROM screenings GROUP BY location",))
    forked = _export(node, tmp_path / "b3.json")
    assert _verify(forked, manifest, "--trusted-checkpoint", str(saved)) == 3


def test_unknown_key_malformed_note_and_wrong_manifest(node: NodeConfig, tmp_path: Path) -> None:
    bundle = _export(node, tmp_path / "b.json")
    manifest = _manifest(node, tmp_path)
    stranger = SigningKey.generate()
    log = read_bundle(bundle).logs[0]

    def foreign_checkpoint(data: dict) -> None:  # type: ignore[type-arg]
        data["checkpoints"][-1] = sign_checkpoint(
            Checkpoint(log.origin, 1, b"\0" * 32), key=stranger
        )

    def malformed(data: dict) -> None:  # type: ignore[type-arg]
        data["checkpoints"][0] = data["checkpoints"][0].replace("\n\n", "\n")

    assert _verify(_rewrite(bundle, tmp_path / "t1.json", foreign_checkpoint), manifest) == 4
    assert _verify(_rewrite(bundle, tmp_path / "t2.json", malformed), manifest) == 4
    other = _manifest(replace(node, home=node.home), tmp_path, authority=stranger)
    text = json.loads(other.read_text(encoding="utf-8"))
    text["envelope"]["payload"] = text["envelope"]["payload"][:-4] + "AAAA"
    other.write_text(json.dumps(text), encoding="utf-8")
    assert _verify(bundle, other) == 4
    (tmp_path / "junk.json").write_text("{not json", encoding="utf-8")
    assert _verify(tmp_path / "junk.json", manifest) == 4


def _signed(sql: str, epsilon: float, year: str = "2024-2025") -> SignedQuery:
    """A signed query for ``sql`` (its digest set), as a node receives it."""
    query = SignedQuery(
        new_query_id(), ANALYST, 0, replace(parse_sql(sql), years=(year,)), epsilon, None, ()
    )
    return issue_query(query, key=SigningKey.generate())[0]


def _answer_to(config: NodeConfig, query: SignedQuery):  # type: ignore[no-untyped-def]
    conn = store.connect(config.database)
    try:
        request = QueryRequest(
            ANALYST,
            query.spec,
            epsilon=query.epsilon,
            query_id=query.query_id,
            query_sha256=query.digest,
        )
        return answer_query(config, config.policy(), request, conn=conn)
    finally:
        conn.close()


def test_signed_answers_verify_and_cannot_be_altered_or_reattached(
    node: NodeConfig, tmp_path: Path
) -> None:
    manifest_path = _manifest(node, tmp_path)
    from fedscreen.trust.manifest import load_manifest

    manifest = load_manifest(manifest_path)
    sql = "SELECT grade, COUNT(*) FROM screenings GROUP BY grade"
    query = _signed(sql, 0.2)
    answer = _answer_to(node, query)

    def check(envelope: Envelope, expected: SignedQuery, *, public: bool = False) -> None:
        verify_answer(
            envelope, manifest=manifest, node_id="130102", expected_query=expected, public=public
        )

    verified = verify_answer(
        answer.envelope, manifest=manifest, node_id="130102", expected_query=query, public=False
    )
    assert verified.body == answer.body
    assert (verified.query_id, verified.query_sha256) == (query.query_id, query.digest)
    assert verified.charged == 0.2
    # changed after signing
    outer = json.loads(answer.envelope.to_json())
    payload = json.loads(base64.b64decode(outer["payload"]))
    payload["answer"]["cells"][0]["value"] += 1
    outer["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    with pytest.raises(VerificationError):
        check(Envelope.from_json(json.dumps(outer)), query)
    # another id, another question, another ε, another signed query with the same id
    with pytest.raises(VerificationError, match="another query id"):
        check(answer.envelope, replace(query, query_id=new_query_id()))
    other = _signed("SELECT sex, COUNT(*) FROM screenings GROUP BY sex", 0.2)
    with pytest.raises(VerificationError, match="another query id"):
        check(answer.envelope, other)
    with pytest.raises(VerificationError, match="digest differs"):
        check(answer.envelope, replace(other, query_id=query.query_id))
    with pytest.raises(VerificationError, match="digest differs"):
        check(answer.envelope, replace(_signed(sql, 0.3), query_id=query.query_id))
    # the same question at another ε, even under this query's id and digest
    with pytest.raises(VerificationError, match="another ε"):
        check(answer.envelope, replace(query, epsilon=0.3))
    with pytest.raises(VerificationError, match="different question"):
        check(answer.envelope, replace(other, query_id=query.query_id, digest=query.digest))
    # the catalogue, not the answer, says whether the data are public
    with pytest.raises(VerificationError, match="mechanism for public data"):
        check(answer.envelope, query, public=True)
    # a local answer (no signed query) is not accepted by a federation verifier
    local = _ask(node, sql)
    with pytest.raises(VerificationError, match="answers no signed query"):
        check(local.envelope, query)
