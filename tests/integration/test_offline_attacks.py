"""The air-gapped node path under attack: tampered, misaddressed, replayed, expired files.

One federation for the module, as ``test_offline_node.py`` runs it: the coordinator and
two online county nodes are processes on 127.0.0.1 with mutual TLS, the offline node
(130203) is reached only by the files the real CLI writes. Each test asks its own
query, so the tests depend on no order; each attack checks that nothing was charged
at the node and nothing released or logged at the coordinator, and that the message
says why. The last test exports every log and verifies it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from procfed import Processes, charges, cli, refusals

from fedscreen._util.canonical import canonical_json
from fedscreen.coordinator.core import DATABASE_FILE, init_coordinator
from fedscreen.crypto.envelope import Envelope, sign_envelope
from fedscreen.crypto.signing import SigningKey
from fedscreen.node.home import NodeConfig, init_home
from fedscreen.node.ingest import ingest_paths
from fedscreen.node.offline import answer_outbox
from fedscreen.protocol.offline import ANSWERS_V1, MAX_FILE_BYTES, OUTBOX_V1
from fedscreen.synth import generate, write_export
from fedscreen.tlog.checkpoint import Checkpoint, sign_checkpoint
from fedscreen.trust import authority
from fedscreen.trust.identity import create_identity, issue_here, load_identity, update_manifest
from fedscreen.trust.manifest import parse_manifest

YEAR = "2024-2025"
ONLINE = ("130104", "130105")
OFFLINE = "130203"
NODES = (*ONLINE, OFFLINE)
SQL = f"SELECT COUNT(*) FROM screenings WHERE academic_year = '{YEAR}'"
DAY_MS = 86_400_000


@dataclass(frozen=True)
class State:
    """What an attack must leave unchanged."""

    charges: int
    releases: int
    log_size: int
    pending: int


@dataclass
class Fed:
    root: Path
    auth: Path
    coordinator: Path
    analysts: dict[str, Path]
    nodes: dict[str, NodeConfig]
    run: Processes
    address: str = ""
    #: file names handed out so far (every test writes files of its own)
    names: set[str] = field(default_factory=set)
    asked: int = 0

    @property
    def offline(self) -> NodeConfig:
        return self.nodes[OFFLINE]

    def path(self, name: str) -> Path:
        assert name not in self.names, name
        self.names.add(name)
        return self.root / name

    def query(self, analyst: str = "prov") -> str:
        """A new question (its own ε: the node answers an identical one from its store
        at no cost) whose release leaves the offline node queued; its query id."""
        self.asked += 1
        done = cli(
            "query", "--home", str(self.analysts[analyst]), "--coordinator", self.address,
            "--epsilon", f"{0.1 + 0.01 * self.asked:.2f}", "--format", "json", SQL,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        release = json.loads(done.stdout)["release"]
        assert release["missing"] == [OFFLINE]
        assert "queued" in release["missing_reasons"][OFFLINE]
        return str(release["query_id"])

    def outbox(self, name: str) -> Path:
        path = self.path(name)
        done = cli("coordinator", "outbox", "--home", str(self.coordinator), "--node", OFFLINE,
                   "--out", str(path))  # fmt: skip
        assert done.returncode == 0, done.stderr
        return path

    def answer(self, outbox: Path, out: Path) -> subprocess.CompletedProcess[str]:
        return cli("node", "answer-file", "--home", str(self.offline.home), str(outbox),
                   "--out", str(out))  # fmt: skip

    def inbox(self, answers: Path) -> subprocess.CompletedProcess[str]:
        return cli("coordinator", "inbox", "--home", str(self.coordinator), str(answers))

    def coordinator_rows(self, sql: str, *args: object) -> list[Any]:
        conn = sqlite3.connect(self.coordinator / DATABASE_FILE)
        try:
            return list(conn.execute(sql, args).fetchall())
        finally:
            conn.close()

    def state(self) -> State:
        return State(
            charges=charges(self.offline),
            releases=self.coordinator_rows("SELECT count(*) FROM release_store")[0][0],
            log_size=self.coordinator_rows(
                "SELECT count(*) FROM tlog_leaves WHERE log = 'coordinator'"
            )[0][0],
            pending=self.coordinator_rows(
                "SELECT count(*) FROM offline_queue WHERE settled_ms IS NULL"
            )[0][0],
        )

    def versions(self, query_id: str) -> list[int]:
        rows = self.coordinator_rows(
            "SELECT release_version FROM release_store WHERE query_id = ? ORDER BY seq", query_id
        )
        return [int(r[0]) for r in rows]

    def settle(self, name: str) -> Path:
        """Answer a fresh outbox and import the answers (the honest round trip)."""
        outbox = self.outbox(f"{name}-outbox.json")
        answers = self.path(f"{name}-answers.json")
        done = self.answer(outbox, answers)
        assert done.returncode == 0, done.stderr
        imported = self.inbox(answers)
        assert imported.returncode == 0, imported.stderr
        assert self.state().pending == 0
        return answers


def _make(root: Path) -> Fed:
    auth = root / "auth"
    authority.init_authority(auth, federation="offline-attacks")
    init_coordinator(root / "coord", member_id="coordinator", name="省平台")
    issue_here(auth, root / "coord")
    analysts = {}
    for analyst in ("prov", "leaver"):
        create_identity(root / analyst, member_id=analyst, role="analyst", name=f"分析员 {analyst}")
        issue_here(auth, root / analyst)
        analysts[analyst] = root / analyst
    configs: dict[str, NodeConfig] = {}
    for seed, node in enumerate(NODES):
        config = init_home(root / node, node_id=node, name=f"county {node}")
        issue_here(auth, config.home)
        write_export(generate(node, 120, YEAR, seed=seed + 11), root / f"export-{node}")
        _, rejected = ingest_paths(config, [root / f"export-{node}"])
        assert not rejected
        configs[node] = config
    linked = cli("pki", "link", "--dir", str(auth), "--id", OFFLINE, "--offline")
    assert linked.returncode == 0, linked.stderr
    text = authority.manifest_text(auth)
    for home in (root / "coord", *analysts.values(), *(c.home for c in configs.values())):
        update_manifest(home, text)
    return Fed(root, auth, root / "coord", analysts, configs, Processes(root))


@contextlib.contextmanager
def running(root: Path) -> Iterator[Fed]:
    fed = _make(root)
    try:
        fed.address = fed.run.coordinator(fed.coordinator)
        for node in ONLINE:
            fed.run.node(fed.nodes[node], fed.address)
        yield fed
    finally:
        fed.run.stop_all()


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    with running(tmp_path_factory.mktemp("offline-attacks")) as federation:
        yield federation


# --- file surgery --------------------------------------------------------------------------


def payload_of(path: Path) -> tuple[Envelope, dict[str, Any]]:
    envelope = Envelope.from_json(path.read_bytes())
    return envelope, json.loads(envelope.unverified_payload())


def unsigned_change(path: Path, out: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """``path`` with its payload changed and its signature kept (tampered in transit)."""
    envelope, payload = payload_of(path)
    change(payload)
    tampered = Envelope(envelope.payload_type, canonical_json(payload), envelope.signatures)
    out.write_bytes(tampered.to_json().encode() + b"\n")
    return out


def resigned(
    path: Path, out: Path, key: SigningKey, change: Callable[[dict[str, Any]], None]
) -> Path:
    """``path`` with its payload changed and signed again with ``key``."""
    envelope, payload = payload_of(path)
    change(payload)
    signed = sign_envelope(
        payload_type=envelope.payload_type, payload=canonical_json(payload), key=key
    )
    out.write_bytes(signed.to_json().encode() + b"\n")
    return out


def flip_in_base64(text: str, at: int = 10) -> str:
    """``text`` (base64) with one byte of what it encodes changed."""
    raw = bytearray(base64.b64decode(text))
    raw[at % len(raw)] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def change_inner_payload(envelope_text: str, change: Callable[[dict[str, Any]], None]) -> str:
    """A DSSE envelope (text) whose payload is changed and whose signature is kept."""
    envelope = Envelope.from_json(envelope_text)
    body = json.loads(envelope.unverified_payload())
    change(body)
    return Envelope(envelope.payload_type, canonical_json(body), envelope.signatures).to_json()


def key_of(home: Path) -> SigningKey:
    return load_identity(home).signing_key()


def refused(done: subprocess.CompletedProcess[str], *words: str) -> str:
    """A CLI refusal: non-zero exit, the reason on stderr, no traceback."""
    assert done.returncode != 0, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    for word in words:
        assert word in done.stderr, (word, done.stderr)
    assert len(done.stderr) < 2000
    return done.stderr


# --- the outbox --------------------------------------------------------------------------


def test_a_tampered_outbox_is_refused_and_nothing_is_charged(fed: Fed) -> None:
    fed.query()
    outbox = fed.outbox("tamper-outbox.json")
    envelope, _ = payload_of(outbox)

    def query_byte(payload: dict[str, Any]) -> None:
        query = payload["queries"][-1]
        query["query_envelope"] = change_inner_payload(
            query["query_envelope"], lambda body: body.update(epsilon=0.01)
        )

    def signature(out: Path) -> Path:
        (sig,) = envelope.signatures
        forged = Envelope(
            envelope.payload_type,
            envelope.unverified_payload(),
            (sig._replace(sig=bytes([sig.sig[0] ^ 1]) + sig.sig[1:]),),
        )
        out.write_bytes(forged.to_json().encode() + b"\n")
        return out

    tampered = {
        "query": unsigned_change(outbox, fed.path("tamper-query.json"), query_byte),
        "node": unsigned_change(
            outbox, fed.path("tamper-node.json"), lambda p: p.update(node=ONLINE[0])
        ),
        "known size": unsigned_change(
            outbox,
            fed.path("tamper-size.json"),
            lambda p: p.update(known_log_size=p["known_log_size"] + 1),
        ),
        "signature": signature(fed.path("tamper-sig.json")),
    }
    before = fed.state()
    for what, path in tampered.items():
        out = fed.path(f"tamper-{what}-answers.json")
        message = refused(fed.answer(path, out), "coordinator")
        assert "not signed with the coordinator's key" in message or "does not verify" in message
        assert not out.exists(), what
        assert fed.state() == before, what
    # a truncated outbox and one over the size limit are refused too
    data = outbox.read_bytes()
    cut = fed.path("tamper-cut.json")
    cut.write_bytes(data[: len(data) // 2])
    out = fed.path("tamper-cut-answers.json")
    refused(fed.answer(cut, out), "not a signed fedscreen file")
    assert not out.exists()
    assert fed.state() == before
    # the genuine file still works
    fed.settle("tamper-honest")
    assert fed.state().charges == before.charges + 1


def test_an_outbox_for_another_node_or_from_another_signer_is_refused(fed: Fed) -> None:
    fed.query()
    outbox = fed.outbox("misaddressed-outbox.json")
    coordinator = key_of(fed.coordinator)
    cases = {
        # genuinely the coordinator's, but for another node
        "another node": (
            resigned(
                outbox, fed.path("other-node.json"), coordinator, lambda p: p.update(node=ONLINE[0])
            ),
            f"the outbox is for node {ONLINE[0]}, not {OFFLINE}",
        ),
        # the right content, signed by members that are not the coordinator
        "an analyst": (
            resigned(
                outbox, fed.path("by-analyst.json"), key_of(fed.analysts["prov"]), lambda p: None
            ),
            "not signed with the coordinator's key",
        ),
        "another node's key": (
            resigned(
                outbox, fed.path("by-node.json"), fed.nodes[ONLINE[0]].signing_key(), lambda p: None
            ),
            "not signed with the coordinator's key",
        ),
        "the node's own key": (
            resigned(outbox, fed.path("by-self.json"), fed.offline.signing_key(), lambda p: None),
            "not signed with the coordinator's key",
        ),
        # an answer file is not an outbox
        "an answer file": (
            resigned(outbox, fed.path("as-answers.json"), coordinator, lambda p: None),
            "",
        ),
    }
    # the last case: the coordinator's own signature over another payload type
    as_answers = cases["an answer file"][0]
    _, payload = payload_of(as_answers)
    signed = sign_envelope(
        payload_type=ANSWERS_V1, payload=canonical_json(payload), key=coordinator
    )
    as_answers.write_bytes(signed.to_json().encode() + b"\n")
    cases["an answer file"] = (as_answers, f"not {OUTBOX_V1!r}")
    before = fed.state()
    for what, (path, reason) in cases.items():
        out = fed.path(f"misaddressed-{what}-answers.json")
        refused(fed.answer(path, out), reason)
        assert not out.exists(), what
        assert fed.state() == before, what
    fed.settle("misaddressed-honest")
    assert fed.state().charges == before.charges + 1


# --- the answer file ---------------------------------------------------------------------


def _bad_cells(envelope_text: str) -> str:
    """The node's answer with one released cell changed, its signature kept."""

    def change(body: dict[str, Any]) -> None:
        cell = body["answer"]["cells"][0]
        shown = int(cell["display"])
        cell["display"] = str(shown + 1)
        cell["value"] = shown + 1

    return change_inner_payload(envelope_text, change)


