"""Run a report plan through the federation and write the report.

``run_report`` checks the plan against every node's signed budget statement (and
refuses it before anything runs if a node cannot pay), then submits each query,
signed by the analyst, verifies each release (the coordinator's signature, every
node's signed answer, the provincial combination), keeps the signed bytes, and
computes the report's figures from the verified releases only. It writes:

``report.html``   the report (self-contained: no external assets)
``report.json``   the same figures, with the plan, ε spent and the nodes missing
``report.csv``    one row per figure
``plan.toml``     the plan, byte for byte (its SHA-256 is in the report)
``releases/``     for each query, the signed query, the signed release and every
                  node's signed answer, byte for byte (``fedscreen report verify``
                  recomputes every figure from them; ``audit verify`` checks the logs)
"""

from __future__ import annotations

import asyncio
import csv
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from fedscreen.analyst import make_query, verify_release
from fedscreen.budget import fetch_budgets
from fedscreen.cli.query import submit
from fedscreen.errors import ConfigError
from fedscreen.files import write_new_file
from fedscreen.identity import load_identity
from fedscreen.manifest import Manifest
from fedscreen.report.affordable import NodeCheck, check_plan, refuse_if_unaffordable
from fedscreen.report.figures import Released, dims, statistic_rows
from fedscreen.report.html import render_html
from fedscreen.report.plan import ReportPlan

REPORT_VERSION: Final = 1
REPORT_FILE: Final = "report.json"
PLAN_FILE: Final = "plan.toml"
RELEASES_DIR: Final = "releases"
#: seconds to wait for the statement of a node that has just connected
STATEMENT_WAIT_S: Final = 3.0
UNIT_OF_PRIVACY: Final = "one student in one academic year"
MECHANISM: Final = (
    "Pure ε-differential privacy, applied by each county's node before anything leaves "
    "it: counts and sums get discrete Laplace noise, rates and means are ratios of two "
    "noisy counts from a split ε, medians are chosen by the exponential mechanism "
    "(all OpenDP samplers). The provincial figures and everything in this report are "
    "computed from those noisy answers only."
)


@dataclass(frozen=True)
class QueryRun:
    """One query of the plan as run: the signed bytes and the verified release."""

    name: str
    query_envelope: bytes
    release_envelope: bytes
    answers: Mapping[str, bytes]
    released: Released

    def to_json(self) -> dict[str, Any]:
        """The signed bytes, as text (each envelope is UTF-8 JSON), for ``releases/``."""
        return {
            "name": self.name,
            "query_envelope": self.query_envelope.decode("utf-8"),
            "release_envelope": self.release_envelope.decode("utf-8"),
            "answers": {n: a.decode("utf-8") for n, a in sorted(self.answers.items())},
        }


def active_nodes(manifest: Manifest) -> list[str]:
    """The manifest's active node ids, in order."""
    return sorted(m.id for m in manifest.members if m.role == "node" and not m.revoked)


def check_budgets(
    home: Path, coordinator: str, plan: ReportPlan, *, nodes: Sequence[str] = (),
    coordinator_id: str | None = None,
) -> list[NodeCheck]:  # fmt: skip
    """Every targeted node's cost and budget left, from its signed statement."""
    identity = load_identity(home)
    targets = list(nodes) or active_nodes(identity.manifest())
    deadline = time.monotonic() + STATEMENT_WAIT_S
    while True:
        budgets = asyncio.run(fetch_budgets(home, coordinator, coordinator_id=coordinator_id))
        # a node sends its statement just after connecting: give one that is connected
        # but not yet heard from a moment, rather than call its budget unknown
        pending = [n for n in targets if n in budgets.connected and n not in budgets.statements]
        if not pending or time.monotonic() > deadline:
            return check_plan(plan, budgets, analyst=identity.member_id, nodes=targets)
        time.sleep(0.1)


def run_plan(
    home: Path,
    coordinator: str,
    plan: ReportPlan,
    *,
    nodes: Sequence[str] = (),
    coordinator_id: str | None = None,
    say: Callable[[str], None] = print,
) -> tuple[list[NodeCheck], dict[str, QueryRun]]:
    """Check the budgets, then run every query; returns the checks and the runs by name."""
    identity = load_identity(home)
    manifest = identity.manifest()
    targets = list(nodes) or active_nodes(manifest)
    checks = check_budgets(home, coordinator, plan, nodes=targets, coordinator_id=coordinator_id)
    refuse_if_unaffordable(checks)
    runs: dict[str, QueryRun] = {}
    width = len(plan.queries)
    for n, query in enumerate(plan.queries.values(), start=1):
        signed, envelope = make_query(
            home, query.sql, epsilon=query.epsilon, accuracy=query.accuracy, nodes=targets
        )
        submitted = asyncio.run(
            submit(
                home,
                coordinator,
                envelope,
                coordinator_id=coordinator_id,
                deadline_ms=plan.deadline_ms,
            )
        )
        verified = verify_release(
            submitted.release_envelope, manifest=manifest, query=signed, answers=submitted.answers
        )
        body = verified.body
        runs[query.name] = QueryRun(
            query.name,
            envelope,
            submitted.release_envelope,
            submitted.answers,
            Released(body, verified.node_bodies),
        )
        missing = f"; missing {', '.join(body['missing'])}" if body["missing"] else ""
        cost = "public, exact" if query.public else f"ε={query.cost:g} per node"
        say(
            f"  [{n:>{len(str(width))}}/{width}] {query.name}: "
            f"{len(body['answered'])}/{len(body['targeted'])} nodes, {cost}{missing} — verified"
        )
    return checks, runs


