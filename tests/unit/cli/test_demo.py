"""The README's main job: `fedscreen demo` runs end to end on its embedded defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedscreen.cli.main import main
from fedscreen.node import store
from fedscreen.node.home import load_config


def test_demo_loads_a_county_and_answers_with_privacy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["demo", "--single-node", "--dir", str(tmp_path / "demo"), "--students", "3000"]) == 0
    )
    out = capsys.readouterr().out
    assert "0 rejected" in out
    assert "differentially private answers" in out
    assert "rate over screenings 2024-2025; mechanism discrete_laplace ratio" in out
    config = load_config(tmp_path / "demo" / "node")
    conn = store.connect(config.database)
    try:
        loaded = conn.execute("SELECT COUNT(*) FROM screening").fetchone()[0]
        charged = conn.execute("SELECT SUM(epsilon_micro) FROM ledger_charge").fetchone()[0]
    finally:
        conn.close()
    assert loaded == 3000
    assert charged == 2 * 300_000  # two private queries at ε = 0.3; the public one is free


def test_demo_runs_a_whole_federation_and_audits_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default demo: real coordinator and node processes on 127.0.0.1, mutual TLS."""
    assert main(["demo", "--dir", str(tmp_path / "fed"), "--students", "2000"]) == 0
    out = capsys.readouterr().out
    assert out.count("answered: 3 of 3 nodes") == 2
    assert "Province (combined)" in out
    # the auditor verified the coordinator's log and each node's: 2 releases, 6 answers
    assert "fedscreen.coordinator/coordinator: 10 entries" in out
    assert "2 releases — valid" in out
    assert out.count(" — valid") == 4
