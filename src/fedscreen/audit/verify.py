"""Offline verification of an audit bundle against the federation manifest.

Checks, per log, in this order (the first failure decides the outcome):

0. every manifest version the auditor holds (its own copy, the bundle's copies)
   is signed by the pinned authority key and the versions chain → else **4**
   (``fedscreen.audit.manifests``);
1. the log belongs to an active manifest member, under its expected origin, and
   every checkpoint is a well-formed note signed by that member  → else **4**;
2. every entry is a well-formed DSSE envelope signed by that member, but for a
   coordinator's answer entries, which are logged unsigned (``tlog.entries``:
   the signed checkpoint of 3. and the signed release paired with them in 4. vouch
   for them) → else **2**;
3. every checkpoint's root equals the Merkle root (RFC 9162 §2.1.1) of the
   entries up to its size, the latest checkpoint covers every entry, and the
   trusted checkpoint (the last one this auditor saw) is a prefix of this
   history → else **3** (rollback, truncation, reordering or a fork), with the
   conflicting signed checkpoints as evidence;
4. every entry's content: its stated index and node, and the ε it charged —
   summed per academic year for the node and per analyst, the sums must match
   what the entry says was spent and stay within the budgets it recorded; every
   signature inside an entry by the members of the manifest version in force when
   it was logged (the log's ``manifest`` entries switch it) → else **2**
   (a coordinator's log: ``audit.coordinatorlog``; an aggregator's: ``audit.aggregatorlog``);
5. across logs: the node checkpoints a coordinator relayed agree (one root per size) and
   each is a prefix of the node's log (else **3**: a split view), and every secure
   release's partials agree with its aggregator's log and the use-once rule
   (``audit.secure``) → else **2**.

Nothing here does I/O: it takes parsed values and returns a report or raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from fedscreen.audit.aggregatorlog import check_aggregator_entries
from fedscreen.audit.coordinatorlog import check_coordinator_entries
from fedscreen.audit.events import rollback_restored as _rollback_restored
from fedscreen.audit.manifests import Versions, in_force, known_versions, owner_keys
from fedscreen.audit.nodelog import check_node_entry
from fedscreen.audit.secure import AGGREGATOR_ROLE, SecureLog, aggregator_partials, cross_check
from fedscreen.crypto.envelope import LOG_ENTRY_V1, Envelope, verify_envelope_json
from fedscreen.errors import (
    BundleUntrusted,
    EntryInvalid,
    HistoryInconsistent,
    VerificationError,
)
from fedscreen.tlog import merkle
from fedscreen.tlog.checkpoint import Checkpoint, member_origin, parse_and_verify_note
from fedscreen.tlog.entries import COORDINATOR_UNSIGNED, unsigned_payload
from fedscreen.tlog.export import Bundle, LogExport
from fedscreen.trust.manifest import Manifest, Member

MICRO: Final = 1_000_000

#: the verified payloads of a run of entries, or (index, reason) of the first bad one
Checked = list[bytes] | tuple[int, str]
#: verifies a log's entries against the member's keys (and the kinds the log may hold
#: unsigned), chunk by chunk, in log order; the offline verifier takes one, so that how
#: it runs (here, or in worker processes: ``fedscreen.audit.parallel``) is the caller's
#: choice and this module stays pure
EntryVerifier = Callable[[tuple[bytes, ...], dict[str, bytes], frozenset[str]], Iterable[Checked]]


@dataclass
class LogReport:
    """What one verified log holds."""

    member_id: str
    origin: str
    size: int
    checkpoints: int
    answers: int = 0
    refusals: int = 0
    #: academic year -> ε the node spent (sum of its charges)
    node_epsilon: dict[str, float] = field(default_factory=dict)
    #: (academic year, analyst) -> ε spent
    analyst_epsilon: dict[tuple[str, str], float] = field(default_factory=dict)
    #: the newest verified checkpoint note, to trust next time
    latest_note: str = ""
    #: releases verified as the combination of their answers (coordinator logs)
    releases: int = 0
    #: SHA-256 (hex) of each verified release envelope, so a report's releases can be
    #: matched to the log (``fedscreen report verify --bundle``)
    release_digests: set[str] = field(default_factory=set)
    #: (node origin, key id) -> (size, root) -> each distinct node checkpoint relayed in an
    #: answer, with its signed note (coordinator logs; a re-keyed node's logs under each
    #: key are told apart by its key id)
    relayed_checkpoints: dict[tuple[str, str], dict[tuple[int, bytes], tuple[Checkpoint, str]]] = (
        field(default_factory=dict)
    )
    #: the same, relayed before the coordinator quarantined that node (a history it
    #: recorded the node contradicting)
    superseded_checkpoints: dict[
        tuple[str, str], dict[tuple[int, bytes], tuple[Checkpoint, str]]
    ] = field(default_factory=dict)
    #: analysts' queries the coordinator accepted and logged (coordinator logs)
    requests: int = 0
    #: requests whose query id an earlier request already had (an analyst resubmitted it)
    resubmissions: int = 0
    #: requests no release answers (the coordinator stopped before releasing)
    unreleased: int = 0
    #: releases with nodes missing (some or all of the nodes asked did not answer)
    partial_releases: int = 0
    #: releases that are a later version of a query's release (an offline node's late
    #: answers, imported by file)
    later_versions: int = 0
    #: query ids requested
    requested_ids: set[str] = field(default_factory=set)
    #: database rollbacks the node recorded (``fedscreen node recover``)
    rollbacks: int = 0
    #: indices of those whose operator accepted lost budget: ε sums are a lower bound
    lost_budget_entries: list[int] = field(default_factory=list)
    #: node quarantines and readmissions the coordinator recorded
    quarantines: int = 0
    readmissions: int = 0
    #: secure releases (coordinator logs) or partials (aggregator logs): ``audit.secure``
    secure: SecureLog | None = None

    def coordinator_summary(self) -> str:
        """One line on a coordinator log's requests and releases ("" for a node log)."""
        if self.rollbacks:
            lost = len(self.lost_budget_entries)
            return (
                f"  {self.rollbacks} database rollback(s) recorded by node recover, "
                f"{lost} with lost budget accepted"
            )
        if not (self.requests or self.releases or self.quarantines):
            return ""
        events = (
            f", {self.quarantines} node quarantine(s), {self.readmissions} readmission(s)"
            if self.quarantines
            else ""
        )
        return (
            f"  {self.requests} requests ({self.resubmissions} resubmitted query ids), "
            f"{self.releases} releases ({self.partial_releases} partial"
            f"{f', {self.later_versions} later versions' if self.later_versions else ''}), "
            f"{self.unreleased} requests without a release{events}"
        )

    def to_json(self) -> dict[str, Any]:
        """JSON form for ``--json``."""
        return {
            "member_id": self.member_id,
            "origin": self.origin,
            "size": self.size,
            "checkpoints": self.checkpoints,
            "answers": self.answers,
            "refusals": self.refusals,
            "releases": self.releases,
            "requests": self.requests,
            "resubmissions": self.resubmissions,
            "unreleased": self.unreleased,
            "partial_releases": self.partial_releases,
            "later_versions": self.later_versions,
            "rollbacks": self.rollbacks,
            "lost_budget_recoveries": len(self.lost_budget_entries),
            "lost_budget_entries": self.lost_budget_entries,
            # the node's ε sums are a lower bound from the first such entry on
            "epsilon_lower_bound_from": min(self.lost_budget_entries, default=None),
            "quarantines": self.quarantines,
            "readmissions": self.readmissions,
            "secure": self.secure.to_json() if self.secure else None,
            "node_epsilon": self.node_epsilon,
            "analyst_epsilon": [
                {"year": y, "analyst": a, "epsilon": e}
                for (y, a), e in sorted(self.analyst_epsilon.items())
            ],
        }