def test_a_tampered_or_misattributed_answer_file_changes_nothing(fed: Fed) -> None:
    query_id = fed.query()
    outbox = fed.outbox("answers-outbox.json")
    answers = fed.path("answers.json")
    before_answer = fed.state()
    assert fed.answer(outbox, answers).returncode == 0
    assert fed.state().charges == before_answer.charges + 1
    _, genuine = payload_of(answers)
    assert [a["query_id"] for a in genuine["answers"]] == [query_id]
    assert genuine["answers"][0]["proof"], "the coordinator knew the node's log: a proof"

    def cells(p: dict[str, Any]) -> None:
        p["answers"][0]["envelope"] = _bad_cells(p["answers"][0]["envelope"])

    def proof(p: dict[str, Any]) -> None:
        p["answers"][0]["proof"][0] = flip_in_base64(p["answers"][0]["proof"][0])

    def digest(p: dict[str, Any]) -> None:
        p["outbox_sha256"] = hashlib.sha256(b"another outbox").hexdigest()

    node_key = fed.offline.signing_key()
    other_key = fed.nodes[ONLINE[0]].signing_key()
    never_made = "did not make for node"
    cases = {
        # changed in transit: the node's signature no longer holds
        "cells": (unsigned_change(answers, fed.path("t-cells.json"), cells), "node's key"),
        "proof": (unsigned_change(answers, fed.path("t-proof.json"), proof), "node's key"),
        "digest": (unsigned_change(answers, fed.path("t-digest.json"), digest), "node's key"),
        # signed by another node, for this node or as itself
        "other signer": (
            resigned(answers, fed.path("t-signer.json"), other_key, lambda p: None),
            "not signed with the node's key",
        ),
        "as the other node": (
            resigned(
                answers, fed.path("t-as-other.json"), other_key, lambda p: p.update(node=ONLINE[0])
            ),
            never_made,
        ),
        # the node's own signature over an answer to an outbox never made
        "unknown outbox": (
            resigned(answers, fed.path("t-outbox.json"), node_key, digest),
            never_made,
        ),
        "another coordinator": (
            resigned(
                answers,
                fed.path("t-coord.json"),
                node_key,
                lambda p: p.update(coordinator="province-2"),
            ),
            "addressed to coordinator province-2",
        ),
        "an analyst": (
            resigned(
                answers,
                fed.path("t-analyst.json"),
                key_of(fed.analysts["prov"]),
                lambda p: p.update(node="prov"),
            ),
            "is an analyst, not a node",
        ),
    }
    before = fed.state()
    for what, (path, reason) in cases.items():
        refused(fed.inbox(path), reason)
        assert fed.state() == before, what
        assert fed.versions(query_id) == [1], what

    # truncated, over the size either side reads, or not there: refused, nothing read
    data = answers.read_bytes()
    cut = fed.path("t-cut.json")
    cut.write_bytes(data[: len(data) - 40])
    refused(fed.inbox(cut), "not a signed fedscreen file")
    big = fed.path("t-big.json")
    with big.open("wb") as handle:
        handle.write(data)
        handle.truncate(MAX_FILE_BYTES + 1)  # sparse: no 16 MiB written
    refused(fed.inbox(big), f"larger than {MAX_FILE_BYTES} bytes")
    refused(fed.inbox(fed.root / "no-such-answers.json"), "cannot read")
    assert fed.state() == before

    # the node's own signature over one answer that is not what it signed: that answer is
    # reported and released in no version; the file's other content is still read
    one_bad = resigned(answers, fed.path("t-one-bad.json"), node_key, cells)
    done = fed.inbox(one_bad)
    assert done.returncode == 0, done.stderr
    assert "0 new release versions" in done.stdout
    assert "did not verify" in done.stdout
    assert fed.state() == before
    assert fed.versions(query_id) == [1]

    # the genuine file: one new version; again: nothing
    done = fed.inbox(answers)
    assert done.returncode == 0, done.stderr
    assert f"{query_id}: release version 2" in done.stdout
    assert fed.versions(query_id) == [1, 2]
    after = fed.state()
    assert after.releases == before.releases + 1
    assert after.pending == 0
    again = fed.inbox(answers)
    assert again.returncode == 0, again.stderr
    assert "0 new release versions" in again.stdout
    assert "already in the newest release" in again.stdout
    assert fed.state() == after
    # a tampered copy is still refused after the import
    refused(fed.inbox(cases["cells"][0]), "node's key")
    assert fed.state() == after

    # the same outbox answered twice charges once (the stored answer, no charge)
    twice = fed.path("answers-twice.json")
    done = fed.answer(outbox, twice)
    assert done.returncode == 0, done.stderr
    assert "answered before: no charge" in done.stdout
    assert "ε spent 0" in done.stdout
    assert fed.state() == after
    # and its answers, imported, change nothing either
    done = fed.inbox(twice)
    assert done.returncode == 0, done.stderr
    assert "0 new release versions" in done.stdout
    assert fed.state() == after


