"""A member's identity directory: keys, request, installing what the authority issued."""

from __future__ import annotations

import argparse
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedscreen.cli import identity as identity_cli
from fedscreen.crypto.signing import SigningKey
from fedscreen.errors import ConfigError, VerificationError
from fedscreen.node.home import NodeConfig
from fedscreen.trust import authority, certs
from fedscreen.trust.identity import (
    Identity,
    create_identity,
    install_issued,
    load_identity,
    update_manifest,
)


@pytest.fixture
def auth(tmp_path: Path) -> Path:
    directory = tmp_path / "auth"
    authority.init_authority(directory, federation="河北省")
    return directory


def issued(auth: Path, ident: Identity) -> tuple[bytes, bytes, str]:
    cert_pem, _ = authority.issue(auth, ident.request_path)
    return cert_pem, authority.load_authority(auth).ca_pem, authority.manifest_text(auth)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_create_writes_private_keys_0600_and_a_public_request(tmp_path: Path) -> None:
    home = tmp_path / "ana"
    ident = create_identity(home, member_id="ana", role="analyst", name="Ana", level="province")
    assert mode(home / "signing.key") == 0o600
    assert mode(home / "tls.key") == 0o600
    assert mode(home) == 0o700
    doc = json.loads((home / "identity.json").read_text())
    assert (doc["id"], doc["role"], doc["name"], doc["level"]) == (
        "ana",
        "analyst",
        "Ana",
        "province",
    )
    assert load_identity(home) == ident
    assert ident.signing_key().public_key == ident.signing_public_key
    tls_key = serialization.load_pem_private_key((home / "tls.key").read_bytes(), None)
    assert isinstance(tls_key, ec.EllipticCurvePrivateKey)
    assert tls_key.curve.name == "secp256r1"
    request_text = ident.request_path.read_text()
    assert "PRIVATE" not in request_text
    assert "PRIVATE" not in (home / "identity.json").read_text()
    verified = certs.verify_request(json.loads(request_text))
    assert verified.member_id == "ana"
    assert verified.signing_key == ident.signing_public_key


def test_create_refuses_to_overwrite_an_identity(tmp_path: Path) -> None:
    home = tmp_path / "n"
    create_identity(home, member_id="130102", role="node", name="a")
    before = {p.name: p.read_bytes() for p in home.iterdir()}
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        create_identity(home, member_id="130103", role="node", name="b")
    assert {p.name: p.read_bytes() for p in home.iterdir()} == before
    # a single leftover TLS key or request is enough to refuse
    other = tmp_path / "m"
    other.mkdir()
    (other / "tls.key").write_bytes(b"old")
    with pytest.raises(ConfigError, match=r"tls\.key"):
        create_identity(other, member_id="130104", role="node", name="c")
    assert sorted(p.name for p in other.iterdir()) == ["tls.key"]


def test_an_identity_lives_in_an_existing_node_home(node_home: NodeConfig) -> None:
    # `fedscreen node init` creates the node's identity in its home
    ident = load_identity(node_home.home)
    assert (ident.home, ident.member_id, ident.role) == (node_home.home, "130102", "node")
    assert (node_home.home / "node.toml").is_file()
    assert ident.signing_key().public_key == node_home.signing_key().public_key
    with pytest.raises(ConfigError, match="already exists"):
        create_identity(node_home.home, member_id="130102", role="node", name="x")


@pytest.mark.parametrize(
    ("member_id", "role", "name"),
    [
        ("a", "node", "n"),  # too short
        ("-ab", "node", "n"),
        ("a..b", "node", "n"),
        ("ab.", "node", "n"),
        ("10.0.0.1", "node", "n"),  # would be taken for an IP address by TLS clients
        ("x" * 65, "node", "n"),
        ("a/b", "node", "n"),
        ("ok", "admin", "n"),
        ("ok", "node", ""),
        ("ok", "node", "bad\nname"),
    ],
)
def test_create_refuses_bad_fields(tmp_path: Path, member_id: str, role: str, name: str) -> None:
    with pytest.raises(ConfigError):
        create_identity(tmp_path / "h", member_id=member_id, role=role, name=name)
    assert not (tmp_path / "h").exists()


def test_load_identity_of_a_directory_without_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="identity init"):
        load_identity(tmp_path)


def test_tls_files_before_and_after_issue(auth: Path, tmp_path: Path) -> None:
    ident = create_identity(tmp_path / "n", member_id="130102", role="node", name="a")
    with pytest.raises(ConfigError, match="not issued yet: run fedscreen pki issue"):
        ident.tls_files()
    with pytest.raises(ConfigError, match="no manifest"):
        ident.manifest()
    cert_pem, ca_pem, manifest_text = issued(auth, ident)
    manifest = install_issued(ident.home, cert_pem, ca_pem, manifest_text)
    assert manifest.member("130102").signing_key == ident.signing_public_key
    cert, key, ca = ident.tls_files()
    assert (cert, ca) == (cert_pem, ca_pem)
    assert key == (ident.home / "tls.key").read_bytes()
    assert ident.manifest() == manifest
    assert (ident.home / "manifest.json").read_text() == manifest_text  # kept verbatim
    assert (ident.home / "authority.pub").is_file()


