"""A small federation of real keys for protocol tests: an analyst, two nodes, a manifest.

``signed_query`` signs a query as the analyst; ``signed_answer`` signs an answer body as
a node signs one (``protocol.answer.answer_payload``, with a node-signed checkpoint).
"""

from __future__ import annotations

from typing import Any

from fedscreen.crypto.envelope import ANSWER_V1, Envelope, sign_envelope
from fedscreen.crypto.signing import SigningKey
from fedscreen.protocol.answer import answer_payload
from fedscreen.protocol.query import SignedQuery, issue_query
from fedscreen.query.spec import QuerySpec
from fedscreen.tlog.checkpoint import Checkpoint, member_origin, sign_checkpoint
from fedscreen.trust.manifest import Manifest, Member

ANALYST, AUTHORITY = SigningKey.generate(), SigningKey.generate()
NODES = {"130102": SigningKey.generate(), "130104": SigningKey.generate()}
MANIFEST = Manifest(
    "test",
    1,
    "2026-01-01T00:00:00Z",
    AUTHORITY.public_key,
    (
        Member("alice", "analyst", "Alice", ANALYST.public_key, "00" * 32),
        *(Member(n, "node", n, k.public_key, "11" * 32) for n, k in NODES.items()),
    ),
)
YEAR = "2024-2025"


def signed_query(spec: QuerySpec, epsilon: float = 0.3) -> SignedQuery:
    """``spec`` at ``epsilon``, signed by the analyst (a fixed query id)."""
    unsigned = SignedQuery("ab" * 16, "alice", 0, spec, epsilon, None, ())
    return issue_query(unsigned, key=ANALYST)[0]


def signed_answer(
    node: str, body: dict[str, Any], query: SignedQuery | None, *, charged: float | None = None
) -> Envelope:
    """``body`` signed by ``node`` as its answer to ``query`` (None: a local answer, bound to
    no signed query); ``charged`` defaults to the body's ε."""
    note = sign_checkpoint(Checkpoint(member_origin("node", node), 5, bytes(32)), key=NODES[node])
    payload = answer_payload(
        body, 2, note, body["epsilon"] if charged is None else charged,
        query_id=query.query_id if query else None, query_sha256=query.digest if query else None,
    )  # fmt: skip
    return sign_envelope(payload_type=ANSWER_V1, payload=payload, key=NODES[node])
