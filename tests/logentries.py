"""A member's log entries as tests read them: each one's signature verified, then parsed."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fedscreen.crypto.envelope import LOG_ENTRY_V1, Envelope, verify_envelope
from fedscreen.crypto.signing import public_key_id
from fedscreen.tlog.log import TransparencyLog


def verified_entries(
    raws: Iterable[bytes], public_key: bytes, *, kind: str | None = None
) -> list[dict[str, Any]]:
    """The payload of each entry, signed by ``public_key``'s owner (VerificationError if
    one is not); only those of ``kind`` if given."""
    trusted = {public_key_id(public_key): public_key}
    entries = [
        json.loads(
            verify_envelope(
                Envelope.from_json(raw), expected_payload_type=LOG_ENTRY_V1, trusted_keys=trusted
            )
        )
        for raw in raws
    ]
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
