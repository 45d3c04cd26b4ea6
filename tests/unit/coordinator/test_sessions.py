"""coordinator.sessions: what a query went out with, manifests pushed, the live sessions."""

from __future__ import annotations

import asyncio

from fedscreen.coordinator.sessions import (
    MAX_REMEMBERED_QUERIES,
    NodeSession,
    Push,
    PushManifest,
    SessionRegistry,
)


def test_a_session_remembers_the_log_size_each_query_went_out_with() -> None:
    async def scenario() -> None:
        session = NodeSession("130102", outbox_messages=8)
        session.ask("q1", b"{}", deadline_unix_ms=1, known_log_size=7)
        session.ask("q2", b"{}", deadline_unix_ms=1)
        pushed = session.outbox.get_nowait()
        assert isinstance(pushed, Push)
        assert pushed.known_log_size == 7
        assert session.sent_log_size("q1") == 7
        assert session.sent_log_size("q1") is None  # taken once, by the reply
        assert session.sent_log_size("q2") == 0
        assert session.sent_log_size("never asked") is None

    asyncio.run(scenario())


def test_the_remembered_sizes_are_bounded() -> None:
    async def scenario() -> None:
        session = NodeSession("130102", outbox_messages=MAX_REMEMBERED_QUERIES + 10)
        for i in range(MAX_REMEMBERED_QUERIES + 5):
            session.ask(f"q{i}", b"{}", deadline_unix_ms=1, known_log_size=i)
        assert session.sent_log_size("q0") is None  # the oldest forgotten
        last = MAX_REMEMBERED_QUERIES + 4
        assert session.sent_log_size(f"q{last}") == last

    asyncio.run(scenario())


def test_a_manifest_is_pushed_to_live_sessions_only() -> None:
    async def scenario() -> None:
        registry = SessionRegistry()
        a, b = NodeSession("a", outbox_messages=1), NodeSession("b", outbox_messages=1)
        registry.open(a)
        registry.open(b)
        assert set(registry.live()) == {a, b}
        assert a.push_manifest(b"manifest")
        pushed = a.outbox.get_nowait()
        assert isinstance(pushed, PushManifest)
        assert pushed.manifest == b"manifest"
        assert a.push_manifest(b"one")
        assert not a.push_manifest(b"two")  # backed up: not queued, and said so
        registry.close(b, "revoked")
        assert registry.live() == (a,)
        assert not b.push_manifest(b"manifest")  # closed

    asyncio.run(scenario())
