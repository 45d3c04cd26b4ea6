"""The federation authority: CA, certificate requests, issuing, manifest versions, revocation."""

from __future__ import annotations

import argparse
import base64
import json
import socket
import ssl
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedscreen.cli import identity as identity_cli
from fedscreen.cli import pki as pki_cli
from fedscreen.crypto.envelope import pae
from fedscreen.crypto.signing import SigningKey, check_public_key
from fedscreen.errors import ConfigError, UnknownMember, VerificationError
from fedscreen.trust import authority, certs
from fedscreen.trust.identity import Identity, create_identity, install_issued, load_identity
from fedscreen.trust.manifest import Manifest, load_manifest, parse_manifest, sign_manifest


@pytest.fixture
def auth(tmp_path: Path) -> Path:
    directory = tmp_path / "auth"
    authority.init_authority(directory, federation="河北省")
    return directory


def enrol(
    auth: Path, home: Path, member_id: str, role: str = "node", *, replace: bool = False
) -> Identity:
    """Create an identity, issue it, install what was issued."""
    ident = create_identity(home, member_id=member_id, role=role, name=f"name {member_id}")
    cert_pem, _ = authority.issue(auth, ident.request_path, replace=replace)
    install_issued(
        home, cert_pem, authority.load_authority(auth).ca_pem, authority.manifest_text(auth)
    )
    return ident


def request_of(ident: Identity) -> dict[str, Any]:
    request: dict[str, Any] = json.loads(ident.request_path.read_text())
    return request


def forged_request(
    *,
    member_id: str,
    role: str = "node",
    san: list[x509.GeneralName] | None = None,
    cn: str | None = None,
    signing_key: SigningKey | None = None,
) -> dict[str, Any]:
    """A request whose parts are all self-consistent except for what the caller changes."""
    key = signing_key or SigningKey.generate()
    tls_key = ec.generate_private_key(ec.SECP256R1())
    claims = certs.claims_bytes(
        member_id=member_id, role=role, name="n", level="", signing_key=key.public_key
    )
    names = san or [
        x509.DNSName(member_id),
        x509.UniformResourceIdentifier(certs.member_uri(role, member_id)),
    ]
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn or member_id)]))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_attribute(certs.CLAIMS_OID, claims)
        .sign(tls_key, hashes.SHA256())
    )
    der = csr.public_bytes(serialization.Encoding.DER)
    return {
        "format": certs.REQUEST_FORMAT,
        "id": member_id,
        "role": role,
        "name": "n",
        "level": "",
        "signing_key": base64.b64encode(key.public_key).decode(),
        "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
        "proof": base64.b64encode(key.sign(pae(certs.REQUEST_PROOF_TYPE, der))).decode(),
    }


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------- the CA and leaf profiles


def test_init_creates_ca_keys_and_manifest_zero(auth: Path) -> None:
    assert mode(auth / "ca.key") == 0o600
    assert mode(auth / "authority.key") == 0o600
    ca = x509.load_pem_x509_certificate((auth / "ca.pem").read_bytes())
    ca.verify_directly_issued_by(ca)  # self-signed
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    manifest = authority.current_manifest(auth)
    assert (manifest.version, manifest.members, manifest.federation) == (0, (), "河北省")
    assert manifest.ca_sha256 == certs.cert_sha256(ca)
    authority_pub = base64.b64decode((auth / "authority.pub").read_text())
    assert manifest.authority_key == authority_pub
    assert SigningKey.load(auth / "authority.key").public_key == authority_pub


def test_init_refuses_a_non_empty_directory(auth: Path) -> None:
    ca_key = (auth / "ca.key").read_bytes()
    with pytest.raises(ConfigError, match="not an empty directory"):
        authority.init_authority(auth, federation="other")
    assert (auth / "ca.key").read_bytes() == ca_key


