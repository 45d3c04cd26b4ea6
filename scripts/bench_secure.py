"""Benchmark secure aggregation (issue 14): a province cell's accuracy and a query's latency.

    python scripts/bench_secure.py                          # N = 3, 12, 167 at ε = 0.15
    python scripts/bench_secure.py --nodes 3,12 --trials 1000 --queries 5

Sets up a real federation as ``bench_federation.py`` does (authority, coordinator, N
county nodes with synthetic students, an analyst) plus the second aggregator, then:

**Accuracy** of one province cell (self-harm ideation, PHQ-9 item 9 = 1, in one
academic year) summed over N nodes at one ε, over ``--trials`` draws, for

* (a) today's plain query: each node adds its own discrete-Laplace draw and the
  province figure is their sum (``protocol.combine``);
* (b) secure aggregation: two aggregators each add one draw to their sum of shares;
* (c) the central-DP optimum: one draw on the exact province total.

For N ≤ ``--pipeline-max``, (a) and (b) go through fedscreen's own code: (a) each node's
noise from ``node.cells.release`` on its real SQL rows, summed by ``combine``; (b) one
real secure answer per node (``handle_query``: shares sealed to both aggregators,
signed, verified with ``verify_answer``), then per trial both aggregators'
``secure.aggregate`` with their real keys, ``sign_partial``, ``verify_partial`` and the
release's ``SecureOutcome.cells`` (``combine_partials``). Above it, the same OpenDP
draws come straight from ``query.mechanisms.laplace_noise`` (N per trial for (a), two
for (b)) and the stated interval as the release states it (``combine.sum_interval`` for
(a), ``partial.two_draw_half_width`` for (b)); the table says which. (c) is always
``mechanisms.laplace_vector`` on the exact total, stated as one answer's interval
(``mechanisms.half_width``). The error of a trial is its figure minus the exact total
(from the nodes' SQL). The empirical 95% half-width is the smallest h with |error| ≤ h
in 95% of trials; its 95% confidence range (order statistics) is printed beside it: at
the default 4,000 trials it is within about ±5%.

**Latency** with every party in its own process (coordinator, second aggregator, the
nodes as ``run_node`` tasks in ``--processes`` processes; mutual TLS, real SQLite):
Analyst.Submit of a grouped COUNT as a plain query and the same question as a secure
query, alternating, each a distinct question (its ε moves by 1 µε, so no node answers
from its store), at a small ε so the nodes' budgets last (ε does not change the
work). Every release is verified as an analyst would (not timed); a secure release
must carry both partials. The CPU each party spent per query comes from /proc, and where
a secure query's time goes from the timestamps both aggregators store with their
partials. The default run (167 nodes of 500 students: fewer than a county's, to set up
quickly; the secure work does not grow with them) takes about 5 minutes on 2 cores.

Caveat: everything shares this machine's cores; in a province each county, the
coordinator and the aggregator answer on their own machines, in parallel.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT))

from bench_federation import (  # noqa: E402
    COORDINATOR,
    YEAR,
    cpu_seconds,
    federation,
    setup,
    spawn,
    until_signalled,
    wait_ready,
)

from fedscreen._util.files import write_ready_file  # noqa: E402
from fedscreen.aggregator.agent import run_aggregator  # noqa: E402
from fedscreen.aggregator.home import DATABASE_FILE as AGGREGATOR_DB  # noqa: E402
from fedscreen.aggregator.home import init_aggregator  # noqa: E402
from fedscreen.analyst.query import make_query, verify_release  # noqa: E402
from fedscreen.cli.reference import true_cells, true_rows  # noqa: E402
from fedscreen.coordinator.core import DATABASE_FILE as COORDINATOR_DB  # noqa: E402
from fedscreen.crypto.envelope import Envelope  # noqa: E402
from fedscreen.node import store  # noqa: E402
from fedscreen.node.cells import release  # noqa: E402
from fedscreen.node.home import load_config  # noqa: E402
from fedscreen.node.requests import handle_query  # noqa: E402
from fedscreen.protocol import secure  # noqa: E402
from fedscreen.protocol.answer import VerifiedAnswer, verify_answer  # noqa: E402
from fedscreen.protocol.combine import NodeCells, combine, sum_interval  # noqa: E402
from fedscreen.protocol.partial import two_draw_half_width  # noqa: E402
from fedscreen.protocol.release import SecureOutcome  # noqa: E402
from fedscreen.query import mechanisms  # noqa: E402
from fedscreen.query.sqlparse import parse_sql  # noqa: E402
from fedscreen.rpc import transport  # noqa: E402
from fedscreen.trust.identity import issue_here, load_identity  # noqa: E402
from fedscreen.v1 import federation_pb2 as pb  # noqa: E402
from fedscreen.v1 import federation_pb2_grpc as pb_grpc  # noqa: E402

AGGREGATOR = "stats-bureau"
ANALYST = "analyst-1"
#: the province cell whose accuracy is measured: a rare outcome, one cell
CELL_SQL = f"SELECT COUNT(*) FROM screenings WHERE academic_year = '{YEAR}' AND phq9_item9 = 1"
#: the question timed, plain and secure: a grouped count over secure columns
TIMED_SQL = (
    "SELECT grade_band, sex, COUNT(*) FROM screenings "
    f"WHERE academic_year = '{YEAR}' AND phq9_positive = 1 GROUP BY grade_band, sex"
)
#: ε of the timed queries (+1 µε each so that no two are the same question)
TIMED_EPSILON = 0.005
#: how long the coordinator may wait for nodes and the aggregator (ms)
DEADLINE_MS = 120_000
#: the target: (b) within this factor of (c), and secure within this factor of plain
ACCURACY_TARGET = 1.5
LATENCY_TARGET = 2.0
#: the N at which the latency target applies
LATENCY_TARGET_N = 167
#: a secure query's time, in three spans (see ``breakdown``)
SPANS = (
    "answers in, relayed, aggregator's partial",
    "coordinator's partial",
    "release",
)


def add_aggregator(work: Path) -> Callable[[Path], list[Path]]:
    """``setup``'s hook: the second aggregator's home, made and issued by the authority."""

    def make(auth: Path) -> list[Path]:
        home = work / "agg"
        init_aggregator(home, member_id=AGGREGATOR, name="省统计局 (bench)")
        issue_here(auth, home)
        return [home]

    return make


def role_aggregator(home: Path, coordinator: str, ready: Path) -> None:
    """The second aggregator in its own process, until signalled."""

    async def main(stop: asyncio.Event) -> None:
        def on_welcome(_: Any) -> None:
            write_ready_file(ready, {"pid": os.getpid()})

        await run_aggregator(home, coordinator, stop=stop, on_welcome=on_welcome)

    until_signalled(main)


# ---------------------------------------------------------------- accuracy


@dataclass(frozen=True)
class Trials:
    """One mechanism's figures over the trials, against the exact total."""

    label: str
    drawn_by: str
    exact: int
    values: list[int]
    #: the interval the release states, per trial
    intervals: list[tuple[float, float]]

    @property
    def errors(self) -> list[int]:
        return sorted(abs(v - self.exact) for v in self.values)

    @property
    def stated(self) -> float:
        """The stated 95% half-width (the same in every trial: it follows from the scales)."""
        return statistics.median((high - low) / 2 for low, high in self.intervals)

    def empirical(self) -> tuple[int, int, int]:
        """(the smallest h with |error| ≤ h in 95% of trials, and its 95% confidence range
        from the order statistics: k ± 1.96 √(T·0.95·0.05))."""
        errors, t = self.errors, len(self.values)
        k = math.ceil(0.95 * t) - 1
        spread = math.ceil(1.96 * math.sqrt(t * 0.95 * 0.05))
        return errors[k], errors[max(k - spread, 0)], errors[min(k + spread, t - 1)]

    @property
    def mae(self) -> float:
        return statistics.fmean(self.errors)

    @property
    def coverage(self) -> float:
        hits = sum(low <= self.exact <= high for low, high in self.intervals)
        return hits / len(self.intervals)