def test_an_expired_query_is_refused_stale_and_the_refusal_travels_back(fed: Fed) -> None:
    query_id = fed.query()
    outbox = fed.outbox("stale-outbox.json")
    before = fed.state()
    later = fed.path("stale-answers.json")
    clock = int(
        json.loads(Envelope.from_json(outbox.read_bytes()).unverified_payload())["made_at_ms"]
    )
    done = answer_outbox(
        fed.offline.home, outbox.read_bytes(), later, now_ms=lambda: clock + 31 * DAY_MS
    )
    assert done.answered == []
    assert [q for q, _ in done.refused] == [query_id]
    reason = done.refused[0][1]
    assert reason.startswith("stale"), reason
    assert done.epsilon_spent == 0
    assert fed.state().charges == before.charges
    assert any(r.startswith("stale") for r in refusals(fed.offline))
    _, carried = payload_of(later)
    assert carried["answers"] == []
    assert carried["refusals"] == [{"query_id": query_id, "reason": reason}]

    imported = fed.inbox(later)
    assert imported.returncode == 0, imported.stderr
    # the release's next version says why the node is missing: refused, not queued
    assert f"{query_id}: release version 2" in imported.stdout
    assert "1 refusals" in imported.stdout
    assert "the node refused: stale" in imported.stdout
    assert fed.versions(query_id) == [1, 2]
    answers, reasons = fed.coordinator_rows(
        "SELECT answer_entries, reasons FROM release_store WHERE query_id = ? "
        "AND release_version = 2", query_id,
    )[0]  # fmt: skip
    assert OFFLINE not in json.loads(answers)
    assert json.loads(reasons)[OFFLINE].startswith("refused: stale")
    after = fed.state()
    assert after.charges == before.charges
    assert after.releases == before.releases + 1
    assert after.pending == 0  # settled: refused, not asked again
    outcome = fed.coordinator_rows("SELECT outcome FROM offline_queue WHERE query_id = ?", query_id)
    assert outcome[0][0].startswith("refused: stale")
    # importing it again changes nothing
    again = fed.inbox(later)
    assert again.returncode == 0, again.stderr
    assert "0 new release versions" in again.stdout
    assert fed.state() == after


