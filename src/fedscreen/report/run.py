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
                  node's signed answer, byte for byte, written as each is verified
``budgets.json``  the nodes' signed budget statements the plan was checked against

``fedscreen report verify`` recomputes the whole report from these files. A run
that stops part way keeps the releases it verified; running it again with the
same ``--out`` resumes: it re-verifies them, checks the budgets for the queries
still to run only, and runs those.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from fedscreen._util.canonical import canonical_json
from fedscreen._util.files import replace_file, write_new_file
from fedscreen.analyst.budgets import fetch_budgets
from fedscreen.analyst.query import make_query, verify_release
from fedscreen.crypto.envelope import Envelope
from fedscreen.errors import ConfigError, VerificationError
from fedscreen.protocol.budget import Budgets
from fedscreen.protocol.query import verify_query
from fedscreen.report.affordable import NodeCheck, check_plan, refuse_if_unaffordable
from fedscreen.report.areas import city_name, city_scopes
from fedscreen.report.figures import Released, dims, statistic_rows
from fedscreen.report.html import render_html
from fedscreen.report.plan import PlannedQuery, ReportPlan
from fedscreen.rpc.client import submit
from fedscreen.trust.identity import load_identity
from fedscreen.trust.manifest import Manifest

REPORT_VERSION: Final = 1
REPORT_FILE: Final = "report.json"
PLAN_FILE: Final = "plan.toml"
RELEASES_DIR: Final = "releases"
BUDGETS_FILE: Final = "budgets.json"
#: offline, a signed query's age no longer matters: only its signature does
_ANY_TIME: Final = 2**62
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
    #: the analyst who signed the query
    analyst: str

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
    return sorted(manifest.active("node"))


def read_run(path: Path, query: PlannedQuery, *, manifest: Manifest) -> QueryRun:
    """Load a file of ``releases/`` and verify it all: VerificationError if anything fails.

    The analyst's signature on the query (its age does not matter any more), that it
    is the plan's query of that name, and the release with every answer it names.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        query_bytes = doc["query_envelope"].encode("utf-8")
        release_bytes = doc["release_envelope"].encode("utf-8")
        answers = {n: a.encode("utf-8") for n, a in doc["answers"].items()}
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise VerificationError(f"{path}: not a readable release file: {exc}") from None
    signed = verify_query(
        Envelope.from_json(query_bytes), manifest=manifest, now_ms=0, window_ms=_ANY_TIME
    )
    if canonical_json(signed.spec.to_json()) != canonical_json(query.spec.to_json()):
        raise VerificationError(f"{path}: the signed query is not the plan's query {query.name}")
    if (signed.epsilon, signed.accuracy) != (query.epsilon, query.accuracy):
        raise VerificationError(f"{path}: the signed query asks another ε than the plan")
    verified = verify_release(release_bytes, manifest=manifest, query=signed, answers=answers)
    released = Released(verified.body, verified.node_bodies, verified.charged)
    return QueryRun(query.name, query_bytes, release_bytes, answers, released, signed.analyst)


def check_budgets(
    home: Path,
    coordinator: str,
    plan: ReportPlan,
    *,
    nodes: Sequence[str] = (),
    coordinator_id: str | None = None,
    queries: Collection[str] | None = None,
) -> tuple[list[NodeCheck], Budgets]:
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
            checks = check_plan(
                plan, budgets, analyst=identity.member_id, nodes=targets, queries=queries
            )
            return checks, budgets
        time.sleep(0.1)


@dataclass(frozen=True)
class Outcome:
    """A plan run: the budget check, every query's verified run, and which ran now."""

    checks: list[NodeCheck]
    #: every query of the plan, in plan order
    runs: dict[str, QueryRun]
    #: the queries this invocation ran (the others were already released in ``out``)
    fresh: tuple[str, ...]


