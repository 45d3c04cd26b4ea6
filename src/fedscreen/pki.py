"""The federation's PKI: the authority's CA and manifest, and the formats members use.

Design: **every member creates its own keys where it runs; the authority only
signs.** A member (node, coordinator, analyst, auditor) runs ``fedscreen
identity init``, which makes its Ed25519 signing key and its TLS key in its own
home and writes ``request.json`` (see :mod:`fedscreen.trust.identity`). The request
travels to the province authority, which checks it (:func:`verify_request`),
issues a TLS certificate (:func:`issue`), adds the member to a new, signed
version of the federation manifest, and sends back the certificate, the CA
certificate and the manifest. No private key ever leaves the machine it was
made on.

A request proves possession of both keys and binds them together:

* the PKCS#10 CSR (RFC 2986) is signed by the TLS key; its subject CN and its
  subjectAltName carry the member id (``DNS:<id>``) and role
  (``URI:fedscreen://member/<role>/<id>``), and a CSR attribute
  (:data:`CLAIMS_OID`) carries the claims: id, role, name, level and the
  Ed25519 public key. The TLS key thus vouches for the signing key;
* ``proof`` is an Ed25519 signature by the signing key over
  ``PAE(REQUEST_PROOF_TYPE, DER(CSR))`` (DSSE pre-authentication encoding), so
  the signing key vouches for the exact CSR bytes.

The readable fields of ``request.json`` must equal the signed claims. The SHA-256
of the CSR's DER is the request fingerprint: the member reads it out, the
authority compares it (``--expect-fingerprint``) before issuing.

Authority directory::

    AUTH/
      ca.key            EC P-256 CA private key (PKCS#8 PEM), 0600
      ca.pem            self-signed federation CA certificate
      authority.key     Ed25519 manifest-signing key, 0600
      authority.pub     its raw public key, base64
      manifest.json     the current signed manifest (the commit point of every change)
      manifests/        every manifest version ever signed, 00000000.json, 00000001.json, ...
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
import hashlib
import ipaddress
import json
import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedscreen._util.canonical import canonical_json
from fedscreen._util.files import replace_file, write_new_file
from fedscreen.crypto.envelope import pae
from fedscreen.crypto.signing import PUBLIC_KEY_SIZE, SigningKey, public_key_id, verify_signature
from fedscreen.errors import ConfigError, VerificationError
from fedscreen.trust.manifest import (
    ROLES,
    Manifest,
    Member,
    UnknownMember,
    load_manifest,
    sign_manifest,
)

__all__ = [
    "CLAIMS_OID",
    "DEFAULT_CA_VALIDITY_DAYS",
    "DEFAULT_LEAF_VALIDITY_DAYS",
    "MEMBER_ID_PATTERN",
    "REQUEST_FORMAT",
    "REQUEST_PROOF_TYPE",
    "Authority",
    "CertIdentity",
    "CertRequest",
    "cert_identity",
    "cert_sha256",
    "current_manifest",
    "init_authority",
    "issue",
    "load_authority",
    "manifest_text",
    "member_id_from_cert",
    "member_uri",
    "request_fingerprint",
    "revoke",
    "validate_member_fields",
    "verify_peer",
    "verify_request",
]

#: Member ids: also a DNS name in the certificate and a file name at the authority.
MEMBER_ID_PATTERN: Final = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.-]{1,63}")
MAX_NAME_CHARS: Final = 128
MAX_LEVEL_CHARS: Final = 32
MAX_FEDERATION_CHARS: Final = 64
#: a request.json larger than this (bytes) is refused unread
MAX_REQUEST_BYTES: Final = 64 * 1024
#: a PEM/DER certificate or key file larger than this (bytes) is refused
MAX_PEM_BYTES: Final = 64 * 1024
DEFAULT_CA_VALIDITY_DAYS: Final = 3650
DEFAULT_LEAF_VALIDITY_DAYS: Final = 825
#: certificates are back-dated by this much so a peer's slightly slow clock accepts them
CLOCK_SKEW: Final = timedelta(minutes=5)

REQUEST_FORMAT: Final = "fedscreen-cert-request/1"
#: DSSE-style payload type of the Ed25519 proof over the CSR's DER
REQUEST_PROOF_TYPE: Final = "application/vnd.fedscreen.cert-request.v1+der"
#: CSR attribute carrying the member's claims as canonical JSON. An OID under the
#: UUID arc 2.25 (ITU-T X.667), which needs no registration.
CLAIMS_OID: Final = x509.ObjectIdentifier("2.25.301609026070756324863304464213450673693")
_URI_PREFIX: Final = "fedscreen://member/"
_REQUEST_FIELDS: Final = frozenset(
    {"format", "id", "role", "name", "level", "signing_key", "csr", "proof"}
)

CA_KEY_FILE: Final = "ca.key"
CA_CERT_FILE: Final = "ca.pem"
AUTHORITY_KEY_FILE: Final = "authority.key"
AUTHORITY_PUB_FILE: Final = "authority.pub"
MANIFEST_FILE: Final = "manifest.json"
MANIFESTS_DIR: Final = "manifests"
MEMBERS_DIR: Final = "members"
_LOCK_FILE: Final = ".lock"


# ---------------------------------------------------------------- names and claims


def member_uri(role: str, member_id: str) -> str:
    """The URI SAN that binds a certificate to a role: ``fedscreen://member/<role>/<id>``."""
    return f"{_URI_PREFIX}{role}/{member_id}"


