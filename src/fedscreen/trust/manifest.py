"""The federation manifest: who is a member, in which role, with which keys.

The province authority signs the manifest (a DSSE envelope, payload type
``MANIFEST_V1``) with its Ed25519 key. A manifest file is::

    {"authority_key": "<base64 Ed25519 public key>", "envelope": <DSSE envelope>}

The authority key in the file is a root of trust, like a self-signed CA
certificate: whoever holds the file trusts that key, and can pin it
(``authority_key=`` in ``load_manifest``). Revoking a member is a new manifest
version without it (or with ``revoked = true``); versions only go up.

**The chain.** Each version names its predecessor: ``previous_sha256`` is the
SHA-256 of the predecessor's signed payload (:attr:`Manifest.digest`), so the
versions form a hash chain that :func:`verify_history` checks. Version 0 has no
predecessor. Manifests signed before the chain existed carry no link: such
*legacy* versions are accepted only as the start of a history (once a version
names its predecessor, every later one must), so an old authority's history
still verifies and chains from its first linked version on.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from fedscreen._util.canonical import canonical_json
from fedscreen.crypto.envelope import (
    MANIFEST_V1,
    Envelope,
    parse_json,
    sign_envelope,
    verify_envelope,
)
from fedscreen.crypto.signing import PUBLIC_KEY_SIZE, SigningKey, public_key_id
from fedscreen.errors import ConfigError, UnknownMember, VerificationError
from fedscreen.trust.scope import check_member_scope

ROLES: Final = ("node", "coordinator", "analyst", "auditor", "aggregator")
#: how many unusual characters :func:`show_id` names by code point
_SHOWN_CODE_POINTS: Final = 8
MANIFEST_FORMAT: Final = "fedscreen-manifest/1"
#: the ``kind`` of a log entry recording the manifest version a member starts using
MANIFEST_ENTRY_KIND: Final = "manifest"
_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")


def show_id(value: object) -> str:
    """An identifier as an error message shows it: quoted, with its unusual characters named.

    A refused id that looks right (``130102`` with a zero-width space, a full-width
    digit, a Cyrillic letter) is shown with the code point of every character outside
    printable ASCII, e.g. ``'130102\u200b' (U+200B)``, so an operator sees why it did
    not match.
    """
    text = repr(value)
    if not isinstance(value, str):
        return text
    odd = list(dict.fromkeys(c for c in value if not (c.isascii() and c.isprintable())))
    if not odd:
        return text
    named = " ".join(f"U+{ord(c):04X}" for c in odd[:_SHOWN_CODE_POINTS])
    return f"{text} ({named}{' …' if len(odd) > _SHOWN_CODE_POINTS else ''})"


def a_role(role: str) -> str:
    """``role`` with its indefinite article: "a node", "an analyst", "an auditor"."""
    return f"{'an' if role[:1] in ('a', 'e', 'i', 'o', 'u') else 'a'} {role}"


@dataclass(frozen=True)
class Member:
    """One member of the federation."""

    id: str
    role: str
    name: str
    #: Ed25519 public key (raw 32 bytes) that signs this member's answers, queries, notes
    signing_key: bytes
    #: SHA-256 (hex) of the DER of the member's TLS certificate
    tls_sha256: str
    #: "county", "city", "university", "school", "province" — informational
    level: str = ""
    revoked: bool = False
    #: an analyst's scope or a node's place (``trust.scope``); "" in older manifests
    scope: str = ""
    #: a node without a network path to the coordinator: its queries are queued and
    #: carried to it by file (``fedscreen coordinator outbox``); False in older manifests
    offline: bool = False

    @property
    def key_id(self) -> str:
        """The key id signatures by this member carry."""
        return public_key_id(self.signing_key)

    def to_json(self) -> dict[str, Any]:
        """JSON form (keys base64)."""
        return {
            "id": self.id,
            "role": self.role,
            "name": self.name,
            "level": self.level,
            "signing_key": base64.b64encode(self.signing_key).decode(),
            "tls_sha256": self.tls_sha256,
            "revoked": self.revoked,
            # absent when unset: a member issued before scopes re-signs to the same bytes
            **({"scope": self.scope} if self.scope else {}),
            **({"offline": True} if self.offline else {}),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Member:
        """Parse one member; raises VerificationError on malformed input."""
        try:
            texts = ("id", "role", "name", "signing_key", "tls_sha256")
            if not all(isinstance(data[k], str) for k in texts) or not isinstance(
                data.get("level", ""), str
            ):
                raise TypeError(f"the fields {', '.join(texts)} and level must be strings")
            if not isinstance(data.get("revoked", False), bool):
                raise TypeError("revoked must be true or false")
            if not isinstance(data.get("scope", ""), str):
                raise TypeError("scope must be a string")
            if not isinstance(data.get("offline", False), bool):
                raise TypeError("offline must be true or false")
            key = base64.b64decode(str(data["signing_key"]), validate=True)
            role = str(data["role"])
            if role not in ROLES or len(key) != PUBLIC_KEY_SIZE:
                raise ValueError(f"bad role or key for {data.get('id')!r}")
            scope = str(data.get("scope", ""))
            if data.get("offline", False) and role != "node":
                raise ValueError(f"only a node can be offline, not {data.get('id')!r}")
            check_member_scope(
                role=role,
                level=str(data.get("level", "")),
                scope=scope,
                member_id=str(data["id"]),
            )
            return cls(
                id=str(data["id"]),
                role=role,
                name=str(data["name"]),
                signing_key=key,
                tls_sha256=str(data["tls_sha256"]).lower(),
                level=str(data.get("level", "")),
                revoked=bool(data.get("revoked", False)),
                scope=scope,
                offline=bool(data.get("offline", False)),
            )
        except (KeyError, TypeError, ValueError, binascii.Error, ConfigError) as exc:
            raise VerificationError(f"malformed manifest member: {exc}") from None


@dataclass(frozen=True)
class Manifest:
    """A verified manifest."""

    federation: str
    version: int
    issued_at: str
    authority_key: bytes
    members: tuple[Member, ...]
    #: SHA-256 (hex) of the federation CA certificate (DER)
    ca_sha256: str = ""
    #: :attr:`digest` of the version before this one; None for version 0 and legacy files
    previous_sha256: str | None = None
    # derived from members; init=False so dataclasses.replace() builds a fresh table
    _by_id: dict[str, Member] = field(default_factory=dict, init=False, compare=False, repr=False)
    # the payload bytes the authority signed, kept verbatim by parse_manifest (the digest
    # is over them, not over a re-serialisation); init=False: replace() starts afresh
    _signed: bytes = field(default=b"", init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        ids = [m.id for m in self.members]
        if len(set(ids)) != len(ids):
            raise VerificationError("manifest lists a member twice")
        self._by_id.update({m.id: m for m in self.members})

    def member(self, member_id: str, *, role: str | None = None) -> Member:
        """The active member with this id (and role); raises UnknownMember."""
        member = self._by_id.get(member_id)
        if member is None or member.revoked:
            raise UnknownMember(f"{show_id(member_id)} is not an active member of the federation")
        if role is not None and member.role != role:
            raise UnknownMember(
                f"{show_id(member_id)} is {a_role(member.role)}, not {a_role(role)}"
            )
        return member

    def find(self, member_id: str) -> Member | None:
        """The member with this id, revoked or not (None if the manifest lists none)."""
        return self._by_id.get(member_id)

    def keys(self, *, role: str | None = None) -> dict[str, bytes]:
        """key id -> public key of active members (of one role)."""
        return {
            m.key_id: m.signing_key
            for m in self.members
            if not m.revoked and (role is None or m.role == role)
        }

    def active(self, role: str) -> tuple[str, ...]:
        """The ids of the active (not revoked) members of ``role``, in manifest order."""
        return tuple(m.id for m in self.members if m.role == role and not m.revoked)

    @functools.cached_property
    def offline(self) -> frozenset[str]:
        """The active nodes marked offline: reached by file only, never by a stream."""
        return frozenset(m.id for m in self.members if m.offline and not m.revoked)

    def coordinator(self) -> str:
        """The member id of the federation's coordinator; ConfigError unless exactly one."""
        ids = self.active("coordinator")
        if len(ids) != 1:
            raise ConfigError(
                f"the manifest lists {len(ids)} active coordinators; name one with --coordinator-id"
            )
        return ids[0]

    def by_key_id(self, key_id: str) -> Member:
        """The active member whose signing key has this id."""
        for m in self.members:
            if m.key_id == key_id and not m.revoked:
                return m
        raise UnknownMember(f"no active member has key {key_id}")

    def payload(self) -> bytes:
        """The payload bytes the authority signs (verbatim when parsed from a file)."""
        if self._signed:
            return self._signed
        body: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "federation": self.federation,
            "version": self.version,
            "issued_at": self.issued_at,
            "ca_sha256": self.ca_sha256,
            "members": [m.to_json() for m in self.members],
        }
        if self.previous_sha256 is not None:
            # absent, not null, when unset: a legacy manifest re-signs to the same bytes
            body["previous_sha256"] = self.previous_sha256
        return canonical_json(body)

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the signed payload: what the next version names as its predecessor."""
        return hashlib.sha256(self.payload()).hexdigest()


def sign_manifest(manifest: Manifest, *, key: SigningKey) -> str:
    """The manifest file text: authority key and the signed envelope."""
    if key.public_key != manifest.authority_key:
        raise ValueError("the manifest must be signed by its own authority key")
    envelope = sign_envelope(payload_type=MANIFEST_V1, payload=manifest.payload(), key=key)
    return json.dumps(
        {
            "authority_key": base64.b64encode(key.public_key).decode(),
            "envelope": json.loads(envelope.to_json()),
        },
        indent=1,
        ensure_ascii=False,
    )


def parse_manifest(text: str | bytes, *, authority_key: bytes | None = None) -> Manifest:
    """Verify a manifest file's signature and return the manifest; raises VerificationError.

    ``authority_key`` pins the expected authority; without it the key written in
    the file is trusted (the file itself is then the root of trust).
    """
    try:
        outer = parse_json(text)
        if not isinstance(outer, dict) or not isinstance(outer.get("authority_key"), str):
            raise ValueError("not a manifest file (authority_key and envelope)")
        written = base64.b64decode(outer["authority_key"], validate=True)
        if len(written) != PUBLIC_KEY_SIZE:
            raise ValueError(f"authority_key is not a {PUBLIC_KEY_SIZE}-byte Ed25519 key")
        envelope = Envelope.from_json(json.dumps(outer["envelope"]))
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise VerificationError(f"malformed manifest file: {exc}") from None
    if authority_key is not None and written != authority_key:
        raise VerificationError("the manifest is signed by another authority than the pinned one")
    payload = verify_envelope(
        envelope, expected_payload_type=MANIFEST_V1, trusted_keys={public_key_id(written): written}
    )
    try:
        body = parse_json(payload)
        if not isinstance(body, dict) or body.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"not a {MANIFEST_FORMAT} body")
        version = body["version"]
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ValueError(f"version {version!r} is not a non-negative integer")
        members = body["members"]
        if not isinstance(members, list) or not all(isinstance(m, dict) for m in members):
            raise ValueError("members must be a list of objects")
        previous = body.get("previous_sha256")
        if previous is not None and not (
            isinstance(previous, str) and _SHA256_HEX.fullmatch(previous)
        ):
            raise ValueError("previous_sha256 is not a lowercase hex SHA-256")
        if previous is not None and version == 0:
            raise ValueError("version 0 names a predecessor")
        manifest = Manifest(
            federation=str(body["federation"]),
            version=version,
            issued_at=str(body["issued_at"]),
            authority_key=written,
            members=tuple(Member.from_json(m) for m in members),
            ca_sha256=str(body.get("ca_sha256", "")),
            previous_sha256=previous,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise VerificationError(f"malformed manifest: {exc}") from None
    object.__setattr__(manifest, "_signed", payload)
    return manifest


def load_manifest(path: Path, *, authority_key: bytes | None = None) -> Manifest:
    """Read and verify a manifest file."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise VerificationError(f"cannot read manifest {path}: {exc.strerror}") from None
    return parse_manifest(text, authority_key=authority_key)


