"""A real kill -9 in the middle of a large ingest leaves the database all-or-nothing."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from exportrows import screening_row, write_csv

from fedscreen.node.home import NodeConfig

ROWS = 60_000
#: the writer must have put this much into the WAL before we kill it: mid-transaction
WAL_BYTES_BEFORE_KILL = 4 << 20
POLL_S = 0.01
MAX_WAIT_S = 120
#: orphaned workers check on their parent every second
ORPHAN_EXIT_S = 15


def _children(pid: int) -> list[int]:
    """Ids of the live processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _start_ingest(config: NodeConfig, path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedscreen.cli.main",
            "node",
            "ingest",
            "--home",
            str(config.home),
            str(path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _check(config: NodeConfig) -> int:
    conn = sqlite3.connect(config.database)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = int(conn.execute("SELECT COUNT(*) FROM screening").fetchone()[0])
        batches = int(conn.execute("SELECT COUNT(*) FROM ingest_batch").fetchone()[0])
    finally:
        conn.close()
    assert (rows, batches) in ((0, 0), (ROWS, 1))
    return rows


@pytest.mark.slow
def test_kill_9_during_ingest_leaves_all_or_nothing(node_home: NodeConfig, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "big.csv", (screening_row(n) for n in range(1, ROWS + 1)))
    wal = Path(f"{node_home.database}-wal")
    proc = _start_ingest(node_home, path)
    deadline = time.monotonic() + MAX_WAIT_S
    while time.monotonic() < deadline and proc.poll() is None:
        if wal.exists() and wal.stat().st_size > WAL_BYTES_BEFORE_KILL:
            break
        time.sleep(POLL_S)
    assert proc.poll() is None, "ingest finished before it could be killed; raise ROWS"
    workers = _children(proc.pid)
    assert workers, "a file this large is parsed by worker processes"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert _check(node_home) == 0
    # orphaned parsing workers notice and exit instead of lingering
    deadline = time.monotonic() + ORPHAN_EXIT_S
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(POLL_S)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]

    # the same file loads completely afterwards, and a kill after the commit keeps it
    proc = _start_ingest(node_home, path)
    assert proc.wait(timeout=MAX_WAIT_S) == 0
    assert _check(node_home) == ROWS


@pytest.mark.slow
def test_kill_9_at_random_moments(node_home: NodeConfig, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "big.csv", (screening_row(n) for n in range(1, ROWS + 1)))
    for delay in (0.05, 0.3, 0.8, 1.5, 3.0):
        proc = _start_ingest(node_home, path)
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=MAX_WAIT_S)
        _check(node_home)
