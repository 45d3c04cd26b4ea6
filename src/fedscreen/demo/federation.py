"""A whole federation on this machine: authority, coordinator, second aggregator, county
nodes, analyst, auditor.

``fedscreen demo`` builds it in a work directory (two school years of synthetic
exports per county), starts the coordinator, the second aggregator of secure queries
and every node as real processes on 127.0.0.1 (mutual TLS, the aggregator and the
nodes dialling out), checks the annual report plan
against every node's signed budget, runs it as the analyst (every release
verified) and writes the report, then exports every log and verifies them as the
auditor would, and stops the processes — also on Ctrl-C or an error.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from fedscreen.aggregator.home import init_aggregator
from fedscreen.aggregator.store import export_log as aggregator_log
from fedscreen.audit.verify import verify_bundle
from fedscreen.coordinator.core import export_log as coordinator_log
from fedscreen.coordinator.core import init_coordinator
from fedscreen.errors import ConfigError
from fedscreen.node.home import export_log as node_log
from fedscreen.node.home import init_home
from fedscreen.node.ingest import ingest_paths
from fedscreen.policy.default import PROVINCE_FILE, default_policy_dir
from fedscreen.policy.load import load_policy
from fedscreen.report.files import write_report
from fedscreen.report.format import format_value
from fedscreen.report.model import build_model, member_names
from fedscreen.report.plan import load_plan
from fedscreen.report.run import run_plan
from fedscreen.report.verify import releases_logged, verify_report
from fedscreen.synth import generate, write_export
from fedscreen.tlog.export import Bundle
from fedscreen.trust import authority
from fedscreen.trust.identity import create_identity, issue_here, load_identity, update_manifest

#: (county code, name, students, profile): real Hebei counties of different sizes and kinds
COUNTIES: Final = (
    ("130102", "长安区", 6_000, "urban"),
    ("130104", "桥西区", 4_000, "mixed"),
    ("130121", "井陉县", 3_000, "rural"),
    # more real counties, across Hebei's cities, for larger demo federations (--counties)
    ("130203", "路北区", 5_000, "urban"),
    ("130425", "大名县", 4_000, "rural"),
    ("130602", "竞秀区", 5_000, "urban"),
    ("130722", "张北县", 2_500, "rural"),
    ("130528", "宁晋县", 3_500, "mixed"),
    ("131102", "桃城区", 4_500, "mixed"),
    ("130802", "双桥区", 3_000, "urban"),
    ("130681", "涿州市", 4_000, "mixed"),
    ("131182", "深州市", 3_000, "rural"),
)
#: counties in the default demo federation (the first of COUNTIES)
DEFAULT_COUNTIES: Final = 3
YEAR: Final = "2024-2025"
#: the year before, for the report's year-over-year change
PREVIOUS_YEAR: Final = "2023-2024"
ANALYST: Final = "hebei-monitoring-centre"
COORDINATOR: Final = "coordinator"
#: the second aggregator of secure queries: another department than the coordinator's
AGGREGATOR: Final = "hebei-stats-bureau"
#: seconds a process may take to be ready (start, TLS handshake, Welcome)
READY_TIMEOUT_S: Final = 60.0
#: seconds a process gets to stop after SIGTERM before it is killed
STOP_TIMEOUT_S: Final = 10.0
#: the provincial annual report plan, shipped beside the catalogue
PLAN: Final = ("reports", "annual.toml")
#: statistics printed on the terminal at the end of the run
HEADLINE: Final = ("coverage", "phq9_positive")


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


County = tuple[str, str, int, str]


def build(
    work: Path,
    counties: Sequence[County],
    *,
    seed: int,
    scale: float,
    say: Callable[[str], None],
) -> dict[str, Path]:
    """Create the authority, every member and the nodes' data; returns the homes by role/id."""
    auth = work / "authority"
    authority.init_authority(auth, federation="hebei-demo")
    homes = {
        "coordinator": work / "coordinator",
        "analyst": work / "analyst",
        "auditor": work / "auditor",
        "aggregator": work / "aggregator",
    }
    init_coordinator(homes["coordinator"], member_id=COORDINATOR, name="河北省平台")
    issue_here(auth, homes["coordinator"])
    init_aggregator(homes["aggregator"], member_id=AGGREGATOR, name="河北省统计局")
    issue_here(auth, homes["aggregator"])
    create_identity(homes["analyst"], member_id=ANALYST, role="analyst", name="省心理健康监测中心")
    issue_here(auth, homes["analyst"])
    create_identity(
        homes["auditor"], member_id="data-security-office", role="auditor", name="数据安全办公室"
    )
    issue_here(auth, homes["auditor"])
    for code, name, students, profile in counties:
        n = max(200, int(students * scale))
        say(f"   node {code} {name}: {n:,} synthetic students ({profile})")
        config = init_home(work / code, node_id=code, name=name)
        issue_here(auth, config.home)
        for offset, year in enumerate((PREVIOUS_YEAR, YEAR)):
            exports = work / f"exports-{code}-{year}"
            county = generate(code, n, year, seed + offset, profile=profile)
            write_export(county, exports, per_school=True)
            _, rejected = ingest_paths(config, [exports])
            if rejected:
                raise ConfigError("\n".join(str(e) for e in rejected))
        homes[code] = config.home
    text = authority.manifest_text(auth)
    for home in homes.values():
        update_manifest(home, text)
    homes["authority"] = auth
    return homes


