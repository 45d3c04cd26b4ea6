"""An air-gapped node on a real federation: two county nodes online, one offline.

The coordinator and the two online nodes are processes (``coordinator serve``, ``node
serve``) on 127.0.0.1 with mutual TLS; the offline node (唐山 路北区, 130203) is never
started and has no network path: its queries reach it only through the files the real
CLI writes (``coordinator outbox`` → ``node answer-file`` → ``coordinator inbox``).
The province's release is first partial, then a second version includes the offline
node; the analyst fetches the newest, and the auditor verifies every log.
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
from fedscreen.trust.identity import create_identity, issue_here, update_manifest

YEAR = "2024-2025"
ONLINE = ("130104", "130105")
OFFLINE = "130203"
NODES = (*ONLINE, OFFLINE)
SQL = f"SELECT COUNT(*) FROM screenings WHERE academic_year = '{YEAR}'"


@dataclass
class Fed:
    root: Path
    auth: Path
    coordinator: Path
    analyst: Path
    nodes: dict[str, NodeConfig]
    run: Processes
    address: str = ""

    def query(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return cli(
            "query", "--home", str(self.analyst), "--coordinator", self.address,
            "--epsilon", "0.3", "--format", "json", *extra, SQL,
        )  # fmt: skip

    def outbox(self, name: str) -> Path:
        path = self.root / name
        done = cli("coordinator", "outbox", "--home", str(self.coordinator), "--node", OFFLINE,
                   "--out", str(path))  # fmt: skip
        assert done.returncode == 0, done.stderr
        return path

    def answer(self, outbox: Path, name: str) -> subprocess.CompletedProcess[str]:
        return cli("node", "answer-file", "--home", str(self.nodes[OFFLINE].home), str(outbox),
                   "--out", str(self.root / name))  # fmt: skip

    def inbox(self, name: str) -> subprocess.CompletedProcess[str]:
        return cli("coordinator", "inbox", "--home", str(self.coordinator), str(self.root / name))


def _make(root: Path) -> Fed:
    auth = root / "auth"
    authority.init_authority(auth, federation="offline")
    init_coordinator(root / "coord", member_id="coordinator", name="省平台")
    issue_here(auth, root / "coord")
    create_identity(root / "prov", member_id="prov", role="analyst", name="省级分析员")
    issue_here(auth, root / "prov")
    configs: dict[str, NodeConfig] = {}
    for seed, node in enumerate(NODES):
        config = init_home(root / node, node_id=node, name=f"county {node}")
        issue_here(auth, config.home)
        write_export(generate(node, 150, YEAR, seed=seed + 1), root / f"export-{node}")
        _, rejected = ingest_paths(config, [root / f"export-{node}"])
        assert not rejected
        configs[node] = config
    linked = cli("pki", "link", "--dir", str(auth), "--id", OFFLINE, "--offline")
    assert linked.returncode == 0, linked.stderr
    text = authority.manifest_text(auth)
    for home in (root / "coord", root / "prov", *(c.home for c in configs.values())):
        update_manifest(home, text)
    return Fed(root, auth, root / "coord", root / "prov", configs, Processes(root))


@contextlib.contextmanager
def running(root: Path) -> Iterator[Fed]:
    fed = _make(root)
    try:
        fed.address = fed.run.coordinator(fed.coordinator)
        for node in ONLINE:
            fed.run.node(fed.nodes[node], fed.address)
        yield fed
    finally:
        fed.run.stop_all()


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    with running(tmp_path_factory.mktemp("offline")) as federation:
        yield federation


def test_the_release_is_partial_then_complete_and_every_log_verifies(fed: Fed) -> None:
    first = fed.query()
    assert first.returncode == 0, first.stderr
    release = json.loads(first.stdout)["release"]
    assert release["targeted"] == sorted(NODES)
    assert release["answered"] == sorted(ONLINE)
    assert release["missing"] == [OFFLINE]
    assert "queued" in release["missing_reasons"][OFFLINE]
    before = charges(fed.nodes[OFFLINE])
    # the province's operator sees the node reached by file, with what waits for it
    status = cli("coordinator", "status", "--home", str(fed.coordinator),
                 "--coordinator", fed.address, "--json")  # fmt: skip
    assert status.returncode == 0, status.stderr
    (shown,) = [n for n in json.loads(status.stdout)["nodes"] if n["node_id"] == OFFLINE]
    assert shown["offline"] is True
    assert shown["queued"] >= 1

    outbox = fed.outbox("outbox-1.json")
    answered = fed.answer(outbox, "answers-1.json")
    assert answered.returncode == 0, answered.stderr
    assert "1 answered, 0 refused" in answered.stdout
    assert charges(fed.nodes[OFFLINE]) == before + 1
    status = cli("node", "status", "--home", str(fed.nodes[OFFLINE].home))
    assert status.returncode == 0, status.stderr
    assert "link: by file; the last outbox answered was made " in status.stdout
    assert "never connected" not in status.stdout

    imported = fed.inbox("answers-1.json")
    assert imported.returncode == 0, imported.stderr
    assert "release version 2" in imported.stdout
    # the node's signed budget statement came back with its answers: analysts see it
    budgets = cli("budgets", "--home", str(fed.analyst), "--coordinator", fed.address,
                  "--format", "json")  # fmt: skip
    assert budgets.returncode == 0, budgets.stderr
    (entry,) = [n for n in json.loads(budgets.stdout)["nodes"] if n["node_id"] == OFFLINE]
    assert entry["statement"] is True
    assert entry["connected"] is False
    # importing the same file again changes nothing
    again = fed.inbox("answers-1.json")
    assert again.returncode == 0, again.stderr
    assert "0 new release versions" in again.stdout

    # the same outbox answered twice charges once
    twice = fed.answer(outbox, "answers-1b.json")
    assert twice.returncode == 0, twice.stderr
    assert charges(fed.nodes[OFFLINE]) == before + 1
    assert "no charge" in twice.stdout

    bundle = fed.root / "offline.bundle"
    homes = [fed.coordinator, *(fed.nodes[n].home for n in NODES)]
    args = [a for h in homes for a in ("--home", str(h))]
    exported = cli("audit", "export", *args, "--out", str(bundle))
    assert exported.returncode == 0, exported.stderr
    done = cli("audit", "verify", str(bundle), "--manifest", str(fed.auth / "manifest.json"),
               "--json")  # fmt: skip
    assert done.returncode == 0, (done.stdout, done.stderr)
    logs = json.loads(done.stdout)["logs"]
    coordinator = next(r for r in logs if r["origin"].startswith("fedscreen.coordinator/"))
    assert coordinator["later_versions"] >= 1
    assert refusals(fed.nodes[OFFLINE]) == []


def test_an_outbox_made_before_the_last_answers_came_back_still_proves_the_log(fed: Fed) -> None:
    """The province writes a second outbox before the first one's answers are imported:
    the node holds the first outbox's coordinator checkpoint, and the second proves its
    log extends that one (not only the one the coordinator last heard of)."""
    first = fed.query()
    assert first.returncode == 0, first.stderr
    a = fed.outbox("outbox-a.json")
    answered = fed.answer(a, "answers-a.json")
    assert answered.returncode == 0, answered.stderr
    second = fed.query()  # logged at the coordinator: its log grows past outbox a's
    assert second.returncode == 0, second.stderr
    b = fed.outbox("outbox-b.json")
    again = fed.answer(b, "answers-b.json")
    assert again.returncode == 0, again.stderr
    assert ", 0 refused" in again.stdout, again.stdout
    for name in ("answers-a.json", "answers-b.json"):
        imported = fed.inbox(name)
        assert imported.returncode == 0, imported.stderr
    status = cli("query", "--home", str(fed.analyst), "--coordinator", fed.address,
                 "--release", json.loads(second.stdout)["release"]["query_id"],
                 "--format", "json")  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["release"]["answered"] == sorted(NODES)
    # an outbox older than the one answered last is refused whole, nothing recorded
    old = fed.answer(a, "answers-a2.json")
    assert old.returncode != 0
    assert "older than what this node last had from the coordinator" in old.stderr
    assert not (fed.root / "answers-a2.json").exists()
