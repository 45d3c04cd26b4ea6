"""Node kinds on a real federation: a county node, a school node under the same county and
a university node, each its own ``fedscreen node serve`` process dialling a real
``fedscreen coordinator serve`` on 127.0.0.1 with mutual TLS, real SQLite and synthetic
screenings; the analyst (province scope) is the real ``fedscreen query`` CLI.

长安区 (130102) runs a county node holding its schools but one, which runs its own
school node (``130102-s01``); 河北大学 (10075, campus registered in 保定 130602) runs a
university node holding its freshmen.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from procfed import Processes, charges, cli, refusals

from fedscreen.coordinator.core import init_coordinator
from fedscreen.node.home import NodeConfig, init_home
from fedscreen.node.ingest import ingest_paths
from fedscreen.synth import County, generate, generate_university, write_export
from fedscreen.trust import authority
from fedscreen.trust.identity import create_identity, issue_here, update_manifest

YEAR = "2024-2025"
COUNTY = "130102"
SCHOOL_NODE = "130102-s01"
UNIVERSITY = "10075"
NODES = (COUNTY, SCHOOL_NODE, UNIVERSITY)
ANALYST = "prov"
WHERE = f"WHERE academic_year = '{YEAR}'"


@dataclass
class KindsFed:
    root: Path
    analyst: Path
    coordinator: Path
    nodes: dict[str, NodeConfig]
    #: the county's plan, the one the county node and the school node split
    county: County
    school_id: str
    run: Processes
    address: str = ""

    def query(self, sql: str, *extra: str, epsilon: float = 0.3) -> dict[str, Any]:
        result = cli(
            "query", "--home", str(self.analyst), "--coordinator", self.address,
            "--epsilon", str(epsilon), "--format", "json", *extra, sql,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    def charges(self, node: str) -> int:
        return charges(self.nodes[node])

    def refusals(self, node: str) -> list[str]:
        return refusals(self.nodes[node])


def _ingest(config: NodeConfig, data: County, out: Path) -> None:
    write_export(data, out)
    _, rejected = ingest_paths(config, [out])
    assert not rejected, [str(e) for e in rejected]


def _make(root: Path) -> KindsFed:
    auth = root / "auth"
    authority.init_authority(auth, federation="kinds")
    init_coordinator(root / "coord", member_id="coordinator", name="省平台")
    issue_here(auth, root / "coord")
    create_identity(root / ANALYST, member_id=ANALYST, role="analyst", name="省监测中心")
    issue_here(auth, root / ANALYST)
    # the county's schools without a university: 河北大学 reports on its own node
    county = generate(COUNTY, 400, YEAR, seed=1, universities=False)
    # a large school runs its own node (here the county's largest, 99 students)
    school_id = max(county.schools, key=lambda s: s.students).school_id
    configs = {
        COUNTY: init_home(root / COUNTY, node_id=COUNTY, name="长安区"),
        SCHOOL_NODE: init_home(
            root / SCHOOL_NODE, node_id=SCHOOL_NODE, name="长安区一中", county_code=COUNTY,
            kind="school", school_id=school_id,
        ),
        UNIVERSITY: init_home(
            root / UNIVERSITY, node_id=UNIVERSITY, name="河北大学", county_code="130602",
            kind="university",
        ),
    }  # fmt: skip
    for config in configs.values():
        issue_here(auth, config.home)
    _ingest(configs[COUNTY], county.without([school_id]), root / "export-county")
    _ingest(configs[SCHOOL_NODE], county.only(school_id), root / "export-school")
    freshmen = generate_university(UNIVERSITY, "130602", 400, YEAR, seed=2)
    _ingest(configs[UNIVERSITY], freshmen, root / "export-university")
    text = authority.manifest_text(auth)
    for home in (root / "coord", root / ANALYST, *(c.home for c in configs.values())):
        update_manifest(home, text)
    return KindsFed(
        root, root / ANALYST, root / "coord", configs, county, school_id, Processes(root)
    )


@contextlib.contextmanager
def running(root: Path) -> Iterator[KindsFed]:
    fed = _make(root)
    try:
        fed.address = fed.run.coordinator(fed.coordinator)
        for node in NODES:
            fed.run.node(fed.nodes[node], fed.address)
        yield fed
    finally:
        fed.run.stop_all()


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KindsFed]:
    with running(tmp_path_factory.mktemp("kinds")) as federation:
        yield federation


def test_the_university_answers_the_upi_table(fed: KindsFed) -> None:
    sql = (
        f"SELECT upi_band, sex, COUNT(*) FROM screenings {WHERE} AND upi_valid = 1 "
        "GROUP BY upi_band, sex"
    )
    before = fed.charges(UNIVERSITY)
    release = fed.query(sql, "--nodes", UNIVERSITY)["release"]
    assert release["answered"] == [UNIVERSITY]
    assert release["missing"] == []
    assert fed.charges(UNIVERSITY) == before + 1
    cells = {tuple(c["group"]): c for c in release["province"]}
    assert set(cells) == {(band, sex) for band in ("I", "II", "III") for sex in ("M", "F")}
    assert all(c["nodes"] == 1 for c in cells.values())
    # 400 freshmen, class III about 82%: the noisy III cells are most of them
    assert cells["III", "M"]["value"] + cells["III", "F"]["value"] > 250


def test_the_university_refuses_mht_and_the_others_answer(fed: KindsFed) -> None:
    sql = f"SELECT mht_band, COUNT(*) FROM screenings {WHERE} GROUP BY mht_band"
    before = fed.charges(UNIVERSITY)
    release = fed.query(sql)["release"]
    assert release["answered"] == sorted([COUNTY, SCHOOL_NODE])
    assert release["missing"] == [UNIVERSITY]
    reason = release["missing_reasons"][UNIVERSITY]
    assert reason.startswith("refused: ")
    assert "column mht_band is not held by a university node" in reason
    # recorded at the node, and free
    assert fed.charges(UNIVERSITY) == before
    assert any("mht_band is not held by a university node" in r for r in fed.refusals(UNIVERSITY))


def test_a_county_figure_combines_the_county_node_and_its_school_node(fed: KindsFed) -> None:
    sql = f"SELECT county_code, COUNT(*) FROM screenings {WHERE} GROUP BY county_code"
    release = fed.query(sql)["release"]
    assert release["answered"] == sorted([COUNTY, SCHOOL_NODE])
    # a university belongs to no county's figures: it does not hold county_code
    assert release["missing"] == [UNIVERSITY]
    assert "county_code is not held by a university node" in release["missing_reasons"][UNIVERSITY]
    # both nodes follow 长安区's document, which narrows county_code to its own code:
    # one cell, the sum of the county node's and the school node's noisy counts
    (cell,) = release["province"]
    assert cell["group"] == [COUNTY]
    assert cell["nodes"] == 2
    parts = [release["per_node"][node] for node in (COUNTY, SCHOOL_NODE)]
    assert all(len(p) == 1 and p[0]["group"] == [COUNTY] for p in parts)
    assert cell["value"] == sum(p[0]["value"] for p in parts)
    school = fed.county.only(fed.school_id).students
    assert 0 < school < fed.county.students
    # the school's students are in the county figure: each noisy count is within ±40 of
    # the truth (ε = 0.3 each: a miss is below 1e-5), and the school has more than 80
    assert school > 80
    (school_cell,) = release["per_node"][SCHOOL_NODE]
    assert abs(school_cell["value"] - school) < 40
    (county_cell,) = release["per_node"][COUNTY]
    assert abs(county_cell["value"] - (fed.county.students - school)) < 40
    assert abs(cell["value"] - fed.county.students) < 80
