"""Offline nodes at the coordinator: queue their queries and write their outbox.

A node the manifest marks ``offline`` has no stream. When a query targets it, the
coordinator queues the query (``offline_queue``) and releases without it, stating
why; ``fedscreen coordinator outbox`` writes the node's pending queries into one
signed file (``protocol.offline``) with consistency proofs of the coordinator's log
from every checkpoint the node may hold; ``fedscreen coordinator inbox`` imports the
node's answers (``coordinator.inbox``). Secure queries are not queued: their two
aggregators sum the answers of one round, which cannot wait for a file.

Everything here works on the coordinator's database from a separate process too
(the CLI, while the server runs): SQLite serialises the writers, and the log and
the release store take their state from the database, never from memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from fedscreen._util.sqlite import transaction
from fedscreen.coordinator.core import DATABASE_FILE, Coordinator
from fedscreen.errors import ConfigError, UnknownMember
from fedscreen.protocol.offline import (
    MAX_FILE_BYTES,
    MAX_PROOFS,
    MAX_QUERIES,
    CarriedQuery,
    Outbox,
    sign_outbox,
)
from fedscreen.protocol.query import SignedQuery
from fedscreen.tlog.checkpoint import note_size

__all__ = [
    "make_outbox",
    "offline_statements",
    "queue_offline",
    "queued_counts",
    "remember_stream",
]


#: why an offline node is missing from a release made before it answered
QUEUED: Final = "offline: queued for the node's next answer file"
#: refusals that say the node could not work with the file, not the query: the query
#: stays queued for the next outbox
TRANSIENT: Final = "refused: internal:"
#: why an offline node is missing from a secure release
NO_SECURE: Final = "offline: a secure query is summed in one round and cannot wait for a file"


def queue_offline(
    core: Coordinator,
    query: SignedQuery,
    envelope: bytes,
    targets: Iterable[str],
    *,
    academic_year: str | None,
    now_ms: int | None = None,
) -> dict[str, str]:
    """Queue ``query`` for its offline targets; returns node id -> why it is missing from
    the release being made (queued, or a secure query that cannot wait). A query id
    queued before (a resubmission) is queued once, again unsettled."""
    offline = core.manifest.offline
    nodes = [n for n in targets if n in offline]
    if not nodes:
        return {}
    if query.spec.secure:
        return {n: NO_SECURE for n in nodes}
    at = _now_ms() if now_ms is None else now_ms
    with transaction(core.conn):
        # a resubmitted query id is queued again: its new release needs the node's answer
        # too (given again from the node's store, at no cost)
        core.conn.executemany(
            "INSERT INTO offline_queue (node, query_id, query_envelope, academic_year, "
            "queued_ms) VALUES (?, ?, ?, ?, ?) ON CONFLICT (node, query_id) DO UPDATE SET "
            "query_envelope = excluded.query_envelope, academic_year = excluded.academic_year, "
            "queued_ms = excluded.queued_ms, settled_ms = NULL, outcome = NULL",
            [(n, query.query_id, envelope, academic_year or "", at) for n in nodes],
        )
    return {n: QUEUED for n in nodes}


def make_outbox(
    core: Coordinator, node_id: str, *, now_ms: int | None = None, from_size: int = 0
) -> tuple[bytes, int]:
    """The signed outbox file for ``node_id`` and how many queries it carries (the oldest
    queued first, as many as keep the file within ``MAX_FILE_BYTES``).

    It proves the coordinator's log consistent from every checkpoint the node may hold:
    the one its last imported answer file acknowledged, each earlier outbox's, and
    ``from_size`` (the size a node refusing an outbox names: one it got online, say).
    ConfigError if the node is not an active offline node of the manifest.
    """
    core.reload_manifest()
    _offline_node(core, node_id)
    at = _now_ms() if now_ms is None else now_ms
    rows = core.conn.execute(
        "SELECT query_id, query_envelope, academic_year, queued_ms FROM offline_queue "
        "WHERE node = ? AND settled_ms IS NULL ORDER BY queued_ms, query_id LIMIT ?",
        (node_id, MAX_QUERIES),
    ).fetchall()
    queries = tuple(CarriedQuery(str(r[0]), bytes(r[1]), str(r[2]), int(r[3])) for r in rows)
    held = core.conn.execute(
        "SELECT coordinator_log_size FROM offline_link WHERE node = ?", (node_id,)
    ).fetchone()
    note = core.checkpoint()
    size = note_size(note)
    known = int(held[0]) if held else 0
    if from_size and not 0 < from_size <= size:
        raise ConfigError(
            f"--from-size {from_size}: the coordinator's log has {size} entries; give the "
            "size the node's refusal names"
        )
    # the node may hold: the checkpoint its last imported answer file acknowledged, the
    # size its stream got last before it went offline, the size a refusing node named
    # (--from-size), the checkpoint of an earlier outbox (newest first: whose answers are
    # not back yet, or a node restored to an older one) — as many as an outbox may carry
    online = core.conn.execute(
        "SELECT coordinator_log_size FROM online_link WHERE node = ?", (node_id,)
    ).fetchone()
    earlier = core.conn.execute(
        "SELECT DISTINCT checkpoint_size FROM offline_outbox WHERE node = ? "
        "AND checkpoint_size > 0 AND checkpoint_size < ? ORDER BY checkpoint_size DESC LIMIT ?",
        (node_id, size, MAX_PROOFS),
    ).fetchall()
    candidates = [known, from_size, int(online[0]) if online else 0, *(int(r[0]) for r in earlier)]
    sizes = [s for s in dict.fromkeys(candidates) if 0 < s < size][:MAX_PROOFS]
    proofs = tuple((s, tuple(core.consistency_proof(s, size))) for s in sizes)
    core.book.refresh()
    _, manifest_text = core.identity.manifest_file()
    outbox = Outbox(
        coordinator=core.member_id,
        node=node_id,
        made_at_ms=at,
        manifest=manifest_text,
        coordinator_checkpoint=note,
        coordinator_proofs=proofs,
        known_log_size=core.book.known_size(node_id),
        queries=queries,
    )
    data = sign_outbox(outbox, core.key)
    while len(data) > MAX_FILE_BYTES and outbox.queries:
        # the node reads no larger file: the newest queries wait for the next outbox
        outbox = dataclasses.replace(outbox, queries=outbox.queries[: len(outbox.queries) // 2])
        data = sign_outbox(outbox, core.key)
    with transaction(core.conn):
        core.conn.execute(
            "INSERT OR IGNORE INTO offline_outbox (sha256, node, known_log_size, "
            "checkpoint_size, made_ms) VALUES (?, ?, ?, ?, ?)",
            (hashlib.sha256(data).hexdigest(), node_id, outbox.known_log_size, size, at),
        )
    return data, len(outbox.queries)


def remember_stream(core: Coordinator, node_id: str, coordinator_size: int) -> None:
    """Note the size of the coordinator's checkpoint a node's stream got last (when the
    stream ends): should the node go offline, its first outbox proves from it."""
    if coordinator_size <= 0:
        return
    with transaction(core.conn):
        core.conn.execute(
            "INSERT INTO online_link (node, coordinator_log_size) VALUES (?, ?) "
            "ON CONFLICT (node) DO UPDATE SET coordinator_log_size = "
            "excluded.coordinator_log_size",
            (node_id, coordinator_size),
        )


def offline_statements(core: Coordinator, node_ids: Iterable[str]) -> dict[str, bytes]:
    """The newest budget statement each of ``node_ids`` sent in an answer file."""
    wanted = set(node_ids)
    rows = core.conn.execute("SELECT node, envelope FROM offline_statement").fetchall()
    return {str(n): bytes(e) for n, e in rows if n in wanted}


def _offline_node(core: Coordinator, node_id: str) -> None:
    try:
        core.manifest.member(node_id, role="node")
    except UnknownMember as exc:
        raise ConfigError(str(exc)) from None
    if node_id not in core.manifest.offline:
        waiting = core.conn.execute(
            "SELECT count(*) FROM offline_queue WHERE node = ? AND settled_ms IS NULL", (node_id,)
        ).fetchone()[0]
        stranded = (
            f"; the {waiting} queries queued while it was offline are not carried to it any "
            "more: ask them again"
            if waiting
            else ""
        )
        raise ConfigError(
            f"node {node_id} is not marked offline in manifest version {core.manifest.version} "
            f"(`fedscreen pki link --offline`){stranded}"
        )


def queued_counts(home: Path) -> dict[str, int]:
    """Offline node id -> how many queued queries await its answer file, read without
    writing from the coordinator home's database ({} if it has none or no queue yet)."""
    path = home / DATABASE_FILE
    if not path.is_file():
        return {}
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = conn.execute(
                "SELECT node, count(*) FROM offline_queue WHERE settled_ms IS NULL GROUP BY node"
            ).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return {}
    return {str(n): int(c) for n, c in rows}


def _now_ms() -> int:
    return int(time.time() * 1000)
