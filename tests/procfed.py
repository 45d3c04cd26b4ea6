"""Real member processes for integration tests: ``fedscreen … serve`` started with a ready
file, waited for (bounded), stopped with SIGTERM (then killed); the CLI run as a process;
a node's own tables read directly (only a test looks at a node's database)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedscreen.node.home import NodeConfig

SRC = Path(__file__).resolve().parents[1] / "src"
CLI = [sys.executable, "-m", "fedscreen.cli.main"]
#: bound on a process getting ready, and on one CLI run (s)
READY_TIMEOUT_S = 30.0
PROCESS_TIMEOUT_S = 60.0


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC)}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``fedscreen ARGS`` as a process (bounded)."""
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env=env(), timeout=PROCESS_TIMEOUT_S
    )


@dataclass
class Processes:
    """Member processes of one federation, their logs and ready files under ``root``."""

    root: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, argv: list[str]) -> dict[str, Any]:
        """Start ``argv --ready-file …``; return the ready file's JSON once written."""
        log, ready = self.root / f"{name}.log", self.root / f"{name}.ready"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [*argv, "--ready-file", str(ready)], stdout=out, stderr=subprocess.STDOUT,
                env=env(),
            )  # fmt: skip
        self.procs[name] = proc
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if ready.is_file() and ready.read_text(encoding="utf-8").strip():
                return dict(json.loads(ready.read_text(encoding="utf-8")))
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited {proc.returncode}:\n{log.read_text()}")
            time.sleep(0.05)
        raise AssertionError(f"{name} not ready within {READY_TIMEOUT_S} s:\n{log.read_text()}")

    def coordinator(self, home: Path) -> str:
        """Start ``coordinator serve`` on a free loopback port; returns its address."""
        listening = self.start(
            "coordinator",
            [*CLI, "coordinator", "serve", "--home", str(home), "--listen", "127.0.0.1:0"],
        )
        return str(listening["address"])

    def node(self, config: NodeConfig, address: str) -> None:
        """Start ``node serve`` for ``config``, dialling ``address``."""
        self.start(
            config.node_id,
            [*CLI, "node", "serve", "--home", str(config.home), "--coordinator", address],
        )

    def stop_all(self) -> None:
        """SIGTERM every process, then kill what is still there."""
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def node_rows(config: NodeConfig, sql: str) -> list[Any]:
    conn = sqlite3.connect(config.database)
    try:
        return list(conn.execute(sql).fetchall())
    finally:
        conn.close()


def charges(config: NodeConfig) -> int:
    """How many charges the node's ledger holds."""
    return int(node_rows(config, "SELECT COUNT(*) FROM ledger_charge")[0][0])


def refusals(config: NodeConfig) -> list[str]:
    """Every refusal reason the node recorded."""
    return [str(r[0]) for r in node_rows(config, "SELECT reason FROM query_refusal")]
