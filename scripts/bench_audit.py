"""Benchmark: offline audit verification against raw Ed25519 verification.

    python scripts/bench_audit.py [--entries 100000] [--repeat 5]

Measured in one run:

* a node log of N signed entries (DSSE envelopes in a real SQLite transparency log);
* **fedscreen audit verify** of that log (parse each envelope, verify its
  signature, Merkle-hash it, check the checkpoint and the ε sums) — entries/s;
* **baseline**: raw PyNaCl ``VerifyKey.verify`` of the same N signatures over the
  same pre-authentication-encoded bytes — entries/s. Target: within 1.3x on one process
  (issue 11). The two run in turn ``--repeat`` times, the best of each kept, so that
  a shared machine's drifting speed affects both alike.

Then inclusion- and consistency-proof sizes and times for trees of 10^3 … 10^6
leaves (they must grow with log n).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from nacl.signing import VerifyKey

from fedscreen._util.canonical import canonical_json
from fedscreen.audit.parallel import in_processes
from fedscreen.audit.verify import verify_bundle
from fedscreen.crypto.envelope import LOG_ENTRY_V1, pae, sign_envelope
from fedscreen.crypto.signing import SigningKey
from fedscreen.tlog import merkle
from fedscreen.tlog.checkpoint import Checkpoint, sign_checkpoint
from fedscreen.tlog.export import Bundle, LogExport
from fedscreen.tlog.log import TransparencyLog
from fedscreen.trust.manifest import Manifest, Member

NODE = "130102"
ORIGIN = f"fedscreen.node/{NODE}"


def build_log(path: Path, entries: int, key: SigningKey) -> tuple[list[bytes], str]:
    conn = sqlite3.connect(path, isolation_level=None)
    log = TransparencyLog(conn, name="node")
    conn.execute("BEGIN")
    for index in range(entries):
        payload = canonical_json(
            {
                "kind": "answer",
                "index": index,
                "node_id": NODE,
                "at": "2026-11-29T00:00:00+00:00",
                "analyst": "analyst-1",
                "epsilon": 0,
                "cached": True,
                "budget_after": {},
                "query": {
                    "dataset": "screenings",
                    "group_by": ["sex"],
                    "measure": {"kind": "count"},
                    "where": None,
                    "years": ["2024-2025"],
                },
                "policy_digest": "0" * 64,
                "answer_sha256": f"{index:064x}",
            }
        )
        envelope = sign_envelope(payload_type=LOG_ENTRY_V1, payload=payload, key=key)
        log.append(envelope.to_json().encode())
    conn.execute("COMMIT")
    raw = [log.entry(i) for i in range(entries)]
    note = sign_checkpoint(Checkpoint(ORIGIN, entries, log.root(entries)), key=key)
    conn.close()
    return raw, note


def timed(fn, repeat: int = 1) -> float:  # type: ignore[no-untyped-def]
    return min(interleaved([fn], repeat))


def interleaved(fns, repeat: int) -> list[float]:  # type: ignore[no-untyped-def]
    """The best time of each of ``fns``, run in turn ``repeat`` times: on a shared machine
    whose speed drifts, a ratio of two timings taken apart would measure the drift."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each (best kept)")
    args = parser.parse_args()
    key = SigningKey.generate()
    authority = SigningKey.generate()
    manifest = Manifest(
        "bench",
        1,
        "2026-11-29",
        authority.public_key,
        (Member(NODE, "node", "bench", key.public_key, "00" * 32),),
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        raw, note = build_log(Path(tmp) / "log.db", args.entries, key)
        build_s = time.perf_counter() - start
    bundle = Bundle((LogExport(NODE, ORIGIN, tuple(raw), (note,)),), None)

    # baseline inputs prepared outside the timing: the exact signed bytes and signatures
    signed = []
    for entry in raw:
        outer = json.loads(entry)
        message = pae(outer["payloadType"], base64.b64decode(outer["payload"]))
        signed.append((message, base64.b64decode(outer["signatures"][0]["sig"])))
    verify_key = VerifyKey(key.public_key)
    baseline_s, verify_s = interleaved(
        [
            lambda: [verify_key.verify(m, s) for m, s in signed],
            lambda: verify_bundle(bundle, manifest),
        ],
        repeat=args.repeat,
    )
    workers = os.cpu_count() or 1
    parallel_s = timed(lambda: verify_bundle(bundle, manifest, entries=in_processes(workers)))

    n = args.entries
    print(f"\nlog of {n:,} signed entries built in {build_s:.1f} s\n")
    print(f"{'':40} {'seconds':>8} {'entries/s':>11} {'x baseline':>10}")
    print(
        f"{'baseline: PyNaCl verify (same sigs)':40} {baseline_s:8.2f} {n / baseline_s:11,.0f} "
        f"{1.0:10.2f}"
    )
    print(
        f"{'fedscreen audit verify, 1 process':40} {verify_s:8.2f} {n / verify_s:11,.0f} "
        f"{verify_s / baseline_s:10.2f}"
    )
    label = f"fedscreen audit verify, {workers} processes"
    print(f"{label:40} {parallel_s:8.2f} {n / parallel_s:11,.0f} {parallel_s / baseline_s:10.2f}")
    print("(the CLI uses every core; the baseline is one core)")
    print("target: <= 1.30 x baseline on one process\n")

    print(
        f"{'leaves':>10} {'incl. hashes':>13} {'incl. µs':>9} {'cons. hashes':>13} {'cons. µs':>9}"
    )
    store = merkle.MemoryHashStore()
    size = 0
    for exponent in range(3, 7):
        target = 10**exponent
        while size < target:
            store.append(merkle.leaf_hash(size.to_bytes(8, "big")))
            size += 1
        root = merkle.root(store, size=size)
        index = size // 3
        times, proof = [], []
        for _ in range(20):
            start = time.perf_counter()
            proof = merkle.inclusion_proof(store, index=index, size=size)
            times.append(time.perf_counter() - start)
        merkle.verify_inclusion(
            leaf_hash=merkle.leaf_hash(index.to_bytes(8, "big")),
            index=index,
            size=size,
            proof=proof,
            root=root,
        )
        ctimes, cproof = [], []
        old = size // 2 + 1
        for _ in range(20):
            start = time.perf_counter()
            cproof = merkle.consistency_proof(store, size1=old, size2=size)
            ctimes.append(time.perf_counter() - start)
        merkle.verify_consistency(
            size1=old, size2=size, root1=merkle.root(store, size=old), root2=root, proof=cproof
        )
        print(
            f"{size:>10,} {len(proof):>13} {statistics.median(times) * 1e6:9.0f} "
            f"{len(cproof):>13} {statistics.median(ctimes) * 1e6:9.0f}"
        )


if __name__ == "__main__":
    main()
