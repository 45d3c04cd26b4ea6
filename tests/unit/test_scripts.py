"""Every benchmark and tool script in ``scripts/`` still imports (the modules it uses moved).

Each script is loaded in its own interpreter as a module, not run: its top level
(imports, constants, argument parser) executes, its main does not. mypy checks
``src/`` only, so this is what catches a script left pointing at an old module.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
