"""``fedscreen coordinator ...``: create and run the province's coordinator.

The coordinator relays signed queries to the nodes' open streams, combines
their signed answers into a signed release and logs all of it::

    fedscreen coordinator init --home coord --id coordinator --name 河北省协调服务
    fedscreen pki issue --dir AUTHORITY --home coord
    fedscreen coordinator serve --home coord --listen 0.0.0.0:7443
    fedscreen coordinator status --home coord --coordinator 127.0.0.1:7443 [--json]
    fedscreen coordinator readmit --home coord --node 130102 --reason "restored from backup"
    fedscreen coordinator outbox --home coord --node 130104 --out 130104-outbox.json
    fedscreen coordinator inbox --home coord 130104-answers.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from fedscreen._util.files import write_new_file
from fedscreen.audit.bundle import write_bundle
from fedscreen.coordinator.core import Coordinator, export_log, init_coordinator
from fedscreen.coordinator.inbox import import_answers
from fedscreen.coordinator.offline import make_outbox, queued_counts
from fedscreen.coordinator.quarantine import readmit
from fedscreen.coordinator.server import Listening, serve
from fedscreen.errors import ConfigError
from fedscreen.protocol.offline import MAX_FILE_BYTES
from fedscreen.protocol.query import shown_query_id
from fedscreen.rpc import client
from fedscreen.rpc.clock import clock_refusal, describe_offset
from fedscreen.rpc.serde import CoordinatorStatus
from fedscreen.trust.certs import read_public_file
from fedscreen.trust.identity import load_identity
from fedscreen.trust.scope import node_place

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``coordinator`` and its subcommands."""
    parser = sub.add_parser("coordinator", help="run the province's coordinator")
    coord_sub = parser.add_subparsers(
        dest="coordinator_command", required=True, metavar="SUBCOMMAND"
    )

    init = coord_sub.add_parser("init", help="create a coordinator home (identity, log database)")
    init.add_argument("--home", type=Path, required=True, help="directory to create")
    init.add_argument("--id", dest="member_id", required=True, help="member id, e.g. coordinator")
    init.add_argument("--name", required=True, help="display name")
    init.set_defaults(func=run_init)

    serve_cmd = coord_sub.add_parser(
        "serve",
        help="accept node streams and analysts' queries (mutual TLS); Ctrl-C stops",
    )
    serve_cmd.add_argument("--home", type=Path, required=True)
    serve_cmd.add_argument(
        "--listen", required=True, help="HOST:PORT to listen on (port 0: pick a free one)"
    )
    serve_cmd.add_argument(
        "--ready-file", type=Path, help="once listening, write the address here (JSON)"
    )
    serve_cmd.set_defaults(func=run_serve)

    status = coord_sub.add_parser(
        "status",
        help="the running coordinator's nodes: link, log checkpoint, quarantine, clock offset",
    )
    status.add_argument("--home", type=Path, required=True)
    status.add_argument("--coordinator", required=True, help="the coordinator's HOST:PORT")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(func=run_status)

    readmit_cmd = coord_sub.add_parser(
        "readmit",
        help="end a node's quarantine (logged); its next checkpoint becomes the new baseline",
    )
    readmit_cmd.add_argument("--home", type=Path, required=True)
    readmit_cmd.add_argument("--node", required=True, help="the quarantined node's member id")
    readmit_cmd.add_argument(
        "--reason", required=True, help="why the province readmits it (logged; no student data)"
    )
    readmit_cmd.set_defaults(func=run_readmit)

    outbox = coord_sub.add_parser(
        "outbox",
        help="write an offline node's pending queries into one signed file, to carry to it",
        description="For a node the manifest marks offline (`fedscreen pki link --offline`): "
        "its queued queries, the manifest in force and the coordinator's newest checkpoint, "
        "signed by the coordinator. The node answers it with `fedscreen node answer-file`.",
    )
    outbox.add_argument("--home", type=Path, required=True)
    outbox.add_argument("--node", required=True, help="the offline node's member id")
    outbox.add_argument("--out", type=Path, required=True, help="file to create")
    outbox.add_argument(
        "--from-size",
        type=int,
        default=0,
        metavar="N",
        help="also prove the coordinator's log from its checkpoint of N entries (the size a "
        "node refusing an outbox names: one it got online before it went offline)",
    )
    outbox.set_defaults(func=run_outbox)

    inbox = coord_sub.add_parser(
        "inbox",
        help="import an offline node's signed answer file: each late answer makes a new "
        "release version of its query",
    )
    inbox.add_argument("--home", type=Path, required=True)
    inbox.add_argument("answers", type=Path, help="the answer file the node wrote")
    inbox.set_defaults(func=run_inbox)

    export = coord_sub.add_parser(
        "export", help="write the coordinator's log as an audit bundle (fedscreen audit verify)"
    )
    export.add_argument("--home", type=Path, required=True)
    export.add_argument("--out", type=Path, required=True, help="bundle file to create")
    export.set_defaults(func=run_export)


