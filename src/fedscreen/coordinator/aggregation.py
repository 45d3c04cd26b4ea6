"""The coordinator's link to the second aggregator of secure queries: its session, its asks.

Pure asyncio bookkeeping, as :mod:`.sessions` is for nodes: no protobuf (the servicer in
:mod:`.aggregatorrpc` converts what a session queues), no log and no keys. One live
session per aggregator (a reconnect replaces the old one); :meth:`AggregatorSessions.ask`
queues a secure query's answers down it and waits for the aggregator's signed partial.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from fedscreen.errors import QueryRefused
from fedscreen.rpc.serde import AggregationWork
from fedscreen.trust.manifest import show_id

__all__ = [
    "MAX_REASON_CHARS",
    "AggregatorReply",
    "AggregatorSession",
    "AggregatorSessions",
    "printable",
]

_log = logging.getLogger(__name__)

#: the longest reason of an aggregator's refusal passed on (characters)
MAX_REASON_CHARS: Final = 300
#: requests queued down one aggregator's stream at most (count); more are refused
DEFAULT_OUTBOX_MESSAGES: Final = 64


def printable(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """``text`` on one line, control characters blanked, cut to ``limit``: a peer's words
    reach logs, releases and analysts' terminals."""
    clean = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


@dataclass(frozen=True)
class AggregatorReply:
    """What became of one request: the partial envelope, or why there is none."""

    #: the aggregator's signed partial, byte for byte as received; None if none
    envelope: bytes | None
    #: why there is none ("refused: …", "link lost", …)
    reason: str = ""


class AggregatorSession:
    """One aggregator's live stream: what to send down it, and the requests waiting on it."""

    def __init__(self, aggregator_id: str, *, outbox_messages: int = DEFAULT_OUTBOX_MESSAGES):
        self.aggregator_id = aggregator_id
        #: requests for the writer; None tells it to end the stream
        self.outbox: asyncio.Queue[AggregationWork | None] = asyncio.Queue(outbox_messages)
        self._waiting: dict[str, list[asyncio.Future[AggregatorReply]]] = {}
        self.closed = False

    def ask(self, work: AggregationWork) -> asyncio.Future[AggregatorReply]:
        """Queue ``work``; the future settles with the reply (never raises). The same
        query id already on its way is not sent twice: both askers get the one reply."""
        future: asyncio.Future[AggregatorReply] = asyncio.get_running_loop().create_future()
        if self.closed:
            future.set_result(AggregatorReply(None, "link lost"))
            return future
        waiting = self._waiting.get(work.query_id)
        if waiting is None:
            try:
                self.outbox.put_nowait(work)
            except asyncio.QueueFull:
                future.set_result(AggregatorReply(None, "its stream is backed up"))
                return future
            waiting = self._waiting[work.query_id] = []
        waiting.append(future)
        return future

    def settle(self, query_id: str, reply: AggregatorReply) -> bool:
        """Hand a reply to whoever waits for it; False if nobody does (late: discard it)."""
        waiting = self._waiting.pop(query_id, None)
        if not waiting:
            return False
        for future in waiting:
            if not future.done():
                future.set_result(reply)
        return True

    def withdraw(self, query_id: str, future: asyncio.Future[AggregatorReply]) -> None:
        """Stop waiting (timeout); a partial arriving later is discarded."""
        waiting = self._waiting.get(query_id)
        if waiting is None or future not in waiting:
            return
        waiting.remove(future)
        if not waiting:
            del self._waiting[query_id]

    def close(self, reason: str) -> None:
        """End the session: every waiting request fails with ``reason``."""
        if self.closed:
            return
        self.closed = True
        for waiting in self._waiting.values():
            for future in waiting:
                if not future.done():
                    future.set_result(AggregatorReply(None, reason))
        self._waiting.clear()
        # wake the writer even if the queue is full: it only needs to see the end mark
        while True:
            try:
                self.outbox.put_nowait(None)
                break
            except asyncio.QueueFull:
                self.outbox.get_nowait()


class AggregatorSessions:
    """The live session of each aggregator (one per aggregator, the newest wins), and the
    one call the Submit servicer makes: :meth:`ask`."""

    def __init__(self) -> None:
        self._live: dict[str, AggregatorSession] = {}

    def open(self, session: AggregatorSession) -> None:
        """Register ``session``; an older session of the same aggregator is closed."""
        old = self._live.get(session.aggregator_id)
        self._live[session.aggregator_id] = session
        if old is not None:
            _log.info("aggregator %s reconnected; closing its older session", old.aggregator_id)
            old.close("replaced by a newer session")

    def close(self, session: AggregatorSession, reason: str) -> None:
        """Unregister ``session`` (if still the live one) and close it."""
        if self._live.get(session.aggregator_id) is session:
            del self._live[session.aggregator_id]
        session.close(reason)

    def close_all(self, reason: str) -> None:
        """Close every session (shutdown)."""
        for session in list(self._live.values()):
            self.close(session, reason)

    def get(self, aggregator_id: str) -> AggregatorSession | None:
        """The aggregator's live session, if it has one."""
        return self._live.get(aggregator_id)

    def connected(self) -> tuple[str, ...]:
        """Ids of the aggregators with a live session, sorted."""
        return tuple(sorted(self._live))

    async def ask(
        self,
        aggregator_id: str,
        *,
        query_id: str,
        query_envelope: bytes,
        answers: Sequence[tuple[str, bytes]],
        academic_year: str,
        timeout_s: float,
    ) -> bytes:
        """The aggregator's signed partial envelope (JSON bytes) for this query.

        ``answers``: (node id, the node's answer envelope, verbatim) for exactly the
        nodes to sum. Raises QueryRefused(reason) if the aggregator is not connected,
        refuses (its reason, bounded and printable), loses its link, or does not answer
        within ``timeout_s``. The partial is not verified here: the caller verifies it.
        """
        who = f"aggregator {show_id(aggregator_id)}"
        session = self._live.get(aggregator_id)
        if session is None:
            raise QueryRefused(f"{who} is not connected")
        deadline_ms = int(time.time() * 1000 + timeout_s * 1000)
        work = AggregationWork(
            query_id=query_id,
            query_envelope=query_envelope,
            answers=tuple(answers),
            academic_year=academic_year,
            deadline_unix_ms=deadline_ms,
        )
        future = session.ask(work)
        try:
            done, _ = await asyncio.wait({future}, timeout=max(timeout_s, 0))
        finally:
            if not future.done():
                session.withdraw(query_id, future)
                future.cancel()
        if not done:
            raise QueryRefused(f"{who} sent no partial within {timeout_s:.3g} s")
        reply = future.result()
        if reply.envelope is None:
            raise QueryRefused(f"{who}: {reply.reason}")
        return reply.envelope