def validate_member_fields(*, member_id: str, role: str, name: str, level: str) -> None:
    """Check a member's id, role, name and level; raise ConfigError naming the bad one."""
    if not MEMBER_ID_PATTERN.fullmatch(member_id) or ".." in member_id:
        raise ConfigError(
            f"member id {member_id!r}: use 2-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit, without '..'"
        )
    if member_id.endswith((".", "-")) or _is_ip_address(member_id):
        raise ConfigError(f"member id {member_id!r} must be usable as a TLS host name")
    if role not in ROLES:
        raise ConfigError(f"role {role!r}: one of {', '.join(ROLES)}")
    _check_text("name", name, MAX_NAME_CHARS, required=True)
    _check_text("level", level, MAX_LEVEL_CHARS, required=False)


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_text(what: str, value: str, limit: int, *, required: bool) -> None:
    if required and not value.strip():
        raise ConfigError(f"{what} must not be empty")
    if len(value) > limit or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ConfigError(f"{what} {value!r}: at most {limit} characters, no control characters")


def claims_bytes(*, member_id: str, role: str, name: str, level: str, signing_key: bytes) -> bytes:
    """The canonical JSON of a member's claims, as carried in the CSR attribute."""
    body = {
        "id": member_id,
        "role": role,
        "name": name,
        "level": level,
        "signing_key": base64.b64encode(signing_key).decode(),
    }
    return canonical_json(body)


def request_fingerprint(csr: x509.CertificateSigningRequest) -> str:
    """SHA-256 (hex) of the CSR's DER: what member and authority compare out of band."""
    return hashlib.sha256(csr.public_bytes(serialization.Encoding.DER)).hexdigest()


# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class CertRequest:
    """A verified certificate request."""

    member_id: str
    role: str
    name: str
    level: str
    #: raw 32-byte Ed25519 public key
    signing_key: bytes
    csr: x509.CertificateSigningRequest
    #: see :func:`request_fingerprint`
    fingerprint: str


