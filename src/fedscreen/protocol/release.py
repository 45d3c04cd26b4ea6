"""Releases: the coordinator's signed combination of the nodes' signed answers.

A release body holds the analyst's query (and the digest of its signed payload),
the academic year a query without years was pinned to, the digest of the
catalogue the coordinator combined under, which nodes answered (each with the
SHA-256 of its answer envelope, its ε and its log checkpoint) and which did not,
with why (``missing_reasons``: ``"refused: <the node's reason>"``, ``"not
connected"``, ``"no answer before the deadline"``, ``"its answer did not verify:
<reason>"``, ...), each node's cells, and the provincial cells computed by
``combine.combine`` from exactly those answers — so anyone holding the answers
can recompute the release and compare (``compare.same_figures``).

``check_release`` parses a body into :class:`ReleaseBody` first: any shape error
is a VerificationError, never a crash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from fedscreen._util.canonical import canonical_json
from fedscreen.errors import QueryRefused, VerificationError
from fedscreen.policy import Policy
from fedscreen.policy.digest import digest as policy_digest
from fedscreen.protocol.answer import (
    VerifiedAnswer,
    bounded,
    shipped_catalogue,
    stated_epsilon,
)
from fedscreen.protocol.combine import NodeCells, combine
from fedscreen.protocol.compare import same_figures
from fedscreen.protocol.partial import (
    PartialBody,
    check_cells,
    check_nodes,
    combine_partials,
    eligible,
    parse_partial_envelopes,
    verify_partial,
)
from fedscreen.protocol.query import SignedQuery
from fedscreen.protocol.versioning import versioning
from fedscreen.query.spec import QuerySpec
from fedscreen.trust.manifest import Manifest, show_id
from fedscreen.trust.scope import describe, scope_contains

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
    public: bool,
    academic_year: str | None = None,
    catalogue_digest: str = "",
    eligible: Mapping[str, int] | None = None,
    missing_reasons: Mapping[str, str] | None = None,
    secure: SecureOutcome | None = None,
    previous: tuple[int, str] | None = None,
) -> dict[str, Any]:
    """The body the coordinator signs for one query.

    ``previous``: the version and envelope digest (SHA-256 hex) of the release this one
    follows, when late answers (an offline node's, by file) make a new version of it.

    ``public`` (from the catalogue) decides how the cells combine; ``academic_year``
    is the year a query without years was pinned to (None when the query names years).
    A secure query's figures are its two aggregators' partials combined (``secure``:
    both partials, or why there are none — then it releases no figure at all).
    """
    ordered = sorted(answers)
    reasons = missing_reasons or {}
    nodes = [NodeCells(n, answers[n][1].body) for n in ordered]
    return {
        "version": RELEASE_VERSION,
        "coordinator": coordinator_id,
        "query_id": query.query_id,
        "query_sha256": query.digest,
        "analyst": query.analyst,
        "query": query.spec.to_json(),
        "academic_year": academic_year,
        "catalogue_digest": catalogue_digest,
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
                "epsilon": answers[n][1].answer.epsilon,
                "log_index": answers[n][1].log_index,
                "checkpoint": answers[n][1].checkpoint_note,
            }
            for n in ordered
        ],
        "per_node": {n: answers[n][1].body["cells"] for n in ordered},
        "threshold": threshold,
        # the auditor recomputes exactly this from the logged answers
        "province": (
            combine(query.spec.measure.kind, nodes, threshold=threshold, public=public)
            if secure is None
            else secure.cells(threshold)
        ),
        **({} if secure is None else {"secure": secure.to_json()}),
        **(
            {}
            if previous is None
            else {"release_version": previous[0] + 1, "supersedes": previous[1]}
        ),
    }


@dataclass(frozen=True)
class SecureOutcome:
    """How a secure query's figures came about: the two aggregators' signed partials
    (coordinator's first), or the reason there are none."""

    aggregators: tuple[str, str]
    #: the partial envelopes as signed (JSON text) with their verified bodies
    partials: tuple[tuple[str, PartialBody], ...] = ()
    failure: str | None = None

    #: cell key -> how many summed answers it combines (``partial.check_cells``)
    contributors: Mapping[Any, int] | None = None

    def cells(self, threshold: int) -> list[dict[str, Any]]:
        """The released cells: none without both partials."""
        if not self.partials:
            return []
        bodies = [body for _, body in self.partials]
        return combine_partials(
            bodies,
            aggregator_ids=self.aggregators,
            threshold=threshold,
            contributors=self.contributors,
        )

    def to_json(self) -> dict[str, Any]:
        """The release's ``secure`` section."""
        return {
            "aggregators": list(self.aggregators),
            "partials": [text for text, _ in self.partials],
            "failure": self.failure,
        }


@dataclass(frozen=True)
class ReleasedAnswer:
    """One answer as a release names it."""

    node_id: str
    envelope_sha256: str
    epsilon: float
    log_index: int
    checkpoint: str


@dataclass(frozen=True)
class ReleaseBody:
    """The typed form of a release body (the JSON stays what was signed)."""

    coordinator: str
    query_id: str
    query_sha256: str
    analyst: str
    query: QuerySpec
    academic_year: str | None
    catalogue_digest: str
    targeted: tuple[str, ...]
    answered: tuple[str, ...]
    missing: tuple[str, ...]
    missing_reasons: Mapping[str, str]
    answers: tuple[ReleasedAnswer, ...]
    per_node: Mapping[str, list[Any]]
    threshold: int
    province: list[Any]
    coverage: float = 0.0
    population: Mapping[str, Any] | None = None
    #: 1 for a query's release; n + 1 for the version adding late answers to version n
    release_version: int = 1
    #: SHA-256 (hex) of the release envelope this version follows (None for version 1)
    supersedes: str | None = None

    def answer_digests(self) -> dict[str, str]:
        """Node id -> SHA-256 (hex) of the answer envelope the release names."""
        return {a.node_id: a.envelope_sha256 for a in self.answers}


def parse_release(body: object) -> ReleaseBody:
    """The typed form of a release body; VerificationError on any shape error."""
    try:
        if not isinstance(body, Mapping):
            raise TypeError("a release body is an object")
        answers = tuple(_released_answer(a) for a in _list(body["answers"], "answers"))
        per_node = body["per_node"]
        if not isinstance(per_node, Mapping) or not all(
            isinstance(c, list) for c in per_node.values()
        ):
            raise TypeError("per_node must map node ids to cell lists")
        reasons = body.get("missing_reasons") or {}
        if not isinstance(reasons, Mapping) or not all(
            isinstance(v, str) for v in reasons.values()
        ):
            raise TypeError("missing_reasons must map node ids to texts")
        year, threshold = body.get("academic_year"), body["threshold"]
        if not isinstance(year, str | None):
            raise TypeError("academic_year must be a string or null")
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
            raise TypeError("threshold must be a whole number")
        if not isinstance(body["query"], dict):
            raise TypeError("query must be an object")
        parsed = ReleaseBody(
            coordinator=_text(body["coordinator"], "coordinator"),
            query_id=_text(body["query_id"], "query_id"),
            query_sha256=_text(body.get("query_sha256"), "query_sha256"),
            analyst=_text(body["analyst"], "analyst"),
            query=QuerySpec.from_json(body["query"]),
            academic_year=year,
            catalogue_digest=_text(body.get("catalogue_digest", ""), "catalogue_digest"),
            targeted=_ids(body["targeted"], "targeted"),
            answered=_ids(body["answered"], "answered"),
            missing=_ids(body["missing"], "missing"),
            missing_reasons=dict(reasons),
            answers=answers,
            per_node=dict(per_node),
            threshold=threshold,
            province=_list(body["province"], "province"),
            coverage=_share(body["coverage"], "coverage"),
            population=_population(body.get("population")),
            **versioning(body),
        )
    except (KeyError, TypeError, ValueError, RecursionError, QueryRefused) as exc:
        raise VerificationError(f"malformed release: {bounded(_why(exc))}") from None
    if len({a.node_id for a in answers}) != len(answers):
        raise VerificationError("malformed release: a node's answer is named twice")
    return parsed


def check_release(
    body: object,
    query: SignedQuery,
    answers: Sequence[VerifiedAnswer],
    *,
    public: bool,
    catalogue: Policy | None = None,
    manifest: Manifest | None = None,
) -> ReleaseBody:
    """Everything a release states from the answers must be those answers.

    ``answers`` are the verified answers the release names; ``public`` is what the
    catalogue says of the query's dataset. The release must be for this signed query
    (id and digest) and its academic year, name exactly those nodes as answered,
    repeat each node's cells, ε and checkpoint as the node signed them, and hold their
    combination as the provincial cells (``same_figures``); otherwise VerificationError.
    (Readers of a release use all of these fields, so a coordinator must not be able
    to change any of them.) The publication threshold must be the catalogue's
    (``catalogue``, default: the shipped one), the catalogue digest (when stated)
    that catalogue's, and the coverage the share of asked nodes that answered.
    A secure query's release (``manifest`` needed) must carry both aggregators' partials,
    each signed by its aggregator, for this query, over exactly these answers, and
    state their combination; or, with a stated failure, no figure at all.
    Returns the parsed body.
    """
    release = parse_release(body)
    catalogue = catalogue or shipped_catalogue()
    if release.threshold != catalogue.limits.publication_threshold:
        raise VerificationError("the release uses another publication threshold than the catalogue")
    if release.catalogue_digest and release.catalogue_digest != policy_digest(catalogue):
        raise VerificationError("the release was combined under another catalogue")
    targeted = len(release.targeted)
    if release.coverage != (len(release.answered) / targeted if targeted else 0.0):
        raise VerificationError("the release states another coverage than its nodes give")
    try:
        _check_release(release, query, answers, public=public)
        if manifest is not None:
            _check_scope(release, query, manifest)
        if query.spec.secure:
            min_nodes = (catalogue or shipped_catalogue()).secure.min_nodes
            _check_secure(body, release, query, answers, manifest, min_nodes)
        elif isinstance(body, Mapping) and "secure" in body:
            raise VerificationError("a release of a plain query states secure partials")
    except (KeyError, TypeError, ValueError, ArithmeticError, RecursionError) as exc:
        # answers whose cells do not combine: never a crash
        raise VerificationError(f"malformed release: {bounded(_why(exc))}") from None
    return release


def _check_release(
    release: ReleaseBody, query: SignedQuery, answers: Sequence[VerifiedAnswer], *, public: bool
) -> None:
    if release.query_id != query.query_id or release.query_sha256 != query.digest:
        raise VerificationError("the release is for another query")
    if canonical_json(release.query.to_json()) != canonical_json(query.spec.to_json()):
        raise VerificationError("the release states another query than the analyst signed")
    if query.spec.years and release.academic_year is not None:
        raise VerificationError("the release pins a year on a query that names its years")
    if not query.spec.years and release.academic_year is None:
        raise VerificationError("the release does not say which academic year it is for")
    for answer in answers:
        if not query.spec.years and answer.answer.query.years != (release.academic_year,):
            raise VerificationError(f"{answer.node_id} answered for another academic year")
    ordered = tuple(sorted(a.node_id for a in answers))
    if release.answered != ordered or tuple(sorted(release.per_node)) != ordered:
        raise VerificationError("the release lists other answering nodes than its answers")
    stated = {a.node_id: a for a in release.answers}
    if tuple(sorted(stated)) != ordered:
        raise VerificationError("the release names other answers than its answering nodes")
    for answer in answers:
        node = answer.node_id
        if canonical_json(release.per_node[node]) != canonical_json(answer.body["cells"]):
            raise VerificationError(f"the release changes {node}'s cells")
        if stated[node].epsilon != answer.answer.epsilon:
            raise VerificationError(f"the release misstates {node}'s ε")
        if (stated[node].log_index, stated[node].checkpoint) != (
            answer.log_index,
            answer.checkpoint_note,
        ):
            raise VerificationError(f"the release misstates {node}'s log checkpoint")
    if query.nodes and sorted(release.targeted) != sorted(query.nodes):
        raise VerificationError("the release names other nodes asked than the analyst signed")
    if sorted(release.missing) != sorted(set(release.targeted) - set(ordered)):
        raise VerificationError("the release's missing nodes are not the ones asked less answered")
    if query.spec.secure:
        return  # figures from the partials: _check_secure
    nodes = [NodeCells(a.node_id, a.body) for a in sorted(answers, key=lambda a: a.node_id)]
    recomputed = combine(query.spec.measure.kind, nodes, threshold=release.threshold, public=public)
    if not same_figures(recomputed, release.province):
        raise VerificationError("the provincial figures are not the combination of the answers")


def _check_scope(release: ReleaseBody, query: SignedQuery, manifest: Manifest) -> None:
    """Every node the release asked lies inside the analyst's scope (``trust.scope``), as
    ``manifest`` says: a coordinator must not widen a city analyst's question."""
    members = {m.id: m for m in manifest.members if m.role == "node"}
    analyst = manifest.find(query.analyst)
    scope = analyst.scope if analyst is not None else ""
    outside = [
        n for n in release.targeted if n in members and not scope_contains(scope, members[n])
    ]
    if outside:
        raise VerificationError(
            f"the release asked {len(outside)} node(s) outside analyst {query.analyst}'s scope "
            f"{describe(scope)}, e.g. {show_id(outside[0])}"
        )


def _check_secure(
    body: object,
    release: ReleaseBody,
    query: SignedQuery,
    answers: Sequence[VerifiedAnswer],
    manifest: Manifest | None,
    min_nodes: int,
) -> None:
    """Both aggregators' partials are signed, agree on the node list and are exactly
    the release's answers, each cell over at least ``min_nodes`` nodes (of its city, when
    grouped by city); the figures are their combination."""
    if manifest is None:
        raise VerificationError("a secure release is verified with the manifest")
    section = body.get("secure") if isinstance(body, Mapping) else None
    if not isinstance(section, Mapping) or set(section) != {"aggregators", "partials", "failure"}:
        raise VerificationError("a secure query's release lacks its secure section")
    ids = section["aggregators"]
    if not isinstance(ids, list) or len(ids) != 2 or not all(isinstance(i, str) for i in ids):
        raise VerificationError("a secure release names its two aggregators")
    if ids[0] != release.coordinator or ids[1] == ids[0]:
        raise VerificationError("the coordinator must be the first of two aggregators")
    failure = section["failure"]
    if failure is not None:
        if not isinstance(failure, str) or section["partials"] != [] or release.province != []:
            raise VerificationError("a secure release without partials states no figure")
        return
    kept, left = eligible(answers, min_nodes)
    if left:
        raise VerificationError(
            f"the release sums {sorted(left)[0]}'s answer against its county's minimum"
        )
    partials = []
    contributors: Mapping[Any, int] = {}
    for aggregator, envelope in zip(ids, parse_partial_envelopes(section["partials"]), strict=True):
        partial = verify_partial(
            envelope, manifest=manifest, aggregator_id=aggregator, expected_query=query
        )
        if partial.academic_year != release.academic_year:
            raise VerificationError(f"the partial from {aggregator} is for another academic year")
        check_nodes(partial, answers)
        contributors = check_cells(partial, kept, min_nodes)
        partials.append(partial)
    outcome = SecureOutcome(
        (ids[0], ids[1]), tuple(("", p) for p in partials), contributors=contributors
    )
    if not same_figures(outcome.cells(release.threshold), release.province):
        raise VerificationError("the provincial figures are not the combination of the partials")


def _released_answer(entry: object) -> ReleasedAnswer:
    if not isinstance(entry, Mapping):
        raise TypeError("each answer a release names is an object")
    # as an answer's own: a finite number in range (a huge int is no float to convert)
    epsilon, index = stated_epsilon(entry["epsilon"], "an answer's epsilon"), entry["log_index"]
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError("an answer's log_index must be an integer")
    return ReleasedAnswer(
        _text(entry["node_id"], "node_id"),
        _text(entry["envelope_sha256"], "envelope_sha256"),
        epsilon,
        index,
        _text(entry["checkpoint"], "checkpoint"),
    )


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string")
    return value


def _list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"{what} must be a list")
    return value


def _ids(value: object, what: str) -> tuple[str, ...]:
    return tuple(_text(v, what) for v in _list(value, what))


def _share(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise TypeError(f"{what} must be a share between 0 and 1")
    return float(value)


def _population(value: object) -> Mapping[str, Any] | None:
    """A release's ``population`` (None: not stated), typed as ``population`` builds it."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError("population must be an object")
    for name in ("eligible_answered", "eligible_targeted"):
        count = value.get(name)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise TypeError(f"population {name} must be a whole number")
    answered, targeted = value["eligible_answered"], value["eligible_targeted"]
    # the eligible counts come from the coordinator's school tables (not re-checkable
    # here), but the share must be theirs, as ``population`` computes it
    if answered > targeted or value.get("share") != (answered / targeted if targeted else None):
        raise TypeError("population share must be eligible_answered / eligible_targeted")
    unknown = value.get("unknown", [])
    _ids(unknown, "population unknown")
    return value


def _why(exc: BaseException) -> str:
    # a KeyError's text is just the key: say what it means
    return f"missing {exc}" if isinstance(exc, KeyError) else str(exc) or type(exc).__name__
