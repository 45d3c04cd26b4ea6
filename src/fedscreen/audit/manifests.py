"""Which manifest version was in force when each log entry was logged.

A member logs each manifest version it starts using (``{"kind": "manifest",
"version": N, "manifest": <the signed file>}``, see
:func:`fedscreen.trust.manifest.manifest_entry`). The auditor pins one authority
key (that of its own manifest copy) and:

1. verifies every manifest version it is handed — its own copy and every copy the
   bundle carries — against that key, refuses two different versions with one
   number, and checks the chain link between every two consecutive versions it
   holds (:func:`known_versions`; any failure: **4**, the bundle cannot be trusted);
2. walks each log in order (:func:`in_force`): at each ``manifest`` entry the
   version changes, after the entry's file is verified against the pinned key,
   found not older than the version before it and chained to the known
   neighbours (else **2**, at that entry; the same version logged again changes
   nothing). Every signature in a later entry is checked
   against the members active in that version: a signature an old version admits
   still verifies after a later revocation, and one made after the log recorded
   the revocation does not.

Entries before a log's first ``manifest`` entry (logs made before manifest entries
existed) do not say which version was in force: they are checked against every
member active in some known version up to the first one the log records (all
known versions, for a log that records none). A gap in the versions known is
tolerated — the versions skipped cannot be checked, and nothing in the logs was
checked under them.

A member re-keyed (revoked, then re-added under its id with a new key, or
re-issued with ``pki issue --replace``) has held several keys: every log it
signed verifies under the key that signed it (:func:`owner_keys`; a note or an
entry names its key by key id), and "active" is judged against that key.

Every version is known by one digest across the whole bundle (:class:`Versions`
keeps where each was first seen): two different authority-signed manifests with
one number anywhere — the auditor's copy, the bundle's copies, any log's
``manifest`` entries — are **4**, naming both places. A manifest inside a log
entry that fails the authority's signature or the chain is **2** at that entry:
the log's owner signed the entry, so the fault is the entry's.

Revocation by time (:func:`check_not_revoked`): a signature a log records but
whose own timestamp (a query's ``issued_at_ms``, a release's ``released_at``) is
later than the ``issued_at`` of a known version that revoked the signer, by more
than the queries' freshness window, is refused (**2**) even when the log never
recorded that version. This assumes the authority's clock and the signers' clocks
agree to within that window (the nodes refuse queries outside it already).

Nothing here does I/O: it takes parsed values and returns values or raises.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from fedscreen.crypto.envelope import parse_json
from fedscreen.errors import BundleUntrusted, EntryInvalid, UnknownMember, VerificationError
from fedscreen.trust.manifest import (
    MANIFEST_ENTRY_KIND,
    Manifest,
    Member,
    check_successor,
    parse_manifest,
    show_id,
)

__all__ = [
    "InForce",
    "Versions",
    "check_not_revoked",
    "held_keys",
    "in_force",
    "iso_ms",
    "known_versions",
    "log_owner",
    "owner_keys",
]

#: a cheap pre-filter: only payloads holding this (canonical JSON) are parsed here
_MARK: Final = b'"' + MANIFEST_ENTRY_KIND.encode() + b'"'


@dataclass(frozen=True)
class Versions:
    """The manifest versions an auditor holds, each verified under the pinned key."""

    authority_key: bytes
    by_version: Mapping[int, Manifest]
    #: version -> (digest, where it was first seen), across every log of the bundle:
    #: :func:`in_force` adds the versions logs record, so one version has one digest
    seen: dict[int, tuple[str, str]] = field(default_factory=dict)

    def see(self, manifest: Manifest, place: str) -> None:
        """Record ``manifest`` as seen at ``place``; BundleUntrusted if another manifest
        with its version was seen elsewhere (the authority signed two, or one was altered)."""
        known = self.seen.setdefault(manifest.version, (manifest.digest, place))
        if known[0] != manifest.digest:
            raise BundleUntrusted(
                f"two different manifests claim version {manifest.version}: {known[1]} "
                f"and {place} (the authority signed both, or one was altered)"
            )


def known_versions(pinned: Manifest, copies: Iterable[str | bytes]) -> Versions:
    """``pinned`` (the auditor's own copy) and every manifest ``copies`` holds, verified
    against ``pinned``'s authority key and chained; BundleUntrusted otherwise."""
    by_version: dict[int, Manifest] = {pinned.version: pinned}
    versions = Versions(pinned.authority_key, by_version)
    versions.see(pinned, "the auditor's --manifest")
    for n, text in enumerate(copies):
        try:
            manifest = parse_manifest(text, authority_key=pinned.authority_key)
        except VerificationError as exc:
            raise BundleUntrusted(f"manifest copy #{n} in the bundle: {exc}") from None
        versions.see(manifest, f"manifest copy #{n} in the bundle")
        _merge(by_version, manifest, BundleUntrusted)
    for version, manifest in by_version.items():
        if manifest.federation != pinned.federation:
            raise BundleUntrusted(f"manifest version {version} is of another federation")
    return versions


def _merge(
    by_version: dict[int, Manifest], manifest: Manifest, error: Callable[[str], Exception]
) -> None:
    """Add ``manifest``, checked against the versions either side of it."""
    known = by_version.get(manifest.version)
    if known is not None:
        if known.digest != manifest.digest:
            raise error(
                f"two different manifests claim version {manifest.version} "
                "(the authority signed both, or one was altered)"
            )
        return
    try:
        if (previous := by_version.get(manifest.version - 1)) is not None:
            check_successor(previous, manifest)
        if (following := by_version.get(manifest.version + 1)) is not None:
            check_successor(manifest, following)
    except VerificationError as exc:
        raise error(str(exc)) from None
    by_version[manifest.version] = manifest


def log_owner(versions: Versions, member_id: str, *, origin: str = "") -> Member:
    """The log's owner as the newest known version lists it active; BundleUntrusted if
    no known version does."""
    return owner_keys(versions, member_id, origin=origin)[0]


def owner_keys(versions: Versions, member_id: str, *, origin: str = "") -> tuple[Member, ...]:
    """Every key ``member_id`` held while active in a known version, as the newest
    version listing each key has it, newest first (one, unless the member was
    re-keyed); of the newest one's role. BundleUntrusted if no known version lists
    it active."""
    found: dict[bytes, Member] = {}
    for version in sorted(versions.by_version, reverse=True):
        try:
            member = versions.by_version[version].member(member_id)
        except UnknownMember:
            continue
        found.setdefault(member.signing_key, member)
    if not found:
        raise BundleUntrusted(
            f"{show_id(member_id)} is not an active member in any manifest version "
            "the auditor holds",
            origin=origin,
        )
    members = list(found.values())
    return tuple(m for m in members if m.role == members[0].role)


def check_not_revoked(
    versions: Versions, member: Member, *, since: int, at_ms: int, window_ms: int, what: str
) -> None:
    """Raise VerificationError if ``member`` (its id and key), active in version
    ``since`` (the one in force where its signature was logged), signed ``what`` at
    ``at_ms`` (its own timestamp) more than ``window_ms`` after the issue time of a
    later known version that revoked or removed it — and no version issued by then
    re-admitted that key. A version whose ``issued_at`` does not parse is not used."""
    revoked: Manifest | None = None
    for version in sorted(v for v in versions.by_version if v > since):
        manifest = versions.by_version[version]
        issued = _issued_ms(manifest)
        if issued is None:
            continue
        if _active(manifest, member):
            if issued <= at_ms:
                revoked = None  # re-admitted before it signed
        elif revoked is None and issued + window_ms < at_ms:
            revoked = manifest
    if revoked is not None:
        raise VerificationError(
            f"{what} by {show_id(member.id)} is dated more than the freshness window after "
            f"manifest version {revoked.version} (issued {revoked.issued_at}) revoked its key"
        )


def _issued_ms(manifest: Manifest) -> int | None:
    try:
        return iso_ms(manifest.issued_at)
    except ValueError:
        return None


def iso_ms(text: object) -> int:
    """Unix ms of an ISO 8601 time (UTC unless it names a zone: fedscreen writes UTC);
    ValueError if it is not one."""
    if not isinstance(text, str):
        raise ValueError("a time is an ISO 8601 string")
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = datetime.combine(moment.date(), moment.time(), tzinfo=UTC)
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True)
class InForce:
    """The manifest in force at each entry of one log."""

    #: the entry index from which each manifest in ``manifests`` is in force (ascending)
    starts: tuple[int, ...]
    manifests: tuple[Manifest, ...]
    #: indices of the log's ``manifest`` entries (checked here; nothing else to check)
    switches: frozenset[int]
    #: every version the auditor holds (for checks that look beyond the one in force)
    versions: Versions

    def at(self, index: int) -> Manifest:
        """The manifest in force at entry ``index``."""
        return self.manifests[bisect.bisect_right(self.starts, index) - 1]


