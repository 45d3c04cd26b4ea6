"""Clocks on the node link: each side learns the other's offset when a session opens.

The node puts its clock in its Hello, the coordinator its own in the Welcome.
The coordinator takes ``node_time − its receipt time`` (biased by the one-way
delay, milliseconds on any real network); the node takes the midpoint of its
round trip minus the coordinator's time (NTP's estimate). Offsets are the
node's clock minus the coordinator's: positive when the node runs ahead.

Why a tolerance: a node checks a query's freshness against its own clock
(:data:`fedscreen.protocol.query.FRESHNESS_WINDOW_MS`, ±5 min of the analyst's
signing time), and the coordinator's deadlines (seconds away) are in the
coordinator's clock. A node converts deadlines with the measured offset, so a
small offset costs nothing; but a node off by more than
:data:`CLOCK_TOLERANCE_MS` (60 s, a fifth of the freshness window) refuses every
query with a reason that says so, rather than answering some and refusing
others as stale depending on which analyst asked: a clock that far off is
broken (no NTP), and the operator must fix it.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CLOCK_TOLERANCE_MS",
    "clock_refusal",
    "describe_offset",
    "node_offset_ms",
    "round_trip_offset_ms",
]

#: the largest clock offset, either way, at which a node still answers queries (ms)
CLOCK_TOLERANCE_MS: Final = 60_000


def node_offset_ms(node_time_ms: int, received_ms: int) -> int | None:
    """The coordinator's estimate of a node's offset from its Hello (None: no clock sent)."""
    return node_time_ms - received_ms if node_time_ms > 0 else None


def round_trip_offset_ms(sent_ms: int, coordinator_ms: int, received_ms: int) -> int | None:
    """The node's estimate of its own offset from Hello sent, Welcome's time, Welcome received.

    None when the coordinator sent no clock (an older coordinator).
    """
    if coordinator_ms <= 0:
        return None
    return (sent_ms + received_ms) // 2 - coordinator_ms


def describe_offset(offset_ms: int) -> str:
    """``"+120.0 s (ahead)"``, ``"-3.2 s (behind)"``: an offset for people."""
    tenths = round(offset_ms / 100)  # what is shown decides the word: never "-0.0 s (behind)"
    direction = "ahead" if tenths > 0 else "behind" if tenths < 0 else "in step"
    return f"{tenths / 10:+.1f} s ({direction})"


def clock_refusal(offset_ms: int | None, tolerance_ms: int = CLOCK_TOLERANCE_MS) -> str | None:
    """Why a node with this offset refuses queries, or None if it is within the tolerance."""
    if offset_ms is None or abs(offset_ms) <= tolerance_ms:
        return None
    return (
        f"clock offset {describe_offset(offset_ms)} from the coordinator exceeds the "
        f"tolerance of ±{tolerance_ms // 1000} s; the node refuses queries until its clock "
        "is corrected (NTP)"
    )
