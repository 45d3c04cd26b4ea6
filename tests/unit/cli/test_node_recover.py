"""``fedscreen node ingest|query|status|budget|recover`` around a restored database, in process.

A real node home (SQLite, signing key, synthetic export); the backup and restore
use SQLite's online backup, as an operator's tools would.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from exportrows import varied_rows, write_csv

from fedscreen.cli.main import main
from fedscreen.node import ledger, store
from fedscreen.node.home import NodeConfig
from fedscreen.node.rollback import CHECKPOINT_FILE, SPENT_FILE
from fedscreen.trust import authority
from fedscreen.trust.identity import issue_here

YEAR = "2024-2025"


def _query(home: Path, grade: str) -> int:
    sql = f"SELECT COUNT(*) FROM screenings WHERE academic_year = '{YEAR}' AND grade = '{grade}'"
    return main(
        ["node", "query", "--home", str(home), "--analyst", "alice", "--epsilon", "0.1", sql]
    )


def _copy(source: Path, target: Path) -> None:
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def _spent(config: NodeConfig) -> list[tuple[str, str, int]]:
    conn = store.connect(config.database)
    try:
        return ledger.budget_table(conn)
    finally:
        conn.close()


@pytest.fixture
def restored(
    node_home: NodeConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> NodeConfig:
    """A node that answered once, was backed up, answered twice more, and was restored."""
    home = node_home.home
    export = write_csv(tmp_path / "a.csv", varied_rows(200))
    assert main(["node", "ingest", "--home", str(home), str(export)]) == 0
    assert _query(home, "P4") == 0
    _copy(node_home.database, tmp_path / "backup.db")
    assert _query(home, "P5") == 0
    assert _query(home, "P6") == 0
    _copy(tmp_path / "backup.db", node_home.database)
    capsys.readouterr()
    return node_home


def test_query_and_ingest_refuse_a_restored_database_and_charge_nothing(
    restored: NodeConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _spent(restored)
    assert _query(restored.home, "J7") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the node's database is behind its saved checkpoint")
    assert "(its log has 1 entry, the saved checkpoint 3)" in err
    assert "fedscreen node recover --home HOME --reason TEXT" in err
    export = write_csv(tmp_path / "b.csv", varied_rows(50, first=9_000))
    assert main(["node", "ingest", "--home", str(restored.home), str(export)]) == 1
    assert "behind its saved checkpoint" in capsys.readouterr().err
    assert _spent(restored) == before
    assert main(["node", "status", "--home", str(restored.home)]) == 0
    assert "REFUSING TO RUN: the node's database is behind" in capsys.readouterr().out


def test_recover_refuses_an_empty_reason_and_changes_nothing(
    restored: NodeConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    note = (restored.home / CHECKPOINT_FILE).read_bytes()
    assert main(["node", "recover", "--home", str(restored.home), "--reason", " "]) == 1
    assert "--reason: say why" in capsys.readouterr().err
    assert (restored.home / CHECKPOINT_FILE).read_bytes() == note
    assert _spent(restored) == [(YEAR, "alice", 100_000)]


def test_recover_charges_the_forgotten_epsilon_and_the_node_runs_again(
    restored: NodeConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    home = str(restored.home)
    assert main(["node", "recover", "--home", home, "--reason", "disk replaced"]) == 0
    out = capsys.readouterr().out
    assert "rollback is logged as entry 1 (saved checkpoint 3 entries, database 1)" in out
    assert "charged again (never given back)" in out
    assert _spent(restored) == [(YEAR, "alice", 300_000)]
    assert _query(restored.home, "J7") == 0
    assert _spent(restored) == [(YEAR, "alice", 400_000)]
    capsys.readouterr()
    assert main(["node", "budget", "--home", home]) == 0
    budget = capsys.readouterr().out
    assert "ε 0.2 spent after its backup is counted above again" in budget
    assert main(["node", "status", "--home", home]) == 0
    status = capsys.readouterr().out
    assert "REFUSING" not in status
    assert "(log 3 -> 1 entries, rollback logged as entry 1; ε charged again 0.2)" in status
    assert "disk replaced" in status


def test_recover_without_spent_json_needs_accept_lost_budget(
    restored: NodeConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    home = str(restored.home)
    (restored.home / SPENT_FILE).unlink()
    before = _spent(restored)
    assert main(["node", "recover", "--home", home, "--reason", "disk restore"]) != 0
    err = capsys.readouterr().err
    assert "spent.json is missing" in err
    assert "--accept-lost-budget" in err
    assert "Traceback" not in err
    assert _spent(restored) == before
    args = ["node", "recover", "--home", home, "--reason", "disk restore", "--accept-lost-budget"]
    assert main(args) == 0
    assert "may no longer be counted" in capsys.readouterr().out
    assert _query(restored.home, "P5") == 0  # it runs again


def test_the_auditor_is_told_of_an_accepted_lost_budget(
    restored: NodeConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding F3: audit verify names the --accept-lost-budget entry, says the ε totals
    are a lower bound from it on, and counts such recoveries apart (text and JSON)."""
    home = str(restored.home)
    auth = tmp_path / "auth"
    authority.init_authority(auth, federation="test")
    issue_here(auth, restored.home)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(authority.manifest_text(auth), encoding="utf-8")
    (restored.home / SPENT_FILE).unlink()
    args = ["node", "recover", "--home", home, "--reason", "disk restore", "--accept-lost-budget"]
    assert main(args) == 0
    assert _query(restored.home, "P6") == 0
    bundle = tmp_path / "audit.json"
    assert main(["audit", "export", "--home", home, "--out", str(bundle)]) == 0
    capsys.readouterr()
    verify = ["audit", "verify", str(bundle), "--manifest", str(manifest)]
    assert main(verify) == 0  # the log is valid; only its sums are incomplete
    out = capsys.readouterr().out
    assert "1 database rollback(s) recorded by node recover, 1 with lost budget accepted" in out
    assert "entry 1 is a node recover --accept-lost-budget" in out
    assert "lower bound from entry 1 on" in out
    assert f"{YEAR}: node spent ε≥0.2" in out  # 0.1 before the backup, 0.1 after recovery
    assert main([*verify, "--json"]) == 0
    (log,) = json.loads(capsys.readouterr().out)["logs"]
    assert (log["rollbacks"], log["lost_budget_recoveries"]) == (1, 1)
    assert log["lost_budget_entries"] == [1]
    assert log["epsilon_lower_bound_from"] == 1


def test_a_recovery_that_charged_everything_again_is_no_lower_bound(
    restored: NodeConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = str(restored.home)
    auth = tmp_path / "auth"
    authority.init_authority(auth, federation="test")
    issue_here(auth, restored.home)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(authority.manifest_text(auth), encoding="utf-8")
    assert main(["node", "recover", "--home", home, "--reason", "disk restore"]) == 0
    bundle = tmp_path / "audit.json"
    assert main(["audit", "export", "--home", home, "--out", str(bundle)]) == 0
    capsys.readouterr()
    verify = ["audit", "verify", str(bundle), "--manifest", str(manifest)]
    assert main(verify) == 0
    out = capsys.readouterr().out
    assert "1 database rollback(s) recorded by node recover, 0 with lost budget accepted" in out
    assert "WARNING" not in out
    assert f"{YEAR}: node spent ε=0.3" in out  # the two forgotten answers charged again
    assert main([*verify, "--json"]) == 0
    (log,) = json.loads(capsys.readouterr().out)["logs"]
    assert (log["lost_budget_recoveries"], log["epsilon_lower_bound_from"]) == (0, None)
