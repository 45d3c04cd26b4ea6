"""A secure query's round: the coordinator's partial, the second aggregator's, both checked.

Kept apart from :mod:`.partials` (the coordinator's own partial and its store, which the
core opens) because it drives the core thread and the aggregator's session, as the
servicers do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Protocol

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

__all__ = ["Asks", "secure_round"]

_log = logging.getLogger(__name__)


class Asks(Protocol):
    """The sessions of connected aggregators (``coordinator.aggregation``), as used here."""

    async def ask(
        self,
        aggregator_id: str,
        *,
        query_id: str,
        query_envelope: bytes,
        answers: Sequence[tuple[str, bytes]],
        academic_year: str,
        timeout_s: float,
    ) -> bytes:
        """The aggregator's signed partial (envelope JSON); QueryRefused with its reason."""
        ...


async def secure_round(
    core: CoreThread,
    aggregators: Asks,
    query: SignedQuery,
    query_envelope: bytes,
    checked: Checked,
    *,
    timeout_s: float,
) -> SecureOutcome:
    """Both partials of a secure query over its verified answers, or why there are none.

    The coordinator makes its own partial first (stored before anything leaves), then
    relays the nodes' answers — their sealed boxes, which only the aggregator opens —
    and verifies the aggregator's partial: signed by it, for this query, over exactly
    these answers.
    """
    manifest = core.core.manifest
    try:
        pair = secure.aggregators(manifest)
    except QueryRefused as exc:
        return SecureOutcome((core.core.member_id, ""), failure=bounded(str(exc)))
    ordered = sorted(checked.verified.items())
    answers = [answer for _, (_, answer) in ordered]
    try:
        own = await core.call(
            lambda c: own_partial(
                c.conn, query, answers, member_id=c.member_id, key=c.key, policy=c.policy,
                academic_year=checked.academic_year, now_ms=_now_ms(),
            )
        )  # fmt: skip
        theirs = await aggregators.ask(
            pair[1],
            query_id=query.query_id,
            query_envelope=query_envelope,
            answers=[(node, raw) for node, (raw, _) in ordered],
            academic_year=checked.academic_year or "",
            timeout_s=timeout_s,
        )
        partials = await core.call(lambda c: _verified_pair(c, query, pair, answers, own, theirs))
    except (QueryRefused, VerificationError) as exc:
        _log.warning("secure query %s has no figures: %s", query.query_id, bounded(str(exc)))
        return SecureOutcome(pair, failure=bounded(str(exc)))
    return SecureOutcome(pair, partials)


def _verified_pair(
    core: Coordinator,
    query: SignedQuery,
    pair: tuple[str, str],
    answers: Sequence[VerifiedAnswer],
    own: bytes,
    theirs: bytes,
) -> tuple[tuple[str, PartialBody], tuple[str, PartialBody]]:
    verified = []
    for member, raw in zip(pair, (own, theirs), strict=True):
        partial = secure.verify_partial(
            Envelope.from_json(raw),
            manifest=core.manifest,
            aggregator_id=member,
            expected_query=query,
        )
        secure.check_nodes(partial, answers)
        verified.append((raw.decode("utf-8"), partial))
    return verified[0], verified[1]


def _now_ms() -> int:
    return int(time.time() * 1000)