def test_leaf_certificate_is_issued_by_the_ca_for_the_member(auth: Path, tmp_path: Path) -> None:
    ident = enrol(auth, tmp_path / "n", "130102")
    ca = x509.load_pem_x509_certificate((auth / "ca.pem").read_bytes())
    leaf = x509.load_pem_x509_certificate(ident.cert_path.read_bytes())
    leaf.verify_directly_issued_by(ca)
    ext = leaf.extensions
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = ext.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert not usage.key_cert_sign
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["130102"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "fedscreen://member/node/130102"
    ]
    assert certs.member_id_from_cert(leaf.public_bytes(serialization.Encoding.DER)) == "130102"
    assert certs.cert_identity(ident.cert_path.read_bytes()) == certs.CertIdentity("130102", "node")
    # the public key is the member's own TLS key: the authority never saw the private part
    tls_key = serialization.load_pem_private_key(ident.tls_key_path.read_bytes(), None)
    assert leaf.public_key() == tls_key.public_key()
    # cryptography's RFC 5280 path validation, as a server and as a client certificate
    store = verification.Store([ca])
    now = datetime.now(UTC)
    builder = verification.PolicyBuilder().store(store).time(now)
    builder.build_server_verifier(x509.DNSName("130102")).verify(leaf, [])
    client = builder.build_client_verifier().verify(leaf, [])
    assert x509.DNSName("130102") in (client.subjects or [])


def test_manifest_lists_member_with_keys_and_fingerprint(auth: Path, tmp_path: Path) -> None:
    ident = enrol(auth, tmp_path / "n", "130102")
    member = authority.current_manifest(auth).member("130102", role="node")
    assert member.signing_key == ident.signing_public_key
    assert member.tls_sha256 == certs.cert_sha256(ident.cert_path.read_bytes())
    assert member.name == "name 130102"
    record = json.loads((auth / "members" / "130102.json").read_text())
    assert record["member"] == member.to_json()
    assert record["request_fingerprint"] == ident.request_fingerprint()


# ---------------------------------------------------------------- requests


def test_a_request_from_create_identity_verifies(tmp_path: Path) -> None:
    ident = create_identity(tmp_path / "a", member_id="ana", role="analyst", name="Ana")
    verified = certs.verify_request(request_of(ident))
    assert (verified.member_id, verified.role, verified.signing_key) == (
        "ana",
        "analyst",
        ident.signing_public_key,
    )
    assert verified.fingerprint == ident.request_fingerprint()


def test_csr_whose_san_names_another_member_is_refused(auth: Path) -> None:
    request = forged_request(
        member_id="130102",
        san=[
            x509.DNSName("130103"),
            x509.UniformResourceIdentifier(certs.member_uri("node", "130102")),
        ],
    )
    with pytest.raises(VerificationError, match="subjectAltName"):
        authority.issue(auth, request)
    request = forged_request(
        member_id="130102",
        san=[
            x509.DNSName("130102"),
            x509.UniformResourceIdentifier(certs.member_uri("coordinator", "130102")),
        ],
    )
    with pytest.raises(VerificationError, match="subjectAltName"):
        authority.issue(auth, request)
    with pytest.raises(VerificationError, match="CN"):
        authority.issue(auth, forged_request(member_id="130102", cn="130103"))
    assert authority.current_manifest(auth).version == 0


def test_request_fields_edited_after_the_csr_are_refused(auth: Path, tmp_path: Path) -> None:
    ident = create_identity(tmp_path / "n", member_id="130102", role="node", name="x")
    for field, value in [("id", "130103"), ("role", "coordinator"), ("name", "y"), ("level", "z")]:
        request = request_of(ident)
        request[field] = value
        with pytest.raises(VerificationError):
            authority.issue(auth, request)
    assert authority.current_manifest(auth).version == 0


def test_signing_key_swapped_after_the_csr_is_refused(auth: Path, tmp_path: Path) -> None:
    ident = create_identity(tmp_path / "n", member_id="130102", role="node", name="x")
    attacker = SigningKey.generate()
    request = request_of(ident)
    request["signing_key"] = base64.b64encode(attacker.public_key).decode()
    with pytest.raises(VerificationError, match="claims signed in its CSR"):
        authority.issue(auth, request)
    # even with a valid proof by the attacker's key, the CSR still names the victim's key
    der = x509.load_pem_x509_csr(request["csr"].encode()).public_bytes(serialization.Encoding.DER)
    request["proof"] = base64.b64encode(attacker.sign(pae(certs.REQUEST_PROOF_TYPE, der))).decode()
    with pytest.raises(VerificationError, match="claims signed in its CSR"):
        authority.issue(auth, request)
    assert authority.current_manifest(auth).version == 0


