"""A member's identity: its own keys, its certificate request, and what the authority issued.

Design: **every member creates its own keys where it runs; the authority only
signs.** :func:`create_identity` makes the Ed25519 signing key and the TLS key
in the member's home and writes ``request.json``; the request goes to the
province authority (``fedscreen pki issue``, see :mod:`fedscreen.trust.authority`), and what
comes back — the certificate, the CA certificate and the signed manifest — is
checked and installed by :func:`install_issued`. Private keys never leave the
home and are never printed.

An identity lives in the member's home (a node home, a coordinator home, an
analyst's or an auditor's)::

    HOME/
      signing.key     Ed25519 signing key (fedscreen key file), 0600; adopted if present
      tls.key         EC P-256 TLS private key (PKCS#8 PEM), 0600
      identity.json   id, role, name, level, signing public key (base64)
      request.json    the certificate request for the authority (public)
      tls.pem         the member's certificate                 (once issued)
      ca.pem          the federation CA certificate            (once issued)
      manifest.json   the latest signed manifest, verbatim     (once issued)
      manifests/      every manifest version installed here, by version (trust.history)
      authority.pub   the manifest authority's key, pinned at the first install
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedscreen._util.files import replace_file, write_new_file
from fedscreen.crypto.envelope import pae
from fedscreen.crypto.signing import PUBLIC_KEY_SIZE, SigningKey, public_key_id
from fedscreen.errors import ConfigError, VerificationError
from fedscreen.trust.authority import issue, load_authority, manifest_text
from fedscreen.trust.certs import (
    CLAIMS_OID,
    MAX_PEM_BYTES,
    REQUEST_FORMAT,
    REQUEST_PROOF_TYPE,
    cert_identity,
    cert_sha256,
    check_issued_certificate,
    claims_bytes,
    member_uri,
    read_private_file,
    read_public_file,
    request_fingerprint,
    validate_member_fields,
)
from fedscreen.trust.history import HISTORY_DIR, MAX_MANIFEST_BYTES, keep_version
from fedscreen.trust.manifest import Manifest, check_successor, parse_manifest

__all__ = [
    "Identity",
    "check_update",
    "create_identity",
    "install_issued",
    "load_identity",
    "update_manifest",
]

SIGNING_KEY_FILE: Final = "signing.key"
TLS_KEY_FILE: Final = "tls.key"
IDENTITY_FILE: Final = "identity.json"
REQUEST_FILE: Final = "request.json"
CERT_FILE: Final = "tls.pem"
CA_FILE: Final = "ca.pem"
MANIFEST_FILE: Final = "manifest.json"
AUTHORITY_PUB_FILE: Final = "authority.pub"
IDENTITY_FORMAT: Final = "fedscreen-identity/1"
_KEY_FILES: Final = (SIGNING_KEY_FILE, TLS_KEY_FILE, IDENTITY_FILE, REQUEST_FILE)


@dataclass(frozen=True)
class Identity:
    """A member identity directory (public facts; private keys are read on demand)."""

    home: Path
    member_id: str
    role: str
    name: str
    level: str
    #: raw 32-byte Ed25519 public key
    signing_public_key: bytes
    #: an analyst's scope or a node's place (``trust.scope``); "" for none
    scope: str = ""

    @property
    def key_id(self) -> str:
        """The id of this member's signing key."""
        return public_key_id(self.signing_public_key)

    @property
    def request_path(self) -> Path:
        """The certificate request to send to the authority."""
        return self.home / REQUEST_FILE

    @property
    def cert_path(self) -> Path:
        """The member's TLS certificate (once issued)."""
        return self.home / CERT_FILE

    @property
    def tls_key_path(self) -> Path:
        """The TLS private key (0600)."""
        return self.home / TLS_KEY_FILE

    @property
    def ca_path(self) -> Path:
        """The federation CA certificate (once issued)."""
        return self.home / CA_FILE

    @property
    def manifest_path(self) -> Path:
        """The latest manifest installed (once issued)."""
        return self.home / MANIFEST_FILE

    @property
    def is_issued(self) -> bool:
        """Whether the authority's certificate has been installed."""
        return self.cert_path.is_file() and self.ca_path.is_file()

    def signing_key(self) -> SigningKey:
        """Load the Ed25519 signing key (refused if group or others can read it)."""
        key = SigningKey.load(self.home / SIGNING_KEY_FILE)
        if key.public_key != self.signing_public_key:
            raise ConfigError(f"{self.home / SIGNING_KEY_FILE} does not match {IDENTITY_FILE}")
        return key

    def tls_files(self) -> tuple[bytes, bytes, bytes]:
        """(certificate PEM, private key PEM, CA certificate PEM) for mutual TLS."""
        if not self.is_issued:
            raise ConfigError(
                f"{self.home}: not issued yet: run fedscreen pki issue "
                f"(send the authority {self.request_path})"
            )
        cert = read_public_file(self.cert_path)
        key = read_private_file(self.tls_key_path)
        ca = read_public_file(self.ca_path)
        return cert, key, ca

    def request_fingerprint(self) -> str:
        """The fingerprint of ``request.json`` to read out to the authority."""
        try:
            request = json.loads(read_public_file(self.request_path))
            csr = x509.load_pem_x509_csr(str(request["csr"]).encode("ascii"))
        except (ValueError, KeyError, TypeError, UnicodeEncodeError, x509.InvalidVersion):
            raise ConfigError(f"{self.request_path}: not a certificate request") from None
        return request_fingerprint(csr)

    def manifest(self) -> Manifest:
        """The installed manifest, verified against the pinned authority key."""
        return self.manifest_file()[0]

    def manifest_file(self) -> tuple[Manifest, bytes]:
        """The installed manifest and the exact bytes it was verified from (read once,
        so a concurrent update cannot pair one version's bytes with another's)."""
        pinned = _pinned_key(self.home)
        if pinned is None or not self.manifest_path.is_file():
            raise ConfigError(f"{self.home}: no manifest installed yet: run fedscreen pki issue")
        text = _read_manifest(self.manifest_path)
        return parse_manifest(text, authority_key=pinned), text


