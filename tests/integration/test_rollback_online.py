"""Rollback caught online, at both ends (issue 11, item 5).

The same federation as ``test_federation.py`` (its builder and helpers, reused): a
real coordinator and three real node processes. A node's database is put back to
an older copy (taken while the node was stopped; its operator then runs
``fedscreen node recover``, as the node itself demands): the coordinator, which
holds the node's newer checkpoint, quarantines it at its next answer — missing in
the release with the reason, the evidence in the coordinator's log, shown by
``coordinator status`` — until ``coordinator readmit``, logged, lets it back in.
Then the coordinator's own database goes back: every node refuses to work with it.
"""

from __future__ import annotations

import json
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from logentries import stored_entries, verified_entries
from test_federation import (
    NODES,
    READY_TIMEOUT_S,
    Federation,
    _cli,
    _query,
    _submit,
    _verified,
    run,
    running_federation,
    wait_until,
)

from fedscreen.node.home import load_config
from fedscreen.rpc.client import Submitted
from fedscreen.tlog.checkpoint import member_origin, parse_and_verify_note
from fedscreen.tlog.entries import COORDINATOR_UNSIGNED
from fedscreen.trust.identity import load_identity

VICTIM = NODES[1]


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with running_federation(tmp_path_factory.mktemp("rollback")) as federation:
        yield federation


def _copy_database(source: Path, target: Path) -> None:
    """A consistent copy through SQLite's backup API (the WAL included)."""
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


def _stop(fed: Federation, node_id: str) -> None:
    proc = fed.nodes.pop(node_id)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=READY_TIMEOUT_S)


def _ask(fed: Federation, sql: str) -> dict[str, Any]:
    query, envelope = _query(fed, sql)

    async def scenario() -> Submitted:
        return await _submit(fed, envelope)

    return _verified(fed, query, run(scenario))


def _coordinator_entries(fed: Federation, kind: str) -> list[dict[str, Any]]:
    """The coordinator's log entries of ``kind``, signature-checked."""
    key = load_identity(fed.coordinator_home).signing_key()
    raws = stored_entries(fed.coordinator_home / "coordinator.db", "coordinator")
    return verified_entries(raws, key.public_key, kind=kind, unsigned=COORDINATOR_UNSIGNED)


def _status(fed: Federation) -> tuple[int, dict[str, dict[str, Any]]]:
    done = _cli(
        "coordinator", "status", "--home", str(fed.coordinator_home),
        "--coordinator", fed.address, "--json",
    )  # fmt: skip
    nodes = {n["node_id"]: n for n in json.loads(done.stdout)["nodes"]}
    return done.returncode, nodes


