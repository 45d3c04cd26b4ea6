"""Node kinds: a county's, a university's and a school's home, the policy each enforces,
and the exports each accepts."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from fedscreen.cli.main import main
from fedscreen.errors import ConfigError, IngestError
from fedscreen.node import ingest
from fedscreen.node.agent import run_node
from fedscreen.node.home import CONFIG_FILE, NodeConfig, check_placement, init_home, load_config
from fedscreen.node.ingest import ingest_paths
from fedscreen.synth import generate, generate_university, write_export
from fedscreen.trust import authority
from fedscreen.trust.identity import issue_here

YEAR = "2024-2025"
COUNTY = "130102"


def _request(config: NodeConfig) -> dict[str, str]:
    data = json.loads((config.home / "request.json").read_text(encoding="utf-8"))
    return {"level": data["level"], "scope": data["scope"]}


def _rows(config: NodeConfig, table: str) -> int:
    conn = sqlite3.connect(config.database)
    try:
        count: int = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        return count
    finally:
        conn.close()


def test_a_county_node_is_the_default(tmp_path: Path) -> None:
    config = init_home(tmp_path / "c", node_id=COUNTY, name="长安区")
    assert (config.kind, config.county_code, config.school_id) == ("county", COUNTY, "")
    assert _request(config) == {"level": "county", "scope": f"county:{COUNTY}"}
    assert config.policy().overrides == {"130102-2025.1"}
    assert config.policy().datasets["screenings"].not_held == frozenset()


def test_a_university_node_is_the_provinces_and_follows_no_county(tmp_path: Path) -> None:
    config = init_home(
        tmp_path / "u", node_id="10075", name="河北大学", county_code=COUNTY, kind="university"
    )
    assert (config.kind, config.county_code, config.school_id) == ("university", COUNTY, "10075")
    assert _request(config) == {"level": "university", "scope": "province"}
    policy = config.policy()
    # the campus is in 130102, but the county's stricter document is not a university's
    assert policy.overrides == frozenset()
    assert policy.kind == "university"
    assert "mht_total" in policy.datasets["screenings"].not_held
    assert load_config(config.home) == config


def test_a_school_node_follows_its_countys_document(tmp_path: Path) -> None:
    config = init_home(
        tmp_path / "s", node_id="130102-s01", name="一中", county_code=COUNTY, kind="school",
        school_id="1301020003",
    )  # fmt: skip
    assert (config.kind, config.school_id) == ("school", "1301020003")
    assert _request(config) == {"level": "school", "scope": f"county:{COUNTY}"}
    policy = config.policy()
    assert policy.overrides == {"130102-2025.1"}
    assert "upi_band" in policy.datasets["screenings"].not_held
    assert policy.limits.publication_threshold == 20  # the county's, not the province's 10
    assert load_config(config.home) == config


@pytest.mark.parametrize(
    ("kind", "county", "school", "message"),
    [
        ("university", None, None, "a university node needs --county"),
        ("school", None, None, "a school node needs --county"),
        ("city", COUNTY, None, "node kind 'city'"),
        ("county", None, "1301020003", "--school is for a school or university node"),
        ("school", COUNTY, "x", "school id 'x'"),
    ],
)
def test_init_checks_the_kind(
    tmp_path: Path, kind: str, county: str | None, school: str | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        init_home(
            tmp_path / "n", node_id="130102", name="n", county_code=county, kind=kind,
            school_id=school,
        )  # fmt: skip
    assert not (tmp_path / "n").exists()


def test_an_old_config_without_a_kind_is_a_county(tmp_path: Path) -> None:
    config = init_home(tmp_path / "c", node_id=COUNTY, name="长安区")
    path = config.home / CONFIG_FILE
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace('kind = "county"\n', ""), encoding="utf-8")
    assert "kind" not in path.read_text(encoding="utf-8")
    assert load_config(config.home) == config


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('kind = "university"', 'kind = "city"', "node kind 'city'"),
        ('school_id = "10075"\n', "", "school_id is set exactly for school and university"),
    ],
)
def test_a_bad_kind_in_the_config_is_refused(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    config = init_home(
        tmp_path / "u", node_id="10075", name="u", county_code=COUNTY, kind="university"
    )
    path = config.home / CONFIG_FILE
    path.write_text(path.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_config(config.home)


@pytest.fixture
def university(tmp_path: Path) -> NodeConfig:
    return init_home(
        tmp_path / "u", node_id="10075", name="河北大学", county_code=COUNTY, kind="university"
    )


@pytest.fixture
def school(tmp_path: Path) -> NodeConfig:
    return init_home(
        tmp_path / "s", node_id="130102-s01", name="s", county_code=COUNTY, kind="school",
        school_id="1301020003",
    )  # fmt: skip


@pytest.mark.parametrize("workers", [False, True])
def test_a_university_ingests_its_own_freshmen(
    university: NodeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: bool
) -> None:
    if workers:  # the large-file path: parsing workers check the rows too
        monkeypatch.setattr(ingest, "WORKER_MIN_BYTES", 0)
    write_export(generate_university("10075", COUNTY, 300, YEAR, seed=2), tmp_path / "x")
    loaded, rejected = ingest_paths(university, [tmp_path / "x"])
    assert not rejected
    assert {r.rows for r in loaded} == {300, 1}
    assert _rows(university, "screenings WHERE grade = 'U1'") == 300


@pytest.mark.parametrize("workers", [False, True])
def test_a_university_rejects_a_countys_export(
    university: NodeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: bool
) -> None:
    if workers:
        monkeypatch.setattr(ingest, "WORKER_MIN_BYTES", 0)
    write_export(generate(COUNTY, 200, YEAR, seed=2), tmp_path / "x")
    loaded, rejected = ingest_paths(university, [tmp_path / "x"])
    assert not loaded
    assert len(rejected) == 2  # the screenings and the school table
    problems = [p for err in rejected for p in err.problems]
    assert any(
        p.column == "school_type" and "a university node holds its own freshmen only" in p.reason
        for p in problems
    )
    assert any(
        p.column == "school_id" and "not this university node's school 10075" in p.reason
        for p in problems
    )
    assert all(p.line >= 2 and p.file.endswith(".csv") for p in problems)
    assert _rows(university, "screening") == _rows(university, "school") == 0


def test_a_university_rejects_another_universitys_rows(
    university: NodeConfig, tmp_path: Path
) -> None:
    write_export(generate_university("10082", COUNTY, 50, YEAR, seed=2), tmp_path / "x")
    _, rejected = ingest_paths(university, [tmp_path / "x"])
    reasons = [p.reason for err in rejected for p in err.problems]
    # the cell is not echoed (limits.shown): the node's own code is
    assert reasons
    assert all(r.endswith("is not this university node's school 10075") for r in reasons)
    assert _rows(university, "screening") == 0


def test_a_school_node_ingests_its_one_school(school: NodeConfig, tmp_path: Path) -> None:
    county = generate(COUNTY, 2000, YEAR, seed=2)
    write_export(county.only("1301020003"), tmp_path / "mine")
    _, rejected = ingest_paths(school, [tmp_path / "mine"])
    assert not rejected
    assert _rows(school, "screenings") == county.only("1301020003").students
    # the whole county's export: every other school's rows are named, nothing loaded
    write_export(county, tmp_path / "all", per_school=False)
    loaded, rejected = ingest_paths(school, [tmp_path / "all" / "screenings.csv"])
    assert not loaded
    assert len(rejected) == 1
    assert isinstance(rejected[0], IngestError)
    assert "is not this school node's school 1301020003" in str(rejected[0])
    assert _rows(school, "screenings") == county.only("1301020003").students


def test_a_school_node_refuses_university_rows(school: NodeConfig, tmp_path: Path) -> None:
    write_export(generate_university("1301020003", COUNTY, 20, YEAR, seed=1), tmp_path / "x")
    _, rejected = ingest_paths(school, [tmp_path / "x" / "screenings.csv"])
    reasons = {p.reason for err in rejected for p in err.problems}
    assert "university: a school node holds one primary or secondary school" in reasons


def test_a_node_whose_config_disagrees_with_the_manifest_will_not_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """node.toml edited to another kind or county than the authority issued: ``node serve``
    refuses to start (a university's freshmen must not answer as a county's)."""
    auth = tmp_path / "auth"
    authority.init_authority(auth, federation="kinds")
    config = init_home(tmp_path / "u", node_id="10094", name="河北师范大学", kind="university",
                       county_code="130108")  # fmt: skip
    manifest = issue_here(auth, config.home)
    check_placement(load_config(config.home), manifest)  # as issued: fine
    text = (config.home / CONFIG_FILE).read_text(encoding="utf-8")
    (config.home / CONFIG_FILE).write_text(
        text.replace('kind = "university"', 'kind = "county"').replace('school_id = "10094"\n', ""),
        encoding="utf-8",
    )
    edited = load_config(config.home)
    assert edited.kind == "county"
    with pytest.raises(ConfigError, match="as a university node at province"):
        check_placement(edited, manifest)
    with pytest.raises(ConfigError, match="as a university node at province"):
        asyncio.run(run_node(config.home, "127.0.0.1:9", stop=asyncio.Event()))
    # nor does it load rows or answer locally as what node.toml now says
    export = tmp_path / "county-export"
    write_export(generate("130108", 60, YEAR, seed=3), export)
    assert main(["node", "ingest", "--home", str(config.home), str(export)]) == 1
    assert _rows(edited, "screening") == 0
    sql = f"SELECT COUNT(*) FROM screenings WHERE academic_year = '{YEAR}'"
    query = ["node", "query", "--home", str(config.home), "--analyst", "a", "--epsilon", "0.1"]
    assert main([*query, sql]) == 1
    assert "as a university node at province" in capsys.readouterr().err
    county = init_home(tmp_path / "c", node_id="130102", name="长安区")
    manifest = issue_here(auth, county.home)
    moved = replace(load_config(county.home), county_code="130104")
    with pytest.raises(ConfigError, match="county 130104"):
        check_placement(moved, manifest)
