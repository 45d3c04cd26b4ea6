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
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fedscreen.coordinator.core import init_coordinator
from fedscreen.node.home import NodeConfig, init_home
from fedscreen.node.ingest import ingest_paths
from fedscreen.synth import County, generate, generate_university, write_export
from fedscreen.trust import authority
from fedscreen.trust.identity import create_identity, issue_here, update_manifest

SRC = Path(__file__).resolve().parents[2] / "src"
CLI = [sys.executable, "-m", "fedscreen.cli.main"]
YEAR = "2024-2025"
COUNTY = "130102"
SCHOOL_NODE = "130102-s01"
UNIVERSITY = "10075"
NODES = (COUNTY, SCHOOL_NODE, UNIVERSITY)
ANALYST = "prov"
WHERE = f"WHERE academic_year = '{YEAR}'"
READY_TIMEOUT_S = 30.0
PROCESS_TIMEOUT_S = 60.0


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC)}


@dataclass
class KindsFed:
    root: Path
    analyst: Path
    coordinator: Path
    nodes: dict[str, NodeConfig]
    #: the county's plan, the one the county node and the school node split
    county: County
    school_id: str
    address: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, argv: list[str]) -> dict[str, Any]:
        log, ready = self.root / f"{name}.log", self.root / f"{name}.ready"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [*argv, "--ready-file", str(ready)], stdout=out, stderr=subprocess.STDOUT,
                env=_env(),
            )  # fmt: skip
        self.procs[name] = proc
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if ready.is_file() and ready.read_text(encoding="utf-8").strip():
                return dict(json.loads(ready.read_text(encoding="utf-8")))
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited {proc.returncode}:\n{log.read_text()}")
            time.sleep(0.05)
        raise AssertionError(f"{name} not ready within {READY_TIMEOUT_S} s:\n{log.read_text()}")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def query(self, sql: str, *extra: str, epsilon: float = 0.3) -> dict[str, Any]:
        result = subprocess.run(
            [*CLI, "query", "--home", str(self.analyst), "--coordinator", self.address,
             "--epsilon", str(epsilon), "--format", "json", *extra, sql],
            capture_output=True, text=True, env=_env(), timeout=PROCESS_TIMEOUT_S,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    def _one(self, node: str, sql: str) -> list[Any]:
        conn = sqlite3.connect(self.nodes[node].database)
        try:
            return list(conn.execute(sql).fetchall())
        finally:
            conn.close()

    def charges(self, node: str) -> int:
        return int(self._one(node, "SELECT COUNT(*) FROM ledger_charge")[0][0])

    def refusals(self, node: str) -> list[str]:
        return [str(r[0]) for r in self._one(node, "SELECT reason FROM query_refusal")]


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
    return KindsFed(root, root / ANALYST, root / "coord", configs, county, school_id)


@contextlib.contextmanager
def running(root: Path) -> Iterator[KindsFed]:
    fed = _make(root)
    try:
        listening = fed.start(
            "coordinator",
            [*CLI, "coordinator", "serve", "--home", str(fed.coordinator),
             "--listen", "127.0.0.1:0"],
        )  # fmt: skip
        fed.address = str(listening["address"])
        for node in NODES:
            fed.start(node, [*CLI, "node", "serve", "--home", str(fed.nodes[node].home),
                             "--coordinator", fed.address])  # fmt: skip
        yield fed
    finally:
        fed.stop_all()


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
