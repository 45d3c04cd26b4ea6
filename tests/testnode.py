"""TEST ONLY: ``fedscreen node serve`` with a test switch injected into the agent.

    python tests/testnode.py DELAY_MS SKEW_MS --home HOME --coordinator HOST:PORT [...]

``DELAY_MS`` holds every answer back that long before it is sent; ``SKEW_MS`` runs the
node's clock that far off the real one. Both go into
:func:`fedscreen.node.agent.run_node` as keyword arguments: production code reads no
switch for them from the environment or the command line.
"""

from __future__ import annotations

import sys

from fedscreen.cli.main import build_parser
from fedscreen.cli.nodeserve import run_serve


def main(argv: list[str]) -> int:
    """Parse ``DELAY_MS SKEW_MS`` and the usual ``node serve`` arguments; serve."""
    delay_ms, skew_ms = int(argv[0]), int(argv[1])
    args = build_parser().parse_args(["node", "serve", *argv[2:]])
    return run_serve(args, unsafe_test_answer_delay_ms=delay_ms, unsafe_test_clock_skew_ms=skew_ms)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
