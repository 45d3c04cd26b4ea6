"""``fedscreen node serve``: one server per home (a second one exits 1 before dialing).

The lock is held by a real second process; the refused server must not touch the
home's saved files (it exits before the checkpoint check and before dialing).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedscreen.cli.main import main
from fedscreen.cli.nodeserve import SERVE_LOCK_FILE, serve_lock
from fedscreen.node.home import NodeConfig
from fedscreen.node.rollback import CHECKPOINT_FILE

_HOLDER = """
import sys
from pathlib import Path
from fedscreen.cli.nodeserve import serve_lock
with serve_lock(Path(sys.argv[1])) as locked:
    print("locked" if locked else "busy", flush=True)
    sys.stdin.read()  # hold it until the test closes our stdin
"""


def _holder(home: Path) -> subprocess.Popen[str]:
    """A real process holding the home's serve lock (it says so on its first line)."""
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(home)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "locked"
    return process


def _release(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    assert process.stdout is not None
    process.stdin.close()
    assert process.wait(timeout=30) == 0
    process.stdout.close()


@pytest.mark.timeout(60)  # without the lock it would redial port 1 until stopped
def test_a_second_serve_on_one_home_exits_1_untouched(
    node_home: NodeConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    holder = _holder(node_home.home)
    try:
        before = sorted(p.name for p in node_home.home.iterdir())
        # port 1: were the lock not checked first, it would dial (and redial) forever
        code = main(
            ["node", "serve", "--home", str(node_home.home), "--coordinator", "127.0.0.1:1"]
        )
        assert code == 1
        err = capsys.readouterr().err
        assert "already running" in err
        assert "Traceback" not in err
        assert sorted(p.name for p in node_home.home.iterdir()) == before
        assert not (node_home.home / CHECKPOINT_FILE).exists()
    finally:
        _release(holder)


def test_the_lock_is_free_again_once_its_holder_ends(node_home: NodeConfig) -> None:
    _release(_holder(node_home.home))
    with serve_lock(node_home.home) as locked:
        assert locked
        # and held now: a second taker in this process is refused too (flock per open file)
        with serve_lock(node_home.home) as again:
            assert not again
    assert (node_home.home / SERVE_LOCK_FILE).is_file()


def test_a_killed_holder_leaves_no_stale_lock(node_home: NodeConfig) -> None:
    holder = _holder(node_home.home)
    holder.kill()
    holder.wait(timeout=30)
    for pipe in (holder.stdin, holder.stdout):
        assert pipe is not None
        pipe.close()
    with serve_lock(node_home.home) as locked:
        assert locked
