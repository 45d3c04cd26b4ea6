"""How `fedscreen demo` scales with the number of county nodes.

Runs the whole demo federation (build, start, annual report, audit, stop) for each
number of counties asked, in one run, and prints a table: seconds per phase and in
all, and the ratio against the baseline, the default demo (3 counties). The issue's
target: the default demo in under two minutes on this machine.

    python scripts/bench_demo.py                 # 3, 6 and 12 counties
    python scripts/bench_demo.py --counties 3 12 --workdir /tmp/bench-demo
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from fedscreen.demo import federation

#: the demo's numbered steps: build, start, the report (budget check and queries), audit
PHASES = ("build", "start", "report", "audit")


def one(work: Path, counties: int) -> dict[str, float]:
    """Seconds spent in each phase of one demo run."""
    marks: list[float] = []

    def say(line: str) -> None:
        # the demo announces each step as "1. ...", "2. ..." (at most one leading newline)
        head = line.lstrip("\n")
        if head[:2] in {f"{n}." for n in range(1, len(PHASES) + 1)}:
            marks.append(time.perf_counter())

    start = time.perf_counter()
    assert federation.run(work, counties=counties, say=say) == 0
    end = time.perf_counter()
    bounds = [*marks, end]
    phases = {name: bounds[i + 1] - bounds[i] for i, name in enumerate(PHASES)}
    phases["total"] = end - start
    return phases


def main() -> None:
    """Run and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counties", type=int, nargs="+", default=[3, 6, 12])
    parser.add_argument("--workdir", type=Path, help="where the federations are built")
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench-demo-"))
    results = {}
    for n in args.counties:
        work = root / f"demo-{n}"
        shutil.rmtree(work, ignore_errors=True)
        results[n] = one(work, n)
    baseline = results.get(federation.DEFAULT_COUNTIES) or next(iter(results.values()))
    default = federation.DEFAULT_COUNTIES
    print(f"\nfedscreen demo, seconds per phase (baseline: {default} counties)")
    header = ["counties", *PHASES, "total", "× baseline", "s per county"]
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for n, phases in results.items():
        cells = [str(n), *(f"{phases[p]:.1f}" for p in PHASES), f"{phases['total']:.1f}"]
        cells += [f"{phases['total'] / baseline['total']:.2f}", f"{phases['total'] / n:.1f}"]
        print(" | ".join(cells))


if __name__ == "__main__":
    main()
