"""``fedscreen demo``: the quick start.

By default a whole federation on this machine (see ``fedscreen.demo.federation``).
With ``--single-node``: a county's exports as its schools would send them (one file
per school, Chinese headers, GB18030), loaded into one node, its summary, and a
few differentially private monitoring queries answered locally.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Final

from fedscreen.cli.node import print_answer, print_status
from fedscreen.cli.output import Progress
from fedscreen.demo import federation, members
from fedscreen.errors import FedscreenError
from fedscreen.node import ledger, store
from fedscreen.node.engine import QueryRequest, answer_query
from fedscreen.node.home import init_home
from fedscreen.node.ingest import ingest_paths
from fedscreen.node.status import node_status
from fedscreen.protocol.budget import from_micro
from fedscreen.synth import generate, write_export

COUNTY: Final = ("130102", "长安区")
DEFAULT_STUDENTS: Final = 20_000
YEAR: Final = "2024-2025"
ANALYST: Final = "hebei-monitoring-centre"
QUERIES: Final = (
    "SELECT grade_band, sex, RATE(phq9_total >= 10) FROM screenings WHERE phq9_valid = 1 "
    "GROUP BY grade_band, sex",
    "SELECT warning_level, COUNT(*) FROM screenings WHERE warning_level <> 'none' "
    "GROUP BY warning_level",
    "SELECT grade_band, SUM(eligible) FROM school_grades GROUP BY grade_band",
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``demo``."""
    demo = sub.add_parser("demo", help="run the quick-start demo on synthetic data")
    demo.add_argument("--dir", type=Path, help="work directory (default: a new temporary one)")
    demo.add_argument(
        "--students",
        type=int,
        default=DEFAULT_STUDENTS,
        help="students (in the single county; the federation's counties are scaled by it)",
    )
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument(
        "--counties",
        type=int,
        default=members.DEFAULT_COUNTIES,
        help=f"county nodes in the federation (3, the fewest a secure figure sums, to "
        f"{len(members.COUNTIES)}; default {members.DEFAULT_COUNTIES}: three of 石家庄 and one "
        "of 唐山, besides a school's and a university's own nodes)",
    )
    demo.add_argument(
        "--single-node",
        action="store_true",
        help="only one county node: load its schools' exports, show its status, answer locally",
    )
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo."""
    work = args.dir or Path(tempfile.mkdtemp(prefix="fedscreen-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    if not args.single_node:
        return federation.run(
            work,
            seed=args.seed,
            scale=args.students / DEFAULT_STUDENTS,
            counties=args.counties,
        )
    code, name = COUNTY
    print(f"1. synthetic exports of {name} ({code}), {args.students:,} students, {YEAR}")
    county = generate(code, args.students, YEAR, args.seed)
    exports = work / "exports"
    summary = write_export(county, exports, encoding="gb18030", headers="zh", per_school=True)
    print(
        f"   {len(summary.screenings)} school files, {summary.screening_rows:,} screening rows, "
        f"school table {summary.schools.rows} rows in {exports}"
    )

    print(f"2. node home {work / 'node'}")
    config = init_home(work / "node", node_id=code, name=name)

    print("3. loading the exports (each file all or nothing)")
    loaded, rejected = ingest_paths(config, [exports], progress=Progress())
    rows = sum(r.rows for r in loaded)
    print(f"   {len(loaded)} files, {rows:,} rows loaded, {len(rejected)} rejected")
    if rejected:
        raise FedscreenError("\n".join(str(e) for e in rejected))
    conn = store.connect(config.database)
    try:
        print("\n4. node status (aggregates for the operator; nothing here leaves the node)\n")
        print_status(node_status(conn))
        policy = config.policy()
        print(f"\n5. differentially private answers for analyst {ANALYST}\n")
        for sql in QUERIES:
            print(f"   {sql}")
            request = QueryRequest(analyst=ANALYST, spec=None, epsilon=0.3, text=sql)
            print_answer(answer_query(config, policy, request, conn=conn).body)
            print()
        spent = ledger.spent(conn, YEAR, ANALYST)
    finally:
        conn.close()
    left = policy.limits.epsilon_per_node_per_year - from_micro(spent.node_micro)
    print(f"ε spent this year: {from_micro(spent.node_micro):g}; left: {left:g}")
    print(f"\ndone: {work}")
    return 0