def create_identity(
    home: Path, *, member_id: str, role: str, name: str, level: str = "", scope: str = ""
) -> Identity:
    """Create the keys, ``identity.json`` and ``request.json`` in ``home``.

    ``home`` may already exist (e.g. a node home). A ``signing.key`` already
    there (``fedscreen node init`` makes one) is adopted, not replaced; any other
    existing identity file refuses the call, and nothing is overwritten.
    """
    validate_member_fields(member_id=member_id, role=role, name=name, level=level, scope=scope)
    for file_name in _KEY_FILES:
        path = home / file_name
        if file_name != SIGNING_KEY_FILE and (path.exists() or path.is_symlink()):
            raise ConfigError(f"{path} already exists; refusing to overwrite an identity")
    if not home.exists():
        home.mkdir(parents=True, mode=0o700)
    adopted = (home / SIGNING_KEY_FILE).exists()
    signing_key = SigningKey.load(home / SIGNING_KEY_FILE) if adopted else SigningKey.generate()
    tls_key = ec.generate_private_key(ec.SECP256R1())
    request = _build_request(
        member_id=member_id,
        role=role,
        name=name,
        level=level,
        scope=scope,
        signing_key=signing_key,
        tls_key=tls_key,
    )
    if not adopted:
        signing_key.save(home / SIGNING_KEY_FILE)
    write_new_file(
        home / TLS_KEY_FILE,
        tls_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        mode=0o600,
    )
    write_new_file(home / REQUEST_FILE, _json_bytes(request), mode=0o644)
    identity_doc = {
        "format": IDENTITY_FORMAT,
        "id": member_id,
        "role": role,
        "name": name,
        "level": level,
        **({"scope": scope} if scope else {}),
        "signing_key": base64.b64encode(signing_key.public_key).decode(),
    }
    # written last: a home without it is recognisably unfinished
    write_new_file(home / IDENTITY_FILE, _json_bytes(identity_doc), mode=0o644)
    return load_identity(home)


