"""Small helpers for printing tables and progress on the terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Final, TextIO

#: longest text one table cell shows (characters); longer text is cut with "…"
MAX_CELL_CHARS: Final = 300


def printable(text: object, *, limit: int = MAX_CELL_CHARS) -> str:
    """``text`` as one line of printable characters, at most ``limit`` long.

    Cells and names can come from other members (a node's display text, a refusal
    reason): control characters would move the cursor or forge lines on the terminal.
    """
    raw = str(text)
    clean = "".join(c if c.isprintable() else "?" for c in raw[: limit + 1])
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], *, out: TextIO | None = None
) -> None:
    """Print an aligned plain-text table of printable, bounded cells (``printable``)."""
    stream = out or sys.stdout
    cells = [[printable(h) for h in headers]]
    cells += [["" if c is None else printable(c) for c in r] for r in rows]
    widths = [max(_width(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        stream.write(
            "  ".join(_pad(c, w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n"
        )
        if n == 0:
            stream.write("  ".join("-" * w for w in widths) + "\n")


def _width(text: str) -> int:
    # CJK characters take two terminal columns
    return sum(2 if ord(ch) > 0x2E80 else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))


class Progress:
    """A one-line progress display on stderr, drawn only when stderr is a terminal."""

    def __init__(self, *, min_interval_s: float = 0.2, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.min_interval_s = min_interval_s
        self.last = 0.0
        self.start = time.monotonic()
        self.name = ""

    def __call__(self, name: str, rows: int, fraction: float) -> None:
        """Report ``rows`` done of file ``name``, ``fraction`` of its bytes read."""
        now = time.monotonic()
        if name != self.name:
            self.name, self.start = name, now
        if not self.enabled or (now - self.last < self.min_interval_s and fraction < 1.0):
            return
        self.last = now
        rate = rows / max(now - self.start, 1e-9)
        self.stream.write(f"\r{name}: {fraction:6.1%}  {rows:,} rows  {rate:,.0f} rows/s ")
        if fraction >= 1.0:
            self.stream.write("\n")
        self.stream.flush()
