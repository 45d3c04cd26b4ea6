"""The coordinator's store of its releases: every version of every query's release.

A release is logged (the answers it used, then the release) and also indexed here,
in the same transaction, with what it was made of: the signed query, where each
answer it used lies in the log (the answers are not stored twice: a release at 292
nodes uses about a megabyte of them), the nodes asked and why the others are
missing. Two readers need it:

* an analyst fetching the newest release of a query (``fedscreen query --release``),
  which may be a later version than the one its submission got;
* the coordinator's ``inbox``, which makes that later version when an offline node's
  answer arrives by file: the answers of the newest version plus the late one.

A later version names the version it follows (``supersedes``: the SHA-256 of that
release envelope), and a release is superseded at most once (a UNIQUE constraint):
two imports racing for the same query cannot both publish a "version 2".
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from fedscreen.crypto.envelope import Envelope, parse_json
from fedscreen.tlog.entries import COORDINATOR_UNSIGNED, unsigned_payload
from fedscreen.tlog.log import TransparencyLog

__all__ = ["OFFLINE_SCHEMA", "SCHEMA", "StoredRelease", "newest_release", "store_release"]

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS release_store (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    query_id TEXT NOT NULL,
    release_version INTEGER NOT NULL CHECK (release_version >= 1),
    supersedes TEXT UNIQUE,
    envelope BLOB NOT NULL,
    query_envelope BLOB NOT NULL,
    answer_entries TEXT NOT NULL,
    reasons TEXT NOT NULL,
    targeted TEXT NOT NULL,
    academic_year TEXT,
    eligible TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS release_store_query ON release_store (query_id, seq);
"""


#: the queue of an offline node's queries, the outboxes made, each offline node's newest
#: budget statement (from its answer files), the size of the coordinator's log it last
#: said it holds, and the size each node's stream last got (its first outbox after it
#: goes offline proves from it) (``coordinator.offline``)
OFFLINE_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS offline_queue (
    node TEXT NOT NULL,
    query_id TEXT NOT NULL,
    query_envelope BLOB NOT NULL,
    academic_year TEXT NOT NULL,
    queued_ms INTEGER NOT NULL,
    settled_ms INTEGER,
    outcome TEXT,
    PRIMARY KEY (node, query_id)
);
CREATE TABLE IF NOT EXISTS offline_outbox (
    sha256 TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    known_log_size INTEGER NOT NULL,
    checkpoint_size INTEGER NOT NULL,
    made_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS offline_statement (
    node TEXT PRIMARY KEY,
    issued_ms INTEGER NOT NULL,
    envelope BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS offline_proof (
    node TEXT NOT NULL,
    from_size INTEGER NOT NULL,
    to_size INTEGER NOT NULL,
    proof TEXT NOT NULL,
    PRIMARY KEY (node, from_size, to_size)
);
CREATE TABLE IF NOT EXISTS offline_inbox (
    sha256 TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    imported_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS online_link (
    node TEXT PRIMARY KEY,
    coordinator_log_size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS offline_link (
    node TEXT PRIMARY KEY,
    coordinator_log_size INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class StoredRelease:
    """One stored release version and what it was made of."""

    query_id: str
    #: 1 for a query's release; n + 1 for the one that adds late answers to version n
    release_version: int
    #: the signed release, verbatim
    envelope: bytes
    #: the analyst's signed query, verbatim
    query_envelope: bytes
    #: node id -> its answer envelope, verbatim
    answers: dict[str, bytes]
    #: node id -> why it is missing from this version
    reasons: dict[str, str]
    #: the nodes the query was pushed to
    targeted: tuple[str, ...]
    academic_year: str | None
    #: node id -> the eligible students it announced (for the population share)
    eligible: dict[str, int]

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the release envelope: what a later version ``supersedes``."""
        return hashlib.sha256(self.envelope).hexdigest()

    @property
    def missing(self) -> tuple[str, ...]:
        """The nodes asked that this version has no answer from."""
        return tuple(sorted(n for n in self.targeted if n not in self.answers))


def store_release(
    conn: sqlite3.Connection,
    release: StoredRelease,
    *,
    supersedes: str | None,
    entries: Mapping[str, int],
) -> None:
    """Index ``release`` (inside the caller's transaction, with its log entries);
    ``entries``: node id -> the index of the log entry holding its answer.

    sqlite3.IntegrityError if ``supersedes`` was superseded already: the caller's
    transaction then rolls back, log entries included.
    """
    if set(entries) != set(release.answers):
        raise ValueError("every answer of a stored release is a log entry")
    conn.execute(
        "INSERT INTO release_store (query_id, release_version, supersedes, envelope, "
        "query_envelope, answer_entries, reasons, targeted, academic_year, eligible) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            release.query_id,
            release.release_version,
            supersedes,
            release.envelope,
            release.query_envelope,
            json.dumps(dict(sorted(entries.items()))),
            json.dumps(dict(sorted(release.reasons.items())), ensure_ascii=False),
            json.dumps(list(release.targeted)),
            release.academic_year,
            json.dumps(dict(sorted(release.eligible.items()))),
        ),
    )


def newest_release(
    conn: sqlite3.Connection, query_id: str, *, log_name: str = "coordinator"
) -> StoredRelease | None:
    """The newest stored release of ``query_id`` (None: never released), its answers read
    back from the entries of the log ``log_name`` that hold them."""
    row = conn.execute(
        "SELECT query_id, release_version, envelope, query_envelope, answer_entries, reasons, "
        "targeted, academic_year, eligible FROM release_store WHERE query_id = ? "
        "ORDER BY seq DESC LIMIT 1",
        (query_id,),
    ).fetchone()
    if row is None:
        return None
    log = TransparencyLog(conn, name=log_name)
    answers = {
        str(node): _logged_answer(log.entry(int(index)), str(node))
        for node, index in json.loads(row[4]).items()
    }
    return StoredRelease(
        query_id=str(row[0]),
        release_version=int(row[1]),
        envelope=bytes(row[2]),
        query_envelope=bytes(row[3]),
        answers=answers,
        reasons={str(n): str(r) for n, r in json.loads(row[5]).items()},
        targeted=tuple(str(n) for n in json.loads(row[6])),
        academic_year=None if row[7] is None else str(row[7]),
        eligible={str(n): int(e) for n, e in json.loads(row[8]).items()},
    )


def _logged_answer(entry: bytes, node: str) -> bytes:
    """The node's answer envelope inside one of the coordinator's own log entries (which
    it wrote itself and reads back from its own database: no signature to check; an
    answer entry is unsigned since issue 11, signed in older logs)."""
    bare = unsigned_payload(entry, COORDINATOR_UNSIGNED)
    payload = parse_json(
        bare if bare is not None else Envelope.from_json(entry).unverified_payload()
    )
    if payload.get("kind") != "answer" or payload.get("node") != node:
        raise ValueError(f"the release store points at a log entry that is not {node}'s answer")
    return str(payload["envelope"]).encode("utf-8")
