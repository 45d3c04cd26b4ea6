"""``fedscreen report``: the provincial monitoring report from a plan file.

``report plan PLAN`` prints what each query costs every node and, given the
analyst's home and the coordinator, checks the total against every node's signed
budget statement; it exits 3 if a node cannot pay. ``report run`` does the same
check, refuses before any query runs if it fails, then runs the plan and writes
the report (see ``fedscreen.report.run``); ``report run --include-late`` on a finished
report uses the newest version of each release instead, where late answers made a later
one (``fedscreen.report.late``). ``report verify`` recomputes a written
report from its signed releases and, given an audit bundle, finds every release in
the coordinator's verified log.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fedscreen.audit.bundle import read_bundle
from fedscreen.audit.parallel import in_processes
from fedscreen.audit.verify import verify_bundle
from fedscreen.cli.output import table
from fedscreen.cli.reference import reference_county, reference_truth, true_cells, true_rows
from fedscreen.errors import (
    ENTRY_INVALID,
    UNAFFORDABLE,
    UNTRUSTED,
    AuditFailure,
    BundleError,
    ConfigError,
    VerificationError,
)
from fedscreen.policy import Policy
from fedscreen.policy.default import PROVINCE_FILE, default_policy_dir
from fedscreen.policy.load import load_node_policy, load_policy
from fedscreen.query.spec import QuerySpec
from fedscreen.report.affordable import NodeCheck
from fedscreen.report.late import include_late
from fedscreen.report.plan import ReportPlan, load_plan
from fedscreen.report.produce import check_secure_floor, produce_report, report_targets
from fedscreen.report.run import check_budgets
from fedscreen.report.strategy import (
    PROVINCE_COUNTIES,
    compile_strategy,
    expected,
    measure_toml,
    secure_expected,
    serves_faithfully,
)
from fedscreen.report.verify import releases_logged, verify_report
from fedscreen.trust.identity import load_identity
from fedscreen.trust.manifest import Manifest, load_manifest

#: the county size ``report plan`` predicts accuracy for: issue 13's target county (the
#: demo's counties have 21,000-42,000 students)
DEFAULT_STUDENTS = 20_000
#: a synthetic county is built in a second per 20,000 students: keep it to a minute
MAX_STUDENTS = 1_000_000


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``report plan`` and ``report run``."""
    report = sub.add_parser("report", help="plan and run the provincial monitoring report")
    actions = report.add_subparsers(dest="action", required=True, metavar="ACTION")

    def common(parser: argparse.ArgumentParser, *, connect_required: bool) -> None:
        parser.add_argument("plan", type=Path, help="the report plan (TOML)")
        parser.add_argument(
            "--home", type=Path, required=connect_required, help="the analyst's identity home"
        )
        parser.add_argument(
            "--coordinator", required=connect_required, help="the coordinator's HOST:PORT"
        )
        parser.add_argument("--coordinator-id", help="its member id (default: the only one)")
        parser.add_argument("--year", help="academic year (default: the plan's)")
        parser.add_argument("--nodes", help="comma-separated node ids (default: every active node)")
        parser.add_argument(
            "--scope",
            help="what the report covers: province, city:<4 digits> or county:<6 digits>, "
            "within your own scope in the manifest (default: your scope); every query asks "
            "exactly the active nodes inside it",
        )
        parser.add_argument(
            "--policy",
            type=Path,
            help="the provincial catalogue the plan is checked against "
            f"(default: the shipped {PROVINCE_FILE})",
        )

    plan = actions.add_parser(
        "plan",
        help="what the plan costs each node, against their budgets (runs nothing)",
        description="Without --home/--coordinator: the cost of each query only. With them: "
        "also every node's remaining budget from its signed statement; exit 3 if any "
        "node cannot pay.",
    )
    common(plan, connect_required=False)
    plan.add_argument(
        "--compile",
        type=float,
        metavar="EPS",
        help="compile the plan's queries into measured tables spending EPS per county and "
        "year, print their [measure] section (add it to the plan to use it) and the accuracy",
    )
    plan.add_argument(
        "--students",
        type=int,
        default=DEFAULT_STUDENTS,
        help="the county size the accuracy is predicted for, in students of a synthetic "
        f"county (default {DEFAULT_STUDENTS:,})",
    )
    plan.set_defaults(func=run_plan_command)
    run = actions.add_parser(
        "run",
        help="run the plan through the federation and write the report",
        description="Checks every node's budget first and refuses the plan (exit 3) before "
        "any query runs if one cannot pay. Writes report.html, report.json, report.csv "
        "and releases/ (the signed bytes of every query, release and answer) to --out.",
    )
    common(run, connect_required=True)
    run.add_argument("--out", type=Path, required=True, help="a new directory for the report")
    run.add_argument(
        "--province-report",
        type=Path,
        metavar="DIR",
        help="a city or county report only: the province's published report of the same plan "
        "(verified first); its figures are shown beside this report's, not asked again",
    )
    run.add_argument(
        "--include-late",
        action="store_true",
        help="--out holds a finished report: fetch the newest version of each of its "
        "releases (answers that came late, e.g. by file from an offline node), verify it, "
        "use it where it is a later version and write the report again; asks no node and "
        "charges nothing",
    )
    run.set_defaults(func=run_report_command)
    verify = actions.add_parser(
        "verify",
        help="recompute a report from its signed releases (and find them in the logs)",
        description="Verifies every release in DIR/releases (analyst's query signature, "
        "coordinator's release signature, every node answer, the combination) and recomputes "
        "every figure of DIR/report.json from them and DIR/plan.toml. With --bundle (from "
        "`fedscreen audit export`), also verifies the logs and requires every release to be "
        "in the coordinator's log. Exit 0 valid; 2 a figure, release or log entry is wrong; "
        "3 a log's history is inconsistent; 4 the bundle cannot be trusted.",
    )
    verify.add_argument("dir", type=Path, help="the report directory (from report run)")
    verify.add_argument("--manifest", type=Path, required=True, help="your copy of the manifest")
    verify.add_argument("--bundle", type=Path, help="an audit bundle holding the coordinator's log")
    verify.add_argument(
        "--province-report",
        type=Path,
        help="a city or county report: the province report it compares with, verified from "
        "its own releases and required to be the one it copied",
    )
    verify.add_argument(
        "--policy",
        type=Path,
        help=f"the provincial catalogue (default: the shipped {PROVINCE_FILE})",
    )
    verify.set_defaults(func=run_verify_command)


