"""The report model (``report.json``): a pure function of the plan, the verified releases
and the budget checks, so that ``report verify`` recomputes all of it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from fedscreen.report.affordable import NodeCheck
from fedscreen.report.areas import (
    area_kind,
    report_areas,
    scope_name,
    scope_order,
    universities,
)
from fedscreen.report.compare import ProvinceReport
from fedscreen.report.derived import disagreements, resolve
from fedscreen.report.figures import dims, statistic_rows
from fedscreen.report.format import PROVINCE
from fedscreen.report.plan import ReportPlan, Statistic
from fedscreen.report.released import Released
from fedscreen.report.versions import release_versions
from fedscreen.trust.manifest import Manifest

__all__ = [
    "MECHANISM",
    "REPORT_VERSION",
    "UNIT_OF_PRIVACY",
    "UNIVERSITIES_SECTION",
    "build_model",
    "member_names",
]

REPORT_VERSION: Final = 1
UNIT_OF_PRIVACY: Final = "one student in one academic year"
MECHANISM: Final = (
    "Pure ε-differential privacy, applied by each county's node before anything leaves "
    "it: counts and sums get discrete Laplace noise, rates and means are ratios of two "
    "noisy counts from a split ε, medians are chosen by the exponential mechanism "
    "(all OpenDP samplers). The provincial figures and everything in this report are "
    "computed from those noisy answers only."
)
#: the plan section whose statistics show each university (DOMAIN's statistic 8): its node
#: rows are the university nodes only, when the report has any
UNIVERSITIES_SECTION: Final = "universities"


def build_model(
    plan: ReportPlan,
    released: Mapping[str, Released],
    checks: Sequence[NodeCheck],
    fresh: Collection[str],
    *,
    names: Mapping[str, str],
    analyst: str,
    places: Mapping[str, str] | None = None,
    scope: str = PROVINCE,
    province: ProvinceReport | None = None,
    generated_at: str | None = None,
) -> dict[str, Any]:
    """The report model (``report.json``; the HTML and CSV are rendered from it).

    A function of the verified releases, the checks made from the signed budget
    statements, the plan, the nodes' places (node id -> place, ``areas.node_places``;
    None: placed by their ids, as manifests before places), the report's ``scope`` and
    the province's published report it is compared with, so ``report verify`` can
    recompute all of it. A city or county report's top row is that scope's total (the
    releases combine exactly its nodes), labelled with the scope's id.
    """
    asked = released
    # a measured table's release serves its queries: the statistics read them by name
    released = resolve(plan, asked)
    first = next(iter(asked.values())).body
    targeted: list[str] = first["targeted"]
    kind = area_kind(scope)
    places = dict(places) if places is not None else _places_by_id(targeted)
    # city rows where the report spans several cities (DOMAIN: "city level where county
    # cells are small"), county rows where a county has school nodes too
    areas = report_areas(places, targeted, scope=scope)
    unis = universities(places, targeted)
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
                # a served figure is estimated from every table of its population
                "epsilon": sum(
                    plan.asked[src].cost
                    for src in dict.fromkeys(src for q in stat.queries for src in plan.sources(q))
                ),
                "public": all(plan.queries[q].public for q in stat.queries),
                "queries": [released[q].body["query_id"] for q in stat.queries],
                "missing": sorted(missing),
                "rows": _rows(stat, plan, released, areas, scope=scope, universities=unis),
                **_secure(stat.queries, released),
                **({} if province is None else province.comparison(stat.id)),
            }
        )
    spent = _spent(plan, asked, checks, fresh)
    top = scope_name(scope, names)
    return {
        "version": REPORT_VERSION,
        "title": f"{plan.title} {plan.year}" + ("" if kind == PROVINCE else f" — {top}"),
        "scope": {"id": scope, "kind": kind, "name": top, "nodes": list(targeted)},
        # what the areas were built from: each targeted node's place in the manifest
        "places": {n: places.get(n, PROVINCE) for n in targeted},
        "scopes": scope_order(places, targeted, areas),
        "universities": unis,
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
                "asked": len(asked),
                "answered": sum(node in r.node_bodies for r in asked.values()),
                "missing_from": missing_from.get(node, []),
            }
            for node in targeted
        ],
        "areas": [
            {"id": area, "kind": area_kind(area), "name": scope_name(area, names), "nodes": nodes}
            for area, nodes in areas.items()
        ],
        "privacy": {
            "unit": UNIT_OF_PRIVACY,
            "mechanism": MECHANISM,
            "threshold": int(first["threshold"]),
            "spent": spent,
            "missing": missing_rows,
            **_secure_page(plan, released, names),
        },
        "sections": [
            {"id": sid, "title": title, "statistics": sections[sid]} for sid, title in plan.sections
        ],
        "releases": {name: r.body["query_id"] for name, r in asked.items()},
        # the version of each release used (a later one adds answers that came late)
        "release_versions": release_versions({name: r.body for name, r in asked.items()}),
        **({} if plan.measure is None else {"measure": _measure(plan, released)}),
        **({} if province is None else {"province_report": province.summary()}),
    }


def _places_by_id(nodes: Sequence[str]) -> dict[str, str]:
    """Places of nodes a manifest without places names: a six-digit id is a county."""
    return {n: f"county:{n}" if len(n) == 6 and n.isdigit() else PROVINCE for n in nodes}


def _rows(
    stat: Statistic,
    plan: ReportPlan,
    released: Mapping[str, Released],
    areas: Mapping[str, Sequence[str]],
    *,
    scope: str,
    universities: Sequence[str],
) -> list[dict[str, Any]]:
    """A statistic's rows: the top row labelled with the report's scope; in the
    universities section, the universities' own rows (counties hold no freshmen)."""
    rows = statistic_rows(stat, plan, released, areas)
    if stat.section == UNIVERSITIES_SECTION and universities:
        keep = {PROVINCE, *universities}
        rows = [r for r in rows if r["scope"] in keep]
    if scope != PROVINCE:
        for row in rows:
            if row["scope"] == PROVINCE:
                row["scope"] = scope
    return rows