def verify_request(request: Mapping[str, Any]) -> CertRequest:
    """Check a parsed ``request.json``; raise VerificationError naming what is wrong.

    Checks, in order: the fields; the CSR's own signature (possession of the TLS
    key, RFC 2986 §3); its key type; the signed claims equal the readable fields;
    the subject CN and the SAN carry the member id and role; the Ed25519 proof
    over the CSR's DER (possession of the signing key).
    """
    if not isinstance(request, Mapping) or set(request) != _REQUEST_FIELDS:
        raise VerificationError(f"a request has exactly the fields {sorted(_REQUEST_FIELDS)}")
    if request["format"] != REQUEST_FORMAT:
        raise VerificationError(f"request format {request['format']!r}, expected {REQUEST_FORMAT}")
    fields = {k: request[k] for k in _REQUEST_FIELDS}
    if not all(isinstance(v, str) for v in fields.values()):
        raise VerificationError("request fields must be strings")
    member_id, role, name, level = fields["id"], fields["role"], fields["name"], fields["level"]
    try:
        validate_member_fields(member_id=member_id, role=role, name=name, level=level)
    except ConfigError as exc:
        raise VerificationError(f"request: {exc}") from None
    signing_key = _b64(fields["signing_key"], "signing_key")
    proof = _b64(fields["proof"], "proof")
    if len(signing_key) != PUBLIC_KEY_SIZE:
        raise VerificationError(f"request signing_key must be {PUBLIC_KEY_SIZE} bytes")
    try:
        csr = x509.load_pem_x509_csr(fields["csr"].encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise VerificationError("request csr is not a PEM certificate request") from None
    # RFC 2986 §3: the CSR is signed by the private key of the public key it carries.
    if not csr.is_signature_valid:
        raise VerificationError("the CSR's signature does not verify (TLS key not proven)")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise VerificationError("the CSR's key must be an EC P-256 key")
    signed_claims = _csr_claims(csr)
    wanted = claims_bytes(
        member_id=member_id, role=role, name=name, level=level, signing_key=signing_key
    )
    if signed_claims != wanted:
        raise VerificationError("the request's fields differ from the claims signed in its CSR")
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1 or cns[0].value != member_id:
        raise VerificationError(f"the CSR's subject CN does not carry member id {member_id!r}")
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise VerificationError("the CSR has no subjectAltName") from None
    except ValueError as exc:
        raise VerificationError(f"the CSR's extensions are malformed: {exc}") from None
    if (
        san.get_values_for_type(x509.DNSName) != [member_id]
        or san.get_values_for_type(x509.UniformResourceIdentifier) != [member_uri(role, member_id)]
        or len(list(san)) != 2
    ):
        raise VerificationError(
            f"the CSR's subjectAltName must be exactly DNS:{member_id} and "
            f"URI:{member_uri(role, member_id)}"
        )
    der = csr.public_bytes(serialization.Encoding.DER)
    try:
        verify_signature(signing_key, pae(REQUEST_PROOF_TYPE, der), proof)
    except VerificationError:
        raise VerificationError(
            "the request's proof does not verify under its signing key"
        ) from None
    return CertRequest(
        member_id=member_id,
        role=role,
        name=name,
        level=level,
        signing_key=signing_key,
        csr=csr,
        fingerprint=hashlib.sha256(der).hexdigest(),
    )


def _csr_claims(csr: x509.CertificateSigningRequest) -> bytes:
    try:
        attribute = csr.attributes.get_attribute_for_oid(CLAIMS_OID)
    except x509.AttributeNotFound:
        raise VerificationError("the CSR carries no fedscreen claims attribute") from None
    except ValueError as exc:
        raise VerificationError(f"the CSR's attributes are malformed: {exc}") from None
    if not isinstance(attribute.value, bytes):
        raise VerificationError("the CSR's claims attribute is not a string")
    return attribute.value


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise VerificationError(f"request {what} is not base64") from None


def read_request(path: Path) -> dict[str, Any]:
    """Read a ``request.json`` (size-bounded); raise ConfigError if unreadable."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_REQUEST_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read request {path}: {exc.strerror}") from None
    if len(data) > MAX_REQUEST_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_REQUEST_BYTES} bytes; not a request")
    try:
        parsed = json.loads(data)
    except ValueError as exc:
        raise ConfigError(f"{path}: not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise ConfigError(f"{path}: not a certificate request")
    return parsed


# ---------------------------------------------------------------- certificates


@dataclass(frozen=True)
class CertIdentity:
    """Who a federation certificate names."""

    member_id: str
    role: str


def _load_cert(cert: bytes | str | x509.Certificate) -> x509.Certificate:
    if isinstance(cert, x509.Certificate):
        return cert
    data = cert.encode("ascii") if isinstance(cert, str) else cert
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise VerificationError("not an X.509 certificate (PEM or DER)") from None


def cert_sha256(cert: bytes | str | x509.Certificate) -> str:
    """SHA-256 (hex, lower case) of a certificate's DER; accepts PEM, DER or a Certificate."""
    der = _load_cert(cert).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def cert_identity(cert: bytes | str | x509.Certificate) -> CertIdentity:
    """The member id and role a certificate's subjectAltName carries; raise VerificationError.

    The SAN (RFC 5280 §4.2.1.6) must hold exactly one DNS name (the id) and one
    ``fedscreen://member/<role>/<id>`` URI naming the same id.
    """
    certificate = _load_cert(cert)
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise VerificationError("the certificate has no subjectAltName") from None
    except ValueError as exc:
        raise VerificationError(f"the certificate's extensions are malformed: {exc}") from None
    names = san.get_values_for_type(x509.DNSName)
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    ours = [u for u in uris if u.startswith(_URI_PREFIX)]
    if len(names) != 1 or len(ours) != 1:
        raise VerificationError("the certificate does not name exactly one federation member")
    member_id = names[0]
    role, _, uri_id = ours[0][len(_URI_PREFIX) :].partition("/")
    if uri_id != member_id or role not in ROLES or not MEMBER_ID_PATTERN.fullmatch(member_id):
        raise VerificationError("the certificate's DNS and URI names disagree or are malformed")
    return CertIdentity(member_id=member_id, role=role)


def member_id_from_cert(cert: bytes | str | x509.Certificate) -> str:
    """The member id in a certificate's subjectAltName (see :func:`cert_identity`)."""
    return cert_identity(cert).member_id


def verify_peer(
    manifest: Manifest, cert: bytes | str | x509.Certificate, *, role: str | None = None
) -> Member:
    """Match a TLS peer's (already chain-verified) certificate against the manifest.

    Returns the active member it belongs to. Raises UnknownMember if the id is not
    an active member (or not of ``role``), VerificationError if the certificate
    is not exactly the one the manifest lists for that member or names another role.
    """
    who = cert_identity(cert)
    member = manifest.member(who.member_id, role=role)
    if member.role != who.role:
        raise UnknownMember(f"certificate says {who.role!r}, manifest says {member.role!r}")
    if cert_sha256(cert) != member.tls_sha256:
        raise VerificationError(
            f"{who.member_id!r} presented a certificate the manifest does not list"
        )
    return member


def _ski(key: ec.EllipticCurvePublicKey) -> x509.SubjectKeyIdentifier:
    # RFC 5280 §4.2.1.2 method (1): SHA-1 of the subjectPublicKey bit string.
    return x509.SubjectKeyIdentifier.from_public_key(key)


def _ca_certificate(
    key: ec.EllipticCurvePrivateKey, *, federation: str, validity_days: int
) -> x509.Certificate:
    now = datetime.now(UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
            x509.NameAttribute(NameOID.COMMON_NAME, "fedscreen federation CA"),
        ]
    )
    ski = _ski(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())  # RFC 5280 §4.1.2.2
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=validity_days))
        # RFC 5280 §4.2.1.9: critical in CA certs; pathlen 0 — it issues leaves only
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        # RFC 5280 §4.2.1.3: keyCertSign and cRLSign only
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)  # RFC 5280 §4.2.1.2
        .add_extension(  # RFC 5280 §4.2.1.1 (optional when self-signed)
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )


