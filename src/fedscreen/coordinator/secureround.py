"""A secure query's round: the coordinator's partial, the second aggregator's, both checked.

Kept apart from :mod:`.partials` (the coordinator's own partial and its store, which the
core opens) because it drives the core thread and the aggregator's session, as the
servicers do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from fedscreen.coordinator.aggregation import AggregatorSessions
from fedscreen.coordinator.core import Checked, Coordinator
from fedscreen.coordinator.partials import own_partial
from fedscreen.coordinator.runtime import CoreThread
from fedscreen.crypto.envelope import Envelope
from fedscreen.errors import QueryRefused, VerificationError
from fedscreen.protocol import secure
from fedscreen.protocol.answer import VerifiedAnswer, bounded
from fedscreen.protocol.query import SignedQuery
from fedscreen.protocol.release import SecureOutcome
from fedscreen.protocol.secure import PartialBody

__all__ = ["secure_round"]

_log = logging.getLogger(__name__)


async def secure_round(
    core: CoreThread,
    aggregators: AggregatorSessions,
    query: SignedQuery,
    query_envelope: bytes,
    checked: Checked,
    *,
    timeout_s: float,
) -> tuple[SecureOutcome, Checked]:
    """Both partials of a secure query over its verified answers, or why there are none;
    and the answers as the release then uses them (those left out of the sum: missing).

    In this order, so that one county cannot sink the release for all and nothing is
    stored before it can be used: (1) the answers whose box for the coordinator does not
    open, and those whose county asks for more nodes than remain (``partial.eligible``),
    are left out; (2) the aggregator sums the rest, leaving out any whose box for it does
    not open, and signs its partial over the list it summed; (3) the coordinator makes
    its own partial over exactly that list (only now is anything marked summed here);
    (4) the pair must combine (same list, query, year, ε and cells) or there is no figure.
    """
    manifest = core.core.manifest
    try:
        pair = secure.aggregators(manifest)
    except QueryRefused as exc:
        return SecureOutcome((core.core.member_id, ""), failure=bounded(str(exc))), checked
    floor = core.core.policy.secure.min_nodes
    ordered = sorted(checked.verified.items())
    answers = [answer for _, (_, answer) in ordered]
    try:
        usable, left = await core.call(lambda c: _usable(c, answers, floor))
        if len(usable) < floor:
            raise QueryRefused(
                f"secure aggregation: {len(usable)} answers can be summed, fewer than "
                f"the {floor} a release needs"
            )
        theirs = await aggregators.ask(
            pair[1],
            query_id=query.query_id,
            query_envelope=query_envelope,
            answers=[(a.node_id, checked.verified[a.node_id][0]) for a in usable],
            academic_year=checked.academic_year or "",
            timeout_s=timeout_s,
        )
        partials, summed, dropped = await core.call(
            lambda c: _pair(c, query, pair, usable, theirs, checked.academic_year)
        )
    except (QueryRefused, VerificationError) as exc:
        _log.warning("secure query %s has no figures: %s", query.query_id, bounded(str(exc)))
        return SecureOutcome(pair, failure=bounded(str(exc))), checked
    left.update(dropped)
    for node, why in sorted(left.items()):
        _log.info("secure query %s: node %s left out (%s)", query.query_id, node, why)
    kept = {n: v for n, v in checked.verified.items() if n in summed}
    missing = [*checked.missing, *sorted(left)]
    reasons = {**checked.why, **{n: f"not summed: {bounded(w)}" for n, w in left.items()}}
    outcome = SecureOutcome(pair, partials, contributors=_contributors(partials, usable, floor))
    return outcome, Checked(kept, missing, reasons, checked.academic_year)


def _usable(
    core: Coordinator, answers: Sequence[VerifiedAnswer], floor: int
) -> tuple[list[VerifiedAnswer], dict[str, str]]:
    opened, left = secure.openable(answers, me=core.member_id, key=core.key)
    willing, unwilling = secure.eligible(opened, floor)
    return willing, {**left, **unwilling}


def _pair(
    core: Coordinator,
    query: SignedQuery,
    pair: tuple[str, str],
    usable: Sequence[VerifiedAnswer],
    theirs: bytes,
    academic_year: str | None,
) -> tuple[tuple[tuple[str, PartialBody], tuple[str, PartialBody]], set[str], dict[str, str]]:
    """Verify the aggregator's partial, make the coordinator's over the same answers, and
    check the two combine; (partials, nodes summed, nodes the aggregator left out)."""
    floor = core.policy.secure.min_nodes
    partial = secure.verify_partial(
        Envelope.from_json(theirs), manifest=core.manifest, aggregator_id=pair[1],
        expected_query=query,
    )  # fmt: skip
    by_node = {a.node_id: a for a in usable}
    if not set(partial.nodes) <= set(by_node):
        raise VerificationError("the aggregator summed answers the coordinator did not send")
    summed = [by_node[n] for n in sorted(partial.nodes)]
    secure.check_nodes(partial, summed)
    secure.check_cells(partial, summed, floor)
    own = own_partial(
        core.conn, query, summed, member_id=core.member_id, key=core.key, policy=core.policy,
        academic_year=academic_year, now_ms=_now_ms(),
    )  # fmt: skip
    mine = secure.verify_partial(
        Envelope.from_json(own), manifest=core.manifest, aggregator_id=pair[0],
        expected_query=query,
    )  # fmt: skip
    # the same list, query, year, ε and cells, or no figure (never a failed release)
    secure.combine_partials([mine, partial], aggregator_ids=pair, threshold=0)
    dropped = {
        n: "the second aggregator did not sum its answer (its log says why)"
        for n in by_node
        if n not in partial.nodes
    }
    text = (own.decode("utf-8"), mine), (theirs.decode("utf-8"), partial)
    return text, set(partial.nodes), dropped


def _contributors(
    partials: tuple[tuple[str, PartialBody], ...], usable: Sequence[VerifiedAnswer], floor: int
) -> dict[Any, int]:
    summed = [a for a in usable if a.node_id in partials[0][1].nodes]
    return {ck: n for ck, _, n in secure.released_cells(partials[0][1].query, summed, floor)}


def _now_ms() -> int:
    return int(time.time() * 1000)
