"""The coordinator's aggregator sessions (coordinator.aggregation): asks, replies, endings.

Pure asyncio bookkeeping, driven here as the servicer drives it: a request queued down
the session's outbox, a reply settled from the stream.
"""

from __future__ import annotations

import asyncio

import pytest

from fedscreen.coordinator.aggregation import (
    AggregatorReply,
    AggregatorSession,
    AggregatorSessions,
    printable,
)
from fedscreen.errors import QueryRefused

AGG = "stats-bureau"
ANSWERS = (("130104", b"{1}"), ("130105", b"{2}"), ("130107", b"{3}"))


def _ask(
    sessions: AggregatorSessions, timeout_s: float = 5.0, query_id: str = "q1"
) -> asyncio.Task[bytes]:
    return asyncio.ensure_future(
        sessions.ask(
            AGG,
            query_id=query_id,
            query_envelope=b"query",
            answers=ANSWERS,
            academic_year="2024-2025",
            timeout_s=timeout_s,
        )
    )


def _run(coroutine: object) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def test_a_partial_settles_the_ask_with_what_was_sent_down() -> None:
    async def scenario() -> None:
        sessions = AggregatorSessions()
        session = AggregatorSession(AGG, outbox_messages=8)
        sessions.open(session)
        assert sessions.connected() == (AGG,)
        asked = _ask(sessions)
        work = await asyncio.wait_for(session.outbox.get(), 5)
        assert work is not None
        assert (work.query_id, work.query_envelope, work.answers) == ("q1", b"query", ANSWERS)
        assert work.academic_year == "2024-2025"
        assert work.deadline_unix_ms > 0
        assert session.settle("q1", AggregatorReply(b"partial"))
        assert await asyncio.wait_for(asked, 5) == b"partial"
        assert not session.settle("q1", AggregatorReply(b"late"))  # nobody waits any more

    _run(scenario())


def test_not_connected_refusal_timeout_and_link_lost_are_query_refusals() -> None:
    async def scenario() -> None:
        sessions = AggregatorSessions()
        with pytest.raises(QueryRefused, match="is not connected"):
            await _ask(sessions)
        session = AggregatorSession(AGG, outbox_messages=8)
        sessions.open(session)
        refused = _ask(sessions)
        await session.outbox.get()
        session.settle("q1", AggregatorReply(None, "refused: too few nodes"))
        with pytest.raises(QueryRefused, match="refused: too few nodes"):
            await refused
        with pytest.raises(QueryRefused, match=r"sent no partial within 0\.05 s"):
            await _ask(sessions, timeout_s=0.05, query_id="q2")
        assert not session.settle("q2", AggregatorReply(b"late"))  # withdrawn
        pending = _ask(sessions, query_id="q3")
        await asyncio.sleep(0)
        sessions.close(session, "link lost")
        with pytest.raises(QueryRefused, match="link lost"):
            await pending
        assert sessions.connected() == ()

    _run(scenario())


def test_a_reconnect_replaces_the_old_session_and_fails_its_asks() -> None:
    async def scenario() -> None:
        sessions = AggregatorSessions()
        old, new = AggregatorSession(AGG), AggregatorSession(AGG)
        sessions.open(old)
        pending = _ask(sessions)
        await asyncio.sleep(0)
        sessions.open(new)
        with pytest.raises(QueryRefused, match="replaced by a newer session"):
            await pending
        assert old.closed
        assert await old.outbox.get() is not None  # the request queued before
        assert await old.outbox.get() is None  # then the end mark for its writer
        sessions.close(old, "link lost")  # the old stream ending does not drop the new one
        assert sessions.get(AGG) is new
        asked = _ask(sessions)
        await new.outbox.get()
        new.settle("q1", AggregatorReply(b"partial"))
        assert await asked == b"partial"

    _run(scenario())


def test_the_same_query_asked_twice_at_once_is_sent_once() -> None:
    async def scenario() -> None:
        sessions = AggregatorSessions()
        session = AggregatorSession(AGG)
        sessions.open(session)
        first, second = _ask(sessions), _ask(sessions)
        await asyncio.sleep(0)
        assert session.outbox.qsize() == 1
        session.settle("q1", AggregatorReply(b"partial"))
        assert await first == await second == b"partial"

    _run(scenario())


def test_a_backed_up_stream_refuses_at_once() -> None:
    async def scenario() -> None:
        sessions = AggregatorSessions()
        sessions.open(AggregatorSession(AGG, outbox_messages=1))
        _ask(sessions, query_id="q1")
        await asyncio.sleep(0)
        with pytest.raises(QueryRefused, match="backed up"):
            await _ask(sessions, query_id="q2")
        sessions.close_all("shutting down")

    _run(scenario())


def test_a_peers_words_are_one_bounded_printable_line() -> None:
    assert printable("a\nb\x1b[31mc", 100) == "a b [31mc"
    assert len(printable("x" * 1000)) == 300