def _leaf_certificate(
    request: CertRequest,
    *,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    federation: str,
    validity_days: int,
) -> x509.Certificate:
    now = datetime.now(UTC)
    not_after = min(now + timedelta(days=validity_days), ca_cert.not_valid_after_utc)
    public_key = request.csr.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)  # checked by verify_request
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
            x509.NameAttribute(NameOID.COMMON_NAME, request.member_id),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # RFC 5280 §4.2.1.3: ECDHE key exchange needs digitalSignature only
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        # RFC 5280 §4.2.1.12: every member both dials and accepts mutual-TLS connections
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        # RFC 5280 §4.2.1.6: non-critical, since the subject is not empty
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(request.member_id),
                    x509.UniformResourceIdentifier(member_uri(request.role, request.member_id)),
                ]
            ),
            critical=False,
        )
        .add_extension(_ski(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


# ---------------------------------------------------------------- files


def read_private_file(path: Path, *, max_bytes: int = MAX_PEM_BYTES) -> bytes:
    """Read a private key file, refusing one that group or others may access (as ssh does)."""
    try:
        with path.open("rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read private key: {exc.strerror}") from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path}: private key is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):o}); run chmod 600 on it"
        )
    if len(data) > max_bytes:
        raise ConfigError(f"{path}: larger than {max_bytes} bytes; not a key file")
    return data


