"""A revocation takes effect at once, everywhere, without a restart (issue 11, item 4).

The same federation as ``test_federation.py`` (its builder and helpers, reused): a
real coordinator and three real node processes. The province revokes with the
command line (``pki revoke`` and ``identity update-manifest`` on the coordinator's
home only); the coordinator pushes the new manifest down every node stream, each
running node verifies, installs and logs it, and from then on refuses the revoked
analyst — even when a coordinator that ignores the revocation relays the query —
charging nothing. A revoked node's stream is closed at once and its redial refused.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from logentries import stored_entries, verified_entries
from test_federation import (
    COORDINATOR,
    NODES,
    READY_TIMEOUT_S,
    Federation,
    _cli,
    _query,
    _submit,
    run,
    running_federation,
    wait_until,
)

from fedscreen.rpc.client import Submitted
from fedscreen.rpc.transport import RpcFailed
from fedscreen.trust import authority
from fedscreen.trust.identity import load_identity


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with running_federation(tmp_path_factory.mktemp("revocation")) as federation:
        yield federation


def _version(home: Path) -> int:
    return load_identity(home).manifest().version


def _revoke(fed: Federation, member_id: str) -> int:
    """``pki revoke`` then ``identity update-manifest`` on the coordinator's home only."""
    revoked = _cli("pki", "revoke", "--dir", str(fed.auth), "--id", member_id)
    assert revoked.returncode == 0, revoked.stderr
    manifest = str(fed.auth / "manifest.json")
    updated = _cli(
        "identity", "update-manifest", "--home", str(fed.coordinator_home), "--manifest", manifest
    )
    assert updated.returncode == 0, updated.stderr
    return authority.current_manifest(fed.auth).version


def _logged_manifest_versions(fed: Federation, node_id: str) -> list[int]:
    """The manifest versions the node's own log says it adopted."""
    conn = fed.db(node_id)
    try:
        key = load_identity(fed.node_home(node_id)).signing_key()
        entries = verified_entries(stored_entries(conn, "node"), key.public_key, kind="manifest")
        return [int(entry["version"]) for entry in entries]
    finally:
        conn.close()


def _restart_coordinator(fed: Federation, *, manifest: bytes) -> None:
    """Stop the coordinator, install ``manifest`` in its home as is, start it on the same
    address; returns once every running node has been welcomed again."""
    assert fed.coordinator is not None
    sessions = {n: fed.session_of(n) for n in fed.nodes}
    fed.coordinator.send_signal(signal.SIGTERM)
    fed.coordinator.wait(timeout=READY_TIMEOUT_S)
    (fed.coordinator_home / "manifest.json").write_bytes(manifest)
    fed.start_coordinator(listen=fed.address)
    wait_until(
        "every node is welcomed again",
        lambda: all(fed.session_of(n) > sessions[n] for n in sessions),
    )


def _charges(fed: Federation) -> dict[str, int]:
    return {n: fed.charges(n) for n in NODES}


def test_running_nodes_refuse_a_revoked_analyst_without_a_restart(fed: Federation) -> None:
    _, envelope = _query(fed, "SELECT COUNT(*) FROM screenings WHERE phq9_total >= 5")

    async def first() -> Submitted:
        return await _submit(fed, envelope)

    assert run(first).missing == ()
    pids = {n: fed.nodes[n].pid for n in NODES}
    # signed while the analyst was active: the query itself is fine, only its signer is not
    _, revoked_envelope = _query(fed, "SELECT COUNT(*) FROM screenings WHERE phq9_total >= 7")
    before_file = (fed.coordinator_home / "manifest.json").read_bytes()
    old = _version(fed.coordinator_home)

    version = _revoke(fed, "alice")
    assert version == old + 1
    # pushed down every stream: each running node installs it in its home and logs it
    # (a node installs the file, then logs it on its worker thread: wait for both)
    took = wait_until(
        "every node installs the pushed manifest and logs it",
        lambda: all(
            _version(fed.node_home(n)) == version
            and _logged_manifest_versions(fed, n)[-1] == version
            for n in NODES
        ),
    )
    assert took < 10
    assert {n: fed.nodes[n].pid for n in NODES} == pids  # nobody restarted
    charges, refusals = _charges(fed), {n: fed.refusals(n) for n in NODES}

    async def revoked() -> Submitted:
        return await _submit(fed, revoked_envelope)

    # an honest coordinator refuses the revoked analyst itself
    with pytest.raises(RpcFailed):
        run(revoked)

    # a coordinator that ignores the revocation (restarted on its old manifest) relays the
    # query: every running node refuses it, records the refusal and charges nothing
    new_file = (fed.coordinator_home / "manifest.json").read_bytes()
    _restart_coordinator(fed, manifest=before_file)
    try:
        relayed = run(revoked)
    finally:
        _restart_coordinator(fed, manifest=new_file)
    assert relayed.answers == {}
    assert set(relayed.missing) == set(NODES)
    assert _charges(fed) == charges
    assert {n: fed.refusals(n) for n in NODES} == {n: refusals[n] + 1 for n in NODES}
    # the older manifest pushed meanwhile was not installed anywhere
    assert all(_version(fed.node_home(n)) == version for n in NODES)


def test_a_revoked_node_has_its_stream_closed_at_once(fed: Federation) -> None:
    victim = NODES[2]
    node_log = fed.root / f"{victim}.log"
    _revoke(fed, victim)
    closed = f"node {victim} is revoked or removed in manifest version"
    took = wait_until(
        "the coordinator closes the revoked node's stream",
        lambda: closed in fed.coordinator_log.read_text(encoding="utf-8"),
    )
    assert took < 10
    # its redial is refused: the coordinator no longer lets it in
    wait_until(
        "the revoked node's redial is refused",
        lambda: "UNAUTHENTICATED" in node_log.read_text(encoding="utf-8"),
    )
    assert fed.nodes[victim].poll() is None  # still running, just shut out
    status = _cli(
        "coordinator", "status", "--home", str(fed.auditor.home),
        "--coordinator", fed.address, "--json",
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    listed = {n["node_id"]: n for n in json.loads(status.stdout)["nodes"]}
    assert victim not in listed  # the status shows active members only
    assert all(listed[n]["connected"] for n in NODES[:2])
    assert COORDINATOR not in listed


def test_the_nodes_logs_with_the_versions_they_adopted_verify(fed: Federation) -> None:
    """Each adopted version is logged where the auditor checks entries against it."""
    bundle = fed.root / "nodes.bundle"
    homes = [a for n in NODES for a in ("--home", str(fed.node_home(n)))]
    history = str(fed.auth / "manifests")
    exported = _cli("audit", "export", *homes, "--manifests", history, "--out", str(bundle))
    assert exported.returncode == 0, exported.stderr
    verified = _cli("audit", "verify", str(bundle), "--manifest", str(fed.auth / "manifest.json"))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    for node_id in NODES:
        assert len(_logged_manifest_versions(fed, node_id)) >= 2  # at start, then pushed
