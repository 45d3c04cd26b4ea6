"""The aggregator agent: dial the coordinator, keep one stream open, sum what comes down it.

Like a node, the second aggregator calls the coordinator (mutual TLS, its own
certificate) and keeps an ``AggregatorLink.Connect`` stream open: AggregatorHello up,
Welcome down, then AggregationRequests down and Partials or Refusals up, with a
Heartbeat every ``heartbeat_interval_ms``. When the stream fails it redials after a
jittered exponential backoff (:mod:`fedscreen.rpc.redial`).

Each request is verified and summed by :func:`~fedscreen.aggregator.work.answer_request`
on one worker thread that owns the aggregator's SQLite connection (requests run one at
a time, in arrival order), so the event loop keeps reading and heartbeating meanwhile.
The coordinator's deadline is read through the clock offset the Welcome gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc

from fedscreen import __version__
from fedscreen.aggregator.home import AggregatorHome
from fedscreen.aggregator.store import PartialStore
from fedscreen.aggregator.work import DEFAULT_AGGREGATOR_LIMITS, AggregatorLimits, answer_request
from fedscreen.errors import QueryRefused
from fedscreen.rpc import clock, redial, serde, transport
from fedscreen.rpc.transport import RpcFailed
from fedscreen.v1 import federation_pb2 as pb
from fedscreen.v1 import federation_pb2_grpc as pb_grpc

__all__ = ["AggregatorWelcomed", "run_aggregator"]

_log = logging.getLogger(__name__)


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class AggregatorWelcomed:
    """The coordinator accepted a session (reported to ``on_welcome``)."""

    aggregator_id: str
    coordinator: str
    #: sessions opened since the agent started, this one included (count)
    session: int
    manifest_version: int
    #: this aggregator's clock minus the coordinator's (ms); None if unknown
    clock_offset_ms: int | None = None


class _Worker:
    """One thread that owns the aggregator's store and answers requests in arrival order."""

    def __init__(self, home: AggregatorHome, limits: AggregatorLimits) -> None:
        self.home = home
        self.limits = limits
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"aggregator-{home.member_id}"
        )
        # opened lazily on the worker thread and only ever used there
        self._store: PartialStore | None = None

    def _answer(self, work: serde.AggregationWork, now_ms: Callable[[], int]) -> bytes:
        if self._store is None:
            self._store = PartialStore.open(self.home)
        return answer_request(
            work, home=self.home, store=self._store, now_ms=now_ms(), limits=self.limits
        )

    async def answer(self, work: serde.AggregationWork, now_ms: Callable[[], int]) -> bytes:
        """The signed partial; QueryRefused (logged) with the reason. ``now_ms`` is read
        when the request is taken up, not when it was queued."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._answer, work, now_ms)

    def _close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def close(self) -> None:
        """Finish the request running (if any), close the store, stop the thread."""
        with contextlib.suppress(RuntimeError):  # already shut down
            self._executor.submit(self._close)
        self._executor.shutdown(wait=True)


class _Agent:
    """One aggregator's link to the coordinator; see :func:`run_aggregator`."""

    def __init__(
        self,
        home: Path,
        coordinator: str,
        *,
        coordinator_id: str | None,
        limits: AggregatorLimits,
        on_welcome: Callable[[AggregatorWelcomed], None] | None,
    ) -> None:
        self.home = AggregatorHome.open(home)
        self.identity = self.home.identity
        self.coordinator = coordinator
        self.peer_id = coordinator_id or self.identity.manifest().coordinator()
        self.limits = limits
        self.on_welcome = on_welcome
        self.worker = _Worker(self.home, limits)
        self.sessions = 0
        #: this aggregator's clock minus the coordinator's, from the newest Welcome (ms)
        self.offset_ms = 0

    async def session(self) -> None:
        """One stream from dial to end: returns when the coordinator ends it, raises if it fails."""
        # a stream takes one writer; replies and heartbeats come from several tasks
        outbox: asyncio.Queue[pb.AggregatorMessage] = asyncio.Queue()

        async def upstream() -> AsyncIterator[pb.AggregatorMessage]:
            while True:
                yield await outbox.get()

        async with transport.channel(
            self.identity, self.coordinator, peer_id=self.peer_id, limits=self.limits.transport
        ) as channel:
            hello = pb.AggregatorHello(
                aggregator_id=self.home.member_id, software_version=__version__
            )
            sent_ms = _now_ms()
            outbox.put_nowait(pb.AggregatorMessage(hello=hello))
            call = pb_grpc.AggregatorLinkStub(channel).Connect(upstream())
            downstream = aiter(call)
            tasks: set[asyncio.Task[None]] = set()
            try:
                with transport.rpc_errors("aggregator link"):
                    welcome = await self._welcome(downstream)
                    self._welcomed(welcome, sent_ms)
                    heartbeats = asyncio.create_task(self._heartbeats(outbox))
                    tasks.add(heartbeats)
                    async for message in downstream:
                        if message.WhichOneof("kind") != "aggregation":
                            continue  # a second Welcome means nothing
                        work = serde.aggregation_work(message.aggregation)
                        task = asyncio.create_task(self._reply(work, outbox))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
            finally:
                for task in tasks:
                    task.cancel()
                call.cancel()

    async def _welcome(self, downstream: AsyncIterator[pb.ToAggregator]) -> pb.Welcome:
        try:
            first = await asyncio.wait_for(
                anext(downstream, None), timeout=self.limits.welcome_timeout_ms / 1000
            )
        except TimeoutError:
            raise RpcFailed(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no Welcome within {self.limits.welcome_timeout_ms} ms",
                what="aggregator link",
            ) from None
        if first is None or first.WhichOneof("kind") != "welcome":
            raise RpcFailed(
                grpc.StatusCode.UNAVAILABLE,
                "the stream did not begin with a Welcome",
                what="aggregator link",
            )
        return first.welcome

    def _welcomed(self, welcome: pb.Welcome, sent_ms: int) -> None:
        self.sessions += 1
        offset = clock.round_trip_offset_ms(sent_ms, welcome.coordinator_time_unix_ms, _now_ms())
        self.offset_ms = offset or 0
        shown = "unknown" if offset is None else clock.describe_offset(offset)
        _log.info("aggregator %s: connected to %s at %s (clock offset %s)",
                  self.home.member_id, self.peer_id, self.coordinator, shown)  # fmt: skip
        if self.on_welcome is not None:
            self.on_welcome(
                AggregatorWelcomed(
                    self.home.member_id,
                    self.peer_id,
                    self.sessions,
                    welcome.manifest_version,
                    offset,
                )
            )

    def _coordinator_ms(self) -> int:
        """The coordinator's clock as this aggregator reads it (its deadlines are in it)."""
        return _now_ms() - self.offset_ms

    async def _reply(
        self, work: serde.AggregationWork, outbox: asyncio.Queue[pb.AggregatorMessage]
    ) -> None:
        """Answer one request: its Partial, or a Refusal with the reason."""
        try:
            envelope = await self.worker.answer(work, self._coordinator_ms)
        except QueryRefused as exc:
            _log.info("aggregator %s refused query %s: %s",
                      self.home.member_id, work.query_id[:64], exc)  # fmt: skip
            refusal = pb.Refusal(query_id=work.query_id, reason=str(exc))
            outbox.put_nowait(pb.AggregatorMessage(refusal=refusal))
            return
        except Exception:  # a bug or a broken home: the coordinator hears a reason, not data
            _log.exception("aggregator %s failed on query %s", self.home.member_id,
                           work.query_id[:64])  # fmt: skip
            refusal = pb.Refusal(query_id=work.query_id, reason="internal: the aggregator failed")
            outbox.put_nowait(pb.AggregatorMessage(refusal=refusal))
            return
        partial = pb.Partial(query_id=work.query_id, envelope=envelope)
        outbox.put_nowait(pb.AggregatorMessage(partial=partial))

    async def _heartbeats(self, outbox: asyncio.Queue[pb.AggregatorMessage]) -> None:
        interval = self.limits.heartbeat_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            outbox.put_nowait(pb.AggregatorMessage(heartbeat=pb.Heartbeat()))

    async def run(self, stop: asyncio.Event) -> None:
        """Keep a session open until ``stop`` is set; redial with backoff when one ends."""
        try:
            await redial.keep_dialling(
                self.session,
                lambda: self.sessions,
                stop,
                limits=self.limits,
                link=f"aggregator {self.home.member_id}: link to {self.coordinator}",
            )
        finally:
            await asyncio.get_running_loop().run_in_executor(None, self.worker.close)


async def run_aggregator(
    home: Path,
    coordinator: str,
    *,
    coordinator_id: str | None = None,
    limits: AggregatorLimits = DEFAULT_AGGREGATOR_LIMITS,
    stop: asyncio.Event | None = None,
    on_welcome: Callable[[AggregatorWelcomed], None] | None = None,
) -> None:
    """Serve the aggregator in ``home`` to the coordinator at ``coordinator`` (``host:port``).

    The coordinator's member id is ``coordinator_id`` or, by default, the single active
    coordinator in the aggregator's manifest; its certificate must name it. Runs until
    ``stop`` is set (or the task is cancelled); ``on_welcome`` is called each time a
    session is accepted.
    """
    agent = _Agent(
        home, coordinator, coordinator_id=coordinator_id, limits=limits, on_welcome=on_welcome
    )
    await agent.run(stop or asyncio.Event())
