"""``fedscreen node ...``: commands for a county node's operator."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fedscreen._util.sqlite import transaction
from fedscreen.cli.nodeserve import add_serve_parser
from fedscreen.cli.output import Progress, table
from fedscreen.cli.sqltext import add_sql_arguments, read_sql
from fedscreen.node import ledger, store
from fedscreen.node.engine import QueryRequest, answer_query, now
from fedscreen.node.home import NodeConfig, check_placement, init_home, load_config
from fedscreen.node.ingest import ingest_paths
from fedscreen.node.offline import answer_outbox, file_link
from fedscreen.node.reader import ENCODINGS
from fedscreen.node.rollback import MAX_REASON_CHARS, diagnose, guarded, recover, sync_checkpoint
from fedscreen.node.status import NodeStatus, node_status, read_link
from fedscreen.policy import NODE_KINDS
from fedscreen.protocol.budget import from_micro, to_micro
from fedscreen.protocol.offline import MAX_FILE_BYTES
from fedscreen.protocol.query import shown_query_id
from fedscreen.trust.certs import read_public_file
from fedscreen.trust.identity import load_identity


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``node`` and its subcommands."""
    node = sub.add_parser("node", help="run a county (or school) node")
    node_sub = node.add_subparsers(dest="node_command", required=True, metavar="SUBCOMMAND")

    init = node_sub.add_parser("init", help="create a node home (config, database, secret)")
    init.add_argument("--home", type=Path, required=True, help="directory to create")
    init.add_argument("--node-id", required=True, help="node id, e.g. the county code 130102")
    init.add_argument("--name", required=True, help="display name, e.g. 长安区")
    init.add_argument(
        "--kind",
        choices=NODE_KINDS,
        default="county",
        help="county (the default); university (id: its own code, e.g. 10075; place: the "
        "province); school (one school under its county's rules)",
    )
    init.add_argument(
        "--county",
        help="county code of the records (a county: default the node id; a university: "
        "where its campus is registered; a school: its county; required for both)",
    )
    init.add_argument(
        "--school",
        help="a school or university node: the school_id its rows carry (default: the node id)",
    )
    init.set_defaults(func=run_init)

    ingest = node_sub.add_parser(
        "ingest",
        help="load screening exports and school tables (CSV or XLSX; files or directories)",
        description="Each file loads completely or not at all. Loading a file again changes "
        "nothing; a newer export for a school and year replaces the earlier one.",
    )
    ingest.add_argument("--home", type=Path, required=True)
    ingest.add_argument("--encoding", choices=ENCODINGS, help="CSV encoding (default: detect)")
    ingest.add_argument("paths", type=Path, nargs="+", metavar="PATH")
    ingest.set_defaults(func=run_ingest)

    status = node_sub.add_parser("status", help="what the node holds (aggregate counts only)")
    status.add_argument("--home", type=Path, required=True)
    status.set_defaults(func=run_status)

    query = node_sub.add_parser(
        "query",
        help="answer a query locally with differential privacy (charges the budget)",
        description="SELECT <group columns>, COUNT(*) | SUM(col) | AVG(col) | RATE(<condition>) | "
        "QUANTILE(col, q) | HISTOGRAM(col) FROM screenings [WHERE ...] [GROUP BY ...]",
    )
    query.add_argument("--home", type=Path, required=True)
    query.add_argument("--analyst", required=True, help="who is asking (charged to their share)")
    cost = query.add_mutually_exclusive_group(required=True)
    cost.add_argument("--epsilon", type=float, help="privacy cost ε of this query")
    cost.add_argument("--accuracy", type=float, help="95%% half-width wanted per noisy count")
    query.add_argument("--format", choices=("table", "json"), default="table")
    add_sql_arguments(query)
    query.set_defaults(func=run_query)

    approvals = node_sub.add_parser("approvals", help="queries waiting for the operator")
    approvals.add_argument("--home", type=Path, required=True)
    approvals.set_defaults(func=run_approvals)
    for verb in ("approve", "reject"):
        decide = node_sub.add_parser(verb, help=f"{verb} a pending query (see approvals)")
        decide.add_argument("--home", type=Path, required=True)
        decide.add_argument("--id", type=int, required=True, help="approval request number")
        decide.set_defaults(func=run_decide, approve=verb == "approve")

    budget = node_sub.add_parser(
        "budget", help="privacy budget spent and left, per year and analyst"
    )
    budget.add_argument("--home", type=Path, required=True)
    budget.set_defaults(func=run_budget)

    rec = node_sub.add_parser(
        "recover",
        help="record in the log that the database was restored from a backup, then run again",
        description="After a restore the node refuses to run: its database's log is behind "
        "the checkpoint it saved. This logs the rollback (both checkpoints and your reason), "
        "charges again the ε spent after the backup (never given back) and re-baselines.",
    )
    rec.add_argument("--home", type=Path, required=True)
    rec.add_argument(
        "--reason", required=True, help=f"why (logged; at most {MAX_REASON_CHARS} characters)"
    )
    rec.add_argument(
        "--accept-lost-budget",
        action="store_true",
        help="recover even though spent.json is missing or older than the saved checkpoint: "
        "ε spent after the backup may be given back (the rollback entry says so)",
    )
    rec.set_defaults(func=run_recover)

    carried = node_sub.add_parser(
        "answer-file",
        help="answer the queries of an outbox file carried from the coordinator (offline node)",
        description="Verifies the outbox (the coordinator's signature, the manifest against "
        "the pinned authority key, each analyst's signature, role and scope, freshness "
        "within the catalogue's offline window), answers each query through the same "
        "engine and budget (a query answered before costs nothing again) and writes the "
        "signed answers for `fedscreen coordinator inbox`.",
    )
    carried.add_argument("--home", type=Path, required=True)
    carried.add_argument("outbox", type=Path, help="the outbox file from the coordinator")
    carried.add_argument("--out", type=Path, required=True, help="answer file to create")
    carried.set_defaults(func=run_answer_file)

    add_serve_parser(node_sub)


