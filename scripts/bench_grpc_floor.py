"""Benchmark: the floor under the coordinator's cost per node — gRPC itself.

    python scripts/bench_grpc_floor.py [--streams 50] [--rounds 200] [--stagger-us 300]
                                       [--pushed]

A server process with fedscreen's transport (mutual TLS, the request guard) and a
NodeLink servicer that does nothing but answer each message with one small message;
a client holding ``--streams`` open streams sends one 4 KB message down each and reads
the reply, ``--rounds`` times. Prints the server's CPU per message pair (one in, one
out), beside the same without TLS and guard (with the same HTTP/2 settings); with
``--stagger-us`` the messages of a round are sent that far apart, one at a time, as
nodes answer (each then costs the server a wake-up of its own). The coordinator's own
CPU per node (``bench_federation.py``: receive an answer, push a query) sits on this
floor; the difference is fedscreen's own work.

``--pushed``: the federation's pattern instead. The server pushes one small message
down every stream at once (as the coordinator pushes a query to every node), and each
stream, on a connection of its own (as each node has), answers it with one 4 KB
message, ``--stagger-us`` apart (as nodes answer); the next round starts when every
answer is in. ``bench_federation.py`` measures this floor beside the coordinator.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import grpc  # noqa: E402

from fedscreen.coordinator.core import init_coordinator  # noqa: E402
from fedscreen.node.home import init_home  # noqa: E402
from fedscreen.rpc import transport  # noqa: E402
from fedscreen.rpc.limits import DEFAULT_LIMITS  # noqa: E402
from fedscreen.trust import authority  # noqa: E402
from fedscreen.trust.identity import issue_here, load_identity, update_manifest  # noqa: E402
from fedscreen.v1 import federation_pb2 as pb  # noqa: E402
from fedscreen.v1 import federation_pb2_grpc as pb_grpc  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MESSAGE_BYTES = 4_000
#: bound on every wait (s)
WAIT_S = 60.0


class Echo(pb_grpc.NodeLinkServicer):
    """One small message back for each message in."""

    async def Connect(self, request_iterator: Any, context: Any) -> Any:
        async for _ in request_iterator:
            yield pb.CoordinatorMessage(cancel=pb.Cancel(query_id="x" * 32))


class Rounds(pb_grpc.NodeLinkServicer):
    """A message down every stream at once, once ``streams`` streams are open and
    again whenever every stream has answered the last one."""

    def __init__(self, streams: int) -> None:
        self.streams = streams
        self.queues: list[asyncio.Queue[None]] = []
        self.pending = 0

    def _round(self) -> None:
        self.pending = len(self.queues)
        for queue in self.queues:
            queue.put_nowait(None)

    async def Connect(self, request_iterator: Any, context: Any) -> Any:
        queue: asyncio.Queue[None] = asyncio.Queue()
        incoming = request_iterator.__aiter__()
        try:
            await incoming.__anext__()  # the stream's first message opens it
            self.queues.append(queue)
            if len(self.queues) == self.streams:
                self._round()
            while True:
                await queue.get()
                yield pb.CoordinatorMessage(cancel=pb.Cancel(query_id="x" * 32))
                await incoming.__anext__()
                self.pending -= 1
                if self.pending == 0:
                    self._round()
        except StopAsyncIteration:  # the client ended the stream: the benchmark is over
            return


def _serve(work: Path, secure: bool, ports: Any, pushed: int) -> None:
    async def main() -> None:
        server = (
            transport.server()
            if secure
            else grpc.aio.server(options=DEFAULT_LIMITS.server_options())
        )
        servicer = Rounds(pushed) if pushed else Echo()
        pb_grpc.add_NodeLinkServicer_to_server(servicer, server)
        if secure:
            port = transport.add_secure_port(server, load_identity(work / "coord"), "127.0.0.1:0")
        else:
            port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ports.put(port)
        await server.wait_for_termination()

    asyncio.run(main())


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def _drive(
    work: Path,
    secure: bool,
    port: int,
    pid: int,
    streams: int,
    rounds: int,
    stagger_s: float,
    pushed: bool,
) -> float:
    target = f"127.0.0.1:{port}"
    # pushed: a connection per stream, as each node has its own
    channels = []
    for _ in range(streams if pushed else 1):
        if secure:
            node = load_identity(work / "node")
            channels.append(await transport.connect(node, target, peer_id="coordinator"))
        else:
            # a pool of its own, or every channel would share one connection
            options = [*DEFAULT_LIMITS.channel_options(), ("grpc.use_local_subchannel_pool", 1)]
            channels.append(grpc.aio.insecure_channel(target, options=options))
    stubs = [pb_grpc.NodeLinkStub(channel) for channel in channels]
    calls = [stubs[i % len(stubs)].Connect() for i in range(streams)]
    message = pb.NodeMessage(answer=pb.Answer(query_id="q" * 32, envelope=b"e" * MESSAGE_BYTES))
    try:
        if pushed:
            return await _answer_pushes(calls, message, pid, rounds, stagger_s)
        for call in calls:  # warm up every stream
            await call.write(message)
            await asyncio.wait_for(call.read(), WAIT_S)
        before = _cpu_seconds(pid)
        for _ in range(rounds):
            if stagger_s:
                for call in calls:
                    await call.write(message)
                    await asyncio.sleep(stagger_s)
            else:
                await asyncio.gather(*(call.write(message) for call in calls))
            await asyncio.wait_for(asyncio.gather(*(call.read() for call in calls)), WAIT_S)
        return (_cpu_seconds(pid) - before) / (streams * rounds)
    finally:
        for call in calls:
            call.cancel()
        for channel in channels:
            await channel.close()


async def _answer_pushes(
    calls: list[Any], message: pb.NodeMessage, pid: int, rounds: int, stagger_s: float
) -> float:
    for call in calls:
        await call.write(message)  # opens the stream at the server
    before = 0.0
    for r in range(rounds + 1):  # the first round warms every stream up
        if r == 1:
            before = _cpu_seconds(pid)
        await asyncio.wait_for(asyncio.gather(*(call.read() for call in calls)), WAIT_S)
        for call in calls:
            await call.write(message)
            if stagger_s:
                await asyncio.sleep(stagger_s)
    # the next round's pushes: the server has read every answer of the last
    await asyncio.wait_for(asyncio.gather(*(call.read() for call in calls)), WAIT_S)
    return (_cpu_seconds(pid) - before) / (len(calls) * rounds)


def make_homes(work: Path) -> None:
    """An authority, a coordinator and one node identity (every client stream's) in ``work``."""
    authority.init_authority(work / "auth", federation="bench")
    init_coordinator(work / "coord", member_id="coordinator", name="bench")
    issue_here(work / "auth", work / "coord")
    init_home(work / "node", node_id="130102", name="bench")
    issue_here(work / "auth", work / "node")
    for home in (work / "coord", work / "node"):
        update_manifest(home, authority.manifest_text(work / "auth"))


def measure(
    work: Path, secure: bool, streams: int, rounds: int, stagger_s: float, pushed: bool
) -> float:
    """Server CPU seconds per message pair."""
    ports: Any = multiprocessing.Queue()
    server = multiprocessing.Process(
        target=_serve, args=(work, secure, ports, streams if pushed else 0), daemon=True
    )
    server.start()
    try:
        port = int(ports.get(timeout=WAIT_S))
        assert server.pid is not None
        return asyncio.run(
            _drive(work, secure, port, server.pid, streams, rounds, stagger_s, pushed)
        )
    finally:
        server.terminate()
        server.join(timeout=WAIT_S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--stagger-us", type=int, default=0, help="0: all of a round at once")
    parser.add_argument(
        "--pushed", action="store_true", help="the server pushes, the streams answer (see above)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_homes(work)
        stagger_s = args.stagger_us / 1e6
        plain = measure(work, False, args.streams, args.rounds, stagger_s, args.pushed)
        secure = measure(work, True, args.streams, args.rounds, stagger_s, args.pushed)
    sent = f"{args.stagger_us} µs apart" if args.stagger_us else "all at once"
    down = "36 B down to every stream at once, then " if args.pushed else ""
    print(
        f"\n{args.streams} streams x {args.rounds} rounds, {down}{MESSAGE_BYTES} B up ({sent})"
        + ("" if args.pushed else ", 36 B down")
        + "\n"
    )
    print(f"{'server CPU per message pair':40} {'ms':>6} {'x plain':>8}")
    print(f"{'gRPC aio, no TLS, no guard':40} {plain * 1000:6.3f} {1.0:8.2f}")
    print(
        f"{'fedscreen transport (mutual TLS, guard)':40} {secure * 1000:6.3f} {secure / plain:8.2f}"
    )
    print("\ncompare: bench_federation.py's coord CPU/node (event loop + gRPC C threads)")


if __name__ == "__main__":
    main()
