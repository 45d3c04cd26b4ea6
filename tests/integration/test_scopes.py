"""Analyst scopes on a real federation: a coordinator and three county nodes in two
cities, each its own process (``fedscreen coordinator serve``, ``fedscreen node serve``)
on 127.0.0.1 with mutual TLS, real SQLite and synthetic screenings; the analysts are the
real ``fedscreen query`` CLI.

石家庄 (1301) has 130104 and 130105, 唐山 (1302) has 130202. ``prov`` is a province
analyst, ``sjz`` 石家庄's city analyst (``identity init --scope city:1301``).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from procfed import Processes, charges, cli, refusals

from fedscreen.coordinator.core import init_coordinator
from fedscreen.node.home import NodeConfig, init_home
from fedscreen.node.ingest import ingest_paths
from fedscreen.synth import generate, write_export
from fedscreen.trust import authority
from fedscreen.trust.certs import cert_scope, load_cert
from fedscreen.trust.identity import create_identity, issue_here, load_identity, update_manifest

YEAR = "2024-2025"
SJZ = ("130104", "130105")
TANGSHAN = "130202"
NODES = (*SJZ, TANGSHAN)
SQL = f"SELECT COUNT(*) FROM screenings WHERE academic_year = '{YEAR}'"


@dataclass
class Fed:
    root: Path
    auth: Path
    coordinator: Path
    analysts: dict[str, Path]
    nodes: dict[str, NodeConfig]
    run: Processes
    address: str = ""

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return cli(*args)

    def query(
        self, analyst: str, *extra: str, epsilon: float = 0.3
    ) -> subprocess.CompletedProcess[str]:
        return cli(
            "query", "--home", str(self.analysts[analyst]), "--coordinator", self.address,
            "--epsilon", str(epsilon), "--format", "json", *extra, SQL,
        )  # fmt: skip

    def charges(self, node: str) -> int:
        return charges(self.nodes[node])

    def refusals(self, node: str) -> list[str]:
        return refusals(self.nodes[node])


def _make(root: Path, analysts: dict[str, str]) -> Fed:
    auth = root / "auth"
    authority.init_authority(auth, federation="scopes")
    init_coordinator(root / "coord", member_id="coordinator", name="省平台")
    issue_here(auth, root / "coord")
    homes: dict[str, Path] = {}
    for member, scope in analysts.items():
        create_identity(root / member, member_id=member, role="analyst", name=member, scope=scope)
        issue_here(auth, root / member)
        homes[member] = root / member
    configs: dict[str, NodeConfig] = {}
    for seed, node in enumerate(NODES):
        config = init_home(root / node, node_id=node, name=f"county {node}")
        issue_here(auth, config.home)
        write_export(generate(node, 150, YEAR, seed=seed + 1), root / f"export-{node}")
        _, rejected = ingest_paths(config, [root / f"export-{node}"])
        assert not rejected
        configs[node] = config
    text = authority.manifest_text(auth)
    for home in (root / "coord", *homes.values(), *(c.home for c in configs.values())):
        update_manifest(home, text)
    return Fed(root, auth, root / "coord", homes, configs, Processes(root))


@contextlib.contextmanager
def running(root: Path, analysts: dict[str, str]) -> Iterator[Fed]:
    fed = _make(root, analysts)
    try:
        fed.address = fed.run.coordinator(fed.coordinator)
        for node in NODES:
            fed.run.node(fed.nodes[node], fed.address)
        yield fed
    finally:
        fed.run.stop_all()


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    root = tmp_path_factory.mktemp("scopes")
    with running(root, {"prov": "", "sjz": "city:1301"}) as federation:
        yield federation


def test_the_scope_is_in_the_manifest_and_the_certificate(fed: Fed) -> None:
    manifest = load_identity(fed.analysts["sjz"]).manifest()
    assert manifest.member("sjz").scope == "city:1301"
    assert manifest.member("prov").scope == ""
    for analyst, scope in (("sjz", "city:1301"), ("prov", "")):
        cert = load_identity(fed.analysts[analyst]).cert_path.read_bytes()
        assert cert_scope(load_cert(cert)) == scope
    listed = fed.cli("pki", "manifest", "--dir", str(fed.auth))
    assert listed.returncode == 0, listed.stderr
    assert any("sjz" in line and "city:1301" in line for line in listed.stdout.splitlines())


def test_a_city_analysts_query_reaches_only_its_citys_nodes(fed: Fed) -> None:
    before = {n: fed.charges(n) for n in NODES}
    result = fed.query("sjz")
    assert result.returncode == 0, result.stderr
    release = json.loads(result.stdout)["release"]
    assert release["targeted"] == sorted(SJZ)
    assert release["answered"] == sorted(SJZ)
    assert release["missing"] == []
    assert fed.charges(TANGSHAN) == before[TANGSHAN]
    assert all(fed.charges(n) == before[n] + 1 for n in SJZ)
    # the province analyst's same question goes everywhere
    wide = fed.query("prov")
    assert wide.returncode == 0, wide.stderr
    assert json.loads(wide.stdout)["release"]["answered"] == sorted(NODES)


def test_a_city_analyst_naming_another_citys_county_is_refused_before_any_node(
    fed: Fed,
) -> None:
    before = {n: fed.charges(n) for n in NODES}
    result = fed.query("sjz", "--nodes", f"130104,{TANGSHAN}")
    assert result.returncode != 0
    assert "out of scope" in result.stderr
    assert "city:1301" in result.stderr
    assert TANGSHAN in result.stderr
    assert "Traceback" not in result.stderr
    assert {n: fed.charges(n) for n in NODES} == before


def test_a_node_refuses_a_query_from_outside_the_scope_a_coordinator_relays(
    tmp_path: Path,
) -> None:
    """The coordinator's manifest still says ``drift`` is a province analyst; the authority
    has since narrowed it to 石家庄 (``pki scope``), and 唐山's node and the analyst have
    the new version. The coordinator relays the query to 唐山 too: the node refuses it
    (recorded, free), and the analyst's own check rejects a release that asked it."""
    with running(tmp_path, {"drift": ""}) as fed:
        narrowed = fed.cli("pki", "scope", "--dir", str(fed.auth), "--id", "drift",
                           "--scope", "city:1301")  # fmt: skip
        assert narrowed.returncode == 0, narrowed.stderr
        text = authority.manifest_text(fed.auth)
        for home in (fed.nodes[TANGSHAN].home, *(fed.nodes[n].home for n in SJZ)):
            update_manifest(home, text)
        before = {n: fed.charges(n) for n in NODES}
        result = fed.query("drift")
        # the coordinator (old manifest) asked all three; 唐山 refused
        assert result.returncode == 0, result.stderr
        release = json.loads(result.stdout)["release"]
        assert release["targeted"] == sorted(NODES)
        assert release["missing"] == [TANGSHAN]
        assert release["missing_reasons"][TANGSHAN].startswith("refused: out-of-scope")
        assert fed.charges(TANGSHAN) == before[TANGSHAN]
        (reason,) = [r for r in fed.refusals(TANGSHAN) if r.startswith("out-of-scope")]
        assert "city:1301" in reason
        assert TANGSHAN in reason
        # the analyst, on the new manifest, does not accept a release that asked 唐山
        update_manifest(fed.analysts["drift"], text)
        again = fed.query("drift", epsilon=0.31)
        assert again.returncode != 0
        assert "outside analyst drift's scope city:1301" in again.stderr
        assert "Traceback" not in again.stderr


def test_a_city_analyst_sees_the_budgets_of_its_citys_nodes_only(fed: Fed) -> None:
    def listed(analyst: str) -> list[str]:
        result = fed.cli(
            "budgets", "--home", str(fed.analysts[analyst]), "--coordinator", fed.address,
            "--format", "json",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return [n["node_id"] for n in json.loads(result.stdout)["nodes"]]

    assert listed("sjz") == sorted(SJZ)
    assert listed("prov") == sorted(NODES)
