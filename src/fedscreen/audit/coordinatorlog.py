"""The content check of a coordinator's log: requests, answers, releases and events.

Pure, as ``audit.verify`` (which calls it). Each inner envelope verifies against the
manifest in force when it was logged; each release is exactly the combination of the
answers logged with it (``audit.releases``); a secure release's partials are recorded
for the cross-log checks (``audit.secure``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from fedscreen.audit.events import COORDINATOR_EVENTS, Quarantines, coordinator_event
from fedscreen.audit.manifests import InForce, check_not_revoked, held_keys, iso_ms
from fedscreen.audit.releases import pair_release
from fedscreen.crypto.envelope import RELEASE_V1, Envelope, parse_json, verify_envelope
from fedscreen.errors import EntryInvalid, QueryRefused, VerificationError
from fedscreen.protocol.query import ANY_AGE_MS, FRESHNESS_WINDOW_MS, SignedQuery, verify_query
from fedscreen.protocol.release import parse_release
from fedscreen.protocol.versioning import later_population
from fedscreen.tlog.checkpoint import member_origin
from fedscreen.trust.manifest import Member

if TYPE_CHECKING:
    from fedscreen.audit.verify import LogReport

__all__ = ["check_coordinator_entries"]


def check_coordinator_entries(
    payloads: Sequence[bytes],
    signer_at: Callable[[int], Member],
    origin: str,
    manifests: InForce,
    report: LogReport,
) -> None:
    """Requests, answers and releases: each inner envelope verifies (against the manifest
    in force when it was logged), and each release is exactly the combination of the
    answers logged with it.

    The coordinator logs a request when it accepts a query, and the answers it used
    with their release, in one transaction, answers first. So a release is paired
    with the answers logged just before it (not all answers ever logged under its
    id: an analyst may resubmit a query id, answered by fewer or other nodes the
    second time) and with one earlier, not yet released request of its id. A request
    may lack a release (the coordinator stopped); answers may not (rolled back).
    A later version of a release (``release_version``: an offline node's answers
    imported by file, with every answer it uses logged again before it) pairs with
    its query's newest release instead: it must supersede exactly that one, count on
    from its version, and ask the same nodes for the same year.
    """
    pending: dict[str, list[SignedQuery]] = {}  # query id -> requests not yet released
    newest: dict[str, _Released] = {}  # query id -> its newest release
    run: list[tuple[int, str, bytes]] = []  # (index, node, envelope) logged since the last
    run_id = ""  # query id of the answers in ``run``
    quarantined = Quarantines()
    for index, payload in enumerate(payloads):
        if index in manifests.switches:
            continue  # a manifest entry: checked by in_force
        manifest, coordinator = manifests.at(index), signer_at(index)
        try:
            entry = parse_json(payload)
            if entry["index"] != index or entry["node_id"] != coordinator.id:
                raise ValueError(f"says it is entry {entry['index']} of {entry['node_id']}")
            if entry["kind"] in COORDINATOR_EVENTS:
                node_keys = held_keys(manifests.versions, str(entry["node"]), manifest)
                coordinator_event(
                    entry["kind"], entry, manifest=manifest, seen=quarantined, keys=node_keys
                )
                if entry["kind"] == "quarantine":
                    _supersede(report, member_origin("node", str(entry["node"])))
                continue
            kind, query_id = entry["kind"], str(entry["query_id"])
            inner = str(entry["envelope"]).encode("utf-8")
            envelope = Envelope.from_json(inner)
        except (ValueError, KeyError, TypeError, VerificationError) as exc:
            raise EntryInvalid(f"entry {index}: {exc}", origin=origin, index=index) from None
        if run and (kind == "request" or query_id != run_id):
            raise _unreleased(run, origin)
        try:
            if kind == "request":
                # freshness was the nodes' concern at the time; offline only the signature counts
                query = verify_query(envelope, manifest=manifest, now_ms=0, window_ms=ANY_AGE_MS)
                if query.query_id != query_id:
                    raise ValueError(f"logged as query {query_id!r} but is {query.query_id!r}")
                # ... but not one signed after a known version revoked the analyst
                check_not_revoked(
                    manifests.versions,
                    manifest.member(query.analyst),
                    since=manifest.version,
                    at_ms=query.issued_at_ms,
                    window_ms=FRESHNESS_WINDOW_MS,
                    what="a query",
                )
                report.requests += 1
                if query_id in report.requested_ids:
                    report.resubmissions += 1
                report.requested_ids.add(query_id)
                pending.setdefault(query_id, []).append(query)
                if report.secure is not None:
                    report.secure.request(query)
            elif kind == "answer":
                node = str(entry["node"])
                if not pending.get(query_id) and query_id not in newest:
                    raise ValueError("an answer to a query that was not requested")
                if node in quarantined.current:
                    raise ValueError(f"an answer from {node}, which was quarantined, was used")
                if any(n == node for _, n, _ in run):
                    raise ValueError(f"a second answer from {node} for the same release")
                run.append((index, node, inner))
                run_id = query_id
            elif kind == "release":
                body = parse_json(
                    verify_envelope(
                        envelope,
                        expected_payload_type=RELEASE_V1,
                        trusted_keys={coordinator.key_id: coordinator.signing_key},
                    )
                )
                if not isinstance(body, dict):
                    raise TypeError("a release body is an object")
                check_not_revoked(
                    manifests.versions,
                    coordinator,
                    since=manifest.version,
                    at_ms=iso_ms(body.get("released_at")),
                    window_ms=FRESHNESS_WINDOW_MS,
                    what="a release",
                )
                later = "release_version" in body or "supersedes" in body
                if later:  # late answers: a new version of the query's newest release
                    candidates = [newest[query_id].query] if query_id in newest else []
                    refusal = "a later release version of a query that was never released"
                else:
                    candidates = pending.get(query_id) or []
                    refusal = "a release of a query that was not requested (or already released)"
                if not candidates:
                    raise ValueError(refusal)
                query, verified = pair_release(index, body, candidates, run, manifest, origin)
                if later:
                    _check_later_version(body, newest[query_id])
                    report.later_versions += 1
                else:
                    candidates.remove(query)
                newest[query_id] = _Released(query, hashlib.sha256(inner).hexdigest(), body)
                if report.secure is not None:
                    report.secure.release(index, body, coordinator=coordinator)
                for node, (_, answer) in verified.items():
                    # the key the answer verified under tells a re-keyed node's logs apart;
                    # every distinct checkpoint is kept: each must be a prefix of the node's
                    # log (a node showing the coordinator two histories relays both)
                    relayed = (member_origin("node", node), manifest.member(node).key_id)
                    checkpoint = answer.checkpoint
                    report.relayed_checkpoints.setdefault(relayed, {}).setdefault(
                        (checkpoint.size, checkpoint.root), (checkpoint, answer.checkpoint_note)
                    )
                report.answers += len(run)
                report.releases += 1
                if body["missing"]:
                    report.partial_releases += 1
                report.release_digests.add(hashlib.sha256(inner).hexdigest())
                run = []
            else:
                raise ValueError(f"unknown kind {kind!r}")
        except (
            ValueError, KeyError, TypeError, ArithmeticError, VerificationError, QueryRefused
        ) as exc:  # fmt: skip
            raise EntryInvalid(f"entry {index}: {exc}", origin=origin, index=index) from None
    if run:
        raise _unreleased(run, origin)
    report.unreleased = sum(len(queries) for queries in pending.values())
    report.quarantines, report.readmissions = quarantined.quarantines, quarantined.readmissions


@dataclass(frozen=True)
class _Released:
    """A query's newest release: what a later version of it must follow."""

    query: SignedQuery
    #: SHA-256 (hex) of the release envelope
    digest: str
    body: dict[str, Any]


