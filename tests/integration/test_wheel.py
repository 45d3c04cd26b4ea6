"""A plain ``pip install .`` (not editable) runs the demo with no source tree in sight.

The package is built from a copy of this checkout into a fresh virtual environment,
then ``fedscreen demo`` runs from an empty directory: the provincial catalogue, the
county document, the report plan and the instrument definitions must all come from
the installed package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: pip may fetch the dependencies from the package index (cached after the first run)
INSTALL_TIMEOUT_S = 1_200
DEMO_TIMEOUT_S = 600
#: what is not part of a clean checkout
_UNTRACKED = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis",
    ".mypy_cache", ".ruff_cache", ".pytest_cache", ".benchmarks", "out",
)  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT_S + DEMO_TIMEOUT_S + 120)
def test_pip_install_then_demo(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=_UNTRACKED)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["TMPDIR"] = str(tmp_path)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         str(source)],
        env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-4000:]
    # the source copy goes: nothing may be read from a checkout any more
    shutil.rmtree(source)
    empty = tmp_path / "empty"
    empty.mkdir()
    where = subprocess.run(
        [str(python), "-c", "import fedscreen; print(fedscreen.__file__)"],
        cwd=empty, env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    installed = Path(where.stdout.strip())
    assert installed.is_relative_to(venv), installed
    # every shipped document is there, exactly as the repository's editable examples
    shipped = installed.parent / "policy" / "catalogue"
    examples = sorted(p.relative_to(ROOT / "policies") for p in (ROOT / "policies").rglob("*.toml"))
    assert len(examples) >= 3
    for name in examples:
        assert (shipped / name).read_bytes() == (ROOT / "policies" / name).read_bytes(), name
    definitions = installed.parent / "screening" / "instruments" / "definitions"
    assert len(list(definitions.glob("*.toml"))) >= 4
    demo = subprocess.run(
        [str(venv / "bin" / "fedscreen"), "demo", "--dir", "federation"],
        cwd=empty, env=env, capture_output=True, text=True, timeout=DEMO_TIMEOUT_S,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    # the annual plan's 17 measured tables, the 6 queries no table serves and the 5
    # secure queries
    assert "34 statistics recomputed from its 28 signed releases" in demo.stdout
    assert (empty / "federation" / "report" / "report.html").is_file()
