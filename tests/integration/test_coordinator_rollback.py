"""A coordinator database put back to a backup newer than the nodes' last Welcome
(finding T3 of issue 11's attack round).

Each query carries the coordinator's newest checkpoint and a consistency proof from
the one the node's session last got, so the nodes follow the coordinator's log
between Welcomes: a backup taken after the last Welcome, restored after more
queries, is caught at the next Welcome. The same federation as
``test_federation.py`` (its builder and helpers, and ``test_rollback_online``'s).
"""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

from test_federation import NODES, READY_TIMEOUT_S, running_federation, wait_until
from test_rollback_online import _ask, _copy_database

from fedscreen.tlog.log import TransparencyLog


def _log_size(home: Path) -> int:
    conn = sqlite3.connect(home / "coordinator.db")
    try:
        return TransparencyLog(conn, name="coordinator").size()
    finally:
        conn.close()


def test_a_coordinator_restored_from_a_backup_newer_than_the_welcome_is_refused(
    tmp_path: Path,
) -> None:
    with running_federation(tmp_path) as fed:
        assert fed.coordinator is not None
        assert _ask(fed, "SELECT COUNT(*) FROM screenings WHERE phq9_total >= 11")["missing"] == []
        # backup after the Welcomes (no restart in between): they do not cover what follows
        database = fed.coordinator_home / "coordinator.db"
        backup = tmp_path / "coordinator-backup.db"
        _copy_database(database, backup)
        backed_up = _log_size(fed.coordinator_home)
        for threshold in (12, 13):
            sql = f"SELECT COUNT(*) FROM screenings WHERE phq9_total >= {threshold}"
            assert _ask(fed, sql)["missing"] == []
        assert _log_size(fed.coordinator_home) > backed_up
        fed.coordinator.send_signal(signal.SIGTERM)
        fed.coordinator.wait(timeout=READY_TIMEOUT_S)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
        _copy_database(backup, database)
        fed.start_coordinator(listen=fed.address)
        logs = {n: fed.root / f"{n}.log" for n in NODES}
        wait_until("every node refuses the rolled-back coordinator",
               lambda: all("NOT WORKING WITH COORDINATOR" in p.read_text(encoding="utf-8")
                           for p in logs.values()))  # fmt: skip
        body = _ask(fed, "SELECT COUNT(*) FROM screenings WHERE phq9_total >= 14")
        assert body["answered"] == []
