"""Small helpers for printing tables and progress on the terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TextIO


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], *, out: TextIO | None = None
) -> None:
    """Print an aligned plain-text table."""
    stream = out or sys.stdout
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
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
