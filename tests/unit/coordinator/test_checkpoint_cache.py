"""coordinator.checkpoints: the checkpoint book's read cache never outlives the table.

The book remembers what it read of ``node_checkpoint`` and ``node_quarantine`` and
forgets it in ``refresh()`` when another connection wrote (``PRAGMA data_version``).
Each test writes through a second connection to the same coordinator database — a
second ``Coordinator.open`` of the home (as ``fedscreen coordinator readmit`` does
while the server runs) or a bare ``sqlite3`` connection — and checks the first
coordinator's verdicts: a quarantine made elsewhere keeps the node's answer out of the
next screening and release, a readmission made elsewhere makes the next answer the
baseline, and after a flush that prunes, the book claims exactly the rows the table holds.

A real coordinator home (its SQLite log, its key), a real analyst's signed query and a
real node key: every checkpoint and proof is one a node would send.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nodelogs import NodeLog as SharedNodeLog

from fedscreen.analyst.query import make_query
from fedscreen.coordinator.checkpoints import MAX_HELD_CHECKPOINTS, CheckpointBook
from fedscreen.coordinator.core import Coordinator, init_coordinator
from fedscreen.coordinator.quarantine import readmit, screen_answer
from fedscreen.coordinator.runtime import screen
from fedscreen.coordinator.sessions import NodeReply
from fedscreen.crypto.signing import SigningKey
from fedscreen.node.home import init_home
from fedscreen.protocol.query import SignedQuery
from fedscreen.tlog.checkpoint import member_origin, parse_and_verify_note
from fedscreen.trust import authority
from fedscreen.trust.identity import create_identity, issue_here, update_manifest

NODE = "130102"
NOW_MS = 1_800_000_000_000
SQL = "SELECT sex, COUNT(*) FROM screenings WHERE academic_year = '2024-2025' GROUP BY sex"


class NodeLog(SharedNodeLog):
    """The node's log, answering queries."""

    def reply(self, sent: int) -> NodeReply:
        """The node's answer with a newly signed checkpoint, to a query sent ``sent``."""
        note = self.grow(1)
        return NodeReply(self.answer(note), "", tuple(self.proof(sent)), sent)


@dataclass
class Setup:
    coordinator: Coordinator
    node_key: SigningKey
    home: Path
    analyst: Path

    @property
    def book(self) -> CheckpointBook:
        return self.coordinator.book

    @property
    def database(self) -> Path:
        return self.home / "coord" / "coordinator.db"

    def log(self) -> NodeLog:
        return NodeLog(sqlite3.connect(":memory:"), self.node_key)

    def query(self) -> SignedQuery:
        """A real analyst's query, accepted (verified and logged) by the coordinator."""
        query, envelope = make_query(self.analyst, SQL, epsilon=0.3, accuracy=None)
        return self.coordinator.accept(envelope, now_ms=query.issued_at_ms)

    def other(self) -> Coordinator:
        """The same home opened again: another connection, as another process has."""
        return Coordinator.open(self.home / "coord")


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    auth = tmp_path / "auth"
    authority.init_authority(auth, federation="test")
    init_coordinator(tmp_path / "coord", member_id="coordinator", name="省平台")
    issue_here(auth, tmp_path / "coord")
    config = init_home(tmp_path / NODE, node_id=NODE, name="长安区")
    issue_here(auth, config.home)
    create_identity(tmp_path / "analyst", member_id="analyst-1", role="analyst", name="analyst")
    issue_here(auth, tmp_path / "analyst")
    for home in (tmp_path / "coord", tmp_path / "analyst"):
        update_manifest(home, authority.manifest_text(auth))
    coordinator = Coordinator.open(tmp_path / "coord")
    try:
        yield Setup(coordinator, config.signing_key(), tmp_path, tmp_path / "analyst")
    finally:
        coordinator.close()


def _screen(core: Coordinator, log: NodeLog, sent: int) -> str | None:
    note = log.grow(1)
    return screen_answer(
        core, core.book, node_id=NODE, envelope=log.answer(note), proof=list(log.proof(sent)),
        sent_size=sent, now_ms=NOW_MS,
    )  # fmt: skip


