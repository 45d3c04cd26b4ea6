"""A county re-keyed after a compromise (the trust testers' T5), with real processes.

The federation of ``test_federation.py``: a real coordinator and three node processes.
A county answers; its node is stopped; the province revokes its key and issues the
county a new home (same id, new key, fresh log); the coordinator installs the new
manifest; the new node starts and answers. The old home's log, the new home's log,
the other nodes' logs and the coordinator's log, exported with the authority's
manifest history, verify together (exit 0): each of the county's logs under the key
that signed it, neither taken for a split view of the other.
"""

from __future__ import annotations

import base64
import json
import shutil
import time
from pathlib import Path

from test_federation import (
    NODES,
    Federation,
    _cli,
    _issue,
    _query,
    _submit,
    run,
    running_federation,
)

from fedscreen.node.home import init_home
from fedscreen.node.ingest import ingest_paths
from fedscreen.rpc.client import Submitted

REKEYED = NODES[0]
#: how long the new node may take to be admitted and answer
ADMIT_TIMEOUT_S = 30.0


def _ask(fed: Federation) -> Submitted:
    _, envelope = _query(fed)

    async def scenario() -> Submitted:
        return await _submit(fed, envelope)

    return run(scenario)


def _reasons(submitted: Submitted) -> object:
    """The release's reasons for its missing nodes (for a failure message)."""
    envelope = json.loads(submitted.release_envelope)
    return json.loads(base64.b64decode(envelope["payload"]))["missing_reasons"]


def _rekey(fed: Federation) -> Path:
    """Stop the county's node, revoke its key, give it a new home where the old one was;
    returns where the old home was moved to."""
    fed.kill_node(REKEYED)
    assert _cli("pki", "revoke", "--dir", str(fed.auth), "--id", REKEYED).returncode == 0
    old = fed.root / f"{REKEYED}-compromised"
    shutil.move(str(fed.node_home(REKEYED)), str(old))
    config = init_home(fed.node_home(REKEYED), node_id=REKEYED, name="县 re-keyed")
    _issue(fed.auth, fed.node_home(REKEYED))
    _, rejected = ingest_paths(config, [fed.root / f"export-{REKEYED}"])
    assert not rejected, rejected
    done = _cli("identity", "update-manifest", "--home", str(fed.coordinator_home),
                "--manifest", str(fed.auth / "manifest.json"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    return old


def test_a_rekeyed_countys_logs_verify_with_the_federations(tmp_path: Path) -> None:
    with running_federation(tmp_path) as fed:
        assert REKEYED in _ask(fed).answers  # under the old key
        old = _rekey(fed)
        # a query makes the running coordinator read the new manifest (the county,
        # down, is missing), so the new node is admitted at its first dial
        assert REKEYED in _ask(fed).missing
        fed.start_node(REKEYED)
        deadline = time.monotonic() + ADMIT_TIMEOUT_S
        while REKEYED not in (submitted := _ask(fed)).answers:
            assert time.monotonic() < deadline, _reasons(submitted)
            time.sleep(0.5)
        bundle = tmp_path / "rekeyed.bundle"
        homes = [fed.coordinator_home, old, *(fed.node_home(n) for n in NODES)]
        done = _cli(
            "audit", "export", *(a for h in homes for a in ("--home", str(h))),
            "--manifests", str(fed.auth / "manifests"), "--out", str(bundle),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        verified = _cli("audit", "verify", str(bundle), "--manifest",
                        str(fed.auth / "manifest.json"), "--json")  # fmt: skip
        report = json.loads(verified.stdout)
        assert verified.returncode == 0, report
        origins = [log["origin"] for log in report["logs"]]
        assert origins.count(f"fedscreen.node/{REKEYED}") == 2
        coordinator = next(log for log in report["logs"] if log["member_id"] == "coordinator")
        assert coordinator["quarantines"] == 0
