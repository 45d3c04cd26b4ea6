"""A whole federation on this machine: authority, coordinator, county nodes, analyst, auditor.

``fedscreen demo --federation`` builds it in a work directory, starts the
coordinator and every node as real processes on 127.0.0.1 (mutual TLS, the
nodes dialling out), asks federated questions as the analyst, verifies each
release, then exports every log and verifies them as the auditor would, and
stops the processes — also on Ctrl-C or an error.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from fedscreen import pki
from fedscreen.analyst import make_query, verify_release
from fedscreen.audit.bundle import Bundle, LogExport
from fedscreen.audit.verify import verify_bundle
from fedscreen.cli.query import print_release, submit
from fedscreen.coordinator.core import Coordinator, init_coordinator
from fedscreen.errors import ConfigError
from fedscreen.identity import create_identity, issue_here, load_identity, update_manifest
from fedscreen.node import nodelog, store
from fedscreen.node.home import init_home
from fedscreen.node.ingest import ingest_paths
from fedscreen.synth import generate, write_export

#: (county code, name, students, profile): real Hebei counties of different sizes and kinds
COUNTIES: Final = (
    ("130102", "长安区", 6_000, "urban"),
    ("130104", "桥西区", 4_000, "mixed"),
    ("130121", "井陉县", 3_000, "rural"),
)
YEAR: Final = "2024-2025"
ANALYST: Final = "hebei-monitoring-centre"
COORDINATOR: Final = "coordinator"
#: seconds a process may take to be ready (start, TLS handshake, Welcome)
READY_TIMEOUT_S: Final = 60.0
#: seconds a process gets to stop after SIGTERM before it is killed
STOP_TIMEOUT_S: Final = 10.0
QUERIES: Final = (
    "SELECT grade_band, sex, RATE(phq9_total >= 10) FROM screenings "
    f"WHERE academic_year = '{YEAR}' AND phq9_valid = 1 GROUP BY grade_band, sex",
    "SELECT warning_level, COUNT(*) FROM screenings "
    f"WHERE academic_year = '{YEAR}' AND warning_level <> 'none' GROUP BY warning_level",
)
EPSILON: Final = 0.3


@dataclass
class Processes:
    """The federation's running processes; ``stop`` ends them all."""

    running: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        """Start ``fedscreen ARGS`` with output to ``log``."""
        with log.open("ab") as out:
            # our own interpreter and module with arguments we built: no untrusted input
            proc = subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", "fedscreen.cli.main", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.running.append(proc)
        return proc

    def stop(self) -> None:
        """SIGTERM every process, then kill what is still there."""
        for proc in self.running:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.running:
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
        self.running.clear()


def _wait_ready(path: Path, proc: subprocess.Popen[bytes], log: Path) -> dict[str, object]:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if path.is_file():
            return dict(json.loads(path.read_text(encoding="utf-8")))
        if proc.poll() is not None:
            raise ConfigError(f"a federation process stopped; see {log}")
        time.sleep(0.05)
    raise ConfigError(
        f"a federation process was not ready within {READY_TIMEOUT_S:.0f} s; see {log}"
    )


def build(work: Path, *, seed: int, scale: float, say: Callable[[str], None]) -> dict[str, Path]:
    """Create the authority, every member and the nodes' data; returns the homes by role/id."""
    auth = work / "authority"
    pki.init_authority(auth, federation="hebei-demo")
    homes = {
        "coordinator": work / "coordinator",
        "analyst": work / "analyst",
        "auditor": work / "auditor",
    }
    init_coordinator(homes["coordinator"], member_id=COORDINATOR, name="河北省平台")
    issue_here(auth, homes["coordinator"])
    create_identity(homes["analyst"], member_id=ANALYST, role="analyst", name="省心理健康监测中心")
    issue_here(auth, homes["analyst"])
    create_identity(
        homes["auditor"], member_id="data-security-office", role="auditor", name="数据安全办公室"
    )
    issue_here(auth, homes["auditor"])
    for code, name, students, profile in COUNTIES:
        n = max(200, int(students * scale))
        say(f"   node {code} {name}: {n:,} synthetic students ({profile})")
        config = init_home(work / code, node_id=code, name=name)
        issue_here(auth, config.home)
        exports = work / f"exports-{code}"
        write_export(generate(code, n, YEAR, seed, profile=profile), exports, per_school=True)
        _, rejected = ingest_paths(config, [exports])
        if rejected:
            raise ConfigError("\n".join(str(e) for e in rejected))
        homes[code] = config.home
    text = pki.manifest_text(auth)
    for home in homes.values():
        update_manifest(home, text)
    homes["authority"] = auth
    return homes


