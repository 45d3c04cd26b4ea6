"""coordinator.quarantine: each node's checkpoints, quarantine on rollback, logged readmission.

A real coordinator home (its SQLite log, its key) and a real node identity; the
node's log is a real SQLite transparency log signed with the node's key, so every
checkpoint and proof here is one a node would send.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from logentries import verified_entries
from nodelogs import NodeLog

from fedscreen.coordinator.core import Coordinator, init_coordinator
from fedscreen.coordinator.quarantine import (
    MAX_HELD_CHECKPOINTS,
    CheckpointBook,
    readmit,
    screen_answer,
)
from fedscreen.crypto.signing import SigningKey
from fedscreen.errors import ConfigError
from fedscreen.node.home import init_home
from fedscreen.tlog.checkpoint import member_origin, parse_and_verify_note
from fedscreen.tlog.entries import COORDINATOR_UNSIGNED
from fedscreen.trust import authority
from fedscreen.trust.identity import issue_here, update_manifest

NODE = "130102"
NOW_MS = 1_800_000_000_000


@dataclass
class Setup:
    coordinator: Coordinator
    book: CheckpointBook
    node_key: SigningKey
    home: Path


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    auth = tmp_path / "auth"
    authority.init_authority(auth, federation="test")
    init_coordinator(tmp_path / "coord", member_id="coordinator", name="省平台")
    issue_here(auth, tmp_path / "coord")
    config = init_home(tmp_path / NODE, node_id=NODE, name="长安区")
    issue_here(auth, config.home)
    update_manifest(tmp_path / "coord", authority.manifest_text(auth))
    coordinator = Coordinator.open(tmp_path / "coord")
    try:
        yield Setup(coordinator, coordinator.book, config.signing_key(), tmp_path)
    finally:
        coordinator.close()


def _log(setup: Setup) -> NodeLog:
    return NodeLog(sqlite3.connect(":memory:"), setup.node_key)


def _screen(setup: Setup, log: NodeLog, note: str, sent: int) -> str | None:
    return screen_answer(
        setup.coordinator,
        setup.book,
        node_id=NODE,
        envelope=log.answer(note),
        proof=log.proof(sent),
        sent_size=sent,
        now_ms=NOW_MS,
    )


def _logged(coordinator: Coordinator, kind: str) -> list[dict[str, Any]]:
    """The coordinator's log entries of ``kind``, their signatures verified."""
    return verified_entries(
        coordinator.export().entries,
        coordinator.key.public_key,
        kind=kind,
        unsigned=COORDINATOR_UNSIGNED,
    )


def test_a_growing_log_is_followed(setup: Setup) -> None:
    log = _log(setup)
    assert _screen(setup, log, log.grow(3), sent=0) is None  # the baseline
    assert setup.book.known_size(NODE) == 3
    assert _screen(setup, log, log.grow(4), sent=3) is None
    assert setup.book.known_size(NODE) == 7
    assert setup.book.quarantined(NODE) is None


def test_answers_in_flight_together_arrive_in_any_order(setup: Setup) -> None:
    log = _log(setup)
    assert _screen(setup, log, log.grow(2), sent=0) is None
    first = log.grow(1)
    first_proof = log.proof(2)
    second = log.grow(1)
    # both were sent known size 2; the newer answer is screened first
    assert _screen(setup, log, second, sent=2) is None
    older = screen_answer(
        setup.coordinator, setup.book, node_id=NODE, envelope=log.answer(first),
        proof=first_proof, sent_size=2, now_ms=NOW_MS,
    )  # fmt: skip
    assert older is None
    assert setup.book.known_size(NODE) == 4


@pytest.mark.parametrize(("kept", "regrown", "word"), [(2, 0, "shrank"), (2, 3, "forked")])
def test_a_rolled_back_log_is_quarantined_with_its_evidence(
    setup: Setup, kept: int, regrown: int, word: str
) -> None:
    log = _log(setup)
    held_note = log.grow(5)
    assert _screen(setup, log, held_note, sent=0) is None
    # the database restored from a copy of 2 entries, then grown again differently
    restored = _log(setup)
    note = restored.grow(kept)
    if regrown:
        note = restored.grow(regrown, tag="after the restore")
    reason = _screen(setup, restored, note, sent=5)
    assert reason is not None
    assert reason.startswith("quarantined: its log ")
    assert word in reason
    held = setup.book.quarantined(NODE)
    assert held is not None
    assert held.reason == reason.removeprefix("quarantined: ")
    [evidence] = _logged(setup.coordinator, "quarantine")
    assert evidence["node"] == NODE
    assert evidence["held_checkpoint"] == held_note
    assert evidence["presented_checkpoint"] == note
    verifiers = {member_origin("node", NODE): setup.node_key.public_key}
    assert parse_and_verify_note(evidence["held_checkpoint"], verifiers=verifiers).size == 5

    # further answers, even consistent ones, are not used; no second evidence entry
    assert _screen(setup, log, log.grow(1), sent=5) == reason
    assert len(_logged(setup.coordinator, "quarantine")) == 1
    # the quarantine is durable: a restarted coordinator still holds it
    again = Coordinator.open(setup.home / "coord")
    try:
        assert CheckpointBook(again.conn).quarantined(NODE) is not None
    finally:
        again.close()