def _load(args: argparse.Namespace) -> ReportPlan:
    policy_path = args.policy or default_policy_dir() / PROVINCE_FILE
    return load_plan(args.plan, load_policy(policy_path), year=args.year)


def _nodes(args: argparse.Namespace) -> list[str]:
    return [n.strip() for n in (args.nodes or "").split(",") if n.strip()]


def print_costs(plan: ReportPlan) -> None:
    """Each query's ε per node and the years it charges."""
    print(f"plan {plan.name} ({plan.path}, sha256 {plan.sha256[:16]}…), year {plan.year}\n")
    table(
        ["query", "ε per node", "charged to", "used by"],
        [
            [
                q.name,
                "public, exact" if q.public else f"{q.cost:g}",
                ", ".join(q.years) or "nothing",
                ", ".join(plan.statistics_of(q.name)),
            ]
            for q in plan.asked.values()
        ],
    )
    totals = ", ".join(f"ε={c:g} in {y}" for y, c in sorted(plan.cost_by_year().items()))
    print(f"\ntotal per node: {totals or 'nothing'}")


def print_checks(checks: Sequence[NodeCheck]) -> None:
    """Each node's cost against what it has left, and every problem or note."""
    print()
    rows = []
    for check in checks:
        for year in check.years:
            rows.append(
                [
                    check.node_id,
                    "yes" if check.connected else "no",
                    year.year,
                    f"{year.cost:g}",
                    "unknown" if year.left is None else f"{year.left:g}",
                    "unknown" if year.budget is None else f"{year.budget:g}",
                    "REFUSED" if check.problems else "ok",
                ]
            )
    table(["node", "connected", "year", "plan ε", "ε left", "analyst budget", "verdict"], rows)
    for check in checks:
        for line in check.problems:
            print(f"  {check.node_id}: {line}", file=sys.stderr)
        for line in check.notes:
            print(f"  {check.node_id}: note: {line}")


