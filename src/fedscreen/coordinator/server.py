"""The coordinator's gRPC face: node sessions, analysts' queries, the auditors' view of its log.

Servicers are thin — authenticate, decode, call :class:`~fedscreen.coordinator.core.Coordinator`,
encode — and everything they refuse goes through the transport's one error table.

* **NodeLink.Connect** — a node dials out and keeps one stream open. Its
  certificate says who it is; its first message (Hello) must name the same
  member. The session is registered (one live session per node: a new one
  replaces the old) and queries are pushed down it; answers and refusals coming
  back settle the waiting queries. When the stream ends, every query still
  waiting on that node counts it as missing. The node's signed budget
  statements (after its Welcome and each refusal; each answer carries one) are
  kept, verified when read, the newest per node, also after it disconnects.
* **Analyst.Submit** — verify and log the query (``core.accept``), push it to the
  target nodes, wait until all have replied or the deadline passes, then
  ``core.release``. Each query carries the size of the node's log the
  coordinator last verified, and each answer proves its log extends it; a node
  whose log shrank or forked is quarantined (:mod:`.quarantine`) and its answers
  are not used. Each query also carries the coordinator's newest checkpoint and a
  proof from the one the node's session last got, so nodes follow its log. A node
  that is not connected, refuses, loses its link or misses the deadline is
  *missing*; an answer arriving after the query was settled finds nobody waiting
  and is discarded (the node's own ledger keeps the charge, and a replay of the
  same query id gets the stored answer free).
  The release says why each missing node is missing (``missing_reasons``).
* **Manifest** — a newer manifest installed in the home is pushed down every open
  node stream (and sent in each Welcome); a member it revokes has its stream closed
  at once and its Hello refused (:class:`~.runtime.ManifestWatch`).
* **Analyst.Budgets**, **Status**, **Fetch** — the nodes' newest budget statements,
  the coordinator's view of its nodes, and the newest version of an analyst's own
  query's release (:mod:`.analystrpc`).
* **Audit** — checkpoint, entries and Merkle proofs of the coordinator's log, for
  auditors and analysts, who verify them themselves (:mod:`.auditrpc`).

Concurrency: one asyncio loop (``grpc.aio``). The core — its SQLite log and its
signing key — lives on one dedicated worker thread (:class:`CoreThread`), so the
loop never waits on an fsync and core calls run one at a time in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Final

import grpc

from fedscreen._util.files import write_ready_file
from fedscreen.coordinator.aggregation import AggregatorSessions
from fedscreen.coordinator.aggregatorrpc import AggregatorLinkServicer
from fedscreen.coordinator.analystrpc import AnalystReads
from fedscreen.coordinator.auditrpc import AuditServicer
from fedscreen.coordinator.core import Coordinator
from fedscreen.coordinator.offline import queue_offline, remember_stream
from fedscreen.coordinator.runtime import (
    DEFAULT_SERVER_LIMITS,
    CoreThread,
    Listening,
    ManifestWatch,
    ServerLimits,
    ask_nodes,
    keep_statement,
    node_refusal,
    open_session,
    screen,
)
from fedscreen.coordinator.secureround import secure_round
from fedscreen.coordinator.sessions import (
    NodeReply,
    NodeSession,
    Push,
    PushManifest,
    SessionRegistry,
    Withdraw,
    now_ms,
)
from fedscreen.coordinator.years import ACADEMIC_YEAR
from fedscreen.errors import QueryRefused
from fedscreen.protocol.query import shown_query_id
from fedscreen.protocol.secure import aggregators as secure_aggregators
from fedscreen.rpc import clock, guard, serde, transport
from fedscreen.v1 import federation_pb2 as pb
from fedscreen.v1 import federation_pb2_grpc as pb_grpc

__all__ = [
    "DEFAULT_SERVER_LIMITS",
    "CoreThread",
    "Listening",
    "ServerLimits",
    "serve",
]

_log = logging.getLogger(__name__)

#: full service names, for the health service
SERVICES: Final = (
    "fedscreen.v1.NodeLink",
    "fedscreen.v1.Analyst",
    "fedscreen.v1.Audit",
    "fedscreen.v1.AggregatorLink",
)


# ---------------------------------------------------------------- servicers


class _Shared:
    """What the node and analyst servicers share: the core's thread, the node sessions,
    the server's limits, the manifest watch and the second aggregator's session."""

    def __init__(
        self,
        core: CoreThread,
        sessions: SessionRegistry,
        limits: ServerLimits,
        watch: ManifestWatch,
        aggregators: AggregatorSessions | None = None,
    ) -> None:
        self.core = core
        self.sessions = sessions
        self.limits = limits
        self.watch = watch
        #: the second aggregator of secure queries (its link: :mod:`.aggregatorrpc`)
        self.aggregators = AggregatorSessions() if aggregators is None else aggregators
        #: work handed to the core's thread without waiting for it
        self._tasks: set[asyncio.Task[None]] = set()


class NodeLinkServicer(_Shared, pb_grpc.NodeLinkServicer):
    """Nodes' long-lived streams."""

    async def Connect(
        self,
        request_iterator: AsyncIterator[pb.NodeMessage],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.CoordinatorMessage]:
        """Authenticate, take the Hello, then push queries until the stream ends."""
        # the newest manifest installed: a member revoked a moment ago is refused now
        manifest_file = await self.watch.current()
        if self.watch.revoked:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "this coordinator is revoked")
        manifest = self.core.core.manifest
        member = await transport.authenticate(context, manifest, roles={"node"})
        incoming = aiter(request_iterator)
        try:
            first = await asyncio.wait_for(
                anext(incoming), timeout=self.limits.hello_timeout_ms / 1000
            )
        except (TimeoutError, StopAsyncIteration):
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no Hello in time")
        # the certificate says who the node is; the Hello only cross-checks it
        if first.WhichOneof("kind") != "hello" or first.hello.node_id != member.id:
            _log.warning("node %s: first message is not its own Hello", member.id)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first message must be Hello")
        session = NodeSession(member.id, outbox_messages=self.limits.session_outbox_messages)
        if first.hello.eligible_students > 0:
            self.sessions.eligible[member.id] = int(first.hello.eligible_students)
        if ACADEMIC_YEAR.fullmatch(first.hello.latest_academic_year):
            self.sessions.latest_years[member.id] = first.hello.latest_academic_year
        self._hello(session, first.hello)
        known = max(int(first.hello.coordinator_log_size), 0)
        note, proof = await open_session(self.core, self.sessions, session, known)
        reader = asyncio.create_task(self._read(session, incoming))
        try:
            welcome = pb.Welcome(
                manifest_version=manifest.version,
                coordinator_time_unix_ms=now_ms(),
                coordinator_checkpoint=note,
                coordinator_consistency_proof=proof,
                manifest=manifest_file,
            )
            yield pb.CoordinatorMessage(welcome=welcome)
            while True:
                message = await session.outbox.get()
                if message is None:
                    break
                yield _to_pb(message)
        finally:
            reader.cancel()
            self.sessions.close(session, "link lost")
            _log.info("node %s disconnected", member.id)
            # kept in case the node goes offline next (one write per stream, not per query)
            size = session.coordinator_size
            self._later(lambda core: remember_stream(core, member.id, size))

    def _later(self, fn: Callable[[Coordinator], None]) -> None:
        """Run ``fn`` on the core's thread without waiting (from a stream's cleanup, which
        must not block); a failure is only logged."""

        async def run() -> None:
            try:
                await self.core.call(fn)
            except Exception:  # the core may be closing: the note is informative only
                _log.warning("could not note a node's stream in the database", exc_info=True)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)  # a reference, or the task may be collected unfinished
        task.add_done_callback(self._tasks.discard)

    def _hello(self, session: NodeSession, hello: pb.Hello) -> None:
        """Note the node's clock offset and software; say loudly if its clock is off."""
        offset = clock.node_offset_ms(hello.node_time_unix_ms, session.opened_ms)
        version = _printable(hello.software_version[:40])
        self.sessions.hello(session, clock_offset_ms=offset, software_version=version)
        shown = "unknown" if offset is None else clock.describe_offset(offset)
        _log.info("node %s connected (software %s, clock %s)", session.node_id, version, shown)
        refusal = clock.clock_refusal(offset, self.limits.clock_tolerance_ms)
        if refusal is not None:
            _log.error("node %s: %s", session.node_id, refusal)

    async def _read(self, session: NodeSession, incoming: AsyncIterator[pb.NodeMessage]) -> None:
        """Settle queries from the node's answers and refusals until its stream ends."""
        idle_s = self.limits.session_idle_timeout_ms / 1000
        reason = "link lost"
        # One idle timer per session, moved on by each message: not one wait_for (a task
        # and a timer) per message, which cost the coordinator more than reading it.
        loop = asyncio.get_running_loop()
        reader = asyncio.current_task()
        heard = loop.time()
        silent = False
        timer: asyncio.TimerHandle

        def check_idle() -> None:
            nonlocal timer, silent
            quiet = loop.time() - heard
            if quiet < idle_s:
                timer = loop.call_later(idle_s - quiet, check_idle)
            elif reader is not None:
                silent = True
                reader.cancel()

        timer = loop.call_later(idle_s, check_idle)
        try:
            async for message in incoming:
                heard = loop.time()
                self._take(session, message)
                # heartbeats only prove liveness: reading one moved the idle timer on
        except asyncio.CancelledError:
            if not silent:
                raise
            reason = "silent for too long"
            _log.warning("node %s sent nothing for %.0f s; dropping it", session.node_id, idle_s)
        except (grpc.RpcError, grpc.aio.UsageError) as exc:  # UsageError: ended meanwhile
            _log.info("node %s stream failed: %s", session.node_id, exc)
        except grpc.aio.AbortError:
            reason = "sent a message it may not (see the log)"  # the guard refused it
        finally:
            timer.cancel()
            self.sessions.close(session, reason)

    def _take(self, session: NodeSession, message: pb.NodeMessage) -> None:
        """One message from the node's stream."""
        kind = message.WhichOneof("kind")
        if kind == "answer":
            answer = message.answer
            reply = NodeReply(
                bytes(answer.envelope),
                proof=tuple(bytes(h) for h in answer.consistency_proof),
                sent_size=session.sent_log_size(answer.query_id),
            )
            self._settle(session, answer.query_id, reply)
            if answer.budget_statement:
                keep_statement(self.sessions, session.node_id, bytes(answer.budget_statement))
        elif kind == "refusal":
            refusal = message.refusal
            why = node_refusal(refusal.reason)
            shown = shown_query_id(refusal.query_id)
            _log.info("node %s, query %s: %s", session.node_id, shown, why)
            self._settle(session, refusal.query_id, NodeReply(None, why))
        elif kind == "budget":
            keep_statement(self.sessions, session.node_id, bytes(message.budget.envelope))
        elif kind == "hello":
            _log.warning("node %s sent a second Hello; ignored", session.node_id)

    @staticmethod
    def _settle(session: NodeSession, query_id: str, reply: NodeReply) -> None:
        if not session.settle(query_id, reply):
            # DESIGN "Transport": a late answer is discarded (the query was already released)
            _log.info(
                "discarded a late or unrequested reply from node %s for query %s",
                session.node_id,
                shown_query_id(query_id),
            )


