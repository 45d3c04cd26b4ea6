"""Releases: the coordinator's signed combination of the nodes' signed answers.

A release body holds the analyst's query, which nodes answered (each with the
SHA-256 of its answer envelope, its ε and its log checkpoint) and which did
not, with why (``missing_reasons``: ``"refused: <the node's reason>"``, ``"not
connected"``, ``"no answer before the deadline"``, ``"link lost"``, ...), each
node's cells, and the provincial cells computed by
``combine.combine`` from exactly those answers — so anyone holding the answers
can recompute the release and compare.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from fedscreen._util.canonical import canonical_json
from fedscreen.errors import VerificationError
from fedscreen.protocol.answer import VerifiedAnswer
from fedscreen.protocol.combine import NodeCells, combine
from fedscreen.protocol.query import SignedQuery

RELEASE_VERSION: Final = 1


def population(
    answered: Sequence[str], targeted: Sequence[str], eligible: Mapping[str, int]
) -> dict[str, Any]:
    """The share of the eligible students (public school tables) that the answers cover."""
    known = [n for n in targeted if n in eligible]
    total = sum(eligible[n] for n in known)
    covered = sum(eligible[n] for n in answered if n in eligible)
    return {
        "eligible_answered": covered,
        "eligible_targeted": total,
        "share": covered / total if total else None,
        "unknown": sorted(n for n in targeted if n not in eligible),
    }


def release_body(
    *,
    coordinator_id: str,
    query: SignedQuery,
    answers: Mapping[str, tuple[bytes, VerifiedAnswer]],
    missing: Sequence[str],
    targeted: Sequence[str],
    threshold: int,
    eligible: Mapping[str, int] | None = None,
    missing_reasons: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The body the coordinator signs for one query."""
    ordered = sorted(answers)
    reasons = missing_reasons or {}
    nodes = [NodeCells(n, answers[n][1].body) for n in ordered]
    return {
        "version": RELEASE_VERSION,
        "coordinator": coordinator_id,
        "query_id": query.query_id,
        "analyst": query.analyst,
        "query": query.spec.to_json(),
        "released_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "targeted": sorted(targeted),
        "answered": ordered,
        "missing": sorted(missing),
        # one line per missing node, for the analyst; not part of the combination
        "missing_reasons": {n: reasons.get(n, "no answer") for n in sorted(missing)},
        "coverage": len(ordered) / len(targeted) if targeted else 0.0,
        "population": population(ordered, targeted, eligible or {}),
        "answers": [
            {
                "node_id": n,
                "envelope_sha256": hashlib.sha256(answers[n][0]).hexdigest(),
                "epsilon": answers[n][1].body.get("epsilon"),
                "log_index": answers[n][1].log_index,
                "checkpoint": answers[n][1].checkpoint_note,
            }
            for n in ordered
        ],
        "per_node": {n: answers[n][1].body["cells"] for n in ordered},
        "threshold": threshold,
        # the auditor recomputes exactly this from the logged answers
        "province": combine(query.spec.measure.kind, nodes, threshold=threshold),
    }


def check_release(body: Mapping[str, Any], query: SignedQuery, nodes: Sequence[NodeCells]) -> None:
    """Everything a release states from the answers must be those answers.

    ``nodes`` are the verified answers the release names. The release must be for this
    query, name exactly those nodes as answered, repeat each node's cells and ε as the
    node signed them, and hold their combination as the provincial cells; otherwise
    VerificationError. (Readers of a release use all of these fields, so a coordinator
    must not be able to change any of them.)
    """
    try:
        _check_release(body, query, nodes)
    except (KeyError, TypeError, ValueError, ArithmeticError, RecursionError) as exc:
        # a malformed body, or answers whose cells do not combine: never a crash
        raise VerificationError(f"malformed release: {exc!r}") from None


def _check_release(body: Mapping[str, Any], query: SignedQuery, nodes: Sequence[NodeCells]) -> None:
    if not isinstance(body, Mapping) or body.get("query_id") != query.query_id:
        raise VerificationError("the release is for another query")
    if canonical_json(body["query"]) != canonical_json(query.spec.to_json()):
        raise VerificationError("the release states another query than the analyst signed")
    ordered = sorted(n.node_id for n in nodes)
    if list(body["answered"]) != ordered or sorted(body["per_node"]) != ordered:
        raise VerificationError("the release lists other answering nodes than its answers")
    stated = {a["node_id"]: a for a in body["answers"]}
    if not all(isinstance(a, Mapping) for a in stated.values()):
        raise VerificationError("the release's answers must be objects")
    for node in nodes:
        if canonical_json(body["per_node"][node.node_id]) != canonical_json(node.body["cells"]):
            raise VerificationError(f"the release changes {node.node_id}'s cells")
        if stated[node.node_id].get("epsilon") != node.body.get("epsilon"):
            raise VerificationError(f"the release misstates {node.node_id}'s ε")
    if query.nodes and sorted(body["targeted"]) != sorted(query.nodes):
        raise VerificationError("the release names other nodes asked than the analyst signed")
    if sorted(body["missing"]) != sorted(set(body["targeted"]) - set(ordered)):
        raise VerificationError("the release's missing nodes are not the ones asked less answered")
    recomputed = combine(query.spec.measure.kind, nodes, threshold=int(body["threshold"]))
    if canonical_json(recomputed) != canonical_json(body["province"]):
        raise VerificationError("the provincial figures are not the combination of the answers")