def test_private_keys_readable_by_others_are_refused(tmp_path: Path, auth: Path) -> None:
    ident = create_identity(tmp_path / "n", member_id="130102", role="node", name="a")
    install_issued(ident.home, *issued(auth, ident))
    os.chmod(ident.home / "tls.key", 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        ident.tls_files()
    os.chmod(ident.home / "signing.key", 0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        ident.signing_key()


def test_install_refuses_what_was_issued_to_someone_else(auth: Path, tmp_path: Path) -> None:
    mine = create_identity(tmp_path / "a", member_id="130102", role="node", name="a")
    theirs = create_identity(tmp_path / "b", member_id="130103", role="node", name="b")
    install_issued(mine.home, *issued(auth, mine))
    their_cert, ca_pem, manifest_text = issued(auth, theirs)
    with pytest.raises(VerificationError, match="not for this member's TLS key"):
        install_issued(mine.home, their_cert, ca_pem, manifest_text)
    # a certificate from another CA
    other = tmp_path / "other"
    authority.init_authority(other, federation="rogue")
    rogue = create_identity(tmp_path / "c", member_id="130104", role="node", name="c")
    rogue_cert, rogue_ca, rogue_manifest = issued(other, rogue)
    with pytest.raises(VerificationError, match="not issued by this CA"):
        install_issued(rogue.home, rogue_cert, ca_pem, rogue_manifest)
    # the rogue federation's manifest cannot replace ours once the authority key is pinned
    rogue_cert_for_me = authority.issue(other, mine.request_path)[0]
    with pytest.raises(VerificationError):
        install_issued(mine.home, rogue_cert_for_me, rogue_ca, rogue_manifest)


def test_manifest_updates_never_roll_back(auth: Path, tmp_path: Path) -> None:
    ident = create_identity(tmp_path / "n", member_id="130102", role="node", name="a")
    install_issued(ident.home, *issued(auth, ident))
    v1 = authority.manifest_text(auth)
    other = create_identity(tmp_path / "m", member_id="130103", role="node", name="b")
    authority.issue(auth, other.request_path)
    authority.revoke(auth, "130103")
    v3 = authority.manifest_text(auth)
    assert update_manifest(ident.home, v3).version == 3
    with pytest.raises(VerificationError, match="roll back"):
        update_manifest(ident.home, v1)
    assert update_manifest(ident.home, v3).version == 3  # the same version again is fine
    assert ident.manifest().version == 3


def test_update_manifest_before_issue_is_refused(auth: Path, tmp_path: Path) -> None:
    ident = create_identity(tmp_path / "n", member_id="130102", role="node", name="a")
    with pytest.raises(ConfigError, match="not issued yet"):
        update_manifest(ident.home, authority.manifest_text(auth))


def test_cli_init_prints_where_the_request_is_and_no_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    identity_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    home = tmp_path / "hub"
    argv = ["identity", "init", "--home", str(home), "--id", "hub", "--role", "coordinator"]
    args = parser.parse_args([*argv, "--name", "省平台"])
    assert args.func(args) == 0
    args = parser.parse_args(["identity", "show", "--home", str(home)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert str(home / "request.json") in out
    assert "fedscreen pki issue" in out
    ident = load_identity(home)
    assert ident.request_fingerprint() in out
    for name in ("signing.key", "tls.key"):
        body = [
            line
            for line in (home / name).read_text().splitlines()
            if not line.startswith(("-----", "fedscreen-"))
        ]
        assert body
        assert not any(line in out for line in body)
    assert "PRIVATE" not in out


def test_an_adopted_signing_key_must_be_private(tmp_path: Path) -> None:
    home = tmp_path / "n"
    home.mkdir()
    path = home / "signing.key"
    SigningKey.generate().save(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        create_identity(home, member_id="130102", role="node", name="a")
    assert sorted(p.name for p in home.iterdir()) == ["signing.key"]


def test_update_manifest_cli_refuses_one_that_revokes_this_member(
    auth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding T2: the operator's command does not silently retire its own member."""
    from fedscreen.cli.main import main

    ident = create_identity(tmp_path / "c", member_id="province", role="coordinator", name="p")
    install_issued(ident.home, *issued(auth, ident))
    before = (ident.home / "manifest.json").read_bytes()
    authority.revoke(auth, "province")
    path = tmp_path / "v2.json"
    path.write_text(authority.manifest_text(auth), encoding="utf-8")
    args = ["identity", "update-manifest", "--home", str(ident.home), "--manifest", str(path)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "revokes this coordinator ('province') itself; not installed" in err
    assert "Traceback" not in err
    assert (ident.home / "manifest.json").read_bytes() == before  # nothing installed
    # the flag says the operator means it (finding F6b): installed, exit 0, warned on stderr
    assert main([*args, "--accept-own-revocation"]) == 0
    out, err = capsys.readouterr()
    assert "installed manifest version 2" in out
    assert "not an active member" in err
    assert ident.manifest().version == 2
