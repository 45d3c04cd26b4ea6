"""The node agent: dial out to the coordinator, keep one stream open, answer what comes down it.

County networks allow outbound connections only, so the node calls the
coordinator (mutual TLS, the node's own certificate) and keeps a
``NodeLink.Connect`` stream open: Hello up, Welcome down, then QueryRequests
down and Answers or Refusals up, with a Heartbeat every
``heartbeat_interval_ms`` so the coordinator knows the node's loop is alive
(gRPC keepalive, from :class:`~fedscreen.rpc.transport.TransportLimits`, watches
the connection itself). When the stream fails the node redials after a
jittered exponential backoff. After each Welcome and Refusal the node sends a signed
budget statement (:mod:`fedscreen.node.statement`) from its ledger, and each Answer
carries one made after its charge, so analysts can see what it has left before they ask.

The coordinator is only a relay: every query is checked here again by
:func:`fedscreen.node.requests.handle_query` (the analyst's signature against
the node's own manifest, freshness, the node's policy and budget), which runs
on one worker thread holding the node's SQLite connection, so the event loop
keeps reading and heartbeating while a query runs.

Clocks: the Hello carries the node's clock, the Welcome the coordinator's; the
node estimates its offset from the round trip (:mod:`fedscreen.rpc.clock`),
reads the coordinator's deadlines through it, and records it in
``HOME/link.json`` for ``fedscreen node status``. A node off by more than
``clock_tolerance_ms`` says so loudly in its log and refuses every query with
that reason (recorded in its own log), so the release names it as missing and why.

Trust kept current (:mod:`fedscreen.node.link`): a newer manifest in the Welcome
or pushed down the stream (``ManifestUpdate``) is verified against the pinned
authority key and used from the next query on, so a revoked analyst is refused
without a restart; one that no longer lists this node or its coordinator as
active stops the node (nothing more answered or charged; ``link.json`` says why).
Each answer carries a consistency proof of the node's log from the size the
coordinator last verified (``known_log_size``). The Welcome and every
QueryRequest carry the coordinator's newest checkpoint with a proof from the one
this node holds: a coordinator whose log shrank or forked gets no answers (each
query refused and recorded) — the node says so in its log and ``link.json`` and
redials (with backoff) in case it is repaired.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Final

import grpc

from fedscreen import __version__
from fedscreen.errors import ConfigError, VerificationError
from fedscreen.node.answering import Answering
from fedscreen.node.dial import (
    DEFAULT_NODE_LIMITS,
    NodeLimits,
    Welcomed,
    backoff_ms,
    keep_dialling,
)
from fedscreen.node.home import check_placement, load_config
from fedscreen.node.link import CoordinatorLog
from fedscreen.node.status import LinkState, write_link
from fedscreen.node.worker import QueryWorker, hello_facts
from fedscreen.protocol.refusal import refusal_reason
from fedscreen.rpc import clock, transport
from fedscreen.rpc.transport import RpcFailed
from fedscreen.trust.identity import load_identity
from fedscreen.v1 import federation_pb2 as pb
from fedscreen.v1 import federation_pb2_grpc as pb_grpc

__all__ = [
    "DEFAULT_NODE_LIMITS",
    "NodeLimits",
    "Welcomed",
    "backoff_ms",
    "run_node",
]

_log = logging.getLogger(__name__)

#: how long a stream the node ends may take to deliver the messages queued before (s)
END_GRACE_S: Final = 2.0


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Agent(Answering):
    """One node's link to the coordinator; see :func:`run_node`."""

    def __init__(
        self,
        home: Path,
        coordinator: str,
        *,
        coordinator_id: str | None,
        limits: NodeLimits,
        on_welcome: Callable[[Welcomed], None] | None,
        unsafe_test_answer_delay_ms: int,
        unsafe_test_clock_skew_ms: int,
    ) -> None:
        self.config = load_config(home)
        self.identity = load_identity(home)
        if self.identity.member_id != self.config.node_id or self.identity.role != "node":
            raise ConfigError(f"{home}: the identity is not node {self.config.node_id}'s")
        manifest = self.identity.manifest()
        check_placement(self.config, manifest)
        self.coordinator = coordinator
        self.peer_id = coordinator_id or manifest.coordinator()
        self.coordinator_log = CoordinatorLog(home, self.peer_id)
        self.limits = limits
        self.on_welcome = on_welcome
        self.delay_s = max(unsafe_test_answer_delay_ms, 0) / 1000
        if self.delay_s:
            _log.warning(
                "TEST ONLY: every answer is held back %d ms before it is sent",
                unsafe_test_answer_delay_ms,
            )
        self.skew_ms = unsafe_test_clock_skew_ms
        if self.skew_ms:
            _log.warning("TEST ONLY: this node's clock is set %d ms off", self.skew_ms)
        self.worker = QueryWorker(
            self.config, self.config.policy(), manifest, coordinator_id=self.peer_id
        )
        #: why every query of this session is refused: the coordinator's log went back
        self.halted = ""
        self.conflict = ""  # the manifest conflict last recorded in link.json
        self.sessions = 0
        #: this node's clock minus the coordinator's, from the newest Welcome (ms)
        self.offset_ms: int | None = None

    def _now_ms(self) -> int:
        """The node's clock (ms since the epoch); off by the test skew, if any."""
        return _now_ms() + self.skew_ms

    def _record_link(self, *, connected: bool, refusal: str | None = None) -> None:
        """Write ``HOME/link.json`` for ``fedscreen node status``; a failure is only logged."""
        if refusal is None:
            refusal = self.worker.ended or self.halted or None
        if refusal is None:
            refusal = clock.clock_refusal(self.offset_ms, self.limits.clock_tolerance_ms)
        state = LinkState(
            coordinator=self.coordinator,
            connected=connected,
            clock_offset_ms=self.offset_ms,
            clock_tolerance_ms=self.limits.clock_tolerance_ms,
            updated_ms=self._now_ms(),
            refusing=refusal or "",
            manifest_conflict=self.worker.keeper.conflict,
        )
        try:
            write_link(self.config.home, state)
        except (OSError, ConfigError) as exc:
            _log.warning("node %s: cannot record its link state: %s", self.config.node_id, exc)

    async def session(self) -> None:
        """One stream from dial to end: returns when the coordinator ends it, raises if it fails."""
        node_id = self.config.node_id
        before = self.sessions
        self._check_member()
        # everything sent up the stream goes through one queue: a stream takes one
        # writer, and answers and heartbeats come from several tasks; None ends it
        outbox: asyncio.Queue[pb.NodeMessage | None] = asyncio.Queue()
        end = asyncio.Event()

        async def upstream() -> AsyncIterator[pb.NodeMessage]:
            while (message := await outbox.get()) is not None:
                yield message

        async def send(message: pb.NodeMessage) -> None:
            outbox.put_nowait(message)

        async with transport.channel(
            self.identity, self.coordinator, peer_id=self.peer_id, limits=self.limits.transport
        ) as channel:
            eligible, year = hello_facts(self.config.database)
            hello = pb.Hello(
                node_id=node_id,
                software_version=__version__,
                eligible_students=eligible,
                latest_academic_year=year,
                node_time_unix_ms=self._now_ms(),
                coordinator_log_size=self.coordinator_log.known_size(self._coordinator_key()),
            )
            outbox.put_nowait(pb.NodeMessage(hello=hello))
            call = pb_grpc.NodeLinkStub(channel).Connect(upstream())
            downstream = aiter(call)
            tasks: set[asyncio.Task[object]] = set()
            try:
                with transport.rpc_errors("node link"):
                    try:
                        welcome = await asyncio.wait_for(
                            anext(downstream, None), timeout=self.limits.welcome_timeout_ms / 1000
                        )
                    except TimeoutError:
                        raise RpcFailed(
                            grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"no Welcome within {self.limits.welcome_timeout_ms} ms",
                            what="node link",
                        ) from None
                    if welcome is None or welcome.WhichOneof("kind") != "welcome":
                        raise RpcFailed(
                            grpc.StatusCode.UNAVAILABLE,
                            "the stream did not begin with a Welcome",
                            what="node link",
                        )
                    await self._check_welcome(welcome.welcome)
                    self._welcomed(
                        welcome.welcome.manifest_version,
                        clock.round_trip_offset_ms(
                            hello.node_time_unix_ms,
                            welcome.welcome.coordinator_time_unix_ms,
                            self._now_ms(),
                        ),
                    )
                    tasks.add(asyncio.create_task(self._heartbeats(send)))
                    statement = asyncio.create_task(self._send_statement(send))
                    tasks.add(statement)
                    statement.add_done_callback(tasks.discard)
                    reader = asyncio.create_task(self._read(downstream, send, tasks, end))
                    ender = asyncio.create_task(end.wait())
                    tasks.update((reader, ender))
                    await asyncio.wait({reader, ender}, return_when=asyncio.FIRST_COMPLETED)
                    if reader.done():
                        reader.result()  # the stream ended, or failed: raise that
                    else:  # the refusals queued go first, then the node ends the stream
                        outbox.put_nowait(None)
                        await asyncio.wait({reader}, timeout=END_GRACE_S)
                    self._check_member()
            finally:
                for task in tasks:
                    task.cancel()
                call.cancel()
                if self.sessions > before:  # this session was welcomed; it is over now
                    self._record_link(connected=False)

    async def _read(
        self,
        downstream: AsyncIterator[pb.CoordinatorMessage],
        send: Callable[[pb.NodeMessage], Awaitable[None]],
        tasks: set[asyncio.Task[object]],
        end: asyncio.Event,
    ) -> None:
        """Take the coordinator's messages in order until the stream ends."""
        async for message in downstream:
            if message.WhichOneof("kind") == "query":
                self._check_query_checkpoint(message.query)
                task = asyncio.create_task(self._answer(message.query, send, end))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            elif message.WhichOneof("kind") == "manifest":
                # in the worker's queue: queries after it are checked against it
                await self._offer_manifest(bytes(message.manifest.manifest))
                self._check_member()
            # Cancel is advisory: a query running finishes and is charged once; the coordinator
            # discards its answer, and a replay of the query id gets the stored one at no cost

    def _check_member(self) -> None:
        """Raise ConfigError (the node stops serving; recorded for ``node status``) if the
        manifest in force no longer lists this node or its coordinator as active."""
        reason = self.worker.membership()
        if not reason:
            return
        _log.error("node %s: STOPS SERVING: %s", self.config.node_id, reason)
        self._record_link(connected=False, refusal=reason)
        raise ConfigError(f"node {self.config.node_id} stops serving: {reason}")

    def _check_query_checkpoint(self, request: pb.QueryRequest) -> None:
        """Verify the query's coordinator checkpoint extends the one held (then hold it);
        a log that went back halts the session: each query in it is refused. An empty
        checkpoint passes only while the node holds none: omitting it hides nothing.
        """
        if self.halted or self.worker.membership():
            return  # already refusing every query
        proof = [bytes(h) for h in request.coordinator_consistency_proof]
        try:
            self.coordinator_log.check(
                request.coordinator_checkpoint, proof, key=self._coordinator_key()
            )
        except VerificationError as exc:
            # no code fits better: the node will not work, and charges nothing
            self.halted = refusal_reason("internal", f"the coordinator's log went back: {exc}")
            _log.error("node %s: NOT WORKING WITH COORDINATOR %s: %s; the province must "
                       "investigate", self.config.node_id, self.peer_id, self.halted)  # fmt: skip
            self._record_link(connected=True)

    def _coordinator_key(self) -> bytes:
        return self.worker.manifest.member(self.peer_id, role="coordinator").signing_key

    async def _offer_manifest(self, text: bytes) -> None:
        """Use a newer manifest from the coordinator; a bad one is logged and ignored."""
        try:
            await self.worker.offer_manifest(text)
        except (VerificationError, ConfigError) as exc:
            _log.error("node %s: the coordinator sent a manifest that does not verify: %s",
                       self.config.node_id, exc)  # fmt: skip
            self._note_conflict()

    def _note_conflict(self) -> None:
        """Record a manifest conflict the keeper found in ``link.json`` (once)."""
        if self.worker.keeper.conflict != self.conflict:
            self.conflict = self.worker.keeper.conflict
            self._record_link(connected=True)

    async def _check_welcome(self, welcome: pb.Welcome) -> None:
        """Adopt the Welcome's manifest if newer; refuse a coordinator whose log rolled back."""
        if welcome.manifest:
            await self._offer_manifest(bytes(welcome.manifest))
            self._check_member()
        proof = [bytes(h) for h in welcome.coordinator_consistency_proof]
        try:
            self.coordinator_log.check(
                welcome.coordinator_checkpoint, proof, key=self._coordinator_key()
            )
        except VerificationError as exc:
            _log.error(
                "node %s: NOT WORKING WITH COORDINATOR %s: %s. Its log was rolled back or "
                "rewritten; the province must investigate (saved checkpoint: %s)",
                self.config.node_id,
                self.peer_id,
                exc,
                self.coordinator_log.path,
            )
            self._record_link(connected=False, refusal=f"the coordinator's log went back: {exc}")
            raise RpcFailed(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the coordinator's log does not extend the one this node saw: {exc}",
                what="node link",
            ) from None
        self.halted = ""  # the Welcome proved the log extends the one held

    def _welcomed(self, version: int, offset_ms: int | None) -> None:
        self.sessions += 1
        self.offset_ms = offset_ms
        shown = "unknown" if offset_ms is None else clock.describe_offset(offset_ms)
        _log.info(
            "node %s: connected to %s at %s (clock offset %s)",
            self.config.node_id,
            self.peer_id,
            self.coordinator,
            shown,
        )
        refusal = clock.clock_refusal(offset_ms, self.limits.clock_tolerance_ms)
        if refusal is not None:
            _log.error(
                "node %s: EVERY QUERY WILL BE REFUSED: its %s. Fix this machine's clock.",
                self.config.node_id,
                refusal,
            )
        self._record_link(connected=True)
        if version > self.worker.manifest.version:
            _log.warning(
                "the coordinator holds manifest version %d, this node %d: "
                "install the newer manifest (fedscreen identity update-manifest)",
                version,
                self.worker.manifest.version,
            )
        if self.on_welcome is not None:
            self.on_welcome(
                Welcomed(self.config.node_id, self.peer_id, self.sessions, version, offset_ms)
            )

    async def _heartbeats(self, send: Callable[[pb.NodeMessage], Awaitable[None]]) -> None:
        interval = self.limits.heartbeat_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            await send(pb.NodeMessage(heartbeat=pb.Heartbeat()))

    async def run(self, stop: asyncio.Event) -> None:
        """Keep a session open until ``stop`` is set; redial with backoff when one ends."""
        try:
            await keep_dialling(
                self.session,
                lambda: self.sessions,
                stop,
                limits=self.limits,
                link=f"node {self.config.node_id}: link to {self.coordinator}",
            )
        finally:
            await asyncio.get_running_loop().run_in_executor(None, self.worker.close)


