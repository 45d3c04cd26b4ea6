"""A county node that served online goes offline (its machine loses its network path).

Real processes (``coordinator serve``, ``node serve``) with mutual TLS: the node answers
a query over its stream, so it holds a checkpoint of the coordinator's log from it;
then it stops, the authority marks it offline (``pki link --offline``) and its next
queries go by file. Its first outbox must prove the coordinator's log from that
checkpoint (the coordinator noted it when the stream ended), or the node would take
an honest coordinator for one whose log went back.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from procfed import Processes, cli, refusals

from fedscreen.coordinator.core import init_coordinator
from fedscreen.node.home import init_home
from fedscreen.node.ingest import ingest_paths
from fedscreen.synth import generate, write_export
from fedscreen.trust import authority
from fedscreen.trust.identity import create_identity, issue_here, update_manifest

YEAR = "2024-2025"
ONLINE, SWITCHED = "130104", "130105"
SQL = f"SELECT COUNT(*) FROM screenings WHERE academic_year = '{YEAR}'"
#: bound on waiting for the coordinator to note the ended stream (s)
WAIT_S = 10.0


def test_a_node_gone_offline_answers_its_first_outbox(tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    authority.init_authority(auth, federation="switch")
    coordinator, analyst = tmp_path / "coord", tmp_path / "prov"
    init_coordinator(coordinator, member_id="coordinator", name="省平台")
    issue_here(auth, coordinator)
    create_identity(analyst, member_id="prov", role="analyst", name="省级分析员")
    issue_here(auth, analyst)
    nodes = {}
    for seed, node in enumerate((ONLINE, SWITCHED)):
        config = init_home(tmp_path / node, node_id=node, name=f"county {node}")
        issue_here(auth, config.home)
        write_export(generate(node, 120, YEAR, seed=seed + 1), tmp_path / f"export-{node}")
        assert not ingest_paths(config, [tmp_path / f"export-{node}"])[1]
        nodes[node] = config
    for home in (coordinator, analyst, *(c.home for c in nodes.values())):
        update_manifest(home, authority.manifest_text(auth))
    run = Processes(tmp_path)

    def query(epsilon: str) -> dict[str, object]:
        done = cli("query", "--home", str(analyst), "--coordinator", address,
                   "--epsilon", epsilon, "--format", "json", SQL)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout)["release"])

    try:
        address = run.coordinator(coordinator)
        for config in nodes.values():
            run.node(config, address)
        assert query("0.3")["answered"] == [ONLINE, SWITCHED]
        # its machine loses the network: the node stops, the province marks it offline
        switched = run.procs.pop(SWITCHED)
        switched.terminate()
        switched.wait(timeout=WAIT_S)
        linked = cli("pki", "link", "--dir", str(auth), "--id", SWITCHED, "--offline")
        assert linked.returncode == 0, linked.stderr
        for home in (coordinator, analyst):
            update_manifest(home, authority.manifest_text(auth))
        release = query("0.4")
        assert release["missing"] == [SWITCHED]
        outbox, answers = tmp_path / "outbox.json", tmp_path / "answers.json"
        deadline = time.monotonic() + WAIT_S
        while True:  # the coordinator notes the ended stream on its own thread
            made = cli("coordinator", "outbox", "--home", str(coordinator), "--node", SWITCHED,
                       "--out", str(outbox))  # fmt: skip
            assert made.returncode == 0, made.stderr
            answered = cli("node", "answer-file", "--home", str(nodes[SWITCHED].home),
                           str(outbox), "--out", str(answers))  # fmt: skip
            if answered.returncode == 0 or time.monotonic() > deadline:
                break
            outbox.unlink()
            time.sleep(0.2)
        assert answered.returncode == 0, answered.stderr
        assert "1 answered, 0 refused" in answered.stdout
        assert refusals(nodes[SWITCHED]) == []
        imported = cli("coordinator", "inbox", "--home", str(coordinator), str(answers))
        assert imported.returncode == 0, imported.stderr
        assert "release version 2" in imported.stdout
    finally:
        run.stop_all()