def _measure(plan: ReportPlan, released: Mapping[str, Released]) -> dict[str, Any]:
    """The measured tables, for the privacy page: ε per county and year, what each serves,
    and the counties whose tables disagree beyond their noise."""
    assert plan.measure is not None
    return {
        "disagreeing": disagreements(released),
        "epsilon": plan.measure.epsilon,
        "spent": round(plan.cost_by_year().get(plan.year, 0.0), 6),
        "tables": [
            {
                "name": t.name,
                "attributes": list(t.attributes),
                "cells": len(t.cells),
                "epsilon": t.epsilon,
                "serves": list(t.members),
            }
            for t in plan.measure.tables
        ],
    }


def _secure(queries: Sequence[str], released: Mapping[str, Released]) -> dict[str, Any]:
    """A statistic's ``secure`` entry (none unless a query it reads is secure): its two
    aggregators and, if a release states no figure, why."""
    secure = [released[q] for q in queries if released[q].secure]
    if not secure:
        return {}
    failure = next((r.failure for r in secure if r.failure is not None), None)
    return {"secure": {"aggregators": secure[0].aggregators, "failure": failure}}


def _secure_page(
    plan: ReportPlan, released: Mapping[str, Released], names: Mapping[str, str]
) -> dict[str, Any]:
    """The privacy page's ``secure`` entry: the two aggregators (by name) and the
    statistics whose figures came from secure aggregation (none: no entry)."""
    stats = [s for s in plan.statistics if any(released[q].secure for q in s.queries)]
    if not stats:
        return {}
    aggregators = next(released[q].aggregators for q in stats[0].queries if released[q].secure)
    return {
        "secure": {
            "aggregators": [{"id": a, "name": names.get(a, a)} for a in aggregators],
            "statistics": [s.id for s in stats],
        }
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
            for year in plan.asked[name].years:
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
