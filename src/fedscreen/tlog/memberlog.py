"""Signed transparency logs of a member: the node's own log, and the coordinator's.

The node logs every query it answered or refused; the coordinator every query,
answer and release. :func:`export_log` hands either to an auditor.

Each entry is a DSSE envelope (``LOG_ENTRY_V1``) signed by the member (one
exception: the coordinator's answer entries, see :func:`append_many`); a node's
payload records the requester, the canonical query, the ε charged, the budget
after the charge, the policy digest and the digest of the answer — never a
student-level value. Entries are appended **in the same SQLite transaction as
the ledger charge**, and after each append the node signs a C2SP checkpoint of
the new tree head, which its answer carries; an auditor can then check the
answer against the log and the log against every checkpoint it has seen.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Final

from fedscreen._util.canonical import canonical_json
from fedscreen.crypto.envelope import LOG_ENTRY_V1, sign_envelope
from fedscreen.crypto.signing import SigningKey
from fedscreen.tlog.checkpoint import Checkpoint, member_origin, sign_checkpoint
from fedscreen.tlog.export import LogExport
from fedscreen.tlog.log import TransparencyLog

CHECKPOINT_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS log_checkpoint (log TEXT NOT NULL, size INTEGER NOT NULL, "
    "note TEXT NOT NULL, PRIMARY KEY (log, size))"
)
#: the newest manifest version each log recorded (an index of its "manifest" entries,
#: written in the same transaction, so "already logged?" needs no scan of the log)
MANIFEST_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS log_manifest (log TEXT PRIMARY KEY, version INTEGER NOT NULL, "
    "entry INTEGER NOT NULL)"
)


@dataclass(frozen=True)
class Appended:
    """Where an entry landed, and the signed checkpoint that covers it."""

    index: int
    size: int
    note: str


def append(
    conn: sqlite3.Connection,
    *,
    member_id: str,
    key: SigningKey,
    payload: dict[str, Any],
    role: str = "node",
    checkpoint: bool = True,
) -> Appended:
    """Sign ``payload`` as the next entry of the member's log, append it and (unless
    ``checkpoint`` is false: more entries follow in the same transaction) sign a
    checkpoint. Does not commit. (``node_id`` is the log owner's member id.)"""
    return append_many(
        conn, member_id=member_id, key=key, payloads=[payload], role=role, checkpoint=checkpoint
    )


def append_many(
    conn: sqlite3.Connection,
    *,
    member_id: str,
    key: SigningKey,
    payloads: Sequence[dict[str, Any]],
    role: str = "node",
    checkpoint: bool = True,
    unsigned: Collection[str] = (),
) -> Appended:
    """:func:`append` of each payload in turn, in one batch, with one checkpoint after the
    last; returns where the last landed. Does not commit.

    A payload whose ``kind`` is in ``unsigned`` is logged as its canonical JSON, not
    in an envelope of its own: the coordinator's answer entries. Each holds a node's
    signed answer, and the same batch ends in the release that names the answer by its
    digest and is signed, and in the signed checkpoint that covers both; a
    coordinator signature over each answer proved nothing more and cost about as
    much as verifying the answer (issue 11). Verifiers accept such an entry only in
    a coordinator's log and only of that kind (``tlog.entries``).
    """
    if not payloads:
        raise ValueError("nothing to append")
    conn.execute(CHECKPOINT_SCHEMA)
    log = TransparencyLog(conn, name=role)
    start = log.size()
    envelopes = []
    for index, payload in enumerate(payloads, start):
        # the entry states its own position, so a reordered log is visible entry by entry
        # too; "node_id" names the log owner in every entry (the coordinator's too: wire
        # format)
        body = canonical_json({**payload, "index": index, "node_id": member_id})
        if payload.get("kind") in unsigned:
            envelopes.append(body)
            continue
        envelope = sign_envelope(payload_type=LOG_ENTRY_V1, payload=body, key=key)
        envelopes.append(envelope.to_json().encode("utf-8"))
    log.extend(envelopes)
    size = start + len(payloads)
    if not checkpoint:
        return Appended(size - 1, size, "")
    head = Checkpoint(member_origin(role, member_id), size, log.root(size))
    note = sign_checkpoint(head, key=key)
    conn.execute(
        "INSERT INTO log_checkpoint (log, size, note) VALUES (?, ?, ?)", (role, size, note)
    )
    return Appended(size - 1, size, note)


def export_log(conn: sqlite3.Connection, *, member_id: str, role: str = "node") -> LogExport:
    """The member's log as exported: every entry and every checkpoint it signed, in order."""
    conn.execute(CHECKPOINT_SCHEMA)
    log = TransparencyLog(conn, name=role)
    entries = [log.entry(i) for i in range(log.size())]
    notes = [
        str(n)
        for (n,) in conn.execute(
            "SELECT note FROM log_checkpoint WHERE log = ? ORDER BY size", (role,)
        )
    ]
    return LogExport(member_id, member_origin(role, member_id), tuple(entries), tuple(notes))


def newest_note(conn: sqlite3.Connection, *, role: str = "node") -> str:
    """The newest signed checkpoint of the member's log ("" while it is empty)."""
    conn.execute(CHECKPOINT_SCHEMA)
    row = conn.execute(
        "SELECT note FROM log_checkpoint WHERE log = ? ORDER BY size DESC LIMIT 1", (role,)
    ).fetchone()
    return str(row[0]) if row else ""


def logged_manifest_version(conn: sqlite3.Connection, *, role: str = "node") -> int | None:
    """The newest manifest version the member's log recorded, or None before the first."""
    conn.execute(MANIFEST_SCHEMA)
    row = conn.execute("SELECT version FROM log_manifest WHERE log = ?", (role,)).fetchone()
    return int(row[0]) if row else None


def append_manifest(
    conn: sqlite3.Connection,
    *,
    member_id: str,
    key: SigningKey,
    entry: dict[str, Any],
    role: str = "node",
) -> Appended | None:
    """Log a manifest version the member starts using, if it is newer than the last one
    logged (so restarts do not repeat it); None when it is not. Does not commit.

    ``entry`` is ``fedscreen.trust.manifest.manifest_entry(...)``: the verified file.
    """
    version = entry.get("version")
    if entry.get("kind") != "manifest" or isinstance(version, bool) or not isinstance(version, int):
        raise ValueError("not a manifest entry")
    last = logged_manifest_version(conn, role=role)
    if last is not None and version <= last:
        return None
    appended = append(conn, member_id=member_id, key=key, payload=entry, role=role)
    conn.execute(
        "INSERT INTO log_manifest (log, version, entry) VALUES (?, ?, ?) "
        "ON CONFLICT (log) DO UPDATE SET version = excluded.version, entry = excluded.entry",
        (role, version, appended.index),
    )
    return appended
