"""The coordinator as the first of a secure query's two aggregators.

It opens its own share of each node's answer, sums them, adds its one OpenDP draw
per cell and signs that partial (``protocol.secure.aggregate``), under the rule
every honest aggregator keeps: each node's answer body is summed into **one**
partial only. The same answers again (a resubmitted question, answered from the
nodes' stores) get the same stored partial, its noise drawn once; answers of which
one was already summed with others are refused, since fresh noise over a re-summed
answer would let differences or averages spend a county's ε twice. The partial is
stored before it is used, and leaves only inside the signed release, which the
coordinator's log holds.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, Protocol

from fedscreen._util.canonical import canonical_json
from fedscreen._util.sqlite import transaction
from fedscreen.crypto.envelope import Envelope
from fedscreen.errors import QueryRefused, VerificationError
from fedscreen.protocol import secure
from fedscreen.protocol.answer import VerifiedAnswer, bounded
from fedscreen.protocol.query import SignedQuery
from fedscreen.protocol.release import SecureOutcome
from fedscreen.protocol.secure import (
    PartialBody,
    aggregate,
    answer_digest,
    partial_key,
    sign_partial,
)
from fedscreen.query.compile import check_secure_release

if TYPE_CHECKING:
    from fedscreen.coordinator.core import Checked, Coordinator
    from fedscreen.coordinator.runtime import CoreThread

_log = logging.getLogger(__name__)

SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS secure_partial ("
    " key TEXT PRIMARY KEY, body TEXT NOT NULL, created_ms INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS secure_summed ("
    " answer_sha256 TEXT PRIMARY KEY, key TEXT NOT NULL REFERENCES secure_partial (key));"
)


def own_partial(
    core: Coordinator,
    query: SignedQuery,
    answers: Sequence[VerifiedAnswer],
    *,
    academic_year: str | None,
    now_ms: int,
) -> bytes:
    """The coordinator's signed partial over ``answers`` (verified secure answers to
    ``query``), as envelope JSON bytes; QueryRefused if it may not make one."""
    check_secure_release(core.policy, nodes=len(answers))
    nodes = {a.node_id: answer_digest(a) for a in answers}
    epsilon = answers[0].answer.epsilon if answers else 0.0
    key = partial_key(query.spec, epsilon, nodes)
    conn = core.conn
    with transaction(conn):
        row = conn.execute("SELECT body FROM secure_partial WHERE key = ?", (key,)).fetchone()
        if row is not None:
            body = json.loads(row[0])
        else:
            marks = ",".join("?" * len(nodes))
            used = conn.execute(
                f"SELECT answer_sha256 FROM secure_summed WHERE answer_sha256 IN ({marks})",
                tuple(nodes.values()),
            ).fetchone()
            if used is not None:
                node = next(n for n, d in nodes.items() if d == used[0])
                raise QueryRefused(
                    f"node {node}'s answer was already summed into another secure partial: "
                    "ask again at another ε for a new one"
                )
            body = aggregate(
                query,
                answers,
                me=core.member_id,
                key=core.key,
                academic_year=academic_year,
                min_nodes=core.policy.secure.min_nodes,
            )
            conn.execute(
                "INSERT INTO secure_partial (key, body, created_ms) VALUES (?, ?, ?)",
                (key, canonical_json(body).decode(), now_ms),
            )
            conn.executemany(
                "INSERT INTO secure_summed (answer_sha256, key) VALUES (?, ?)",
                [(digest, key) for digest in nodes.values()],
            )
    # it leaves only inside the release, which the log holds
    envelope = sign_partial(body, core.key, query_id=query.query_id, query_sha256=query.digest)
    return envelope.to_json().encode("utf-8")


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
                c, query, answers, academic_year=checked.academic_year, now_ms=_now_ms()
            )
        )
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
