"""``fedscreen pki history`` and ``identity update-manifest`` around the manifest chain."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import pytest

from fedscreen.cli.main import main
from fedscreen.crypto.signing import SigningKey
from fedscreen.trust import authority
from fedscreen.trust.identity import create_identity, issue_here
from fedscreen.trust.manifest import parse_manifest, sign_manifest


@pytest.fixture
def auth(tmp_path: Path) -> Path:
    directory = tmp_path / "auth"
    authority.init_authority(directory, federation="河北省")
    for member_id in ("ana", "bob"):
        create_identity(tmp_path / member_id, member_id=member_id, role="analyst", name=member_id)
        issue_here(directory, tmp_path / member_id)
    return directory


def test_pki_history_lists_the_verified_chain(
    auth: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pki", "revoke", "--dir", str(auth), "--id", "ana"]) == 0
    capsys.readouterr()
    assert main(["pki", "history", "--dir", str(auth), "--json"]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert [d["version"] for d in docs] == [0, 1, 2, 3]
    assert docs[0]["previous_sha256"] is None
    assert all(b["previous_sha256"] == a["sha256"] for a, b in itertools.pairwise(docs))
    assert (docs[-1]["active"], docs[-1]["revoked"]) == (1, 1)
    assert main(["pki", "history", "--dir", str(auth)]) == 0
    assert "the chain of 4 versions verifies" in capsys.readouterr().out


def test_pki_history_refuses_an_altered_version_without_a_traceback(
    auth: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = auth / "manifests" / "00000001.json"
    doc = json.loads(path.read_text())
    doc["envelope"]["signatures"][0]["sig"] = "A" * 86 + "=="
    path.write_text(json.dumps(doc))
    assert main(["pki", "history", "--dir", str(auth)]) == 1
    err = capsys.readouterr().err
    assert "00000001.json" in err
    assert "Traceback" not in err


def test_update_manifest_refuses_a_fork_with_a_clear_message(
    auth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    installed = parse_manifest((tmp_path / "bob" / "manifest.json").read_bytes())
    key = SigningKey.load(auth / authority.AUTHORITY_KEY_FILE)
    # the authority's key signs a next version that does not name the installed one
    fork = authority.replace_manifest(
        dataclasses.replace(installed, issued_at="2020-01-01T00:00:00+00:00"),
        members=installed.members,
    )
    path = tmp_path / "fork.json"
    path.write_text(sign_manifest(fork, key=key))
    before = (tmp_path / "bob" / "manifest.json").read_bytes()
    home = str(tmp_path / "bob")
    assert main(["identity", "update-manifest", "--home", home, "--manifest", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"does not chain from version {installed.version}" in err
    assert "Traceback" not in err
    assert (tmp_path / "bob" / "manifest.json").read_bytes() == before  # nothing installed
    assert not (tmp_path / "bob" / "manifests" / f"{fork.version:08d}.json").exists()