@dataclass
class County:
    """One node's compiled province-cell query and its exact rows."""

    node_id: str
    plan: Any
    rows: list[Any]
    exact: int
    threshold: int


def counties(work: Path, node_ids: Sequence[str]) -> list[County]:
    """Each node's plan and exact SQL rows for the province cell (plain query)."""
    spec = parse_sql(CELL_SQL)
    out = []
    for node_id in node_ids:
        config = load_config(work / "nodes" / node_id)
        policy = config.policy()
        plan, rows = true_rows(config.database, spec, policy)
        exact = true_cells(plan, rows)[0][0]
        out.append(County(node_id, plan, rows, exact, policy.limits.publication_threshold))
    return out


def plain_pipeline(nodes: list[County], epsilon: float, trials: int) -> Trials:
    """(a) through the node's noise (``node.cells.release``) and the province sum."""
    values, intervals = [], []
    for _ in range(trials):
        bodies = [
            NodeCells(c.node_id, release(c.plan, c.rows, epsilon, c.threshold)) for c in nodes
        ]
        cell = combine("count", bodies, threshold=nodes[0].threshold, public=False)[0]
        values.append(int(cell["value"]))
        intervals.append((cell["lower"], cell["upper"]))
    total = sum(c.exact for c in nodes)
    return Trials("(a) sum of noisy answers", "pipeline", total, values, intervals)


