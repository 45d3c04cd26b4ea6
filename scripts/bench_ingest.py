"""Benchmark: ingest of N synthetic students against a raw executemany baseline.

    python scripts/bench_ingest.py [--students 1000000] [--workdir DIR]

Measured in one run, on the same file and the same schema:

* **fedscreen ingest**: `fedscreen node ingest` in a child process — read CSV,
  validate every field, score the instruments, HMAC the student number, insert
  in one transaction, maintain the bounded view. Peak memory is the child's
  maximum RSS.
* **baseline**: a raw ``sqlite3`` ``executemany`` of the *same already-parsed
  rows* into a fresh database with the same schema and connection settings, in
  one transaction (the rows are parsed beforehand, outside the timing).

Target: ingest within 3x the baseline's time, peak memory under 1 GiB.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedscreen.node import store
from fedscreen.node.home import init_home
from fedscreen.node.reader import open_table
from fedscreen.node.validate import ScreeningParser


def run(cmd: list[str]) -> tuple[float, float]:
    """Run a command; return (wall seconds, peak RSS of children in MiB so far)."""
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return elapsed, peak_kib / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fedscreen-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    fedscreen = [sys.executable, "-m", "fedscreen.cli.main"]
    export = work / "export"

    synth_s, _ = run(
        [*fedscreen, "synth", "--students", str(args.students), "--seed", "7", "--out", str(export)]
    )
    csv_path = export / "screenings.csv"
    rows_in_file = sum(1 for _ in csv_path.open("rb")) - 1
    size_mb = csv_path.stat().st_size / 2**20

    node = work / "node"
    init_home(node, node_id="130102", name="长安区")
    # the synth run above is a child too: measure the ingest's peak in its own wrapper
    ingest_cmd = [*fedscreen, "node", "ingest", "--home", str(node), str(csv_path)]
    wrapper = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
        "stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", wrapper, *ingest_cmd], check=True, capture_output=True, text=True
    )
    ingest_s = time.perf_counter() - start
    ingest_peak_mb = int(out.stdout.strip()) / 1024

    # baseline: the same rows, parsed beforehand, inserted with executemany
    base = init_home(work / "baseline", node_id="130102", name="baseline")
    table = open_table(csv_path)
    parse = ScreeningParser(
        path=str(csv_path), header=table.header, county_code="130102", secret=base.secret()
    )
    problems: list[object] = []
    parsed = [parse.parse(line, cells, problems, 1) for line, cells in table.rows]  # type: ignore[arg-type]
    table.close()
    assert not problems, problems[:3]
    columns = parse.columns
    sql = (
        f"INSERT INTO screening ({', '.join(columns)}, bounded) "
        f"VALUES ({', '.join('?' * len(columns))}, 1)"
    )
    conn = store.connect(base.database)
    conn.execute(
        "INSERT INTO ingest_batch (batch_id, kind, file_name, digest, rows, "
        "academic_year, loaded_at) VALUES (1, 'screening', 'f', 'd', 0, '', '')"
    )
    start = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany(sql, parsed)
    conn.execute("COMMIT")
    baseline_s = time.perf_counter() - start
    conn.close()

    loaded = store.connect(node / "node.db").execute("SELECT COUNT(*) FROM screening").fetchone()[0]
    assert loaded == rows_in_file, (loaded, rows_in_file)
    print(
        f"\n{rows_in_file:,} screening rows, CSV {size_mb:,.0f} MiB (synth took {synth_s:.1f} s)\n"
    )
    print(f"{'':34} {'seconds':>8} {'rows/s':>10} {'x baseline':>10} {'peak MiB':>9}")
    print(
        f"{'baseline: executemany (parsed)':34} {baseline_s:8.1f} "
        f"{rows_in_file / baseline_s:10,.0f} {1.0:10.2f} {'':>9}"
    )
    print(
        f"{'fedscreen node ingest':34} {ingest_s:8.1f} {rows_in_file / ingest_s:10,.0f}"
        f" {ingest_s / baseline_s:10.2f} {ingest_peak_mb:9,.0f}"
    )
    print("\ntarget: <= 3.00 x baseline, peak < 1024 MiB")


if __name__ == "__main__":
    main()
