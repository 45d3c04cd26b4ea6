"""Accuracy of the annual report: today's plan against the compiled strategy (issue 13).

For synthetic counties of each size (``fedscreen.synth``, ingested into a real node
database), runs the annual plan ``--runs`` times with OpenDP noise exactly as a node
adds it (``fedscreen.node.cells.release``) and computes every county figure with the
report's own code (``report.figures``; served queries through ``report.derived``):

* today's plan at its own ε (2.95 per county and year),
* the compiled strategy (``report.strategy``) at ε = 1.0 and at today's ε.

Prints, per statistic, the median 95% half-width over its figures (percentage points
for rates, counts for counts) and the empirical coverage of the stated intervals,
then the issue's three targets. Figures suppressed as "< 10" in a run are left out of
that run (they state no interval). The truth is the same code on a noise-free release.

    python scripts/bench_report_accuracy.py                  # 5,000 / 20,000 / 50,000, 200 runs
    python scripts/bench_report_accuracy.py --sizes 20000 --runs 50
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedscreen.cli.reference import reference_county, reference_truth, true_rows
from fedscreen.node.cells import release
from fedscreen.policy.default import PROVINCE_FILE, default_policy_dir
from fedscreen.policy.load import load_policy
from fedscreen.protocol.combine import NodeCells, combine
from fedscreen.query.compile import Plan, compile_query
from fedscreen.report.derived import Derived, Measured
from fedscreen.report.figures import Released, statistic_rows
from fedscreen.report.plan import ReportPlan, load_plan
from fedscreen.report.strategy import Strategy, compile_strategy

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
        for row in statistic_rows(stat, report, released):
            if row["scope"] != COUNTY or row["suppressed"] or row["value"] is None:
                continue
            if row["lower"] is None or row["upper"] is None:
                continue
            out[(stat.id, repr(row["group"]))] = (row["value"], row["lower"], row["upper"])
    return out


class Setup:
    """One county: the compiled queries and tables with their exact rows."""

    def __init__(self, report: ReportPlan, policy: Any, database: Any) -> None:
        self.report, self.policy = report, policy
        self.threshold = policy.limits.publication_threshold
        self.rows = {n: true_rows(database, q.spec, policy) for n, q in report.queries.items()}
        self.truth = _figures(
            report, {n: _released(p, r, EXACT, 1) for n, (p, r) in self.rows.items()}
        )
        reference = reference_truth(
            database, {n: q.spec for n, q in report.queries.items()}, policy
        )
        self.strategies: dict[float, Strategy] = {}
        self.table_rows: dict[str, tuple[Plan, list[Any]]] = {}
        self.database, self.reference = database, reference

    def strategy(self, epsilon: float) -> Strategy:
        if epsilon not in self.strategies:
            strategy = compile_strategy(
                self.report, self.policy, epsilon=epsilon, reference=self.reference
            )
            for table in strategy.tables:
                if table.name not in self.table_rows:
                    self.table_rows[table.name] = true_rows(
                        self.database, table.spec(), self.policy
                    )
            self.strategies[epsilon] = strategy
        return self.strategies[epsilon]

    def today(self) -> dict[tuple[str, str], tuple[Any, Any, Any]]:
        released = {
            n: _released(p, r, self.report.queries[n].cost or EXACT, self.threshold)
            for n, (p, r) in self.rows.items()
        }
        return _figures(self.report, released)

    def compiled(self, epsilon: float) -> dict[tuple[str, str], tuple[Any, Any, Any]]:
        strategy = self.strategy(epsilon)
        released: dict[str, Released] = {}
        for table in strategy.tables:
            plan, rows = self.table_rows[table.name]
            measured = Measured(table, _released(plan, rows, table.epsilon, self.threshold))
            for name in table.members:
                spec = self.report.queries[name].spec
                released[name] = Derived.of(spec, measured, compile_query(spec, self.policy).cells)
        for name, (plan, rows) in self.rows.items():
            if name not in released:
                released[name] = _released(
                    plan, rows, self.report.queries[name].cost or EXACT, self.threshold
                )
        return _figures(self.report, released)


def _summarise(
    truth: Mapping[Any, Any], runs: list[dict[Any, Any]]
) -> dict[Any, tuple[float, float]]:
    """Figure -> (median half-width, coverage) over the runs that state it."""
    out = {}
    for key, (true_value, _, _) in truth.items():
        halves, hits = [], 0
        for run in runs:
            if key not in run:
                continue
            _, low, high = run[key]
            halves.append((high - low) / 2)
            hits += low - 1e-12 <= true_value <= high + 1e-12
        if halves and max(halves) > 0:
            out[key] = (statistics.median(halves), hits / len(halves))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="5000,20000,50000")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--epsilon", type=float, default=1.0, help="the compiled strategy's ε")
    parser.add_argument("--plan", default="policies/reports/annual.toml")
    args = parser.parse_args()
    policy = load_policy(default_policy_dir() / PROVINCE_FILE)
    report = load_plan(Path(args.plan), policy)
    today_eps = report.cost_by_year()[report.year]
    for size in (int(s) for s in args.sizes.split(",")):
        started = time.monotonic()
        years = tuple(sorted({y for q in report.queries.values() for y in q.years}))
        with reference_county(size, years) as database:
            setup = Setup(report, policy, database)
            labels = {
                f"today ε={today_eps:g}": None,
                f"compiled ε={args.epsilon:g}": args.epsilon,
                f"compiled ε={today_eps:g}": today_eps,
            }
            results = {}
            for label, epsilon in labels.items():
                runs = [
                    setup.today() if epsilon is None else setup.compiled(epsilon)
                    for _ in range(args.runs)
                ]
                results[label] = _summarise(setup.truth, runs)
            _print(size, report, results, setup, args.epsilon)
        print(f"  ({args.runs} runs per strategy, {time.monotonic() - started:.0f} s)\n")


def _print(
    size: int, report: ReportPlan, results: dict[str, Any], setup: Setup, epsilon: float
) -> None:
    labels = list(results)
    print(f"\n=== county of {size:,} students ===")
    head = f"{'statistic':<24} {'unit':<7}" + "".join(f" {lab:>17} {'cov':>5}" for lab in labels)
    print(head + "  new/today")
    ratios: list[float] = []
    for stat in report.statistics:
        cells = []
        for lab in labels:
            figs = [v for (s, _), v in results[lab].items() if s == stat.id]
            cells.append(figs)
        if not cells[0]:
            continue
        scale = 100 if stat.unit in ("percent", "points") else 1
        line = f"{stat.id:<24} {('pp' if scale == 100 else stat.unit):<7}"
        for figs in cells:
            if figs:
                hw = statistics.median(h for h, _ in figs) * scale
                cov = statistics.mean(c for _, c in figs)
                line += f" {hw:>17.3g} {cov:>5.1%}"
            else:
                line += f" {'-':>17} {'-':>5}"
        for key in results[labels[0]]:
            if key[0] == stat.id and key in results[labels[1]]:
                ratios.append(results[labels[1]][key][0] / results[labels[0]][key][0])
        mine = [
            results[labels[1]][k][0] / results[labels[0]][k][0]
            for k in results[labels[0]]
            if k[0] == stat.id and k in results[labels[1]]
        ]
        line += f"  {statistics.median(mine):.2f}" if mine else "  -"
        print(line)
    phq = [h * 100 for (s, _), (h, _) in results[labels[1]].items() if s == "phq9_positive"]
    covs = [c for lab in labels[1:] for (h, c) in results[lab].values()]
    print(
        f"target: PHQ-9 ≥ 10 by grade band × sex at ε={epsilon:g}: worst ±{max(phq):.2f} pp,"
        f" median ±{statistics.median(phq):.2f} pp (≤ 2)"
    )
    print(
        f"target: median over {len(ratios)} figures of new/today half-width:"
        f" {statistics.median(ratios):.2f} (≤ 1)"
    )
    print(
        f"target: coverage of the compiled figures: {min(covs):.1%}–{max(covs):.1%},"
        f" median {statistics.median(covs):.1%} (94–96%)"
    )


if __name__ == "__main__":
    main()
