"""A federation on loopback for the benchmarks: set-up, worker processes, CPU from /proc.

``setup`` makes an authority, a coordinator, county nodes and (past ``counties``)
university nodes with synthetic data, and analysts, all issued; ``federation`` runs
the coordinator and the nodes (many ``run_node`` tasks per process) in processes of
their own, started as this file with ``--role coordinator`` or ``--role nodes``, and
stops them on exit. ``bench_federation.py`` measures with them; ``bench_secure.py``
and ``bench_coordinator_core.py`` reuse them through it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fedscreen._util.files import write_ready_file  # noqa: E402
from fedscreen.coordinator.core import init_coordinator  # noqa: E402
from fedscreen.coordinator.runtime import CORE_THREAD_NAME  # noqa: E402
from fedscreen.coordinator.server import serve  # noqa: E402
from fedscreen.node.agent import run_node  # noqa: E402
from fedscreen.node.home import init_home  # noqa: E402
from fedscreen.node.ingest import ingest_paths  # noqa: E402
from fedscreen.synth import generate, generate_university, write_export  # noqa: E402
from fedscreen.trust import authority  # noqa: E402
from fedscreen.trust.identity import create_identity, issue_here, update_manifest  # noqa: E402

YEAR = "2024-2025"
#: where the universities' campuses are registered
COUNTY = "130104"
COORDINATOR = "coordinator"
#: Hebei's county-level units: the county nodes a province federation has
COUNTIES = 167
#: Hebei's universities (about 125), each its own province-level node
UNIVERSITIES = 125
#: university node ids are 5-digit codes from here on, as the Ministry of Education's are
UNIVERSITY_CODE_BASE = 10001
#: bound on a worker process getting ready (s)
READY_TIMEOUT_S = 300
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- setup


def node_id(i: int) -> str:
    """The id of the ``i``-th county node."""
    return f"bench-{i:03d}"


def county_code(i: int) -> str:
    """The (synthetic) county code of the ``i``-th county node: a county has one county
    node, so each holds its own county's export."""
    return f"13{1000 + i:04d}"


def university_id(j: int) -> str:
    """The id (its own code) of the ``j``-th university node."""
    return f"{UNIVERSITY_CODE_BASE + j}"


def node_ids(nodes: int, counties: int = COUNTIES) -> list[str]:
    """The first ``nodes`` node ids: up to ``counties`` county nodes, then universities."""
    return [node_id(i) if i < counties else university_id(i - counties) for i in range(nodes)]


def _make_node(args: tuple[Path, str, str, Path, int]) -> str:
    """Create a node home and load its export (one process per call): a county node the
    shared county export at ``source``; a university its own ``students`` freshmen,
    generated into ``source`` here (every row carries its own code)."""
    home, member, kind, source, students = args
    if kind == "county":
        code = county_code(int(member.removeprefix("bench-")))
        config = init_home(home, node_id=member, name=f"县 {member}", county_code=code)
        write_export(generate(code, students, YEAR, seed=1), source)
    else:
        config = init_home(home, node_id=member, name=f"大学 {member}", kind=kind,
                           county_code=COUNTY)  # fmt: skip
        university = generate_university(member, COUNTY, students, YEAR, seed=int(member))
        write_export(university, source)
    _, rejected = ingest_paths(config, [source])
    if rejected:
        raise RuntimeError(str(rejected[0]))
    return member


def setup(
    work: Path,
    nodes: int,
    students: int,
    analysts: int,
    *,
    extra: Callable[[Path], list[Path]] | None = None,
    counties: int = COUNTIES,
    university_students: int | None = None,
) -> list[str]:
    """Authority, coordinator, ``nodes`` node homes with data, analysts; all issued.

    The first ``counties`` nodes are county nodes with ``students`` each, the rest
    universities with ``university_students`` freshmen each (default: a quarter of
    ``students``). ``extra``: called with the authority's directory to make and issue
    more members' homes (e.g. a second aggregator); returns them, so they get the
    manifest too.
    """
    if nodes - counties > UNIVERSITIES:
        raise ValueError(f"at most {counties} counties + {UNIVERSITIES} universities")
    freshmen = university_students if university_students is not None else students // 4
    auth = work / "auth"
    authority.init_authority(auth, federation="河北省 (bench)")
    init_coordinator(work / "coord", member_id=COORDINATOR, name="协调服务")
    issue_here(auth, work / "coord")
    ids = node_ids(nodes, counties)
    # each county node its own county's export, generated in the worker (same plan and
    # seed: the counties differ by code only)
    jobs = [
        (work / "nodes" / n, n, "county", work / "exports" / n, students)
        if i < counties
        else (work / "nodes" / n, n, "university", work / "exports" / n, freshmen)
        for i, n in enumerate(ids)
    ]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(_make_node, jobs, chunksize=8))
    for member in ids:
        issue_here(auth, work / "nodes" / member)
    for a in range(analysts):
        home = work / f"analyst-{a + 1}"
        create_identity(home, member_id=f"analyst-{a + 1}", role="analyst", name=f"A{a + 1}")
        issue_here(auth, home)
    homes = [work / "coord", *(work / "nodes" / n for n in ids)]
    homes += [work / f"analyst-{a + 1}" for a in range(analysts)]
    if extra is not None:
        homes += extra(auth)
    text = authority.manifest_text(auth)  # with the extra members in it
    for home in homes:
        update_manifest(home, text)
    return ids


