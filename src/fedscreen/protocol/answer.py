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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from fedscreen._util.canonical import canonical_json
from fedscreen.crypto.envelope import ANSWER_V1, Envelope, parse_json, verify_envelope
from fedscreen.errors import QueryRefused, VerificationError
from fedscreen.query.spec import QuerySpec
from fedscreen.tlog.checkpoint import Checkpoint, member_origin, parse_and_verify_note
from fedscreen.trust.manifest import Manifest, show_id

#: largest noise scale an answer may state: beyond ~1e16, e^(−1/scale) rounds to 1 and
#: ``combine.discrete_laplace_variance`` divides by zero (a real scale, sensitivity/ε, is
#: far below this)
MAX_SCALE: Final = 1e15
#: largest |value| of a cell an answer may state, so sums and ratios stay finite floats
MAX_VALUE: Final = 2**62
#: the largest ε a message may state; far beyond any budget, and exact in µε
MAX_STATED_EPSILON: Final = 1e9


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
        data = parse_json(payload)
        if not isinstance(data, dict) or not isinstance(data.get("answer"), dict):
            raise TypeError("an answer is an object holding an answer object")
        body, index, note = data["answer"], data["log_index"], data["checkpoint"]
        if isinstance(index, bool) or not isinstance(index, int) or not isinstance(note, str):
            raise TypeError("log_index must be an integer and checkpoint a string")
        charged = data.get("charged")
        if charged is not None:
            charged = _epsilon(charged)
        if not isinstance(body.get("query"), dict):
            raise TypeError("the answer's query must be an object")
        answered = QuerySpec.from_json(body["query"])
        claimed_node = body["node_id"]
        # what combine() reads must be there, so a verified answer can be combined
        check_cells(answered.measure.kind, body)
    except (ValueError, KeyError, TypeError, RecursionError, QueryRefused) as exc:
        raise VerificationError(f"malformed answer from {node_id}: {exc!r}") from None
    if claimed_node != node_id:
        raise VerificationError(
            f"answer claims to be from {show_id(claimed_node)}, not {node_id!r}"
        )
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


def _epsilon(value: object) -> float:
    """A stated ε: a finite number ≥ 0 (ValueError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("charged must be a number")
    if not 0 <= value <= MAX_STATED_EPSILON:  # refuses NaN, infinity and huge ints
        raise ValueError(f"charged must be within [0, {MAX_STATED_EPSILON:g}]")
    return float(value)


def check_cells(kind: str, body: Mapping[str, Any]) -> None:
    """Raise ValueError unless ``body`` holds the cells ``combine.combine`` reads for ``kind``.

    A node's signature says who wrote an answer, not that it is well formed: every cell
    is an object with a ``group`` list and, for counts and sums, a finite ``value``
    (and ``lower``/``upper`` and a ``scale`` when noisy); for rates and means, a
    numerator and a denominator with a finite ``value`` and ``scale`` each.
    """
    cells = body.get("cells")
    if not isinstance(cells, list):
        raise ValueError("an answer's cells must be a list")
    noisy = "scale" in body
    if noisy and kind in ("count", "sum"):
        _scale(body["scale"])
    for cell in cells:
        if not isinstance(cell, dict) or not isinstance(cell.get("group"), list):
            raise ValueError("each cell must be an object with a group list")
        if kind in ("count", "sum"):
            for name in ("value", "lower", "upper") if noisy else ("value",):
                _finite(cell.get(name), name)
        elif kind in ("rate", "mean"):
            for name in ("numerator", "denominator"):
                part = cell.get(name)
                if not isinstance(part, dict):
                    raise ValueError(f"a {kind} cell needs a {name} object")
                _finite(part.get("value"), f"{name} value")
                _scale(part.get("scale"))


def _finite(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"a cell's {what} must be a number")
    if not abs(value) <= MAX_VALUE:  # refuses NaN and infinity; an int is compared exactly
        raise ValueError(f"a cell's {what} is out of range")


def _scale(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("a noise scale must be a number")
    if not 0 <= value <= MAX_SCALE:  # also refuses NaN
        raise ValueError(f"a noise scale must be within [0, {MAX_SCALE:g}]")
