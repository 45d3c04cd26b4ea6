"""``fedscreen aggregator ...``: create and run the second aggregator of secure queries.

The aggregator dials the coordinator (like a node), sums its own shares of the nodes'
answers to each secure query, adds one noise draw and signs its partial::

    fedscreen aggregator init --home agg --id statbureau --name 省统计局
    fedscreen pki issue --dir AUTHORITY --home agg
    fedscreen aggregator serve --home agg --coordinator 127.0.0.1:7443
    fedscreen aggregator status --home agg [--json]
    fedscreen audit export --home agg --out agg.bundle
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from fedscreen._util.files import write_ready_file
from fedscreen.aggregator.agent import AggregatorWelcomed, run_aggregator
from fedscreen.aggregator.home import AggregatorHome, init_aggregator
from fedscreen.aggregator.store import PartialStore
from fedscreen.cli.coordinator import run_until_signalled


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``aggregator`` and its subcommands."""
    parser = sub.add_parser("aggregator", help="run the second aggregator of secure queries")
    agg_sub = parser.add_subparsers(dest="aggregator_command", required=True, metavar="SUBCOMMAND")

    init = agg_sub.add_parser("init", help="create an aggregator home (identity, database)")
    init.add_argument("--home", type=Path, required=True, help="directory to create")
    init.add_argument("--id", dest="member_id", required=True, help="member id, e.g. statbureau")
    init.add_argument("--name", required=True, help="display name")
    init.set_defaults(func=run_init)

    serve = agg_sub.add_parser(
        "serve", help="connect to the coordinator and sum secure queries until Ctrl-C"
    )
    serve.add_argument("--home", type=Path, required=True)
    serve.add_argument("--coordinator", required=True, help="the coordinator's HOST:PORT")
    serve.add_argument(
        "--coordinator-id",
        help="the coordinator's member id (default: the one coordinator in the manifest)",
    )
    serve.add_argument(
        "--ready-file",
        type=Path,
        help="rewritten (JSON) each time the coordinator accepts a session",
    )
    serve.set_defaults(func=run_serve)

    status = agg_sub.add_parser("status", help="the aggregator's log size, partials, refusals")
    status.add_argument("--home", type=Path, required=True)
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    status.set_defaults(func=run_status)


def run_init(args: argparse.Namespace) -> int:
    """``fedscreen aggregator init``."""
    init_aggregator(args.home, member_id=args.member_id, name=args.name)
    print(f"created aggregator {args.member_id} in {args.home}")
    print(f"next: the province issues its certificate from {args.home / 'request.json'}:")
    print(f"  fedscreen pki issue --dir <authority dir> --home {args.home}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    """``fedscreen aggregator serve``: SIGINT or SIGTERM stops it cleanly."""
    AggregatorHome.open(args.home)  # a bad home fails here, before the loop starts

    def welcomed(event: AggregatorWelcomed) -> None:
        print(
            f"aggregator {event.aggregator_id} connected to coordinator {event.coordinator} "
            f"(session {event.session})",
            flush=True,
        )
        if args.ready_file is not None:
            write_ready_file(
                args.ready_file,
                {
                    "aggregator_id": event.aggregator_id,
                    "coordinator": event.coordinator,
                    "session": event.session,
                    "manifest_version": event.manifest_version,
                    "clock_offset_ms": event.clock_offset_ms,
                },
            )

    async def main(stop: asyncio.Event) -> None:
        await run_aggregator(
            args.home,
            args.coordinator,
            coordinator_id=args.coordinator_id,
            stop=stop,
            on_welcome=welcomed,
        )

    run_until_signalled(main)
    print("aggregator stopped", flush=True)
    return 0


def run_status(args: argparse.Namespace) -> int:
    """``fedscreen aggregator status``."""
    store = PartialStore.open(AggregatorHome.open(args.home))
    try:
        status = store.status()
    finally:
        store.close()
    last = status.last_refusal
    if args.json:
        doc = {
            "aggregator_id": status.member_id,
            "log_size": status.log_size,
            "partials_made": status.partials,
            "partials_given": status.given,
            "refusals": status.refusals,
            "last_refusal": None
            if last is None
            else {"query_id": last[0], "reason": last[1], "at_unix_ms": last[2]},
        }
        print(json.dumps(doc, ensure_ascii=False, indent=1))
        return 0
    print(f"aggregator {status.member_id}")
    print(f"  log: {status.log_size} entries")
    print(f"  partials: {status.partials} made, {status.given} given (one per query id)")
    print(f"  refusals: {status.refusals}")
    if last is not None:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(last[2] / 1000))
        print(f"  last refusal: {when}, query {last[0]}: {last[1]}")
    return 0