def run_init(args: argparse.Namespace) -> int:
    """``fedscreen node init``."""
    config = init_home(
        args.home,
        node_id=args.node_id,
        name=args.name,
        county_code=args.county,
        kind=args.kind,
        school_id=args.school,
    )
    print(f"created {config.kind} node {config.node_id} ({config.name}) in {config.home}")
    print(f"next: the province issues its certificate from {config.home / 'request.json'}:")
    print(f"  fedscreen pki issue --dir <authority dir> --home {config.home}")
    return 0


def _placed_config(home: Path) -> NodeConfig:
    """The node's config, refused (ConfigError) when its kind or county disagrees with the
    manifest installed (once issued): a university's rows must not load as a county's."""
    config = load_config(home)
    identity = load_identity(home)
    if identity.is_issued:
        check_placement(config, identity.manifest())
    return config


def run_ingest(args: argparse.Namespace) -> int:
    """``fedscreen node ingest``."""
    config = _placed_config(args.home)
    sync_checkpoint(config)  # nothing loads into a database restored behind its checkpoint
    loaded, rejected = ingest_paths(config, args.paths, encoding=args.encoding, progress=Progress())
    sync_checkpoint(config)  # after the commits: should a load be logged, it is saved
    for result in loaded:
        if result.status == "unchanged":
            print(f"{result.path}: already loaded as batch {result.batch_id}; nothing changed")
        else:
            replaced = (
                f", replaced batch {', '.join(map(str, result.replaced))}"
                if result.replaced
                else ""
            )
            print(
                f"{result.path}: loaded {result.rows:,} {result.kind} rows for "
                f"{len(result.schools)} school(s), {result.academic_year} "
                f"as batch {result.batch_id}{replaced}"
            )
    for error in rejected:
        print(error, file=sys.stderr)
    return 1 if rejected else 0


