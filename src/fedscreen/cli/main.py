"""Entry point of the ``fedscreen`` command."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from fedscreen import __version__
from fedscreen.cli import (
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


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; each subcommand module adds its own parsers."""
    parser = argparse.ArgumentParser(
        prog="fedscreen",
        description="Privacy-preserving federated statistics for student mental-health screening.",
    )
    parser.add_argument("--version", action="version", version=f"fedscreen {__version__}")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (demo, synth, node, identity, pki, coordinator, query, budgets, report, audit):
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
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
