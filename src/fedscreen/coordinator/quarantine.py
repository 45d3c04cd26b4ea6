"""Rollback caught online: each node's verified checkpoints, and the nodes held in quarantine.

The coordinator keeps, in its own database (``coordinator.db``), the checkpoints
of each node's log it has verified, and sends the newest one's size with every
query (``QueryRequest.known_log_size``). The node's answer carries a new signed
checkpoint and an RFC 9162 consistency proof from that size. A node whose log
shrank, forked or cannot prove consistency is **quarantined**: its answers are
not used (the release lists it missing with the reason) until the province
readmits it (``fedscreen coordinator readmit``). Both events go into the
coordinator's log — the quarantine with its evidence, the two signed checkpoints.

Quarantine lives in the database, not in memory, so a readmission made while the
server runs (another process) counts from the next answer on. Readmission forgets
the node's checkpoints: its next answer's checkpoint is the new baseline.

Every function here runs on the core's thread (it uses the core's connection).
Verified checkpoints are written in batches (:meth:`CheckpointBook.flush`, before
each release and at shutdown), not one commit per answer: a checkpoint lost in a
crash only leaves an older baseline, from which the node's log still proves
consistency. A quarantine and a readmission are committed at once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from fedscreen._util.sqlite import transaction
from fedscreen.coordinator.core import Coordinator
from fedscreen.crypto.envelope import ANSWER_V1, Envelope, parse_json, verify_envelope
from fedscreen.errors import ConfigError, VerificationError
from fedscreen.protocol.consistency import check_extends
from fedscreen.tlog.checkpoint import Checkpoint, member_origin, parse_and_verify_note
from fedscreen.trust.manifest import show_id

__all__ = [
    "MAX_HELD_CHECKPOINTS",
    "MAX_READMIT_REASON_CHARS",
    "CheckpointBook",
    "NodeLogState",
    "Quarantined",
    "readmit",
    "screen_answer",
]

#: verified checkpoints kept per node (count): enough to check answers to queries that
#: were in flight together (each was sent the size known when it was pushed)
MAX_HELD_CHECKPOINTS: Final = 256
#: longest readmission reason kept in the log (characters)
MAX_READMIT_REASON_CHARS: Final = 300

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS node_checkpoint (node_id TEXT NOT NULL, "
    "size INTEGER NOT NULL, root BLOB NOT NULL, note TEXT NOT NULL, "
    "PRIMARY KEY (node_id, size))",
    "CREATE TABLE IF NOT EXISTS node_quarantine (node_id TEXT PRIMARY KEY, "
    "reason TEXT NOT NULL, since_ms INTEGER NOT NULL)",
)


@dataclass(frozen=True)
class Quarantined:
    """A quarantined node: why, and since when (ms since the epoch, coordinator's clock)."""

    node_id: str
    reason: str
    since_ms: int


@dataclass(frozen=True)
class NodeLogState:
    """What the coordinator holds of one node's log (for ``coordinator status``)."""

    node_id: str
    #: size of the newest verified checkpoint (0: none yet)
    checkpoint_size: int
    quarantined: Quarantined | None


class CheckpointBook:
    """The ``node_checkpoint`` and ``node_quarantine`` tables of the coordinator's database."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        for statement in _SCHEMA:
            conn.execute(statement)
        #: node -> size -> (root, note): verified, not yet written (see flush)
        self._pending: dict[str, dict[int, tuple[bytes, str]]] = {}

    def known_size(self, node_id: str) -> int:
        """Size of the newest checkpoint verified for the node (0: none)."""
        row = self.conn.execute(
            "SELECT MAX(size) FROM node_checkpoint WHERE node_id = ?", (node_id,)
        ).fetchone()
        held = int(row[0]) if row and row[0] is not None else 0
        return max(held, max(self._pending.get(node_id, {}), default=0))

    def known_sizes(self, node_ids: Iterable[str]) -> dict[str, int]:
        """:meth:`known_size` of each node."""
        return {n: self.known_size(n) for n in node_ids}

    def held(self, node_id: str, size: int) -> tuple[Checkpoint, str] | None:
        """The verified checkpoint (and its signed note) of the node's log at ``size``."""
        row = self._pending.get(node_id, {}).get(size)
        if row is None:
            row = self.conn.execute(
                "SELECT root, note FROM node_checkpoint WHERE node_id = ? AND size = ?",
                (node_id, size),
            ).fetchone()
        if row is None:
            return None
        return Checkpoint(member_origin("node", node_id), size, bytes(row[0])), str(row[1])

    def quarantined(self, node_id: str) -> Quarantined | None:
        """The node's quarantine, if it is quarantined."""
        row = self.conn.execute(
            "SELECT reason, since_ms FROM node_quarantine WHERE node_id = ?", (node_id,)
        ).fetchone()
        return None if row is None else Quarantined(node_id, str(row[0]), int(row[1]))

    def states(self, node_ids: Iterable[str]) -> list[NodeLogState]:
        """Each node's newest checkpoint size and quarantine."""
        return [NodeLogState(n, self.known_size(n), self.quarantined(n)) for n in sorted(node_ids)]

    def keep(self, node_id: str, checkpoint: Checkpoint, note: str) -> None:
        """Hold a verified checkpoint (idempotent); written at the next :meth:`flush`."""
        self._pending.setdefault(node_id, {})[checkpoint.size] = (checkpoint.root, note)

    def flush(self) -> None:
        """Write the checkpoints held since the last flush, in one transaction; forget
        each node's oldest beyond ``MAX_HELD_CHECKPOINTS``."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        with transaction(self.conn):
            for node_id, held in pending.items():
                self.conn.executemany(
                    "INSERT OR IGNORE INTO node_checkpoint (node_id, size, root, note) "
                    "VALUES (?, ?, ?, ?)",
                    [(node_id, size, root, note) for size, (root, note) in held.items()],
                )
                self.conn.execute(
                    "DELETE FROM node_checkpoint WHERE node_id = ? AND size < (SELECT size "
                    "FROM node_checkpoint WHERE node_id = ? ORDER BY size DESC LIMIT 1 OFFSET ?)",
                    (node_id, node_id, MAX_HELD_CHECKPOINTS - 1),
                )

    def quarantine(self, node_id: str, reason: str, *, now_ms: int) -> None:
        """Mark the node quarantined (a second quarantine keeps the first reason)."""
        self._pending.pop(node_id, None)  # what it showed before is no baseline any more
        with transaction(self.conn):
            self.conn.execute(
                "INSERT OR IGNORE INTO node_quarantine (node_id, reason, since_ms) "
                "VALUES (?, ?, ?)",
                (node_id, reason, now_ms),
            )

    def release_node(self, node_id: str) -> None:
        """End the node's quarantine and forget its checkpoints (the next is the baseline)."""
        self._pending.pop(node_id, None)
        with transaction(self.conn):
            self.conn.execute("DELETE FROM node_quarantine WHERE node_id = ?", (node_id,))
            self.conn.execute("DELETE FROM node_checkpoint WHERE node_id = ?", (node_id,))


def _answer_checkpoint(core: Coordinator, node_id: str, raw: bytes) -> tuple[Checkpoint, str]:
    """The node-signed checkpoint inside a node's answer envelope; raises VerificationError."""
    member = core.manifest.member(node_id, role="node")
    payload = verify_envelope(
        Envelope.from_json(raw),
        expected_payload_type=ANSWER_V1,
        trusted_keys={member.key_id: member.signing_key},
    )
    try:
        data = parse_json(payload)
        note = data["checkpoint"] if isinstance(data, dict) else None
    except (ValueError, KeyError):
        note = None
    if not isinstance(note, str):
        raise VerificationError(f"the answer from {node_id} carries no checkpoint")
    origin = member_origin("node", node_id)
    checkpoint = parse_and_verify_note(note, verifiers={origin: member.signing_key})
    if checkpoint.origin != origin:
        raise VerificationError(f"the checkpoint in {node_id}'s answer is of another log")
    return checkpoint, note


def screen_answer(
    core: Coordinator,
    book: CheckpointBook,
    *,
    node_id: str,
    envelope: bytes,
    proof: Sequence[bytes],
    sent_size: int,
    now_ms: int,
) -> str | None:
    """Why the node's answer may not be used (its log rolled back), or None if it may.

    ``sent_size`` is the ``known_log_size`` the query went out with; ``proof`` the
    node's consistency proof from it. A consistent checkpoint is kept (the newest
    is the next query's baseline); an inconsistent one quarantines the node, with
    the evidence logged. An answer that does not verify at all is not evidence of a
    rollback: None, and the release's own verification drops it.
    """
    held_quarantine = book.quarantined(node_id)
    if held_quarantine is not None:
        return f"quarantined: {held_quarantine.reason}"
    try:
        new, note = _answer_checkpoint(core, node_id, envelope)
    except VerificationError:
        return None
    # the size the query was sent with, then (answers in flight together) the same size
    for size, steps in ((sent_size, proof), (new.size, ())):
        held = book.held(node_id, size) if size > 0 else None
        if held is None:
            continue
        try:
            check_extends(held[0], new, steps)
        except VerificationError as exc:
            reason = str(exc)
            core.record(
                {
                    "kind": "quarantine",
                    "node": node_id,
                    "reason": reason,
                    "held_checkpoint": held[1],
                    "presented_checkpoint": note,
                    "at_ms": now_ms,
                }
            )
            book.quarantine(node_id, reason, now_ms=now_ms)
            return f"quarantined: {reason}"
    if sent_size > 0 and book.held(node_id, sent_size) is None and book.known_size(node_id):
        # the baseline was forgotten meanwhile (pruned): the proof cannot be checked, so
        # this checkpoint is not kept either; the next query is sent the newest size
        return None
    book.keep(node_id, new, note)
    return None


def readmit(core: Coordinator, *, node_id: str, reason: str, now_ms: int) -> Quarantined:
    """End a node's quarantine as a logged province action; returns what it ended.

    Raises ConfigError if the node is not quarantined. The log entry comes first:
    a crash in between leaves the node quarantined, never readmitted unlogged.
    """
    # one line of printable text: it reaches auditors' terminals
    reason = " ".join("".join(c if c.isprintable() else " " for c in reason).split())
    reason = reason[:MAX_READMIT_REASON_CHARS]
    if not reason:
        raise ConfigError("a readmission needs a reason (--reason)")
    book = CheckpointBook(core.conn)
    held = book.quarantined(node_id)
    if held is None:
        raise ConfigError(f"node {show_id(node_id)} is not quarantined")
    core.record(
        {
            "kind": "readmit",
            "node": node_id,
            "reason": reason,
            "quarantine_reason": held.reason,
            "at_ms": now_ms,
        }
    )
    book.release_node(node_id)
    return held