def check_successor(previous: Manifest, manifest: Manifest) -> None:
    """Raise VerificationError unless ``manifest`` is the version right after ``previous``.

    Same federation and authority, version + 1, and ``previous_sha256`` equal to the
    predecessor's digest; a legacy (unlinked) version may follow only a legacy one.
    """
    if (manifest.federation, manifest.authority_key) != (
        previous.federation,
        previous.authority_key,
    ):
        raise VerificationError(
            f"manifest version {manifest.version} belongs to another federation or authority"
        )
    if manifest.version != previous.version + 1:
        raise VerificationError(
            f"manifest version {manifest.version} does not follow version {previous.version}"
        )
    if manifest.previous_sha256 is None:
        if previous.previous_sha256 is not None:
            raise VerificationError(
                f"manifest version {manifest.version} does not name its predecessor, "
                f"but version {previous.version} does: the chain is broken"
            )
    elif manifest.previous_sha256 != previous.digest:
        raise VerificationError(
            f"manifest version {manifest.version} does not chain from version "
            f"{previous.version} (another version {previous.version} was signed, or this "
            "history was altered)"
        )


def check_chain(manifests: Sequence[Manifest]) -> None:
    """Raise VerificationError unless ``manifests`` is one unbroken chain, oldest first."""
    if not manifests:
        raise VerificationError("an empty manifest history")
    for previous, manifest in itertools.pairwise(manifests):
        check_successor(previous, manifest)


def verify_history(files: Sequence[str | bytes], authority_key: bytes) -> list[Manifest]:
    """Verify a manifest history: every file signed by ``authority_key``, versions rising
    by one, each naming its predecessor's digest. Returns the manifests, oldest first.

    The files may come in any order (they are sorted by version); a gap, a repeated
    version, a broken link or a foreign signature raises VerificationError.
    """
    manifests = sorted(
        (parse_manifest(text, authority_key=authority_key) for text in files),
        key=lambda m: m.version,
    )
    check_chain(manifests)
    return manifests


def manifest_entry(text: str | bytes, *, authority_key: bytes) -> dict[str, Any]:
    """The log entry recording that a member starts using this manifest file.

    ``{"kind": "manifest", "version": N, "manifest": <the file's text>}``: the file
    is verified against ``authority_key`` first and logged verbatim, so an auditor
    can verify it again from the log alone.
    """
    manifest = parse_manifest(text, authority_key=authority_key)
    try:
        decoded = text.decode("utf-8") if isinstance(text, bytes) else text
    except UnicodeDecodeError:
        raise VerificationError("the manifest file is not UTF-8") from None
    return {"kind": MANIFEST_ENTRY_KIND, "version": manifest.version, "manifest": decoded}