#: the reason a release states for an offline node whose answer is still to come by file
#: (``coordinator.offline.QUEUED``; the auditor does not import the coordinator)
QUEUED_REASON: Final = "offline: queued for the node's next answer file"
#: how a release states a node's refusal (``coordinator.runtime.node_refusal``)
REFUSAL_PREFIX: Final = "refused: "


def _check_later_version(body: dict[str, Any], previous: _Released) -> None:
    """A later version (late answers by file) follows the newest release of its query:
    it names it, counts on from it, and asks the same nodes for the same year. It keeps
    every answer of it (node, envelope digest, ε, log index and checkpoint, as named);
    only nodes missing from it change: each answers now, or its queued answer became
    its refusal; and at least one does (a version adding nothing is no later version)."""
    release, before = parse_release(body), parse_release(previous.body)
    if release.supersedes != previous.digest:
        raise ValueError("a later release version that does not follow the query's newest release")
    if release.release_version != before.release_version + 1:
        raise ValueError(
            f"release version {release.release_version} follows version {before.release_version}"
        )
    if release.targeted != before.targeted or release.academic_year != before.academic_year:
        raise ValueError("a later release version asks other nodes or another year")
    named = {a.node_id: a for a in release.answers}
    for kept in before.answers:
        if named.get(kept.node_id) != kept:
            raise ValueError(
                f"release version {release.release_version} does not keep {kept.node_id}'s "
                f"answer of version {before.release_version}"
            )
    added = [n for n in named if n not in before.answer_digests()]
    if any(before.missing_reasons.get(n) != QUEUED_REASON for n in added):
        # an offline node's late answer fills only the place its queued query left
        raise ValueError("a later release version adds an answer of a node not queued for it")
    if not later_population(before.population, release.population):
        raise ValueError("a later release version states another population than it adds")
    refused = []
    for node in release.missing:
        was, now = before.missing_reasons.get(node), release.missing_reasons.get(node)
        if now == was:
            continue
        if was != QUEUED_REASON or now is None or not now.startswith(REFUSAL_PREFIX):
            raise ValueError(
                f"a later release version changes why {node} is missing other than by "
                "its refusal of a queued query"
            )
        refused.append(node)
    if not added and not refused:
        raise ValueError(
            f"release version {release.release_version} adds no answer and no refusal to "
            f"version {before.release_version}"
        )


def _supersede(report: LogReport, origin: str) -> None:
    """The coordinator recorded a contradiction of the node's (a quarantine, its evidence
    checked): the checkpoints it relayed before are another history of the node's, set
    apart (``audit.verify`` excuses them if the node's own log records its rollback)."""
    for relayed in [k for k in report.relayed_checkpoints if k[0] == origin]:
        earlier = report.superseded_checkpoints.setdefault(relayed, {})
        earlier.update(report.relayed_checkpoints.pop(relayed))


def _unreleased(run: list[tuple[int, str, bytes]], origin: str) -> EntryInvalid:
    first = run[0][0]
    return EntryInvalid(
        f"entry {first}: answers logged without their release", origin=origin, index=first
    )
