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
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from fedscreen._util.canonical import canonical_json
from fedscreen.crypto.envelope import (
    PARTIAL_V1,
    Envelope,
    parse_json,
    sign_envelope,
    verify_envelope,
)
from fedscreen.crypto.signing import SignatureMemo, SigningKey, random_u64, seal_to
from fedscreen.errors import QueryRefused, VerificationError
from fedscreen.protocol.answer import VerifiedAnswer, bounded, stated_epsilon, to_micro
from fedscreen.protocol.combine import sum_interval
from fedscreen.protocol.memo import CellKey, cell_key, spec_canonical, spec_from_json
from fedscreen.query import mechanisms
from fedscreen.query.spec import QuerySpec
from fedscreen.trust.manifest import Manifest, show_id

__all__ = [
    "MODULUS",
    "PARTIAL_VERSION",
    "PartialBody",
    "aggregate",
    "aggregators",
    "answer_digest",
    "check_nodes",
    "city_of",
    "combine_partials",
    "open_shares",
    "parse_partial_envelopes",
    "partial_key",
    "seal_shares",
    "sign_partial",
    "split",
    "thin_city_cells",
    "to_signed",
    "verify_partial",
]

#: shares and partials are integers mod 2⁶⁴: any count fits, and a share is uniform
MODULUS: Final = 2**64
PARTIAL_VERSION: Final = 1
#: the sensitivity of a secure count: one student is in one cell of one node
SENSITIVITY: Final = 1
#: the mechanism a partial states for its own noise
PARTIAL_MECHANISM: Final = "discrete_laplace"


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


def answer_digest(answer: VerifiedAnswer) -> str:
    """SHA-256 (hex) of a node's answer body as signed: the same for a stored answer
    given again, so an aggregator can refuse to sum one body into two partials."""
    return hashlib.sha256(canonical_json(answer.body)).hexdigest()