def in_force(
    versions: Versions,
    payloads: Sequence[bytes],
    *,
    owner: Member,
    origin: str,
    signers: Sequence[Member] | None = None,
) -> InForce:
    """Walk a log's verified entry payloads: check every ``manifest`` entry and say which
    version is in force at each entry. ``signers`` (for an owner that held several
    keys) is the owner, with the key that signed it, at each entry (at an unsigned
    answer entry, the key of the release after it). Raises
    EntryInvalid at the first bad entry; BundleUntrusted if a version it logs has
    another digest than the same version seen elsewhere."""
    local = dict(versions.by_version)
    logged: list[tuple[int, Manifest]] = []
    repeated: list[int] = []
    for index, payload in enumerate(payloads):
        signer = owner if signers is None else signers[index]
        stale = bool(logged) and not _active(logged[-1][1], signer)
        entry = _manifest_entry(payload)
        if entry is None:
            if stale:
                raise _revoked(index, logged[-1][1], signer, origin)
            continue
        try:
            manifest = _check_entry(index, entry, local, owner, versions.authority_key)
            versions.see(manifest, f"entry {index} of {origin}")
            if logged and manifest.version < logged[-1][1].version:
                raise VerificationError(
                    f"version {manifest.version} logged after version "
                    f"{logged[-1][1].version}: the manifest went back"
                )
            _merge(local, manifest, VerificationError)
        except VerificationError as exc:
            raise EntryInvalid(f"entry {index}: {exc}", origin=origin, index=index) from None
        if stale and not _active(manifest, signer):
            # (a member re-keyed in place logs the version giving it its new key with that key)
            raise _revoked(index, logged[-1][1], signer, origin)
        if logged and manifest.version == logged[-1][1].version:
            repeated.append(index)  # the same version again (_merge: the same file): no change
            continue
        logged.append((index, manifest))
    bound = logged[0][1].version if logged else max(local)
    prefix = _union([local[v] for v in sorted(local) if v <= bound])
    return InForce(
        starts=(0, *(i for i, _ in logged)),
        manifests=(prefix, *(m for _, m in logged)),
        switches=frozenset([*(i for i, _ in logged), *repeated]),
        versions=versions,
    )


