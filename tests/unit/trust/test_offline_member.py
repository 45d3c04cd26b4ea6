"""A manifest member marked ``offline`` (issue 16): nodes only, kept on re-issue, shown."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from fedscreen.cli.main import main
from fedscreen.crypto.signing import SigningKey
from fedscreen.errors import ConfigError, VerificationError
from fedscreen.trust import authority
from fedscreen.trust.identity import Identity, create_identity, install_issued
from fedscreen.trust.manifest import Manifest, Member, parse_manifest, sign_manifest

NODE = "130203"


@pytest.fixture
def auth(tmp_path: Path) -> Path:
    directory = tmp_path / "auth"
    authority.init_authority(directory, federation="河北省")
    return directory


def enrol(auth: Path, home: Path, member_id: str, role: str, *, replace: bool = False) -> Identity:
    ident = create_identity(home, member_id=member_id, role=role, name=f"name {member_id}")
    cert_pem, _ = authority.issue(auth, ident.request_path, replace=replace)
    install_issued(
        home, cert_pem, authority.load_authority(auth).ca_pem, authority.manifest_text(auth)
    )
    return ident


@pytest.fixture
def federation(auth: Path, tmp_path: Path) -> Path:
    enrol(auth, tmp_path / "coord", "coordinator", "coordinator")
    enrol(auth, tmp_path / "prov", "prov", "analyst")
    enrol(auth, tmp_path / NODE, NODE, "node")
    return auth


def resigned(auth: Path, manifest: Manifest) -> str:
    """``manifest`` signed with the genuine authority key (a manifest the authority's
    own tooling would never write, but whose signature is good)."""
    key = SigningKey.load(auth / authority.AUTHORITY_KEY_FILE)
    return sign_manifest(manifest, key=key)


def test_offline_round_trips_and_is_absent_when_false(federation: Path) -> None:
    before = authority.current_manifest(federation)
    member = before.member(NODE)
    assert not member.offline
    assert "offline" not in member.to_json()
    assert NODE not in before.offline

    marked = authority.set_offline(federation, NODE, offline=True)
    assert marked.version == before.version + 1
    assert marked.member(NODE).offline
    assert marked.member(NODE).to_json()["offline"] is True
    assert marked.offline == frozenset({NODE})
    # the signed file parses back to the same flag under the pinned key
    parsed = parse_manifest(authority.manifest_text(federation), authority_key=marked.authority_key)
    assert parsed.member(NODE).offline
    assert Member.from_json(parsed.member(NODE).to_json()) == parsed.member(NODE)

    back = authority.set_offline(federation, NODE, offline=False)
    assert not back.member(NODE).offline
    assert back.offline == frozenset()
    # false is absent: the member's bytes are exactly what they were before it went offline
    assert back.member(NODE).to_json() == member.to_json()
    assert json.dumps(back.member(NODE).to_json()) == json.dumps(member.to_json())


def test_only_nodes_may_be_offline(federation: Path) -> None:
    version = authority.current_manifest(federation).version
    for member_id in ("prov", "coordinator"):
        with pytest.raises(ConfigError, match="only nodes go offline"):
            authority.set_offline(federation, member_id, offline=True)
    with pytest.raises(ConfigError, match="not an active member"):
        authority.set_offline(federation, "999999", offline=True)
    assert authority.current_manifest(federation).version == version  # nothing signed


@pytest.mark.parametrize("member_id", ["prov", "coordinator"])
def test_a_manifest_claiming_an_offline_non_node_does_not_parse(
    federation: Path, member_id: str
) -> None:
    manifest = authority.current_manifest(federation)
    # Member() itself does not check; the parser of the signed file must
    forged = dataclasses.replace(
        manifest,
        members=tuple(
            dataclasses.replace(m, offline=True) if m.id == member_id else m
            for m in manifest.members
        ),
    )
    text = resigned(federation, forged)
    with pytest.raises(VerificationError, match="only a node can be offline"):
        parse_manifest(text, authority_key=manifest.authority_key)


def test_offline_must_be_a_boolean(federation: Path) -> None:
    member = authority.current_manifest(federation).member(NODE).to_json()
    for bad in ("true", 1, None, [True]):
        with pytest.raises(VerificationError, match="offline must be true or false"):
            Member.from_json({**member, "offline": bad})


def test_a_revoked_offline_node_is_not_offline(federation: Path) -> None:
    authority.set_offline(federation, NODE, offline=True)
    revoked = authority.revoke(federation, NODE)
    assert revoked.offline == frozenset()
    with pytest.raises(ConfigError, match="not an active member"):
        authority.set_offline(federation, NODE, offline=False)


def test_reissue_keeps_offline(federation: Path, tmp_path: Path) -> None:
    authority.set_offline(federation, NODE, offline=True)
    old_key = authority.current_manifest(federation).member(NODE).signing_key
    enrol(federation, tmp_path / "rekeyed", NODE, "node", replace=True)
    manifest = authority.current_manifest(federation)
    assert manifest.member(NODE).signing_key != old_key  # really re-issued
    assert manifest.member(NODE).offline
    assert manifest.offline == frozenset({NODE})


def test_pki_link_and_manifest_cli(federation: Path, capsys: pytest.CaptureFixture[str]) -> None:
    version = authority.current_manifest(federation).version
    assert main(["pki", "link", "--dir", str(federation), "--id", NODE, "--offline"]) == 0
    out = capsys.readouterr().out
    assert f"{NODE}: offline" in out
    assert f"manifest version {version + 1}" in out

    assert main(["pki", "manifest", "--dir", str(federation)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line}
    assert rows[NODE].rstrip().endswith("active (offline)")
    assert rows["prov"].rstrip().endswith("active")
    assert "offline" not in rows["prov"]

    assert main(["pki", "manifest", "--dir", str(federation), "--json"]) == 0
    members = {m["id"]: m for m in json.loads(capsys.readouterr().out)["members"]}
    assert members[NODE]["offline"] is True
    assert "offline" not in members["prov"]

    assert main(["pki", "link", "--dir", str(federation), "--id", NODE, "--online"]) == 0
    assert f"{NODE}: online" in capsys.readouterr().out
    assert not authority.current_manifest(federation).member(NODE).offline

    # an analyst cannot be linked: a clear error, no traceback, nothing signed
    version = authority.current_manifest(federation).version
    assert main(["pki", "link", "--dir", str(federation), "--id", "prov", "--offline"]) != 0
    captured = capsys.readouterr()
    assert "only nodes go offline" in captured.err
    assert "Traceback" not in captured.err
    assert authority.current_manifest(federation).version == version


def test_pki_link_needs_exactly_one_mode(federation: Path) -> None:
    for argv in ([], ["--offline", "--online"]):
        with pytest.raises(SystemExit) as exit_:
            main(["pki", "link", "--dir", str(federation), "--id", NODE, *argv])
        assert exit_.value.code == 2


def test_a_link_that_changes_nothing_signs_nothing(federation: Path) -> None:
    """`pki link` twice the same way: the second signs no version (each would have to be
    installed at every member)."""
    marked = authority.set_offline(federation, NODE, offline=True)
    with pytest.raises(ConfigError, match="already offline"):
        authority.set_offline(federation, NODE, offline=True)
    assert authority.current_manifest(federation).version == marked.version
