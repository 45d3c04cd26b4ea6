"""Certificates and certificate requests: the formats members and the authority share.

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
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedscreen._util.canonical import canonical_json
from fedscreen.crypto.envelope import pae, parse_json
from fedscreen.crypto.signing import PUBLIC_KEY_SIZE, check_public_key, verify_signature
from fedscreen.errors import ConfigError, UnknownMember, VerificationError
from fedscreen.trust.manifest import ROLES, Manifest, Member, show_id
from fedscreen.trust.scope import check_member_scope

__all__ = [
    "CLAIMS_OID",
    "CLOCK_SKEW",
    "DEFAULT_CA_VALIDITY_DAYS",
    "DEFAULT_LEAF_VALIDITY_DAYS",
    "MAX_FEDERATION_CHARS",
    "MAX_LEVEL_CHARS",
    "MAX_NAME_CHARS",
    "MAX_PEM_BYTES",
    "MAX_REQUEST_BYTES",
    "MEMBER_ID_PATTERN",
    "REQUEST_FORMAT",
    "REQUEST_PROOF_TYPE",
    "SCOPE_OID",
    "CertIdentity",
    "CertRequest",
    "cert_identity",
    "cert_scope",
    "cert_sha256",
    "certificate_not_after",
    "check_issued_certificate",
    "check_text",
    "claims_bytes",
    "load_cert",
    "member_id_from_cert",
    "member_uri",
    "read_private_file",
    "read_public_file",
    "read_request",
    "request_fingerprint",
    "scope_extension",
    "validate_member_fields",
    "verify_peer",
    "verify_request",
]

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
#: certificate extension carrying the member's scope (``trust.scope``) as a DER
#: UTF8String; non-critical: TLS stacks ignore it, the manifest is what decides
SCOPE_OID: Final = x509.ObjectIdentifier("2.25.301609026070756324863304464213450673694")
_UTF8STRING: Final = 0x0C
_URI_PREFIX: Final = "fedscreen://member/"
_REQUEST_FIELDS: Final = frozenset(
    {"format", "id", "role", "name", "level", "signing_key", "csr", "proof"}
)
#: fields a request may add: "scope" (an analyst's scope, a node's place; trust.scope)
_OPTIONAL_REQUEST_FIELDS: Final = frozenset({"scope"})


# ---------------------------------------------------------------- names and claims


def member_uri(role: str, member_id: str) -> str:
    """The URI SAN that binds a certificate to a role: ``fedscreen://member/<role>/<id>``."""
    return f"{_URI_PREFIX}{role}/{member_id}"


def validate_member_fields(
    *, member_id: str, role: str, name: str, level: str, scope: str = ""
) -> None:
    """Check a member's id, role, name, level and scope; raise ConfigError naming the bad one."""
    if not MEMBER_ID_PATTERN.fullmatch(member_id) or ".." in member_id:
        raise ConfigError(
            f"member id {show_id(member_id)}: use 2-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit, without '..'"
        )
    if member_id.endswith((".", "-")) or _is_ip_address(member_id):
        raise ConfigError(f"member id {show_id(member_id)} must be usable as a TLS host name")
    if role not in ROLES:
        raise ConfigError(f"role {role!r}: one of {', '.join(ROLES)}")
    check_text("name", name, MAX_NAME_CHARS, required=True)
    check_text("level", level, MAX_LEVEL_CHARS, required=False)
    check_member_scope(role=role, level=level, scope=scope, member_id=member_id)


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_text(what: str, value: str, limit: int, *, required: bool) -> None:
    if required and not value.strip():
        raise ConfigError(f"{what} must not be empty")
    if len(value) > limit or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ConfigError(f"{what} {value!r}: at most {limit} characters, no control characters")


def claims_bytes(
    *, member_id: str, role: str, name: str, level: str, signing_key: bytes, scope: str = ""
) -> bytes:
    """The canonical JSON of a member's claims, as carried in the CSR attribute."""
    body = {
        "id": member_id,
        "role": role,
        "name": name,
        "level": level,
        "signing_key": base64.b64encode(signing_key).decode(),
    }
    if scope:
        # absent when unset: requests made before scopes keep their claims and fingerprint
        body["scope"] = scope
    return canonical_json(body)


def scope_extension(scope: str) -> x509.UnrecognizedExtension:
    """The certificate extension that carries ``scope`` (a short DER UTF8String)."""
    data = scope.encode("utf-8")
    if len(data) > 127:
        raise ConfigError(f"scope {scope!r} is too long")
    return x509.UnrecognizedExtension(SCOPE_OID, bytes([_UTF8STRING, len(data)]) + data)