# ---------------------------------------------------------------- worker processes


def until_signalled(main: Any) -> None:
    """Run ``main(stop)`` in a new event loop; SIGINT or SIGTERM sets ``stop``."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await main(stop)

    asyncio.run(runner())


def role_coordinator(home: Path, ready: Path) -> None:
    async def main(stop: asyncio.Event) -> None:
        # tuned as ``fedscreen coordinator serve`` is (its process runs nothing else)
        await serve(home, "127.0.0.1:0", ready_file=ready, stop=stop, own_process=True)

    until_signalled(main)


def role_nodes(job: Path) -> None:
    """Many nodes in one process: one ``run_node`` task each, one event loop."""
    spec = json.loads(job.read_text())
    homes = [Path(h) for h in spec["homes"]]

    async def main(stop: asyncio.Event) -> None:
        welcomed: set[str] = set()

        def on_welcome(event: Any) -> None:
            welcomed.add(event.node_id)
            if len(welcomed) == len(homes):
                write_ready_file(Path(spec["ready"]), {"nodes": len(homes), "pid": os.getpid()})

        await asyncio.gather(
            *(run_node(h, spec["coordinator"], stop=stop, on_welcome=on_welcome) for h in homes)
        )

    until_signalled(main)


def wait_ready(path: Path, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """The ready file ``proc`` writes, once it is there (RuntimeError if it exits first)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not path.is_file():
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker not ready within {READY_TIMEOUT_S} s")
        time.sleep(0.05)
    return dict(json.loads(path.read_text()))


def spawn(*args: str, script: str = __file__) -> subprocess.Popen[bytes]:
    """``script`` (this one by default) in a new interpreter, with ``args``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen([sys.executable, script, *args], env=env)


@dataclass
class Running:
    """A federation's processes: the coordinator, the node processes and any others."""

    address: str
    coordinator: subprocess.Popen[bytes]
    nodes: list[subprocess.Popen[bytes]]
    #: every process, in start order (stopped in reverse); callers may add theirs
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)


@contextmanager
def federation(work: Path, node_ids: list[str], processes: int) -> Iterator[Running]:
    """The coordinator and ``node_ids`` as ``run_node`` tasks in ``processes`` processes,
    every node connected; on exit every process is stopped, the last started first."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ready = work / "coordinator.ready"
        coordinator = spawn("--role", "coordinator", "--home", str(work / "coord"),
                            "--ready", str(ready))  # fmt: skip
        procs.append(coordinator)
        address = str(wait_ready(ready, coordinator)["address"])
        groups = [node_ids[i::processes] for i in range(processes)]
        node_procs = []
        for g, group in enumerate(g for g in groups if g):
            job = work / f"nodes-{g}.json"
            job.write_text(
                json.dumps(
                    {
                        "homes": [str(work / "nodes" / n) for n in group],
                        "coordinator": address,
                        "ready": str(work / f"nodes-{g}.ready"),
                    }
                )
            )
            node_procs.append((spawn("--role", "nodes", "--job", str(job)), g))
        procs.extend(p for p, _ in node_procs)
        for proc, g in node_procs:
            wait_ready(work / f"nodes-{g}.ready", proc)
        yield Running(address, coordinator, [p for p, _ in node_procs], procs)
    finally:
        # nodes (and later ones) first, so none of them sees the coordinator go and redials
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (s), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU time so far (s) of a process's live threads by kind: ``loop`` (the main thread:
    the asyncio event loop, gRPC's Python side), ``core`` (the coordinator's core thread:
    verifying, logging, releasing; named ``CORE_THREAD_NAME``), ``workers`` (other Python
    threads: gRPC's completion-queue poller, executors) and ``grpc`` (gRPC's own C
    threads, which come and go)."""
    kinds = {"loop": 0.0, "core": 0.0, "grpc": 0.0, "workers": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        seconds = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        if task.name == str(pid):
            kind = "loop"
        elif name == CORE_THREAD_NAME:
            kind = "core"
        else:
            kind = "workers" if name == "python" else "grpc"
        kinds[kind] += seconds
    return kinds


def main() -> int:
    """A worker process's entry point (``spawn`` starts this file with ``--role``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=("coordinator", "nodes"), required=True)
    parser.add_argument("--home", type=Path)
    parser.add_argument("--ready", type=Path)
    parser.add_argument("--job", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.role == "coordinator":
        role_coordinator(args.home, args.ready)
    else:
        role_nodes(args.job)
    return 0


if __name__ == "__main__":
    sys.exit(main())