def run_plan(
    home: Path,
    coordinator: str,
    plan: ReportPlan,
    out: Path,
    *,
    nodes: Sequence[str] = (),
    coordinator_id: str | None = None,
    say: Callable[[str], None] = print,
) -> Outcome:
    """Check the budgets, then run every query not yet released in ``out``.

    Each release is written to ``out/releases`` as soon as it is verified, so a run
    that stops part way loses nothing that was charged.
    """
    identity = load_identity(home)
    manifest = identity.manifest()
    targets = list(nodes) or active_nodes(manifest)
    if (out / REPORT_FILE).exists():
        raise ConfigError(f"{out} already holds a report; give a new --out directory")
    releases = out / RELEASES_DIR
    releases.mkdir(parents=True, exist_ok=True)
    runs: dict[str, QueryRun] = {}
    for name, query in plan.queries.items():
        path = releases / f"{name}.json"
        if path.exists():
            runs[name] = read_run(path, query, manifest=manifest)
    todo = [name for name in plan.queries if name not in runs]
    if runs:
        say(f"  resuming: {len(runs)} of {len(plan.queries)} queries already released in {out}")
    checks, budgets = check_budgets(
        home, coordinator, plan, nodes=targets, coordinator_id=coordinator_id, queries=todo
    )
    for check in checks:
        for year in check.years:
            left = "unknown ε" if year.left is None else f"ε={year.left:g}"
            say(
                f"  {check.node_id}: the plan costs ε={year.cost:g} of {year.year}; "
                f"{left} left for {identity.member_id}"
            )
    refuse_if_unaffordable(checks)
    # the statements the check used, kept as evidence of what each node had left
    evidence = {
        "statements": {n: e.decode("utf-8") for n, e in budgets.envelopes.items()},
        "nodes": targets,
        "fresh": todo,
    }
    # a resumed run replaces the evidence of the run before it
    replace_file(
        out / BUDGETS_FILE, json.dumps(evidence, ensure_ascii=False, indent=1).encode("utf-8")
    )
    width = len(plan.queries)
    for n, name in enumerate(plan.queries, start=1):
        query = plan.queries[name]
        if name in todo:
            runs[name] = _run_one(home, coordinator, plan, query, targets, coordinator_id)
            write_new_file(
                releases / f"{name}.json",
                json.dumps(runs[name].to_json(), ensure_ascii=False, indent=1).encode("utf-8"),
                mode=0o644,
                what="release",
            )
        body = runs[name].released.body
        missing = f"; missing {', '.join(body['missing'])}" if body["missing"] else ""
        cost = "public, exact" if query.public else f"ε={query.cost:g} per node"
        done = "verified" if name in todo else "verified (released before)"
        say(
            f"  [{n:>{len(str(width))}}/{width}] {name}: "
            f"{len(body['answered'])}/{len(body['targeted'])} nodes, {cost}{missing} — {done}"
        )
    return Outcome(checks, {name: runs[name] for name in plan.queries}, tuple(todo))


def _run_one(
    home: Path,
    coordinator: str,
    plan: ReportPlan,
    query: PlannedQuery,
    targets: Sequence[str],
    coordinator_id: str | None,
) -> QueryRun:
    signed, envelope = make_query(
        home, query.sql, epsilon=query.epsilon, accuracy=query.accuracy, nodes=targets
    )
    submitted = asyncio.run(
        submit(home, coordinator, envelope, coordinator_id=coordinator_id,
               deadline_ms=plan.deadline_ms)
    )  # fmt: skip
    verified = verify_release(
        submitted.release_envelope,
        manifest=load_identity(home).manifest(),
        query=signed,
        answers=submitted.answers,
    )
    released = Released(verified.body, verified.node_bodies, verified.charged)
    return QueryRun(
        query.name, envelope, submitted.release_envelope, submitted.answers, released,
        signed.analyst,
    )  # fmt: skip


