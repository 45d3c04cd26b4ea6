"""A node's signed answer: the bytes it signs, and their verification (coordinator, auditors).

A node signs, as a DSSE envelope (``ANSWER_V1``)::

    {"answer": body, "log_index": i, "checkpoint": note, "charged": ε,
     "query_id": "<32 hex>" | null, "query_sha256": "<64 hex>" | null}

``query_id`` and ``query_sha256`` bind the answer to the analyst's signed query it
answers (``protocol.query.query_digest``: SHA-256 of the signed query payload); a
local ``fedscreen node query`` answer has no signed query and carries nulls, which
no federation verifier accepts. The binding is in this signed payload, not in the
body: a stored body given again for a replayed query id is signed with the id and
digest of the request it answers now.

``verify_answer`` checks, in order: the signature is by the active manifest
member that ``node_id`` names (a node); the payload and body parse into their
types (:class:`AnswerBody`; any shape error is a VerificationError); the answer
says it is from that node; it answers exactly the expected signed query (id,
digest, question, academic year and ε: "another id, another question, another ε"
are all refused); its mechanism is the one the catalogue says the dataset takes
(public: exact, no scale; otherwise noisy, with its scale); its cells are the
query's plan's in the catalogue (flat groups from the public domains, each at most
once) with the noise scale and intervals its ε gives; and the checkpoint it carries
is signed by the same node for its own log and covers the entry.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from fedscreen._util.canonical import canonical_json
from fedscreen.crypto.envelope import ANSWER_V1, Envelope, parse_json, verify_envelope
from fedscreen.crypto.signing import SignatureMemo
from fedscreen.errors import QueryRefused, VerificationError
from fedscreen.policy import Policy, default_policy_dir, load_policy
from fedscreen.policy.default import PROVINCE_FILE
from fedscreen.protocol.compare import REL_TOL
from fedscreen.protocol.memo import CellKey, cell_key, plan_for, spec_canonical, spec_from_json
from fedscreen.query import mechanisms
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
#: the mechanism a public dataset's answer states: exact values, no noise, no ε
PUBLIC_MECHANISM: Final = "none (public data)"
#: the mechanism of a secure query's answer: exact cells as shares sealed to two
#: aggregators (``protocol.secure``), no value in the clear
SHARES_MECHANISM: Final = "additive shares mod 2^64, sealed to two aggregators"
#: longest base64 box of shares an answer may carry (characters): fits 200 cells many times
MAX_SHARE_BOX: Final = 64_000
#: longest reason a verification failure quotes (characters)
MAX_REASON_CHARS: Final = 200
#: the types a cell's group may hold (exactly: JSON gives no subclasses)
_SCALARS: Final = frozenset({str, int, float})


def answer_payload(
    body: dict[str, Any],
    log_index: int,
    checkpoint: str,
    charged: float,
    *,
    query_id: str | None,
    query_sha256: str | None,
) -> bytes:
    """The exact bytes a node signs for an answer.

    ``charged`` is the ε this delivery cost the ledger: the body's ε when it was just
    computed, 0 when the stored answer was given again (identical query, same data).
    ``query_id`` and ``query_sha256`` name the signed query answered (None: a local query).
    """
    answered = {"answer": body, "log_index": log_index, "checkpoint": checkpoint}
    return canonical_json(
        answered | {"charged": charged, "query_id": query_id, "query_sha256": query_sha256}
    )


class ExpectedQuery(Protocol):
    """What an answer is checked against: a ``protocol.query.SignedQuery`` (the message
    modules are independent, so it is named by its shape)."""

    @property
    def query_id(self) -> str: ...
    @property
    def digest(self) -> str: ...
    @property
    def spec(self) -> QuerySpec: ...
    @property
    def epsilon(self) -> float | None: ...


@dataclass(frozen=True)
class Part:
    """A noisy numerator or denominator of a rate or mean cell."""

    value: int
    scale: float


@dataclass(frozen=True)
class AnswerCell:
    """One cell of an answer. Counts and sums: ``value`` (and ``lower``/``upper`` when
    noisy); rates and means: ``numerator`` and ``denominator``; quantiles: ``value``."""

    group: tuple[Any, ...]
    value: int | float | None
    lower: float | None = None
    upper: float | None = None
    numerator: Part | None = None
    denominator: Part | None = None


@dataclass(frozen=True)
class AnswerBody:
    """The typed form of an answer body, as the node signed it."""

    node_id: str
    analyst: str
    query: QuerySpec
    epsilon: float
    mechanism: str
    #: the noise scale of count, sum and quantile answers (None: public data, or a ratio)
    scale: float | None
    cells: tuple[AnswerCell, ...]
    #: a secure answer's sealed shares: recipient member id -> base64 box (else None)
    shares: Mapping[str, str] | None = None

    @property
    def public(self) -> bool:
        """Whether the answer states exact (public) values."""
        return self.mechanism == PUBLIC_MECHANISM


@dataclass(frozen=True)
class VerifiedAnswer:
    """An answer whose signature, origin, query binding and checkpoint were verified."""

    node_id: str
    #: the body as signed (JSON); ``answer`` is its typed form
    body: dict[str, Any]
    log_index: int
    checkpoint: Checkpoint
    checkpoint_note: str
    #: ε this delivery charged (0: the node's stored answer, given again)
    charged: float
    answer: AnswerBody
    query_id: str
    query_sha256: str


@functools.cache
def shipped_catalogue() -> Policy:
    """The provincial catalogue fedscreen ships (package data, read once): what analysts
    and auditors decide public-ness by."""
    return load_policy(default_policy_dir() / PROVINCE_FILE)


def dataset_public(spec: QuerySpec, catalogue: Policy | None = None) -> bool:
    """Whether the catalogue (default: the shipped one) says ``spec``'s dataset is public;
    VerificationError if it does not know the dataset.

    Every role decides this the same way, from the provincial catalogue, never from
    what an answer says about itself.
    """
    dataset = (catalogue or shipped_catalogue()).datasets.get(spec.dataset)
    if dataset is None:
        raise VerificationError(f"dataset {show_id(spec.dataset)} is not in the catalogue")
    return dataset.public


def bounded(text: str) -> str:
    """``text`` cut to ``MAX_REASON_CHARS`` printable characters (for errors and logs)."""
    clean = "".join(c if c.isprintable() else "?" for c in text[: MAX_REASON_CHARS + 1])
    return clean if len(clean) <= MAX_REASON_CHARS else clean[: MAX_REASON_CHARS - 1] + "…"


def verify_answer(
    envelope: Envelope,
    *,
    manifest: Manifest,
    node_id: str,
    expected_query: ExpectedQuery,
    public: bool,
    academic_year: str | None = None,
    catalogue: Policy | None = None,
    memo: SignatureMemo | None = None,
) -> VerifiedAnswer:
    """Verify a node's answer to the signed query ``expected_query``; raises VerificationError.

    ``expected_query`` is the verified signed query; ``public`` comes from
    :func:`dataset_public`.
    ``academic_year``: the year a query without years was pinned to (the release says).
    ``catalogue``: the provincial catalogue the cells are checked against (default:
    the shipped one, as auditors use). ``memo``: signatures already verified (the
    coordinator's, which checked the answer once on receipt).
    """
    member = manifest.member(node_id, role="node")
    payload = verify_envelope(
        envelope,
        expected_payload_type=ANSWER_V1,
        trusted_keys={member.key_id: member.signing_key},
        memo=memo,
    )
    try:
        data = parse_json(payload)
        if not isinstance(data, dict) or not isinstance(data.get("answer"), dict):
            raise TypeError("an answer is an object holding an answer object")
        body, index, note = data["answer"], data["log_index"], data["checkpoint"]
        if isinstance(index, bool) or not isinstance(index, int) or not isinstance(note, str):
            raise TypeError("log_index must be an integer and checkpoint a string")
        charged = stated_epsilon(data.get("charged"), "charged")
        query_id, digest = data.get("query_id"), data.get("query_sha256")
        if not isinstance(query_id, str | None) or not isinstance(digest, str | None):
            raise TypeError("query_id and query_sha256 must be strings or null")
        typed = parse_answer_body(body)
    except (ValueError, KeyError, TypeError, RecursionError, QueryRefused) as exc:
        raise VerificationError(f"malformed answer from {node_id}: {bounded(str(exc))}") from None
    if typed.node_id != node_id:
        raise VerificationError(
            f"answer claims to be from {show_id(typed.node_id)}, not {node_id!r}"
        )
    if query_id is None or digest is None:
        raise VerificationError(
            f"the answer from {node_id} answers no signed query (a local answer)"
        )
    if query_id != expected_query.query_id:
        raise VerificationError(f"the answer from {node_id} answers another query id")
    if digest != expected_query.digest:
        raise VerificationError(
            f"the answer from {node_id} answers another signed query (its digest differs)"
        )
    _check_question(typed.query, expected_query.spec, academic_year, node_id)
    _check_mechanism(typed, public=public, node_id=node_id)
    _check_epsilon(typed, charged, expected_query.epsilon, public=public, node_id=node_id)
    _check_cells(typed, catalogue or shipped_catalogue(), node_id=node_id)
    origin = member_origin("node", node_id)
    checkpoint = parse_and_verify_note(note, verifiers={origin: member.signing_key}, memo=memo)
    if checkpoint.origin != origin or not 0 <= index < checkpoint.size:
        raise VerificationError(f"the checkpoint in {node_id}'s answer does not cover its entry")
    return VerifiedAnswer(node_id, body, index, checkpoint, note, charged, typed, query_id, digest)


def _check_question(
    answered: QuerySpec, expected: QuerySpec, year: str | None, node_id: str
) -> None:
    # a query without a period is answered for one academic year, the same at every node
    if not expected.years and (
        len(answered.years) != 1 or (year is not None and answered.years[0] != year)
    ):
        raise VerificationError(
            f"the answer from {node_id} is for another academic year than the release's"
        )
    if spec_canonical(answered, without_years=not expected.years) != spec_canonical(expected):
        raise VerificationError(f"the answer from {node_id} answers a different question")


def _check_epsilon(
    body: AnswerBody, charged: float, asked: float | None, *, public: bool, node_id: str
) -> None:
    stated = to_micro(body.epsilon)
    if public and stated != 0:
        raise VerificationError(f"the answer from {node_id} charges ε for public data")
    if not public and asked is not None and stated != to_micro(asked):
        raise VerificationError(f"the answer from {node_id} is for another ε than asked")
    if to_micro(charged) not in (0, stated):
        raise VerificationError(f"the answer from {node_id} charged another ε than it states")


def _check_mechanism(body: AnswerBody, *, public: bool, node_id: str) -> None:
    if body.query.secure != (body.mechanism == SHARES_MECHANISM) or (
        body.query.secure and (public or body.shares is None or body.scale is not None)
    ):
        # a secure query's answer holds sealed shares and nothing else: a node cannot
        # put a county's value (noisy or not) where only shares belong, nor the reverse
        raise VerificationError(
            f"the answer from {node_id} does not use the secure mechanism as its query says"
        )
    if body.query.secure:
        return
    if body.public != public:
        kind = "public" if public else "noisy"
        raise VerificationError(
            f"the answer from {node_id} does not use the mechanism for {kind} data"
        )
    if not public and body.query.measure.kind not in ("rate", "mean") and body.scale is None:
        raise VerificationError(f"malformed answer from {node_id}: a noisy answer needs its scale")
    if public and body.scale is not None:
        # readers must never take exact public figures for noisy ones, or the reverse
        raise VerificationError(f"the answer from {node_id} states a noise scale for public data")


def _check_cells(body: AnswerBody, catalogue: Policy, *, node_id: str) -> None:
    """The cells are the query's plan's, each once, with the noise the plan implies.

    A county may narrow a public domain (a node omits cells) but never adds a cell
    or states one twice (the province would count it twice). A node's noise scale
    and interval are what its ε and the catalogue's sensitivity give (a county may
    only narrow a sum's bounds, so lower its sensitivity): a node cannot shrink the
    province's interval by stating less noise than it drew.
    """
    try:
        plan, known = plan_for(body.query, catalogue)
    except QueryRefused:
        raise VerificationError(
            f"the answer from {node_id} answers a query the catalogue refuses"
        ) from None
    seen: set[CellKey] = set()
    for cell in body.cells:
        key = cell_key(cell.group)
        if key not in known:
            raise VerificationError(
                f"the answer from {node_id} has a cell outside the query's public domains"
            )
        if key in seen:
            raise VerificationError(f"the answer from {node_id} states a cell twice")
        seen.add(key)
    if body.public:
        return
    kind, epsilon = body.query.measure.kind, body.epsilon
    if body.shares is not None:
        if epsilon <= 0 or any(c.value is not None for c in body.cells):
            raise VerificationError(f"the secure answer from {node_id} states a value or no ε")
        return
    if epsilon <= 0:
        raise VerificationError(f"the noisy answer from {node_id} states no ε")
    if kind in ("count", "sum"):
        _check_scale(body.scale, epsilon, plan.sensitivity, node_id)
        half = mechanisms.half_width(body.scale or 0.0)
        for cell in body.cells:
            value = cell.value if isinstance(cell.value, int) else 0
            # as floats, as parsed: beyond 2^53 a stated integer bound is rounded too
            if (cell.lower, cell.upper) != (float(value - half), float(value + half)):
                raise VerificationError(
                    f"the answer from {node_id} states another interval than its noise gives"
                )
    elif kind in ("rate", "mean"):
        # ε is split evenly between the numerator and the count (node ``cells.release``)
        for cell in body.cells:
            if cell.numerator is None or cell.denominator is None:
                raise VerificationError(f"malformed answer from {node_id}: a ratio needs parts")
            _check_scale(cell.numerator.scale, epsilon / 2, plan.sensitivity, node_id)
            _check_scale(cell.denominator.scale, epsilon / 2, 1, node_id)
    else:
        q = body.query.measure.q or 0.0
        if body.scale is None or not math.isclose(
            body.scale, mechanisms.quantile_scale(q=q, epsilon=epsilon), rel_tol=REL_TOL
        ):
            raise VerificationError(f"the answer from {node_id} states another noise scale")
        if any(c.value is not None and c.value not in plan.candidates for c in body.cells):
            raise VerificationError(f"the answer from {node_id} states a non-candidate value")


def _check_scale(scale: float | None, epsilon: float, sensitivity: int, node_id: str) -> None:
    """``scale`` is sensitivity/ε for a whole sensitivity in [1, ``sensitivity``]."""
    held = 0 if scale is None else round(scale * epsilon)
    if not 1 <= held <= sensitivity or not math.isclose(
        scale or 0.0, mechanisms.scale_for(epsilon=epsilon, sensitivity=held), rel_tol=REL_TOL
    ):
        raise VerificationError(f"the answer from {node_id} states another noise scale")


def parse_answer_body(body: Mapping[str, Any]) -> AnswerBody:
    """The typed form of a signed answer body; ValueError/TypeError/KeyError on a bad shape.

    What ``combine`` reads must be there: every cell an object with a ``group`` list and,
    for counts and sums, an integer ``value`` (and finite ``lower``/``upper`` when
    noisy); for rates and means, a numerator and a denominator with an integer
    ``value`` and a ``scale`` each.
    """
    if not isinstance(body.get("query"), dict):
        raise TypeError("the answer's query must be an object")
    query = spec_from_json(body["query"])
    node_id, analyst, mechanism = body["node_id"], body["analyst"], body["mechanism"]
    if not all(isinstance(v, str) for v in (node_id, analyst, mechanism)):
        raise TypeError("node_id, analyst and mechanism must be strings")
    epsilon = stated_epsilon(body["epsilon"], "epsilon")
    scale = _scale(body["scale"]) if "scale" in body else None
    kind = query.measure.kind
    noisy = mechanism != PUBLIC_MECHANISM
    cells = body.get("cells")
    if not isinstance(cells, list):
        raise ValueError("an answer's cells must be a list")
    width = len(query.group_by)
    shared = mechanism == SHARES_MECHANISM  # a secure answer: groups here, values in shares
    if "shares" in body and not shared:
        raise ValueError("only a secure answer carries shares")
    return AnswerBody(
        node_id, analyst, query, epsilon, mechanism, scale,
        tuple(_group_only(c, width) if shared else _cell(c, kind, width, noisy=noisy)
              for c in cells),
        _boxes(body.get("shares")) if shared else None,
    )  # fmt: skip


def _group_only(cell: object, width: int) -> AnswerCell:
    # a secure answer's cell names its group and nothing else: its value is in the shares
    if not isinstance(cell, dict) or set(cell) != {"group"}:
        raise ValueError("a secure answer's cell holds its group only")
    return _cell(cell, "quantile", width, noisy=True)


def _boxes(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) != 2:
        raise ValueError("a secure answer carries shares for exactly two aggregators")
    if not all(isinstance(b, str) and len(b) <= MAX_SHARE_BOX for b in value.values()):
        raise ValueError("shares map member ids to sealed boxes (base64 text)")
    return dict(value)


def _cell(cell: object, kind: str, width: int, *, noisy: bool) -> AnswerCell:
    if not isinstance(cell, dict) or not isinstance(cell.get("group"), list):
        raise ValueError("each cell must be an object with a group list")
    group = tuple(cell["group"])
    # a group is one value per GROUP BY column: flat scalars, so no reader ever recurses
    # (exact types, as JSON gives them: a bool is no int here)
    if len(group) != width or not _SCALARS.issuperset(map(type, group)):
        raise ValueError(f"each cell's group must be a list of {width} values")
    stated = cell.get("value")
    if kind in ("count", "sum"):
        count = _integer(stated, "value")
        if not noisy:
            return _checked_cell(group, count, None, None)
        lower, upper = _finite(cell.get("lower"), "lower"), _finite(cell.get("upper"), "upper")
        return _checked_cell(group, count, lower, upper)
    if kind in ("rate", "mean"):
        parts = []
        for name in ("numerator", "denominator"):
            part = cell.get(name)
            if not isinstance(part, dict):
                raise ValueError(f"a {kind} cell needs a {name} object")
            count = _integer(part.get("value"), f"{name} value")
            parts.append(Part(count, _scale(part.get("scale"))))
        ratio = None if stated is None else _finite(stated, "value")
        return AnswerCell(group, ratio, numerator=parts[0], denominator=parts[1])
    return AnswerCell(group, None if stated is None else _finite(stated, "value"))


def _checked_cell(group: tuple[Any, ...], value: int, lower: Any, upper: Any) -> AnswerCell:
    # AnswerCell(group, value, lower, upper) of values _cell has checked, made without the
    # frozen dataclass's object.__setattr__ per field: half the cost of a count's cell
    made = object.__new__(AnswerCell)
    object.__setattr__(made, "__dict__", {"group": group, "value": value, "lower": lower,
                       "upper": upper, "numerator": None, "denominator": None})  # fmt: skip
    return made


def to_micro(epsilon: float) -> int:
    """ε in whole µε, rounded up as the ledger charges (``protocol.budget.to_micro``; the
    message modules are independent, and a test pins the two together)."""
    if epsilon <= 0:
        return 0
    return max(1, math.ceil(epsilon * 1_000_000 - 1e-6))


def stated_epsilon(value: object, what: str) -> float:
    """An ε a signed message states (an answer, a release): a finite number within
    [0, ``MAX_STATED_EPSILON``]; ValueError otherwise (also for an int too large for a
    float, which ``float()`` would raise OverflowError for)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number")
    if not 0 <= value <= MAX_STATED_EPSILON:  # refuses NaN, infinity and huge ints
        raise ValueError(f"{what} must be within [0, {MAX_STATED_EPSILON:g}]")
    return float(value)


def _integer(value: object, what: str) -> int:
    if type(value) is not int:  # exact: a bool is no count (every cell comes here)
        raise ValueError(f"a cell's {what} must be an integer")
    if not -MAX_VALUE <= value <= MAX_VALUE:
        raise ValueError(f"a cell's {what} is out of range")
    return value


def _finite(value: object, what: str) -> float:
    if type(value) is not float and type(value) is not int:  # exact: a bool is no number
        raise ValueError(f"a cell's {what} must be a number")
    if not -MAX_VALUE <= value <= MAX_VALUE:  # also refuses NaN and infinity
        raise ValueError(f"a cell's {what} is out of range")
    return float(value)


def _scale(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("a noise scale must be a number")
    if not 0 <= value <= MAX_SCALE:  # also refuses NaN
        raise ValueError(f"a noise scale must be within [0, {MAX_SCALE:g}]")
    return float(value)