def read_public_file(path: Path, *, max_bytes: int = MAX_PEM_BYTES) -> bytes:
    """Read a small public file (certificate, manifest); ConfigError if missing or too big."""
    try:
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) > max_bytes:
        raise ConfigError(f"{path}: larger than {max_bytes} bytes")
    return data


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
    _check_text("federation", federation, MAX_FEDERATION_CHARS, required=True)
    if not 1 <= validity_days <= 36500:
        raise ConfigError("CA validity must be 1 to 36500 days")
    _make_private_dir(directory)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _ca_certificate(ca_key, federation=federation, validity_days=validity_days)
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
        ca_cert = _load_cert(read_public_file(authority_dir / CA_CERT_FILE))
        if cert_sha256(ca_cert) != manifest.ca_sha256:
            raise ConfigError(f"{authority_dir / CA_CERT_FILE} is not the CA the manifest names")
        ca_key = _load_ca_key(authority_dir / CA_KEY_FILE)
        signing_key = SigningKey.load(authority_dir / AUTHORITY_KEY_FILE)
        cert = _leaf_certificate(
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
                    f"{m.id!r} is a {m.role}; revoke it before issuing it as a {request.role}"
                )
        elif m.id.lower() == request.member_id.lower():
            raise ConfigError(f"{request.member_id!r} differs from member {m.id!r} only in case")
        elif m.signing_key == request.signing_key:
            raise ConfigError(f"this signing key already belongs to member {m.id!r}")


def replace_manifest(manifest: Manifest, *, members: tuple[Member, ...]) -> Manifest:
    """The next manifest version with these members (sorted by id)."""
    return Manifest(
        federation=manifest.federation,
        version=manifest.version + 1,
        issued_at=_now(),
        authority_key=manifest.authority_key,
        members=tuple(sorted(members, key=lambda m: m.id)),
        ca_sha256=manifest.ca_sha256,
    )


def revoke(authority_dir: Path, member_id: str) -> Manifest:
    """Sign a new manifest version in which ``member_id`` is revoked; returns it."""
    with _locked(authority_dir):
        manifest = current_manifest(authority_dir)
        try:
            target = manifest.member(member_id)
        except UnknownMember:
            raise ConfigError(f"{member_id!r} is not an active member; nothing to revoke") from None
        signing_key = SigningKey.load(authority_dir / AUTHORITY_KEY_FILE)
        members = tuple(
            dataclasses.replace(m, revoked=True) if m.id == target.id else m
            for m in manifest.members
        )
        new = replace_manifest(manifest, members=members)
        _publish(authority_dir, new, signing_key)
        # the member record is a convenience copy; the signed manifest is authoritative
        record_path = authority_dir / MEMBERS_DIR / f"{target.id}.json"
        with contextlib.suppress(ConfigError, ValueError, TypeError):
            record = json.loads(read_public_file(record_path))
            record["member"] = dataclasses.replace(target, revoked=True).to_json()
            record["revoked_at"] = new.issued_at
            record["manifest_version"] = new.version
            replace_file(
                record_path, json.dumps(record, indent=1, ensure_ascii=False).encode(), mode=0o644
            )
    return new


def _publish(directory: Path, manifest: Manifest, key: SigningKey) -> None:
    """Sign, keep a numbered copy, then switch ``manifest.json`` (the commit point)."""
    text = sign_manifest(manifest, key=key).encode()
    write_new_file(directory / MANIFESTS_DIR / f"{manifest.version:08d}.json", text, mode=0o644)
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


def check_issued_certificate(
    cert: x509.Certificate, ca_cert: x509.Certificate, *, public_key: ec.EllipticCurvePublicKey
) -> None:
    """Check that ``cert`` was issued by ``ca_cert`` for ``public_key``; raise VerificationError."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise VerificationError("the certificate was not issued by this CA") from None
    if cert.public_key() != public_key:
        raise VerificationError("the certificate is not for this member's TLS key")
