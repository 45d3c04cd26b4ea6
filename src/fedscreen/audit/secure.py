"""The auditor's checks of secure releases: the coordinator's and the aggregator's logs agree.

A secure query's release carries two signed partials (its ``secure`` section): the
coordinator's own, which leaves only inside the release, and the second aggregator's,
which that aggregator logs when it hands it out (``{"kind": "partial", "query_id",
"partial": <the envelope, verbatim>}``; a refusal is ``{"kind": "refusal", "query_id",
"reason"}``). ``check_release`` (``audit.releases``) already verified both partials'
signatures and that they summed exactly the answers logged with the release. Here:

* each release's partials (:meth:`SecureLog.release`) and each partial the aggregator
  logged (:func:`aggregator_partials`, signed by it under the manifest in force)
  sum at least the shipped catalogue's ``secure.min_nodes`` answers, and each log
  keeps the **use-once rule**: no answer body (its digest in the partial's node list)
  is summed into two different partial bodies — the same body signed again for a
  resubmitted query id is fine, fresh noise over a re-summed answer spends a county's
  ε twice;
* across the logs (:func:`cross_check`): each release's second partial is, byte for
  byte, a partial its aggregator logged; and each logged partial answers a secure
  request the coordinator logged, and verifies against it
  (``protocol.secure.verify_partial``).

A log is a snapshot: the coordinator's may end after the aggregator's, or before it.
So a release whose partial the aggregator's log lacks, after the last release it does
hold, with no entry of that query id, is reported *not cross-checked* ("after the end
of X's log"), as is a logged partial after the last one whose request the coordinator's
log holds; a gap before a match is a disagreement (**2**). Exporting the coordinator's
log first (``audit export --home COORD --home AGG``) leaves no such tail. A bundle
without the aggregator's (or the coordinator's) log leaves the cross-checks undone: the
report says so, the outcome stays valid (an honest coordinator cannot hand over the
other department's log).

Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from fedscreen._util.canonical import canonical_json
from fedscreen.audit.manifests import InForce
from fedscreen.crypto.envelope import Envelope, parse_json
from fedscreen.errors import EntryInvalid, VerificationError
from fedscreen.protocol.answer import bounded, shipped_catalogue
from fedscreen.protocol.partial import read_partial
from fedscreen.protocol.query import SignedQuery
from fedscreen.protocol.secure import parse_partial_envelopes, verify_partial
from fedscreen.trust.manifest import Manifest, Member, show_id

__all__ = ["AGGREGATOR_ROLE", "SecureLog", "UseOnce", "aggregator_partials", "cross_check"]

#: the manifest role of the second aggregator (its log's origin: ``fedscreen.aggregator/ID``)
AGGREGATOR_ROLE: Final = "aggregator"
#: how many digits of a digest an error message shows
_SHOWN: Final = 12
#: how many distinct reasons for releases without figures the text report names
_REASONS_SHOWN: Final = 3


@dataclass(frozen=True)
class _Released:
    """A coordinator's release with figures: where, and its aggregator's partial."""

    index: int
    query_id: str
    aggregator: str
    partial: str


@dataclass(frozen=True)
class _Logged:
    """A partial an aggregator logged, with the manifest in force at its entry."""

    index: int
    query_id: str
    query_sha256: str
    text: str
    manifest: Manifest


class UseOnce:
    """Answer body digest -> (the partial body it was summed into, at which entry)."""

    def __init__(self) -> None:
        self.summed: dict[str, tuple[str, int]] = {}
        self.bodies: set[str] = set()

    def add(self, index: int, body: Mapping[str, Any], nodes: Mapping[str, str]) -> None:
        """Record ``body`` (logged at ``index``) as summing ``nodes`` (node -> answer
        digest); ValueError if one of those answers is summed into another body."""
        digest = hashlib.sha256(canonical_json(dict(body))).hexdigest()
        for node, answer in sorted(nodes.items()):
            earlier = self.summed.setdefault(answer, (digest, index))
            if earlier[0] != digest:
                raise ValueError(
                    f"{show_id(node)}'s answer (sha256 {answer[:_SHOWN]}…) is summed into "
                    f"another partial than at entry {earlier[1]}: fresh noise over an answer "
                    "summed before spends its ε twice (the use-once rule)"
                )
        self.bodies.add(digest)


@dataclass
class SecureLog:
    """What a coordinator's or an aggregator's log shows of secure aggregation."""

    role: str
    member_id: str
    origin: str
    #: secure releases the coordinator logged
    releases: int = 0
    #: reason -> secure releases without figures (an aggregator refused, none connected)
    without_figures: Counter[str] = field(default_factory=Counter)
    #: aggregator id -> releases whose partial its log holds
    cross_checked: Counter[str] = field(default_factory=Counter)
    #: why -> releases (or logged partials) the bundle could not cross-check
    unchecked: Counter[str] = field(default_factory=Counter)
    #: partials an aggregator logged (its refusals: the LogReport's)
    partials: int = 0
    #: logged partials verified against the request the coordinator logged
    matched: int = 0
    _requests: dict[str, list[SignedQuery]] = field(default_factory=dict, repr=False)
    _plain: set[str] = field(default_factory=set, repr=False)
    _released: list[_Released] = field(default_factory=list, repr=False)
    _logged: list[_Logged] = field(default_factory=list, repr=False)
    _use_once: UseOnce = field(default_factory=UseOnce, repr=False)

    @property
    def bodies(self) -> int:
        """Distinct partial bodies summed (one noise draw each)."""
        return len(self._use_once.bodies)

    def request(self, query: SignedQuery) -> None:
        """A request the coordinator logged (for the aggregator's partials to refer to)."""
        if query.spec.secure:
            self._requests.setdefault(query.query_id, []).append(query)
        else:
            self._plain.add(query.query_id)

    def release(self, index: int, body: Mapping[str, Any], *, coordinator: Member) -> None:
        """A release the coordinator logged at ``index``, verified by ``check_release``
        (a plain query's: nothing to do). ValueError or VerificationError if a partial
        sums too few answers or breaks the use-once rule."""
        section = body.get("secure")
        if not isinstance(section, Mapping):
            return
        self.releases += 1
        if section["failure"] is not None:
            self.without_figures[bounded(str(section["failure"]))] += 1
            return
        own, partial = read_partial(
            parse_partial_envelopes(section["partials"])[0],
            member_id=self.member_id,
            key_id=coordinator.key_id,
            key=coordinator.signing_key,
        )
        _check_min_nodes(partial.nodes)
        self._use_once.add(index, own, partial.nodes)
        self._released.append(
            _Released(
                index, str(body["query_id"]), section["aggregators"][1], section["partials"][1]
            )
        )

    def to_json(self) -> dict[str, Any]:
        """JSON form for ``--json``."""
        if self.role == AGGREGATOR_ROLE:
            return {
                "partials": self.partials,
                "bodies": self.bodies,
                "checked_against_requests": self.matched,
                "unchecked": dict(self.unchecked),
            }
        return {
            "releases": self.releases,
            "cross_checked": dict(self.cross_checked),
            "without_figures": dict(self.without_figures),
            "unchecked": dict(self.unchecked),
        }

    def lines(self) -> list[str]:
        """What the text report says (nothing for a coordinator without secure releases)."""
        if self.role == AGGREGATOR_ROLE:
            again = self.partials - self.bodies
            found = [
                f"  {self.partials} secure partials ({self.bodies} sums, {again} signed again "
                f"for a resubmitted query id), {self.matched} verified against the "
                "coordinator's logged request"
            ]
        elif not self.releases:
            return []
        else:
            checked = sorted(self.cross_checked.items())
            parts = [f"{n} cross-checked against {member}'s log" for member, n in checked]
            # the commonest reasons (each release may state its own: a timeout's seconds)
            reasons = self.without_figures.most_common()
            parts += [f"{n} without figures: {why}" for why, n in reasons[:_REASONS_SHOWN]]
            if rest := sum(n for _, n in reasons[_REASONS_SHOWN:]):
                parts.append(f"{rest} without figures for other reasons (--json lists them)")
            said = ", ".join(parts) or "none cross-checked"
            found = [f"  {self.releases} secure releases ({said})"]
        what = "partials" if self.role == AGGREGATOR_ROLE else "releases"
        return found + [
            f"  WARNING: {n} secure {what} not cross-checked: {why}"
            for why, n in sorted(self.unchecked.items())
        ]


def _check_min_nodes(nodes: Mapping[str, str]) -> None:
    least = shipped_catalogue().secure.min_nodes
    if len(nodes) < least:
        raise ValueError(
            f"a secure partial over {len(nodes)} nodes' answers, fewer than the catalogue's "
            f"minimum of {least}: it would release a county's value"
        )


def aggregator_partials(
    payloads: Sequence[bytes],
    signer_at: Callable[[int], Member],
    origin: str,
    manifests: InForce,
    log: SecureLog,
) -> None:
    """Record the partials of an aggregator's log (whose entries ``audit.aggregatorlog``
    checked): each signed by the aggregator with the key of its entry, over at
    least min_nodes answers, none summed into another partial body. Raises EntryInvalid."""
    for index, payload in enumerate(payloads):
        if index in manifests.switches:
            continue  # a manifest entry: checked by in_force
        try:
            entry = parse_json(payload)
            if entry["kind"] != "partial":
                continue  # a refusal (counted by the entry check)
            manifest, owner = manifests.at(index), signer_at(index)
            query_id, text = entry["query_id"], entry["partial"]
            if not isinstance(query_id, str) or not isinstance(text, str):
                raise TypeError("a partial entry holds its query id and the partial's envelope")
            # the key that signed the entry (in force there: ``in_force`` checked it)
            body, partial = read_partial(
                Envelope.from_json(text),
                member_id=owner.id,
                key_id=owner.key_id,
                key=owner.signing_key,
            )
            if partial.query_id != query_id:
                raise ValueError("the partial is for another query than its entry says")
            _check_min_nodes(partial.nodes)
            log._use_once.add(index, body, partial.nodes)
        except (ValueError, KeyError, TypeError, VerificationError) as exc:
            raise EntryInvalid(
                f"entry {index}: {bounded(str(exc))}", origin=origin, index=index
            ) from None
        log.partials += 1
        log._logged.append(_Logged(index, query_id, partial.query_sha256, text, manifest))


def cross_check(logs: Iterable[SecureLog]) -> None:
    """Check the coordinators' secure releases against their aggregators' logs, and the
    aggregators' partials against the coordinators' requests (see the module's doc);
    update each log's counts. Raises EntryInvalid where the logs disagree."""
    every = list(logs)
    coordinators = [s for s in every if s.role != AGGREGATOR_ROLE]
    aggregators = {s.member_id: s for s in every if s.role == AGGREGATOR_ROLE}
    for coordinator in coordinators:
        by_aggregator: dict[str, list[_Released]] = {}
        for released in coordinator._released:
            by_aggregator.setdefault(released.aggregator, []).append(released)
        for member_id, releases in sorted(by_aggregator.items()):
            aggregator = aggregators.get(member_id)
            if aggregator is None:
                coordinator.unchecked[f"no log of {member_id} in the bundle"] += len(releases)
                continue
            _releases_logged(coordinator, releases, aggregator)
    requests: dict[str, list[SignedQuery]] = {}
    plain: set[str] = set()
    for coordinator in coordinators:
        for query_id, queries in coordinator._requests.items():
            requests.setdefault(query_id, []).extend(queries)
        plain |= coordinator._plain
    for aggregator in aggregators.values():
        if not coordinators:
            if aggregator._logged:
                aggregator.unchecked["no coordinator log in the bundle"] += len(aggregator._logged)
            continue
        _partials_requested(aggregator, requests, plain)


def _releases_logged(
    coordinator: SecureLog, releases: list[_Released], aggregator: SecureLog
) -> None:
    texts = {logged.text for logged in aggregator._logged}
    ids = {logged.query_id for logged in aggregator._logged}
    found = [released.partial in texts for released in releases]
    last = max((n for n, hit in enumerate(found) if hit), default=-1)
    for n, (released, hit) in enumerate(zip(releases, found, strict=True)):
        if hit:
            coordinator.cross_checked[aggregator.member_id] += 1
        elif n < last or released.query_id in ids:
            raise EntryInvalid(
                f"entry {released.index}: the release's partial from {aggregator.member_id} is "
                f"not in {aggregator.member_id}'s log (the logs disagree: a partial signed "
                "and not logged, or a log rewritten)",
                origin=coordinator.origin,
                index=released.index,
            )
        else:
            coordinator.unchecked[f"released after the end of {aggregator.member_id}'s log"] += 1


def _partials_requested(
    aggregator: SecureLog, requests: Mapping[str, list[SignedQuery]], plain: set[str]
) -> None:
    logged = aggregator._logged
    known = [entry.query_id in requests for entry in logged]
    last = max((n for n, hit in enumerate(known) if hit), default=-1)
    for n, (entry, hit) in enumerate(zip(logged, known, strict=True)):

        def bad(reason: str, at: _Logged = entry) -> EntryInvalid:
            return EntryInvalid(
                f"entry {at.index}: {reason}", origin=aggregator.origin, index=at.index
            )

        if not hit:
            if n < last or entry.query_id in plain:
                raise bad(
                    "a partial for a query the coordinator's log holds no secure request of "
                    "(the logs disagree)"
                )
            aggregator.unchecked["logged after the end of the coordinator's log"] += 1
            continue
        queries = [q for q in requests[entry.query_id] if q.digest == entry.query_sha256]
        if not queries:
            raise bad("a partial for another query than the coordinator logged under its id")
        try:
            verify_partial(
                Envelope.from_json(entry.text),
                manifest=entry.manifest,
                aggregator_id=aggregator.member_id,
                expected_query=queries[0],
            )
        except VerificationError as exc:
            raise bad(bounded(str(exc))) from None
        aggregator.matched += 1
