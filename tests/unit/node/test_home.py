"""Creating and reading a node home."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from fedscreen.errors import ConfigError
from fedscreen.node.home import init_home, load_config


def test_init_creates_config_database_and_private_secret(tmp_path: Path) -> None:
    config = init_home(tmp_path / "n", node_id="130102", name="长安区")
    assert (config.node_id, config.name, config.county_code) == ("130102", "长安区", "130102")
    secret = tmp_path / "n" / "secret.key"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(config.secret()) == 32
    conn = sqlite3.connect(config.database)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()
    assert {"screening", "school", "school_grade", "ingest_batch", "meta", "screenings"} <= tables
    assert load_config(tmp_path / "n") == config


def test_init_refuses_an_existing_home(tmp_path: Path) -> None:
    init_home(tmp_path / "n", node_id="130102", name="a")
    secret = (tmp_path / "n" / "secret.key").read_bytes()
    with pytest.raises(ConfigError, match="not empty"):
        init_home(tmp_path / "n", node_id="130104", name="b")
    assert (tmp_path / "n" / "secret.key").read_bytes() == secret


@pytest.mark.parametrize(
    ("node_id", "county", "message"),
    [
        ("1", None, "node id"),
        ("uni-hebei", None, "county code"),
        ("13 01", None, "node id"),
        ("uni-hebei", "13010", "county code"),
    ],
)
def test_init_validates_ids(tmp_path: Path, node_id: str, county: str | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        init_home(tmp_path / "n", node_id=node_id, name="x", county_code=county)


def test_a_university_node_names_its_county(tmp_path: Path) -> None:
    config = init_home(tmp_path / "u", node_id="uni-10082", name="河北大学", county_code="130602")
    assert config.county_code == "130602"


def test_load_config_of_a_non_home(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a node home"):
        load_config(tmp_path)