def _manifest_entry(payload: bytes) -> dict[str, object] | None:
    """``payload`` parsed if it is a ``manifest`` entry; None otherwise (or malformed: not
    this module's to judge, the content check reports it)."""
    if _MARK not in payload:
        return None
    try:
        entry = parse_json(payload)
    except ValueError:
        return None
    if not isinstance(entry, dict) or entry.get("kind") != MANIFEST_ENTRY_KIND:
        return None
    return entry


def _revoked(index: int, manifest: Manifest, signer: Member, origin: str) -> EntryInvalid:
    return EntryInvalid(
        f"entry {index}: logged after manifest version {manifest.version} "
        f"revoked {signer.id}'s key {signer.key_id}",
        origin=origin,
        index=index,
    )


def held_keys(versions: Versions, member_id: str, manifest: Manifest) -> tuple[bytes, ...]:
    """The key ``manifest`` (in force) gives the active ``member_id``, then every older
    key the id held in a known version up to it: evidence it signed before a re-key.
    Raises UnknownMember if ``manifest`` does not list it active."""
    keys = [manifest.member(member_id).signing_key]
    for version in sorted(versions.by_version, reverse=True):
        if version > manifest.version:
            continue
        try:
            key = versions.by_version[version].member(member_id).signing_key
        except UnknownMember:
            continue
        if key not in keys:
            keys.append(key)
    return tuple(keys)


def _check_entry(
    index: int,
    entry: dict[str, object],
    local: Mapping[int, Manifest],
    owner: Member,
    authority_key: bytes,
) -> Manifest:
    if entry.get("index") != index or entry.get("node_id") != owner.id:
        raise VerificationError(f"says it is entry {entry.get('index')!r} of another log")
    text, version = entry.get("manifest"), entry.get("version")
    if not isinstance(text, str):
        raise VerificationError("a manifest entry without its manifest file")
    manifest = parse_manifest(text, authority_key=authority_key)
    if manifest.version != version:
        raise VerificationError(f"logged as version {version!r} but is {manifest.version}")
    return manifest


def _active(manifest: Manifest, owner: Member) -> bool:
    try:
        return manifest.member(owner.id).signing_key == owner.signing_key
    except UnknownMember:
        return False


def _union(manifests: Sequence[Manifest]) -> Manifest:
    """One manifest listing every member active in any of ``manifests`` (oldest first;
    a later version's entry for a member replaces an earlier one). Never signed: the
    auditor's view of a stretch of log that does not say which version was in force."""
    newest = manifests[-1]
    if len(manifests) == 1:
        return newest
    members: dict[str, Member] = {}
    for manifest in manifests:
        members.update((m.id, m) for m in manifest.members if not m.revoked)
    return Manifest(
        federation=newest.federation,
        version=newest.version,
        issued_at=newest.issued_at,
        authority_key=newest.authority_key,
        members=tuple(members.values()),
        ca_sha256=newest.ca_sha256,
    )
