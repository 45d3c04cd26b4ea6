"""Every finding of ``scripts/fuzz.py`` stays a regression test.

The long fuzzer writes each input that crashed or hung a parser to
``tests/data/fuzz/<target>/``; here each is replayed through the same target (defined
once, in the script), which must now return or refuse. The script itself is run for a
moment with its fallback engine, so it keeps working without atheris.
"""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "fuzz.py"
FINDINGS = ROOT / "tests" / "data" / "fuzz"
FUZZ: dict[str, Any] = runpy.run_path(str(SCRIPT), run_name="load")
TARGETS: dict[str, Any] = FUZZ["TARGETS"]
STORED = sorted(p for p in FINDINGS.glob("*/*") if p.is_file())


def test_findings_are_filed_under_a_known_target() -> None:
    assert {p.parent.name for p in STORED} <= set(TARGETS)


@pytest.mark.parametrize("path", STORED, ids=lambda p: f"{p.parent.name}/{p.name[:16]}")
@pytest.mark.timeout(30)
def test_a_stored_finding_is_served_or_refused(path: Path) -> None:
    FUZZ["replay"](path.parent.name, path)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_each_target_serves_its_seeds(name: str) -> None:
    target, seeds = TARGETS[name]
    for seed in seeds:
        target(seed)


def test_the_fallback_engine_runs(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--target", "note", "--seconds", "1",
         "--engine", "hypothesis", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no finding" in done.stdout
    assert not list(tmp_path.iterdir())
