"""Entry point of the ``fedscreen`` command."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Final

from fedscreen import __version__
from fedscreen.cli import (
    aggregator,
    audit,
    budgets,
    coordinator,
    demo,
    identity,
    node,
    pki,
    query,
    report,
    synth,
)
from fedscreen.errors import FedscreenError

#: the exit status when a closed pipe cut the output short (``fedscreen … | head``):
#: 128 + SIGPIPE, what a shell reports for a process that SIGPIPE ended
BROKEN_PIPE_EXIT: Final = 141


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; each subcommand module adds its own parsers."""
    parser = argparse.ArgumentParser(
        prog="fedscreen",
        description="Privacy-preserving federated statistics for student mental-health screening.",
    )
    parser.add_argument("--version", action="version", version=f"fedscreen {__version__}")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (demo, synth, node, identity, pki, coordinator, aggregator, query, budgets,
                   report, audit):  # fmt: skip
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    try:
        try:
            code = _run(argv)
        except SystemExit:  # argparse's --help, --version and usage errors print, then exit
            sys.stdout.flush()
            raise
        # output still buffered must meet a closed pipe here, not at interpreter exit
        sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()
        return BROKEN_PIPE_EXIT
    return code


def _discard_stdout() -> None:
    """After EPIPE, point stdout at devnull so that the interpreter's last flush is silent.

    The recipe of the Python documentation (``signal``, "Note on SIGPIPE").
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a file (a test's capture): nothing to flush
        pass


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except FedscreenError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
