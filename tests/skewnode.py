"""TEST ONLY: ``fedscreen node serve`` whose clock runs SKEW_MS off the real one.

    python tests/skewnode.py SKEW_MS --home HOME --coordinator HOST:PORT [--ready-file F]

The skew is injected here, into :func:`fedscreen.node.agent.run_node`; production
code reads no switch for it from the environment or the command line.
"""

from __future__ import annotations

import sys

from fedscreen.cli.main import build_parser
from fedscreen.cli.nodeserve import run_serve


def main(argv: list[str]) -> int:
    """Parse ``SKEW_MS`` and the usual ``node serve`` arguments; serve."""
    skew_ms = int(argv[0])
    args = build_parser().parse_args(["node", "serve", *argv[1:]])
    return run_serve(args, unsafe_test_clock_skew_ms=skew_ms)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
