"""TEST ONLY: ``fedscreen node serve`` whose answer cells are altered before it signs them.

    python tests/dishonestnode.py MODE --home HOME --coordinator HOST:PORT [...]

A dishonest county with its own real keys: the node's engine builds the cells, then
``MODE`` changes them, and the node signs, logs and sends the result as usual. The
change is injected here by replacing the engine's ``release`` in this process only;
production code reads no switch for it.

MODE: ``zero`` (scale 0 and zero-width intervals on noisy data), ``dup`` (a group
twice), ``arity`` (a group of another length), ``invent`` (a group outside the
public domains), ``nest`` (a group nested 450 deep), ``display`` (control characters
and 50,000 characters of display text); for secure queries, ``shortbox`` (the box for the
second aggregator holds one share too few) and ``coordbox`` (the coordinator's does).
"""

from __future__ import annotations

import base64
import sys
from typing import Any

import fedscreen.node.engine as engine
from fedscreen._util.canonical import canonical_json
from fedscreen.cli.main import build_parser
from fedscreen.cli.nodeserve import run_serve
from fedscreen.crypto.signing import seal_to
from fedscreen.query.compile import Plan

MODES = ("zero", "dup", "arity", "invent", "nest", "display", "shortbox", "coordbox")
#: nesting depth of the ``nest`` mode's group (past Python's default recursion limit / 2)
NEST_DEPTH = 450


def _short_box(out: dict[str, Any], secure: dict[str, Any], which: int) -> None:
    """Seal, to recipient ``which``, a well-formed box with one share too few."""
    member, key = secure["recipients"][which]
    short = [0] * (len(out["cells"]) - 1)
    plain = {"node_id": secure["node_id"], "recipient": member, "shares": short}
    out["shares"][member] = base64.b64encode(seal_to(key, canonical_json(plain))).decode()


def _altered(mode: str, out: dict[str, Any], secure: dict[str, Any]) -> dict[str, Any]:
    if mode in ("shortbox", "coordbox"):
        if "shares" in out:  # a plain query's answer stays honest
            _short_box(out, secure, 1 if mode == "shortbox" else 0)
        return out
    cells: list[dict[str, Any]] = out["cells"]
    extra = {"value": 1, "lower": 0.0, "upper": 2.0, "display": "1", "suppressed": True}
    if mode == "zero":
        out["scale"] = 0.0
        for cell in cells:
            cell["lower"] = cell["upper"] = cell["value"]
    elif mode == "dup":
        cells.append({**cells[0], "value": 100_000, "display": "100000"})
    elif mode == "arity":
        cells.append({**extra, "group": []})
    elif mode == "invent":
        cells.append({**extra, "group": ["university", "X"]})
    elif mode == "nest":
        group: Any = "M"
        for _ in range(NEST_DEPTH):
            group = [group]
        cells.append({**extra, "group": [group]})
    elif mode == "display":
        cells[0]["display"] = "\x1b[2J\x1b[31mFAKE 99.9%\x1b[0m\n\n" + "A" * 50_000
    return out


def main(argv: list[str]) -> int:
    """Parse ``MODE`` and the usual ``node serve`` arguments; serve dishonestly."""
    mode = argv[0]
    if mode not in MODES:
        raise SystemExit(f"unknown mode {mode!r} (one of {', '.join(MODES)})")
    honest = engine.release

    def release(
        plan: Plan, rows: list[tuple[Any, ...]], epsilon: float, k: int, **secure: Any
    ) -> Any:
        return _altered(mode, honest(plan, rows, epsilon, k, **secure), secure)

    engine.release = release  # type: ignore[assignment]
    args = build_parser().parse_args(["node", "serve", *argv[1:]])
    return run_serve(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
