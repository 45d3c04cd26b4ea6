"""A member re-keyed in place (``pki issue --replace``, same id, same home), with real processes.

The federation of ``test_federation.py``. A node re-keyed in place runs again: its
saved checkpoint and spending mirror, and its database's checkpoints, signed under
the key it held in an installed manifest version, are carried over, then replaced
under the new key. A coordinator re-keyed in place is worked with again, and the
nodes, whose held checkpoint of its log was signed under its former key, still
catch it when its database is put back to a backup.
"""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

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

from fedscreen.node.rollback import CHECKPOINT_FILE
from fedscreen.rpc.client import Submitted
from fedscreen.tlog.checkpoint import Checkpoint, member_origin, parse_and_verify_note
from fedscreen.trust.identity import load_identity

REKEYED = NODES[0]
_KEY_FILES = ("signing.key", "tls.key", "identity.json", "request.json", "tls.pem")


def _ask(fed: Federation, threshold: int) -> Submitted:
    _, envelope = _query(fed, f"SELECT COUNT(*) FROM screenings WHERE phq9_total >= {threshold}")

    async def scenario() -> Submitted:
        return await _submit(fed, envelope)

    return run(scenario)


def _rekey_in_place(fed: Federation, home: Path, *, member_id: str, role: str) -> bytes:
    """The operator's steps: new keys in the same home, ``pki issue --replace``; the
    new manifest installed in every home. Returns the new public key."""
    old = load_identity(home).signing_key().public_key
    for name in _KEY_FILES:
        (home / name).unlink()
    init = _cli("identity", "init", "--home", str(home), "--id", member_id, "--role", role,
                "--name", "re-keyed")  # fmt: skip
    assert init.returncode == 0, init.stderr
    issued = _cli("pki", "issue", "--dir", str(fed.auth), "--home", str(home), "--replace")
    assert issued.returncode == 0, issued.stderr
    for other in (fed.coordinator_home, *(fed.node_home(n) for n in NODES)):
        done = _cli("identity", "update-manifest", "--home", str(other),
                    "--manifest", str(fed.auth / "manifest.json"))  # fmt: skip
        assert done.returncode == 0, done.stderr
    new = load_identity(home).signing_key().public_key
    assert new != old
    return new


def _saved(home: Path, node_id: str, key: bytes) -> Checkpoint:
    note = (home / CHECKPOINT_FILE).read_text(encoding="utf-8")
    return parse_and_verify_note(note, verifiers={member_origin("node", node_id): key})


def test_a_node_rekeyed_in_place_runs_on_its_history(tmp_path: Path) -> None:
    with running_federation(tmp_path) as fed:
        assert REKEYED in _ask(fed, 11).answers
        home = fed.node_home(REKEYED)
        before = _saved(home, REKEYED, load_identity(home).signing_key().public_key).size
        fed.kill_node(REKEYED)
        new = _rekey_in_place(fed, home, member_id=REKEYED, role="node")
        assert REKEYED in _ask(fed, 12).missing  # the coordinator reads the new manifest
        fed.start_node(REKEYED)  # refused before the fix: its files and database did not verify
        assert REKEYED in _ask(fed, 13).answers
        # carried over: the file moved on from the old size, now under the new key
        assert _saved(home, REKEYED, new).size > before


def test_a_coordinator_rekeyed_in_place_is_still_held_to_its_log(tmp_path: Path) -> None:
    with running_federation(tmp_path) as fed:
        assert fed.coordinator is not None
        assert sorted(_ask(fed, 11).answers) == sorted(NODES)
        database = fed.coordinator_home / "coordinator.db"
        backup = tmp_path / "coordinator-backup.db"
        src, dst = sqlite3.connect(database), sqlite3.connect(backup)
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        assert sorted(_ask(fed, 12).answers) == sorted(NODES)
        fed.coordinator.send_signal(signal.SIGTERM)
        fed.coordinator.wait(timeout=READY_TIMEOUT_S)
        _rekey_in_place(fed, fed.coordinator_home, member_id=COORDINATOR, role="coordinator")
        sessions = {n: fed.session_of(n) for n in NODES}
        fed.start_coordinator(listen=fed.address)
        wait_until("every node is welcomed by the re-keyed coordinator",
                   lambda: all(fed.session_of(n) > sessions[n] for n in NODES))  # fmt: skip
        assert sorted(_ask(fed, 13).answers) == sorted(NODES)
        for node_id in NODES:
            assert "NOT WORKING WITH COORDINATOR" not in (fed.root / f"{node_id}.log").read_text(
                encoding="utf-8"
            )
        # put back behind what the nodes saw (under either key): every node refuses it
        fed.coordinator.send_signal(signal.SIGTERM)
        fed.coordinator.wait(timeout=READY_TIMEOUT_S)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
        src, dst = sqlite3.connect(backup), sqlite3.connect(database)
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        fed.start_coordinator(listen=fed.address)
        logs = {n: fed.root / f"{n}.log" for n in NODES}
        wait_until("every node refuses the rolled-back coordinator",
                   lambda: all("NOT WORKING WITH COORDINATOR" in p.read_text(encoding="utf-8")
                               for p in logs.values()))  # fmt: skip
        assert _ask(fed, 30).answers == {}