def run_status(args: argparse.Namespace) -> int:
    """``fedscreen node status``."""
    config = load_config(args.home)
    conn = store.connect(config.database)
    try:
        status = node_status(conn)
    finally:
        conn.close()
    print(
        f"{config.kind} node {config.node_id} ({config.name}), county {config.county_code}"
        + (f", school {config.school_id}" if config.school_id else "")
        + f", data version {status.data_version}\n"
    )
    link = read_link(config.home)
    by_file = file_link(config.home)
    if by_file is not None:
        print(by_file)
    if link is None:
        if by_file is None:
            print("link: never connected (fedscreen node serve records it)\n")
    else:
        ms = link.clock_offset_ms
        offset = "unknown" if ms is None else f"{ms / 1000:+.1f} s"
        state = "connected to" if link.connected else "last connected to"
        print(
            f"link: {state} {link.coordinator}; clock offset {offset} "
            f"(tolerance ±{link.clock_tolerance_ms // 1000} s)"
        )
        if link.refusing:
            print(f"  REFUSING EVERY QUERY: {link.refusing}")
        if link.manifest_conflict:
            print(f"  MANIFEST CONFLICT: {link.manifest_conflict}")
        print()
    rolled_back = diagnose(config)
    if rolled_back is not None:
        print(f"REFUSING TO RUN: {rolled_back}\n")
    for r in status.recoveries:
        print(
            f"recovered {r.at} from a rolled-back database (log {r.from_size} -> {r.to_size} "
            f"entries, rollback logged as entry {r.log_index}; ε charged again "
            f"{from_micro(r.restored_micro):g}): {r.reason}"
        )
    if status.recoveries:
        print()
    print_status(status)
    return 0


def run_answer_file(args: argparse.Namespace) -> int:
    """``fedscreen node answer-file``."""
    data = read_public_file(args.outbox, max_bytes=MAX_FILE_BYTES)
    done = answer_outbox(args.home, data, args.out)
    print(f"node {done.node} (manifest version {done.manifest_version}): "
          f"{len(done.answered)} answered, {len(done.refused)} refused; "
          f"ε spent {done.epsilon_spent:g} in each year a query covers")  # fmt: skip
    for query_id, charged in done.answered:
        cost = f"ε={charged:g}" if charged else "answered before: no charge"
        print(f"  {query_id}: answered ({cost})")
    for query_id, reason in done.refused:
        print(f"  {shown_query_id(query_id)}: refused ({reason})")
    if done.deferred:
        print(f"  {len(done.deferred)} queries not answered: the file is full; they come "
              "again in the coordinator's next outbox (nothing was charged for them)")  # fmt: skip
    print(f"{args.out}: signed answers; carry it back to the coordinator "
          "(fedscreen coordinator inbox)")  # fmt: skip
    return 0


def run_recover(args: argparse.Namespace) -> int:
    """``fedscreen node recover``."""
    config = load_config(args.home)
    done = recover(config, reason=args.reason, at=now(), accept_lost_budget=args.accept_lost_budget)
    print(
        f"node {config.node_id}: the rollback is logged as entry {done.log_index} "
        f"(saved checkpoint {done.from_size} entries, database {done.to_size})"
    )
    if not done.mirrored:
        print(
            "WARNING: --accept-lost-budget: the record of the ledger before the restore was "
            "missing or older: ε spent after the backup may no longer be counted (the log "
            "entry says so)"
        )
    elif done.restored:
        print("ε spent after the backup, forgotten by it, is charged again (never given back):")
        table(
            ["year", "analyst", "ε restored"],
            [[y, a, f"{from_micro(m):g}"] for (y, a), m in sorted(done.restored.items())],
        )
    else:
        print("the restored ledger had forgotten no ε: nothing to charge again")
    print(
        "node serve and node query run again. The coordinator still sees this node's log "
        "shrink: the province readmits it (fedscreen coordinator readmit)."
    )
    return 0


def run_query(args: argparse.Namespace) -> int:
    """``fedscreen node query``."""
    config = _placed_config(args.home)
    policy = config.policy()
    request = QueryRequest(
        analyst=args.analyst,
        spec=None,
        epsilon=args.epsilon,
        accuracy=args.accuracy,
        text=read_sql(args),
    )
    with guarded(config) as conn:
        answer = answer_query(config, policy, request, conn=conn)
        spent = ledger.spent(conn, answer.body["query"]["years"][0], args.analyst)
    if args.format == "json":
        print(json.dumps({**answer.body, "cached": answer.cached}, ensure_ascii=False, indent=2))
        return 0
    print_answer(answer.body)
    charged = (
        "nothing (the same query was answered before)"
        if answer.cached
        else (f"ε={answer.body['epsilon']:g}")
    )
    left = policy.limits.epsilon_per_node_per_year - from_micro(spent.node_micro)
    print(f"\ncharged {charged}; the node has ε={left:g} left for {spent.year}")
    return 0