def cert_scope(cert: x509.Certificate) -> str:
    """The scope a certificate carries ("" if none); raises VerificationError if malformed."""
    try:
        value = cert.extensions.get_extension_for_oid(SCOPE_OID).value
    except x509.ExtensionNotFound:
        return ""
    except ValueError as exc:
        raise VerificationError(f"the certificate's extensions are malformed: {exc}") from None
    raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    if len(raw) < 2 or raw[0] != _UTF8STRING or raw[1] != len(raw) - 2:
        raise VerificationError("the certificate's scope extension is malformed")
    try:
        return raw[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise VerificationError("the certificate's scope is not UTF-8") from None


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
    #: an analyst's scope or a node's place (``trust.scope``); "" if the request names none
    scope: str = ""


def verify_request(request: Mapping[str, Any]) -> CertRequest:
    """Check a parsed ``request.json``; raise VerificationError naming what is wrong.

    Checks, in order: the fields; the CSR's own signature (possession of the TLS
    key, RFC 2986 §3); its key type; the signed claims equal the readable fields;
    the subject CN and the SAN carry the member id and role; the Ed25519 proof
    over the CSR's DER (possession of the signing key).
    """
    if not isinstance(request, Mapping) or not (
        _REQUEST_FIELDS <= set(request) <= _REQUEST_FIELDS | _OPTIONAL_REQUEST_FIELDS
    ):
        raise VerificationError(
            f"a request has exactly the fields {sorted(_REQUEST_FIELDS)} "
            f"(and optionally {sorted(_OPTIONAL_REQUEST_FIELDS)})"
        )
    if request["format"] != REQUEST_FORMAT:
        raise VerificationError(f"request format {request['format']!r}, expected {REQUEST_FORMAT}")
    fields = {k: request[k] for k in _REQUEST_FIELDS | (set(request) & _OPTIONAL_REQUEST_FIELDS)}
    if not all(isinstance(v, str) for v in fields.values()):
        raise VerificationError("request fields must be strings")
    member_id, role, name, level = fields["id"], fields["role"], fields["name"], fields["level"]
    scope = fields.get("scope", "")
    try:
        validate_member_fields(member_id=member_id, role=role, name=name, level=level, scope=scope)
    except ConfigError as exc:
        raise VerificationError(f"request: {exc}") from None
    signing_key = _b64(fields["signing_key"], "signing_key")
    proof = _b64(fields["proof"], "proof")
    if len(signing_key) != PUBLIC_KEY_SIZE:
        raise VerificationError(f"request signing_key must be {PUBLIC_KEY_SIZE} bytes")
    # only prime-order keys are admitted: every verifier agrees on their signatures
    check_public_key(signing_key)
    try:
        csr = x509.load_pem_x509_csr(fields["csr"].encode("ascii"))
    except (ValueError, UnicodeEncodeError, x509.InvalidVersion):
        # InvalidVersion is no ValueError: a CSR version other than v1 (0)
        raise VerificationError("request csr is not a PEM certificate request") from None
    try:
        # RFC 2986 §3: the CSR is signed by the private key of the public key it carries.
        # Both raise ValueError on a key that does not decode (a point off the curve).
        valid, key = csr.is_signature_valid, csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise VerificationError("the CSR's public key is malformed") from None
    if not valid:
        raise VerificationError("the CSR's signature does not verify (TLS key not proven)")
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise VerificationError("the CSR's key must be an EC P-256 key")
    signed_claims = _csr_claims(csr)
    wanted = claims_bytes(
        member_id=member_id,
        role=role,
        name=name,
        level=level,
        signing_key=signing_key,
        scope=scope,
    )
    if signed_claims != wanted:
        raise VerificationError("the request's fields differ from the claims signed in its CSR")
    try:
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError as exc:
        raise VerificationError(f"the CSR's subject is malformed: {exc}") from None
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
        scope=scope,
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
        parsed = parse_json(data)
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


def load_cert(cert: bytes | str | x509.Certificate) -> x509.Certificate:
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
    der = load_cert(cert).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def cert_identity(cert: bytes | str | x509.Certificate) -> CertIdentity:
    """The member id and role a certificate's subjectAltName carries; raise VerificationError.

    The SAN (RFC 5280 §4.2.1.6) must hold exactly one DNS name (the id) and one
    ``fedscreen://member/<role>/<id>`` URI naming the same id.
    """
    certificate = load_cert(cert)
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


def certificate_not_after(path: Path) -> datetime:
    """When the PEM certificate at ``path`` expires (UTC); ConfigError if it is not one."""
    try:
        cert = x509.load_pem_x509_certificate(read_public_file(path))
    except ValueError:
        raise ConfigError(f"{path}: not a PEM certificate") from None
    return cert.not_valid_after_utc