def test_a_mixed_order_signing_key_is_refused(auth: Path, tmp_path: Path) -> None:
    """A public key with a low-order component (CCTV's case 4 key) is never admitted,
    whatever else the request holds: libsodium would verify signatures under it that
    other verifiers reject."""
    mixed = bytes.fromhex("10eb7c3acfb2bed3e0d6ab89bf5a3d6afddd1176ce4812e38d9fd485058fdb1f")
    with pytest.raises(VerificationError, match="not a point of prime order"):
        check_public_key(mixed)
    ident = create_identity(tmp_path / "n", member_id="130102", role="node", name="x")
    request = request_of(ident)
    request["signing_key"] = base64.b64encode(mixed).decode()
    with pytest.raises(VerificationError, match="not a point of prime order"):
        authority.issue(auth, request)
    assert authority.current_manifest(auth).version == 0


def test_proof_and_csr_signature_are_checked(auth: Path, tmp_path: Path) -> None:
    ident = create_identity(tmp_path / "n", member_id="130102", role="node", name="x")
    request = request_of(ident)
    request["proof"] = base64.b64encode(bytes(64)).decode()
    with pytest.raises(VerificationError, match="proof"):
        authority.issue(auth, request)
    request = request_of(ident)
    csr = x509.load_pem_x509_csr(request["csr"].encode())
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the ECDSA signature
    tampered = x509.load_der_x509_csr(bytes(der))
    request["csr"] = tampered.public_bytes(serialization.Encoding.PEM).decode()
    with pytest.raises(VerificationError):
        authority.issue(auth, request)
    assert authority.current_manifest(auth).version == 0


def test_malformed_requests_are_refused(auth: Path, tmp_path: Path) -> None:
    ident = create_identity(tmp_path / "n", member_id="130102", role="node", name="x")
    good = request_of(ident)
    for bad in [
        {**good, "extra": "x"},
        {k: v for k, v in good.items() if k != "proof"},
        {**good, "format": "other/1"},
        {**good, "csr": "not a csr"},
        {**good, "signing_key": "!!"},
        {**good, "level": 3},
    ]:
        with pytest.raises(VerificationError):
            certs.verify_request(bad)


def test_expected_fingerprint_is_enforced(auth: Path, tmp_path: Path) -> None:
    ident = create_identity(tmp_path / "n", member_id="130102", role="node", name="x")
    with pytest.raises(VerificationError, match="fingerprint"):
        authority.issue(auth, ident.request_path, expect_fingerprint="00" * 32)
    with pytest.raises(VerificationError, match="16 hex digits"):
        authority.issue(
            auth, ident.request_path, expect_fingerprint=ident.request_fingerprint()[:8]
        )
    fp = ident.request_fingerprint()
    spaced = " ".join(fp[i : i + 4] for i in range(0, 24, 4)).upper()
    authority.issue(auth, ident.request_path, expect_fingerprint=spaced)


# ---------------------------------------------------------------- manifest versions


def test_versions_increase_and_revocation_removes_the_member(auth: Path, tmp_path: Path) -> None:
    enrol(auth, tmp_path / "n1", "130102")
    enrol(auth, tmp_path / "a1", "ana", "analyst")
    assert authority.current_manifest(auth).version == 2
    revoked = authority.revoke(auth, "130102")
    assert revoked.version == 3
    current = authority.current_manifest(auth)
    assert current == revoked
    with pytest.raises(UnknownMember):
        current.member("130102")
    assert current.member("ana").role == "analyst"
    assert [m.id for m in current.members if m.revoked] == ["130102"]
    assert current.keys(role="node") == {}
    # the old version still verifies under the pinned authority key, with the member active
    pinned = current.authority_key
    old = load_manifest(auth / "manifests" / "00000001.json", authority_key=pinned)
    assert old.version == 1
    assert old.member("130102").role == "node"
    versions = [
        load_manifest(p, authority_key=pinned).version
        for p in sorted((auth / "manifests").glob("*.json"))
    ]
    assert versions == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="nothing to revoke"):
        authority.revoke(auth, "130102")
    with pytest.raises(ConfigError, match="nothing to revoke"):
        authority.revoke(auth, "nobody")


