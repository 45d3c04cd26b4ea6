"""A member's log entries as tests read them: each one's signature verified (a
coordinator's answer entries are unsigned: ``tlog.entries``), then parsed."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fedscreen.crypto.envelope import LOG_ENTRY_V1, Envelope, verify_envelope
from fedscreen.crypto.signing import public_key_id
from fedscreen.tlog.entries import unsigned_payload
from fedscreen.tlog.log import TransparencyLog


def verified_entries(
    raws: Iterable[bytes],
    public_key: bytes,
    *,
    kind: str | None = None,
    unsigned: frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """The payload of each entry, signed by ``public_key``'s owner (VerificationError if
    one is not) or, of the kinds in ``unsigned`` (a coordinator's log:
    ``COORDINATOR_UNSIGNED``), unsigned; only those of ``kind`` if given."""
    trusted = {public_key_id(public_key): public_key}

    def payload(raw: bytes) -> bytes:
        bare = unsigned_payload(raw, unsigned)
        if bare is not None:
            return bare
        return verify_envelope(
            Envelope.from_json(raw), expected_payload_type=LOG_ENTRY_V1, trusted_keys=trusted
        )

    entries = [json.loads(payload(raw)) for raw in raws]
    return [e for e in entries if kind is None or e["kind"] == kind]


def stored_entries(database: Path | sqlite3.Connection, role: str) -> list[bytes]:
    """Every entry of the ``role`` log in a database file (or an open connection)."""
    conn = sqlite3.connect(database) if isinstance(database, Path) else database
    try:
        log = TransparencyLog(conn, name=role)
        return [log.entry(i) for i in range(log.size())]
    finally:
        if isinstance(database, Path):
            conn.close()
