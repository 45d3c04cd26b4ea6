"""A node's own transparency log in memory, for the coordinator's rollback tests: grow it,
prove it consistent, and wrap a checkpoint in an answer envelope the node signed."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from fedscreen._util.canonical import canonical_json
from fedscreen.crypto.envelope import ANSWER_V1, sign_envelope
from fedscreen.crypto.signing import SigningKey
from fedscreen.tlog import memberlog
from fedscreen.tlog.log import TransparencyLog

NODE = "130102"


@dataclass
class NodeLog:
    """A member's own log (in memory) and its key: a node's by default, or the
    coordinator's (``member_id``, ``role="coordinator"``)."""

    conn: sqlite3.Connection
    key: SigningKey
    member_id: str = NODE
    role: str = "node"

    def grow(self, entries: int, tag: str = "") -> str:
        """Append entries; the newest signed checkpoint note."""
        note = ""
        for _ in range(entries):
            note = memberlog.append(
                self.conn, member_id=self.member_id, key=self.key,
                payload={"kind": "test", "tag": tag}, role=self.role,
            ).note  # fmt: skip
        self.conn.commit()
        return note

    def size(self) -> int:
        return TransparencyLog(self.conn, name=self.role).size()

    def proof(self, size1: int) -> list[bytes]:
        """The RFC 9162 consistency proof from ``size1`` to now ([] if none is needed)."""
        size2 = self.size()
        if not 0 < size1 < size2:
            return []
        return TransparencyLog(self.conn, name=self.role).consistency_proof(size1, size2)

    def answer(self, note: str) -> bytes:
        """An answer envelope signed by the node, carrying ``note`` (its body is empty: it
        proves the checkpoint, and fails the release's full verification)."""
        payload = canonical_json({"answer": {}, "log_index": 0, "checkpoint": note})
        return (
            sign_envelope(payload_type=ANSWER_V1, payload=payload, key=self.key).to_json().encode()
        )