def test_an_outbox_carried_as_text_still_round_trips(fed: Fed) -> None:
    """A copy that changed the line ending (or dropped it) is the same signed outbox: the
    node answers it and the coordinator recognises the outbox its answers are for."""
    query_id = fed.query()
    outbox = fed.outbox("crlf-outbox.json")
    crlf = fed.path("crlf-copy.json")
    crlf.write_bytes(outbox.read_bytes().rstrip(b"\n") + b"\r\n")
    before = fed.state()
    # an --out in a folder that does not exist is refused before anything is charged
    nowhere = fed.root / "no-such-folder" / "answers.json"
    refused(fed.answer(crlf, nowhere), "no-such-folder")
    assert fed.state() == before
    answers = fed.path("crlf-answers.json")
    done = fed.answer(crlf, answers)
    assert done.returncode == 0, done.stderr
    assert fed.state().charges == before.charges + 1
    imported = fed.inbox(answers)
    assert imported.returncode == 0, imported.stderr
    assert f"{query_id}: release version 2" in imported.stdout
    assert fed.state().pending == 0


def test_a_coordinator_log_that_forked_gets_no_answers(fed: Fed) -> None:
    """An outbox signed by the coordinator whose checkpoint has the size of the one the
    node holds but another root (its log was rewritten): every query refused and
    recorded, nothing charged."""
    query_id = fed.query()
    newer = fed.outbox("forked-outbox.json")
    answered = fed.path("forked-answers.json")
    assert fed.answer(newer, answered).returncode == 0  # the node holds its checkpoint
    key = key_of(fed.coordinator)

    def forked(p: dict[str, Any]) -> None:
        note = p["coordinator_checkpoint"]
        held = Checkpoint.from_body(note[: note.index("\n\n") + 1])
        other = Checkpoint(held.origin, held.size, hashlib.sha256(held.root).digest())
        p.update(
            coordinator_checkpoint=sign_checkpoint(other, key=key),
            coordinator_proofs=[],
            made_at_ms=p["made_at_ms"] + 1,
        )

    forged = resigned(newer, fed.path("forked-forged.json"), key, forked)
    before = fed.state()
    seen = len(refusals(fed.offline))
    out = fed.path("forked-forged-answers.json")
    done = fed.answer(forged, out)
    assert done.returncode == 0, done.stderr
    assert "0 answered, 1 refused" in done.stdout
    assert "the coordinator's log went back" in done.stdout
    assert "forked" in done.stdout
    assert fed.state() == before
    assert len(refusals(fed.offline)) == seen + 1
    # the inbox knows no such outbox: the refusal changes nothing there either
    refused(fed.inbox(out), "did not make for node")
    assert fed.state() == before
    imported = fed.inbox(answered)
    assert imported.returncode == 0, imported.stderr
    assert fed.versions(query_id) == [1, 2]


