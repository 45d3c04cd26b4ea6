"""Analysts' signed queries: what an analyst signs, and what a node checks before answering.

A query travels as a DSSE envelope (``QUERY_V1``) signed by the analyst, so the
coordinator that relays it cannot forge or alter one. Its payload::

    {"query_id": "<32 hex>", "analyst": "<member id>", "issued_at_ms": <unix ms>,
     "spec": <QuerySpec JSON>, "epsilon": <float|null>, "accuracy": <float|null>,
     "nodes": ["130102", ...]}

A node accepts it only if the signature is by an active **analyst** of the
manifest, the payload names that same analyst, and it is fresh (issued within
the freshness window of the node's clock). Uniqueness — a query id is answered
once, a replay gets the stored answer — is kept by the node's engine.

A query's **digest** is the SHA-256 (hex) of its DSSE *payload* bytes, the exact
bytes the analyst signed. Not of the envelope's JSON: that may be re-encoded on
the way (key order, whitespace, either base64 alphabet, signatures added) without
changing what was signed, and every node, the coordinator and the auditor must
compute the same digest. A node's answer states the query id and this digest, so
it cannot be presented as the answer to another query.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any, Final

from fedscreen._util.canonical import canonical_json
from fedscreen.crypto.envelope import (
    QUERY_V1,
    Envelope,
    parse_json,
    sign_envelope,
    verify_envelope,
)
from fedscreen.crypto.signing import SigningKey
from fedscreen.errors import QueryRefused, VerificationError
from fedscreen.query.spec import QuerySpec
from fedscreen.trust.manifest import Manifest

#: a query older (or further in the future) than this is refused as stale, milliseconds
FRESHNESS_WINDOW_MS: Final = 5 * 60 * 1000
#: a window no signed query's age falls outside: for checks of its signature only (a
#: stored or logged query, whose freshness was judged when it arrived)
ANY_AGE_MS: Final = 2**62
QUERY_ID_HEX: Final = 32
#: how logs and records show a text that should be a query id but is not one
INVALID_QUERY_ID: Final = "(invalid id)"
_HEX: Final = frozenset("0123456789abcdef")
#: largest ε or accuracy a query may ask for; beyond, µε arithmetic would lose exactness
MAX_QUERY_EPSILON: Final = 1e9


@dataclass(frozen=True)
class SignedQuery:
    """A verified query."""

    query_id: str
    analyst: str
    issued_at_ms: int
    spec: QuerySpec
    epsilon: float | None
    accuracy: float | None
    nodes: tuple[str, ...]
    #: SHA-256 (hex) of the signed payload bytes ("" until signed or verified)
    digest: str = ""

    def to_json(self) -> dict[str, Any]:
        """The payload form."""
        return {
            "query_id": self.query_id,
            "analyst": self.analyst,
            "issued_at_ms": self.issued_at_ms,
            "spec": self.spec.to_json(),
            "epsilon": self.epsilon,
            "accuracy": self.accuracy,
            "nodes": list(self.nodes),
        }


def is_query_id(text: str) -> bool:
    """Whether ``text`` is a query id: 32 lowercase hex digits."""
    return len(text) == QUERY_ID_HEX and set(text) <= _HEX


def shown_query_id(text: str) -> str:
    """A query id from a peer, fit for a log line or a record: itself if it is one, else
    ``INVALID_QUERY_ID`` (a peer's raw text could forge log lines or drive a terminal)."""
    return text if is_query_id(text) else INVALID_QUERY_ID


def new_query_id() -> str:
    """A fresh random query id (128 bits)."""
    return secrets.token_hex(QUERY_ID_HEX // 2)


def query_digest(payload: bytes) -> str:
    """The digest answers state for a query: SHA-256 (hex) of its signed payload bytes."""
    return hashlib.sha256(payload).hexdigest()


def sign_query(query: SignedQuery, *, key: SigningKey) -> Envelope:
    """Sign a query as its analyst (``issue_query`` also gives the query with its digest)."""
    return issue_query(query, key=key)[1]


def issue_query(query: SignedQuery, *, key: SigningKey) -> tuple[SignedQuery, Envelope]:
    """Sign a query as its analyst: the query with its ``digest`` set, and the envelope."""
    payload = canonical_json(query.to_json())
    envelope = sign_envelope(payload_type=QUERY_V1, payload=payload, key=key)
    signed = SignedQuery(
        query.query_id, query.analyst, query.issued_at_ms, query.spec, query.epsilon,
        query.accuracy, query.nodes, digest=query_digest(payload),
    )  # fmt: skip
    return signed, envelope


def verify_query(
    envelope: Envelope, *, manifest: Manifest, now_ms: int, window_ms: int = FRESHNESS_WINDOW_MS
) -> SignedQuery:
    """Check signature, signer role, freshness and shape; raise VerificationError/QueryRefused."""
    try:
        payload = verify_envelope(
            envelope, expected_payload_type=QUERY_V1, trusted_keys=manifest.keys(role="analyst")
        )
    except VerificationError:
        # fixed words: what the envelope says of itself (its type, key ids) is unverified
        raise VerificationError(
            "not a query signed by an active analyst of the federation"
        ) from None
    try:
        data = parse_json(payload)
        if not isinstance(data, dict):
            raise TypeError("a query is a JSON object")
        issued, nodes = data["issued_at_ms"], data.get("nodes", [])
        if isinstance(issued, bool) or not isinstance(issued, int):
            raise TypeError("issued_at_ms must be an integer")
        if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
            raise TypeError("nodes must be a list of node ids")
        if not isinstance(data["spec"], dict):
            raise TypeError("spec must be an object")
        query = SignedQuery(
            query_id=str(data["query_id"]),
            analyst=str(data["analyst"]),
            issued_at_ms=issued,
            spec=QuerySpec.from_json(data["spec"]),
            epsilon=_positive(data.get("epsilon"), "epsilon"),
            accuracy=_positive(data.get("accuracy"), "accuracy"),
            nodes=tuple(nodes),
            digest=query_digest(payload),
        )
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise QueryRefused(f"malformed query: {exc!r}") from None
    if not is_query_id(query.query_id):
        raise QueryRefused("a query id is 32 lowercase hex digits")
    # the signature must be the named analyst's own: no signing on someone else's behalf
    signer = manifest.member(query.analyst, role="analyst")
    keyids = {s.keyid for s in envelope.signatures}
    if signer.key_id not in keyids:
        raise VerificationError(f"the query is not signed by {query.analyst} itself")
    check_fresh(query, now_ms=now_ms, window_ms=window_ms)
    return query


def check_fresh(query: SignedQuery, *, now_ms: int, window_ms: int = FRESHNESS_WINDOW_MS) -> None:
    """QueryRefused unless ``query`` was issued within ``window_ms`` of ``now_ms``."""
    if abs(now_ms - query.issued_at_ms) > window_ms:
        raise QueryRefused(
            f"stale query: issued {abs(now_ms - query.issued_at_ms) // 1000} s from this node's "
            f"clock (window {window_ms // 1000} s)"
        )


def _positive(value: object, what: str) -> float | None:
    """None, or a finite number ≥ 0 (NaN or infinity would reach the ledger's arithmetic)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number")
    if not 0 <= value <= MAX_QUERY_EPSILON:  # refuses NaN, infinity and huge ints
        raise ValueError(f"{what} must be a number within [0, {MAX_QUERY_EPSILON:g}]")
    return float(value)
