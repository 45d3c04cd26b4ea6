"""A node restored from a backup refuses to run until ``fedscreen node recover`` (issue 11).

The federation of ``test_federation.py`` (its builder and helpers, reused): a real
coordinator and three real ``fedscreen node serve`` processes. One node answers
locally and for the federation, is stopped, its database files copied (an
operator's backup), answers more, is stopped again and the copy put back. Then
``node query`` and ``node serve`` refuse, ``node recover`` logs the rollback, the
budget is not given back, and both run again.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from logentries import verified_entries
from test_federation import (
    ANALYST,
    NODES,
    YEAR,
    Federation,
    _cli,
    _query,
    _submit,
    run,
    running_federation,
)

from fedscreen.node import ledger
from fedscreen.node.home import load_config
from fedscreen.node.rollback import CHECKPOINT_FILE
from fedscreen.rpc.client import Submitted

NODE = NODES[0]
#: SQLite's files for one database: the WAL holds commits not yet checkpointed
DB_FILES = ("node.db", "node.db-wal")


def _sql(threshold: int) -> str:
    return (
        "SELECT sex, COUNT(*) FROM screenings "
        f"WHERE academic_year = '{YEAR}' AND phq9_total >= {threshold} GROUP BY sex"
    )


def _node_query(fed: Federation, threshold: int) -> subprocess.CompletedProcess[str]:
    return _cli(
        "node", "query", "--home", str(fed.node_home(NODE)), "--analyst", ANALYST,
        "--epsilon", "0.1", _sql(threshold),
    )  # fmt: skip


def _copy_db(source: Path, target: Path) -> None:
    """Copy a stopped node's database files (an operator's backup or restore)."""
    target.mkdir(exist_ok=True)
    for name in (*DB_FILES, "node.db-shm"):
        (target / name).unlink(missing_ok=True)
        if (source / name).exists() and name != "node.db-shm":
            shutil.copy2(source / name, target / name)


def _spent(fed: Federation) -> dict[tuple[str, str], int]:
    conn = fed.db(NODE)
    try:
        return {(y, a): m for y, a, m in ledger.budget_table(conn)}
    finally:
        conn.close()


def _rollback_entries(bundle: Path, fed: Federation) -> list[dict[str, object]]:
    key = load_config(fed.node_home(NODE)).signing_key()
    doc = json.loads(bundle.read_text(encoding="utf-8"))
    (log,) = [g for g in doc["logs"] if g["member_id"] == NODE]
    raws = [base64.b64decode(raw) for raw in log["entries"]]
    return verified_entries(raws, key.public_key, kind="rollback")


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with running_federation(tmp_path_factory.mktemp("rollback")) as federation:
        yield federation


@dataclass(frozen=True)
class Scenario:
    """What the restore scenario saw, up to a successful ``node recover``."""

    refused: subprocess.CompletedProcess[str]
    serve: subprocess.CompletedProcess[str]
    status: str
    recover: str
    saved_note: str
    spent_before_restore: dict[tuple[str, str], int]


@pytest.fixture(scope="module")
def recovered(fed: Federation) -> Scenario:
    """Run the restore scenario up to a successful ``node recover``; what it saw."""
    home = fed.node_home(NODE)
    first = _node_query(fed, 10)
    assert first.returncode == 0, first.stderr
    fed.kill_node(NODE)
    _copy_db(home, fed.root / "backup")
    spent_at_backup = _spent(fed)

    # after the backup: a federated answer and a local one, both charged
    fed.start_node(NODE)
    _, envelope = _query(fed)

    async def federated() -> Submitted:
        return await _submit(fed, envelope)

    assert NODE not in run(federated).missing
    second = _node_query(fed, 15)
    assert second.returncode == 0, second.stderr
    fed.kill_node(NODE)
    spent_before_restore = _spent(fed)
    saved_note = (home / CHECKPOINT_FILE).read_text(encoding="utf-8")
    assert spent_before_restore != spent_at_backup

    _copy_db(fed.root / "backup", home)
    assert _spent(fed) == spent_at_backup  # the restore forgot the ε spent since
    refused = _node_query(fed, 12)
    assert refused.returncode == 1, refused.stdout
    serve = _cli("node", "serve", "--home", str(home), "--coordinator", fed.address)
    status = _cli("node", "status", "--home", str(home))
    done = _cli("node", "recover", "--home", str(home), "--reason", "restored from backup #7")
    assert done.returncode == 0, done.stderr
    return Scenario(refused, serve, status.stdout, done.stdout, saved_note, spent_before_restore)


def test_query_and_serve_refuse_a_restored_database(recovered: Scenario) -> None:
    err = recovered.refused.stderr
    # both sizes are named: the database's and the saved checkpoint's
    assert re.search(r"its log has \d+ entr(y|ies), the saved checkpoint \d+\)", err), err
    assert "fedscreen node recover --home HOME --reason TEXT" in err
    assert "Traceback" not in err
    assert recovered.serve.returncode == 1
    assert "behind its saved checkpoint" in recovered.serve.stderr
    assert "Traceback" not in recovered.serve.stderr
    assert "REFUSING TO RUN" in recovered.status


def test_recover_logs_the_rollback_and_gives_no_budget_back(
    fed: Federation, recovered: Scenario
) -> None:
    assert "charged again (never given back)" in recovered.recover
    assert _spent(fed) == recovered.spent_before_restore
    bundle = fed.root / "node.bundle"
    exported = _cli("audit", "export", "--home", str(fed.node_home(NODE)), "--out", str(bundle))
    assert exported.returncode == 0, exported.stderr
    (entry,) = _rollback_entries(bundle, fed)
    assert entry["from_checkpoint"] == recovered.saved_note
    assert entry["reason"] == "restored from backup #7"
    assert entry["restored"] == {YEAR: {ANALYST: 0.2}}
    status = _cli("node", "status", "--home", str(fed.node_home(NODE)))
    assert "recovered " in status.stdout
    assert "restored from backup #7" in status.stdout


def test_after_recovery_query_and_serve_run_again(fed: Federation, recovered: Scenario) -> None:
    done = _node_query(fed, 12)
    assert done.returncode == 0, done.stderr
    assert "charged ε=0.1" in done.stdout
    fed.start_node(NODE)  # waits until the coordinator welcomed it


def test_the_node_log_with_its_rollback_entry_verifies(
    fed: Federation, recovered: Scenario
) -> None:
    bundle = fed.root / "verify.bundle"
    exported = _cli("audit", "export", "--home", str(fed.node_home(NODE)), "--out", str(bundle))
    assert exported.returncode == 0, exported.stderr
    manifest = str(fed.auth / "manifest.json")
    done = _cli("audit", "verify", str(bundle), "--manifest", manifest)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "1 database rollback(s) recorded by node recover" in done.stdout
