"""The federation's membership changing while it runs (findings T1, T2, T5 of issue 11's
attack round).

The same federation as ``test_federation.py`` (its builder and helpers, reused): a
real coordinator and three real node processes over mutual TLS. A node revoked or
added while a query runs leaves an honest release that the analyst and the auditor
verify; a node re-keyed (revoked, then issued again under the same id with a new
key and a fresh log) answers, not quarantined; a coordinator whose home gets a
manifest revoking itself closes every node stream and takes no query.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
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

from fedscreen.analyst.query import verify_release
from fedscreen.node.home import init_home
from fedscreen.node.ingest import ingest_paths
from fedscreen.rpc.client import Submitted
from fedscreen.rpc.transport import RpcFailed
from fedscreen.trust import authority
from fedscreen.trust.identity import update_manifest

#: the bound of every wait for the federation to notice something (s)
NOTICE_S = 30.0


def _body(submitted: Submitted) -> dict[str, Any]:
    payload = json.loads(submitted.release_envelope)["payload"]
    body: dict[str, Any] = json.loads(base64.b64decode(payload))
    return body


def _audit(fed: Federation, name: str) -> tuple[int, str]:
    bundle = fed.root / name
    done = _cli(
        "audit", "export", "--home", str(fed.coordinator_home),
        "--manifests", str(fed.auth / "manifests"), "--out", str(bundle),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    verify = _cli("audit", "verify", str(bundle), "--manifest", str(fed.auth / "manifest.json"))
    return verify.returncode, verify.stdout + verify.stderr


def _install_at_coordinator(fed: Federation) -> None:
    update_manifest(fed.coordinator_home, authority.manifest_text(fed.auth))


@pytest.mark.parametrize("how", ["revoke", "add"])
def test_a_membership_change_during_a_query_leaves_a_verifiable_release(
    tmp_path: Path, how: str
) -> None:
    """T1: the release names the nodes the query was pushed to, whatever the manifest
    says by the time it is made."""
    with running_federation(tmp_path) as fed:
        slow = NODES[2]
        fed.restart_node(slow, delay_ms=4_000)  # keeps the query open while membership changes
        query, envelope = _query(fed)

        def change() -> None:
            if how == "revoke":
                authority.revoke(fed.auth, NODES[0])
            else:
                init_home(tmp_path / "130108", node_id="130108", name="新县")
                _issue(fed.auth, tmp_path / "130108")
            _install_at_coordinator(fed)

        async def scenario() -> Submitted:
            task = asyncio.create_task(_submit(fed, envelope, deadline_ms=15_000))
            # bounded: the fast nodes have answered well before the slow one
            await asyncio.sleep(1.5)
            await asyncio.get_running_loop().run_in_executor(None, change)
            return await task

        submitted = run(scenario)
        body = _body(submitted)
        # every node asked is targeted, and each answered or is missing (a node revoked
        # meanwhile: its answer no longer verifies under the manifest in force)
        assert body["targeted"] == list(NODES)
        assert sorted(body["answered"] + body["missing"]) == sorted(NODES)
        assert NODES[1] in body["answered"]
        # the analyst verifies with the manifest the query was made under
        verify_release(
            submitted.release_envelope,
            manifest=fed.manifest,
            query=query,
            answers=submitted.answers,
        )
        code, report = _audit(fed, f"{how}.bundle")
        assert code == 0, report


def test_a_re_keyed_node_answers_and_is_not_quarantined(tmp_path: Path) -> None:
    """T5: the coordinator forgets the checkpoints signed by the node's old key."""
    with running_federation(tmp_path) as fed:
        node = NODES[0]
        _, envelope = _query(fed)
        assert node in run(lambda: _submit(fed, envelope)).answers
        fed.kill_node(node)
        authority.revoke(fed.auth, node)
        # a fresh home: new keys, new log, the same county and data
        shutil.move(fed.node_home(node), tmp_path / f"{node}-compromised")
        config = init_home(fed.node_home(node), node_id=node, name="re-keyed")
        _issue(fed.auth, fed.node_home(node))
        ingest_paths(config, [tmp_path / f"export-{node}"])
        _install_at_coordinator(fed)
        fed.start_node(node)
        _, envelope = _query(fed)
        submitted = run(lambda: _submit(fed, envelope))
        body = _body(submitted)
        assert node in body["answered"], body["missing_reasons"]
        assert "quarantine" not in fed.coordinator_log.read_text("utf-8")


def test_a_coordinator_that_finds_itself_revoked_stops(tmp_path: Path) -> None:
    """T2 (coordinator's part): streams closed and logged, Hellos and queries refused."""
    with running_federation(tmp_path) as fed:
        coordinator_id = fed.manifest.coordinator()
        authority.revoke(fed.auth, coordinator_id)
        manifest = fed.auth / "manifest.json"
        args = ["identity", "update-manifest", "--home", str(fed.coordinator_home)]
        refused = _cli(*args, "--manifest", str(manifest))
        assert refused.returncode == 2
        assert "not installed" in refused.stderr
        assert "Traceback" not in refused.stderr
        retired = _cli(*args, "--manifest", str(manifest), "--accept-own-revocation")
        assert retired.returncode == 0, retired.stderr  # the flag says it is meant (F6b)
        assert "not an active member" in retired.stderr
        deadline = time.monotonic() + NOTICE_S
        while "closes every node stream" not in fed.coordinator_log.read_text("utf-8"):
            assert time.monotonic() < deadline, "the coordinator did not notice its revocation"
            time.sleep(0.1)
        _, envelope = _query(fed)
        with pytest.raises(RpcFailed, match="revoked"):
            run(lambda: _submit(fed, envelope))
        # its log, the revocation included, still verifies: nothing was released after it
        code, report = _audit(fed, "revoked-coordinator.bundle")
        assert code == 0, report
