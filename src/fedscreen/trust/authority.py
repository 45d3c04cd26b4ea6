"""The federation authority: its CA, its manifest key, issuing and revoking members.

The request and certificate formats it checks are :mod:`fedscreen.trust.certs`.

Authority directory::

    AUTH/
      ca.key            EC P-256 CA private key (PKCS#8 PEM), 0600
      ca.pem            self-signed federation CA certificate
      authority.key     Ed25519 manifest-signing key, 0600
      authority.pub     its raw public key, base64
      manifest.json     the current signed manifest (the commit point of every change)
      manifests/        every manifest version ever signed, 00000000.json, 00000001.json, ...
                        each naming its predecessor's digest (a chain: trust.manifest)
      members/<id>.json each member's manifest entry, certificate and request fingerprint
      .lock             serialises issue/revoke

Revoking a member signs a new manifest version in which it is marked revoked;
peers match TLS certificates against the manifest (:func:`verify_peer`), so a
revoked member's still-valid certificate no longer admits it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import fcntl
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedscreen._util.files import replace_file, write_new_file
from fedscreen.crypto.signing import PUBLIC_KEY_SIZE, SigningKey, public_key_id
from fedscreen.errors import ConfigError, UnknownMember, VerificationError
from fedscreen.trust.certs import (
    DEFAULT_CA_VALIDITY_DAYS,
    DEFAULT_LEAF_VALIDITY_DAYS,
    MAX_FEDERATION_CHARS,
    CertRequest,
    cert_sha256,
    check_text,
    load_cert,
    read_private_file,
    read_public_file,
    read_request,
    verify_request,
)
from fedscreen.trust.history import HISTORY_DIR, version_name
from fedscreen.trust.manifest import (
    Manifest,
    Member,
    a_role,
    load_manifest,
    show_id,
    sign_manifest,
)
from fedscreen.trust.scope import check_member_scope, node_place
from fedscreen.trust.x509build import ca_certificate, leaf_certificate

__all__ = [
    "AUTHORITY_KEY_FILE",
    "AUTHORITY_PUB_FILE",
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "MANIFESTS_DIR",
    "MANIFEST_FILE",
    "MEMBERS_DIR",
    "Authority",
    "current_manifest",
    "init_authority",
    "issue",
    "load_authority",
    "manifest_text",
    "replace_manifest",
    "revoke",
    "set_scope",
]


CA_KEY_FILE: Final = "ca.key"
CA_CERT_FILE: Final = "ca.pem"
AUTHORITY_KEY_FILE: Final = "authority.key"
AUTHORITY_PUB_FILE: Final = "authority.pub"
MANIFEST_FILE: Final = "manifest.json"
MANIFESTS_DIR: Final = HISTORY_DIR
MEMBERS_DIR: Final = "members"
_LOCK_FILE: Final = ".lock"


def _make_private_dir(directory: Path) -> None:
    """Create ``directory`` (mode 0700) or accept an existing empty one."""
    if directory.exists():
        if not directory.is_dir() or any(directory.iterdir()):
            raise ConfigError(f"{directory} is not an empty directory; refusing to overwrite")
    else:
        directory.mkdir(parents=True, mode=0o700)
    directory.chmod(0o700)


# ---------------------------------------------------------------- the authority


@dataclass(frozen=True)
class Authority:
    """A province authority directory: its CA certificate and manifest-signing public key."""

    directory: Path
    federation: str
    ca_pem: bytes
    #: raw Ed25519 public key that signs manifests
    authority_key: bytes

    @property
    def ca_sha256(self) -> str:
        """SHA-256 (hex) of the CA certificate's DER."""
        return cert_sha256(self.ca_pem)

    @property
    def authority_key_id(self) -> str:
        """The manifest-signing key's id."""
        return public_key_id(self.authority_key)