def run_plan_command(args: argparse.Namespace) -> int:
    """``fedscreen report plan``."""
    plan = _load(args)
    print_costs(plan)
    print_secure_accuracy(plan)
    if args.compile is not None or plan.measure is not None:
        print_accuracy(plan, args)
    if args.home is None or args.coordinator is None:
        if args.home is not None or args.coordinator is not None:
            raise ConfigError("give both --home and --coordinator to check the nodes' budgets")
        print("\n(budgets not checked: give --home and --coordinator)")
        return 0
    identity = load_identity(args.home)
    manifest = identity.manifest()
    _, targets = _targets(args, manifest, identity.member_id)
    policy = load_policy(args.policy or default_policy_dir() / PROVINCE_FILE)
    check_secure_floor(plan, policy, manifest, targets)
    checks, _ = check_budgets(
        args.home, args.coordinator, plan, nodes=targets, coordinator_id=args.coordinator_id
    )
    print_checks(checks)
    if any(c.problems for c in checks):
        print("\nthe plan would overspend or be refused: not affordable", file=sys.stderr)
        return UNAFFORDABLE
    print("\nevery node can pay for this plan")
    return 0


def print_accuracy(plan: ReportPlan, args: argparse.Namespace) -> None:
    """The expected accuracy today and measured, for a synthetic county (and, with
    --compile, the compiled [measure] section)."""
    if not 0 < args.students <= MAX_STUDENTS:
        raise ConfigError(f"--students must be between 1 and {MAX_STUDENTS:,}")
    province = args.policy or default_policy_dir() / PROVINCE_FILE
    policy = load_policy(province)
    # the county documents beside the catalogue: no table a county refuses takes with it
    # a query that county answers
    counties = [
        load_node_policy(province, path)
        for path in sorted((province.parent / "counties").glob("*.toml"))
    ]
    years = tuple(sorted({y for q in plan.queries.values() for y in q.years}))
    specs = {n: q.spec for n, q in plan.queries.items()}
    with reference_county(args.students, years) as database:
        reference = reference_truth(database, specs, policy)
        cache: dict[bytes, list[tuple[int, int]]] = {}

        def truth(spec: QuerySpec) -> list[tuple[int, int]]:
            key = spec.canonical()
            if key not in cache:
                cache[key] = true_cells(*true_rows(database, spec, policy))
            return cache[key]

        if args.compile is not None:
            measurements = compile_strategy(
                plan, policy, epsilon=args.compile, reference=reference, counties=counties,
                truth=truth,
            )  # fmt: skip
        else:
            assert plan.measure is not None
            measurements = plan.measure
        unfaithful = [
            (t.name, m)
            for t in measurements.tables
            for m in t.members
            if not serves_faithfully(plan, t, m, truth)
        ]
    for table_name, query in unfaithful:
        # a table drops the rows where one of its attributes is NULL
        print(
            f"warning: table {table_name} does not give what query {query} asked directly "
            "gives in the synthetic county (NULL attributes?): keep it as written",
            file=sys.stderr,
        )
    spent = sum(q.cost for q in plan.queries.values() if plan.year in q.years)
    print(
        f"\nexpected 95% half-width of the query cells each statistic reads (median; a rate "
        f"in percentage points) in a synthetic county of {args.students:,} students:"
    )
    rows = []
    for e in expected(plan, measurements, reference):
        if e.today is None or e.compiled is None:
            # a public or median query, or no such students in the synthetic county
            rows.append([e.statistic, "", "-", "-", ""])
            continue
        rate = plan.queries[plan.statistic(e.statistic).queries[0]].spec.measure.kind == "rate"
        scale, unit = (100.0, "points") if rate else (1.0, "count")
        ratio = f"{e.compiled / e.today:.2f}" if e.today > 0 else ""
        rows.append(
            [e.statistic, unit, f"±{e.today * scale:.3g}", f"±{e.compiled * scale:.3g}", ratio]
        )
    table(
        ["statistic", "unit", f"as written (ε={spent:g})",
         f"measured (ε={measurements.epsilon:g})", "ratio"],
        rows,
    )  # fmt: skip
    if args.compile is not None:
        print("\n# add this to the plan to measure these tables instead of the queries they serve")
        print(measure_toml(measurements), end="")


def print_secure_accuracy(plan: ReportPlan) -> None:
    """The secure statistics' province accuracy: two draws against one per county."""
    rows = [
        [e.statistic, f"{e.epsilon:g}", f"±{e.secure:.3g}", f"±{e.summed:.3g}",
         f"{e.summed / e.secure:.1f}"]
        for e in secure_expected(plan)
    ]  # fmt: skip
    if not rows:
        return
    print(
        "\nsecure statistics (province figures only): expected 95% half-width of a province "
        "count cell — secure aggregation (two noise draws) against the same ε as "
        f"{PROVINCE_COUNTIES} counties' noisy answers summed:"
    )
    table(["statistic", "ε per county", "secure", f"{PROVINCE_COUNTIES} answers", "gain"], rows)


