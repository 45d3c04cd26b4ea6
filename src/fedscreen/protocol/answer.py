"""A node's signed answer: the bytes it signs, and their verification (coordinator, auditors).

A node signs ``{"answer": body, "log_index": i, "checkpoint": note}`` as a DSSE
envelope (``ANSWER_V1``). ``verify_answer`` checks, in order: the signature is
by the active manifest member that ``node_id`` names (a node); the payload is
well formed; the answer says it is from that node; it answers exactly the
expected query (so an answer cannot be reattached to another question); and the
checkpoint it carries is signed by the same node for its own log and covers the
entry. It returns the verified parts or raises VerificationError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fedscreen._util.canonical import canonical_json
from fedscreen.crypto.envelope import ANSWER_V1, Envelope, verify_envelope
from fedscreen.errors import VerificationError
from fedscreen.query.spec import QuerySpec
from fedscreen.tlog.checkpoint import Checkpoint, member_origin, parse_and_verify_note
from fedscreen.trust.manifest import Manifest


def answer_payload(body: dict[str, Any], log_index: int, checkpoint: str, charged: float) -> bytes:
    """The exact bytes a node signs for an answer.

    ``charged`` is the ε this delivery cost the ledger: the body's ε when it was just
    computed, 0 when the stored answer was given again (identical query, same data).
    """
    return canonical_json(
        {"answer": body, "log_index": log_index, "checkpoint": checkpoint, "charged": charged}
    )


@dataclass(frozen=True)
class VerifiedAnswer:
    """An answer whose signature, origin, query and checkpoint were verified."""

    node_id: str
    body: dict[str, Any]
    log_index: int
    checkpoint: Checkpoint
    checkpoint_note: str
    #: ε this delivery charged (0: the node's stored answer, given again); None if unstated
    charged: float | None = None


def verify_answer(
    envelope: Envelope, *, manifest: Manifest, node_id: str, expected_query: QuerySpec
) -> VerifiedAnswer:
    """Verify a node's answer to ``expected_query``; raises VerificationError."""
    member = manifest.member(node_id, role="node")
    payload = verify_envelope(
        envelope,
        expected_payload_type=ANSWER_V1,
        trusted_keys={member.key_id: member.signing_key},
    )
    try:
        data = json.loads(payload)
        body, index, note = data["answer"], int(data["log_index"]), str(data["checkpoint"])
        charged = None if data.get("charged") is None else float(data["charged"])
        answered = QuerySpec.from_json(body["query"])
        claimed_node = body["node_id"]
    except (ValueError, KeyError, TypeError) as exc:
        raise VerificationError(f"malformed answer from {node_id}: {exc!r}") from None
    if claimed_node != node_id:
        raise VerificationError(f"answer claims to be from {claimed_node!r}, not {node_id!r}")
    answered_json = answered.to_json()
    if not expected_query.years:
        # a query without a period is answered for the node's latest year: compare the rest
        answered_json["years"] = []
    if canonical_json(answered_json) != canonical_json(expected_query.to_json()):
        raise VerificationError(f"the answer from {node_id} answers a different query")
    origin = member_origin("node", node_id)
    checkpoint = parse_and_verify_note(note, verifiers={origin: member.signing_key})
    if checkpoint.origin != origin or not 0 <= index < checkpoint.size:
        raise VerificationError(f"the checkpoint in {node_id}'s answer does not cover its entry")
    return VerifiedAnswer(node_id, body, index, checkpoint, note, charged)