def verify_bundle(
    bundle: Bundle,
    manifest: Manifest,
    *,
    trusted: Mapping[str, str] | None = None,
    entries: EntryVerifier | None = None,
) -> list[LogReport]:
    """Verify every log in ``bundle``; raises an AuditFailure subclass on the first failure.

    ``manifest`` is the auditor's own copy: its authority key is the one trusted.
    ``entries`` checks the entries' signatures, most of the work: by default in this
    process (``fedscreen.audit.parallel.in_processes`` spreads long logs over workers).
    """
    if not bundle.logs:
        raise BundleUntrusted("the bundle holds no logs")
    versions = known_versions(
        manifest, [*bundle.manifests, *([bundle.manifest] if bundle.manifest else [])]
    )
    trees: dict[tuple[str, str], tuple[merkle.MemoryHashStore, int, str]] = {}
    reports = [
        _verify_log(log, versions, (trusted or {}).get(log.origin), entries or in_process, trees)
        for log in bundle.logs
    ]
    # split view: every node checkpoint a coordinator relayed must be a prefix of the
    # log that node exported (when the bundle has it), and no two may differ at one size.
    # Those relayed before a quarantine of the node are its other history if the node's
    # own log records its rollback (``node recover``); else they count as well.
    rolled_back = {r.origin for r in reports if r.rollbacks}
    for report in reports:
        for node, relayed in report.relayed_checkpoints.items():
            _check_relayed(report.origin, node[0], relayed, trees.get(node))
        for node, earlier in report.superseded_checkpoints.items():
            if node in trees and node[0] not in rolled_back:
                every = {**earlier, **report.relayed_checkpoints.get(node, {})}
                _check_relayed(report.origin, node[0], every, trees[node])
    # secure releases: the coordinator's and the aggregators' logs agree
    cross_check(r.secure for r in reports if r.secure)
    return reports


