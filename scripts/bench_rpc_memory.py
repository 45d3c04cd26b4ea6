"""Bad input must cost the coordinator nothing lasting: its RSS before and after a flood.

    PYTHONPATH=src python scripts/bench_rpc_memory.py                      # 1,000 each, 4 clients
    PYTHONPATH=src python scripts/bench_rpc_memory.py --requests 200 --clients 4 --json

Sets up a federation in a temporary directory (authority, coordinator, one
analyst), starts ``fedscreen coordinator serve`` as its own process on
127.0.0.1 (mutual TLS), and has ``--clients`` analysts — each its own
mutual-TLS channel — send ``--requests`` requests of each bad kind,
concurrently:

* ``oversized``: a Submit whose query envelope is ``--size-mib`` MiB (5 by default),
  far above the Submit limit;
* ``malformed protobuf``: a Submit body under the limit that is not a protobuf;
* ``malformed envelope``: a well-formed Submit whose envelope is not JSON;
* ``oversized budgets``: a Budgets request (which carries nothing) of 1 MiB.

It prints the status codes each kind got and the coordinator's resident set
size (VmRSS, /proc) before and after each flood, against the bound of
:data:`RSS_BOUND_MIB` over the start. Exits 1 if the bound is broken or a
request was not refused.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import grpc  # noqa: E402

from fedscreen.coordinator.core import init_coordinator  # noqa: E402
from fedscreen.rpc import transport  # noqa: E402
from fedscreen.trust import authority  # noqa: E402
from fedscreen.trust.identity import (  # noqa: E402
    Identity,
    create_identity,
    issue_here,
    load_identity,
    update_manifest,
)
from fedscreen.v1 import federation_pb2 as pb  # noqa: E402

COORDINATOR = "coordinator"
#: the coordinator's RSS may grow at most this much over its start (MiB)
RSS_BOUND_MIB = 50
#: bound on the coordinator getting ready (s)
READY_TIMEOUT_S = 60
#: deadline of one bad request (s)
CALL_TIMEOUT_S = 30
#: wait after each flood before reading RSS (s): past the coordinator's heap trim (5 s)
SETTLE_S = 6.0
SUBMIT = "/fedscreen.v1.Analyst/Submit"
BUDGETS = "/fedscreen.v1.Analyst/Budgets"


def setup(work: Path, analysts: int) -> list[Identity]:
    """An authority, a coordinator home and ``analysts`` analysts, all holding the manifest."""
    auth = work / "auth"
    authority.init_authority(auth, federation="河北省 (bench)")
    init_coordinator(work / "coord", member_id=COORDINATOR, name="协调服务")
    issue_here(auth, work / "coord")
    homes = []
    for a in range(analysts):
        home = work / f"analyst-{a + 1}"
        create_identity(home, member_id=f"analyst-{a + 1}", role="analyst", name=f"A{a + 1}")
        issue_here(auth, home)
        homes.append(home)
    text = authority.manifest_text(auth)
    for home in (work / "coord", *homes):
        update_manifest(home, text)
    return [load_identity(h) for h in homes]


def start_coordinator(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``fedscreen coordinator serve`` as a process; its address once it listens."""
    ready = work / "coordinator.ready"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    # the child keeps its own descriptor of the log; this one closes at once
    with (work / "coordinator.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedscreen.cli.main", "coordinator", "serve",
             "--home", str(work / "coord"), "--listen", "127.0.0.1:0", "--ready-file", str(ready)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready.is_file():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the coordinator did not start: {work / 'coordinator.log'}")
        time.sleep(0.05)
    return proc, str(json.loads(ready.read_text())["address"])


def rss_mib(pid: int) -> float:
    """Resident set size of a process (MiB), from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _kinds(size_mib: int) -> dict[str, tuple[str, bytes]]:
    """Each bad kind: the method and the raw request bytes sent."""
    big = b"x" * (size_mib * 1024 * 1024)
    return {
        "oversized submit": (SUBMIT, pb.SubmitRequest(query_envelope=big).SerializeToString()),
        # field 1 announced as 40,000 bytes long, but only 30,000 follow
        "malformed protobuf": (SUBMIT, b"\x0a\xc0\xb8\x02" + b"\xff" * 30_000),
        "malformed envelope": (
            SUBMIT,
            pb.SubmitRequest(query_envelope=b"{not json" + b"!" * 40_000).SerializeToString(),
        ),
        "oversized budgets": (BUDGETS, b"\x0a" * (1024 * 1024)),
    }


async def flood(
    identities: list[Identity], address: str, method: str, body: bytes, requests: int
) -> collections.Counter[str]:
    """``requests`` calls of ``method`` with ``body``, spread over the clients; codes seen."""
    codes: collections.Counter[str] = collections.Counter()

    async def client(identity: Identity, count: int) -> None:
        async with transport.channel(identity, address, peer_id=COORDINATOR) as channel:
            call: Callable[..., Awaitable[bytes]] = channel.unary_unary(
                method, request_serializer=None, response_deserializer=None
            )
            for _ in range(count):
                try:
                    await call(body, timeout=CALL_TIMEOUT_S)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    codes[exc.code().name] += 1

    share, extra = divmod(requests, len(identities))
    await asyncio.gather(
        *(client(ident, share + (i < extra)) for i, ident in enumerate(identities))
    )
    return codes


def measure(requests: int, clients: int, size_mib: int) -> dict[str, Any]:
    """Run every flood against a fresh coordinator; the rows of the table."""
    with tempfile.TemporaryDirectory(prefix="fedscreen-bench-mem-") as tmp:
        work = Path(tmp)
        identities = setup(work, clients)
        proc, address = start_coordinator(work)
        try:
            # one good call first, so start-up allocations (TLS, imports) are in the baseline
            asyncio.run(flood(identities, address, BUDGETS, b"", clients))
            time.sleep(0.5)
            start = rss_mib(proc.pid)
            rows = []
            for kind, (method, body) in _kinds(size_mib).items():
                before = rss_mib(proc.pid)
                began = time.monotonic()
                codes = asyncio.run(flood(identities, address, method, body, requests))
                elapsed = time.monotonic() - began
                time.sleep(SETTLE_S)
                after = rss_mib(proc.pid)
                rows.append(
                    {
                        "kind": kind,
                        "bytes": len(body),
                        "requests": requests,
                        "codes": dict(codes),
                        "seconds": round(elapsed, 2),
                        "rss_before_mib": round(before, 1),
                        "rss_after_mib": round(after, 1),
                    }
                )
            end = rss_mib(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    growth = end - start
    return {
        "clients": clients,
        "rss_start_mib": round(start, 1),
        "rss_end_mib": round(end, 1),
        "growth_mib": round(growth, 1),
        "bound_mib": RSS_BOUND_MIB,
        "within_bound": growth <= RSS_BOUND_MIB,
        "all_refused": all("OK" not in row["codes"] for row in rows),
        "rows": rows,
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"coordinator RSS, {result['clients']} concurrent mutual-TLS clients")
    print(f"{'kind':<20} {'bytes':>9} {'requests':>8} {'s':>6} {'RSS before':>10} "
          f"{'after':>8}  status codes")  # fmt: skip
    for row in result["rows"]:
        codes = ", ".join(f"{k} {v}" for k, v in sorted(row["codes"].items()))
        print(
            f"{row['kind']:<20} {row['bytes']:>9} {row['requests']:>8} {row['seconds']:>6} "
            f"{row['rss_before_mib']:>8.1f}Mi {row['rss_after_mib']:>6.1f}Mi  {codes}"
        )
    verdict = "within" if result["within_bound"] else "OVER"
    print(
        f"RSS {result['rss_start_mib']} MiB -> {result['rss_end_mib']} MiB: "
        f"+{result['growth_mib']} MiB, {verdict} the {result['bound_mib']} MiB bound"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests of each kind")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--size-mib", type=int, default=5, help="size of the oversized Submit")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    result = measure(args.requests, args.clients, args.size_mib)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0 if result["within_bound"] and result["all_refused"] else 1


if __name__ == "__main__":
    sys.exit(main())
