"""``fedscreen node serve``: keep the node connected to the coordinator and answer its queries.

The node dials out (county networks allow outbound connections only), keeps
one mutual-TLS stream open, and redials with jittered backoff when it drops.
Every query is verified and answered here, under this node's policy and budget.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from fedscreen._util.files import write_ready_file
from fedscreen.cli.coordinator import run_until_signalled
from fedscreen.node.agent import Welcomed, run_node
from fedscreen.node.home import load_config
from fedscreen.node.rollback import sync_checkpoint

#: in the node's home: held (flock) by the one ``node serve`` running on it
SERVE_LOCK_FILE: Final = ".serve.lock"


@contextlib.contextmanager
def serve_lock(home: Path) -> Iterator[bool]:
    """Hold the home's serve lock for the block; yields False if another process holds it.

    Two ``node serve`` on one home would take the coordinator's session from each
    other in turn. flock is released by the kernel when the process dies, so a
    crashed server never leaves a stale lock behind.
    """
    fd = os.open(home / SERVE_LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def add_serve_parser(node_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve`` to the ``node`` subcommands."""
    serve = node_sub.add_parser(
        "serve",
        help="connect to the coordinator and answer its queries until Ctrl-C",
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


def run_serve(
    args: argparse.Namespace,
    *,
    unsafe_test_answer_delay_ms: int = 0,
    unsafe_test_clock_skew_ms: int = 0,
) -> int:
    """``fedscreen node serve`` (tests inject a delay or a clock skew; the command line cannot)."""

    def welcomed(event: Welcomed) -> None:
        print(
            f"node {event.node_id} connected to coordinator {event.coordinator} "
            f"(session {event.session})",
            flush=True,
        )
        if args.ready_file is not None:
            write_ready_file(
                args.ready_file,
                {
                    "node_id": event.node_id,
                    "coordinator": event.coordinator,
                    "session": event.session,
                    "manifest_version": event.manifest_version,
                    "clock_offset_ms": event.clock_offset_ms,
                },
            )

    async def main(stop: asyncio.Event) -> None:
        await run_node(
            args.home,
            args.coordinator,
            coordinator_id=args.coordinator_id,
            stop=stop,
            on_welcome=welcomed,
            unsafe_test_answer_delay_ms=unsafe_test_answer_delay_ms,
            unsafe_test_clock_skew_ms=unsafe_test_clock_skew_ms,
        )

    config = load_config(args.home)
    with serve_lock(config.home) as locked:
        if not locked:
            print(
                f"error: another 'fedscreen node serve' is already running on {config.home}; "
                "stop it first (one node, one session with the coordinator)",
                file=sys.stderr,
            )
            return 1
        # a database restored behind the node's saved checkpoint: refuse before dialing
        sync_checkpoint(config)
        run_until_signalled(main)
    print("node stopped", flush=True)
    return 0
