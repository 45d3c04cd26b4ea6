"""Redialling a link that dials out (a node's, the second aggregator's): jittered backoff.

No protobuf and no gRPC here; :class:`~fedscreen.rpc.transport.RpcFailed` is what marks
a failure as the network's (worth redialling) rather than the program's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Protocol

from fedscreen.rpc.transport import RpcFailed

__all__ = ["BackoffLimits", "backoff_ms", "keep_dialling"]

_log = logging.getLogger(__name__)


class BackoffLimits(Protocol):
    """The two delays a redial loop needs (ms), as the agents' limits dataclasses hold them."""

    @property
    def backoff_initial_ms(self) -> int: ...
    @property
    def backoff_max_ms(self) -> int: ...


def backoff_ms(attempt: int, *, limits: BackoffLimits) -> int:
    """The delay before redial number ``attempt`` (0-based), in ms.

    Exponential with "equal jitter": half of ``min(max, initial·2^attempt)`` fixed
    plus a uniformly random other half, so a province's members restarting together
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
    limits: BackoffLimits,
    link: str,
) -> None:
    """Run ``session`` again and again until ``stop`` is set, with :func:`backoff_ms` between.

    A session that fails with anything but :class:`RpcFailed` (a bug, a broken home, a
    member that must stop serving) ends the loop with that error. ``welcomed()`` counts
    the sessions the peer accepted: after one, the backoff starts over.
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
