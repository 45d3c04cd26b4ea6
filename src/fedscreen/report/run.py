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
still to run only, and runs those. A finished report is never run again; ``report run
--include-late`` (``report.late``) regenerates it from later versions of its releases.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from fedscreen._util.files import replace_file, write_new_file
from fedscreen.analyst.budgets import fetch_budgets
from fedscreen.analyst.query import make_query, submit, verify_release
from fedscreen.errors import ConfigError
from fedscreen.protocol.budget import Budgets
from fedscreen.report.affordable import NodeCheck, check_plan, refuse_if_unaffordable
from fedscreen.report.areas import REPORT_SCOPES, area_kind, scope_within
from fedscreen.report.files import (
    BUDGETS_FILE,
    RELEASES_DIR,
    REPORT_FILE,
    QueryRun,
    read_run,
)
from fedscreen.report.plan import PlannedQuery, ReportPlan
from fedscreen.report.released import Released
from fedscreen.trust.identity import load_identity
from fedscreen.trust.manifest import Manifest
from fedscreen.trust.scope import PROVINCE, nodes_in_scope

#: seconds to wait for the statement of a node that has just connected
STATEMENT_WAIT_S: Final = 3.0


def active_nodes(manifest: Manifest) -> list[str]:
    """The manifest's active node ids, in order."""
    return sorted(manifest.active("node"))


def scope_nodes(manifest: Manifest, *, analyst: str, scope: str | None) -> tuple[str, list[str]]:
    """A report's scope (None: the analyst's own) and the active nodes inside it.

    ConfigError, before anything is asked, if the scope is not a report scope or does
    not lie within the analyst's scope in the manifest: a city's analyst reports on its
    city or one of its counties, never on the province or another city.
    """
    own = manifest.member(analyst, role="analyst").scope or PROVINCE
    wanted = own if scope is None else scope
    if wanted.startswith("node:"):
        raise ConfigError(
            f"analyst {analyst}'s scope is {own}: give --scope ({REPORT_SCOPES}) for a report"
        )
    area_kind(wanted)  # the form, or ConfigError
    if not scope_within(wanted, own):
        raise ConfigError(
            f"scope {wanted} is outside analyst {analyst}'s scope ({own}) in the manifest: "
            "nothing was asked"
        )
    nodes = [m for m in manifest.members if m.role == "node" and not m.revoked]
    inside = sorted(nodes_in_scope(wanted, nodes))
    if not inside:
        raise ConfigError(f"no active node of the manifest lies in {wanted}: nothing to ask")
    return wanted, inside


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
    asked = plan.asked
    for name, query in asked.items():
        path = releases / f"{name}.json"
        if path.exists():
            run = read_run(path, query, manifest=manifest)
            # a stored release is resumed only if this run would have asked it: the same
            # analyst, the same nodes (another scope's or analyst's would mix in its figures)
            asked_then = sorted(run.released.body["targeted"])
            if run.analyst != identity.member_id or asked_then != sorted(targets):
                raise ConfigError(
                    f"{path} was released for {run.analyst} over {len(asked_then)} nodes, not "
                    f"for {identity.member_id} over this run's {len(targets)}: give a new --out"
                )
            runs[name] = run
    todo = [name for name in asked if name not in runs]
    if runs:
        say(f"  resuming: {len(runs)} of {len(asked)} queries already released in {out}")
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
    width = len(asked)
    for n, name in enumerate(asked, start=1):
        query = asked[name]
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
        secure = body.get("secure")
        if isinstance(secure, dict):
            failure = secure.get("failure")
            cost += (
                f", secure: no figure ({failure})" if failure else ", secure: province total only"
            )
        done = "verified" if name in todo else "verified (released before)"
        say(
            f"  [{n:>{len(str(width))}}/{width}] {name}: "
            f"{len(body['answered'])}/{len(body['targeted'])} nodes, {cost}{missing} — {done}"
        )
    return Outcome(checks, {name: runs[name] for name in asked}, tuple(todo))


def _run_one(
    home: Path,
    coordinator: str,
    plan: ReportPlan,
    query: PlannedQuery,
    targets: Sequence[str],
    coordinator_id: str | None,
) -> QueryRun:
    signed, envelope = make_query(
        home, query.sql, epsilon=query.epsilon, accuracy=query.accuracy, nodes=targets,
        secure=query.secure,
    )  # fmt: skip
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