def _build_request(
    *,
    member_id: str,
    role: str,
    name: str,
    level: str,
    scope: str,
    signing_key: SigningKey,
    tls_key: ec.EllipticCurvePrivateKey,
) -> dict[str, Any]:
    """The request document: fields, the CSR signed by the TLS key, the Ed25519 proof."""
    claims = claims_bytes(
        member_id=member_id,
        role=role,
        name=name,
        level=level,
        signing_key=signing_key.public_key,
        scope=scope,
    )
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, member_id)]))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(member_id),
                    x509.UniformResourceIdentifier(member_uri(role, member_id)),
                ]
            ),
            critical=False,
        )
        .add_attribute(CLAIMS_OID, claims)
        .sign(tls_key, hashes.SHA256())
    )
    der = csr.public_bytes(serialization.Encoding.DER)
    proof = signing_key.sign(pae(REQUEST_PROOF_TYPE, der))
    return {
        "format": REQUEST_FORMAT,
        "id": member_id,
        "role": role,
        "name": name,
        "level": level,
        **({"scope": scope} if scope else {}),
        "signing_key": base64.b64encode(signing_key.public_key).decode(),
        "csr": csr.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        "proof": base64.b64encode(proof).decode(),
    }


def load_identity(home: Path) -> Identity:
    """Read ``home/identity.json``; raise ConfigError if it is missing or malformed."""
    path = home / IDENTITY_FILE
    if not path.is_file():
        raise ConfigError(f"{home} holds no member identity; run `fedscreen identity init`")
    try:
        doc = json.loads(read_public_file(path))
        if doc["format"] != IDENTITY_FORMAT:
            raise ValueError(f"format {doc['format']!r}")
        member_id, role = str(doc["id"]), str(doc["role"])
        name, level = str(doc["name"]), str(doc.get("level", ""))
        scope = str(doc.get("scope", ""))
        key = base64.b64decode(str(doc["signing_key"]), validate=True)
        if len(key) != PUBLIC_KEY_SIZE:
            raise ValueError("signing_key is not an Ed25519 public key")
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise ConfigError(f"{path}: malformed identity: {exc}") from None
    validate_member_fields(member_id=member_id, role=role, name=name, level=level, scope=scope)
    return Identity(
        home=home,
        member_id=member_id,
        role=role,
        name=name,
        level=level,
        signing_public_key=key,
        scope=scope,
    )


def install_issued(
    home: Path, cert_pem: bytes, ca_pem: bytes, manifest_text: str | bytes
) -> Manifest:
    """Check what the authority issued against this identity, then install it.

    Refused (VerificationError) unless: the certificate is signed by the CA, is
    for this member's TLS key, names this id and role; the manifest verifies
    (against the pinned authority key, if one was installed before), is not
    older than the installed one, names this CA, and lists this member, active,
    with this signing key and this certificate. A different CA than the one
    installed before is refused. Pins the authority key on first install.
    """
    identity = load_identity(home)
    cert = _parse_cert(cert_pem, "certificate")
    ca = _parse_cert(ca_pem, "CA certificate")
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):
        constraints = None
    if constraints is None or not constraints.ca:
        raise VerificationError("the CA certificate is not a CA (RFC 5280 §4.2.1.9)")
    tls_key = _load_tls_key(identity.tls_key_path)
    check_issued_certificate(cert, ca, public_key=tls_key.public_key())
    who = cert_identity(cert)
    if (who.member_id, who.role) != (identity.member_id, identity.role):
        raise VerificationError(
            f"the certificate is for {who.role} {who.member_id!r}, "
            f"not {identity.role} {identity.member_id!r}"
        )
    if identity.ca_path.is_file() and cert_sha256(read_public_file(identity.ca_path)) != (
        cert_sha256(ca)
    ):
        raise VerificationError(
            f"{identity.ca_path} holds another federation CA; refusing to replace it"
        )
    manifest = _check_manifest(identity, manifest_text, ca_sha256=cert_sha256(ca))
    member = manifest.member(identity.member_id, role=identity.role)
    if member.signing_key != identity.signing_public_key:
        raise VerificationError("the manifest lists another signing key for this member")
    if member.tls_sha256 != cert_sha256(cert):
        raise VerificationError("the manifest lists another certificate for this member")
    if not identity.ca_path.is_file():
        replace_file(identity.ca_path, ca.public_bytes(serialization.Encoding.PEM))
    replace_file(identity.cert_path, cert.public_bytes(serialization.Encoding.PEM))
    _install_manifest(identity, manifest, manifest_text)
    return manifest


