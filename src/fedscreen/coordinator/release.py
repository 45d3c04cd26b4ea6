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

from fedscreen.answer import VerifiedAnswer
from fedscreen.coordinator.combine import NodeCells, combine
from fedscreen.query.signed import SignedQuery

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
