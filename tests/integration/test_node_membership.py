"""A node whose manifest no longer lists its coordinator stops: nothing answered, nothing paid.

Real processes: the coordinator and three nodes (``fedscreen node serve``) over mutual
TLS. The province revokes the coordinator; the counties install that manifest in their
homes while the coordinator, not knowing, keeps relaying queries.
"""

from __future__ import annotations

import time
from pathlib import Path

from test_federation import COORDINATOR, NODES, _cli, _query, _submit, run, running_federation

#: how long a node may take to exit after refusing (s)
EXIT_TIMEOUT_S = 20


def test_nodes_refuse_and_stop_once_their_manifest_revokes_the_coordinator(tmp_path: Path) -> None:
    with running_federation(tmp_path) as fed:
        revoked = _cli("pki", "revoke", "--dir", str(fed.auth), "--id", COORDINATOR)
        assert revoked.returncode == 0, revoked.stderr
        for node in NODES:  # the counties install it; the coordinator does not
            installed = _cli("identity", "update-manifest", "--home", str(fed.node_home(node)),
                             "--manifest", str(fed.auth / "manifest.json"))  # fmt: skip
            assert installed.returncode == 0, installed.stdout + installed.stderr
        charges = {n: fed.charges(n) for n in NODES}
        refusals = {n: fed.refusals(n) for n in NODES}
        _, envelope = _query(fed)
        submitted = run(lambda: _submit(fed, envelope))
        assert not submitted.answers
        deadline = time.monotonic() + EXIT_TIMEOUT_S
        for node in NODES:
            assert fed.charges(node) == charges[node]
            assert fed.refusals(node) == refusals[node] + 1  # recorded in its own log
            proc = fed.nodes[node]
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            assert proc.returncode != 0
            log = (fed.root / f"{node}.log").read_text(encoding="utf-8")
            assert "STOPS SERVING: the coordinator is no longer in manifest" in log
            status = _cli("node", "status", "--home", str(fed.node_home(node)))
            assert status.returncode == 0, status.stderr
            assert "REFUSING EVERY QUERY: the coordinator is no longer" in status.stdout