def test_manifest_signed_by_another_authority_is_refused(auth: Path, tmp_path: Path) -> None:
    enrol(auth, tmp_path / "n1", "130102")
    genuine = authority.current_manifest(auth)
    rogue_key = SigningKey.generate()
    rogue = Manifest(
        federation=genuine.federation,
        version=genuine.version + 1,
        issued_at=genuine.issued_at,
        authority_key=rogue_key.public_key,
        members=genuine.members,
        ca_sha256=genuine.ca_sha256,
    )
    text = sign_manifest(rogue, key=rogue_key)
    parse_manifest(text)  # self-consistent on its own ...
    with pytest.raises(VerificationError, match="pinned"):
        parse_manifest(text, authority_key=genuine.authority_key)  # ... but not ours
    (auth / "manifest.json").write_text(text)
    with pytest.raises(VerificationError):
        authority.current_manifest(auth)


def test_reissue_needs_replace_and_keys_are_never_shared(auth: Path, tmp_path: Path) -> None:
    enrol(auth, tmp_path / "n1", "130102")
    # the same id from a new identity (e.g. a reinstalled machine)
    second = create_identity(tmp_path / "n2", member_id="130102", role="node", name="again")
    with pytest.raises(ConfigError, match="already an active member"):
        authority.issue(auth, second.request_path)
    _, member = authority.issue(auth, second.request_path, replace=True)
    assert member.signing_key == second.signing_public_key
    assert (
        authority.current_manifest(auth).member("130102").signing_key == second.signing_public_key
    )
    # a different id with a key that already belongs to a member
    with pytest.raises(ConfigError, match="already belongs"):
        authority.issue(auth, request_of(_same_key_other_id(second, tmp_path / "n3", "130103")))
    # ids differing only in case would be the same DNS name
    enrol(auth, tmp_path / "a", "ana", "analyst")
    with pytest.raises(ConfigError, match="only in case"):
        authority.issue(auth, forged_request(member_id="Ana", role="analyst"))
    # a revoked key is never re-admitted
    authority.revoke(auth, "130102")
    with pytest.raises(ConfigError, match="revoked with this signing key"):
        authority.issue(auth, second.request_path)


def _same_key_other_id(ident: Identity, home: Path, member_id: str) -> Identity:
    """An identity for another id that reuses ``ident``'s signing key (a misconfiguration)."""
    home.mkdir()
    (home / "signing.key").write_bytes((ident.home / "signing.key").read_bytes())
    key = SigningKey.load(home / "signing.key", check_permissions=False)
    request = forged_request(member_id=member_id, signing_key=key)
    (home / "request.json").write_text(json.dumps(request))
    return Identity(home, member_id, "node", "n", "", key.public_key)


def test_role_change_requires_revocation(auth: Path, tmp_path: Path) -> None:
    enrol(auth, tmp_path / "c", "hub")
    request = forged_request(member_id="hub", role="coordinator")
    with pytest.raises(ConfigError, match="revoke it before"):
        authority.issue(auth, request, replace=True)


# ---------------------------------------------------------------- peers


