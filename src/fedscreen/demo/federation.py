"""A whole federation on this machine: authority, coordinator, second aggregator, county
nodes, analyst, auditor.

``fedscreen demo`` builds it in a work directory (two school years of synthetic
exports per county), starts the coordinator, the second aggregator of secure queries
and every node as real processes on 127.0.0.1 (mutual TLS, the aggregator and the
nodes dialling out; the university's node is offline and gets its queries by file),
checks the annual report plan against every node's signed budget, runs it as the
analyst (every release verified) and writes the report, carries the offline node's
queries and answers by file and regenerates the report from the later release
versions, runs a city's report, then exports every log and verifies them as the
auditor would, and stops the processes — also on Ctrl-C or an error.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from fedscreen.aggregator.store import export_log as aggregator_log
from fedscreen.audit.verify import verify_bundle
from fedscreen.coordinator.core import export_log as coordinator_log
from fedscreen.demo.members import (
    CITY_ANALYST,
    COUNTIES,
    DEFAULT_COUNTIES,
    Members,
    build,
)
from fedscreen.demo.offline import carry_by_file
from fedscreen.demo.scopes import ask_outside, outside_node, refused_at_node
from fedscreen.errors import ConfigError
from fedscreen.node.home import export_log as node_log
from fedscreen.policy.default import PROVINCE_FILE, default_policy_dir
from fedscreen.policy.load import load_policy
from fedscreen.report.format import format_value
from fedscreen.report.plan import load_plan
from fedscreen.report.produce import produce_report
from fedscreen.report.verify import releases_logged, verify_report
from fedscreen.tlog.export import Bundle
from fedscreen.trust.identity import load_identity

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
    work.mkdir(parents=True, exist_ok=True)
    say(
        f"1. a federation in {work}: authority, coordinator, second aggregator, a province "
        f"and a city analyst, auditor, {counties} county nodes, a school's and a "
        "university's own nodes"
    )
    homes = build(work, COUNTIES[:counties], seed=seed, scale=scale, say=say)
    processes = Processes()
    outside, envelope = None, b""
    report_dir = work / "report"
    city_dir = work / f"report-{CITY_ANALYST[2].replace(':', '-')}"
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
                str(homes.coordinator),
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
                str(homes.aggregator),
                "--coordinator",
                address,
                "--ready-file",
                str(aggregator_ready),
            ],
            work / "aggregator.log",
        )
        starting = [(aggregator_ready, aggregator, work / "aggregator.log")]
        offline = load_identity(homes.coordinator).manifest().offline
        for code in (c for c in homes.nodes if c not in offline):
            node_ready = work / f"{code}.ready"
            node = processes.start(
                [
                    "node",
                    "serve",
                    "--home",
                    str(homes.nodes[code]),
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
            f"   coordinator on {address}; the second aggregator and "
            f"{len(homes.nodes) - len(offline)} nodes connected"
            + (f" ({', '.join(sorted(offline))} offline: reached by file)" if offline else "")
            + "\n"
        )
        say(
            f"3. the analyst runs the annual report ({'/'.join(PLAN)}): first every node's "
            "signed budget, then the signed queries, each release verified"
        )
        plan = load_plan(policies.joinpath(*PLAN), policy)
        province = produce_report(homes.analyst, address, plan, report_dir, policy=policy, say=say)
        written = province.paths
        _headline(province.model, say)
        for node_id in sorted(offline):
            say(
                f"\n4. node {node_id} has no network path: its queries were queued, and are "
                "carried to it by file"
            )
            carry_by_file(
                homes, node_id, address, plan, report_dir, policy=policy, work=work, say=say
            )
        city_id, city_name, city_scope = CITY_ANALYST
        say(
            f"\n5. {city_name} ({city_id}, scope {city_scope}) runs the same plan over its own "
            "city, beside the province's published figures; its queries go to its city's "
            "nodes only, which answer the questions the province asked already from their "
            "stores (no further ε), and no secure figure can be summed again over them"
        )
        city = produce_report(
            homes.city_analyst, address, plan, city_dir, policy=policy, province_dir=report_dir,
            say=say,
        )  # fmt: skip
        _headline(city.model, say, scope=city.scope)
        outside = outside_node(homes)
        if outside is not None:
            say(
                f"\n6. {CITY_ANALYST[1]} (scope {CITY_ANALYST[2]}) asks node {outside}, a "
                "county of another city"
            )
            envelope = ask_outside(homes, address, outside, say)
    finally:
        processes.stop()
    if outside is not None:
        # the node's process has stopped: its log has one writer
        refused_at_node(homes, outside, envelope, say)
    say("\n7. the auditor verifies every log offline, then both reports against them")
    manifest = load_identity(homes.auditor).manifest()
    reports = verify_bundle(_bundle(homes), manifest)
    for report in reports:
        say(
            f"   {report.origin}: {report.size} entries, {report.checkpoints} signed "
            f"checkpoints, {report.answers} answers, {report.releases} releases — valid"
        )
    logged = {d for r in reports for d in r.release_digests}
    checked = verify_report(report_dir, manifest=manifest, policy=policy)
    releases_logged(checked, logged)
    say(
        f"   the province report: {checked.figures} figures of {checked.statistics} statistics "
        f"recomputed from its {checked.releases} signed releases, each found in the "
        "coordinator's log — valid"
    )
    checked = verify_report(city_dir, manifest=manifest, policy=policy, province_dir=report_dir)
    releases_logged(checked, logged)
    say(
        f"   the {CITY_ANALYST[2]} report: {checked.figures} figures recomputed from its "
        f"{checked.releases} signed releases, each in the coordinator's log, and the province "
        "figures beside them from the province report's — valid"
    )
    say(
        f"\nthe reports: {written['html']}\n             {city_dir / 'report.html'}\n"
        f"   (figures: {written['csv'].name}, {written['json'].name}; signed releases: "
        f"{written['html'].parent / 'releases'})"
    )
    say(f"done: {work} (logs of each process: *.log)")
    return 0


def _headline(
    model: dict[str, Any], say: Callable[[str], None], *, scope: str = "province"
) -> None:
    """A few figures of ``scope`` on the terminal (a city's beside the province's published
    ones); the report has them all."""
    where = "province" if scope == "province" else model["scope"]["name"]
    for section in model["sections"]:
        for stat in section["statistics"]:
            if stat["id"] not in HEADLINE:
                continue
            beside = {
                json.dumps(r["group"]): r["display"]
                for r in stat.get("province", {}).get("rows", [])
            }
            extra = "; province as published" if beside else ""
            say(f"\n   {stat['title']} ({where}, 95% interval{extra})")
            for row in stat["rows"]:
                if row["scope"] != scope:
                    continue
                span = (
                    ""
                    if row["lower"] is None or row["upper"] is None
                    else f"  [{format_value(row['lower'], stat['unit'])}, "
                    f"{format_value(row['upper'], stat['unit'])}]"
                )
                theirs = beside.get(json.dumps(row["group"]))
                also = "" if theirs is None else f"   province {theirs}"
                group = " · ".join(str(g) for g in row["group"])
                say(f"     {group:<22}{row['display']:>8}{span}{also}")


def _bundle(homes: Members) -> Bundle:
    """Every log of the federation, as an auditor's bundle."""
    # the coordinator's before the aggregator's: secure releases are cross-checked
    logs = [coordinator_log(homes.coordinator), aggregator_log(homes.aggregator)]
    logs += [node_log(home) for home in homes.nodes.values()]
    return Bundle(tuple(logs), None)
