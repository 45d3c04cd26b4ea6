"""A real kill -9 in the middle of a large ingest leaves the database all-or-nothing;
a killed parsing worker fails the ingest instead of hanging it.

The ingest runs in a process of its own with ingest's test-only stage hook set (see
``LAUNCHER``), so each test knows whether its kill landed before or after the commit.
"""

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
POLL_S = 0.01
MAX_WAIT_S = 120
#: orphaned workers check on their parent every second
ORPHAN_EXIT_S = 15
#: a dead worker fails the ingest within seconds (the parent polls every second)
WORKER_DEATH_S = 20


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


#: runs ``fedscreen node ingest`` with ingest's test-only stage hook set: each stage
#: ("inserted", "committing", "committed") is appended to a marker file as it is reached,
#: and at the stage to pause at the ingest waits until the "go" file exists
LAUNCHER = """
import sys, time
from pathlib import Path
from fedscreen.node import ingest

marker, pause_at, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])

def hook(stage):
    with marker.open("a") as out:
        out.write(stage + "\\n")
    if stage == pause_at:
        while not go.exists():
            time.sleep(0.01)

ingest.UNSAFE_TEST_STAGE_HOOK = hook
from fedscreen.cli.main import main
sys.exit(main(sys.argv[4:]))
"""


def _start_ingest(
    config: NodeConfig,
    path: Path,
    *,
    marker: Path | None = None,
    pause_at: str = "-",
    capture: bool = False,
) -> subprocess.Popen[bytes]:
    if marker is not None:
        hooked = ["-c", LAUNCHER, str(marker), pause_at, str(marker.with_suffix(".go"))]
    else:
        hooked = ["-m", "fedscreen.cli.main"]
    return subprocess.Popen(
        [sys.executable, *hooked, "node", "ingest", "--home", str(config.home), str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE if capture else subprocess.DEVNULL,
    )


def _stages(marker: Path) -> list[str]:
    return marker.read_text().split() if marker.exists() else []


def _wait_for(marker: Path, stage: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + MAX_WAIT_S
    while stage not in _stages(marker):
        assert proc.poll() is None, "the ingest ended before reaching " + stage
        assert time.monotonic() < deadline
        time.sleep(POLL_S)


def _gone(pids: list[int]) -> bool:
    """Wait (a while) until none of ``pids`` is alive."""
    deadline = time.monotonic() + ORPHAN_EXIT_S
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(POLL_S)
    return not [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def _workers(pid: int) -> list[int]:
    """The parsing workers among a process's children (not multiprocessing's tracker)."""
    return [
        child
        for child in _children(pid)
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


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
    marker = tmp_path / "mid.stages"
    # paused after the first rows went in: the kill lands inside the transaction, always
    proc = _start_ingest(node_home, path, marker=marker, pause_at="inserted")
    _wait_for(marker, "inserted", proc)
    workers = _workers(proc.pid)
    assert workers, "a file this large is parsed by worker processes"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert "committing" not in _stages(marker)
    assert _check(node_home) == 0
    # orphaned parsing workers notice and exit instead of lingering
    assert _gone(workers)

    # the same file loads completely afterwards, and a kill after the commit keeps it
    marker = tmp_path / "after.stages"
    proc = _start_ingest(node_home, path, marker=marker, pause_at="committed")
    _wait_for(marker, "committed", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert _check(node_home) == ROWS


@pytest.mark.slow
def test_kill_9_at_random_moments(node_home: NodeConfig, tmp_path: Path) -> None:
    """Wherever a kill lands, the stages reached say which outcome is allowed."""
    path = write_csv(tmp_path / "big.csv", (screening_row(n) for n in range(1, ROWS + 1)))
    loaded = False
    for delay in (0.05, 0.3, 0.8, 1.5, 3.0):
        marker = tmp_path / f"{delay}.stages"
        proc = _start_ingest(node_home, path, marker=marker)
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=MAX_WAIT_S)
        stages = _stages(marker)
        rows = _check(node_home)
        if loaded or "committed" in stages:
            assert rows == ROWS
        elif "committing" not in stages:
            assert rows == 0
        # killed between "committing" and "committed": either outcome is all-or-nothing
        loaded = rows == ROWS


@pytest.mark.slow
def test_killed_worker_fails_the_ingest_and_frees_the_database(
    node_home: NodeConfig, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "big.csv", (screening_row(n) for n in range(1, ROWS + 1)))
    marker = tmp_path / "worker.stages"
    proc = _start_ingest(node_home, path, marker=marker, pause_at="inserted", capture=True)
    _wait_for(marker, "inserted", proc)
    workers = _workers(proc.pid)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    marker.with_suffix(".go").touch()
    try:
        _, err = proc.communicate(timeout=WORKER_DEATH_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert b"a parsing worker was killed by signal 9" in err
    assert b"Traceback" not in err
    assert _check(node_home) == 0
    assert _gone(workers)
    assert not _children(proc.pid)
    # the write lock is free
    conn = sqlite3.connect(node_home.database, timeout=0)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    finally:
        conn.close()