def build_model(
    plan: ReportPlan,
    runs: Mapping[str, QueryRun],
    checks: Sequence[NodeCheck],
    *,
    manifest: Manifest,
    analyst: str,
) -> dict[str, Any]:
    """The report model (``report.json``; the HTML is rendered from it)."""
    released = {name: run.released for name, run in runs.items()}
    first = next(iter(runs.values())).released.body
    targeted: list[str] = first["targeted"]
    sections: dict[str, list[dict[str, Any]]] = {sid: [] for sid, _ in plan.sections}
    missing_from: dict[str, list[str]] = {n: [] for n in targeted}
    missing_rows = []
    for stat in plan.statistics:
        missing: set[str] = set()
        for name in stat.queries:
            body = released[name].body
            missing |= set(body["missing"])
            reasons = body.get("missing_reasons", {})
            for node in body["missing"]:
                missing_rows.append(
                    {"node": node, "statistic": stat.id,
                     "reason": reasons.get(node, "no answer")}
                )  # fmt: skip
        for node in sorted(missing):
            missing_from.setdefault(node, []).append(stat.id)
        sections[stat.section].append(
            {
                "id": stat.id,
                "item": stat.item,
                "title": stat.title,
                "description": stat.description,
                "unit": stat.unit,
                "dims": dims(stat, released),
                "target": stat.target,
                "target_label": stat.target_label,
                "epsilon": sum(plan.queries[q].cost for q in stat.queries),
                "public": all(plan.queries[q].public for q in stat.queries),
                "queries": [released[q].body["query_id"] for q in stat.queries],
                "missing": sorted(missing),
                "rows": statistic_rows(stat, plan, released),
            }
        )
    spent = _spent(plan, runs, checks)
    return {
        "version": REPORT_VERSION,
        "title": f"{plan.title} {plan.year}",
        "plan": {
            "name": plan.name,
            "file": plan.path.name,
            "sha256": plan.sha256,
            "year": plan.year,
        },
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "analyst": analyst,
        "coordinator": first["coordinator"],
        "nodes": [
            {
                "id": node,
                "name": _name(manifest, node),
                "asked": len(runs),
                "answered": sum(node in r.released.body["answered"] for r in runs.values()),
                "missing_from": missing_from.get(node, []),
            }
            for node in targeted
        ],
        "privacy": {
            "unit": UNIT_OF_PRIVACY,
            "mechanism": MECHANISM,
            "threshold": int(first["threshold"]),
            "spent": spent,
            "missing": missing_rows,
        },
        "sections": [
            {"id": sid, "title": title, "statistics": sections[sid]} for sid, title in plan.sections
        ],
        "releases": {name: run.released.body["query_id"] for name, run in runs.items()},
    }


def _name(manifest: Manifest, node: str) -> str:
    names = {m.id: m.name for m in manifest.members}
    return names.get(node, node)


def _spent(
    plan: ReportPlan, runs: Mapping[str, QueryRun], checks: Sequence[NodeCheck]
) -> list[dict[str, Any]]:
    """ε each node charged for this report, per year, as its signed answers state."""
    charged: dict[tuple[str, str], float] = {}
    for name, run in runs.items():
        years = plan.queries[name].years
        for answer in run.released.body["answers"]:
            for year in years:
                key = (answer["node_id"], year)
                charged[key] = charged.get(key, 0.0) + float(answer["epsilon"] or 0.0)
    before = {(c.node_id, y.year): y for c in checks for y in c.years}
    rows = []
    for (node, year), epsilon in sorted(charged.items()):
        check = before.get((node, year))
        left = None if check is None or check.left is None else max(check.left - epsilon, 0.0)
        rows.append(
            {
                "node": node,
                "year": year,
                "epsilon": round(epsilon, 6),
                # ε are micro-units at the ledger: six decimals say everything
                "budget": None if check is None or check.budget is None else round(check.budget, 6),
                "left": None if left is None else round(left, 6),
            }
        )
    return rows


CSV_HEADER: Final = (
    "statistic", "item", "unit", "scope", "group", "value", "lower", "upper", "display",
    "suppressed", "epsilon",
)  # fmt: skip


def write_report(
    out: Path, plan: ReportPlan, model: Mapping[str, Any], runs: Mapping[str, QueryRun]
) -> dict[str, Path]:
    """Write report.html/json/csv and releases/ into ``out`` (which must not hold a report)."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / REPORT_FILE).exists():
        raise ConfigError(f"{out} already holds a report; give a new --out directory")
    write_new_file(out / PLAN_FILE, plan.source, mode=0o644, what="plan")
    releases = out / RELEASES_DIR
    releases.mkdir(exist_ok=True)
    for name, run in runs.items():
        write_new_file(
            releases / f"{name}.json",
            json.dumps(run.to_json(), ensure_ascii=False, indent=1).encode("utf-8"),
            mode=0o644,
            what="release",
        )
    rows = []
    for section in model["sections"]:
        for stat in section["statistics"]:
            for row in stat["rows"]:
                rows.append(
                    [stat["id"], stat["item"], stat["unit"], row["scope"],
                     " / ".join(str(g) for g in row["group"]), row["value"], row["lower"],
                     row["upper"], row["display"], int(row["suppressed"]), stat["epsilon"]]
                )  # fmt: skip
    paths = {
        "html": out / "report.html",
        "json": out / REPORT_FILE,
        "csv": out / "report.csv",
    }
    with paths["csv"].open("w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(CSV_HEADER)
        writer.writerows(rows)
    paths["html"].write_text(render_html(dict(model)), encoding="utf-8")
    # the JSON last: its presence marks a complete report
    paths["json"].write_text(
        json.dumps(model, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    return paths