def init_authority(
    directory: Path, *, federation: str, validity_days: int = DEFAULT_CA_VALIDITY_DAYS
) -> Authority:
    """Create the CA, the authority signing key and manifest version 0 in a new directory."""
    check_text("federation", federation, MAX_FEDERATION_CHARS, required=True)
    if not 1 <= validity_days <= 36500:
        raise ConfigError("CA validity must be 1 to 36500 days")
    _make_private_dir(directory)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = ca_certificate(ca_key, federation=federation, validity_days=validity_days)
    signing_key = SigningKey.generate()
    write_new_file(
        directory / CA_KEY_FILE,
        ca_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        mode=0o600,
    )
    signing_key.save(directory / AUTHORITY_KEY_FILE)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    write_new_file(directory / CA_CERT_FILE, ca_pem, mode=0o644)
    write_new_file(
        directory / AUTHORITY_PUB_FILE,
        base64.b64encode(signing_key.public_key) + b"\n",
        mode=0o644,
    )
    (directory / MEMBERS_DIR).mkdir(mode=0o700)
    (directory / MANIFESTS_DIR).mkdir(mode=0o755)
    manifest = Manifest(
        federation=federation,
        version=0,
        issued_at=_now(),
        authority_key=signing_key.public_key,
        members=(),
        ca_sha256=cert_sha256(ca_cert),
    )
    _publish(directory, manifest, signing_key)
    return load_authority(directory)


def load_authority(directory: Path) -> Authority:
    """Read an authority directory (public parts only)."""
    if not (directory / AUTHORITY_PUB_FILE).is_file():
        raise ConfigError(f"{directory} is not an authority directory; run `fedscreen pki init`")
    manifest = current_manifest(directory)
    ca_pem = read_public_file(directory / CA_CERT_FILE)
    if cert_sha256(ca_pem) != manifest.ca_sha256:
        raise ConfigError(f"{directory / CA_CERT_FILE} is not the CA the manifest names")
    return Authority(
        directory=directory,
        federation=manifest.federation,
        ca_pem=ca_pem,
        authority_key=manifest.authority_key,
    )


def _authority_public_key(directory: Path) -> bytes:
    text = read_public_file(directory / AUTHORITY_PUB_FILE, max_bytes=1024)
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except binascii.Error:
        key = b""
    if len(key) != PUBLIC_KEY_SIZE:
        raise ConfigError(f"{directory / AUTHORITY_PUB_FILE}: not a base64 Ed25519 public key")
    return key


def current_manifest(directory: Path) -> Manifest:
    """The authority's current manifest, verified against its pinned ``authority.pub``."""
    return load_manifest(directory / MANIFEST_FILE, authority_key=_authority_public_key(directory))


def manifest_text(directory: Path) -> str:
    """The current manifest file's text (verified first), to hand to members."""
    current_manifest(directory)
    return read_public_file(directory / MANIFEST_FILE, max_bytes=16 * 1024 * 1024).decode()


