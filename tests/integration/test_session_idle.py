"""A node session that sends nothing for ``session_idle_timeout_ms`` is dropped; one that
heartbeats is kept (the coordinator's one idle timer per session, issue 11 item 8)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
from nodehomes import NODE, make_homes

from fedscreen.coordinator.runtime import Listening, ServerLimits
from fedscreen.coordinator.server import serve
from fedscreen.rpc import transport
from fedscreen.trust import authority
from fedscreen.trust.identity import load_identity, update_manifest
from fedscreen.v1 import federation_pb2 as pb
from fedscreen.v1 import federation_pb2_grpc as pb_grpc

IDLE_MS = 400
#: the bound of every wait in these tests (s)
WAIT_S = 20.0


def _silent_then_heartbeating(tmp_path: Path, heartbeat_s: float | None) -> tuple[bool, float]:
    """Connect as the node, then heartbeat every ``heartbeat_s`` (None: stay silent) for
    up to 5 idle periods; (whether the coordinator ended the stream, seconds it took)."""
    homes = make_homes(tmp_path)
    update_manifest(homes.coordinator, authority.manifest_text(homes.auth))
    limits = ServerLimits(session_idle_timeout_ms=IDLE_MS, hello_timeout_ms=5_000)
    identity = load_identity(homes.node.home)

    async def scenario() -> tuple[bool, float]:
        stop = asyncio.Event()
        ready: asyncio.Future[Listening] = asyncio.get_running_loop().create_future()
        server = asyncio.create_task(
            serve(homes.coordinator, "127.0.0.1:0", limits=limits, stop=stop,
                  on_ready=ready.set_result)
        )  # fmt: skip
        try:
            address = (await asyncio.wait_for(ready, WAIT_S)).address
            async with transport.channel(identity, address, peer_id="coordinator") as channel:
                call = pb_grpc.NodeLinkStub(channel).Connect()
                hello = pb.Hello(node_id=NODE, node_time_unix_ms=int(time.time() * 1000))
                await call.write(pb.NodeMessage(hello=hello))
                first = await asyncio.wait_for(call.read(), WAIT_S)
                assert first.WhichOneof("kind") == "welcome"
                started = time.monotonic()

                async def until_ended() -> None:
                    # read on (never cancelling a read: that would cancel the call)
                    while await call.read() is not grpc.aio.EOF:
                        pass

                reader = asyncio.create_task(until_ended())
                while not reader.done() and time.monotonic() - started < 5 * IDLE_MS / 1000:
                    if heartbeat_s is not None:
                        await call.write(pb.NodeMessage(heartbeat=pb.Heartbeat()))
                    await asyncio.wait({reader}, timeout=heartbeat_s or IDLE_MS / 4000)
                elapsed = time.monotonic() - started
                ended = reader.done()
                call.cancel()
                await asyncio.wait({reader}, timeout=WAIT_S)
                return ended, elapsed
        finally:
            stop.set()
            await asyncio.wait_for(server, WAIT_S)

    return asyncio.run(scenario())


def test_a_silent_node_is_dropped_after_the_idle_timeout(tmp_path: Path) -> None:
    ended, elapsed = _silent_then_heartbeating(tmp_path, heartbeat_s=None)
    assert ended
    assert IDLE_MS / 1000 * 0.9 <= elapsed < 5 * IDLE_MS / 1000


def test_a_heartbeating_node_is_kept(tmp_path: Path) -> None:
    ended, elapsed = _silent_then_heartbeating(tmp_path, heartbeat_s=IDLE_MS / 4000)
    assert not ended
    assert elapsed >= 5 * IDLE_MS / 1000
