"""The X.509 certificates the authority signs: its self-signed CA and members' leaves.

A leaf carries the member id as subject CN and ``DNS:`` SAN, the role as a
``fedscreen://member/<role>/<id>`` URI SAN (``trust.certs.member_uri``) and, when the
request names one, the member's scope (``trust.certs.scope_extension``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedscreen.trust.certs import CLOCK_SKEW, CertRequest, member_uri, scope_extension

__all__ = ["ca_certificate", "key_identifier", "leaf_certificate"]


def key_identifier(key: ec.EllipticCurvePublicKey) -> x509.SubjectKeyIdentifier:
    # RFC 5280 §4.2.1.2 method (1): SHA-1 of the subjectPublicKey bit string.
    return x509.SubjectKeyIdentifier.from_public_key(key)


def ca_certificate(
    key: ec.EllipticCurvePrivateKey, *, federation: str, validity_days: int
) -> x509.Certificate:
    now = datetime.now(UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
            x509.NameAttribute(NameOID.COMMON_NAME, "fedscreen federation CA"),
        ]
    )
    ski = key_identifier(key.public_key())
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


def leaf_certificate(
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
    builder = (
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
        .add_extension(key_identifier(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    if request.scope:
        # the scope travels with the certificate too, for whoever reads it; the manifest's
        # copy is the one every check uses
        builder = builder.add_extension(scope_extension(request.scope), critical=False)
    return builder.sign(ca_key, hashes.SHA256())
