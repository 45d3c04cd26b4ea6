"""The coordinator's AggregatorLink service: the second aggregator's stream.

The aggregator dials out as a node does (mutual TLS; its certificate says who it is,
its first message — an AggregatorHello — must name the same member). The session is
registered in :class:`~.aggregation.AggregatorSessions` (one per aggregator: a reconnect
replaces the old session), secure queries' answers go down it and signed partials or
refusals come back; a session silent for ``session_idle_timeout_ms`` is dropped, and
when it ends every request still waiting on it fails with the reason. Part of the
coordinator's gRPC face (:mod:`.server`), kept apart so each module stays small.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import grpc

from fedscreen.coordinator.aggregation import (
    AggregatorReply,
    AggregatorSession,
    AggregatorSessions,
    printable,
)
from fedscreen.coordinator.runtime import CoreThread, ManifestWatch, ServerLimits
from fedscreen.protocol.query import shown_query_id
from fedscreen.rpc import serde, transport
from fedscreen.v1 import federation_pb2 as pb
from fedscreen.v1 import federation_pb2_grpc as pb_grpc

__all__ = ["SERVICE", "AggregatorLinkServicer"]

_log = logging.getLogger(__name__)

#: the full service name, for the health service
SERVICE: Final = "fedscreen.v1.AggregatorLink"
#: the longest software version string kept from a Hello (characters)
MAX_VERSION_CHARS: Final = 40


class AggregatorLinkServicer(pb_grpc.AggregatorLinkServicer):
    """The second aggregator's long-lived stream."""

    def __init__(
        self,
        core: CoreThread,
        sessions: AggregatorSessions,
        limits: ServerLimits,
        watch: ManifestWatch,
    ) -> None:
        self.core = core
        self.sessions = sessions
        self.limits = limits
        self.watch = watch

    async def Connect(
        self,
        request_iterator: AsyncIterator[pb.AggregatorMessage],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.ToAggregator]:
        """Authenticate, take the Hello, then send requests until the stream ends."""
        # the newest manifest installed: an aggregator revoked a moment ago is refused now
        await self.watch.current()
        if self.watch.revoked:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "this coordinator is revoked")
        manifest = self.core.core.manifest
        member = await transport.authenticate(context, manifest, roles={"aggregator"})
        incoming = aiter(request_iterator)
        try:
            first = await asyncio.wait_for(
                anext(incoming), timeout=self.limits.hello_timeout_ms / 1000
            )
        except (TimeoutError, StopAsyncIteration):
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no Hello in time")
        # the certificate says who the aggregator is; the Hello only cross-checks it
        if first.WhichOneof("kind") != "hello" or first.hello.aggregator_id != member.id:
            _log.warning("aggregator %s: first message is not its own Hello", member.id)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first message must be Hello")
        version = printable(first.hello.software_version, MAX_VERSION_CHARS)
        session = AggregatorSession(member.id, outbox_messages=self.limits.session_outbox_messages)
        self.sessions.open(session)
        _log.info("aggregator %s connected (software %s)", member.id, version)
        reader = asyncio.create_task(self._read(session, incoming))
        try:
            yield pb.ToAggregator(
                welcome=pb.Welcome(
                    manifest_version=manifest.version,
                    coordinator_time_unix_ms=_now_ms(),
                )
            )
            while (work := await session.outbox.get()) is not None:
                yield serde.aggregation_request(work)
        finally:
            reader.cancel()
            self.sessions.close(session, "link lost")
            _log.info("aggregator %s disconnected", member.id)

    async def _read(
        self, session: AggregatorSession, incoming: AsyncIterator[pb.AggregatorMessage]
    ) -> None:
        """Settle requests from the aggregator's partials and refusals until its stream ends."""
        idle_s = self.limits.session_idle_timeout_ms / 1000
        reason = "link lost"
        try:
            while True:
                # aggregator messages are few (a heartbeat every few seconds, a partial per
                # secure query): one timer per read costs nothing here
                message = await asyncio.wait_for(anext(incoming), timeout=idle_s)
                self._take(session, message)
        except StopAsyncIteration:
            pass
        except TimeoutError:
            reason = "silent for too long"
            _log.warning("aggregator %s sent nothing for %.0f s; dropping it",
                         session.aggregator_id, idle_s)  # fmt: skip
        except (grpc.RpcError, grpc.aio.UsageError) as exc:  # UsageError: ended meanwhile
            _log.info("aggregator %s stream failed: %s", session.aggregator_id, exc)
        except grpc.aio.AbortError:
            reason = "sent a message it may not (see the log)"  # the guard refused it
        finally:
            self.sessions.close(session, reason)

    @staticmethod
    def _take(session: AggregatorSession, message: pb.AggregatorMessage) -> None:
        """One message from the aggregator's stream."""
        kind = message.WhichOneof("kind")
        if kind == "partial":
            query_id = message.partial.query_id
            reply = AggregatorReply(bytes(message.partial.envelope))
        elif kind == "refusal":
            query_id = message.refusal.query_id
            reply = AggregatorReply(None, f"refused: {printable(message.refusal.reason)}")
            _log.info("aggregator %s, query %s: %s", session.aggregator_id,
                      shown_query_id(query_id), reply.reason)  # fmt: skip
        else:
            if kind == "hello":
                _log.warning("aggregator %s sent a second Hello; ignored", session.aggregator_id)
            return  # heartbeats only prove liveness: reading one moved the idle timer on
        if not session.settle(query_id, reply):
            _log.info("discarded a late or unrequested reply from aggregator %s for query %s",
                      session.aggregator_id, shown_query_id(query_id))  # fmt: skip


def _now_ms() -> int:
    return int(time.time() * 1000)
