"""What the coordinator's server runs on: its limits and the core's own thread.

Kept apart from the servicers (``server``) so that module stays small; no
protobuf and no gRPC here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeVar

from fedscreen.coordinator.core import Coordinator
from fedscreen.errors import ConfigError
from fedscreen.rpc import transport
from fedscreen.rpc.clock import CLOCK_TOLERANCE_MS
from fedscreen.rpc.transport import DEFAULT_LIMITS, TransportLimits

__all__ = ["DEFAULT_SERVER_LIMITS", "CoreThread", "ServerLimits"]

T = TypeVar("T")


@dataclass(frozen=True)
class ServerLimits:
    """Every wait, count and size of the coordinator's server, with its unit."""

    #: how long Submit waits for node answers when the request names no wait (ms)
    default_answer_wait_ms: int = 10_000
    #: the longest wait an analyst may ask for (ms); longer requests are cut to this
    max_answer_wait_ms: int = 60_000
    #: kept back from the analyst's own gRPC deadline to sign and return the release (ms)
    release_margin_ms: int = 1_000
    #: a node must send its Hello within this after opening its stream (ms)
    hello_timeout_ms: int = 10_000
    #: a session that sends nothing — no answer, no heartbeat — for this long is dropped
    #: (ms); well above the node's heartbeat interval (15 s by default)
    session_idle_timeout_ms: int = 60_000
    #: messages queued for one node before its session counts as stuck (count); a query
    #: that finds the queue full treats the node as missing instead of waiting
    session_outbox_messages: int = 1_024
    #: entries one GetEntries call returns at most (count); clients continue from there
    max_entries_per_call: int = 1_000
    #: time calls in flight get to finish when the server stops (ms)
    shutdown_grace_ms: int = 5_000
    #: the largest clock offset, either way, at which a node still answers (ms); a node
    #: further off is logged, shown by ``coordinator status``, and refuses every query
    clock_tolerance_ms: int = CLOCK_TOLERANCE_MS
    #: how often the C heap's freed memory is returned to the system (ms; see rpc.guard)
    heap_trim_interval_ms: int = 5_000
    transport: TransportLimits = field(default=DEFAULT_LIMITS)

    def __post_init__(self) -> None:
        transport.check_positive_limits(self, "server")
        if self.default_answer_wait_ms > self.max_answer_wait_ms:
            raise ConfigError("default_answer_wait_ms must not exceed max_answer_wait_ms")


DEFAULT_SERVER_LIMITS: Final = ServerLimits()


# ---------------------------------------------------------------- the core's thread


class CoreThread:
    """The coordinator core, used from one worker thread only.

    Signing, answer verification and SQLite commits (``synchronous=FULL``) take
    milliseconds; on the loop they would stall every node stream. One thread
    also serialises the core's calls, which share one SQLite connection.
    """

    def __init__(self, executor: ThreadPoolExecutor, core: Coordinator) -> None:
        self._executor = executor
        self.core = core

    @classmethod
    async def open(cls, home: Path) -> CoreThread:
        """Open the coordinator home on a new worker thread."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="coordinator-core")
        loop = asyncio.get_running_loop()
        try:
            core = await loop.run_in_executor(executor, Coordinator.open, home)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, core)

    async def call(self, fn: Callable[[Coordinator], T]) -> T:
        """``fn(core)`` on the core's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, self.core)

    async def close(self) -> None:
        """Close the core (after every queued call) and stop the thread."""
        try:
            await self.call(lambda core: core.close())
        finally:
            self._executor.shutdown(wait=True)
