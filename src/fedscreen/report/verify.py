"""Check a written report against its signed releases (and, optionally, the logs).

Anyone holding the federation's manifest can recompute a report. Every file in
``releases/`` must hold a query signed by the report's analyst that is the plan's
query of that name (same question, same ε), a release signed by the coordinator,
and every node answer it names, each verified, the release repeating them exactly
and combining them. The nodes' signed budget statements in ``budgets.json`` must
verify too. From those and ``plan.toml`` the whole of ``report.json`` is computed
again and must match (``protocol.compare.same_figures``: floats to a relative 1e-9,
as another machine's libm may differ in the last bit), and ``report.csv`` and
``report.html`` must be exactly what that model renders to. ``fedscreen report
verify --bundle`` also requires each release to be in the coordinator's verified
transparency log.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedscreen.errors import ConfigError, VerificationError
from fedscreen.policy import Policy
from fedscreen.protocol.budget import verify_budgets
from fedscreen.protocol.compare import same_figures
from fedscreen.report.affordable import check_plan
from fedscreen.report.areas import area_kind, node_places, scope_within
from fedscreen.report.compare import PROVINCE_COPY, ProvinceReport
from fedscreen.report.files import (
    BUDGETS_FILE,
    PLAN_FILE,
    RELEASES_DIR,
    REPORT_FILE,
    QueryRun,
    csv_text,
    normalized,
    read_run,
)
from fedscreen.report.format import PROVINCE
from fedscreen.report.html import render_html
from fedscreen.report.model import build_model, member_names
from fedscreen.report.plan import ReportPlan, load_plan
from fedscreen.trust.manifest import Manifest
from fedscreen.trust.scope import scope_contains


@dataclass(frozen=True)
class VerifiedReport:
    """What a report's check covered."""

    statistics: int
    figures: int
    releases: int
    #: SHA-256 (hex) of every release envelope, to find in the coordinator's log
    release_digests: frozenset[str]
    #: SHA-256 (hex) of the province report a city or county report shows beside its
    #: figures (None: none); checked against its own releases only when
    #: ``verify_report(province_dir=...)`` is given that report
    province_sha256: str | None = None
    #: whether that province report was verified too
    province_verified: bool = False


