"""Secure aggregation: exact cells secret-shared to two aggregators, one noise draw each.

A province figure summed from county answers carries one noise draw per county
(√167 times one county's noise). A secure query (``QuerySpec.secure``) instead has
each node split its *exact* cell counts into two additive shares mod 2⁶⁴ (uniform
from libsodium's CSPRNG), seal one share to each aggregator's key (the coordinator
and the manifest's one ``aggregator``; :func:`seal_shares`) and sign both boxes in
its ordinary answer, charged at the query's ε. Each aggregator opens its own boxes,
sums them over exactly the node list it was given, adds one OpenDP discrete-Laplace
draw per cell at the full ε and signs that *partial* (``PARTIAL_V1``; :func:`aggregate`).
The release is the sum of the two partials mod 2⁶⁴ (:func:`combine_partials`):
the exact total plus two noise draws.

What each party learns: a partial alone is uniform (its shares are), so an
aggregator learns nothing of any county; the other aggregator's partial gives it
the total plus that aggregator's noise — ε-DP, as long as one of the two is honest.
If both collude they recover every county's exact counts: hence the county policy
switch (``policy.secure.refused``) and the ledger charge, which stays what the
node's answer would have cost.

Every partial names the node answers it summed (node id and SHA-256 of the signed
answer body), so the analyst and the auditor check that both aggregators summed the
same list and that each entry is a node's verified answer to this query. An honest
aggregator sums each answer body into one partial only (its store enforces it;
:func:`partial_key`): fresh noise on a re-summed answer would let averaging or
differencing spend a county's ε twice.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from fedscreen._util.canonical import canonical_json
from fedscreen.crypto.envelope import parse_json
from fedscreen.crypto.signing import SigningKey, random_u64, seal_to
from fedscreen.errors import QueryRefused, VerificationError
from fedscreen.protocol.answer import VerifiedAnswer, bounded, to_micro
from fedscreen.protocol.memo import cell_key
from fedscreen.protocol.partial import (
    MODULUS,
    PARTIAL_MECHANISM,
    PARTIAL_VERSION,
    SENSITIVITY,
    PartialBody,
    answer_digest,
    check_cells,
    check_nodes,
    city_of,
    combine_partials,
    eligible,
    parse_partial_envelopes,
    released_cells,
    sign_partial,
    stated_min_nodes,
    to_signed,
    two_draw_half_width,
    verify_partial,
)
from fedscreen.query import mechanisms
from fedscreen.query.spec import QuerySpec
from fedscreen.trust.manifest import Manifest, show_id

# the verifiers' half lives in protocol.partial; it is re-exported here, so that one
# module names the whole protocol
__all__ = [
    "MODULUS",
    "PARTIAL_VERSION",
    "PartialBody",
    "aggregate",
    "aggregators",
    "answer_digest",
    "check_cells",
    "check_nodes",
    "city_of",
    "combine_partials",
    "eligible",
    "open_shares",
    "openable",
    "parse_partial_envelopes",
    "partial_key",
    "released_cells",
    "seal_shares",
    "sign_partial",
    "split",
    "stated_min_nodes",
    "to_signed",
    "two_draw_half_width",
    "verify_partial",
]


def aggregators(manifest: Manifest) -> tuple[str, str]:
    """(the coordinator's id, the second aggregator's id) from the manifest.

    QueryRefused unless the manifest names exactly one active coordinator and one
    active aggregator: without two parties there is no secret to keep.
    """
    coordinators = manifest.active("coordinator")
    seconds = manifest.active("aggregator")
    if len(coordinators) != 1 or len(seconds) != 1:
        raise QueryRefused(
            "secure aggregation needs one active coordinator and one active aggregator "
            f"in the manifest (it lists {len(coordinators)} and {len(seconds)})"
        )
    return coordinators[0], seconds[0]


def split(values: Sequence[int]) -> tuple[list[int], list[int]]:
    """Two additive shares mod 2⁶⁴ of each value: the first uniform (CSPRNG), the second
    the value minus it. Either list alone is uniform, whatever the values."""
    first = random_u64(len(values))
    return first, [(v - r) % MODULUS for v, r in zip(values, first, strict=True)]


def _share_plaintext(node_id: str, recipient: str, shares: Sequence[int]) -> bytes:
    # names its node and recipient: a box opened elsewhere than meant is refused
    return canonical_json({"node_id": node_id, "recipient": recipient, "shares": list(shares)})


def seal_shares(
    values: Sequence[int], *, node_id: str, recipients: Sequence[tuple[str, bytes]]
) -> dict[str, str]:
    """Split ``values`` and seal one share list to each of the two recipients.

    ``recipients``: (member id, Ed25519 public key) of the coordinator and the aggregator.
    Returns member id -> base64 sealed box, as the node's answer body carries it.
    """
    if len(recipients) != 2 or recipients[0][0] == recipients[1][0]:
        raise ValueError("shares go to exactly two distinct aggregators")
    first, second = split(values)
    return {
        member: base64.b64encode(seal_to(key, _share_plaintext(node_id, member, shares))).decode()
        for (member, key), shares in zip(recipients, (first, second), strict=True)
    }


def open_shares(answer: VerifiedAnswer, *, me: str, key: SigningKey) -> list[int]:
    """This aggregator's share of each cell of a verified secure answer (cells order).

    VerificationError if the answer holds no box for ``me``, the box does not open, or
    it holds anything but one integer in [0, 2⁶⁴) per cell, for this node and ``me``.
    """
    node = answer.node_id
    boxes = answer.answer.shares or {}
    box = boxes.get(me)
    if box is None:
        raise VerificationError(f"the answer from {node} holds no share for {show_id(me)}")
    try:
        sealed = base64.b64decode(box, validate=True)
    except (binascii.Error, ValueError):
        raise VerificationError(f"the share from {node} is not base64") from None
    plain = key.open_sealed(sealed)
    try:
        data = parse_json(plain)
        if not isinstance(data, dict) or set(data) != {"node_id", "recipient", "shares"}:
            raise ValueError("a share box holds node_id, recipient and shares")
        shares = data["shares"]
        if not isinstance(shares, list) or not all(
            type(s) is int and 0 <= s < MODULUS for s in shares
        ):
            raise ValueError("shares are integers in [0, 2^64)")
    except (ValueError, TypeError, RecursionError) as exc:
        raise VerificationError(f"malformed share from {node}: {bounded(str(exc))}") from None
    if data["node_id"] != node or data["recipient"] != me:
        raise VerificationError(f"the share from {node} was sealed for another node or party")
    if len(shares) != len(answer.answer.cells):
        raise VerificationError(f"the share from {node} has another number of cells")
    return shares


def openable(
    answers: Sequence[VerifiedAnswer], *, me: str, key: SigningKey
) -> tuple[list[VerifiedAnswer], dict[str, str]]:
    """The answers whose share for ``me`` opens, and why each other one does not: a node
    that seals a bad box is left out of the sum (and says so in the release), instead of
    failing it for every county."""
    kept: list[VerifiedAnswer] = []
    left: dict[str, str] = {}
    for answer in answers:
        try:
            open_shares(answer, me=me, key=key)
        except VerificationError as exc:
            left[answer.node_id] = f"its share for {show_id(me)} did not open: {exc}"
            continue
        kept.append(answer)
    return kept, left


def partial_key(query: QuerySpec, epsilon: float, nodes: Mapping[str, str]) -> str:
    """What an aggregator's store keys one partial by: the question, its ε and the answer
    bodies summed. The same key gets the same partial (the same noise) again."""
    material = canonical_json([query.to_json(), to_micro(epsilon), sorted(nodes.items())])
    return hashlib.sha256(material).hexdigest()


def aggregate(
    query: Any,
    answers: Sequence[VerifiedAnswer],
    *,
    me: str,
    key: SigningKey,
    academic_year: str | None,
    min_nodes: int,
) -> dict[str, Any]:
    """This aggregator's partial body for the signed ``query`` (a ``SignedQuery``), to
    store and sign (:func:`sign_partial`) for each query id it answers.

    ``answers``: the nodes' verified secure answers to it, one per node. Opens each
    node's share for ``me``, sums per cell mod 2⁶⁴ and adds one OpenDP discrete-Laplace
    draw per cell at the answers' ε. Raises QueryRefused for fewer than ``min_nodes``
    answers or answers at another ε; VerificationError for a share that does not open.
    """
    spec: QuerySpec = query.spec
    if not spec.secure:
        raise QueryRefused("not a secure query: nothing to aggregate")
    by_node = {a.node_id: a for a in answers}
    if len(by_node) != len(answers):
        raise QueryRefused("a node's answer is listed twice")
    if len(by_node) < min_nodes:
        raise QueryRefused(
            f"secure aggregation needs at least {min_nodes} nodes' answers, "
            f"{len(by_node)} came (fewer would release a county's value)"
        )
    epsilons = {to_micro(a.answer.epsilon) for a in answers}
    if len(epsilons) != 1 or 0 in epsilons:
        raise QueryRefused("the answers do not state one positive ε")
    epsilon = answers[0].answer.epsilon
    totals: dict[Any, int] = {}
    for node_id in sorted(by_node):
        answer = by_node[node_id]
        shares = open_shares(answer, me=me, key=key)
        for cell, share in zip(answer.answer.cells, shares, strict=True):
            ck = cell_key(cell.group)
            totals[ck] = (totals.get(ck, 0) + share) % MODULUS
    # only cells enough answers list (of the city, if grouped by it): the rule reads public
    # facts, so both aggregators and every verifier drop the same ones
    kept = released_cells(spec, answers, min_nodes)
    noise = mechanisms.laplace_noise(len(kept), epsilon=epsilon, sensitivity=SENSITIVITY)
    cells = [
        {"group": group, "value": (totals[ck] + draw) % MODULUS}
        for (ck, group, _), draw in zip(kept, noise.values, strict=True)
    ]
    return {
        "version": PARTIAL_VERSION,
        "aggregator": me,
        "query": spec.to_json(),
        "academic_year": academic_year,
        "epsilon": epsilon,
        "nodes": [
            {"node_id": n, "answer_sha256": answer_digest(by_node[n])} for n in sorted(by_node)
        ],
        "mechanism": PARTIAL_MECHANISM,
        "scale": noise.scale,
        "cells": cells,
    }
