"""The analyst's side: sign a query, submit it (``submit``, from the gRPC edge), verify a release.

An analyst's home is a member identity (``fedscreen identity init --role analyst``)
issued by the authority. ``verify_release`` trusts nothing but the manifest: the
release must be signed by the active coordinator, every node answer in it must
verify against its node's key and answer exactly this query, and the provincial
cells must be the combination of those answers.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedscreen.crypto.envelope import RELEASE_V1, Envelope, verify_envelope
from fedscreen.errors import ConfigError, VerificationError
from fedscreen.protocol.answer import verify_answer
from fedscreen.protocol.combine import NodeCells
from fedscreen.protocol.query import SignedQuery, new_query_id, sign_query
from fedscreen.protocol.release import check_release
from fedscreen.query.sqlparse import parse_sql
from fedscreen.rpc.client import Submitted, submit
from fedscreen.trust.identity import load_identity
from fedscreen.trust.manifest import Manifest

__all__ = ["Submitted", "VerifiedRelease", "make_query", "submit", "verify_release"]


def make_query(
    home: Path,
    sql: str,
    *,
    epsilon: float | None,
    accuracy: float | None,
    nodes: Sequence[str] = (),
) -> tuple[SignedQuery, bytes]:
    """Parse ``sql`` and sign it with the analyst identity in ``home``."""
    identity = load_identity(home)
    if identity.role != "analyst":
        raise ConfigError(f"{home} holds a {identity.role} identity, not an analyst's")
    query = SignedQuery(
        query_id=new_query_id(),
        analyst=identity.member_id,
        issued_at_ms=int(time.time() * 1000),
        spec=parse_sql(sql),
        epsilon=epsilon,
        accuracy=accuracy,
        nodes=tuple(nodes),
    )
    envelope = sign_query(query, key=identity.signing_key())
    return query, envelope.to_json().encode("utf-8")


@dataclass(frozen=True)
class VerifiedRelease:
    """A release whose signature, answers and combination were verified."""

    body: dict[str, Any]
    #: node id -> the node's verified answer body (cells with the noise scale each used)
    node_bodies: dict[str, dict[str, Any]]
    #: node id -> the ε the node charged for this very answer (0 when it came from the
    #: node's store; None from nodes that do not say)
    charged: dict[str, float | None]


def verify_release(
    envelope: bytes,
    *,
    manifest: Manifest,
    query: SignedQuery,
    answers: Mapping[str, bytes],
) -> VerifiedRelease:
    """Verify a release of ``query`` and the node answers it was made of.

    Anything wrong — a signature, a shape, a number — is a VerificationError, also
    for a release that is well signed but malformed.
    """
    coordinators = manifest.keys(role="coordinator")
    payload = verify_envelope(
        Envelope.from_json(envelope), expected_payload_type=RELEASE_V1, trusted_keys=coordinators
    )
    try:
        return _verify_release(payload, manifest=manifest, query=query, answers=answers)
    except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError, RecursionError) as e:
        raise VerificationError(f"malformed release: {type(e).__name__}") from None


def _verify_release(
    payload: bytes,
    *,
    manifest: Manifest,
    query: SignedQuery,
    answers: Mapping[str, bytes],
) -> VerifiedRelease:
    body = json.loads(payload)
    if not isinstance(body, dict) or body.get("query_id") != query.query_id:
        raise VerificationError("the release is for another query")
    listed = {a["node_id"]: a for a in body["answers"]}
    if set(listed) != set(answers):
        raise VerificationError("the release lists other answers than those delivered")
    nodes = []
    charged: dict[str, float | None] = {}
    for node_id in sorted(answers):
        if hashlib.sha256(answers[node_id]).hexdigest() != listed[node_id]["envelope_sha256"]:
            raise VerificationError(f"{node_id}'s answer is not the one the release names")
        verified = verify_answer(
            Envelope.from_json(answers[node_id]),
            manifest=manifest,
            node_id=node_id,
            expected_query=query.spec,
        )
        nodes.append(NodeCells(node_id, verified.body))
        charged[node_id] = verified.charged
    check_release(body, query, nodes)
    return VerifiedRelease(body, {n.node_id: n.body for n in nodes}, charged)