# --- trust that changed while the file was on its way -----------------------------------


def test_a_revoked_analysts_queued_query_is_refused_once_the_node_knows(fed: Fed) -> None:
    query_id = fed.query("leaver")
    old = fed.outbox("revoked-outbox-1.json")
    revoked = authority.revoke(fed.auth, "leaver")
    update_manifest(fed.coordinator, authority.manifest_text(fed.auth))
    new = fed.outbox("revoked-outbox-2.json")
    _, carried = payload_of(new)
    assert parse_manifest(carried["manifest"]).version == revoked.version
    assert [q["query_id"] for q in carried["queries"]] == [query_id]
    before = fed.state()

    answers = fed.path("revoked-answers-2.json")
    done = fed.answer(new, answers)
    assert done.returncode == 0, done.stderr
    assert f"manifest version {revoked.version}" in done.stdout
    assert "0 answered, 1 refused" in done.stdout
    assert "refused (revoked" in done.stdout
    assert fed.state() == before
    assert load_identity(fed.offline.home).manifest().version == revoked.version
    assert any(r.startswith("revoked") for r in refusals(fed.offline))

    # the old outbox, carried after the node has the newer manifest: refused, not charged
    late = fed.path("revoked-answers-1.json")
    stale_file = fed.answer(old, late)
    refused(stale_file, "older than what this node last had from the coordinator")
    assert not late.exists()
    assert fed.state() == before

    imported = fed.inbox(answers)
    assert imported.returncode == 0, imported.stderr
    assert "the node refused: revoked" in imported.stdout
    after = fed.state()
    assert after.charges == before.charges
    assert after.pending == 0
    # no later version for a query whose analyst is no longer a member
    assert fed.versions(query_id) == [1]
    assert (after.releases, after.log_size) == (before.releases, before.log_size)