def _quarantine_elsewhere(setup: Setup, held: NodeLog) -> str:
    """Quarantine the node through a second coordinator on the same database: its log
    (``held``, already the first coordinator's baseline) restored to one entry."""
    other = setup.other()
    try:
        restored = setup.log()
        reason = _screen(other, restored, sent=held.size())
        assert reason is not None
        assert reason.startswith("quarantined: ")
    finally:
        other.close()
    return reason


def _rows(setup: Setup) -> dict[int, tuple[bytes, str]]:
    """The ``node_checkpoint`` rows of the node, read directly."""
    conn = sqlite3.connect(setup.database)
    try:
        return {
            int(size): (bytes(root), str(note))
            for size, root, note in conn.execute(
                "SELECT size, root, note FROM node_checkpoint WHERE node_id = ?", (NODE,)
            )
        }
    finally:
        conn.close()


def _agrees_with_table(book: CheckpointBook, setup: Setup, sizes: range) -> None:
    rows = _rows(setup)
    assert book.known_size(NODE) == max(rows, default=0)
    for size in sizes:
        held = book.held(NODE, size)
        if size in rows:
            assert held is not None, f"size {size} is in the table, the book says no"
            assert (held[0].root, held[1]) == rows[size]
        else:
            assert held is None, f"the book claims size {size}, which the table lost"


def test_a_quarantine_made_by_another_connection_is_seen_at_the_next_query(
    setup: Setup,
) -> None:
    log = setup.log()
    assert _screen(setup.coordinator, log, sent=0) is None
    assert _screen(setup.coordinator, log, sent=1) is None
    setup.book.flush()
    # the book has read everything it holds: the cache is warm
    assert setup.book.quarantined(NODE) is None
    assert setup.book.known_size(NODE) == 2
    assert setup.book.held(NODE, 2) is not None
    reason = _quarantine_elsewhere(setup, log)

    # the next query's screening: the node's (consistent!) answer is not used
    query = setup.query()
    replies = {NODE: log.reply(sent=2)}
    screen(setup.coordinator, query, replies, academic_year=None)
    assert replies[NODE].envelope is None
    assert replies[NODE].reason == reason
    assert setup.book.quarantined(NODE) is not None
    # nor by a release made from an answer screened before the quarantine
    before = log.reply(sent=3)
    release = setup.coordinator.release(query, {NODE: before.envelope or b""}, [])
    assert release.body["missing"] == [NODE]
    assert release.body["missing_reasons"][NODE] == reason
    assert release.answers == {}


def test_a_quarantine_made_elsewhere_reaches_a_release_without_a_screening(
    setup: Setup,
) -> None:
    """The release re-reads the quarantine itself: screened and kept, then quarantined by
    another connection, the answer is still left out."""
    log = setup.log()
    assert _screen(setup.coordinator, log, sent=0) is None
    query = setup.query()
    kept = log.reply(sent=1)
    screen(setup.coordinator, query, {NODE: kept}, academic_year=None)
    setup.book.flush()
    assert setup.book.quarantined(NODE) is None  # read, and remembered
    reason = _quarantine_elsewhere(setup, log)
    release = setup.coordinator.release(query, {NODE: kept.envelope or b""}, [])
    assert release.body["missing_reasons"][NODE] == reason


