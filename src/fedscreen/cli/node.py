"""``fedscreen node ...``: commands for a county node's operator."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedscreen.cli.output import Progress, table
from fedscreen.node import store
from fedscreen.node.home import init_home, load_config
from fedscreen.node.ingest import ingest_paths
from fedscreen.node.reader import ENCODINGS
from fedscreen.node.status import NodeStatus, node_status


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``node`` and its subcommands."""
    node = sub.add_parser("node", help="run a county (or school) node")
    node_sub = node.add_subparsers(dest="node_command", required=True, metavar="SUBCOMMAND")

    init = node_sub.add_parser("init", help="create a node home (config, database, secret)")
    init.add_argument("--home", type=Path, required=True, help="directory to create")
    init.add_argument("--node-id", required=True, help="node id, e.g. the county code 130102")
    init.add_argument("--name", required=True, help="display name, e.g. 长安区")
    init.add_argument("--county", help="county code of the records (default: the node id)")
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


def run_init(args: argparse.Namespace) -> int:
    """``fedscreen node init``."""
    config = init_home(args.home, node_id=args.node_id, name=args.name, county_code=args.county)
    print(f"created node {config.node_id} ({config.name}) in {config.home}")
    return 0


def run_ingest(args: argparse.Namespace) -> int:
    """``fedscreen node ingest``."""
    config = load_config(args.home)
    loaded, rejected = ingest_paths(config, args.paths, encoding=args.encoding, progress=Progress())
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
        f"node {config.node_id} ({config.name}), county {config.county_code}, "
        f"data version {status.data_version}\n"
    )
    print_status(status)
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