async def run_node(
    home: Path,
    coordinator: str,
    *,
    coordinator_id: str | None = None,
    limits: NodeLimits = DEFAULT_NODE_LIMITS,
    stop: asyncio.Event | None = None,
    on_welcome: Callable[[Welcomed], None] | None = None,
    unsafe_test_answer_delay_ms: int = 0,
    unsafe_test_clock_skew_ms: int = 0,
) -> None:
    """Serve the node in ``home`` to the coordinator at ``coordinator`` (``host:port``).

    The coordinator's member id is ``coordinator_id`` or, by default, the single
    active coordinator in the node's manifest; its certificate must name it.
    Policy and manifest are read once, here. Runs until ``stop`` is set (or the
    task is cancelled); ``on_welcome`` is called each time a session is accepted.

    ``unsafe_test_answer_delay_ms`` is for tests only: every answer is held back
    that long after it is computed (and charged), so a test can make a node miss
    the coordinator's deadline. ``unsafe_test_clock_skew_ms`` is for tests only
    too: the node's clock (its Hello, freshness checks, deadlines) runs that far
    off. The command line never sets either.
    """
    agent = _Agent(
        home,
        coordinator,
        coordinator_id=coordinator_id,
        limits=limits,
        on_welcome=on_welcome,
        unsafe_test_answer_delay_ms=unsafe_test_answer_delay_ms,
        unsafe_test_clock_skew_ms=unsafe_test_clock_skew_ms,
    )
    await agent.run(stop or asyncio.Event())