def verify_report(
    directory: Path, *, manifest: Manifest, policy: Policy, province_dir: Path | None = None
) -> VerifiedReport:
    """Recompute the report in ``directory``; VerificationError names what differs.

    A city or county report keeps a copy of the province report it compares with; its
    figures are that report's, checked here only by their SHA-256. ``province_dir``
    (the province report's own directory) verifies that report from its releases too,
    and requires it to be the one copied.
    """
    try:
        model = json.loads((directory / REPORT_FILE).read_text(encoding="utf-8"))
        source = (directory / PLAN_FILE).read_bytes()
        budgets_doc = json.loads((directory / BUDGETS_FILE).read_text(encoding="utf-8"))
        stated_plan = model["plan"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{directory} does not hold a readable report: {exc}") from exc
    if hashlib.sha256(source).hexdigest() != stated_plan.get("sha256"):
        raise VerificationError(f"{PLAN_FILE} is not the plan the report names (SHA-256 differs)")
    try:
        plan = load_plan(directory / PLAN_FILE, policy)
        stated_years = (stated_plan.get("year"), stated_plan.get("previous_year"))
        if (plan.year, plan.previous_year) != stated_years:
            # run with --year: the years the report states are the ones its queries name
            plan = load_plan(
                directory / PLAN_FILE, policy, year=stated_years[0], previous_year=stated_years[1]
            )
    except ConfigError as exc:
        # the plan the report names (its SHA-256 matched) is not a plan: the report is wrong
        raise VerificationError(f"{PLAN_FILE}: {exc}") from None
    stray = sorted(p.name for p in (directory / RELEASES_DIR).glob("*") if p.stem not in plan.asked)
    if stray:
        raise VerificationError(
            f"{RELEASES_DIR}/ holds files the plan does not ask for: {', '.join(stray[:5])}"
        )
    runs = {
        name: read_run(directory / RELEASES_DIR / f"{name}.json", query, manifest=manifest)
        for name, query in plan.asked.items()
    }
    analyst = model.get("analyst")
    for run in runs.values():
        if run.analyst != analyst:
            raise VerificationError(f"query {run.name} was signed by {run.analyst}, not {analyst}")
    try:
        budgets = verify_budgets(
            manifest,
            [(n, e.encode("utf-8")) for n, e in budgets_doc["statements"].items()],
        )
        checks = check_plan(
            plan,
            budgets,
            analyst=str(analyst),
            nodes=list(budgets_doc["nodes"]),
            queries=list(budgets_doc["fresh"]),
        )
        fresh = list(budgets_doc["fresh"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise VerificationError(f"{BUDGETS_FILE} is malformed: {exc!r}") from None
    scope, places = _check_scope(model, runs, manifest, analyst=str(analyst))
    province = _province(directory, model, plan)
    if province_dir is not None:
        if province is None:
            raise VerificationError("the report compares with no province report")
        verify_report(province_dir, manifest=manifest, policy=policy)
        if hashlib.sha256((province_dir / REPORT_FILE).read_bytes()).hexdigest() != (
            province.sha256
        ):
            raise VerificationError(
                f"the report compares with another province report than {province_dir}"
            )
    recomputed = normalized(
        build_model(
            plan,
            {name: run.released for name, run in runs.items()},
            checks,
            fresh,
            names=member_names(manifest),
            analyst=str(analyst),
            places=places,
            scope=scope,
            province=province,
            generated_at=str(model.get("generated_at")),
        )
    )
    # the name the plan file had where it ran is a label, not a figure: it is kept as a copy
    recomputed["plan"]["file"] = stated_plan.get("file")
    _compare(recomputed, model)
    if (directory / "report.csv").read_bytes() != csv_text(model).encode("utf-8"):
        raise VerificationError("report.csv is not the report's figures")
    if (directory / "report.html").read_bytes() != render_html(model).encode("utf-8"):
        raise VerificationError("report.html is not the report rendered")
    figures = sum(len(s["rows"]) for sec in model["sections"] for s in sec["statistics"])
    digests = frozenset(hashlib.sha256(run.release_envelope).hexdigest() for run in runs.values())
    return VerifiedReport(
        len(plan.statistics),
        figures,
        len(runs),
        digests,
        province_sha256=None if province is None else province.sha256,
        province_verified=province_dir is not None,
    )


def _check_scope(
    model: Mapping[str, Any], runs: Mapping[str, QueryRun], manifest: Manifest, *, analyst: str
) -> tuple[str, dict[str, str] | None]:
    """The report's scope and its nodes' places, checked against the manifest.

    The scope must lie within the analyst's own (a province report needs a province
    analyst); in a city or county report, every release must ask the same nodes, none
    outside the scope. The places the report states must be the manifest's
    (None: a report from before places, whose areas came from node ids).
    """
    stated = model.get("scope", {"id": PROVINCE})
    scope = stated.get("id") if isinstance(stated, Mapping) else None
    if not isinstance(scope, str):
        raise VerificationError("the report's scope is not a scope id")
    try:
        area_kind(scope)
    except ConfigError as exc:
        raise VerificationError(str(exc)) from None
    targeted = {tuple(run.released.body["targeted"]) for run in runs.values()}
    nodes = list(next(iter(targeted), ()))
    members = {m.id: m for m in manifest.members if m.role == "node"}
    member = manifest.find(analyst)
    own = member.scope if member is not None else ""
    # every scope, the province's too: a city's analyst's releases relabelled as a
    # province report would otherwise pass for the province's
    if not scope_within(scope, own):
        raise VerificationError(f"{scope} is outside analyst {analyst}'s scope ({own or PROVINCE})")
    if scope != PROVINCE:
        if len(targeted) > 1:
            raise VerificationError(f"the report's releases did not all ask {scope}'s nodes")
        # only that none lies outside: nodes that joined the scope after the report ran
        # were not there to ask (the signed queries name the nodes the analyst asked)
        outside = sorted(
            n for n in nodes if n not in members or not scope_contains(scope, members[n])
        )
        if outside:
            raise VerificationError(
                f"the releases asked nodes outside {scope}: {', '.join(outside)}"
            )
    if "places" not in model:
        return scope, None
    places = node_places(manifest)
    stated_places = model["places"]
    if not isinstance(stated_places, Mapping) or any(
        stated_places.get(n) != places.get(n, PROVINCE) for n in nodes
    ):
        raise VerificationError("the report's node places are not the manifest's")
    return scope, places


def _province(directory: Path, model: Mapping[str, Any], plan: ReportPlan) -> ProvinceReport | None:
    """The province report a city report compared with: its copy, by the stated SHA-256."""
    stated = model.get("province_report")
    if stated is None:
        return None
    try:
        province = ProvinceReport.from_bytes((directory / PROVINCE_COPY).read_bytes())
        listed = model.get("nodes")
        nodes = listed if isinstance(listed, list) else []
        mine = [str(n.get("id")) for n in nodes if isinstance(n, Mapping)]
        province.check_for(plan, mine)
    except (OSError, ConfigError) as exc:
        raise VerificationError(f"{PROVINCE_COPY}: {exc}") from None
    if not isinstance(stated, Mapping) or stated.get("sha256") != province.sha256:
        raise VerificationError(f"{PROVINCE_COPY} is not the province report the report names")
    return province


def _compare(recomputed: Any, reported: Any) -> None:
    """VerificationError naming the first part of the report that is not recomputed."""
    if same_figures(recomputed.get("sections"), reported.get("sections")):
        for key in sorted(set(recomputed) | set(reported)):
            if not same_figures(recomputed.get(key), reported.get(key)):
                raise VerificationError(f"the report's {key!r} is not what its releases give")
        return
    ours = {s["id"]: s for sec in recomputed["sections"] for s in sec["statistics"]}
    theirs = [s.get("id") for sec in reported.get("sections", []) for s in sec["statistics"]]
    if sorted(theirs, key=str) != sorted(ours):
        raise VerificationError("the report's statistics are not the plan's, once each")
    for section in reported["sections"]:
        for stat in section["statistics"]:
            if not same_figures(ours[stat["id"]], stat):
                raise VerificationError(
                    f"statistic {stat['id']}: the report's figures are not what its releases give"
                )
    raise VerificationError("the report's sections are not the plan's")


def releases_logged(report: VerifiedReport, logged: Iterable[str]) -> None:
    """Raise VerificationError unless every release of the report is in the log."""
    missing = report.release_digests - set(logged)
    if missing:
        raise VerificationError(
            f"{len(missing)} of the report's {report.releases} releases are not in the "
            "coordinator's log"
        )
