"""A coordinator's answer entries are logged unsigned (issue 11, item 8a): its log still
verifies, older logs with signed answer entries still verify, and nothing else may be
unsigned.

A real coordinator and real node homes, in process; the logs are exported as
``fedscreen audit export`` does and verified as ``fedscreen audit verify`` does. A
dishonest coordinator holds its own key: the forgeries below re-sign every checkpoint
over the edited entries, so only the rules under test can catch them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from countyhomes import county_homes
from localnode import answer_locally

from fedscreen._util.canonical import canonical_json
from fedscreen.analyst.query import make_query
from fedscreen.audit.bundle import read_bundle, write_bundle
from fedscreen.audit.verify import _signers, verify_bundle
from fedscreen.coordinator.core import Coordinator
from fedscreen.crypto.envelope import LOG_ENTRY_V1, Envelope, parse_json, sign_envelope
from fedscreen.crypto.signing import SigningKey
from fedscreen.errors import BundleError, EntryInvalid, HistoryInconsistent
from fedscreen.node.store import connect
from fedscreen.tlog import merkle
from fedscreen.tlog.checkpoint import Checkpoint, note_size, sign_checkpoint
from fedscreen.tlog.export import Bundle, LogExport
from fedscreen.tlog.memberlog import export_log
from fedscreen.trust.identity import load_identity
from fedscreen.trust.manifest import Manifest, Member

SQL = "SELECT sex, COUNT(*) FROM screenings WHERE academic_year = '2024-2025' GROUP BY sex"
COUNTIES = ("130104", "130105", "130107")


@dataclasses.dataclass
class Logs:
    manifest: Manifest
    coordinator: LogExport
    coordinator_key: SigningKey
    node: LogExport
    node_key: SigningKey


@pytest.fixture
def logs(tmp_path: Path) -> Logs:
    """Two releases of one query (the second answered by two nodes) in a real
    coordinator's log, and the first county's own log."""
    homes = county_homes(tmp_path, {code: 40 + 15 * n for n, code in enumerate(COUNTIES)})
    query, envelope = make_query(homes.analysts["analyst-1"], SQL, epsilon=0.3, accuracy=None)
    coordinator = Coordinator.open(homes.coordinator)
    try:
        for answering in (COUNTIES, COUNTIES[:2]):
            accepted = coordinator.accept(envelope, now_ms=query.issued_at_ms)
            answers = {n: answer_locally(homes.nodes[n], envelope) for n in answering}
            coordinator.release(accepted, answers, [n for n in COUNTIES if n not in answering])
        exported, key = coordinator.export(), coordinator.key
    finally:
        coordinator.close()
    node = homes.nodes[COUNTIES[0]]
    conn = connect(node.database)
    try:
        node_log = export_log(conn, member_id=node.node_id)
    finally:
        conn.close()
    return Logs(
        load_identity(homes.coordinator).manifest(),
        exported,
        key,
        node_log,
        node.signing_key(),
    )


def _verify(*logs: LogExport, manifest: Manifest) -> None:
    verify_bundle(Bundle(tuple(logs), None), manifest)


def _forged(log: LogExport, entries: list[bytes], key: SigningKey) -> LogExport:
    """``log`` with ``entries`` and every checkpoint signed again over them by ``key``
    (what the log's owner can always do)."""
    notes = []
    for note in log.checkpoints:
        size = note_size(note)
        root = merkle.root_from_leaf_hashes(merkle.leaf_hash(e) for e in entries[:size])
        notes.append(sign_checkpoint(Checkpoint(log.origin, size, root), key=key))
    return dataclasses.replace(log, entries=tuple(entries), checkpoints=tuple(notes))


def _kind(entry: bytes) -> str:
    if entry.startswith(b'{"payload":'):
        entry = Envelope.from_json(entry).unverified_payload()
    return str(parse_json(entry)["kind"])


def _signed(entry: bytes, key: SigningKey) -> bytes:
    return sign_envelope(payload_type=LOG_ENTRY_V1, payload=entry, key=key).to_json().encode()


def _bare(entry: bytes) -> bytes:
    return Envelope.from_json(entry).unverified_payload()


def test_answer_entries_are_bare_canonical_json_and_the_log_verifies(logs: Logs) -> None:
    entries = logs.coordinator.entries
    kinds = [_kind(e) for e in entries]
    assert kinds.count("answer") == 5
    assert kinds.count("release") == 2
    for entry, kind in zip(entries, kinds, strict=True):
        if kind == "answer":
            assert canonical_json(parse_json(entry)) == entry  # the payload itself
        else:
            assert entry.startswith(b'{"payload":')  # a signed envelope, as before
    _verify(logs.coordinator, logs.node, manifest=logs.manifest)


def test_a_log_whose_answer_entries_are_signed_still_verifies(logs: Logs) -> None:
    # the form every coordinator wrote before: each answer in an envelope of its own
    older = [
        _signed(e, logs.coordinator_key) if _kind(e) == "answer" else e
        for e in logs.coordinator.entries
    ]
    _verify(_forged(logs.coordinator, older, logs.coordinator_key), manifest=logs.manifest)


def test_a_release_or_request_without_its_signature_is_refused(logs: Logs) -> None:
    for kind in ("release", "request"):
        entries = list(logs.coordinator.entries)
        at = next(i for i, e in enumerate(entries) if _kind(e) == kind)
        entries[at] = _bare(entries[at])
        forged = _forged(logs.coordinator, entries, logs.coordinator_key)
        with pytest.raises(EntryInvalid, match=f"unsigned entry of kind '{kind}'") as caught:
            _verify(forged, manifest=logs.manifest)
        assert caught.value.index == at


def test_an_unsigned_entry_in_a_node_log_is_refused(logs: Logs) -> None:
    entries = list(logs.node.entries)
    at = next(i for i, e in enumerate(entries) if _kind(e) == "answer")
    entries[at] = _bare(entries[at])
    with pytest.raises(EntryInvalid, match="unsigned entry of kind 'answer'"):
        _verify(_forged(logs.node, entries, logs.node_key), manifest=logs.manifest)


def test_an_unsigned_answer_entry_must_be_canonical(logs: Logs) -> None:
    entries = list(logs.coordinator.entries)
    at = next(i for i, e in enumerate(entries) if _kind(e) == "answer")
    entries[at] = entries[at].replace(b'","', b'", "', 1)  # the same JSON, one space more
    with pytest.raises(EntryInvalid, match="not canonical JSON"):
        _verify(_forged(logs.coordinator, entries, logs.coordinator_key), manifest=logs.manifest)


def test_an_edited_unsigned_answer_breaks_the_signed_checkpoint(logs: Logs) -> None:
    entries = list(logs.coordinator.entries)
    at = next(i for i, e in enumerate(entries) if _kind(e) == "answer")
    entries[at] = entries[at].replace(b'"node":"130104"', b'"node":"130105"')
    assert entries[at] != logs.coordinator.entries[at]
    edited = dataclasses.replace(logs.coordinator, entries=tuple(entries))
    with pytest.raises(HistoryInconsistent):
        _verify(edited, manifest=logs.manifest)


def test_a_dishonest_coordinator_cannot_swap_unsigned_answers(logs: Logs) -> None:
    # the first release's answer from the third county, put in place of the second
    # release's answer from the first: both are that release's only changes, the
    # checkpoints are signed again, and the signed release still names the answer
    # it was made from
    entries = list(logs.coordinator.entries)
    answers = [i for i, e in enumerate(entries) if _kind(e) == "answer"]
    first, second = answers[2], answers[3]  # run one: 3 answers; run two: 2
    moved = parse_json(entries[first])
    moved["index"] = second
    entries[second] = canonical_json({**parse_json(entries[second]), "node": moved["node"],
                                      "envelope": moved["envelope"]})  # fmt: skip
    with pytest.raises(EntryInvalid, match="other answers than the ones logged") as caught:
        _verify(_forged(logs.coordinator, entries, logs.coordinator_key), manifest=logs.manifest)
    assert caught.value.index == answers[-1] + 1  # the release that names the answers


def test_an_unsigned_entry_counts_as_signed_by_the_key_of_the_entry_after_it() -> None:
    # a re-keyed coordinator: which key is "the signer" decides revocation checks; an
    # answer is vouched for by the release logged after it in the same batch
    old, new = SigningKey.generate(), SigningKey.generate()
    members = tuple(
        Member("coordinator", "coordinator", "C", k.public_key, "00" * 32) for k in (old, new)
    )
    bare = canonical_json({"kind": "answer", "index": 0})
    entries = (_signed(b"{}", old), bare, bare, _signed(b"{}", new), bare, _signed(b"{}", old))
    assert [m.signing_key for m in _signers(entries, members)] == [
        k.public_key for k in (old, new, new, new, old, old)
    ]


def test_bundles_are_written_as_format_2_and_format_1_is_still_read(
    logs: Logs, tmp_path: Path
) -> None:
    # an auditor of an earlier version refuses format 2 as unknown, rather than calling
    # the unsigned answer entries forgeries; this one reads both
    path = tmp_path / "bundle.json"
    write_bundle(path, [logs.coordinator], None)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == "fedscreen-audit-bundle/2"
    older = tmp_path / "older.json"
    older.write_text(json.dumps({**data, "format": "fedscreen-audit-bundle/1"}), encoding="utf-8")
    assert read_bundle(older).logs == read_bundle(path).logs == (logs.coordinator,)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**data, "format": "fedscreen-audit-bundle/3"}), encoding="utf-8")
    with pytest.raises(BundleError, match="not a fedscreen-audit-bundle/2 file"):
        read_bundle(other)
