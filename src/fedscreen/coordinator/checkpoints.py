"""The coordinator's store of each node's verified checkpoints and of its quarantines.

Kept apart from :mod:`.quarantine` (which decides, and logs) so the core can ask
whether a node is quarantined when it makes a release, without a cycle: this
module needs only the coordinator's SQLite connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from fedscreen._util.sqlite import transaction
from fedscreen.tlog.checkpoint import Checkpoint, member_origin

__all__ = [
    "MAX_HELD_CHECKPOINTS",
    "CheckpointBook",
    "NodeLogState",
    "Quarantined",
]

#: verified checkpoints kept per node (count): enough to check answers to queries that
#: were in flight together (each was sent the size known when it was pushed)
MAX_HELD_CHECKPOINTS: Final = 256
#: checkpoint rows (or their absence) remembered from reads, per node
_ROWS_KEPT: Final = 2 * MAX_HELD_CHECKPOINTS

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
        #: node -> size -> (checkpoint, note): verified, not yet written (see flush)
        self._pending: dict[str, dict[int, tuple[Checkpoint, str]]] = {}
        # What the tables held when last read, so each answer does not cost a few SQL
        # queries: kept in step with this connection's own writes, and forgotten by
        # ``refresh`` when another connection has written (a readmission from the CLI).
        self._seen_version = -1
        self._quarantines: dict[str, Quarantined] | None = None
        self._newest: dict[str, int] = {}
        #: node -> size -> (checkpoint, note), or None: not in the table
        self._rows: dict[str, dict[int, tuple[Checkpoint, str] | None]] = {}
        #: node -> (size, public key) its newest held note was last verified under
        self.key_checked: dict[str, tuple[int, bytes]] = {}
        #: node -> the sizes of its rows in the table, ascending (read once, then kept in
        #: step by ``flush``), so a flush prunes without scanning the table
        self._sizes: dict[str, list[int]] = {}

    def refresh(self) -> None:
        """Forget what was read if another connection wrote since (``PRAGMA data_version``
        changes only then). Called once per query, before its answers are screened and
        before its release: a readmission counts from the next query on."""
        version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self._seen_version:
            self._seen_version = version
            self._forget_reads()

    def _forget_reads(self, node_id: str | None = None) -> None:
        if node_id is None:
            self._quarantines = None
            self._newest.clear()
            self._rows.clear()
            self.key_checked.clear()
            self._sizes.clear()
            return
        self._quarantines = None
        self._newest.pop(node_id, None)
        self.key_checked.pop(node_id, None)
        self._rows.pop(node_id, None)
        self._sizes.pop(node_id, None)

    def known_size(self, node_id: str) -> int:
        """Size of the newest checkpoint verified for the node (0: none)."""
        held = self._newest.get(node_id)
        if held is None:
            row = self.conn.execute(
                "SELECT MAX(size) FROM node_checkpoint WHERE node_id = ?", (node_id,)
            ).fetchone()
            held = self._newest[node_id] = int(row[0]) if row and row[0] is not None else 0
        return max(held, max(self._pending.get(node_id, {}), default=0))

    def known_sizes(self, node_ids: Iterable[str]) -> dict[str, int]:
        """:meth:`known_size` of each node (after :meth:`refresh`)."""
        self.refresh()
        return {n: self.known_size(n) for n in node_ids}

    def held(self, node_id: str, size: int) -> tuple[Checkpoint, str] | None:
        """The verified checkpoint (and its signed note) of the node's log at ``size``."""
        pending = self._pending.get(node_id, {}).get(size)
        if pending is not None:
            return pending
        rows = self._rows.setdefault(node_id, {})
        if size not in rows:
            found = self.conn.execute(
                "SELECT root, note FROM node_checkpoint WHERE node_id = ? AND size = ?",
                (node_id, size),
            ).fetchone()
            if len(rows) >= _ROWS_KEPT:
                rows.clear()
            rows[size] = (
                None
                if found is None
                else (Checkpoint(member_origin("node", node_id), size, bytes(found[0])),
                      str(found[1]))
            )  # fmt: skip
        return rows[size]

    def quarantined(self, node_id: str) -> Quarantined | None:
        """The node's quarantine, if it is quarantined."""
        if self._quarantines is None:
            self._quarantines = {
                str(n): Quarantined(str(n), str(reason), int(since))
                for n, reason, since in self.conn.execute(
                    "SELECT node_id, reason, since_ms FROM node_quarantine"
                )
            }
        return self._quarantines.get(node_id)

    def states(self, node_ids: Iterable[str]) -> list[NodeLogState]:
        """Each node's newest checkpoint size and quarantine (read afresh)."""
        self.refresh()
        return [NodeLogState(n, self.known_size(n), self.quarantined(n)) for n in sorted(node_ids)]

    def keep(
        self, node_id: str, checkpoint: Checkpoint, note: str, *, key: bytes | None = None
    ) -> None:
        """Hold a verified checkpoint (idempotent); written at the next :meth:`flush`.
        ``key``: the public key its note was just verified under (then, while it is the
        newest held, the note need not be verified again against the manifest's key)."""
        newest = checkpoint.size >= self.known_size(node_id)
        self._pending.setdefault(node_id, {})[checkpoint.size] = (checkpoint, note)
        if key is not None and newest:
            self.key_checked[node_id] = (checkpoint.size, key)

    def flush(self) -> None:
        """Write the checkpoints held since the last flush, in one transaction; forget
        each node's oldest beyond ``MAX_HELD_CHECKPOINTS``."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        sizes: dict[str, list[int]] = {}
        try:
            with transaction(self.conn):
                # another process (``coordinator inbox``, ``readmit``) may have written since
                # the last refresh: then what was read is forgotten and read again here,
                # under the write lock, so the prune below counts the rows really there
                self.refresh()
                self.conn.executemany(
                    "INSERT OR IGNORE INTO node_checkpoint (node_id, size, root, note) "
                    "VALUES (?, ?, ?, ?)",
                    [
                        (node_id, size, c.root, note)
                        for node_id, held in pending.items()
                        for size, (c, note) in held.items()
                    ],
                )
                prune = []
                for node_id, held in pending.items():
                    kept = self._table_sizes(node_id, held)
                    if len(kept) > MAX_HELD_CHECKPOINTS:
                        kept = kept[-MAX_HELD_CHECKPOINTS:]
                        prune.append((node_id, kept[0]))
                    sizes[node_id] = kept
                self.conn.executemany(
                    "DELETE FROM node_checkpoint WHERE node_id = ? AND size < ?", prune
                )
        except BaseException:
            # not written: still held, to be written by the next flush
            for node_id, held in pending.items():
                self._pending[node_id] = {**held, **self._pending.get(node_id, {})}
            raise
        # the reads kept step with what the table now holds: older rows may have been
        # pruned (read again if ever asked); the newest is there, and is what the next
        # query is sent and checked from
        for node_id, held in pending.items():
            self._sizes[node_id] = sizes[node_id]
            size = self._newest[node_id] = sizes[node_id][-1]
            self._rows[node_id] = {size: held[size]} if size in held else {}

    def _table_sizes(self, node_id: str, inserted: Iterable[int]) -> list[int]:
        """The sizes of the node's rows once ``inserted`` are in (inside flush's
        transaction): what was kept, with them, or read afresh (all of them then)."""
        known = self._sizes.get(node_id)
        if known is None:
            return [
                int(size)
                for (size,) in self.conn.execute(
                    "SELECT size FROM node_checkpoint WHERE node_id = ? ORDER BY size",
                    (node_id,),
                )
            ]
        return sorted(set(known).union(inserted))

    def quarantine(self, node_id: str, reason: str, *, now_ms: int) -> None:
        """Mark the node quarantined (a second quarantine keeps the first reason)."""
        self._pending.pop(node_id, None)  # what it showed before is no baseline any more
        self._forget_reads(node_id)
        with transaction(self.conn):
            self.conn.execute(
                "INSERT OR IGNORE INTO node_quarantine (node_id, reason, since_ms) "
                "VALUES (?, ?, ?)",
                (node_id, reason, now_ms),
            )

    def release_node(self, node_id: str) -> None:
        """End the node's quarantine and forget its checkpoints (the next is the baseline)."""
        self._pending.pop(node_id, None)
        self._forget_reads(node_id)
        with transaction(self.conn):
            self.conn.execute("DELETE FROM node_quarantine WHERE node_id = ?", (node_id,))
            self.conn.execute("DELETE FROM node_checkpoint WHERE node_id = ?", (node_id,))

    def forget(self, node_id: str) -> None:
        """Forget the node's checkpoints, not its quarantine: signed by a key the node no
        longer holds (re-keyed in the manifest), they are no baseline for its new log."""
        self._pending.pop(node_id, None)
        self._forget_reads(node_id)
        with transaction(self.conn):
            self.conn.execute("DELETE FROM node_checkpoint WHERE node_id = ?", (node_id,))