class AnalystServicer(_Shared, AnalystReads):
    """Analysts' signed queries in, signed releases out (Budgets, Status and Fetch:
    :class:`.analystrpc.AnalystReads`)."""

    async def Submit(
        self, request: pb.SubmitRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SubmitResponse:
        """Accept, fan out, wait, release."""
        member = await transport.authenticate(context, self.core.core.manifest, roles={"analyst"})
        async with transport.abort_on_error(context):
            received_ms = now_ms()
            envelope = bytes(request.query_envelope)
            # a captured query relayed by another analyst is not theirs to spend: accept()
            # refuses it before anything is logged
            query = await self.core.call(
                lambda core: core.accept(envelope, now_ms=received_ms, caller=member.id)
            )
            if query.spec.secure:
                # no node is charged for a secure query that could get no figure
                self._second_aggregator_ready()
            wait_s = self.limits.answer_wait_s(request.deadline_ms, context.time_remaining())
            # accept() read the newest manifest: the nodes get it before the query
            await self.watch.current()
            # each node once, in the order asked
            # those it names, else those inside its analyst's scope
            targets = await self.core.call(lambda core: core.targets(query))
            book = self.core.book
            known = await self.core.call(lambda _: book.known_sizes(targets))
            latest = dict(self.sessions.latest_years)
            year = await self.core.call(lambda core: core.academic_year_for(query, latest))
            # offline nodes (no network path) get it by file: queued, missing from this release
            # (the core's thread is asked only when there are some: no hop per query)
            offline: dict[str, str] = {}
            if self.core.core.manifest.offline.intersection(targets):
                offline = await self.core.call(
                    lambda core: queue_offline(core, query, envelope, targets, academic_year=year)
                )
            online = tuple(n for n in targets if n not in offline)
            replies = await ask_nodes(
                self.core, self.sessions, query, envelope, online, wait_s, known_log_sizes=known,
                academic_year=year or "",  # a query without years: one year for every node
            )  # fmt: skip
            replies.update({n: NodeReply(None, why) for n, why in offline.items()})
            await self.core.call(lambda core: screen(core, query, replies, academic_year=year))
            answers = {n: r.envelope for n, r in replies.items() if r.envelope is not None}
            missing = [n for n in targets if n not in answers]
            for node_id in missing:
                _log.info(
                    "query %s: node %s missing (%s)",
                    query.query_id,
                    node_id,
                    replies[node_id].reason,
                )
            eligible = dict(self.sessions.eligible)
            reasons = {n: replies[n].reason for n in missing}
            # the checkpoints verified with these answers, one commit for all of them
            await self.core.call(lambda _: book.flush())
            checked = await self.core.call(
                lambda core: core.check_answers(
                    query, answers, missing, reasons=reasons, academic_year=year
                )
            )
            outcome = None
            if query.spec.secure:
                # the figures come from the two aggregators' partials, never a county's value
                left = self.limits.answer_wait_s(request.deadline_ms, context.time_remaining())
                outcome, checked = await secure_round(
                    self.core, self.aggregators, query, envelope, checked, timeout_s=left
                )
            release = await self.core.call(
                lambda core: core.release(
                    query, answers, missing, eligible=eligible, academic_year=year,
                    targeted=targets,  # those asked, even if revoked since
                    checked=checked, secure=outcome, query_envelope=envelope,
                )
            )  # fmt: skip
        return serde.submit_response(release.envelope, release.answers, release.missing)

    def _second_aggregator_ready(self) -> None:
        """QueryRefused unless the manifest names the second aggregator and it is connected."""
        second = secure_aggregators(self.core.core.manifest)[1]
        if second not in self.aggregators.connected():
            raise QueryRefused(
                f"secure aggregation: the second aggregator {second} is not connected; "
                "nothing was asked of the nodes"
            )


def _to_pb(message: Push | PushManifest | Withdraw) -> pb.CoordinatorMessage:
    """A session's queued message as it goes down the node's stream."""
    if isinstance(message, Withdraw):
        return pb.CoordinatorMessage(cancel=pb.Cancel(query_id=message.query_id))
    if isinstance(message, PushManifest):
        return pb.CoordinatorMessage(manifest=pb.ManifestUpdate(manifest=message.manifest))
    return pb.CoordinatorMessage(
        query=pb.QueryRequest(
            query_id=message.query_id,
            query_envelope=message.envelope,
            deadline_unix_ms=message.deadline_unix_ms,
            known_log_size=message.known_log_size,
            academic_year=message.academic_year,
            coordinator_checkpoint=message.coordinator_checkpoint,
            coordinator_consistency_proof=message.coordinator_proof,
        )
    )


def _printable(text: str) -> str:
    """``text`` with control characters blanked: a node's words reach analysts' terminals."""
    return "".join(c if c.isprintable() else " " for c in text)


# ---------------------------------------------------------------- serving


async def serve(
    home: Path,
    listen: str,
    *,
    limits: ServerLimits = DEFAULT_SERVER_LIMITS,
    ready_file: Path | None = None,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Listening], None] | None = None,
    own_process: bool = False,
) -> None:
    """Run the coordinator of ``home`` on ``listen`` (``host:port``; port 0 picks one).

    Returns when ``stop`` is set (or the task is cancelled), after closing every
    node session and giving calls in flight ``shutdown_grace_ms`` to finish.
    Once listening, writes ``ready_file`` (see :class:`Listening`) and calls ``on_ready``.
    ``own_process``: the process runs only this server (``fedscreen coordinator
    serve``), so its garbage collector is tuned for it (:func:`guard.settle_collector`).
    """
    core = await CoreThread.open(home)
    try:
        sessions = SessionRegistry()
        watch = ManifestWatch(core, sessions)
        server = transport.server(limits=limits.transport)
        aggregators = AggregatorSessions()
        node_link = NodeLinkServicer(core, sessions, limits, watch, aggregators)
        pb_grpc.add_NodeLinkServicer_to_server(node_link, server)
        pb_grpc.add_AnalystServicer_to_server(
            AnalystServicer(core, sessions, limits, watch, aggregators), server
        )
        pb_grpc.add_AggregatorLinkServicer_to_server(
            AggregatorLinkServicer(core, aggregators, limits, watch), server
        )
        pb_grpc.add_AuditServicer_to_server(AuditServicer(core, limits), server)
        health = await transport.add_health(server, services=SERVICES)
        port = transport.add_secure_port(server, core.core.identity, listen)
        await server.start()
        trimming = asyncio.create_task(
            guard.return_freed_memory(interval_s=limits.heap_trim_interval_ms / 1000)
        )
        watching = asyncio.create_task(watch.run(limits.manifest_check_interval_ms))
        if own_process:
            guard.settle_collector()
        host = listen.rsplit(":", 1)[0]
        where = Listening(core.core.member_id, f"{host}:{port}", port, os.getpid())
        _log.info("coordinator %s listening on %s", where.member_id, where.address)
        if ready_file is not None:
            write_ready_file(ready_file, where.to_json())
        if on_ready is not None:
            on_ready(where)
        try:
            if stop is None:
                await server.wait_for_termination()
            else:
                await stop.wait()
        finally:
            # not SERVING any more, streams ended (nodes redial), then calls get their grace
            await health.enter_graceful_shutdown()
            sessions.close_all("the coordinator is shutting down")
            aggregators.close_all("the coordinator is shutting down")
            await server.stop(grace=limits.shutdown_grace_ms / 1000)
            for task in (trimming, watching):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        await core.close()