def _copy_database(source: Path, target: Path) -> None:
    """A consistent copy of a node database (SQLite's backup API, WAL included)."""
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def test_a_node_database_restored_from_a_backup_answers_nothing(fed: Fed) -> None:
    query_id = fed.query()
    first = fed.outbox("restore-outbox-1.json")
    database = fed.offline.database
    backup, current = fed.path("node-backup.db"), fed.path("node-current.db")
    _copy_database(database, backup)
    before = fed.state()
    answered = fed.answer(first, fed.path("restore-answers-1.json"))
    assert answered.returncode == 0, answered.stderr
    assert fed.state().charges == before.charges + 1
    _copy_database(database, current)

    # the operator restores last night's backup: the charge above is forgotten by it
    _copy_database(backup, database)
    assert fed.state().charges == before.charges
    # meanwhile the authority signed a newer manifest: outbox 2 carries it, and the
    # refusal must still say what is wrong (the database), not blame the manifest
    newer = authority.set_scope(fed.auth, "prov", "province")
    update_manifest(fed.coordinator, authority.manifest_text(fed.auth))
    second = fed.outbox("restore-outbox-2.json")
    assert parse_manifest(payload_of(second)[1]["manifest"]).version == newer.version
    out = fed.path("restore-answers-2.json")
    message = refused(fed.answer(second, out), "behind its saved checkpoint")
    assert "fedscreen node recover" in message
    assert "does not verify" not in message
    assert not out.exists()
    assert fed.state().charges == before.charges  # nothing answered on the old ledger

    # the database put back as it was: the query is answered from the store, free
    _copy_database(current, database)
    out = fed.path("restore-answers-2b.json")
    done = fed.answer(second, out)
    assert done.returncode == 0, done.stderr
    assert "answered before: no charge" in done.stdout
    assert fed.state().charges == before.charges + 1
    imported = fed.inbox(out)
    assert imported.returncode == 0, imported.stderr
    assert fed.versions(query_id) == [1, 2]


