"""Accuracy of the annual report: today's plan against the compiled strategy (issue 13).

For synthetic counties of each size (``fedscreen.synth``, ingested into a real node
database), runs the annual plan ``--runs`` times with OpenDP noise exactly as a node
adds it (``fedscreen.node.cells.release``) and computes every county figure with the
report's own code (``report.figures``; served queries through ``report.derived``):

* today's plan at its own ε (2.95 per county and year),
* the compiled strategy (``report.strategy``) at ε = 1.0 and at today's ε.

Prints, per statistic, the median 95% half-width over its figures (percentage points
for rates, counts for counts) and the empirical coverage of the stated intervals,
then the issue's three targets, and the accuracy of both strategies against ε. A figure
hidden as "< 10" in a run states no interval there: its half-width is over the runs that
show it, and its coverage is left out (shown only when its noise pushed it up, it would
say nothing about the interval). The truth is the same code on a noise-free release.

    python scripts/bench_report_accuracy.py                  # 5,000 / 20,000 / 50,000, 200 runs
    python scripts/bench_report_accuracy.py --sizes 20000 --runs 50
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedscreen.cli.reference import reference_county, reference_truth, true_cells, true_rows
from fedscreen.node.cells import release
from fedscreen.policy.default import PROVINCE_FILE, default_policy_dir
from fedscreen.policy.load import load_node_policy, load_policy
from fedscreen.protocol.combine import NodeCells, combine
from fedscreen.query.compile import Plan
from fedscreen.report.derived import resolve
from fedscreen.report.figures import Released, statistic_rows
from fedscreen.report.plan import ReportPlan, load_plan
from fedscreen.report.strategy import compile_strategy

COUNTY = "130102"
#: ε at which a "release" is the truth: noise ≠ 0 has probability below e^-50
#: (OpenDP's accuracy computation overflows far above it)
EXACT = 100.0


def _released(plan: Plan, rows: list[Any], epsilon: float, threshold: int) -> Released:
    body = {"query": plan.spec.to_json(), "threshold": threshold}
    node = {**body, **release(plan, rows, epsilon, threshold)}
    kind = plan.spec.measure.kind
    province = combine(
        kind, [NodeCells(COUNTY, node)], threshold=threshold, public=plan.dataset.public
    )
    return Released({**body, "province": province}, {COUNTY: node}, {COUNTY: epsilon})


def _figures(
    report: ReportPlan, released: Mapping[str, Released]
) -> dict[tuple[str, str], tuple[Any, Any, Any]]:
    out = {}
    for stat in report.statistics:
        if _secure(report, stat.queries):
            continue  # province figures only: measured by scripts/bench_secure.py
        for row in statistic_rows(stat, report, released):
            if row["scope"] != COUNTY or row["suppressed"] or row["value"] is None:
                continue
            if row["lower"] is None or row["upper"] is None:
                continue
            out[(stat.id, repr(row["group"]))] = (row["value"], row["lower"], row["upper"])
    return out


def _secure(report: ReportPlan, queries: tuple[str, ...]) -> bool:
    return any(report.queries[q].spec.secure for q in queries if q in report.queries)


class Setup:
    """One county: every query's and table's exact rows, and the truth of every figure."""

    def __init__(self, report: ReportPlan, policy: Any, database: Any, counties: Any) -> None:
        self.report, self.policy, self.counties = report, policy, counties
        self.threshold = policy.limits.publication_threshold
        self.database = database
        self.rows = {
            n: true_rows(database, q.spec, policy)
            for n, q in report.queries.items()
            if not q.spec.secure  # no county figure: see _figures
        }
        self.truth = _figures(
            report, {n: _released(p, r, EXACT, 1) for n, (p, r) in self.rows.items()}
        )
        self.reference = reference_truth(
            database, {n: q.spec for n, q in report.queries.items()}, policy
        )
        self.plans: dict[float, ReportPlan] = {}

    def compiled(self, epsilon: float) -> ReportPlan:
        """The plan compiled for this county at ``epsilon``."""
        if epsilon not in self.plans:
            measure = compile_strategy(
                self.report, self.policy, epsilon=epsilon, reference=self.reference,
                counties=self.counties, truth=self._truth,
            )  # fmt: skip
            self.plans[epsilon] = replace(self.report, measure=measure)
        return self.plans[epsilon]

    def run(
        self, plan: ReportPlan | None, scale: float = 1.0
    ) -> dict[tuple[str, str], tuple[Any, Any, Any]]:
        """One run: every query as written (None; each query's ε times ``scale``), or what
        ``plan`` asks, through the report's own code (``report.derived.resolve``,
        ``report.figures``)."""
        if plan is None:
            asked = {n: _released(*self.rows[n], q.cost * scale or EXACT, self.threshold)
                     for n, q in self.report.queries.items() if not q.spec.secure}  # fmt: skip
            return _figures(self.report, asked)
        asked = {}
        for name, query in plan.asked.items():
            if query.spec.secure:
                continue
            rows = self.rows.get(name) or self._rows(name, query.spec)
            asked[name] = _released(*rows, query.cost or EXACT, self.threshold)
        return _figures(plan, resolve(plan, asked))

    def _truth(self, spec: Any) -> list[tuple[int, int]]:
        return true_cells(*true_rows(self.database, spec, self.policy))

    def _rows(self, name: str, spec: Any) -> tuple[Plan, list[Any]]:
        self.rows[name] = true_rows(self.database, spec, self.policy)
        return self.rows[name]


def _summarise(
    truth: Mapping[Any, Any], runs: list[dict[Any, Any]]
) -> dict[Any, tuple[float, float | None]]:
    """Figure -> (median half-width over the runs that state it, coverage). The coverage is
    None for a figure hidden as "< k" in some run: shown only when its noise pushed it up,
    its coverage among the runs that show it says nothing about its interval."""
    out: dict[Any, tuple[float, float | None]] = {}
    for key, (true_value, _, _) in truth.items():
        halves, hits = [], 0
        for run in runs:
            if key not in run:
                continue
            _, low, high = run[key]
            halves.append((high - low) / 2)
            hits += low - 1e-12 <= true_value <= high + 1e-12
        if halves and max(halves) > 0:
            shown_always = len(halves) == len(runs)
            out[key] = (statistics.median(halves), hits / len(halves) if shown_always else None)
    return out


def _covered(values: Any) -> list[float]:
    return [c for _, c in values if c is not None]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="5000,20000,50000")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--epsilon", type=float, default=1.0, help="the compiled strategy's ε")
    parser.add_argument("--plan", default="policies/reports/annual.toml")
    parser.add_argument(
        "--curve", default="0.5,1,1.5,2,2.5,2.95", help="ε values for the accuracy curve"
    )
    parser.add_argument("--curve-runs", type=int, default=50)
    args = parser.parse_args()
    policy = load_policy(default_policy_dir() / PROVINCE_FILE)
    report = load_plan(Path(args.plan), policy)
    # the plan as written: every query asked at its own ε (what its [measure] replaces)
    today_eps = round(sum(q.cost for q in report.queries.values() if report.year in q.years), 6)
    counties = [
        load_node_policy(default_policy_dir() / PROVINCE_FILE, path)
        for path in sorted((default_policy_dir() / "counties").glob("*.toml"))
    ]
    curve = [float(e) for e in args.curve.split(",") if e]
    for size in (int(s) for s in args.sizes.split(",")):
        started = time.monotonic()
        years = tuple(sorted({y for q in report.queries.values() for y in q.years}))
        with reference_county(size, years) as database:
            setup = Setup(report, policy, database, counties)
            plans: dict[str, ReportPlan | None] = {f"as written ε={today_eps:g}": None}
            if report.measure is not None:
                plans[f"plan's tables ε={report.measure.epsilon:g}"] = report
            plans[f"compiled ε={args.epsilon:g}"] = setup.compiled(args.epsilon)
            plans[f"compiled ε={today_eps:g}"] = setup.compiled(today_eps)
            results = {
                label: _summarise(setup.truth, [setup.run(p) for _ in range(args.runs)])
                for label, p in plans.items()
            }
            _print(size, report, results)
            if curve:
                _curve(setup, results[next(iter(plans))], today_eps, curve, args.curve_runs)
        print(f"  ({args.runs} runs per strategy, {time.monotonic() - started:.0f} s)\n")


def _curve(
    setup: Setup, today: Mapping[Any, Any], total: float, epsilons: list[float], runs: int
) -> None:
    """Both strategies' accuracy against ε: the plan as written with every query's ε scaled
    to the total, and the tables compiled for the total; each as the median over figures
    of its half-width relative to the plan as written at its own total."""
    print("\naccuracy against ε per county and year (median over figures of the half-width")
    print(f"relative to the plan as written at ε={total:g}; PHQ-9 ≥ 10 worst cell in points):")
    print(
        f"{'ε':>6} {'as written':>11} {'PHQ-9 worst':>12} {'measured':>9} {'PHQ-9 worst':>12}"
        f" {'coverage':>9}"
    )
    for epsilon in epsilons:
        line = f"{epsilon:>6g}"
        covs = []
        for plan, scale in ((None, epsilon / total), (setup.compiled(epsilon), 1.0)):
            result = _summarise(setup.truth, [setup.run(plan, scale) for _ in range(runs)])
            ratios = _ratios(result, today, None)
            phq = [h * 100 for (s, _), (h, _) in result.items() if s == "phq9_positive"]
            line += f" {statistics.median(ratios):>11.2f} {max(phq):>12.2f}"
            covs = _covered(result.values())
        print(line + f" {statistics.median(covs):>9.1%}")


def _print(size: int, report: ReportPlan, results: dict[str, Any]) -> None:
    """Per statistic: each strategy's median half-width and mean coverage, and the ratio of
    the second strategy's to the first's (the plan's tables / the plan as written)."""
    labels = list(results)
    today = results[labels[0]]
    print(f"\n=== county of {size:,} students ===")
    head = f"{'statistic':<24} {'unit':<6}" + "".join(f" {lab:>22} {'cov':>6}" for lab in labels)
    print(head + "  ratio")
    for stat in report.statistics:
        if not any(s == stat.id for s, _ in today):
            continue
        scale = 100 if stat.unit in ("percent", "points") else 1
        line = f"{stat.id:<24} {('pp' if scale == 100 else stat.unit):<6}"
        for lab in labels:
            figs = [v for (s, _), v in results[lab].items() if s == stat.id]
            covs = _covered(figs)
            if figs:
                hw = statistics.median(h for h, _ in figs) * scale
                cov = f"{statistics.mean(covs):>6.1%}" if covs else f"{'-':>6}"
                line += f" {hw:>22.3g} {cov}"
            else:
                line += f" {'-':>22} {'-':>6}"
        mine = _ratios(results[labels[1]], today, stat.id)
        print(line + (f"  {statistics.median(mine):.2f}" if mine else "  -"))
    for lab in labels[1:]:
        result = results[lab]
        phq = [h * 100 for (s, _), (h, _) in result.items() if s == "phq9_positive"]
        ratios = _ratios(result, today, None)
        covs = _covered(result.values())
        print(
            f"{lab}: PHQ-9 ≥ 10 by grade band × sex worst ±{max(phq):.2f} pp, median"
            f" ±{statistics.median(phq):.2f} (target ≤ 2); median half-width ratio to as"
            f" written over {len(ratios)} figures {statistics.median(ratios):.2f} (target ≤ 1);"
            f" coverage {min(covs):.0%}–{max(covs):.0%}, median {statistics.median(covs):.1%}"
            " (target 94–96%)"
        )


def _ratios(result: Mapping[Any, Any], today: Mapping[Any, Any], stat: str | None) -> list[float]:
    return [
        result[k][0] / today[k][0]
        for k in today
        if (stat is None or k[0] == stat) and k in result and today[k][0] > 0
    ]


if __name__ == "__main__":
    main()
