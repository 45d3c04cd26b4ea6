"""Benchmark: the size of an offline node's files for a year's queries, at the province's scale.

Issue 16 asks that the files carried to and from an air-gapped node be "at most a few
MB for a year's queries". This builds a federation of ``--nodes`` members (167 county
nodes and 125 universities by default: the whole of Hebei, so the manifest the outbox
carries is the province's), marks one county node offline, queues the provincial
annual report plan's queries for it (the plain ones: secure queries do not wait for a
file), and measures one round trip in process — ``coordinator outbox``, ``node
answer-file``, ``coordinator inbox`` — with real signatures, SQLite and OpenDP noise.

    python scripts/bench_offline_files.py [--nodes 292] [--students 2000]

It prints each file's size against the issue's few-MB bound (taken as 1 MiB, and the
16 MiB either side reads) and the time each step took.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

from loopback_federation import COUNTIES, node_ids, setup  # noqa: E402

from fedscreen.analyst.query import make_query  # noqa: E402
from fedscreen.coordinator.core import Coordinator  # noqa: E402
from fedscreen.coordinator.inbox import import_answers  # noqa: E402
from fedscreen.coordinator.offline import make_outbox, queue_offline  # noqa: E402
from fedscreen.node.offline import answer_outbox  # noqa: E402
from fedscreen.policy.default import PROVINCE_FILE, default_policy_dir  # noqa: E402
from fedscreen.policy.load import load_policy  # noqa: E402
from fedscreen.protocol.offline import MAX_FILE_BYTES  # noqa: E402
from fedscreen.report.plan import load_plan  # noqa: E402
from fedscreen.trust import authority  # noqa: E402
from fedscreen.trust.identity import update_manifest  # noqa: E402

MIB = 1 << 20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=292)
    parser.add_argument("--students", type=int, default=2000, help="students per county")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        ids = setup(work, args.nodes, args.students, 1, counties=min(args.nodes, COUNTIES))
        offline = ids[0]
        authority.set_offline(work / "auth", offline, offline=True)
        text = authority.manifest_text(work / "auth")
        for home in (work / "coord", work / "analyst-1", work / "nodes" / offline):
            update_manifest(home, text)
        took = time.perf_counter() - started
        print(f"set-up: {len(node_ids(args.nodes))} nodes in {took:.0f} s; {offline} offline; "
              f"manifest {len(text) / 1024:.0f} KiB")  # fmt: skip
        policy = load_policy(default_policy_dir() / PROVINCE_FILE)
        plan = load_plan(default_policy_dir() / "reports" / "annual.toml", policy)
        core = Coordinator.open(work / "coord")
        try:
            queued = 0
            for query in plan.asked.values():
                if query.secure:
                    continue
                _, envelope = make_query(
                    work / "analyst-1", query.sql, epsilon=query.epsilon,
                    accuracy=query.accuracy, nodes=[offline],
                )  # fmt: skip
                accepted = core.accept(envelope, now_ms=int(time.time() * 1000))
                why = queue_offline(core, accepted, envelope, [offline], academic_year=None)
                core.release(accepted, {}, [offline], reasons=why, query_envelope=envelope)
                queued += 1
            t0 = time.perf_counter()
            outbox, carried = make_outbox(core, offline)
            t1 = time.perf_counter()
            out = work / "answers.json"
            done = answer_outbox(work / "nodes" / offline, outbox, out)
            t2 = time.perf_counter()
            answers = out.read_bytes()
            imported = import_answers(core, answers)
            t3 = time.perf_counter()
        finally:
            core.close()
    print(f"{queued} plain queries of the annual plan queued; the outbox carries {carried}; "
          f"{len(done.answered)} answered, {len(done.refused)} refused, "
          f"ε {done.epsilon_spent:g}; {len(imported.released)} release versions")  # fmt: skip
    print()
    print(f"{'file':<13} {'bytes':>10} {'MiB':>7} {'vs 1 MiB':>9} {'vs 16 MiB limit':>16} "
          f"{'made in s':>10}")  # fmt: skip
    for name, data, seconds in (("outbox", outbox, t1 - t0), ("answer file", answers, t2 - t1)):
        print(f"{name:<13} {len(data):>10,} {len(data) / MIB:>7.3f} {len(data) / MIB:>9.3f} "
              f"{len(data) / MAX_FILE_BYTES:>16.4f} {seconds:>10.2f}")  # fmt: skip
    print(f"{'inbox':<13} {'':>10} {'':>7} {'':>9} {'':>16} {t3 - t2:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