# --- at the end: every log verifies ------------------------------------------------------


def test_every_log_verifies_with_the_later_versions_counted(fed: Fed) -> None:
    bundle = fed.path("attacks.bundle")
    homes = [fed.coordinator, *(fed.nodes[n].home for n in NODES)]
    args = [a for h in homes for a in ("--home", str(h))]
    exported = cli("audit", "export", *args, "--out", str(bundle))
    assert exported.returncode == 0, exported.stderr
    done = cli("audit", "verify", str(bundle), "--manifest", str(fed.auth / "manifest.json"),
               "--json")  # fmt: skip
    assert done.returncode == 0, (done.stdout, done.stderr)
    logs = json.loads(done.stdout)["logs"]
    coordinator = next(r for r in logs if r["origin"].startswith("fedscreen.coordinator/"))
    stored = fed.coordinator_rows("SELECT count(*) FROM release_store")[0][0]
    later = fed.coordinator_rows("SELECT count(*) FROM release_store WHERE release_version > 1")
    assert later[0][0] >= 4  # this module's round trips each made one
    assert coordinator["releases"] == stored
    assert coordinator["later_versions"] == later[0][0]
    assert coordinator["quarantines"] == 0  # no attack above passed for a rollback
    offline = next(r for r in logs if r["origin"].endswith(f"/{OFFLINE}"))
    # the stale, the revoked and the forked refusals; the restored database wrote none
    assert offline["refusals"] == len(refusals(fed.offline)) == 3
    assert offline["rollbacks"] == 0