def run_init(args: argparse.Namespace) -> int:
    """``fedscreen coordinator init``."""
    init_coordinator(args.home, member_id=args.member_id, name=args.name)
    print(f"created coordinator {args.member_id} in {args.home}")
    print(f"next: the province issues its certificate from {args.home / 'request.json'}:")
    print(f"  fedscreen pki issue --dir <authority dir> --home {args.home}")
    return 0


def run_until_signalled(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run ``main(stop)`` in a new event loop; SIGINT or SIGTERM sets ``stop``.

    The service then shuts down in order (sessions closed, calls given their
    grace, databases closed) instead of dying mid-commit.
    """
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await main(stop)

    asyncio.run(runner())


def run_serve(args: argparse.Namespace) -> int:
    """``fedscreen coordinator serve``."""

    def ready(where: Listening) -> None:
        print(f"coordinator {where.member_id} listening on {where.address}", flush=True)

    async def main(stop: asyncio.Event) -> None:
        await serve(
            args.home, args.listen, ready_file=args.ready_file, stop=stop, on_ready=ready,
            own_process=True,
        )  # fmt: skip

    run_until_signalled(main)
    print("coordinator stopped", flush=True)
    return 0


def run_export(args: argparse.Namespace) -> int:
    """``fedscreen coordinator export``."""
    log = export_log(args.home)
    manifest_path = args.home / "manifest.json"
    manifest = manifest_path.read_text(encoding="utf-8") if manifest_path.is_file() else None
    try:
        write_bundle(args.out, [log], manifest)
    except FileExistsError:
        raise ConfigError(f"{args.out} exists; refusing to overwrite") from None
    print(
        f"wrote {args.out}: {len(log.entries)} entries, "
        f"{len(log.checkpoints)} checkpoints of {log.origin}"
    )
    return 0


def _age(at_ms: int, now_ms: int) -> str:
    return "-" if at_ms <= 0 else f"{max(now_ms - at_ms, 0) / 1000:.0f} s ago"


def run_readmit(args: argparse.Namespace) -> int:
    """``fedscreen coordinator readmit``: works whether or not the coordinator is running."""
    core = Coordinator.open(args.home)
    try:
        ended = readmit(core, node_id=args.node, reason=args.reason, now_ms=int(time.time() * 1000))
    finally:
        core.close()
    print(f"node {args.node} readmitted (it was quarantined: {ended.reason}); logged")
    print("its next answer's checkpoint is the new baseline")
    return 0


def run_outbox(args: argparse.Namespace) -> int:
    """``fedscreen coordinator outbox``: works whether or not the coordinator is running."""
    # before the outbox is recorded: one that is never written must not be recorded
    if args.out.exists():
        raise ConfigError(f"{args.out} exists already; give a new --out")
    if not args.out.parent.is_dir():
        raise ConfigError(f"{args.out.parent} is not a folder; give an --out in an existing one")
    core = Coordinator.open(args.home)
    try:
        data, count = make_outbox(core, args.node, from_size=max(args.from_size, 0))
    finally:
        core.close()
    write_new_file(args.out, data, mode=0o644, what="outbox")
    print(f"{args.out}: {count} queries for offline node {args.node} ({len(data)} bytes, signed)")
    print(f"carry it to the node: fedscreen node answer-file --home <node home> {args.out} "
          "--out <answers file>")  # fmt: skip
    return 0


def run_inbox(args: argparse.Namespace) -> int:
    """``fedscreen coordinator inbox``: works whether or not the coordinator is running."""
    data = read_public_file(args.answers, max_bytes=MAX_FILE_BYTES)
    core = Coordinator.open(args.home)
    try:
        done = import_answers(core, data)
    finally:
        core.close()
    if done.problem:
        what = "QUARANTINED" if done.quarantined else "file not used"
        print(f"node {done.node}: {what}: {done.problem}; nothing of this file was used")
        return 2 if done.quarantined else 1
    print(
        f"node {done.node}: {len(done.released)} new release versions, "
        f"{len(done.unchanged)} answers changed nothing, {len(done.refused)} refusals"
    )
    for query_id, version in done.released:
        print(f"  {query_id}: release version {version}")
    for query_id, why in done.unchanged:
        print(f"  {shown_query_id(query_id)}: unchanged ({why})")
    for query_id, why in done.refused:
        print(f"  {shown_query_id(query_id)}: the node {why}")
    return 0


def _places(home: Path) -> dict[str, tuple[str, str]]:
    """Node id -> (kind, place) as the coordinator's manifest gives them."""
    manifest = load_identity(home).manifest()
    return {
        m.id: (m.level or "county", node_place(m)) for m in manifest.members if m.role == "node"
    }


def _stranded(home: Path, offline: dict[str, int | None]) -> dict[str, int]:
    """Online node id -> queries still queued from when it was offline."""
    return {n: c for n, c in queued_counts(home).items() if n not in offline and c}


def _offline(home: Path) -> dict[str, int | None]:
    """Offline node id -> its queued queries (None: not known from this home)."""
    offline = load_identity(home).manifest().offline
    queued = queued_counts(home)
    return {n: queued.get(n, 0) if (home / "coordinator.db").is_file() else None for n in offline}


def _status_json(
    view: CoordinatorStatus, places: dict[str, tuple[str, str]], offline: dict[str, int | None]
) -> dict[str, object]:
    return {
        "coordinator_time_ms": view.coordinator_time_ms,
        "clock_tolerance_ms": view.clock_tolerance_ms,
        "nodes": [
            {
                "node_id": n.node_id,
                "kind": places.get(n.node_id, ("", ""))[0],
                "place": places.get(n.node_id, ("", ""))[1],
                "connected": n.connected,
                "offline": n.node_id in offline,
                "queued": offline.get(n.node_id),
                "clock_offset_ms": n.clock_offset_ms,
                "clock_ok": clock_refusal(n.clock_offset_ms, view.clock_tolerance_ms) is None,
                "statement_at_ms": n.statement_at_ms,
                "session_opened_ms": n.session_opened_ms,
                "software_version": n.software_version,
                "checkpoint_size": n.checkpoint_size,
                "quarantined": n.quarantined,
                "quarantine_reason": n.quarantine_reason,
            }
            for n in view.nodes
        ],
    }


def run_status(args: argparse.Namespace) -> int:
    """``fedscreen coordinator status``: exit 1 if a connected node's clock is out of
    tolerance or a node is quarantined."""
    view = asyncio.run(client.status(args.home, args.coordinator))
    places = _places(args.home)
    offline = _offline(args.home)
    quarantined = [n for n in view.nodes if n.quarantined]
    if args.json:
        print(json.dumps(_status_json(view, places, offline), ensure_ascii=False, indent=2))
        bad_clocks = sum(
            n.connected and clock_refusal(n.clock_offset_ms, view.clock_tolerance_ms) is not None
            for n in view.nodes
        )
        return 1 if bad_clocks or quarantined else 0
    now = view.coordinator_time_ms
    skew = time.time() * 1000 - now
    print(
        f"coordinator at {args.coordinator}: {sum(n.connected for n in view.nodes)} of "
        f"{len(view.nodes)} nodes connected; clock tolerance ±{view.clock_tolerance_ms // 1000} s"
        + (f" (this machine's clock differs by {skew / 1000:+.1f} s)" if abs(skew) > 5000 else "")
    )
    print(
        f"{'node':<12} {'kind and place':<26} {'link':<19} {'log':<11} {'clock offset':<22} "
        f"{'last statement':<15} software"
    )
    bad = 0
    for n in view.nodes:
        offset = "unknown" if n.clock_offset_ms is None else describe_offset(n.clock_offset_ms)
        if clock_refusal(n.clock_offset_ms, view.clock_tolerance_ms) is not None:
            offset += " !"
            bad += n.connected
        link = "connected" if n.connected else "disconnected"
        if n.node_id in offline:
            queued = offline[n.node_id]
            link = "by file" if queued is None else f"by file, {queued} queued"
        log = (
            "QUARANTINED"
            if n.quarantined
            else (f"{n.checkpoint_size} entries" if n.checkpoint_size else "-")
        )
        print(
            f"{n.node_id:<12} {' '.join(places.get(n.node_id, ('-',))):<26} {link:<19} {log:<11} "
            f"{offset:<22} {_age(n.statement_at_ms, now):<15} {n.software_version or '-'}"
        )
    if bad:
        print(f"{bad} connected node(s) outside the clock tolerance (!) refuse every query")
    for n in quarantined:
        print(f"node {n.node_id} is quarantined, its answers unused: {n.quarantine_reason}")
    if quarantined:
        print("after investigating: fedscreen coordinator readmit --node ID --reason TEXT")
    for node_id, queued in sorted(_stranded(args.home, offline).items()):
        print(
            f"node {node_id} is online again: {queued} queries queued while it was offline are "
            "not carried to it any more; ask them again"
        )
    for node_id, queued in sorted(offline.items()):
        if queued:
            print(
                f"node {node_id} is offline with {queued} queued queries: "
                f"fedscreen coordinator outbox --home … --node {node_id} --out FILE"
            )
    return 1 if bad or quarantined else 0
