"""How a clock offset is shown to people."""

from __future__ import annotations

import pytest

from fedscreen.rpc.clock import describe_offset


@pytest.mark.parametrize(
    ("offset_ms", "shown"),
    [(120_000, "+120.0 s (ahead)"), (-3_200, "-3.2 s (behind)"), (0, "+0.0 s (in step)"),
     (-40, "+0.0 s (in step)"), (49, "+0.0 s (in step)"), (-60, "-0.1 s (behind)")],
)  # fmt: skip
def test_describe_offset(offset_ms: int, shown: str) -> None:
    assert describe_offset(offset_ms) == shown