def test_verify_peer_matches_certificate_against_manifest(auth: Path, tmp_path: Path) -> None:
    node = enrol(auth, tmp_path / "n", "130102")
    old_cert = node.cert_path.read_bytes()
    manifest = authority.current_manifest(auth)
    assert certs.verify_peer(manifest, old_cert, role="node").id == "130102"
    with pytest.raises(UnknownMember):
        certs.verify_peer(manifest, old_cert, role="analyst")
    # renewal: the old certificate is no longer the one the manifest lists
    authority.issue(auth, node.request_path, replace=True)
    with pytest.raises(VerificationError, match="does not list"):
        certs.verify_peer(authority.current_manifest(auth), old_cert)
    authority.revoke(auth, "130102")
    with pytest.raises(UnknownMember):
        certs.verify_peer(authority.current_manifest(auth), old_cert)


def test_cert_without_member_names_is_refused(auth: Path) -> None:
    ca = (auth / "ca.pem").read_bytes()
    with pytest.raises(VerificationError):
        certs.member_id_from_cert(ca)
    with pytest.raises(VerificationError):
        certs.cert_sha256(b"junk")


# ---------------------------------------------------------------- mutual TLS


def _server_context(ident: Identity, ca_pem: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca_pem.decode())
    ctx.load_cert_chain(ident.cert_path, ident.tls_key_path)
    return ctx


def _client_context(ident: Identity, ca_pem: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cadata=ca_pem.decode())
    ctx.load_cert_chain(ident.cert_path, ident.tls_key_path)
    return ctx


def _handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_name: str
) -> tuple[dict[str, Any], bytes | Exception]:
    """One connection on 127.0.0.1; returns (server outcome, client's read or error)."""
    outcome: dict[str, Any] = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                conn, _ = listener.accept()
            except OSError as exc:
                outcome["error"] = exc
                return
            with conn:
                conn.settimeout(5)
                try:
                    with server_ctx.wrap_socket(conn, server_side=True) as tls:
                        outcome["peer"] = tls.getpeercert(binary_form=True)
                        tls.sendall(b"ok")
                except (ssl.SSLError, OSError) as exc:
                    outcome["error"] = exc

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        client_result: bytes | Exception
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                client_ctx.wrap_socket(raw, server_hostname=server_name) as tls,
            ):
                client_result = tls.recv(2)
        except (ssl.SSLError, OSError) as exc:
            client_result = exc
        thread.join(timeout=10)
        assert not thread.is_alive()
    return outcome, client_result


def test_mutual_tls_between_two_issued_members(auth: Path, tmp_path: Path) -> None:
    coordinator = enrol(auth, tmp_path / "c", "hub", "coordinator")
    node = enrol(auth, tmp_path / "n", "130102")
    ca_pem = (auth / "ca.pem").read_bytes()
    outcome, received = _handshake(
        _server_context(coordinator, ca_pem), _client_context(node, ca_pem), "hub"
    )
    assert received == b"ok", outcome
    member = certs.verify_peer(authority.current_manifest(auth), outcome["peer"], role="node")
    assert member.id == "130102"


def test_mutual_tls_rejects_a_client_from_another_ca(auth: Path, tmp_path: Path) -> None:
    coordinator = enrol(auth, tmp_path / "c", "hub", "coordinator")
    other_auth = tmp_path / "other-auth"
    authority.init_authority(other_auth, federation="rogue")
    rogue = enrol(other_auth, tmp_path / "r", "130102")
    ca_pem = (auth / "ca.pem").read_bytes()
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    client_ctx.load_verify_locations(cadata=ca_pem.decode())  # trusts our server ...
    client_ctx.load_cert_chain(rogue.cert_path, rogue.tls_key_path)  # ... with a foreign cert
    outcome, received = _handshake(_server_context(coordinator, ca_pem), client_ctx, "hub")
    assert received != b"ok"
    assert "peer" not in outcome
    assert isinstance(outcome.get("error"), ssl.SSLError)
    assert "certificate verify failed" in str(outcome["error"])


def test_client_refuses_a_server_named_differently(auth: Path, tmp_path: Path) -> None:
    coordinator = enrol(auth, tmp_path / "c", "hub", "coordinator")
    node = enrol(auth, tmp_path / "n", "130102")
    ca_pem = (auth / "ca.pem").read_bytes()
    _, received = _handshake(
        _server_context(coordinator, ca_pem), _client_context(node, ca_pem), "not-hub"
    )
    assert isinstance(received, ssl.SSLCertVerificationError)


