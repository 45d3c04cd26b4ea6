"""The answering half of the node's agent: one QueryRequest in, an Answer or a Refusal out.

A mixin of :class:`fedscreen.node.agent._Agent` (kept apart so each module stays
small); the attributes it reads are the agent's, declared below.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Final

from fedscreen.errors import QueryRefused
from fedscreen.node.dial import NodeLimits
from fedscreen.node.home import NodeConfig
from fedscreen.node.worker import QueryWorker
from fedscreen.protocol.query import shown_query_id
from fedscreen.protocol.refusal import refusal_reason
from fedscreen.rpc import clock
from fedscreen.v1 import federation_pb2 as pb

__all__ = ["MAX_REASON_CHARS", "Answering"]

_log = logging.getLogger("fedscreen.node.agent")  # one logger for the whole agent

#: longest refusal reason sent up the stream (characters)
MAX_REASON_CHARS: Final = 300

Send = Callable[[pb.NodeMessage], Awaitable[None]]


class Answering(ABC):
    """Answer or refuse the queries a session receives, and say what the budget holds."""

    config: NodeConfig
    limits: NodeLimits
    worker: QueryWorker
    #: why every query of this session is refused ("" if none)
    halted: str
    #: this node's clock minus the coordinator's (ms), from the newest Welcome
    offset_ms: int | None
    #: TEST ONLY: how long each answer is held back (s)
    delay_s: float

    @abstractmethod
    def _now_ms(self) -> int:
        """The node's clock (ms since the epoch)."""

    @abstractmethod
    def _note_conflict(self) -> None:
        """Record a manifest conflict in the home, if there is one."""

    async def _send_statement(self, send: Send) -> None:
        """Send a fresh budget statement up the stream; a failure is logged, never fatal."""
        envelope = await self._statement()
        if envelope:
            await send(pb.NodeMessage(budget=pb.BudgetStatement(envelope=envelope)))

    async def _answer(
        self,
        request: pb.QueryRequest,
        send: Send,
        end: asyncio.Event,
    ) -> None:
        stated = await self._reply(request, send)
        self._note_conflict()  # a manifest installed in the home may be one
        if self.worker.ended:  # a manifest installed in the home ended the membership
            end.set()
            return
        if not stated:
            # made after the refusal was recorded (same worker thread, queued behind it):
            # it shows that nothing was charged
            await self._send_statement(send)

    async def _statement(self) -> bytes:
        """A fresh budget statement, or b"" if the node cannot make one (logged)."""
        try:
            return await self.worker.statement()
        except Exception:  # the statement is informative only: keep answering queries
            _log.exception("node %s could not make its budget statement", self.config.node_id)
            return b""

    async def _reply(self, request: pb.QueryRequest, send: Send) -> bool:
        """Answer or refuse one query; True if a budget statement went up with the answer."""
        query_id = request.query_id
        shown = shown_query_id(query_id)  # never the coordinator's raw text in a log
        # the deadline is in the coordinator's clock: read it through the offset
        coordinator_now = self._now_ms() - (self.offset_ms or 0)
        off = clock.clock_refusal(self.offset_ms, self.limits.clock_tolerance_ms)
        refusal = self.halted or (off and refusal_reason("stale", off))
        if (
            refusal is None
            and request.deadline_unix_ms
            and (coordinator_now >= request.deadline_unix_ms)
        ):
            # DESIGN: do not start work that cannot be delivered in time
            refusal = refusal_reason("deadline-passed", "it passed before the node could start")
        if refusal:
            _log.warning("node %s refused query %s: %s", self.config.node_id, shown, refusal)
            try:
                await self.worker.refuse(shown, refusal)
            except Exception:  # the refusal still goes up: the coordinator must know why
                _log.exception("node %s could not record a refusal", self.config.node_id)
            await send(pb.NodeMessage(refusal=pb.Refusal(query_id=query_id, reason=refusal)))
            return False
        try:
            # a query queued behind another may start late: the worker checks the
            # deadline again (in the node's clock) when it takes the query up; the proof
            # and the budget statement (made after the charge, so it reflects it) come
            # from the same job, and ride with the answer: one message, not two
            deadline = request.deadline_unix_ms
            answered = await self.worker.answer_in_full(
                bytes(request.query_envelope),
                now_ms=self._now_ms,
                deadline_ms=deadline + (self.offset_ms or 0) if deadline else None,
                academic_year=request.academic_year,
                query_id=shown,
                known_size=request.known_log_size,
            )
        except QueryRefused as refused:
            reason = str(refused)[:MAX_REASON_CHARS]
            _log.info("node %s refused query %s: %s", self.config.node_id, shown, reason)
            await send(pb.NodeMessage(refusal=pb.Refusal(query_id=query_id, reason=reason)))
            return False
        except Exception:  # anything else is the node's own trouble: say so, keep serving
            _log.exception("node %s could not answer query %s", self.config.node_id, shown)
            reason = refusal_reason("internal", "the node could not answer (see its log)")
            await send(pb.NodeMessage(refusal=pb.Refusal(query_id=query_id, reason=reason)))
            return False
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # TEST ONLY: see run_node
        statement = answered.statement
        answer = pb.Answer(
            query_id=query_id,
            envelope=answered.envelope,
            consistency_proof=answered.proof,
            budget_statement=statement,
        )
        await send(pb.NodeMessage(answer=answer))
        return bool(statement)