def run(
    work: Path,
    *,
    seed: int = 1,
    scale: float = 1.0,
    counties: int = DEFAULT_COUNTIES,
    say: Callable[[str], None] = print,
) -> int:
    """Build, start, report, audit and stop the demo federation; returns an exit code."""
    policies = default_policy_dir()
    policy = load_policy(policies / PROVINCE_FILE)
    # the annual report's secure figures sum at least min_nodes counties (no fewer: a
    # county could subtract its own count from a release of two)
    fewest = max(1, policy.secure.min_nodes)
    if not fewest <= counties <= len(COUNTIES):
        raise ConfigError(f"--counties must be between {fewest} and {len(COUNTIES)}")
    members = COUNTIES[:counties]
    work.mkdir(parents=True, exist_ok=True)
    say(
        f"1. a federation in {work}: authority, coordinator, second aggregator, analyst, "
        f"auditor, {len(members)} county nodes"
    )
    homes = build(work, members, seed=seed, scale=scale, say=say)
    processes = Processes()
    try:
        say(
            "2. starting the coordinator, the second aggregator and the nodes (real processes, "
            "mutual TLS, the aggregator and the nodes dial out)"
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
        # start the aggregator and every node, then wait for each: their start-ups overlap
        aggregator_ready = work / "aggregator.ready"
        aggregator = processes.start(
            [
                "aggregator",
                "serve",
                "--home",
                str(homes["aggregator"]),
                "--coordinator",
                address,
                "--ready-file",
                str(aggregator_ready),
            ],
            work / "aggregator.log",
        )
        starting = [(aggregator_ready, aggregator, work / "aggregator.log")]
        for code, *_ in members:
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
            starting.append((node_ready, node, work / f"{code}.log"))
        for node_ready, node, log in starting:
            _wait_ready(node_ready, node, log)
        say(
            f"   coordinator on {address}; the second aggregator and {len(members)} nodes "
            "connected\n"
        )
        say(
            f"3. the analyst runs the annual report ({'/'.join(PLAN)}): first every node's "
            "signed budget, then the signed queries, each release verified"
        )
        plan = load_plan(policies.joinpath(*PLAN), policy)
        report_dir = work / "report"
        outcome = run_plan(homes["analyst"], address, plan, report_dir, say=say)
        model = build_model(
            plan,
            {name: run.released for name, run in outcome.runs.items()},
            outcome.checks,
            outcome.fresh,
            names=member_names(load_identity(homes["analyst"]).manifest()),
            analyst=ANALYST,
        )
        written = write_report(report_dir, plan, model)
        _headline(model, say)
    finally:
        processes.stop()
    say("\n4. the auditor verifies every log offline, then the report against them")
    manifest = load_identity(homes["auditor"]).manifest()
    reports = verify_bundle(_bundle(homes, [c[0] for c in members]), manifest)
    for report in reports:
        say(
            f"   {report.origin}: {report.size} entries, {report.checkpoints} signed "
            f"checkpoints, {report.answers} answers, {report.releases} releases — valid"
        )
    checked = verify_report(written["json"].parent, manifest=manifest, policy=policy)
    releases_logged(checked, {d for r in reports for d in r.release_digests})
    say(
        f"   the report: {checked.figures} figures of {checked.statistics} statistics "
        f"recomputed from its {checked.releases} signed releases, each found in the "
        "coordinator's log — valid"
    )
    say(
        f"\nthe report: {written['html']}\n   (figures: {written['csv'].name}, "
        f"{written['json'].name}; signed releases: {written['html'].parent / 'releases'})"
    )
    say(f"done: {work} (logs of each process: *.log)")
    return 0


def _headline(model: dict[str, Any], say: Callable[[str], None]) -> None:
    """A few provincial figures on the terminal; the report has them all."""
    for section in model["sections"]:
        for stat in section["statistics"]:
            if stat["id"] not in HEADLINE:
                continue
            say(f"\n   {stat['title']} (province, 95% interval)")
            for row in stat["rows"]:
                if row["scope"] != "province":
                    continue
                span = (
                    ""
                    if row["lower"] is None or row["upper"] is None
                    else f"  [{format_value(row['lower'], stat['unit'])}, "
                    f"{format_value(row['upper'], stat['unit'])}]"
                )
                say(f"     {' · '.join(str(g) for g in row['group']):<22}{row['display']:>8}{span}")


def _bundle(homes: dict[str, Path], nodes: Sequence[str]) -> Bundle:
    """Every log of the federation, as an auditor's bundle."""
    # the coordinator's before the aggregator's: secure releases are cross-checked
    logs = [coordinator_log(homes["coordinator"]), aggregator_log(homes["aggregator"])]
    logs += [node_log(homes[code]) for code in nodes]
    return Bundle(tuple(logs), None)
