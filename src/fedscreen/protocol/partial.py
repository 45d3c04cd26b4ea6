"""What every verifier of a secure release checks: the partial's format, which node answers
it may sum, which cells it releases, and how two partials make the released figures.

``protocol.secure`` makes shares and partials; this module holds the rules the two
aggregators apply alike and the analyst and auditor check again, all from public facts
(the signed answers, the node ids, the catalogue):

* **Which answers** (:func:`eligible`): a county's policy may ask that it be summed only
  into releases over at least its own ``min_nodes`` (stated in its signed answer); the
  largest set in which every member's wish holds, and at least the catalogue's, is summed.
* **Which cells** (:func:`released_cells`): a cell is released only when at least
  ``min_nodes`` of the summed answers list it (a county that narrowed a domain does not)
  and, grouped by ``city_code``, only that city's counties count. So no released cell is
  (nearly) one county's value.
* **The figures** (:func:`combine_partials`): the two partials' sum mod 2⁶⁴ with the exact
  95% interval of two discrete-Laplace draws (:func:`two_draw_half_width`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
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
from fedscreen.crypto.signing import SignatureMemo, SigningKey
from fedscreen.errors import QueryRefused, VerificationError
from fedscreen.protocol.answer import VerifiedAnswer, bounded, stated_epsilon, to_micro
from fedscreen.protocol.memo import CellKey, cell_key, spec_canonical, spec_from_json
from fedscreen.query import mechanisms
from fedscreen.query.spec import QuerySpec
from fedscreen.trust.manifest import Manifest, show_id

#: shares and partials are integers mod 2⁶⁴: any count fits, and a share is uniform
MODULUS: Final = 2**64
PARTIAL_VERSION: Final = 1
#: the sensitivity of a secure count: one student is in one cell of one node
SENSITIVITY: Final = 1
#: the mechanism a partial states for its own noise
PARTIAL_MECHANISM: Final = "discrete_laplace"
#: the largest ``min_nodes`` an answer may state (a province has a few hundred nodes)
MAX_STATED_MIN_NODES: Final = 100_000


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


def city_of(node_id: str) -> str | None:
    """The city (GB/T 2260: first four digits) of a node whose id is a county code."""
    return node_id[:4] if len(node_id) == 6 and node_id.isascii() and node_id.isdigit() else None


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
    _, partial = read_partial(
        envelope, member_id=aggregator_id, key_id=member.key_id, key=member.signing_key, memo=memo
    )
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


def read_partial(
    envelope: Envelope,
    *,
    member_id: str,
    key_id: str,
    key: bytes,
    memo: SignatureMemo | None = None,
) -> tuple[dict[str, Any], PartialBody]:
    """``member_id``'s signed partial: its body as signed (JSON) and its typed form, once
    the signature under ``key`` verifies and the body parses and names that member.

    No check against a query: :func:`verify_partial` adds those; an auditor reading an
    aggregator's log pairs each partial with its request later. VerificationError otherwise.
    """
    payload = verify_envelope(
        envelope, expected_payload_type=PARTIAL_V1, trusted_keys={key_id: key}, memo=memo
    )
    try:
        data = parse_json(payload)
        partial = _parse_signed(data)
    except (ValueError, TypeError, KeyError, RecursionError, QueryRefused) as exc:
        raise VerificationError(
            f"malformed partial from {member_id}: {bounded(str(exc))}"
        ) from None
    if partial.aggregator != member_id:
        raise VerificationError(f"a partial claims to be {show_id(partial.aggregator)}'s")
    return data["partial"], partial


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
    partials: Sequence[PartialBody],
    *,
    aggregator_ids: tuple[str, str],
    threshold: int,
    contributors: Mapping[CellKey, int] | None = None,
) -> list[dict[str, Any]]:
    """The released cells: the two partials' sum, with the 95% interval of two draws.

    ``aggregator_ids``: (coordinator, aggregator), the order the partials come in.
    VerificationError unless the partials are the two aggregators', for the same query,
    ε, academic year, node list and cells. Each cell: ``group``, ``value``, ``lower``,
    ``upper``, ``display``, ``suppressed``, ``nodes`` (as ``combine.combine`` gives: the
    cell's ``contributors``, default every summed node).
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
    if not math.isclose(first.scale, second.scale, rel_tol=1e-12):
        raise VerificationError("the two partials state different noise scales")
    half = two_draw_half_width(first.scale)
    cells: list[dict[str, Any]] = []
    for (group, a), (_, b) in zip(first.cells, second.cells, strict=True):
        value = to_signed((a + b) % MODULUS)
        low, high = float(value - half), float(value + half)
        small = value < threshold
        cells.append(
            {
                "group": list(group),
                "value": value,
                "lower": low,
                "upper": high,
                "display": f"< {threshold}" if small else str(value),
                "suppressed": small,
                "nodes": len(first.nodes)
                if contributors is None
                else contributors.get(cell_key(group), 0),
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


def stated_min_nodes(answer: VerifiedAnswer) -> int:
    """The fewest nodes the answering county's policy lets its answer be summed with
    (``min_nodes`` in its signed body; 0 if it states none). VerificationError if malformed."""
    value = answer.body.get("min_nodes", 0)
    if type(value) is not int or not 0 <= value <= MAX_STATED_MIN_NODES:
        raise VerificationError(f"the answer from {answer.node_id} states a malformed min_nodes")
    return value


def eligible(
    answers: Sequence[VerifiedAnswer], floor: int
) -> tuple[list[VerifiedAnswer], dict[str, str]]:
    """The answers a partial sums, and why each other one is left out.

    The largest set, taken in the order of the counties' stated ``min_nodes`` (then node
    id), whose size is at least the catalogue's ``floor`` and every member's wish; if no
    set is large enough, none (every answer is left out, and no partial is made).
    """
    wishes = sorted(((stated_min_nodes(a), a.node_id), a) for a in answers)
    kept = len(wishes)
    while kept and kept < max(floor, wishes[kept - 1][0][0]):
        kept -= 1
    chosen = [a for _, a in wishes[:kept]]
    left = {
        a.node_id: f"its county sums its answer only with at least {wish} nodes' answers"
        for (wish, _), a in wishes[kept:]
    }
    return sorted(chosen, key=lambda a: a.node_id), left


def released_cells(
    spec: QuerySpec, answers: Sequence[VerifiedAnswer], min_nodes: int
) -> list[tuple[CellKey, list[Any], int]]:
    """(key, group, contributors) of each cell a partial over ``answers`` releases, in the
    order the answers (by node id) first list them. A cell's contributors are the answers
    that list it — only the city's counties when grouped by ``city_code`` — and a cell
    with fewer than ``min_nodes`` is not released."""
    column = spec.group_by.index("city_code") if "city_code" in spec.group_by else None
    counted: dict[CellKey, int] = {}
    groups: dict[CellKey, list[Any]] = {}
    for answer in sorted(answers, key=lambda a: a.node_id):
        for cell in answer.answer.cells:
            ck = cell_key(cell.group)
            groups.setdefault(ck, list(cell.group))
            mine = column is None or city_of(answer.node_id) == str(cell.group[column])
            counted[ck] = counted.get(ck, 0) + (1 if mine else 0)
    return [(ck, groups[ck], n) for ck, n in counted.items() if n >= min_nodes]


def check_cells(
    partial: PartialBody, answers: Sequence[VerifiedAnswer], min_nodes: int
) -> dict[CellKey, int]:
    """The partial releases exactly the cells :func:`released_cells` gives for its answers,
    in that order; returns each cell's contributors. VerificationError otherwise."""
    expected = released_cells(partial.query, answers, min_nodes)
    if [cell_key(group) for group, _ in partial.cells] != [ck for ck, _, _ in expected]:
        raise VerificationError(
            f"the partial from {partial.aggregator} states other cells than its answers give"
        )
    return {ck: n for ck, _, n in expected}


def two_draw_half_width(scale: float, alpha: float = mechanisms.ALPHA) -> int:
    """The smallest whole h with P(|N₁ + N₂| ≤ h) ≥ 1 − alpha, for two independent
    discrete-Laplace draws of ``scale`` (exact: the sum's tail has a closed form).

    With q = e^(−1/scale) and c = (1−q)/(1+q), P(N₁+N₂ = k) = c² q^|k| ((|k|+1) + 2q²/(1−q²)),
    so P(N₁+N₂ > h) = c² q^(h+1) [((h+2) − (h+1)q)/(1−q)² + 2q²/((1−q²)(1−q))].
    A normal approximation undercovers (92.7% at ε = 1): the noise is whole numbers.
    """
    one_minus_q = -math.expm1(-1.0 / scale)
    q = 1.0 - one_minus_q
    c = one_minus_q / (1.0 + q)
    extra = 2 * q * q / ((1.0 + q) * one_minus_q)

    def outside(h: int) -> float:  # P(|N₁ + N₂| > h)
        tail = q ** (h + 1) * (((h + 2) - (h + 1) * q) / one_minus_q**2 + extra / one_minus_q)
        return 2 * c * c * tail

    low, high = 0, 1
    while outside(high) > alpha:
        high *= 2
    while low < high:  # the smallest h whose outside mass is at most alpha
        mid = (low + high) // 2
        if outside(mid) > alpha:
            low = mid + 1
        else:
            high = mid
    return low