def print_answer(body: dict[str, Any]) -> None:
    """Print an answer's cells as a table."""
    query = body["query"]
    groups = query["group_by"]
    print(
        f"{query['measure']['kind']} over {query['dataset']} {', '.join(query['years'])}; "
        f"mechanism {body['mechanism']}; 95% intervals"
    )
    rows = [
        [
            *cell["group"],
            cell.get("display", cell["value"]),
            "" if cell.get("lower") is None else f"[{_num(cell['lower'])}, {_num(cell['upper'])}]",
        ]
        for cell in body["cells"]
    ]
    table([*groups, "value", "95% interval"], rows)


def _num(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_approvals(args: argparse.Namespace) -> int:
    """``fedscreen node approvals``."""
    config = load_config(args.home)
    conn = store.connect(config.database)
    try:
        rows = conn.execute(
            "SELECT approval_id, status, analyst, epsilon_micro, requested_at, spec "
            "FROM query_approval ORDER BY approval_id"
        ).fetchall()
    finally:
        conn.close()
    table(
        ["#", "status", "analyst", "ε", "requested", "query"],
        [(i, s, a, f"{from_micro(e):g}", t, q) for i, s, a, e, t, q in rows],
    )
    return 0


def run_decide(args: argparse.Namespace) -> int:
    """``fedscreen node approve|reject``."""
    config = load_config(args.home)
    conn = store.connect(config.database)
    try:
        with transaction(conn):
            ledger.decide_approval(conn, args.id, approve=args.approve, at=now())
    finally:
        conn.close()
    outcome = "approved: the analyst may now ask it" if args.approve else "rejected"
    print(f"request #{args.id} {outcome}")
    return 0


def run_budget(args: argparse.Namespace) -> int:
    """``fedscreen node budget``."""
    config = load_config(args.home)
    limits = config.policy().limits
    conn = store.connect(config.database)
    try:
        ledger.ensure_recovery_schema(conn)
        spent = ledger.budget_table(conn)
        recovered = ledger.recoveries(conn)
    finally:
        conn.close()
    node_budget = to_micro(limits.epsilon_per_node_per_year)
    years: dict[str, int] = {}
    for year, _, micro in spent:
        years[year] = years.get(year, 0) + micro
    rows: list[list[object]] = []
    show = from_micro
    for year, total in years.items():
        # integer micro-ε: "left" is exact, never 4.4e-16
        rows.append([year, "(node total)", f"{show(total):g}", f"{show(node_budget - total):g}"])
        for y, analyst, micro in spent:
            if y == year:
                own = to_micro(limits.analyst_budget(analyst)) - micro
                left = max(min(own, node_budget - total), 0)
                rows.append([year, analyst, f"{show(micro):g}", f"{show(left):g}"])
    print(
        f"node {config.node_id}: ε {limits.epsilon_per_node_per_year:g} per academic year, "
        f"analysts {limits.analyst_share:g} of it unless named in the policy"
    )
    table(["year", "analyst", "ε spent", "ε left"], rows)
    for r in recovered:
        print(
            f"recovered {r.at} from a restored database: ε {from_micro(r.restored_micro):g} "
            "spent after its backup is counted above again"
        )
    return 0


def print_status(status: NodeStatus) -> None:
    """Print the tables of a node's status."""
    print("Students (one row per student and year: the unit of privacy)")
    table(["year", "school type", "students", "screened"], status.by_school_type)
    print("\nInstrument results")
    table(["year", "instrument", "valid", "invalid"], status.by_instrument)
    print("\nSchool tables")
    table(["year", "schools", "school-grade rows"], status.schools)
    print("\nLast loads")
    table(
        ["batch", "kind", "file", "rows", "year", "loaded at", "replaced", "replaced by"],
        status.loads,
    )