def test_readmission_is_logged_and_the_next_checkpoint_is_the_baseline(setup: Setup) -> None:
    log = _log(setup)
    assert _screen(setup, log, log.grow(4), sent=0) is None
    restored = _log(setup)
    assert _screen(setup, restored, restored.grow(1), sent=4) is not None
    with pytest.raises(ConfigError, match="reason"):
        readmit(setup.coordinator, node_id=NODE, reason=" \n ", now_ms=NOW_MS)
    why = "restored\nfrom\x1b[2J backup"
    ended = readmit(setup.coordinator, node_id=NODE, reason=why, now_ms=NOW_MS)
    assert "shrank" in ended.reason
    [entry] = _logged(setup.coordinator, "readmit")
    assert entry["node"] == NODE
    assert entry["reason"] == "restored from [2J backup"
    assert entry["quarantine_reason"] == ended.reason
    assert setup.book.quarantined(NODE) is None
    assert setup.book.known_size(NODE) == 0
    # a query sent before the readmission (known size 4) finds no baseline: the next is it
    assert _screen(setup, restored, restored.grow(1), sent=4) is None
    assert setup.book.known_size(NODE) == 2
    assert _screen(setup, restored, restored.grow(2), sent=2) is None
    with pytest.raises(ConfigError, match="not quarantined"):
        readmit(setup.coordinator, node_id=NODE, reason="twice", now_ms=NOW_MS)


def test_an_answer_that_does_not_verify_is_no_evidence(setup: Setup) -> None:
    log = _log(setup)
    assert _screen(setup, log, log.grow(3), sent=0) is None
    stranger = NodeLog(sqlite3.connect(":memory:"), SigningKey.generate())
    reason = screen_answer(
        setup.coordinator, setup.book, node_id=NODE, envelope=stranger.answer(stranger.grow(1)),
        proof=[], sent_size=3, now_ms=NOW_MS,
    )  # fmt: skip
    assert reason is None  # the release's own verification drops it
    assert setup.book.quarantined(NODE) is None
    assert setup.book.known_size(NODE) == 3


def test_checkpoints_are_written_in_batches_and_the_oldest_forgotten(setup: Setup) -> None:
    log = _log(setup)
    sent = 0
    for _ in range(MAX_HELD_CHECKPOINTS + 3):
        assert _screen(setup, log, log.grow(1), sent=sent) is None
        sent = log.size()

    def written() -> int:
        row = setup.coordinator.conn.execute(
            "SELECT MAX(size) FROM node_checkpoint WHERE node_id = ?", (NODE,)
        ).fetchone()
        return int(row[0] or 0)

    assert written() == 0  # verified, not yet written
    assert setup.book.known_size(NODE) == sent
    setup.book.flush()
    assert written() == sent
    sizes = [
        size
        for (size,) in setup.coordinator.conn.execute(
            "SELECT size FROM node_checkpoint WHERE node_id = ? ORDER BY size", (NODE,)
        )
    ]
    assert sizes == list(range(sent - MAX_HELD_CHECKPOINTS + 1, sent + 1))
    setup.book.flush()  # nothing pending: nothing changes
    assert written() == sent
    assert CheckpointBook(setup.coordinator.conn).known_size(NODE) == sent  # read afresh


def test_a_re_keyed_node_starts_afresh_not_quarantined(setup: Setup) -> None:
    """Finding T5: a node revoked and issued again under its id with a new key (a new log)
    is not held to the checkpoints its old key signed."""
    old = _log(setup)
    assert _screen(setup, old, old.grow(3), 0) is None
    setup.book.flush()
    assert setup.book.known_size(NODE) == 3
    auth = setup.home / "auth"
    authority.revoke(auth, NODE)
    config = init_home(setup.home / "rekeyed", node_id=NODE, name="长安区")
    issue_here(auth, config.home)
    update_manifest(setup.home / "coord", authority.manifest_text(auth))
    setup.coordinator.reload_manifest()
    new = NodeLog(sqlite3.connect(":memory:"), config.signing_key())
    note = new.grow(1)  # a fresh log, shorter than the old one
    assert _screen(setup, new, note, setup.book.known_size(NODE)) is None
    assert setup.book.quarantined(NODE) is None
    assert setup.book.known_size(NODE) == 1  # the new log is the baseline now
    assert _logged(setup.coordinator, "quarantine") == []
    # and the new log is followed from there: a rollback of it is still caught
    grown = new.grow(2)
    assert _screen(setup, new, grown, 1) is None
