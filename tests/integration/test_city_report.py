"""A city report on a real federation: `report run --scope city:1301` asks only the
city's nodes, shows the province's published figures beside the city's, and `report
verify` accepts it; a city analyst's report of another city is refused before anything
is asked.

Real coordinator and node processes on 127.0.0.1 with mutual TLS (the ``Federation`` of
``test_federation.py``), nodes in two cities: 石家庄 (130104, 130105) and 唐山 (130202).
The CLI runs as separate processes, as an analyst would run it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from reportplans import count_plan, secure_plan
from test_federation import COORDINATOR, STUDENTS, YEAR, Federation, _cli

from fedscreen.coordinator.core import init_coordinator
from fedscreen.node.home import init_home
from fedscreen.node.ingest import ingest_paths
from fedscreen.synth import generate, write_export
from fedscreen.trust import authority
from fedscreen.trust.identity import create_identity, issue_here, load_identity, update_manifest

CITY = ("130104", "130105")
OTHER_CITY = ("130202",)
NODES = (*CITY, *OTHER_CITY)
PROVINCE_ANALYST = "alice"
#: the education bureau of 石家庄市: its analyst's scope is its city
CITY_ANALYST = "sjz-bureau"
AUDITOR = "auditor-1"


@contextlib.contextmanager
def running_cities(root: Path) -> Iterator[Federation]:
    """Coordinator and nodes of two cities running, a province and a city analyst."""
    auth = root / "auth"
    authority.init_authority(auth, federation="河北省")
    init_coordinator(root / "coord", member_id=COORDINATOR, name="河北省协调服务")
    issue_here(auth, root / "coord")
    for n, node_id in enumerate(NODES):
        config = init_home(root / node_id, node_id=node_id, name=f"县 {node_id}")
        issue_here(auth, config.home)
        write_export(generate(node_id, STUDENTS, YEAR, seed=n + 1), root / f"export-{node_id}")
        _, rejected = ingest_paths(config, [root / f"export-{node_id}"])
        assert not rejected, rejected
    create_identity(root / PROVINCE_ANALYST, member_id=PROVINCE_ANALYST, role="analyst",
                    name="Alice")  # fmt: skip
    create_identity(root / CITY_ANALYST, member_id=CITY_ANALYST, role="analyst",
                    name="石家庄市教育局", scope="city:1301")  # fmt: skip
    create_identity(root / AUDITOR, member_id=AUDITOR, role="auditor", name="稽核")
    homes = [root / "coord", *(root / n for n in NODES)]
    homes += [root / PROVINCE_ANALYST, root / CITY_ANALYST, root / AUDITOR]
    for home in homes[len(NODES) + 1 :]:
        issue_here(auth, home)
    text = authority.manifest_text(auth)
    for home in homes:
        update_manifest(home, text)
    federation = Federation(
        root=root,
        auth=auth,
        manifest=authority.current_manifest(auth),
        coordinator_home=root / "coord",
        analyst=load_identity(root / PROVINCE_ANALYST),
        auditor=load_identity(root / AUDITOR),
        # no other federation here: the tests below never use an outsider
        outsider=load_identity(root / CITY_ANALYST),
    )
    try:
        federation.start_coordinator()
        for node_id in NODES:
            federation.start_node(node_id)
        yield federation
    finally:
        federation.stop_all()


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with running_cities(tmp_path_factory.mktemp("cities")) as federation:
        yield federation


def _as(fed: Federation, analyst: str) -> list[str]:
    return ["--home", str(fed.root / analyst), "--coordinator", fed.address]


def _manifest(fed: Federation) -> str:
    return str(fed.auth / "manifest.json")


def test_a_city_report_asks_only_the_citys_nodes_and_verifies(
    fed: Federation, tmp_path: Path
) -> None:
    plan = count_plan(tmp_path / "plan.toml", [0.1, 0.1])
    province = tmp_path / "province"
    ran = _cli("report", "run", str(plan), *_as(fed, PROVINCE_ANALYST), "--out", str(province))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    city = tmp_path / "city"
    ran = _cli(
        "report", "run", str(plan), *_as(fed, PROVINCE_ANALYST), "--scope", "city:1301",
        "--province-report", str(province), "--out", str(city),
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "scope city:1301: 2 nodes (130104, 130105)" in ran.stdout
    model = json.loads((city / "report.json").read_text(encoding="utf-8"))
    published = json.loads((province / "report.json").read_text(encoding="utf-8"))
    assert model["scope"]["id"] == "city:1301"
    assert model["scope"]["nodes"] == list(CITY)
    assert model["title"].endswith("石家庄市")
    # every release asked exactly the city's nodes, and the other city never saw them
    for name in ("q0", "q1"):
        run = json.loads((city / "releases" / f"{name}.json").read_text(encoding="utf-8"))
        assert sorted(run["answers"]) == list(CITY)
        query_id = model["releases"][name]
        assert all(fed.answered(n, query_id) for n in CITY)
        assert not any(fed.answered(n, query_id) for n in OTHER_CITY)
    stats = {s["id"]: s for s in model["sections"][0]["statistics"]}
    for sid, stat in stats.items():
        assert {r["scope"] for r in stat["rows"]} == {"city:1301", *CITY}
        theirs = next(s for s in published["sections"][0]["statistics"] if s["id"] == sid)
        assert stat["province"]["queries"] == theirs["queries"]
        assert stat["province"]["rows"] == [r for r in theirs["rows"] if r["scope"] == "province"]
    assert (city / "province-report.json").read_bytes() == (province / "report.json").read_bytes()
    verified = _cli("report", "verify", str(city), "--manifest", _manifest(fed))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "VALID" in verified.stdout
    assert "not verified here: give that report with --province-report" in verified.stdout
    both = _cli("report", "verify", str(city), "--manifest", _manifest(fed),
                "--province-report", str(province))  # fmt: skip
    assert both.returncode == 0, both.stdout + both.stderr
    assert "the province report it compares with verified too" in both.stdout
    # the province report given must verify from its own releases, and be the one copied
    edited = tmp_path / "province-edited"
    shutil.copytree(province, edited)
    doc = json.loads((edited / "report.json").read_text(encoding="utf-8"))
    doc["generated_at"] = "2020-01-01T00:00:00+00:00"
    (edited / "report.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    other = _cli("report", "verify", str(city), "--manifest", _manifest(fed),
                 "--province-report", str(edited))  # fmt: skip
    assert other.returncode == 2, other.stdout + other.stderr
    # another scope's releases are never resumed into a report (they would mix their
    # nodes into its figures): a partial run's directory is refused for it
    partial = tmp_path / "partial"
    shutil.copytree(city, partial)
    (partial / "report.json").unlink()
    mixed = _cli(
        "report", "run", str(plan), *_as(fed, PROVINCE_ANALYST), "--scope", "county:130104",
        "--out", str(partial),
    )  # fmt: skip
    assert mixed.returncode == 1, mixed.stdout + mixed.stderr
    assert "give a new --out" in mixed.stderr
    assert not (partial / "report.json").exists()
    # a copy of the province report changed after the fact is caught
    forged = dict(published, title="Another province report")
    (city / "province-report.json").write_text(json.dumps(forged), encoding="utf-8")
    tampered = _cli("report", "verify", str(city), "--manifest", _manifest(fed))
    assert tampered.returncode == 2, tampered.stdout + tampered.stderr
    assert "province-report.json is not the province report the report names" in tampered.stderr


def test_a_city_analysts_report_of_another_city_is_refused_before_anything_is_asked(
    fed: Federation, tmp_path: Path
) -> None:
    plan = count_plan(tmp_path / "plan.toml", [0.1])
    charges = {n: fed.charges(n) for n in NODES}
    out = tmp_path / "out"
    for scope in ("city:1302", "province"):
        ran = _cli(
            "report", "run", str(plan), *_as(fed, CITY_ANALYST), "--scope", scope,
            "--out", str(out),
        )  # fmt: skip
        assert ran.returncode != 0, ran.stdout + ran.stderr
        assert f"scope {scope} is outside analyst {CITY_ANALYST}'s scope (city:1301)" in ran.stderr
        assert "Traceback" not in ran.stderr
    # nothing was asked: no node charged anything, no report written
    assert {n: fed.charges(n) for n in NODES} == charges
    assert not out.exists()
    # the budget check of a city plan reads the city's nodes' statements only
    planned = _cli("report", "plan", str(plan), *_as(fed, CITY_ANALYST))
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert all(f"\n{n}  yes" in planned.stdout for n in CITY)
    assert not any(n in planned.stdout for n in OTHER_CITY)
    # --province-report is for a city or county report only
    ran = _cli(
        "report", "run", str(plan), *_as(fed, PROVINCE_ANALYST), "--province-report",
        str(tmp_path), "--out", str(out),
    )  # fmt: skip
    assert ran.returncode != 0
    assert "--province-report is for a city or county report" in ran.stderr
    assert {n: fed.charges(n) for n in NODES} == charges


def test_a_city_too_small_for_secure_queries_is_refused_before_anything_is_asked(
    fed: Federation, tmp_path: Path
) -> None:
    """Two counties cannot answer a secure query (a release sums at least three): a plan
    with one is refused before its plain queries are charged, at plan and at run."""
    plan = secure_plan(tmp_path / "secure.toml", epsilon=0.1)
    before = {n: fed.charges(n) for n in CITY}
    for action in ("plan", "run"):
        out = ["--out", str(tmp_path / "secure-report")] if action == "run" else []
        refused = _cli("report", action, str(plan), *_as(fed, CITY_ANALYST), *out)
        assert refused.returncode == 3, refused.stdout + refused.stderr
        assert "need at least 3 nodes that answer secure queries" in refused.stderr
    assert {n: fed.charges(n) for n in CITY} == before
    assert not (tmp_path / "secure-report" / "releases").exists()