def _check_relayed(
    relayer: str,
    origin: str,
    relayed: Mapping[tuple[int, bytes], tuple[Checkpoint, str]],
    tree: tuple[merkle.MemoryHashStore, int, str] | None,
) -> None:
    """Each checkpoint of ``origin`` that ``relayer`` relayed is consistent with the others
    (one root per size) and, when the bundle holds that node's log (``tree``), a prefix of
    it; else HistoryInconsistent. One root is computed per distinct size (O(log n) each
    from the stored subtree hashes)."""
    by_size: dict[int, tuple[bytes, str]] = {}
    for (size, root), (_, note) in sorted(relayed.items()):
        if size in by_size and by_size[size][0] != root:
            raise HistoryInconsistent(
                f"{relayer} relayed two checkpoints of {origin} of size {size} with "
                "different roots: a split view",
                origin=origin,
                evidence=(by_size[size][1], note),
            )
        by_size[size] = (root, note)
    if tree is None:
        return
    store, held, latest = tree
    for size, (root, note) in by_size.items():
        if size > held or merkle.root(store, size=size) != root:
            raise HistoryInconsistent(
                f"{relayer} relayed a checkpoint of {origin} (size {size}) "
                "that the node's own log contradicts: a split view",
                origin=origin,
                evidence=(note, latest),
            )


def _verify_log(
    log: LogExport,
    versions: Versions,
    trusted_note: str | None,
    entries: EntryVerifier,
    trees: dict[tuple[str, str], tuple[merkle.MemoryHashStore, int, str]],
) -> LogReport:
    origin = log.origin
    # a re-keyed member held several keys: each note and entry names the one it used
    owners = owner_keys(versions, log.member_id, origin=origin)
    member = owners[0]
    if origin != member_origin(member.role, member.id):
        raise BundleUntrusted(
            f"log origin {origin!r} does not belong to {member.id}", origin=origin
        )

    # 1. checkpoints: signed by the member, well formed
    checkpoints: list[tuple[Checkpoint, str]] = []
    signed_by: dict[str, str] = {}  # note -> the id of the owner's key that signed it
    for n, note in enumerate(log.checkpoints):
        try:
            checkpoint, signed_by[note] = _owner_note(note, origin, owners)
            checkpoints.append((checkpoint, note))
        except VerificationError as exc:
            raise BundleUntrusted(f"checkpoint #{n}: {exc}", origin=origin) from None
    trusted: tuple[Checkpoint, str] | None = None
    if trusted_note is not None:
        try:
            trusted = (_owner_note(trusted_note, origin, owners)[0], trusted_note)
        except VerificationError as exc:
            raise BundleUntrusted(f"trusted checkpoint: {exc}", origin=origin) from None

    # 2. entries: signed by the member (in parallel for long logs: it is most of the work)
    keys = {m.key_id: m.signing_key for m in owners}
    unsigned = COORDINATOR_UNSIGNED if member.role == "coordinator" else frozenset()
    payloads: list[bytes] = []
    for result in entries(log.entries, keys, unsigned):
        if isinstance(result, tuple):
            index, reason = result
            raise EntryInvalid(f"entry {index}: {reason}", origin=origin, index=index)
        payloads.extend(result)

    # 3. history: every checkpoint's root is the root of the entries it covers
    tree = merkle.MemoryHashStore.from_entries(log.entries)
    size = len(log.entries)
    latest = max(checkpoints, key=lambda c: c[0].size, default=None)
    for checkpoint, note in [*checkpoints, *([trusted] if trusted else [])]:
        evidence = (note, latest[1]) if latest and latest[1] != note else (note,)
        if checkpoint.size > size:
            raise HistoryInconsistent(
                f"a signed checkpoint covers {checkpoint.size} entries but the log has {size} "
                "(truncated or rolled back)",
                origin=origin,
                evidence=evidence,
            )
        if merkle.root(tree, size=checkpoint.size) != checkpoint.root:
            raise HistoryInconsistent(
                f"the entries do not match the signed checkpoint of size {checkpoint.size} "
                "(rewritten, reordered or forked history)",
                origin=origin,
                evidence=evidence,
            )
    if size and (latest is None or latest[0].size != size):
        covered = latest[0].size if latest else 0
        raise HistoryInconsistent(
            f"entries {covered}..{size - 1} are not covered by any signed checkpoint",
            origin=origin,
            index=covered,
        )

    trees[origin, signed_by[latest[1]] if latest else member.key_id] = (
        tree,
        size,
        latest[1] if latest else "",
    )

    # 4. content
    report = LogReport(
        member.id, origin, size, len(checkpoints), latest_note=latest[1] if latest else ""
    )
    signers = _signers(log.entries, owners) if len(owners) > 1 else None
    manifests = in_force(versions, payloads, owner=member, origin=origin, signers=signers)
    if member.role in ("coordinator", AGGREGATOR_ROLE):
        report.secure = SecureLog(member.role, member.id, origin)
        check = (
            check_coordinator_entries if member.role == "coordinator" else check_aggregator_entries
        )

        def signer_at(index: int) -> Member:
            return signers[index] if signers else member

        check(payloads, signer_at, origin, manifests, report)
        if member.role == AGGREGATOR_ROLE:
            aggregator_partials(payloads, signer_at, origin, manifests, report.secure)
        return report
    node_micro: dict[str, int] = {}
    analyst_micro: dict[tuple[str, str], int] = {}

    def rollback(at: int, entry: Mapping[str, Any]) -> dict[tuple[str, str], int]:
        return _rollback_restored(
            entry,
            index=at,
            origin=origin,
            key=(signers[at] if signers else member).signing_key,  # the key then
            root_at=lambda n: merkle.root(tree, size=n),
        )

    for index, payload in enumerate(payloads):
        if index in manifests.switches:
            continue  # a manifest entry: checked by in_force
        check_node_entry(
            index, payload, member.id, origin, report, node_micro, analyst_micro, rollback
        )
    report.node_epsilon = {y: m / MICRO for y, m in node_micro.items()}
    report.analyst_epsilon = {k: m / MICRO for k, m in analyst_micro.items()}
    return report


