"""Every benchmark and tool script in ``scripts/`` still imports (the modules it uses moved).

Each script is loaded in its own interpreter as a module, not run: its top level
(imports, constants, argument parser) executes, its main does not. mypy checks
``src/`` only, so this is what catches a script left pointing at an old module.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from securefed import exact_count

from fedscreen.node.home import load_config

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
#: runs in a separate virtual environment with SmartNoise SQL (see the script)
OWN_ENVIRONMENT = {"smartnoise_peer.py"}
PATHS = sorted(p for p in SCRIPTS.glob("*.py") if p.name not in OWN_ENVIRONMENT)


def test_the_scripts_are_found() -> None:
    assert len(PATHS) >= 6


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_script_loads(path: Path) -> None:
    loaded = subprocess.run(
        [sys.executable, "-c", "import runpy, sys; runpy.run_path(sys.argv[1], run_name='load')",
         str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr[-2000:]


def test_bench_secure_runs_small(tmp_path: Path) -> None:
    """bench_secure.py end to end at N = 3 (a real coordinator, aggregator and nodes), few
    trials: the small-N figures come through the real node and aggregator code, every
    mechanism is measured against the nodes' exact total, and the release states the
    intervals the releases state (two draws, exactly: 1.35 times one's at ε = 0.15; three: 1.65)."""
    work, out = tmp_path / "work", tmp_path / "bench.json"
    ran = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_secure.py"), "--nodes", "3", "--trials", "60",
         "--queries", "2", "--students", "60", "--processes", "1", "--work", str(work),
         "--json", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "at every N:" in ran.stdout
    summary = json.loads(out.read_text())
    rows = {r["mechanism"]: r for r in summary["accuracy"]}
    assert sorted(rows) == ["a", "b", "c"]
    assert rows["a"]["drawn_by"] == rows["b"]["drawn_by"] == "pipeline"
    nodes = ("bench-000", "bench-001", "bench-002")
    exact = sum(exact_count(load_config(work / "nodes" / n), "phq9_item9 = 1") for n in nodes)
    assert {r["exact"] for r in rows.values()} == {exact}
    assert round(rows["b"]["stated_ratio"], 2) == 1.35
    assert round(rows["a"]["stated_ratio"], 2) == 1.65
    assert all(r["coverage"] >= 0.8 for r in rows.values())
    (latency,) = summary["latency"]
    assert latency["nodes"] == 3
    assert latency["plain_p50_ms"] > 0
    assert latency["secure_p50_ms"] > 0
    assert summary["latency_met"] is None  # N = 167 not measured