@pytest.mark.parametrize("how", ["coordinator readmit", "bare sqlite"])
def test_a_readmission_made_elsewhere_makes_the_next_answer_the_baseline(
    setup: Setup, how: str
) -> None:
    log = setup.log()
    assert _screen(setup.coordinator, log, sent=0) is None
    assert _screen(setup.coordinator, log, sent=1) is None
    assert _screen(setup.coordinator, log, sent=2) is None
    setup.book.flush()
    restored = setup.log()
    reason = _screen(setup.coordinator, restored, sent=3)  # quarantined here, this time
    assert reason is not None
    assert setup.book.quarantined(NODE) is not None
    assert setup.book.known_size(NODE) == 3  # its checkpoints stay until readmission
    if how == "coordinator readmit":
        other = setup.other()
        try:
            ended = readmit(other, node_id=NODE, reason="restored from backup", now_ms=NOW_MS)
        finally:
            other.close()
        assert ended.reason == reason.removeprefix("quarantined: ")
    else:
        conn = sqlite3.connect(setup.database, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM node_quarantine WHERE node_id = ?", (NODE,))
            conn.execute("DELETE FROM node_checkpoint WHERE node_id = ?", (NODE,))
            conn.execute("COMMIT")
        finally:
            conn.close()

    # a query sent before the readmission (known size 3) finds no baseline to hold the
    # restored log to: its answer is used, and its checkpoint is the new baseline
    query = setup.query()
    replies = {NODE: restored.reply(sent=3)}
    screen(setup.coordinator, query, replies, academic_year=None)
    assert replies[NODE].envelope is not None
    assert replies[NODE].reason == ""
    assert setup.book.quarantined(NODE) is None
    assert setup.book.known_size(NODE) == restored.size() == 2
    setup.book.flush()
    _agrees_with_table(setup.book, setup, range(1, 5))
    # and the new log is followed from there: a rollback of it is caught again
    assert _screen(setup.coordinator, restored, sent=2) is None
    assert _screen(setup.coordinator, setup.log(), sent=3) is not None


def test_checkpoints_deleted_elsewhere_are_not_claimed_after_refresh(setup: Setup) -> None:
    log = setup.log()
    sent = 0
    for _ in range(6):
        assert _screen(setup.coordinator, log, sent=sent) is None
        sent = log.size()
        setup.book.flush()
    _agrees_with_table(setup.book, setup, range(1, 8))  # every row read, and remembered
    conn = sqlite3.connect(setup.database, isolation_level=None)
    try:
        conn.execute("DELETE FROM node_checkpoint WHERE node_id = ? AND size >= 4", (NODE,))
    finally:
        conn.close()
    setup.book.refresh()
    _agrees_with_table(setup.book, setup, range(1, 8))
    assert setup.book.known_size(NODE) == 3
    # a refresh with no other writer changes nothing, and costs no re-read of the truth
    setup.book.refresh()
    _agrees_with_table(setup.book, setup, range(1, 8))


def _screen_past_pruning(setup: Setup, log: NodeLog) -> int:
    """Screen answers of a growing log, each sent the last size, three more than the book
    holds; the log's size at the end."""
    sent = 0
    for _ in range(MAX_HELD_CHECKPOINTS + 3):
        assert _screen(setup.coordinator, log, sent=sent) is None
        sent = log.size()
    return sent


def test_a_fresh_book_agrees_with_the_table_after_pruning(setup: Setup) -> None:
    log = setup.log()
    sent = _screen_past_pruning(setup, log)
    setup.book.flush()
    assert min(_rows(setup)) == 4  # the three oldest were pruned
    fresh = setup.other()
    try:
        _agrees_with_table(fresh.book, setup, range(1, sent + 2))
        assert fresh.book.held(NODE, 1) is None
    finally:
        fresh.close()


def test_the_cached_book_agrees_with_the_table_after_pruning(setup: Setup) -> None:
    setup.book.refresh()  # as every query's known_sizes() does: the book is in use
    log = setup.log()
    sent = _screen_past_pruning(setup, log)
    setup.book.flush()
    setup.book.refresh()  # the next query's: no other connection wrote
    _agrees_with_table(setup.book, setup, range(1, sent + 2))


def test_a_pruned_baseline_gives_the_same_verdict_cached_or_fresh(setup: Setup) -> None:
    setup.book.refresh()
    log = setup.log()
    _screen_past_pruning(setup, log)
    setup.book.flush()
    forked = setup.log()
    forked.grow(1, tag="forked")
    note = forked.grow(1, tag="forked")

    def verdict(core: Coordinator) -> str | None:
        # the answer to a query sent when the node's known size was 1
        return screen_answer(
            core, core.book, node_id=NODE, envelope=forked.answer(note),
            proof=list(forked.proof(1)), sent_size=1, now_ms=NOW_MS,
        )  # fmt: skip

    fresh = setup.other()
    try:
        restarted = verdict(fresh)
    finally:
        fresh.close()
    setup.book.refresh()
    assert verdict(setup.coordinator) == restarted


def test_the_cached_book_agrees_with_the_table_after_pruning_one_flush_at_a_time(
    setup: Setup,
) -> None:
    """As the server runs: a flush before each release, a few answers per flush."""
    setup.book.refresh()
    log = setup.log()
    sent = 0
    for n in range(MAX_HELD_CHECKPOINTS + 3):
        assert _screen(setup.coordinator, log, sent=sent) is None
        sent = log.size()
        if n % 2:
            setup.book.flush()
    setup.book.flush()
    assert len(_rows(setup)) == MAX_HELD_CHECKPOINTS
    _agrees_with_table(setup.book, setup, range(1, sent + 2))


def test_a_flush_that_fails_leaves_the_book_agreeing_with_the_table(setup: Setup) -> None:
    setup.book.refresh()
    log = setup.log()
    assert _screen(setup.coordinator, log, sent=0) is None
    setup.book.flush()
    assert _screen(setup.coordinator, log, sent=1) is None  # pending, not written
    setup.coordinator.conn.execute("PRAGMA busy_timeout = 50")
    blocker = sqlite3.connect(setup.database, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            setup.book.flush()
        blocker.execute("ROLLBACK")
    finally:
        blocker.close()
    setup.book.refresh()  # the next query's: no other connection wrote
    # not written, not lost: still held (verified), and written by the next flush
    assert setup.book.known_size(NODE) == 2
    written = setup.coordinator.conn.execute("SELECT MAX(size) FROM node_checkpoint").fetchone()
    assert written[0] == 1
    setup.book.flush()
    _agrees_with_table(setup.book, setup, range(1, 4))
    assert CheckpointBook(setup.coordinator.conn).known_size(NODE) == 2


@pytest.mark.parametrize("write", ["delete", "insert"])
def test_a_write_by_another_connection_just_before_a_flush_is_counted(
    setup: Setup, write: str
) -> None:
    """Another process (``coordinator inbox`` works while the server runs) writes between
    a query's screening, which refreshes, and its flush: the flush prunes against the rows
    really there, not the sizes it remembered (a deleted baseline: the new one is kept; an
    insert: still no more than ``MAX_HELD_CHECKPOINTS`` rows)."""
    setup.book.refresh()
    sent = _screen_past_pruning(setup, setup.log())
    setup.book.flush()
    setup.book.refresh()  # the query's screening: nothing new, the reads are kept
    other = sqlite3.connect(setup.database)
    try:
        with other:
            if write == "delete":  # a re-keyed node's checkpoints forgotten elsewhere
                other.execute("DELETE FROM node_checkpoint WHERE node_id = ?", (NODE,))
            else:  # an inbox keeping a newer checkpoint of the node
                other.execute(
                    "INSERT INTO node_checkpoint (node_id, size, root, note) VALUES (?, ?, ?, ?)",
                    (NODE, sent + 100, b"\0" * 32, "elsewhere"),
                )
    finally:
        other.close()
    fresh = setup.log()  # a new log of the node, one entry (or, for the insert, any size)
    note = fresh.grow(1)
    checkpoint = parse_and_verify_note(
        note, verifiers={member_origin("node", NODE): setup.node_key.public_key}
    )
    setup.book.keep(NODE, checkpoint, note)
    setup.book.flush()
    rows = _rows(setup)
    if write == "delete":
        assert sorted(rows) == [1]
    else:
        assert len(rows) == MAX_HELD_CHECKPOINTS
        assert sent + 100 in rows
    _agrees_with_table(setup.book, setup, range(1, sent + 102))