def _owner_note(note: str, origin: str, owners: tuple[Member, ...]) -> tuple[Checkpoint, str]:
    """A checkpoint note signed by one of the owner's keys (matched by the note's key id),
    and that key's id."""
    failure: VerificationError | None = None
    for owner in owners:
        try:
            checkpoint = parse_and_verify_note(note, verifiers={origin: owner.signing_key})
            return checkpoint, owner.key_id
        except VerificationError as exc:
            failure = failure or exc
    raise failure or VerificationError("no key to verify the note with")


def _signers(entries: tuple[bytes, ...], owners: tuple[Member, ...]) -> list[Member]:
    """The owner, with the key that signed it, at each (verified) entry; at an unsigned
    entry, the key of the next signed one (the release that vouches for it)."""
    by_key_id = {m.key_id: m for m in owners}
    signers: list[Member] = []
    following = owners[0]
    for raw in reversed(entries):
        try:
            envelope = Envelope.from_json(raw)
        except VerificationError:  # verified already: an unsigned entry
            signers.append(following)
            continue
        ids = [s.keyid for s in envelope.signatures if s.keyid in by_key_id]
        following = by_key_id[ids[0]]
        signers.append(following)
    signers.reverse()
    return signers


def verify_entries(
    entries: tuple[bytes, ...],
    start: int,
    keys: dict[str, bytes],
    unsigned: frozenset[str] = frozenset(),
) -> Checked:
    """Payloads of signed entries (and of unsigned ones of the kinds in ``unsigned``), or
    (index, reason) of the first bad one."""
    payloads = []
    for offset, raw in enumerate(entries):
        try:
            bare = unsigned_payload(raw, unsigned)
            payloads.append(
                bare
                if bare is not None
                else verify_envelope_json(
                    raw, expected_payload_type=LOG_ENTRY_V1, trusted_keys=keys
                )
            )
        except VerificationError as exc:
            return start + offset, str(exc)
    return payloads


def in_process(
    entries: tuple[bytes, ...], keys: dict[str, bytes], unsigned: frozenset[str]
) -> Iterator[Checked]:
    """The default :data:`EntryVerifier`: every entry, here, in one chunk."""
    yield verify_entries(entries, 0, keys, unsigned)