def issue(
    authority_dir: Path,
    request: Mapping[str, Any] | Path,
    *,
    validity_days: int = DEFAULT_LEAF_VALIDITY_DAYS,
    replace: bool = False,
    expect_fingerprint: str | None = None,
) -> tuple[bytes, Member]:
    """Verify a request, issue its TLS certificate and sign a new manifest version with it.

    Returns the certificate (PEM) and the new manifest entry. An active member's id
    is re-issued only with ``replace``; a signing key is never shared between
    members or reused after its member was revoked.
    """
    if not 1 <= validity_days <= 3650:
        raise ConfigError("certificate validity must be 1 to 3650 days")
    parsed = read_request(request) if isinstance(request, Path) else request
    verified = verify_request(parsed)
    if expect_fingerprint is not None:
        wanted = re.sub(r"[\s:]", "", expect_fingerprint).lower()
        if not wanted or not verified.fingerprint.startswith(wanted) or len(wanted) < 16:
            raise VerificationError(
                f"request fingerprint {verified.fingerprint} does not match the expected "
                f"{expect_fingerprint!r} (give at least 16 hex digits)"
            )
    with _locked(authority_dir):
        manifest = current_manifest(authority_dir)
        _check_admissible(manifest, verified, replace=replace)
        verified = _kept_placement(manifest, verified)
        if verified.role == "node":
            _check_one_county_node(manifest, verified.member_id, verified.level, verified.scope)
        ca_cert = load_cert(read_public_file(authority_dir / CA_CERT_FILE))
        if cert_sha256(ca_cert) != manifest.ca_sha256:
            raise ConfigError(f"{authority_dir / CA_CERT_FILE} is not the CA the manifest names")
        ca_key = _load_ca_key(authority_dir / CA_KEY_FILE)
        signing_key = SigningKey.load(authority_dir / AUTHORITY_KEY_FILE)
        cert = leaf_certificate(
            verified,
            ca_key=ca_key,
            ca_cert=ca_cert,
            federation=manifest.federation,
            validity_days=validity_days,
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        member = Member(
            id=verified.member_id,
            role=verified.role,
            name=verified.name,
            signing_key=verified.signing_key,
            tls_sha256=cert_sha256(cert),
            level=verified.level,
            scope=verified.scope,
            offline=_kept_offline(manifest, verified.member_id),
        )
        others = [m for m in manifest.members if m.id != member.id]
        new = replace_manifest(manifest, members=(*others, member))
        record = {
            "member": member.to_json(),
            "certificate": cert_pem.decode("ascii"),
            "certificate_not_after": cert.not_valid_after_utc.isoformat(),
            "request_fingerprint": verified.fingerprint,
            "issued_at": new.issued_at,
            "manifest_version": new.version,
        }
        _publish(authority_dir, new, signing_key)
        replace_file(
            authority_dir / MEMBERS_DIR / f"{member.id}.json",
            json.dumps(record, indent=1, ensure_ascii=False).encode(),
            mode=0o644,
        )
    return cert_pem, member


def _check_one_county_node(manifest: Manifest, member_id: str, level: str, scope: str) -> None:
    """ConfigError if a county node would join a county that already has one: a county
    has one county node (its other nodes are school nodes), so a secure release of
    ``min_nodes`` nodes, which school nodes never join, is never one county's value."""
    if (level or "county") != "county":
        return
    place = node_place(Member(member_id, "node", "", b"", "", level=level, scope=scope))
    if not place.startswith("county:"):
        return  # placed at the province (an id that is no county code): a holder of its own
    for m in manifest.members:
        county_node = m.role == "node" and (m.level or "county") == "county"
        if county_node and not m.revoked and m.id != member_id and node_place(m) == place:
            raise ConfigError(
                f"{place} already has county node {m.id}; a county has one county node "
                "(a school's own node is --kind school)"
            )


def _kept_offline(manifest: Manifest, member_id: str) -> bool:
    """A re-issued node stays offline if it was (only ``pki link`` changes that)."""
    current = manifest.find(member_id)
    return current is not None and not current.revoked and current.offline


def _kept_placement(manifest: Manifest, request: CertRequest) -> CertRequest:
    """The request as issued: re-issuing an active member (new keys, renewal) keeps the
    scope and node kind the manifest gives it, whatever the new request claims; only
    ``pki scope`` changes a scope (a rekey must not quietly widen a city's analyst)."""
    current = manifest.find(request.member_id)
    if current is None or current.revoked:
        return request
    level = current.level if current.role == "node" else request.level
    return dataclasses.replace(request, scope=current.scope, level=level)


def _check_admissible(manifest: Manifest, request: CertRequest, *, replace: bool) -> None:
    for m in manifest.members:
        if m.id == request.member_id:
            if not m.revoked and not replace:
                raise ConfigError(f"{m.id!r} is already an active member; re-issue with --replace")
            if m.revoked and m.signing_key == request.signing_key:
                raise ConfigError(
                    f"{m.id!r} was revoked with this signing key; create a new identity"
                )
            if m.role != request.role and not m.revoked:
                raise ConfigError(
                    f"{m.id!r} is {a_role(m.role)}; revoke it before issuing it as "
                    f"{a_role(request.role)}"
                )
        elif m.id.lower() == request.member_id.lower():
            raise ConfigError(f"{request.member_id!r} differs from member {m.id!r} only in case")
        elif m.signing_key == request.signing_key:
            raise ConfigError(f"this signing key already belongs to member {m.id!r}")


def replace_manifest(manifest: Manifest, *, members: tuple[Member, ...]) -> Manifest:
    """The next manifest version with these members (sorted by id), chained to ``manifest``."""
    return Manifest(
        federation=manifest.federation,
        version=manifest.version + 1,
        issued_at=_now(),
        authority_key=manifest.authority_key,
        members=tuple(sorted(members, key=lambda m: m.id)),
        ca_sha256=manifest.ca_sha256,
        previous_sha256=manifest.digest,
    )


def revoke(authority_dir: Path, member_id: str) -> Manifest:
    """Sign a new manifest version in which ``member_id`` is revoked; returns it."""
    return _amend(authority_dir, member_id, "revoke", revoked=True)


def set_scope(authority_dir: Path, member_id: str, scope: str) -> Manifest:
    """Sign a new manifest version giving ``member_id`` (an analyst, or a node's place)
    this scope (``trust.scope``); returns it. The member keeps its keys and certificate:
    the manifest, not the certificate's copy from issue time, is what every check reads.
    """
    if not scope:
        # an unset shell variable must not widen an analyst to the province
        raise ConfigError("give the scope explicitly (province, city:…, county:…, node:…)")
    return _amend(authority_dir, member_id, "change the scope of", scope=scope)


def set_offline(authority_dir: Path, member_id: str, *, offline: bool) -> Manifest:
    """Sign a new manifest version marking node ``member_id`` offline (its queries are
    queued at the coordinator and carried to it by file) or back online."""
    manifest = current_manifest(authority_dir)
    member = manifest.find(member_id)
    if member is not None and not member.revoked and member.role != "node":
        raise ConfigError(f"{show_id(member_id)} is {a_role(member.role)}: only nodes go offline")
    if member is not None and not member.revoked and member.offline == offline:
        # a version changing nothing would still have to be installed everywhere
        raise ConfigError(
            f"{show_id(member_id)} is already {'offline' if offline else 'online'} in manifest "
            f"version {manifest.version}: nothing signed"
        )
    return _amend(authority_dir, member_id, "mark offline", offline=offline)


def _amend(authority_dir: Path, member_id: str, what: str, **changes: Any) -> Manifest:
    """Sign a new manifest version with one active member's fields changed."""
    with _locked(authority_dir):
        manifest = current_manifest(authority_dir)
        try:
            target = manifest.member(member_id)
        except UnknownMember:
            raise ConfigError(
                f"{show_id(member_id)} is not an active member; nothing to {what}"
            ) from None
        changed = dataclasses.replace(target, **changes)
        if "scope" in changes:
            check_member_scope(
                role=changed.role, level=changed.level, scope=changed.scope, member_id=changed.id
            )
            if changed.role == "node":
                _check_one_county_node(manifest, changed.id, changed.level, changed.scope)
        signing_key = SigningKey.load(authority_dir / AUTHORITY_KEY_FILE)
        members = tuple(changed if m.id == target.id else m for m in manifest.members)
        new = replace_manifest(manifest, members=members)
        _publish(authority_dir, new, signing_key)
        # the member record is a convenience copy; the signed manifest is authoritative
        record_path = authority_dir / MEMBERS_DIR / f"{target.id}.json"
        with contextlib.suppress(ConfigError, ValueError, TypeError):
            record = json.loads(read_public_file(record_path))
            record["member"] = changed.to_json()
            if changed.revoked:
                record["revoked_at"] = new.issued_at
            record["manifest_version"] = new.version
            replace_file(
                record_path, json.dumps(record, indent=1, ensure_ascii=False).encode(), mode=0o644
            )
    return new


def _publish(directory: Path, manifest: Manifest, key: SigningKey) -> None:
    """Sign, keep a numbered copy, then switch ``manifest.json`` (the commit point)."""
    text = sign_manifest(manifest, key=key).encode()
    write_new_file(directory / MANIFESTS_DIR / version_name(manifest.version), text, mode=0o644)
    replace_file(directory / MANIFEST_FILE, text, mode=0o644)


def _load_ca_key(path: Path) -> ec.EllipticCurvePrivateKey:
    data = read_private_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path}: the CA key must be an EC key")
    return key


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise changes to an authority directory (advisory ``flock``)."""
    if not (directory / AUTHORITY_PUB_FILE).is_file():
        raise ConfigError(f"{directory} is not an authority directory; run `fedscreen pki init`")
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(directory / _LOCK_FILE, flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
