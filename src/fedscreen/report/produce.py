"""A report end to end, as ``fedscreen report run`` and the demo make it.

The scope is checked and the province report to compare with is verified before
anything is asked; then the plan runs (``report.run``: budgets, then each query,
every release verified and kept), and the model and its files are written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedscreen.errors import ConfigError, PlanRefused, VerificationError
from fedscreen.policy import Policy, secure_answerers
from fedscreen.report.areas import node_places
from fedscreen.report.compare import ProvinceReport
from fedscreen.report.files import REPORT_FILE, write_report
from fedscreen.report.format import PROVINCE
from fedscreen.report.model import build_model, member_names
from fedscreen.report.plan import ReportPlan
from fedscreen.report.run import run_plan, scope_nodes
from fedscreen.report.verify import verify_report
from fedscreen.trust.identity import load_identity
from fedscreen.trust.manifest import Manifest

__all__ = [
    "Produced",
    "check_secure_floor",
    "produce_report",
    "province_report",
    "report_targets",
]


@dataclass(frozen=True)
class Produced:
    """A written report."""

    scope: str
    #: the nodes every query asked
    nodes: list[str]
    model: dict[str, Any]
    #: "html", "json", "csv" -> the files written
    paths: dict[str, Path]


def report_targets(
    manifest: Manifest, *, analyst: str, scope: str | None, nodes: Sequence[str] = ()
) -> tuple[str, list[str]]:
    """The report's scope (None: the analyst's own) and the nodes its queries ask;
    ConfigError before anything is asked (``nodes`` narrows a province report only)."""
    twice = sorted({n for n in nodes if list(nodes).count(n) > 1})
    if twice:
        raise ConfigError(f"--nodes names {', '.join(twice[:10])} more than once")
    wanted, targets = scope_nodes(manifest, analyst=analyst, scope=scope)
    if nodes:
        if wanted != PROVINCE:
            raise ConfigError(f"--nodes is for a province report; a {wanted} report asks its nodes")
        return wanted, list(nodes)
    return wanted, targets


def check_secure_floor(
    plan: ReportPlan, policy: Policy, manifest: Manifest, targets: Sequence[str]
) -> None:
    """PlanRefused, before anything is asked, if the plan has secure queries and fewer
    than ``min_nodes`` of ``targets`` can answer one (``policy.secure_answerers``, the
    coordinator's floor too): it would refuse each after the plain queries were charged."""
    secure = [name for name, query in plan.asked.items() if query.secure]
    if not secure:
        return
    levels = {m.id: m.level for m in manifest.members if m.role == "node"}
    # offline nodes answer by file, long after the aggregators' one round
    able = secure_answerers(levels, [n for n in targets if n not in manifest.offline])
    if len(able) < policy.secure.min_nodes:
        raise PlanRefused(
            f"the plan's secure queries ({', '.join(secure[:4])}"
            f"{' …' if len(secure) > 4 else ''}) need at least {policy.secure.min_nodes} "
            f"nodes that answer secure queries; these {len(targets)} nodes have "
            f"{len(able)}: use a plan without them for this scope (nothing was asked)"
        )


def province_report(
    directory: Path,
    plan: ReportPlan,
    manifest: Manifest,
    policy: Policy,
    nodes: Sequence[str] = (),
) -> ProvinceReport:
    """The province's published report, verified and checked to be of ``plan`` and to
    have asked every one of ``nodes``."""
    try:
        verify_report(directory, manifest=manifest, policy=policy)
    except VerificationError as exc:
        raise ConfigError(f"the province report in {directory} does not verify: {exc}") from None
    province = ProvinceReport.from_bytes((directory / REPORT_FILE).read_bytes())
    province.check_for(plan, nodes)
    return province


def produce_report(
    home: Path,
    coordinator: str,
    plan: ReportPlan,
    out: Path,
    *,
    policy: Policy,
    scope: str | None = None,
    nodes: Sequence[str] = (),
    province_dir: Path | None = None,
    coordinator_id: str | None = None,
    say: Callable[[str], None] = print,
) -> Produced:
    """Run ``plan`` as the analyst in ``home`` over ``scope`` (None: the analyst's own) and
    write the report to ``out``.

    ``nodes`` narrows a province report to some nodes; ``province_dir`` (a city or
    county report) is the province's published report to show beside its figures.
    ConfigError before anything is asked for a scope outside the analyst's, or a
    province report that does not verify; PlanRefused if a node cannot pay.
    """
    manifest = load_identity(home).manifest()
    analyst = load_identity(home).member_id
    wanted, targets = report_targets(manifest, analyst=analyst, scope=scope, nodes=nodes)
    check_secure_floor(plan, policy, manifest, targets)
    province = None
    if province_dir is not None:
        if wanted == PROVINCE:
            raise ConfigError("--province-report is for a city or county report (give --scope)")
        province = province_report(province_dir, plan, manifest, policy, targets)
    if wanted != PROVINCE:
        say(f"scope {wanted}: {len(targets)} nodes ({', '.join(targets)})")
    outcome = run_plan(
        home, coordinator, plan, out, nodes=targets, coordinator_id=coordinator_id, say=say
    )
    model = build_model(
        plan,
        {name: run.released for name, run in outcome.runs.items()},
        outcome.checks,
        outcome.fresh,
        names=member_names(manifest),
        analyst=analyst,
        places=node_places(manifest),
        scope=wanted,
        province=province,
    )
    paths = write_report(out, plan, model, province=province)
    return Produced(wanted, list(targets), model, paths)