def build_model(
    plan: ReportPlan,
    released: Mapping[str, Released],
    checks: Sequence[NodeCheck],
    fresh: Collection[str],
    *,
    names: Mapping[str, str],
    analyst: str,
    generated_at: str | None = None,
) -> dict[str, Any]:
    """The report model (``report.json``; the HTML and CSV are rendered from it).

    A function of the verified releases, the checks made from the signed budget
    statements and the plan only, so ``report verify`` can recompute all of it.
    """
    first = next(iter(released.values())).body
    targeted: list[str] = first["targeted"]
    # city rows where the report spans several cities (DOMAIN: "city level where county
    # cells are small")
    areas = city_scopes(targeted)
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
                "rows": statistic_rows(stat, plan, released, areas),
            }
        )
    spent = _spent(plan, released, checks, fresh)
    return {
        "version": REPORT_VERSION,
        "title": f"{plan.title} {plan.year}",
        "plan": {
            "name": plan.name,
            "file": plan.path.name,
            "sha256": plan.sha256,
            "year": plan.year,
            "previous_year": plan.previous_year,
        },
        "generated_at": generated_at or datetime.now(UTC).isoformat(timespec="seconds"),
        "analyst": analyst,
        "coordinator": first["coordinator"],
        "nodes": [
            {
                "id": node,
                "name": names.get(node, node),
                "asked": len(released),
                "answered": sum(node in r.node_bodies for r in released.values()),
                "missing_from": missing_from.get(node, []),
            }
            for node in targeted
        ],
        "areas": [
            {"id": area, "name": city_name(area), "counties": counties}
            for area, counties in areas.items()
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
        "releases": {name: r.body["query_id"] for name, r in released.items()},
    }


def member_names(manifest: Manifest) -> dict[str, str]:
    """Member id -> name, for the report's county names."""
    return {m.id: m.name for m in manifest.members}


def _spent(
    plan: ReportPlan,
    released: Mapping[str, Released],
    checks: Sequence[NodeCheck],
    fresh: Collection[str],
) -> list[dict[str, Any]]:
    """ε per node and year: of the report's answers, charged by this run, and left.

    ``epsilon`` is the privacy cost of the answers the figures use (each answer's ε, as
    its node signed it). ``charged`` is what those deliveries cost the ledgers: an
    answer a node gave again from its store (the same question on the same data) was
    charged when first given and costs nothing now. ``left`` is the node's signed
    statement before this run, less what the queries run after it charged.
    """
    cost: dict[tuple[str, str], float] = {}
    charged: dict[tuple[str, str], float] = {}
    after: dict[tuple[str, str], float] = {}
    for name, release in released.items():
        for node, body in release.node_bodies.items():
            epsilon = float(body.get("epsilon") or 0.0)
            delivered = release.charged.get(node)
            delivered = epsilon if delivered is None else delivered  # a node that does not say
            for year in plan.queries[name].years:
                key = (node, year)
                cost[key] = cost.get(key, 0.0) + epsilon
                charged[key] = charged.get(key, 0.0) + delivered
                if name in fresh:
                    after[key] = after.get(key, 0.0) + delivered
    before = {(c.node_id, y.year): y for c in checks for y in c.years}
    rows = []
    for (node, year), epsilon in sorted(cost.items()):
        check = before.get((node, year))
        left = None
        if check is not None and check.left is not None:
            left = max(check.left - after.get((node, year), 0.0), 0.0)
        rows.append(
            {
                "node": node,
                "year": year,
                # ε are micro-units at the ledger: six decimals say everything
                "epsilon": round(epsilon, 6),
                "charged": round(charged[(node, year)], 6),
                "budget": None if check is None or check.budget is None else round(check.budget, 6),
                "left": None if left is None else round(left, 6),
            }
        )
    return rows


CSV_HEADER: Final = (
    "statistic", "item", "unit", "scope", "group", "value", "lower", "upper", "display",
    "suppressed", "epsilon",
)  # fmt: skip


def csv_text(model: Mapping[str, Any]) -> str:
    """``report.csv``: one row per figure of the model."""
    stream = io.StringIO(newline="")
    writer = csv.writer(stream)
    writer.writerow(CSV_HEADER)
    for section in model["sections"]:
        for stat in section["statistics"]:
            for row in stat["rows"]:
                writer.writerow(
                    [stat["id"], stat["item"], stat["unit"], row["scope"],
                     " / ".join(str(g) for g in row["group"]), row["value"], row["lower"],
                     row["upper"], row["display"], int(row["suppressed"]), stat["epsilon"]]
                )  # fmt: skip
    return stream.getvalue()


def normalized(model: Mapping[str, Any]) -> Any:
    """The model as ``report.json`` holds it (lists for tuples; floats round-trip exactly)."""
    return json.loads(json.dumps(model, ensure_ascii=False))


def write_report(out: Path, plan: ReportPlan, model: Mapping[str, Any]) -> dict[str, Path]:
    """Write plan.toml, report.csv, report.html and, last, report.json into ``out``."""
    if (out / REPORT_FILE).exists():
        raise ConfigError(f"{out} already holds a report; give a new --out directory")
    plan_copy = out / PLAN_FILE
    if plan_copy.exists() and plan_copy.read_bytes() != plan.source:
        raise ConfigError(f"{out} holds the releases of another plan; give a new --out directory")
    if not plan_copy.exists():
        write_new_file(plan_copy, plan.source, mode=0o644, what="plan")
    document = normalized(model)
    paths = {"html": out / "report.html", "json": out / REPORT_FILE, "csv": out / "report.csv"}
    paths["csv"].write_text(csv_text(document), encoding="utf-8", newline="")
    paths["html"].write_text(render_html(document), encoding="utf-8", newline="")
    # the JSON last: its presence marks a complete report
    paths["json"].write_text(
        json.dumps(document, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    return paths