def run(
    work: Path, *, seed: int = 1, scale: float = 1.0, say: Callable[[str], None] = print
) -> int:
    """Build, start, query, audit and stop the demo federation; returns an exit code."""
    work.mkdir(parents=True, exist_ok=True)
    say(
        f"1. a federation in {work}: authority, coordinator, analyst, auditor, "
        f"{len(COUNTIES)} county nodes"
    )
    homes = build(work, seed=seed, scale=scale, say=say)
    processes = Processes()
    try:
        say(
            "2. starting the coordinator and the nodes (real processes, mutual TLS, nodes dial out)"
        )
        ready = work / "coordinator.ready"
        proc = processes.start(
            [
                "coordinator",
                "serve",
                "--home",
                str(homes["coordinator"]),
                "--listen",
                "127.0.0.1:0",
                "--ready-file",
                str(ready),
            ],
            work / "coordinator.log",
        )
        address = str(_wait_ready(ready, proc, work / "coordinator.log")["address"])
        for code, *_ in COUNTIES:
            node_ready = work / f"{code}.ready"
            node = processes.start(
                [
                    "node",
                    "serve",
                    "--home",
                    str(homes[code]),
                    "--coordinator",
                    address,
                    "--ready-file",
                    str(node_ready),
                ],
                work / f"{code}.log",
            )
            _wait_ready(node_ready, node, work / f"{code}.log")
        say(f"   coordinator on {address}; {len(COUNTIES)} nodes connected\n")
        say(
            "3. the analyst's federated queries (each release verified: signatures and combination)"
        )
        manifest = load_identity(homes["analyst"]).manifest()
        for sql in QUERIES:
            query, envelope = make_query(homes["analyst"], sql, epsilon=EPSILON, accuracy=None)
            submitted = asyncio.run(submit(homes["analyst"], address, envelope))
            body = verify_release(
                submitted.release_envelope,
                manifest=manifest,
                query=query,
                answers=submitted.answers,
            ).body
            say(f"\n   {sql}")
            print_release(body)
    finally:
        processes.stop()
    say("\n4. the auditor verifies every log offline")
    reports = verify_bundle(_bundle(homes), load_identity(homes["auditor"]).manifest())
    for report in reports:
        say(
            f"   {report.origin}: {report.size} entries, {report.checkpoints} signed "
            f"checkpoints, {report.answers} answers, {report.releases} releases — valid"
        )
    say(f"\ndone: {work} (logs of each process: *.log)")
    return 0


def _bundle(homes: dict[str, Path]) -> Bundle:
    """Every log of the federation, as an auditor's bundle."""
    logs = []
    coordinator = Coordinator.open(homes["coordinator"])
    try:
        entries, notes = coordinator.export()
        logs.append(LogExport(COORDINATOR, coordinator.origin, tuple(entries), tuple(notes)))
    finally:
        coordinator.close()
    for code, *_ in COUNTIES:
        conn = store.connect(homes[code] / "node.db")
        try:
            entries, notes = nodelog.export(conn)
        finally:
            conn.close()
        logs.append(LogExport(code, nodelog.origin(code), tuple(entries), tuple(notes)))
    return Bundle(tuple(logs), None)