def test_a_node_restored_from_a_backup_is_quarantined_until_readmitted(fed: Federation) -> None:
    database = load_config(fed.node_home(VICTIM)).database
    backup = fed.root / "victim-backup.db"
    assert _ask(fed, "SELECT COUNT(*) FROM screenings WHERE phq9_total >= 3")["missing"] == []
    _stop(fed, VICTIM)
    _copy_database(database, backup)
    fed.start_node(VICTIM)
    # the coordinator learns the node's newer log: one answer per query
    for threshold in (4, 6):
        body = _ask(fed, f"SELECT COUNT(*) FROM screenings WHERE phq9_total >= {threshold}")
        assert body["missing"] == []
    code, nodes = _status(fed)
    assert code == 0
    held = nodes[VICTIM]["checkpoint_size"]
    assert held > 0
    assert not nodes[VICTIM]["quarantined"]

    _stop(fed, VICTIM)
    _copy_database(backup, database)
    # the node refuses to start on its own rolled-back database until its operator says so
    recovered = _cli("node", "recover", "--home", str(fed.node_home(VICTIM)),
                     "--reason", "restored from the nightly backup")  # fmt: skip
    assert recovered.returncode == 0, recovered.stderr
    fed.start_node(VICTIM)

    body = _ask(fed, "SELECT COUNT(*) FROM screenings WHERE phq9_total >= 8")
    assert body["missing"] == [VICTIM]
    reason = body["missing_reasons"][VICTIM]
    assert reason.startswith("quarantined: its log ")
    assert "shrank" in reason or "forked" in reason
    assert body["answered"] == sorted(set(NODES) - {VICTIM})

    # the evidence: both checkpoints, each signed by the node for its own log
    evidence = _coordinator_entries(fed, "quarantine")
    assert [e["node"] for e in evidence] == [VICTIM]
    key = load_identity(fed.node_home(VICTIM)).signing_key().public_key
    verifiers = {member_origin("node", VICTIM): key}
    before = parse_and_verify_note(evidence[0]["held_checkpoint"], verifiers=verifiers)
    after = parse_and_verify_note(evidence[0]["presented_checkpoint"], verifiers=verifiers)
    assert before.size == held
    assert after.size <= before.size
    assert after.root != before.root

    code, nodes = _status(fed)
    assert code == 1  # a quarantined node needs the province's attention
    assert nodes[VICTIM]["quarantined"]
    assert nodes[VICTIM]["connected"]
    assert nodes[VICTIM]["quarantine_reason"] == reason.removeprefix("quarantined: ")
    table = _cli("coordinator", "status", "--home", str(fed.coordinator_home),
                 "--coordinator", fed.address)  # fmt: skip
    assert "QUARANTINED" in table.stdout
    assert "coordinator readmit" in table.stdout

    # its further answers stay unused until readmitted
    body = _ask(fed, "SELECT COUNT(*) FROM screenings WHERE phq9_total >= 9")
    assert body["missing"] == [VICTIM]

    readmitted = _cli("coordinator", "readmit", "--home", str(fed.coordinator_home),
                      "--node", VICTIM, "--reason", "backup restore investigated")  # fmt: skip
    assert readmitted.returncode == 0, readmitted.stderr
    [entry] = _coordinator_entries(fed, "readmit")
    assert entry["node"] == VICTIM
    assert entry["reason"] == "backup restore investigated"
    again = _cli("coordinator", "readmit", "--home", str(fed.coordinator_home),
                 "--node", VICTIM, "--reason", "twice")  # fmt: skip
    assert again.returncode != 0
    assert "not quarantined" in again.stderr
    assert "Traceback" not in again.stderr

    body = _ask(fed, "SELECT COUNT(*) FROM screenings WHERE phq9_total >= 11")
    assert body["missing"] == []
    code, nodes = _status(fed)
    assert code == 0
    assert not nodes[VICTIM]["quarantined"]
    assert nodes[VICTIM]["checkpoint_size"] > 0  # the new baseline
    # and the next answer is checked against it
    assert _ask(fed, "SELECT COUNT(*) FROM screenings WHERE phq9_total >= 12")["missing"] == []

    # an auditor sees both events, and the honest logs verify
    bundle = fed.root / "quarantine.bundle"
    homes = [fed.coordinator_home, *(fed.node_home(n) for n in NODES)]
    exported = _cli("audit", "export", *[a for h in homes for a in ("--home", str(h))],
                    "--out", str(bundle))  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    verified = _cli("audit", "verify", str(bundle), "--manifest", str(fed.auth / "manifest.json"))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "1 node quarantine(s), 1 readmission(s)" in verified.stdout


def test_nodes_refuse_a_coordinator_whose_log_went_back(fed: Federation) -> None:
    assert fed.coordinator is not None
    database = fed.coordinator_home / "coordinator.db"
    backup = fed.root / "coordinator-backup.db"
    _copy_database(database, backup)
    assert _ask(fed, "SELECT COUNT(*) FROM screenings WHERE phq9_total >= 13")["missing"] == []
    # the nodes see the grown log at their next Welcome: restart the coordinator
    sessions = {n: fed.session_of(n) for n in fed.nodes}
    fed.coordinator.send_signal(signal.SIGTERM)
    fed.coordinator.wait(timeout=READY_TIMEOUT_S)
    fed.start_coordinator(listen=fed.address)
    wait_until("every node is welcomed again",
           lambda: all(fed.session_of(n) > sessions[n] for n in sessions))  # fmt: skip

    fed.coordinator.send_signal(signal.SIGTERM)
    fed.coordinator.wait(timeout=READY_TIMEOUT_S)
    _copy_database(backup, database)
    fed.start_coordinator(listen=fed.address)
    logs = {n: fed.root / f"{n}.log" for n in NODES}
    wait_until("every node refuses the rolled-back coordinator",
           lambda: all("NOT WORKING WITH COORDINATOR" in p.read_text(encoding="utf-8")
                       for p in logs.values()))  # fmt: skip
    body = _ask(fed, "SELECT COUNT(*) FROM screenings WHERE phq9_total >= 14")
    assert body["answered"] == []
    status = _cli("node", "status", "--home", str(fed.node_home(NODES[0])))
    assert "REFUSING EVERY QUERY: the coordinator's log went back" in status.stdout, status
    assert all(p.poll() is None for p in fed.nodes.values())  # they keep redialling
