"""Benchmark: hostile export files against the ingest's limits (time and peak memory).

    python scripts/bench_ingest_limits.py [--size-mb 1024] [--workdir DIR] [--only NAME ...]

Each file is generated (one at a time, then deleted), loaded with
``fedscreen node ingest`` in a child process, and measured: wall time, and peak RSS
of the ingest *and its parsing workers together* (the sum over the process tree,
sampled every 20 ms from /proc; Linux only). Every file must be rejected with an
IngestError (exit code 1, no traceback) and stay under 512 MiB; exit code 1 here if not.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from exportrows import SCREENING_KEYS, screening_row

from fedscreen.node.home import init_home

LIMIT_MIB = 512
SAMPLE_S = 0.02
CHUNK = 8 << 20


def _header() -> bytes:
    return (",".join(SCREENING_KEYS) + "\r\n").encode()


def _row(n: int, **overrides: str) -> bytes:
    row = screening_row(n, **overrides)
    return (",".join(row[k] for k in SCREENING_KEYS) + "\r\n").encode()


def _repeat(unit: bytes, size: int) -> Iterator[bytes]:
    block = unit * max(1, CHUNK // len(unit))
    written = 0
    while written < size:
        yield block
        written += len(block)


def _rows(size: int, **overrides: str) -> Iterator[bytes]:
    written, n = 0, 1
    while written < size:
        block = b"".join(_row(i, **overrides) for i in range(n, n + 20_000))
        n += 20_000
        written += len(block)
        yield block


FILES: dict[str, Callable[[int], Iterator[bytes]]] = {
    # every line break lost: the header line is the whole file
    "no-line-breaks": lambda size: (b.replace(b"\r\n", b"") for b in _rows(size)),
    # a header, then one line without separators the size of the file
    "one-huge-line": lambda size: iter([_header(), *_repeat(b"x" * 4096, size)]),
    # a header, then a quote never closed
    "unclosed-quote": lambda size: iter([_header(), b'"', *_repeat(b"a,b\r\n", size)]),
    # a header, then tiny bad rows
    "tiny-bad-rows": lambda size: iter([_header(), *_repeat(b"x\n", size)]),
    # a header, then blank lines
    "blank-lines": lambda size: iter([_header(), *_repeat(b"\n", size)]),
    # full rows, each with a bad value
    "bad-rows": lambda size: iter([_header(), *_rows(size, sex="?")]),
    # full valid rows, more than MAX_ROWS of them
    "too-many-rows": lambda size: iter([_header(), *_rows(size)]),
}


def _tree_rss_kib(root: int) -> int:
    """Sum of VmRSS over ``root`` and its descendants."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/status"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        pid = int(stat.parent.name)
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        parents[pid] = int(fields.get("PPid", "0").strip())
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) if "VmRSS" in fields else 0
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    return sum(rss.get(pid, 0) for pid in tree)


def measure(cmd: list[str]) -> tuple[float, float, int, str]:
    """Run ``cmd``; return wall seconds, peak tree RSS (MiB), exit code, last stderr line."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _tree_rss_kib(proc.pid))
            time.sleep(SAMPLE_S)
        elapsed = time.perf_counter() - start
        err.seek(0)
        lines = err.read().decode(errors="replace").strip().splitlines()
    message = next((line for line in lines if "Traceback" in line), "")
    if not message and lines:
        message = lines[0] if len(lines) < 3 else lines[-3]
    return elapsed, peak / 1024, proc.returncode, message


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--only", nargs="*", choices=sorted(FILES), default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fedscreen-limits-"))
    work.mkdir(parents=True, exist_ok=True)
    home = init_home(work / "node", node_id="130102", name="长安区")
    size = args.size_mb << 20
    print(f"| file | size MiB | wall s | peak RSS MiB (≤ {LIMIT_MIB}) | exit | message |")
    print("|---|---:|---:|---:|---:|---|")
    failed = False
    for name in args.only or FILES:
        path = work / f"{name}.csv"
        with path.open("wb") as out:
            for block in FILES[name](size):
                out.write(block)
        cmd = [sys.executable, "-m", "fedscreen.cli.main", "node", "ingest"]
        elapsed, peak, code, message = measure([*cmd, "--home", str(home.home), str(path)])
        # rejected (1); only "too-many-rows" may load (0) when --size-mb is small
        ok = peak <= LIMIT_MIB and code in (0, 1) and "Traceback" not in message
        failed |= not ok
        shown = message.replace(str(path), path.name).replace("|", "/")[:110]
        mib = path.stat().st_size / 2**20
        print(
            f"| {name} | {mib:.0f} | {elapsed:.1f} | {peak:.0f}{'' if ok else ' ✗'} "
            f"| {code} | {shown} |",
            flush=True,
        )
        path.unlink()
    if not args.workdir:
        shutil.rmtree(work)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
