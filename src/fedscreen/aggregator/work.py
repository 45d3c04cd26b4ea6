"""One aggregation request, start to finish: verify everything, then sum under the use-once rule.

The coordinator is only a relay here too. The aggregator verifies, against its own
manifest (re-read from the home for every request, so ``fedscreen identity
update-manifest`` takes effect without a restart): the analyst's signed query (fresh
within the freshness window plus ``late_query_ms``: it reaches the aggregator after the
nodes answered), that it is a secure query the provincial catalogue allows, and each
node's signed answer to it (``protocol.answer.verify_answer``). Then it opens its own
share of each answer and sums them (``protocol.secure.aggregate``) through the store's
use-once rule (:meth:`~fedscreen.aggregator.store.PartialStore.give`). Every refusal
is logged, with a bounded reason, and costs nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from fedscreen.aggregator.home import AggregatorHome
from fedscreen.aggregator.store import PartialStore
from fedscreen.crypto.envelope import Envelope
from fedscreen.errors import ConfigError, QueryRefused, VerificationError
from fedscreen.policy import Policy
from fedscreen.protocol.answer import VerifiedAnswer, bounded, verify_answer
from fedscreen.protocol.query import FRESHNESS_WINDOW_MS, SignedQuery, verify_query
from fedscreen.protocol.secure import (
    aggregate,
    answer_digest,
    eligible,
    openable,
    partial_key,
    sign_partial,
)
from fedscreen.query.compile import check_secure, check_secure_release
from fedscreen.rpc.limits import check_positive_limits
from fedscreen.rpc.serde import AggregationWork
from fedscreen.rpc.transport import DEFAULT_LIMITS, TransportLimits
from fedscreen.trust.manifest import Manifest

__all__ = [
    "DEFAULT_AGGREGATOR_LIMITS",
    "AggregatorLimits",
    "answer_request",
    "min_nodes",
]

_log = logging.getLogger(__name__)

#: how many node answers one request may carry at most (count): a province's nodes
MAX_ANSWERS: Final = 4_096


@dataclass(frozen=True)
class AggregatorLimits:
    """Every wait and interval of the aggregator, with its unit."""

    #: a Heartbeat goes up the stream this often (ms); the coordinator drops a session
    #: silent for its ``session_idle_timeout_ms`` (60 s by default)
    heartbeat_interval_ms: int = 15_000
    #: first redial delay after a failed or ended stream (ms)
    backoff_initial_ms: int = 500
    #: the redial delay doubles per failure up to this (ms)
    backoff_max_ms: int = 30_000
    #: dialing, the TLS handshake, Hello and Welcome together must take at most this (ms)
    welcome_timeout_ms: int = 10_000
    #: beyond the freshness window, how much later than a node may the aggregator still
    #: take a query (ms): the coordinator asks it after waiting for the nodes' answers
    #: (at most its ``max_answer_wait_ms``, 60 s by default), with margin
    late_query_ms: int = 120_000
    transport: TransportLimits = field(default=DEFAULT_LIMITS)

    def __post_init__(self) -> None:
        check_positive_limits(self, "aggregator")
        if self.backoff_initial_ms > self.backoff_max_ms:
            raise ConfigError("backoff_initial_ms must not exceed backoff_max_ms")


DEFAULT_AGGREGATOR_LIMITS: Final = AggregatorLimits()


def min_nodes(catalogue: Policy) -> int:
    """The fewest nodes one secure partial may sum, from the provincial catalogue."""
    return catalogue.secure.min_nodes


@dataclass(frozen=True)
class _Checked:
    query: SignedQuery
    answers: tuple[VerifiedAnswer, ...]


def answer_request(
    work: AggregationWork,
    *,
    home: AggregatorHome,
    store: PartialStore,
    now_ms: int,
    limits: AggregatorLimits = DEFAULT_AGGREGATOR_LIMITS,
) -> bytes:
    """The aggregator's signed partial (envelope JSON bytes) for ``work``.

    ``now_ms``: the aggregator's clock read through its offset from the coordinator's
    (the deadline is the coordinator's). Raises QueryRefused with a bounded reason
    (already logged) for anything it will not sum; nothing is stored then.
    """
    try:
        manifest = _manifest(home, store)
        checked = _check(work, manifest=manifest, catalogue=home.catalogue, now_ms=now_ms,
                         limits=limits)  # fmt: skip
    except (QueryRefused, VerificationError) as exc:
        raise QueryRefused(store.refuse(work.query_id, str(exc), now_ms=now_ms)) from None
    except RecursionError:
        raise QueryRefused(
            store.refuse(work.query_id, "nested too deeply", now_ms=now_ms)
        ) from None
    query = checked.query
    key = home.identity.signing_key()
    # a county whose box for this aggregator does not open, or that asks for more nodes
    # than remain, is left out of the sum (the coordinator sees it missing from the
    # partial's list), instead of failing the release for every county
    opened, left = openable(checked.answers, me=home.member_id, key=key)
    answers, unwilling = eligible(opened, min_nodes(home.catalogue))
    for node, why in sorted({**left, **unwilling}.items()):
        _log.info("query %s: node %s left out of the sum (%s)", query.query_id, node, why)
    if len(answers) < min_nodes(home.catalogue):
        reason = f"secure aggregation: {len(answers)} answers can be summed, too few"
        raise QueryRefused(store.refuse(query.query_id, reason, now_ms=now_ms))
    digests = {a.node_id: answer_digest(a) for a in answers}

    def make() -> dict[str, Any]:
        return aggregate(
            query, answers, me=home.member_id, key=key,
            academic_year=work.academic_year or None, min_nodes=min_nodes(home.catalogue),
        )  # fmt: skip

    def sign(body: Mapping[str, Any]) -> bytes:
        envelope = sign_partial(body, key, query_id=query.query_id, query_sha256=query.digest)
        return envelope.to_json().encode("utf-8")

    return store.give(  # logs its own refusals
        query_id=query.query_id,
        key=partial_key(query.spec, answers[0].answer.epsilon, digests),
        nodes=digests,
        make=make,
        sign=sign,
        now_ms=now_ms,
    )


def _manifest(home: AggregatorHome, store: PartialStore) -> Manifest:
    """The manifest installed in the home now (logged when the aggregator starts using it)."""
    try:
        manifest, text = home.identity.manifest_file()
    except ConfigError as exc:
        raise QueryRefused(f"the aggregator holds no usable manifest: {exc}") from None
    store.log_manifest(text, authority_key=manifest.authority_key)
    return manifest


def _check(
    work: AggregationWork,
    *,
    manifest: Manifest,
    catalogue: Policy,
    now_ms: int,
    limits: AggregatorLimits,
) -> _Checked:
    """The verified query and answers of ``work``; QueryRefused or VerificationError."""
    if work.deadline_unix_ms and now_ms >= work.deadline_unix_ms:
        late_s = (now_ms - work.deadline_unix_ms) / 1000
        raise QueryRefused(f"the coordinator's deadline passed {late_s:.3g} s before the start")
    envelope = Envelope.from_json(work.query_envelope)
    query = verify_query(
        envelope,
        manifest=manifest,
        now_ms=now_ms,
        window_ms=FRESHNESS_WINDOW_MS + limits.late_query_ms,
    )
    if query.query_id != work.query_id:
        raise VerificationError("the request's query id is not the signed query's")
    if not query.spec.secure:
        raise QueryRefused("not a secure query: nothing to aggregate")
    check_secure(query.spec, catalogue)
    if len(work.answers) > MAX_ANSWERS:
        raise QueryRefused(f"more than {MAX_ANSWERS} answers in one request")
    nodes = [node for node, _ in work.answers]
    if len(set(nodes)) != len(nodes):
        raise QueryRefused("a node's answer is listed twice")
    check_secure_release(catalogue, nodes=len(nodes))
    answers = []
    for node, raw in work.answers:
        try:
            answer_envelope = Envelope.from_json(raw)
        except VerificationError:
            raise VerificationError(f"the answer of {bounded(node)} is not an envelope") from None
        answers.append(
            verify_answer(
                answer_envelope,
                manifest=manifest,
                node_id=node,
                expected_query=query,
                public=False,
                academic_year=work.academic_year or None,
                catalogue=catalogue,
            )
        )
    return _Checked(query, tuple(answers))