def plain_direct(nodes: list[County], epsilon: float, trials: int) -> Trials:
    """(a) with N OpenDP draws per trial straight from ``query.mechanisms``."""
    n = len(nodes)
    draws = mechanisms.laplace_noise(n * trials, epsilon=epsilon, sensitivity=1)
    exact = [c.exact for c in nodes]
    total = sum(exact)
    _, low, high, _ = sum_interval(exact, [draws.scale] * n)
    values = [total + sum(draws.values[t * n : (t + 1) * n]) for t in range(trials)]
    intervals = [(v - (total - low), v + (high - total)) for v in values]
    return Trials("(a) sum of noisy answers", "mechanisms", total, values, intervals)


def secure_answers(
    work: Path, nodes: list[County], epsilon: float
) -> tuple[Any, list[VerifiedAnswer]]:
    """One real secure answer per node to one signed query, verified as an aggregator does."""
    node_ids = [c.node_id for c in nodes]
    query, envelope = make_query(
        work / ANALYST, CELL_SQL, epsilon=epsilon, accuracy=None, nodes=node_ids, secure=True
    )
    answers = []
    for node_id in node_ids:
        config = load_config(work / "nodes" / node_id)
        manifest = load_identity(config.home).manifest()
        conn = store.connect(config.database)
        try:
            raw = handle_query(config, config.policy(), manifest, envelope, conn=conn)
        finally:
            conn.close()
        answers.append(
            verify_answer(
                Envelope.from_json(raw),
                manifest=manifest,
                node_id=node_id,
                expected_query=query,
                public=False,
            )
        )
    return query, answers


def secure_pipeline(work: Path, nodes: list[County], epsilon: float, trials: int) -> Trials:
    """(b) through the real shares: both aggregators' partials (opened with their keys,
    summed, one OpenDP draw each, signed and verified), combined as a release does."""
    query, answers = secure_answers(work, nodes, epsilon)
    parties = [(COORDINATOR, work / "coord"), (AGGREGATOR, work / "agg")]
    keys = {member: load_identity(home).signing_key() for member, home in parties}
    manifest = load_identity(work / ANALYST).manifest()
    threshold = nodes[0].threshold
    values, intervals = [], []
    for _ in range(trials):
        partials = []
        for member, _home in parties:
            body = secure.aggregate(
                query, answers, me=member, key=keys[member], academic_year=None,
                min_nodes=len(answers),
            )  # fmt: skip
            signed = secure.sign_partial(
                body, keys[member], query_id=query.query_id, query_sha256=query.digest
            )
            verified = secure.verify_partial(
                signed, manifest=manifest, aggregator_id=member, expected_query=query
            )
            partials.append((signed.to_json(), verified))
        outcome = SecureOutcome((COORDINATOR, AGGREGATOR), tuple(partials))
        cell = outcome.cells(threshold)[0]
        values.append(int(cell["value"]))
        intervals.append((cell["lower"], cell["upper"]))
    total = sum(c.exact for c in nodes)
    return Trials("(b) secure, two draws", "pipeline", total, values, intervals)


