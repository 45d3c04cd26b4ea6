"""Ctrl-C during `fedscreen demo` stops every process it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

#: bound on each wait (s)
WAIT_S = 60.0


def _processes_under(work: Path) -> list[int]:
    """Pids of live processes whose command line names ``work`` (the demo's servers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            state = (entry / "stat").read_text().split()[2]
        except OSError:
            continue  # it ended while we looked
        if str(work).encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def test_ctrl_c_stops_the_coordinator_the_aggregator_and_every_node(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    demo = subprocess.Popen(
        [sys.executable, "-m", "fedscreen.cli.main", "demo", "--dir", str(work),
         "--students", "2000"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # line by line through the pipe, so the test sees each step as it happens
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert demo.stdout is not None
        deadline = time.monotonic() + WAIT_S
        seen = []
        # wait until the federation is up: the coordinator, the second aggregator and three
        # nodes are running
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            seen.append(line)
            if "nodes connected" in line or not line:
                break
        assert "nodes connected" in seen[-1], "".join(seen)
        servers = [p for p in _processes_under(work) if p != demo.pid]
        # coordinator + aggregator + 4 county nodes + a school's node (the university's
        # node is offline: it runs no server, its queries go by file)
        assert len(servers) == 7, servers
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=WAIT_S)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(timeout=WAIT_S)
    assert demo.returncode == 130, rest
    assert "interrupted" in rest
    # every server it started is gone (bounded: SIGTERM, then the demo kills stragglers)
    deadline = time.monotonic() + WAIT_S
    while _processes_under(work) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_under(work) == []
