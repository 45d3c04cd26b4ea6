"""Opening a fedscreen SQLite database, and the one way to run a transaction on it."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Final

#: seconds a writer waits for another writer (a large ingest holds the lock for a while)
BUSY_TIMEOUT_S: Final = 600
#: page cache per connection, KiB: random student keys make index inserts cache-hungry
DEFAULT_CACHE_KIB: Final = 131_072


def connect(path: Path, *, cache_kib: int = DEFAULT_CACHE_KIB) -> sqlite3.Connection:
    """Open a database with the settings every fedscreen process must use.

    WAL lets readers run beside one writer; ``synchronous=FULL`` makes a commit
    durable once it returns, so a budget charge or a log entry survives a power cut.
    ``isolation_level=None`` leaves transactions to :func:`transaction`.
    """
    # check_same_thread=False: ingest hands the connection to one writer thread at a time
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, *, immediate: bool = True) -> Iterator[None]:
    """``BEGIN [IMMEDIATE]`` … ``COMMIT``; ``ROLLBACK`` on any exception, which propagates.

    IMMEDIATE takes the write lock at once, so a check made inside (budget left,
    answered before?) cannot be invalidated by another writer before the commit.
    """
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # a failed COMMIT (a deferred constraint, a full disk) leaves the transaction
        # open: roll it back too, or the connection could never begin another
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