def secure_direct(nodes: list[County], epsilon: float, trials: int) -> Trials:
    """(b) with two OpenDP draws per trial straight from ``query.mechanisms``."""
    draws = mechanisms.laplace_noise(2 * trials, epsilon=epsilon, sensitivity=1)
    total = sum(c.exact for c in nodes)
    half = two_draw_half_width(draws.scale)  # as combine_partials states it
    values = [total + draws.values[2 * t] + draws.values[2 * t + 1] for t in range(trials)]
    intervals = [(v - half, v + half) for v in values]
    return Trials("(b) secure, two draws", "mechanisms", total, values, intervals)


def central(nodes: list[County], epsilon: float, trials: int) -> Trials:
    """(c) one OpenDP draw on the exact total, stated as one answer's interval."""
    total = sum(c.exact for c in nodes)
    noisy = mechanisms.laplace_vector([total] * trials, epsilon=epsilon, sensitivity=1)
    values = list(noisy.values)
    intervals = [(float(v - noisy.half_width), float(v + noisy.half_width)) for v in values]
    return Trials("(c) central, one draw", "mechanisms", total, values, intervals)


def accuracy(
    work: Path, node_ids: list[str], tiers: list[int], epsilon: float, trials: int, most: int
) -> dict[int, list[Trials]]:
    """Per N: (a), (b) and (c) over ``trials`` draws; through the pipeline up to ``most``."""
    everyone = counties(work, node_ids[: max(tiers)])
    results = {}
    for n in tiers:
        nodes = everyone[:n]
        started = time.perf_counter()
        if n <= most:
            plain = plain_pipeline(nodes, epsilon, trials)
            shared = secure_pipeline(work, nodes, epsilon, trials)
        else:
            plain, shared = (
                plain_direct(nodes, epsilon, trials),
                secure_direct(nodes, epsilon, trials),
            )
        results[n] = [plain, shared, central(nodes, epsilon, trials)]
        print(f"  accuracy N={n}: {time.perf_counter() - started:.0f} s", flush=True)
    return results


def accuracy_rows(results: dict[int, list[Trials]]) -> list[dict[str, Any]]:
    """One row per N and mechanism, with its ratios to (c) at that N."""
    rows = []
    for n, mechanisms_n in results.items():
        base = mechanisms_n[-1]
        base_emp = base.empirical()[0]
        for trials, key in zip(mechanisms_n, "abc", strict=True):
            emp, low, high = trials.empirical()
            rows.append(
                {
                    "nodes": n,
                    "mechanism": key,
                    "label": trials.label,
                    "drawn_by": trials.drawn_by,
                    "exact": trials.exact,
                    "stated": trials.stated,
                    "empirical": emp,
                    "empirical_range": [low, high],
                    "mae": trials.mae,
                    "coverage": trials.coverage,
                    "stated_ratio": trials.stated / base.stated,
                    "empirical_ratio": emp / base_emp,
                    "mae_ratio": trials.mae / base.mae,
                }
            )
    return rows


def mae_two_draws(epsilon: float) -> float:
    """E|X + Y| / E|X| for independent discrete-Laplace draws X, Y at ``epsilon``
    (sensitivity 1): with q = e^(−ε), E|X| = 2q/(1 − q²) and P(X + Y = s) =
    c² q^|s| (|s| + 1 + 2q²/(1 − q²)), c = (1 − q)/(1 + q)."""
    q = math.exp(-epsilon)
    c = (1 - q) / (1 + q)
    one = 2 * q / (1 - q * q)
    two = (
        2 * c * c * (q * (1 + q) / (1 - q) ** 3 + (1 + 2 * q * q / (1 - q * q)) * q / (1 - q) ** 2)
    )
    return two / one


def accuracy_met(rows: list[dict[str, Any]]) -> bool:
    """(b) ≤ 1.5 × (c) in 95% half-width, stated and empirical, at every N."""
    return all(
        r["stated_ratio"] <= ACCURACY_TARGET and r["empirical_ratio"] <= ACCURACY_TARGET
        for r in rows
        if r["mechanism"] == "b"
    )


