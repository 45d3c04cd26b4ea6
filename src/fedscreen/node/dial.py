"""How a node dials its coordinator: the agent's limits, its redial backoff, what a Welcome reports.

Kept apart from :mod:`fedscreen.node.agent` (which re-exports them) so that module stays
within its size; no protobuf and no gRPC here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from fedscreen.errors import ConfigError
from fedscreen.rpc import clock, transport
from fedscreen.rpc.transport import DEFAULT_LIMITS, RpcFailed, TransportLimits

__all__ = ["DEFAULT_NODE_LIMITS", "NodeLimits", "Welcomed", "backoff_ms", "keep_dialling"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeLimits:
    """Every wait and interval of the node agent, with its unit."""

    #: a Heartbeat goes up the stream this often (ms); the coordinator drops a
    #: session silent for its ``session_idle_timeout_ms`` (60 s by default)
    heartbeat_interval_ms: int = 15_000
    #: first redial delay after a failed or ended stream (ms)
    backoff_initial_ms: int = 500
    #: the redial delay doubles per failure up to this (ms)
    backoff_max_ms: int = 30_000
    #: dialing, the TLS handshake, Hello and Welcome together must take at most this (ms)
    welcome_timeout_ms: int = 10_000
    #: the largest clock offset from the coordinator, either way, at which the node
    #: still answers (ms); see fedscreen.rpc.clock
    clock_tolerance_ms: int = clock.CLOCK_TOLERANCE_MS
    transport: TransportLimits = field(default=DEFAULT_LIMITS)

    def __post_init__(self) -> None:
        transport.check_positive_limits(self, "node")
        if self.backoff_initial_ms > self.backoff_max_ms:
            raise ConfigError("backoff_initial_ms must not exceed backoff_max_ms")


DEFAULT_NODE_LIMITS: Final = NodeLimits()


@dataclass(frozen=True)
class Welcomed:
    """The coordinator accepted a session (reported to ``on_welcome``)."""

    node_id: str
    coordinator: str
    #: sessions opened since the agent started, this one included (count)
    session: int
    manifest_version: int
    #: this node's clock minus the coordinator's (ms); None if the coordinator sent no clock
    clock_offset_ms: int | None = None


def backoff_ms(attempt: int, *, limits: NodeLimits = DEFAULT_NODE_LIMITS) -> int:
    """The delay before redial number ``attempt`` (0-based), in ms.

    Exponential with "equal jitter": half of ``min(max, initial·2^attempt)`` fixed
    plus a uniformly random other half, so a province's nodes restarting together
    do not redial in lockstep, and no delay is ever near zero. The randomness is
    ``secrets`` (the project never uses ``random``).
    """
    ceiling = min(limits.backoff_max_ms, limits.backoff_initial_ms << min(attempt, 32))
    half = ceiling // 2
    return ceiling - half + secrets.randbelow(half + 1)


async def keep_dialling(
    session: Callable[[], Awaitable[None]],
    welcomed: Callable[[], int],
    stop: asyncio.Event,
    *,
    limits: NodeLimits,
    link: str,
) -> None:
    """Run ``session`` again and again until ``stop`` is set, with :func:`backoff_ms` between.

    A session that fails with anything but :class:`RpcFailed` (a bug, a broken home, a
    node that must stop serving) ends the loop with that error. ``welcomed()`` counts
    the sessions the coordinator accepted: after one, the backoff starts over.
    """
    attempt = 0
    stopped = asyncio.create_task(stop.wait())
    task: asyncio.Task[None] | None = None
    try:
        while not stop.is_set():
            before = welcomed()
            task = asyncio.ensure_future(session())
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                break
            error = task.exception()
            if error is not None and not isinstance(error, RpcFailed):
                raise error  # not a network problem: stop loudly
            if welcomed() > before:
                attempt = 0  # a session was welcomed: the link works, start over
            delay = backoff_ms(attempt, limits=limits)
            attempt += 1
            _log.warning("%s %s; redialling in %d ms",
                         link, f"failed ({error})" if error else "ended", delay)  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(stopped), timeout=delay / 1000)
    finally:
        stopped.cancel()
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RpcFailed):
                await task
