"""The second aggregator's link to the coordinator, over real gRPC with real mutual TLS.

A real aggregator agent (``aggregator.agent.run_aggregator``) dials the coordinator's
AggregatorLink service on a free 127.0.0.1 port; ``AggregatorSessions.ask`` hands it a
secure query's real county answers and gets back a partial the analyst's check accepts.
Also: a refusal comes back as QueryRefused with the aggregator's reason, a reconnect
gets the stored partial again, an aggregator that says nothing times out and one that
goes away fails the asks waiting on it; only an aggregator may connect, as itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from aggregatorhelp import FOUR, node_answers, secure_query
from securefed import AGGREGATOR, COORDINATOR, SecureHomes, make_secure_homes

from fedscreen.aggregator.agent import AggregatorWelcomed, run_aggregator
from fedscreen.aggregator.work import AggregatorLimits
from fedscreen.coordinator.aggregation import AggregatorSessions
from fedscreen.coordinator.aggregatorrpc import AggregatorLinkServicer
from fedscreen.coordinator.runtime import CoreThread, Listening, ManifestWatch, ServerLimits
from fedscreen.coordinator.server import serve
from fedscreen.coordinator.sessions import SessionRegistry
from fedscreen.crypto.envelope import Envelope
from fedscreen.errors import QueryRefused
from fedscreen.protocol import secure
from fedscreen.protocol.answer import verify_answer
from fedscreen.rpc import transport
from fedscreen.trust.identity import load_identity
from fedscreen.v1 import federation_pb2 as pb
from fedscreen.v1 import federation_pb2_grpc as pb_grpc

#: the bound of every wait in these tests (s)
WAIT_S = 20.0
#: redial quickly: a test waits for the reconnect
FAST = AggregatorLimits(backoff_initial_ms=50, backoff_max_ms=200, heartbeat_interval_ms=200)
LIMITS = ServerLimits(session_idle_timeout_ms=5_000, hello_timeout_ms=5_000)


@pytest.fixture(scope="module")
def homes(tmp_path_factory: pytest.TempPathFactory) -> SecureHomes:
    return make_secure_homes(tmp_path_factory.mktemp("link"), students=150, nodes=FOUR)


@contextlib.asynccontextmanager
async def link_server(home: Path) -> AsyncIterator[tuple[str, AggregatorSessions]]:
    """The coordinator's AggregatorLink service, served alone with its real core and TLS."""
    core = await CoreThread.open(home)
    sessions = AggregatorSessions()
    server = transport.server(limits=LIMITS.transport)
    servicer = AggregatorLinkServicer(
        core, sessions, LIMITS, ManifestWatch(core, SessionRegistry())
    )
    pb_grpc.add_AggregatorLinkServicer_to_server(servicer, server)
    port = transport.add_secure_port(server, core.core.identity, "127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", sessions
    finally:
        sessions.close_all("the test is over")
        await server.stop(grace=None)
        await core.close()


async def until(condition: Callable[[], bool]) -> None:
    """Wait (bounded) until ``condition()`` holds."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.02)


def _start(homes: SecureHomes, address: str, stop: asyncio.Event) -> asyncio.Task[None]:
    return asyncio.create_task(run_aggregator(homes.aggregator, address, limits=FAST, stop=stop))


async def _ask(sessions: AggregatorSessions, envelope: bytes, query_id: str,
               answers: list[tuple[str, bytes]], timeout_s: float = WAIT_S) -> bytes:  # fmt: skip
    return await sessions.ask(
        AGGREGATOR, query_id=query_id, query_envelope=envelope, answers=answers,
        academic_year="", timeout_s=timeout_s,
    )  # fmt: skip


def test_an_aggregator_answers_refuses_and_reconnects(homes: SecureHomes) -> None:
    query, envelope = secure_query(homes)
    answers = node_answers(homes, query, envelope)
    manifest = load_identity(homes.coordinator).manifest()

    async def scenario() -> None:
        async with link_server(homes.coordinator) as (address, sessions):
            stop = asyncio.Event()
            agent = _start(homes, address, stop)
            await until(lambda: sessions.connected() == (AGGREGATOR,))
            raw = await _ask(sessions, envelope, query.query_id, answers[:3])
            partial = secure.verify_partial(
                Envelope.from_json(raw), manifest=manifest, aggregator_id=AGGREGATOR,
                expected_query=query,
            )  # fmt: skip
            verified = [
                verify_answer(
                    Envelope.from_json(a),
                    manifest=manifest,
                    node_id=n,
                    expected_query=query,
                    public=False,
                )
                for n, a in answers[:3]
            ]
            secure.check_nodes(partial, verified)
            # the aggregator's reason comes back, bounded, as the ask's refusal
            other, other_envelope = secure_query(homes)
            few = node_answers(homes, other, other_envelope)[:2]
            with pytest.raises(QueryRefused, match=r"refused: .*at least 3"):
                await _ask(sessions, other_envelope, other.query_id, few)
            # the aggregator goes away: its session ends, an ask says so at once
            stop.set()
            await asyncio.wait_for(agent, WAIT_S)
            await until(lambda: sessions.connected() == ())
            with pytest.raises(QueryRefused, match="is not connected"):
                await _ask(sessions, envelope, query.query_id, answers[:3])
            # it comes back: the same request gets the stored partial, byte for byte
            stop = asyncio.Event()
            agent = _start(homes, address, stop)
            await until(lambda: sessions.connected() == (AGGREGATOR,))
            assert await _ask(sessions, envelope, query.query_id, answers[:3]) == raw
            # an overlapping set is refused by its use-once rule
            with pytest.raises(QueryRefused, match="already summed"):
                await _ask(sessions, envelope, query.query_id, answers[1:])
            stop.set()
            await asyncio.wait_for(agent, WAIT_S)

    asyncio.run(scenario())


async def _raw_link(
    identity_home: Path, address: str, member_id: str
) -> tuple[grpc.aio.Channel, grpc.aio.StreamStreamCall[pb.AggregatorMessage, pb.ToAggregator]]:
    channel = transport.channel(load_identity(identity_home), address, peer_id=COORDINATOR)
    call = pb_grpc.AggregatorLinkStub(channel).Connect()
    hello = pb.AggregatorHello(aggregator_id=member_id, software_version="test")
    await call.write(pb.AggregatorMessage(hello=hello))
    return channel, call


def test_a_silent_aggregator_times_out_and_a_lost_one_fails_its_asks(homes: SecureHomes) -> None:
    query, envelope = secure_query(homes)
    answers = node_answers(homes, query, envelope)[:3]

    async def scenario() -> None:
        async with link_server(homes.coordinator) as (address, sessions):
            channel, call = await _raw_link(homes.aggregator, address, AGGREGATOR)
            async with channel:
                first = await asyncio.wait_for(call.read(), WAIT_S)
                assert first.WhichOneof("kind") == "welcome"
                assert first.welcome.manifest_version >= 1
                started = time.monotonic()
                with pytest.raises(QueryRefused, match="sent no partial within"):
                    await _ask(sessions, envelope, query.query_id, answers, timeout_s=0.3)
                assert time.monotonic() - started < WAIT_S / 2
                # the request did go down the stream, verbatim
                sent = await asyncio.wait_for(call.read(), WAIT_S)
                assert sent.aggregation.query_id == query.query_id
                assert bytes(sent.aggregation.query_envelope) == envelope
                assert [(a.node_id, bytes(a.envelope)) for a in sent.aggregation.answers] == answers
                pending = asyncio.ensure_future(
                    _ask(sessions, envelope, query.query_id, answers, timeout_s=WAIT_S)
                )
                await asyncio.wait_for(call.read(), WAIT_S)  # it was sent: now go away
                call.cancel()
                started = time.monotonic()
                with pytest.raises(QueryRefused, match="link lost"):
                    await asyncio.wait_for(pending, WAIT_S)
                assert time.monotonic() - started < WAIT_S / 2  # not its own timeout
                await until(lambda: sessions.connected() == ())

    asyncio.run(scenario())


def test_only_an_aggregator_may_connect_as_itself(homes: SecureHomes) -> None:
    node_home = next(iter(homes.nodes.values())).home

    async def refused(home: Path, member_id: str, *, hello: bool) -> grpc.StatusCode:
        async with link_server(homes.coordinator) as (address, sessions):
            channel = transport.channel(load_identity(home), address, peer_id=COORDINATOR)
            async with channel:
                call = pb_grpc.AggregatorLinkStub(channel).Connect()
                if hello:  # (a refusal of the certificate comes before any read: no write
                    # then, whose failure would race the server's status)
                    message = pb.AggregatorHello(aggregator_id=member_id, software_version="t")
                    await call.write(pb.AggregatorMessage(hello=message))
                code = await asyncio.wait_for(call.code(), WAIT_S)
            assert sessions.connected() == ()
            return code

    # a node's certificate: the wrong role
    code = asyncio.run(refused(node_home, node_home.name, hello=False))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    # the aggregator's certificate, a Hello naming someone else
    code = asyncio.run(refused(homes.aggregator, "someone-else", hello=True))
    assert code is grpc.StatusCode.INVALID_ARGUMENT


def test_the_coordinator_serves_the_aggregator_link(homes: SecureHomes) -> None:
    """The real coordinator (``serve``) welcomes the aggregator agent."""

    async def scenario() -> AggregatorWelcomed:
        stop_server, stop_agent = asyncio.Event(), asyncio.Event()
        ready: asyncio.Future[Listening] = asyncio.get_running_loop().create_future()
        welcomed: asyncio.Future[AggregatorWelcomed] = asyncio.get_running_loop().create_future()
        server = asyncio.create_task(
            serve(homes.coordinator, "127.0.0.1:0", limits=LIMITS, stop=stop_server,
                  on_ready=ready.set_result)
        )  # fmt: skip
        try:
            address = (await asyncio.wait_for(ready, WAIT_S)).address
            agent = asyncio.create_task(
                run_aggregator(homes.aggregator, address, limits=FAST, stop=stop_agent,
                               on_welcome=lambda w: welcomed.done() or welcomed.set_result(w))
            )  # fmt: skip
            event = await asyncio.wait_for(welcomed, WAIT_S)
            stop_agent.set()
            await asyncio.wait_for(agent, WAIT_S)
            return event
        finally:
            stop_server.set()
            await asyncio.wait_for(server, WAIT_S)

    event = asyncio.run(scenario())
    assert (event.aggregator_id, event.coordinator, event.session) == (AGGREGATOR, COORDINATOR, 1)
    assert event.manifest_version == load_identity(homes.coordinator).manifest().version


def test_aggregator_serve_as_a_process_connects_and_stops_on_sigterm(
    homes: SecureHomes, tmp_path: Path
) -> None:
    """``fedscreen coordinator serve`` and ``fedscreen aggregator serve``, real processes:
    the aggregator says it is connected (and writes its ready file); SIGTERM stops it
    cleanly (exit 0, "aggregator stopped")."""
    cli = [sys.executable, "-m", "fedscreen.cli.main"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    procs: list[subprocess.Popen[bytes]] = []

    def ready(path: Path, proc: subprocess.Popen[bytes], log: Path) -> dict[str, object]:
        deadline = time.monotonic() + WAIT_S
        while not path.is_file():
            assert proc.poll() is None, log.read_text(encoding="utf-8")
            assert time.monotonic() < deadline, log.read_text(encoding="utf-8")
            time.sleep(0.05)
        return dict(json.loads(path.read_text(encoding="utf-8")))

    try:
        coord_log, agg_log = tmp_path / "coord.log", tmp_path / "agg.log"
        with coord_log.open("wb") as out:
            coordinator = subprocess.Popen(
                [*cli, "coordinator", "serve", "--home", str(homes.coordinator),
                 "--listen", "127.0.0.1:0", "--ready-file", str(tmp_path / "coord.ready")],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        procs.append(coordinator)
        address = str(ready(tmp_path / "coord.ready", coordinator, coord_log)["address"])
        with agg_log.open("wb") as out:
            aggregator = subprocess.Popen(
                [*cli, "aggregator", "serve", "--home", str(homes.aggregator),
                 "--coordinator", address, "--ready-file", str(tmp_path / "agg.ready")],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        procs.append(aggregator)
        welcome = ready(tmp_path / "agg.ready", aggregator, agg_log)
        assert (welcome["aggregator_id"], welcome["session"]) == (AGGREGATOR, 1)
        aggregator.send_signal(signal.SIGTERM)
        assert aggregator.wait(timeout=WAIT_S) == 0
        text = agg_log.read_text(encoding="utf-8")
        assert f"aggregator {AGGREGATOR} connected to coordinator {COORDINATOR}" in text
        assert text.rstrip().endswith("aggregator stopped")
        assert "Traceback" not in text
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=WAIT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=WAIT_S)