def print_accuracy(rows: list[dict[str, Any]], epsilon: float, trials: int) -> None:
    """The accuracy table and the target's verdict."""
    print(f"\nprovince cell: {CELL_SQL}")
    print(f"ε = {epsilon:g} per query, {trials} trials per N and mechanism; ±95% in students\n")
    head = (
        f"{'N':>4}  {'mechanism':<25} {'drawn by':<10} {'exact':>6} {'stated ±':>9} "
        f"{'empirical ±':>11} {'(95% CI)':>11} {'MAE':>7} {'cover':>6}  "
        f"{'stated/(c)':>10} {'emp/(c)':>8} {'MAE/(c)':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        low, high = r["empirical_range"]
        print(
            f"{r['nodes']:>4}  {r['label']:<25} {r['drawn_by']:<10} {r['exact']:>6} "
            f"{r['stated']:>9.1f} {r['empirical']:>11} {f'{low}–{high}':>11} {r['mae']:>7.2f} "
            f"{r['coverage']:>6.1%}  {r['stated_ratio']:>10.2f} {r['empirical_ratio']:>8.2f} "
            f"{r['mae_ratio']:>8.2f}"
        )
    print(
        f"\ntarget (b) ≤ {ACCURACY_TARGET} × (c) in 95% half-width, stated and empirical, "
        f"at every N: {'MET' if accuracy_met(rows) else 'NOT MET'}"
    )
    print(
        "(two independent draws: √2 ≈ 1.41 in standard deviation; the MAE of two "
        f"discrete-Laplace draws is {mae_two_draws(epsilon):.3f} × one's at this ε, exactly)"
    )


# ---------------------------------------------------------------- latency


@dataclass
class Timed:
    """One kind of query's Submit latencies and the CPU each party spent on it (s)."""

    latencies: list[float]
    cpu: dict[str, float]
    #: (query id, wall clock at Submit and at its response, ms) per query
    calls: list[tuple[str, float, float]] = field(default_factory=list)


async def measure_latency(
    work: Path, address: str, node_ids: list[str], tiers: list[int], queries: int,
    pids: dict[str, list[int]],
) -> dict[int, dict[str, Timed]]:  # fmt: skip
    """Per N: plain and secure queries, alternating; each release verified (not timed)."""
    identity = load_identity(work / ANALYST)
    manifest = identity.manifest()
    counter = [0]

    def cpu() -> dict[str, float]:
        return {party: sum(cpu_seconds(p) for p in ps) for party, ps in pids.items()}

    results: dict[int, dict[str, Timed]] = {}
    channel = await transport.connect(identity, address, peer_id=COORDINATOR)
    try:
        stub = pb_grpc.AnalystStub(channel)

        async def ask(nodes: list[str], secure_query: bool) -> tuple[Any, float, dict[str, float]]:
            counter[0] += 1
            query, envelope = make_query(
                identity.home, TIMED_SQL, epsilon=TIMED_EPSILON + counter[0] * 1e-6,
                accuracy=None, nodes=nodes, secure=secure_query,
            )  # fmt: skip
            before, wall = cpu(), time.time() * 1000
            started = time.perf_counter()
            with transport.rpc_errors("submit"):
                response = await stub.Submit(
                    pb.SubmitRequest(query_envelope=envelope, deadline_ms=DEADLINE_MS),
                    timeout=DEADLINE_MS / 1000 + 10,
                )
            elapsed = time.perf_counter() - started
            spent = {k: v - before[k] for k, v in cpu().items()}
            if response.missing_nodes:
                raise RuntimeError(f"{len(response.missing_nodes)} nodes missing from a release")
            verified = verify_release(
                response.release_envelope, manifest=manifest, query=query,
                answers={a.node_id: a.envelope for a in response.answers},
            )  # fmt: skip
            if secure_query:
                section = verified.body.get("secure") or {}
                if section.get("failure") or len(section.get("partials") or []) != 2:
                    raise RuntimeError(f"a secure release failed: {section.get('failure')}")
            return (query.query_id, wall, wall + elapsed * 1000), elapsed, spent

        for n in tiers:
            targets = node_ids[:n]
            for kind in (False, True, False, True):  # warm-up: caches, page-ins
                await ask(targets, kind)
            timed = {k: Timed([], {p: 0.0 for p in pids}) for k in ("plain", "secure")}
            for q in range(queries):
                # alternate which goes first, so neither always follows the other
                for kind in (False, True) if q % 2 == 0 else (True, False):
                    call, elapsed, spent = await ask(targets, kind)
                    entry = timed["secure" if kind else "plain"]
                    entry.latencies.append(elapsed)
                    entry.calls.append(call)
                    for party, seconds in spent.items():
                        entry.cpu[party] += seconds / queries
            results[n] = timed
            ratio = statistics.median(timed["secure"].latencies) / statistics.median(
                timed["plain"].latencies
            )
            print(f"  latency N={n}: secure/plain median {ratio:.2f}", flush=True)
    finally:
        await channel.close(None)
    return results


def breakdown(work: Path, timed: dict[int, dict[str, Timed]]) -> dict[int, list[float]]:
    """Per N, the median secure query's time (ms) from Submit to the aggregator storing its
    partial (every answer in and checked, the relay, the aggregator's checks and sum),
    from there to the coordinator storing its own partial over the aggregator's list
    (the coordinator makes its partial second: ``coordinator.secureround``), and from
    there to the response (the pair combined, the release signed and logged). From the
    timestamps both aggregators store with their partials (one machine, one clock): read
    once both have stopped."""
    with closing(sqlite3.connect(work / "coord" / COORDINATOR_DB)) as conn:
        own = dict(conn.execute("SELECT key, created_ms FROM secure_partial").fetchall())
    with closing(sqlite3.connect(work / "agg" / AGGREGATOR_DB)) as conn:
        taken = {
            q: (key, at)
            for q, key, at in conn.execute("SELECT query_id, key, at_ms FROM partial_given")
        }
    out = {}
    for n, kinds in timed.items():
        spans = []
        for query_id, sent, back in kinds["secure"].calls:
            key, at = taken[query_id]
            spans.append((at - sent, own[key] - at, back - own[key]))
        out[n] = [statistics.median(s[i] for s in spans) for i in range(3)]
    return out


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[18] if len(values) >= 2 else values[0]


def latency_rows(
    results: dict[int, dict[str, Timed]], spans: dict[int, list[float]]
) -> list[dict[str, Any]]:
    """One row per N: plain and secure latency (ms), their ratio, CPU per query by party,
    and where a secure query's time goes (:func:`breakdown`)."""
    rows = []
    for n, timed in results.items():
        plain, shared = timed["plain"], timed["secure"]
        p50, s50 = statistics.median(plain.latencies), statistics.median(shared.latencies)
        p95, s95 = _p95(plain.latencies), _p95(shared.latencies)
        rows.append(
            {
                "nodes": n,
                "plain_p50_ms": p50 * 1000,
                "plain_p95_ms": p95 * 1000,
                "secure_p50_ms": s50 * 1000,
                "secure_p95_ms": s95 * 1000,
                "ratio_p50": s50 / p50,
                "ratio_p95": s95 / p95,
                "secure_spans_ms": dict(zip(SPANS, spans[n], strict=True)),
                "cpu_ms": {
                    kind: {party: sec * 1000 for party, sec in t.cpu.items()}
                    for kind, t in timed.items()
                },
            }
        )
    return rows


def latency_met(rows: list[dict[str, Any]]) -> bool | None:
    """Secure ≤ 2 × plain (median) at N = 167; None if N = 167 was not measured."""
    at = [r for r in rows if r["nodes"] == LATENCY_TARGET_N]
    return at[0]["ratio_p50"] <= LATENCY_TARGET if at else None


def print_latency(rows: list[dict[str, Any]], queries: int, students: int) -> None:
    """The latency table and the target's verdict."""
    print(f"\nlatency of Analyst.Submit, {queries} queries of each kind per N, alternating;")
    print(f"{TIMED_SQL}\n(ε {TIMED_EPSILON} + 1 µε per query; {students} students per node)\n")
    head = (
        f"{'N':>4}  {'plain p50':>9} {'p95':>7}  {'secure p50':>10} {'p95':>7}  "
        f"{'added p50':>9}  {'secure/plain p50':>16} {'p95':>5}  "
        f"{'CPU ms per query, plain → secure: coordinator':>46} {'aggregator':>14} "
        f"{'nodes':>15}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        plain, shared = r["cpu_ms"]["plain"], r["cpu_ms"]["secure"]
        cpu = "".join(
            f" {f'{plain[party]:.0f} → {shared[party]:.0f}':>{width}}"
            for party, width in (("coordinator", 46), ("aggregator", 14), ("nodes", 15))
        )
        print(
            f"{r['nodes']:>4}  {r['plain_p50_ms']:>9.1f} {r['plain_p95_ms']:>7.1f}  "
            f"{r['secure_p50_ms']:>10.1f} {r['secure_p95_ms']:>7.1f}  "
            f"{r['secure_p50_ms'] - r['plain_p50_ms']:>9.1f}  {r['ratio_p50']:>16.2f} "
            f"{r['ratio_p95']:>5.2f} {cpu}"
        )
    print(
        "\nwhere a secure query's time goes (median ms since Submit; the timestamps the two "
        "aggregators store):"
    )
    print(f"{'N':>4}  " + "  ".join(f"{name:>{len(name)}}" for name in SPANS))
    for r in rows:
        spans = r["secure_spans_ms"]
        print(f"{r['nodes']:>4}  " + "  ".join(f"{spans[name]:>{len(name)}.0f}" for name in SPANS))
    met = latency_met(rows)
    shown = "not measured" if met is None else "MET" if met else "NOT MET"
    print(f"\ntarget secure ≤ {LATENCY_TARGET} × plain (median) at N = {LATENCY_TARGET_N}: {shown}")


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--role", choices=("driver", "aggregator"), default="driver")
    parser.add_argument("--home", type=Path)
    parser.add_argument("--coordinator")
    parser.add_argument("--ready", type=Path)
    parser.add_argument("--nodes", default="3,12,167", help="comma-separated N")
    parser.add_argument("--epsilon", type=float, default=0.15, help="ε of the accuracy runs")
    parser.add_argument("--trials", type=int, default=4_000, help="accuracy trials per N")
    parser.add_argument(
        "--pipeline-max", type=int, default=12,
        help="largest N whose accuracy trials go through the real node and aggregator code",
    )  # fmt: skip
    parser.add_argument("--queries", type=int, default=30, help="timed queries per kind and N")
    parser.add_argument("--students", type=int, default=500, help="students per node")
    parser.add_argument("--processes", type=int, default=4, help="node processes")
    parser.add_argument("--work", type=Path, help="work directory (default: a new temp one)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.role == "aggregator":
        role_aggregator(args.home, args.coordinator, args.ready)
        return 0

    tiers = sorted({int(n) for n in args.nodes.split(",")})
    if tiers[0] < 3:
        parser.error("a secure query sums at least 3 nodes (the catalogue's min_nodes)")
    work = args.work or Path(tempfile.mkdtemp(prefix="fedscreen-secure-"))
    print(f"setting up {tiers[-1]} nodes x {args.students} students in {work}", flush=True)
    started = time.perf_counter()
    node_ids = setup(work, tiers[-1], args.students, analysts=1, extra=add_aggregator(work))
    print(f"  setup: {time.perf_counter() - started:.0f} s", flush=True)
    # before the servers start: nothing else competes for the nodes' databases
    accurate = accuracy(work, node_ids, tiers, args.epsilon, args.trials, args.pipeline_max)
    with federation(work, node_ids, args.processes) as running:  # stopped before breakdown
        ready = work / "aggregator.ready"
        aggregator = spawn("--role", "aggregator", "--home", str(work / "agg"),
                           "--coordinator", running.address, "--ready", str(ready),
                           script=__file__)  # fmt: skip
        running.procs.append(aggregator)
        wait_ready(ready, aggregator)
        print(f"coordinator at {running.address}; aggregator and {len(node_ids)} nodes connected")
        pids = {
            "coordinator": [running.coordinator.pid],
            "aggregator": [aggregator.pid],
            "nodes": [p.pid for p in running.nodes],
        }
        timed = asyncio.run(
            measure_latency(work, running.address, node_ids, tiers, args.queries, pids)
        )
    print(f"\n{os.cpu_count()} cores; all on loopback, mutual TLS")
    # the verdicts are printed (and written); the exit status says only that it ran
    acc, lat = accuracy_rows(accurate), latency_rows(timed, breakdown(work, timed))
    print_accuracy(acc, args.epsilon, args.trials)
    print_latency(lat, args.queries, args.students)
    if args.json is not None:
        summary = {
            "epsilon": args.epsilon,
            "trials": args.trials,
            "queries": args.queries,
            "students": args.students,
            "accuracy": acc,
            "latency": lat,
            "accuracy_met": accuracy_met(acc),
            "latency_met": latency_met(lat),
        }
        args.json.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
