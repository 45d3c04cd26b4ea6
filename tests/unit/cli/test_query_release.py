"""``fedscreen query --release``: its arguments (fetching itself runs against a real
coordinator in tests/integration/test_fetch_release.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedscreen.cli.main import main
from fedscreen.cli.query import version_line
from fedscreen.errors import ConfigError
from fedscreen.trust.identity import create_identity

QUERY_ID = "ab" * 16
SQL = "SELECT COUNT(*) FROM screenings"


def _base(home: Path) -> list[str]:
    return ["query", "--home", str(home), "--coordinator", "127.0.0.1:1"]


@pytest.mark.parametrize(
    ("extra", "flags"),
    [
        (["--epsilon", "0.1"], "--epsilon"),
        (["--accuracy", "3"], "--accuracy"),
        (["--nodes", "130102", "--secure"], "--nodes, --secure"),
        (["--deadline-ms", "50"], "--deadline-ms"),
    ],
)
def test_release_refuses_the_flags_of_a_new_query(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], flags: str
) -> None:
    assert main([*_base(tmp_path), "--release", QUERY_ID, *extra]) == ConfigError.exit_code
    err = capsys.readouterr().err
    assert f"--release fetches a release already made: {flags} ask a new query" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("extra", [[SQL], ["--file", "q.sql"]])
def test_release_and_a_query_text_exclude_each_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*_base(tmp_path), "--release", QUERY_ID, *extra])
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_new_query_still_needs_its_epsilon_or_accuracy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*_base(tmp_path), SQL])
    assert exited.value.code == 2
    assert "one of the arguments --epsilon --accuracy is required" in capsys.readouterr().err


def test_release_needs_an_analyst_home(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    create_identity(tmp_path / "auditor", member_id="auditor-1", role="auditor", name="A")
    assert main([*_base(tmp_path / "auditor"), "--release", QUERY_ID]) == ConfigError.exit_code
    err = capsys.readouterr().err
    assert "holds a auditor identity, not an analyst's" in err
    assert main([*_base(tmp_path / "nohome"), "--release", QUERY_ID]) == ConfigError.exit_code
    assert "Traceback" not in capsys.readouterr().err


def test_version_line() -> None:
    assert version_line(1, None) == "release version 1"
    assert version_line(3, "0f" * 32) == (
        f"release version 3, superseding an earlier version (release SHA-256 {'0f' * 32})"
    )