def update_manifest(home: Path, manifest_text: str | bytes) -> Manifest:
    """Install a newer manifest (e.g. after a revocation); returns it.

    It must pass :func:`check_update`. It may mark this member revoked (a running
    node adopts what it is pushed); the operator's command refuses that unless told.
    """
    identity = load_identity(home)
    manifest = check_update(home, manifest_text)
    _install_manifest(identity, manifest, manifest_text)
    return manifest


def check_update(home: Path, manifest_text: str | bytes) -> Manifest:
    """The manifest ``update_manifest`` would install, verified; raises, installs nothing.

    It must verify under the pinned authority key, name the installed CA, not be
    older than the installed manifest and, when it is the next version, name the
    installed one as its predecessor (a rollback or a forked history is refused).
    A jump over versions is accepted on the authority's signature alone: the
    versions skipped are not here to check the links against (the auditor, who
    gets the whole history, checks them).
    """
    identity = load_identity(home)
    if _pinned_key(identity.home) is None or not identity.ca_path.is_file():
        raise ConfigError(f"{home}: not issued yet: run fedscreen pki issue")
    ca_sha = cert_sha256(read_public_file(identity.ca_path))
    return _check_manifest(identity, manifest_text, ca_sha256=ca_sha)


def _check_manifest(identity: Identity, text: str | bytes, *, ca_sha256: str) -> Manifest:
    pinned = _pinned_key(identity.home)
    manifest = parse_manifest(text, authority_key=pinned)
    if manifest.ca_sha256 != ca_sha256:
        raise VerificationError("the manifest names another federation CA")
    if identity.manifest_path.is_file() and pinned is not None:
        installed = parse_manifest(_read_manifest(identity.manifest_path), authority_key=pinned)
        if manifest.version < installed.version:
            raise VerificationError(
                f"manifest version {manifest.version} is older than the installed "
                f"version {installed.version}; refusing to roll back"
            )
        if manifest.version == installed.version and manifest.digest != installed.digest:
            raise VerificationError(f"two different manifests claim version {manifest.version}")
        if manifest.version == installed.version + 1:
            try:
                check_successor(installed, manifest)
            except VerificationError as exc:
                raise VerificationError(f"{exc}; refusing to install it") from None
    return manifest


def _install_manifest(identity: Identity, manifest: Manifest, text: str | bytes) -> None:
    if _pinned_key(identity.home) is None:
        replace_file(
            identity.home / AUTHORITY_PUB_FILE,
            base64.b64encode(manifest.authority_key) + b"\n",
        )
    data = text.encode() if isinstance(text, str) else text
    # kept first: manifest.json is the commit point, and a kept copy is harmless alone
    keep_version(identity.home / HISTORY_DIR, manifest, data)
    replace_file(identity.manifest_path, data)


def _pinned_key(home: Path) -> bytes | None:
    """The authority key pinned at first install, or None before."""
    path = home / AUTHORITY_PUB_FILE
    if not path.is_file():
        return None
    try:
        key = base64.b64decode(read_public_file(path, max_bytes=1024).strip(), validate=True)
    except binascii.Error:
        key = b""
    if len(key) != PUBLIC_KEY_SIZE:
        raise ConfigError(f"{path}: not a base64 Ed25519 public key")
    return key


def _read_manifest(path: Path) -> bytes:
    return read_public_file(path, max_bytes=MAX_MANIFEST_BYTES)


def _parse_cert(data: bytes, what: str) -> x509.Certificate:
    if len(data) > MAX_PEM_BYTES:
        raise VerificationError(f"the {what} is larger than {MAX_PEM_BYTES} bytes")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise VerificationError(f"the {what} is not a PEM certificate") from None


def _load_tls_key(path: Path) -> ec.EllipticCurvePrivateKey:
    data = read_private_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path}: the TLS key must be an EC key")
    return key


def _json_bytes(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode()


def issue_here(authority_dir: Path, home: Path) -> Manifest:
    """Issue the identity in ``home`` and install it, with the authority on this machine.

    For demos, tests and benchmarks; a deployment moves ``request.json`` and the issued
    files between machines (``fedscreen pki issue --request … --out …``).
    """
    cert_pem, _ = issue(authority_dir, load_identity(home).request_path)
    return install_issued(
        home, cert_pem, load_authority(authority_dir).ca_pem, manifest_text(authority_dir)
    )
