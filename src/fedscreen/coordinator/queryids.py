"""Whose a query id is: the first signed query submitted under it keeps it.

A query id names a query's releases (``fedscreen query --release``, ``report run
--include-late``) and an offline node's queue row. Ids are public (releases and logs
show them), so another analyst could sign its own query under a victim's id: the
coordinator would then release it under that id, hand the victim's fetch the other
analyst's release, and queue it over the victim's queued query. The coordinator
therefore takes a query id only with the signed query first submitted under it: a
resubmission of that very query (a client's retry) is welcome, any other is refused
before anything is logged.

Read-only over the release store and the offline queue (``coordinator.releases``
creates both): one statement, by the store's (query_id, seq) index and the queue's
(node, query_id) key.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection

from fedscreen.crypto.envelope import Envelope
from fedscreen.errors import QueryRefused, VerificationError

__all__ = ["check_query_id"]


def check_query_id(
    conn: sqlite3.Connection, query_id: str, envelope: bytes, *, queued_at: Collection[str]
) -> None:
    """QueryRefused if ``query_id`` was used by another signed query than ``envelope``.

    Looked up: every stored release of the id, and the offline queue rows of the nodes
    in ``queued_at`` (the offline nodes: only they are queued). The same signed query
    serialized differently (the same signed payload) is the same query. A release stored
    without its signed query (b"": the core called directly) says nothing.
    """
    nodes = sorted(queued_at)
    queue = (
        " UNION ALL SELECT query_envelope FROM offline_queue WHERE query_id = ? AND node IN "
        f"({', '.join('?' * len(nodes))}) AND query_envelope != ?"
        if nodes
        else ""
    )
    rows = conn.execute(
        "SELECT query_envelope FROM release_store WHERE query_id = ? "
        "AND length(query_envelope) > 0 AND query_envelope != ?" + queue,
        (query_id, envelope, *((query_id, *nodes, envelope) if nodes else ())),
    ).fetchall()
    if not rows:
        return
    signed = _signed(envelope)
    if any(_signed(bytes(row[0])) != signed for row in rows):
        raise QueryRefused(
            f"query id {query_id} is already used by another signed query: sign this one "
            "under a new id"
        )


def _signed(envelope: bytes) -> tuple[str, bytes] | None:
    """What an envelope's signatures cover (None: not an envelope, never the same). Both
    sides were verified when accepted: only their sameness is read here."""
    try:
        parsed = Envelope.from_json(envelope)
    except VerificationError:
        return None
    return parsed.payload_type, parsed.unverified_payload()
