"""rpc.guard's process tuning: the core thread's name for the OS, the settled collector.

The collector is tuned in a fresh interpreter: it is process-wide, and this test
process runs every other test after it.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fedscreen.rpc import guard


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl names threads on Linux")
def test_a_named_thread_shows_under_that_name_and_the_others_keep_theirs() -> None:
    seen: list[str] = []

    def run() -> None:
        guard.name_os_thread("fedscreen-core-and-more")  # cut to 15 bytes, as Linux keeps
        seen.append(Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text())

    before = Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text()
    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=10)
    assert seen == ["fedscreen-core-\n"]
    assert Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text() == before


def test_the_settled_collector_freezes_what_lives_and_collects_later() -> None:
    code = (
        "import gc\n"
        "from fedscreen.rpc import guard\n"
        "alive = [{'n': i} for i in range(1000)]\n"
        "guard.settle_collector()\n"
        "print(gc.get_freeze_count() >= 1000, gc.get_threshold())\n"
        # cyclic garbage made afterwards is still collected
        "class Cycle:\n"
        "    pass\n"
        "a = Cycle(); a.me = a; del a\n"
        "print(gc.collect() >= 1)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split("\n")
    assert out[0] == f"True {guard.SERVER_COLLECTOR_THRESHOLDS}"
    assert out[1] == "True"