def _targets(args: argparse.Namespace, manifest: Manifest, analyst: str) -> tuple[str, list[str]]:
    """The report's scope and the nodes its queries ask (refused before anything is asked)."""
    return report_targets(manifest, analyst=analyst, scope=args.scope, nodes=_nodes(args))


def run_report_command(args: argparse.Namespace) -> int:
    """``fedscreen report run``."""
    policy = load_policy(args.policy or default_policy_dir() / PROVINCE_FILE)
    plan = load_plan(args.plan, policy, year=args.year)
    print(f"plan {plan.name}: {len(plan.queries)} queries, {len(plan.statistics)} statistics")
    if args.include_late:
        return _include_late(args, plan, policy)
    # the scope is checked, and the province report verified, before anything is asked; a
    # PlanRefused ends the command with its exit code (3) before anything runs
    produced = produce_report(
        args.home,
        args.coordinator,
        plan,
        args.out,
        policy=policy,
        scope=args.scope,
        nodes=_nodes(args),
        province_dir=args.province_report,
        coordinator_id=args.coordinator_id,
    )
    missing = [n["id"] for n in produced.model["nodes"] if n["missing_from"]]
    if missing:
        print(f"nodes missing from some figures: {', '.join(missing)} (see the privacy page)")
    paths = produced.paths
    print(
        f"report: {paths['html']}\n        {paths['json']}, {paths['csv']}, {args.out / 'releases'}"
    )
    return 0


def _include_late(args: argparse.Namespace, plan: ReportPlan, policy: Policy) -> int:
    """``fedscreen report run --include-late``: the report again from later releases."""
    given = [
        flag
        for flag, value in (
            ("--year", args.year),
            ("--nodes", args.nodes),
            ("--scope", args.scope),
            ("--province-report", args.province_report),
        )
        if value
    ]
    if given:
        raise ConfigError(
            f"--include-late keeps the report's own year, nodes and scope: drop {', '.join(given)}"
        )
    print(f"newest release versions for the report in {args.out}:")
    updates = include_late(
        args.home, args.coordinator, plan, args.out, policy=policy,
        coordinator_id=args.coordinator_id,
    )  # fmt: skip
    later = [u for u in updates if u.after != u.before]
    if later:
        print(
            f"{len(later)} of {len(updates)} releases replaced by a later version; report "
            f"written again and verified: {args.out / 'report.html'}"
        )
    else:
        print("no release has a later version")
    return 0


def run_verify_command(args: argparse.Namespace) -> int:
    """``fedscreen report verify``."""
    manifest = load_manifest(args.manifest)
    policy = load_policy(args.policy or default_policy_dir() / PROVINCE_FILE)
    try:
        checked = verify_report(
            args.dir, manifest=manifest, policy=policy, province_dir=args.province_report
        )
    except VerificationError as exc:
        print(f"REPORT INVALID: {exc}", file=sys.stderr)
        return ENTRY_INVALID
    print(
        f"{checked.figures} figures of {checked.statistics} statistics recomputed from "
        f"{checked.releases} verified releases"
    )
    if checked.province_sha256 is not None:
        if checked.province_verified:
            print(f"the province report it compares with verified too ({args.province_report})")
        else:
            print(
                "the province figures shown beside these are the province report's (SHA-256 "
                f"{checked.province_sha256[:16]}…), not verified here: give that report with "
                "--province-report DIR to verify them"
            )
    if args.bundle is not None:
        try:
            logs = verify_bundle(
                read_bundle(args.bundle), manifest, entries=in_processes(os.cpu_count() or 1)
            )
        except AuditFailure as failure:
            print(f"LOG INVALID: {failure.origin}: {failure}", file=sys.stderr)
            return failure.exit_code
        except (BundleError, VerificationError, OSError, ValueError, KeyError) as exc:
            print(f"UNTRUSTED: {exc}", file=sys.stderr)
            return UNTRUSTED
        try:
            releases_logged(checked, {d for log in logs for d in log.release_digests})
        except VerificationError as exc:
            print(f"REPORT INVALID: {exc}", file=sys.stderr)
            return ENTRY_INVALID
        print(f"every release is in the coordinator's log; {len(logs)} logs verified")
    print("VALID")
    return 0