@dataclass(frozen=True)
class PartialBody:
    """One aggregator's signed, noisy partial sum (typed; the JSON stays what was signed)."""

    aggregator: str
    query_id: str
    query_sha256: str
    query: QuerySpec
    academic_year: str | None
    epsilon: float
    #: node id -> SHA-256 of the answer body summed, in node id order
    nodes: Mapping[str, str]
    scale: float
    #: (group, share sum + noise, mod 2⁶⁴) per cell, in the answers' cell order
    cells: tuple[tuple[tuple[Any, ...], int], ...]


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
    totals: dict[CellKey, int] = {}
    groups: dict[CellKey, list[Any]] = {}
    for node_id in sorted(by_node):
        answer = by_node[node_id]
        shares = open_shares(answer, me=me, key=key)
        for cell, share in zip(answer.answer.cells, shares, strict=True):
            ck = cell_key(cell.group)
            groups.setdefault(ck, list(cell.group))
            totals[ck] = (totals.get(ck, 0) + share) % MODULUS
    for ck in thin_city_cells(spec, [groups[k] for k in totals], by_node, min_nodes):
        del totals[ck]  # dropped by both aggregators alike: the rule reads public facts only
    noise = mechanisms.laplace_noise(len(totals), epsilon=epsilon, sensitivity=SENSITIVITY)
    cells = [
        {"group": groups[ck], "value": (total + draw) % MODULUS}
        for (ck, total), draw in zip(totals.items(), noise.values, strict=True)
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


def city_of(node_id: str) -> str | None:
    """The city (GB/T 2260: first four digits) of a node whose id is a county code."""
    return node_id[:4] if len(node_id) == 6 and node_id.isascii() and node_id.isdigit() else None


def thin_city_cells(
    spec: QuerySpec, groups: Sequence[Sequence[Any]], nodes: Iterable[str], min_nodes: int
) -> list[CellKey]:
    """The cells of a query grouped by ``city_code`` whose city has fewer than ``min_nodes``
    of the summed nodes: such a cell would be (nearly) one county's value, so it is not
    released. Every aggregator and verifier computes the same list from the node ids."""
    if "city_code" not in spec.group_by:
        return []
    column = spec.group_by.index("city_code")
    per_city = Counter(city_of(n) for n in nodes)
    return [
        cell_key(list(group)) for group in groups if per_city.get(str(group[column]), 0) < min_nodes
    ]


def sign_partial(
    body: Mapping[str, Any], key: SigningKey, *, query_id: str, query_sha256: str
) -> Envelope:
    """The aggregator's signed partial for the signed query it answers now.

    As a node's answer, the binding to the query (id and digest of the signed
    payload) is signed around the body, not in it: the body stored once (its noise
    drawn once) is signed again for a resubmitted question under a new query id.
    """
    payload = {"partial": dict(body), "query_id": query_id, "query_sha256": query_sha256}
    return sign_envelope(payload_type=PARTIAL_V1, payload=canonical_json(payload), key=key)


def verify_partial(
    envelope: Envelope,
    *,
    manifest: Manifest,
    aggregator_id: str,
    expected_query: Any,
    memo: SignatureMemo | None = None,
) -> PartialBody:
    """Verify ``aggregator_id``'s signed partial for the signed query ``expected_query``.

    The signer must be the manifest's active coordinator or aggregator named
    ``aggregator_id``; the partial must be for this query (id, digest, question) with
    the noise scale its ε gives. VerificationError otherwise.
    """
    member = next(
        (m for m in manifest.members if m.id == aggregator_id and not m.revoked),
        None,
    )
    if member is None or member.role not in ("coordinator", "aggregator"):
        raise VerificationError(f"{show_id(aggregator_id)} is not an active aggregator")
    payload = verify_envelope(
        envelope,
        expected_payload_type=PARTIAL_V1,
        trusted_keys={member.key_id: member.signing_key},
        memo=memo,
    )
    try:
        partial = _parse_signed(parse_json(payload))
    except (ValueError, TypeError, KeyError, RecursionError, QueryRefused) as exc:
        raise VerificationError(
            f"malformed partial from {aggregator_id}: {bounded(str(exc))}"
        ) from None
    if partial.aggregator != aggregator_id:
        raise VerificationError(f"a partial claims to be {show_id(partial.aggregator)}'s")
    if (partial.query_id, partial.query_sha256) != (expected_query.query_id, expected_query.digest):
        raise VerificationError(f"the partial from {aggregator_id} is for another query")
    expected: QuerySpec = expected_query.spec
    answered = partial.query
    if spec_canonical(answered, without_years=not expected.years) != spec_canonical(expected):
        raise VerificationError(f"the partial from {aggregator_id} states another question")
    asked = expected_query.epsilon
    if asked is not None and to_micro(partial.epsilon) != to_micro(asked):
        raise VerificationError(f"the partial from {aggregator_id} is for another ε")
    scale = mechanisms.scale_for(epsilon=partial.epsilon, sensitivity=SENSITIVITY)
    if abs(partial.scale - scale) > 1e-9 * scale:
        raise VerificationError(f"the partial from {aggregator_id} states another noise scale")
    return partial


def _parse_signed(data: object) -> PartialBody:
    if not isinstance(data, dict) or set(data) != {"partial", "query_id", "query_sha256"}:
        raise TypeError("a signed partial holds partial, query_id and query_sha256")
    query_id, digest = data["query_id"], data["query_sha256"]
    if not isinstance(query_id, str) or not isinstance(digest, str):
        raise TypeError("query_id and query_sha256 are strings")
    return _parse_partial(data["partial"], query_id, digest)


def _parse_partial(data: object, query_id: str, query_sha256: str) -> PartialBody:
    if not isinstance(data, dict):
        raise TypeError("a partial is an object")
    if data.get("version") != PARTIAL_VERSION or data.get("mechanism") != PARTIAL_MECHANISM:
        raise ValueError("unknown partial version or mechanism")
    if not isinstance(data["aggregator"], str):
        raise TypeError("aggregator is a string")
    year = data["academic_year"]
    if year is not None and not isinstance(year, str):
        raise TypeError("academic_year is a string or null")
    if not isinstance(data["query"], dict):
        raise TypeError("the partial's query is an object")
    spec = spec_from_json(data["query"])
    nodes: dict[str, str] = {}
    listed = data["nodes"]
    if not isinstance(listed, list):
        raise TypeError("nodes is a list")
    for entry in listed:
        if not isinstance(entry, dict) or set(entry) != {"node_id", "answer_sha256"}:
            raise ValueError("each node entry holds node_id and answer_sha256")
        node, digest = entry["node_id"], entry["answer_sha256"]
        if not isinstance(node, str) or not isinstance(digest, str) or node in nodes:
            raise ValueError("node entries are distinct strings")
        nodes[node] = digest
    if list(nodes) != sorted(nodes):
        raise ValueError("nodes are listed in id order")
    scale = data["scale"]
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale < 1e15:
        raise ValueError("scale is a positive number")
    cells: list[tuple[tuple[Any, ...], int]] = []
    seen: set[CellKey] = set()
    raw = data["cells"]
    if not isinstance(raw, list):
        raise TypeError("cells is a list")
    width = len(spec.group_by)
    for cell in raw:
        if not isinstance(cell, dict) or set(cell) != {"group", "value"}:
            raise ValueError("each cell holds group and value")
        group, value = cell["group"], cell["value"]
        if not isinstance(group, list) or len(group) != width:
            raise ValueError(f"each cell's group is a list of {width} values")
        if not all(type(v) in (str, int, float) for v in group):
            raise ValueError("group values are scalars")
        if type(value) is not int or not 0 <= value < MODULUS:
            raise ValueError("a partial's value is an integer in [0, 2^64)")
        ck = cell_key(group)
        if ck in seen:
            raise ValueError("a cell is stated twice")
        seen.add(ck)
        cells.append((tuple(group), value))
    return PartialBody(
        aggregator=data["aggregator"],
        query_id=query_id,
        query_sha256=query_sha256,
        query=spec,
        academic_year=year,
        epsilon=stated_epsilon(data["epsilon"], "epsilon"),
        nodes=nodes,
        scale=float(scale),
        cells=tuple(cells),
    )


def to_signed(residue: int) -> int:
    """A sum mod 2⁶⁴ read as the signed integer it stands for (noise can go below 0)."""
    return residue - MODULUS if residue >= MODULUS // 2 else residue


def combine_partials(
    partials: Sequence[PartialBody], *, aggregator_ids: tuple[str, str], threshold: int
) -> list[dict[str, Any]]:
    """The released cells: the two partials' sum, with the 95% interval of two draws.

    ``aggregator_ids``: (coordinator, aggregator), the order the partials come in.
    VerificationError unless the partials are the two aggregators', for the same query,
    ε, academic year, node list and cells. Each cell: ``group``, ``value``, ``lower``,
    ``upper``, ``display``, ``suppressed``, ``nodes`` (as ``combine.combine`` gives).
    """
    if len(partials) != 2 or tuple(p.aggregator for p in partials) != aggregator_ids:
        raise VerificationError("a secure release needs the partials of both aggregators")
    first, second = partials
    same = (
        first.query_id == second.query_id
        and first.query_sha256 == second.query_sha256
        and first.academic_year == second.academic_year
        and to_micro(first.epsilon) == to_micro(second.epsilon)
    )
    if not same:
        raise VerificationError("the two partials are for different queries, years or ε")
    if dict(first.nodes) != dict(second.nodes):
        raise VerificationError("the two aggregators summed different node lists")
    if [cell_key(g) for g, _ in first.cells] != [cell_key(g) for g, _ in second.cells]:
        raise VerificationError("the two partials have different cells")
    cells: list[dict[str, Any]] = []
    for (group, a), (_, b) in zip(first.cells, second.cells, strict=True):
        total = to_signed((a + b) % MODULUS)
        value, low, high, _ = sum_interval([total], [first.scale, second.scale])
        small = value < threshold
        cells.append(
            {
                "group": list(group),
                "value": value,
                "lower": low,
                "upper": high,
                "display": f"< {threshold}" if small else str(value),
                "suppressed": small,
                "nodes": len(first.nodes),
            }
        )
    return cells


def check_nodes(partial: PartialBody, answers: Sequence[VerifiedAnswer]) -> None:
    """The partial summed exactly these verified answers (by node and body digest)."""
    stated = dict(partial.nodes)
    held = {a.node_id: answer_digest(a) for a in answers}
    if stated != held:
        raise VerificationError(
            f"the partial from {partial.aggregator} names other node answers than the release"
        )


def parse_partial_envelopes(value: object) -> list[Envelope]:
    """The partial envelopes a release carries (``secure.partials``: DSSE JSON texts)."""
    if not isinstance(value, list) or len(value) != 2 or not all(isinstance(v, str) for v in value):
        raise VerificationError("a secure release carries its two partials as envelopes")
    return [Envelope.from_json(v) for v in value]