# ---------------------------------------------------------------- CLI


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="fedscreen")
    sub = parser.add_subparsers(dest="command", required=True)
    pki_cli.add_parser(sub)
    identity_cli.add_parser(sub)
    args = parser.parse_args(list(argv))
    code: int = args.func(args)
    return code


def _secret_lines(*paths: Path) -> list[str]:
    """The base64 lines of private key files (not their headers)."""
    lines = []
    for path in paths:
        for line in path.read_text().splitlines():
            if line and not line.startswith("-----") and not line.startswith("fedscreen-"):
                lines.append(line)
    return lines


def test_cli_round_trip_never_prints_private_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    auth, node, ana, out = (tmp_path / d for d in ("auth", "node", "ana", "out"))
    assert _cli("pki", "init", "--dir", str(auth), "--federation", "河北省") == 0
    assert (
        _cli(
            "identity", "init", "--home", str(node), "--id", "130102", "--role", "node",
            "--name", "长安区", "--level", "county",
        )
        == 0
    )  # fmt: skip
    assert _cli("pki", "issue", "--dir", str(auth), "--home", str(node)) == 0
    # an analyst's scope is chosen, never defaulted: without --scope, nothing is created
    with pytest.raises(ConfigError, match="an analyst needs --scope"):
        _cli("identity", "init", "--home", str(ana), "--id", "ana", "--role", "analyst",
             "--name", "A")  # fmt: skip
    assert not (ana / "request.json").exists()
    _cli("identity", "init", "--home", str(ana), "--id", "ana", "--role", "analyst", "--name", "A",
         "--scope", "province")  # fmt: skip
    fingerprint = load_identity(ana).request_fingerprint()
    assert (
        _cli(
            "pki", "issue", "--dir", str(auth), "--request", str(ana / "request.json"),
            "--out", str(out), "--expect-fingerprint", fingerprint[:20],
        )
        == 0
    )  # fmt: skip
    assert _cli("identity", "install", "--home", str(ana), "--from", str(out)) == 0
    assert _cli("pki", "revoke", "--dir", str(auth), "--id", "130102") == 0
    manifest_file = str(auth / "manifest.json")
    assert _cli("identity", "update-manifest", "--home", str(ana), "--manifest", manifest_file) == 0
    assert (
        _cli("identity", "update-manifest", "--home", str(node), "--manifest", manifest_file) == 2
    )
    assert _cli("pki", "manifest", "--dir", str(auth)) == 0
    assert _cli("pki", "manifest", "--dir", str(auth), "--json") == 0
    assert _cli("identity", "show", "--home", str(ana)) == 0
    assert _cli("identity", "show", "--home", str(node), "--json") == 0
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    assert "130102" in printed
    assert fingerprint in printed
    assert "PRIVATE" not in printed
    secrets = _secret_lines(
        auth / "ca.key",
        auth / "authority.key",
        node / "signing.key",
        node / "tls.key",
        ana / "signing.key",
        ana / "tls.key",
    )
    assert len(secrets) >= 6
    for line in secrets:
        assert line not in printed
        assert line[:16] not in printed


def test_cli_issue_refuses_bad_argument_combinations(auth: Path, tmp_path: Path) -> None:
    create_identity(tmp_path / "n", member_id="130102", role="node", name="x")
    with pytest.raises(ConfigError, match="--out"):
        _cli("pki", "issue", "--dir", str(auth), "--request", str(tmp_path / "n" / "request.json"))
    with pytest.raises(ConfigError, match="--out goes with --request"):
        _cli("pki", "issue", "--dir", str(auth), "--home", str(tmp_path / "n"), "--out", "x")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "tls.pem").write_text("old")
    with pytest.raises(ConfigError, match="already exists"):
        _cli(
            "pki", "issue", "--dir", str(auth), "--request", str(tmp_path / "n" / "request.json"),
            "--out", str(tmp_path / "out"),
        )  # fmt: skip
    assert authority.current_manifest(auth).version == 0  # nothing was issued
