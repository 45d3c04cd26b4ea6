"""An append-only RFC 9162 transparency log kept in a caller-supplied SQLite connection.

Each append stores the entry, its leaf hash and the hash of every complete
subtree it completes (table ``tlog_nodes``, keyed by log, level and index), so
roots and proofs at any size cost O(log n) indexed reads. The log never commits:
the caller appends in the same transaction as its other writes and commits or
rolls back the lot. Several logs may share one database, keyed by name.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from fedscreen.errors import LogIntegrityError, TreeRangeError
from fedscreen.tlog import merkle

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS tlog_leaves (
        log TEXT NOT NULL,
        idx INTEGER NOT NULL CHECK (idx >= 0),
        entry BLOB NOT NULL,
        leaf_hash BLOB NOT NULL CHECK (length(leaf_hash) = 32),
        PRIMARY KEY (log, idx)
    )""",
    # Level >= 1 only: level-0 subtrees are the leaf hashes in tlog_leaves.
    """CREATE TABLE IF NOT EXISTS tlog_nodes (
        log TEXT NOT NULL,
        level INTEGER NOT NULL CHECK (level >= 1),
        idx INTEGER NOT NULL CHECK (idx >= 0),
        hash BLOB NOT NULL CHECK (length(hash) = 32),
        PRIMARY KEY (log, level, idx)
    ) WITHOUT ROWID""",
)

_SAVEPOINT = "fedscreen_tlog_append"


class TransparencyLog:
    """One named log in an SQLite database; see the module docstring."""

    def __init__(self, conn: sqlite3.Connection, *, name: str) -> None:
        """Use (and create if absent) the log tables in ``conn``."""
        if not isinstance(name, str) or not name:
            raise ValueError("a log needs a non-empty name")
        self._conn = conn
        self._name = name
        for statement in _SCHEMA:
            conn.execute(statement)

    @property
    def name(self) -> str:
        """The log's name within its database."""
        return self._name

    def append(self, entry: bytes) -> int:
        """Add ``entry`` as the next leaf and return its index. Does not commit.

        If the connection has no open transaction, one is begun (IMMEDIATE) and
        left open for the caller to commit.
        """
        return self.extend([entry])

    def extend(self, entries: Sequence[bytes]) -> int:
        """Add ``entries`` as the next leaves, in order, all or none; return the index of
        the first. Does not commit (a transaction is begun as for :meth:`append`).

        One batch costs a few statements, not a few per entry: a release logs the
        answers of every node with it.
        """
        if not all(isinstance(entry, bytes) for entry in entries):
            raise TypeError("log entries are bytes")
        conn = self._conn
        if not conn.in_transaction:
            conn.execute("BEGIN IMMEDIATE")
        conn.execute(f"SAVEPOINT {_SAVEPOINT}")
        try:
            start = self._extend(entries)
        except BaseException:
            conn.execute(f"ROLLBACK TO {_SAVEPOINT}")
            conn.execute(f"RELEASE {_SAVEPOINT}")
            raise
        conn.execute(f"RELEASE {_SAVEPOINT}")
        return start

    def _extend(self, entries: Sequence[bytes]) -> int:
        start = self.size()
        leaves, nodes = [], []
        made: dict[tuple[int, int], bytes] = {}  # subtrees completed by this batch
        for index, entry in enumerate(entries, start):
            h = made[0, index] = merkle.leaf_hash(entry)
            leaves.append((self._name, index, entry, h))
            # Each time the new subtree is a right child, its parent becomes complete.
            level, i = 0, index
            while i & 1:
                left = made.get((level, i - 1)) or self.subtree_hash(level, i - 1)
                h = merkle.node_hash(left, h)
                level, i = level + 1, i >> 1
                made[level, i] = h
                nodes.append((self._name, level, i, h))
        self._conn.executemany(
            "INSERT INTO tlog_leaves (log, idx, entry, leaf_hash) VALUES (?, ?, ?, ?)", leaves
        )
        self._conn.executemany(
            "INSERT INTO tlog_nodes (log, level, idx, hash) VALUES (?, ?, ?, ?)", nodes
        )
        return start

    def size(self) -> int:
        """Number of entries."""
        row = self._conn.execute(
            "SELECT idx FROM tlog_leaves WHERE log = ? ORDER BY idx DESC LIMIT 1",
            (self._name,),
        ).fetchone()
        return 0 if row is None else int(row[0]) + 1

    def entry(self, index: int) -> bytes:
        """The entry at ``index``."""
        row = self._conn.execute(
            "SELECT entry FROM tlog_leaves WHERE log = ? AND idx = ?", (self._name, index)
        ).fetchone()
        if row is None:
            raise TreeRangeError(f"log {self._name!r} has no entry {index}")
        return bytes(row[0])

    def root(self, size: int | None = None) -> bytes:
        """Root hash at ``size`` (default: the current size)."""
        return merkle.root(self, size=self._check_size(size))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Proof that entry ``index`` is in the tree of ``size`` (default: current)."""
        return merkle.inclusion_proof(self, index=index, size=self._check_size(size))

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """Proof that the tree of ``size1`` is a prefix of that of ``size2`` (default: current)."""
        return merkle.consistency_proof(self, size1=size1, size2=self._check_size(size2))

    def subtree_hash(self, level: int, index: int) -> bytes:
        """See :meth:`fedscreen.tlog.merkle.HashStore.subtree_hash`."""
        if level == 0:
            row = self._conn.execute(
                "SELECT leaf_hash FROM tlog_leaves WHERE log = ? AND idx = ?",
                (self._name, index),
            ).fetchone()
        else:
            row = self._conn.execute(
                "SELECT hash FROM tlog_nodes WHERE log = ? AND level = ? AND idx = ?",
                (self._name, level, index),
            ).fetchone()
        if row is None:
            if level >= 0 and index >= 0 and (index + 1) << level <= self.size():
                raise LogIntegrityError(
                    f"log {self._name!r} lacks the subtree hash at level {level}, index {index}"
                )
            raise TreeRangeError(f"no complete subtree at level {level}, index {index}")
        return bytes(row[0])

    def _check_size(self, size: int | None) -> int:
        current = self.size()
        if size is None:
            return current
        if not 0 <= size <= current:
            raise TreeRangeError(f"log {self._name!r} has {current} entries, not {size}")
        return size
