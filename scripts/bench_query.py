"""Benchmark: one noisy grouped count at a node against raw SQLite and SmartNoise SQL.

    python scripts/bench_query.py [--students 1000000] [--runs 200] [--epsilon 0.5]
                                  [--workdir DIR] [--cache-dir DIR] [--no-smartnoise]

Setup (not timed): a synthetic county of N students is generated and loaded
into a fresh node (county 130104, which has no county policy document; the
node points at a temporary copy of the provincial catalogue whose yearly budget
is large enough for every timed query). With ``--workdir`` the loaded node is
kept and reused by later runs with the same ``--students``/``--seed``, as long
as fedscreen's storage code (node, audit, synth, instruments) is unchanged.

Two queries (``QUERIES``): PHQ-9 ≥ 10 by grade band x sex (large cells), and
PHQ-9 item 9 positive by grade x sex x location (78 cells, many small: where
SmartNoise's dropping of small groups shows). For each, three engines answer it
``--runs`` times,
interleaved (one run of each per round, the order rotating), after a few
untimed warm-up rounds, on the same database file:

* **baseline**: the raw ``sqlite3`` ``GROUP BY`` that fedscreen compiles for the
  query (``compile_query(spec, policy).sql/.params``), over the stored,
  contribution-bounded rows of the view ``screenings`` — exact, no noise;
* **fedscreen**: ``answer_query`` end to end on the SQL text — parse, policy
  check and compile, budget check, the same SQL, OpenDP discrete Laplace noise,
  the stored answer, the ledger charge, the signed log entry, COMMIT with
  ``synchronous=FULL`` and the signed envelope. Every timed call does all of it:
  each run asks at its own ε (the unused micro-units nearest ε: ε ± k·10⁻⁶, within
  ±0.02% of ε for 200 runs on a fresh node; the range used is printed), since
  repeating an identical question would return the cached answer;
* **SmartNoise SQL** (``smartnoise-sql``, a benchmark-only peer, never a
  dependency): it pins ``opendp<0.15``, so it runs in its own virtual
  environment, created once under ``--cache-dir`` and reused, in a child process
  (``scripts/smartnoise_peer.py``) that opens the same node database read-only
  and times ``PrivateReader.execute`` of the same query at the same ε.

The error columns use these same runs: the mean absolute error of each engine's
noisy cells against the exact counts (from the baseline), over the non-empty
cells of the query's public domain. SmartNoise drops a group whose noisy count
is under its threshold τ (``censor_dims``, which needs δ > 0; fedscreen is pure
ε-DP, δ = 0): a non-empty cell missing from its output is a cell lost, left out
of its MAE and counted. fedscreen releases every cell of the public domain;
cells whose noisy value is under the publication threshold are still in the
answer (shown as "< 10"), and are counted separately.

Targets: node ≤ 1.3x the raw SQLite query; no slower than SmartNoise SQL; equal
or smaller MAE at equal ε.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import fedscreen
from fedscreen.node import store
from fedscreen.node.engine import QueryRequest, answer_query
from fedscreen.node.home import CONFIG_FILE, NodeConfig, init_home, load_config
from fedscreen.node.ingest import ingest_paths
from fedscreen.policy import Policy, default_policy_dir
from fedscreen.policy.default import PROVINCE_FILE
from fedscreen.protocol.budget import MICRO, to_micro
from fedscreen.query.compile import Plan, compile_query
from fedscreen.query.sqlparse import parse_sql
from fedscreen.synth import generate, write_export

COUNTY: Final = "130104"  # a county code with no county document in policies/counties/
YEAR: Final = "2024-2025"
ANALYST: Final = "bench-analyst"
SMARTNOISE_SPEC: Final = "smartnoise-sql==1.0.10"
PEER_SCRIPT: Final = Path(__file__).resolve().parent / "smartnoise_peer.py"
#: parts of the fedscreen package whose changes invalidate a kept node (see storage_fingerprint)
STORAGE_CODE: Final = ("node", "audit", "synth", "instruments", "exports.py")
WARMUP: Final = 3
TARGET_VS_BASELINE: Final = 1.3


@dataclass(frozen=True)
class BenchQuery:
    """One grouped count, as the analyst writes it for each engine."""

    label: str
    group_by: tuple[str, ...]
    where: str

    def fedscreen_sql(self) -> str:
        groups = ", ".join(self.group_by)
        return (
            f"SELECT {groups}, COUNT(*) FROM screenings "
            f"WHERE academic_year = '{YEAR}' AND {self.where} GROUP BY {groups}"
        )

    def smartnoise_sql(self) -> str:
        groups = ", ".join(self.group_by)
        return (
            f"SELECT {groups}, COUNT(*) AS n FROM main.screenings "
            f"WHERE academic_year = '{YEAR}' AND {self.where} GROUP BY {groups}"
        )


QUERIES: Final = (
    BenchQuery("PHQ-9 >= 10 by grade band x sex", ("grade_band", "sex"), "phq9_total >= 10"),
    BenchQuery(
        "PHQ-9 item 9 positive by grade x sex x location",
        ("grade", "sex", "location"),
        "phq9_item9 = 1",
    ),
)

#: SmartNoise metadata of the columns the queries read (types and, for ints, bounds)
SMARTNOISE_COLUMNS: Final[dict[str, dict[str, Any]]] = {
    "academic_year": {"type": "string"},
    "grade_band": {"type": "string"},
    "grade": {"type": "string"},
    "sex": {"type": "string"},
    "location": {"type": "string"},
    "phq9_total": {"type": "int", "lower": 0, "upper": 27},
    "phq9_item9": {"type": "int", "lower": 0, "upper": 1},
}


# --------------------------------------------------------------------------- setup


def bench_policy(path: Path, epsilon: float) -> None:
    """A copy of the provincial catalogue with budgets large enough for the benchmark."""
    text = (default_policy_dir() / PROVINCE_FILE).read_text(encoding="utf-8")
    cap = max(1.0, epsilon * 1.01)
    for key, value in (
        ("max_epsilon_per_query", cap),
        ("epsilon_per_node_per_year", 1_000_000.0),
        ("analyst_share", 1.0),
    ):
        text, count = re.subn(rf"(?m)^{key} = .*$", f"{key} = {float(value)!r}", text)
        assert count == 1, f"{key} not found exactly once in the catalogue"
    path.write_text(text, encoding="utf-8")


def storage_fingerprint() -> str:
    """Digest of the code that decides what a loaded node holds (schema, ingest, synth data).

    A kept node is reused only while this is unchanged: an older database may lack
    a table or column the current code writes.
    """
    package = Path(fedscreen.__file__).resolve().parent
    digest = hashlib.sha256()
    for part in STORAGE_CODE:
        root = package / part
        files = sorted(root.rglob("*")) if root.is_dir() else [root]
        for path in files:
            if path.is_file() and path.suffix in (".py", ".toml"):
                digest.update(str(path.relative_to(package)).encode() + b"\0")
                digest.update(path.read_bytes())
    return digest.hexdigest()


def prepare_node(work: Path, students: int, seed: int, epsilon: float) -> tuple[NodeConfig, str]:
    """A node loaded with ``students`` synthetic rows; reused if ``work`` already has it."""
    home = work / "node"
    stamp = home / "bench-query.json"
    want = {
        "students": students,
        "seed": seed,
        "county": COUNTY,
        "year": YEAR,
        "code": storage_fingerprint(),
    }
    if stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")) == want:
        bench_policy(home / "bench-province.toml", epsilon)
        return load_config(home), "reused the node loaded by an earlier run"
    if home.exists():
        if not stamp.is_file():
            raise SystemExit(f"{home} exists and was not made by this benchmark; pick another")
        shutil.rmtree(home)
    export = work / "export"
    start = time.perf_counter()
    county = generate(COUNTY, students, YEAR, seed)
    summary = write_export(county, export)
    synth_s = time.perf_counter() - start

    init_home(home, node_id=COUNTY, name="bench", county_code=COUNTY)
    bench_policy(home / "bench-province.toml", epsilon)
    config_path = home / CONFIG_FILE
    text = config_path.read_text(encoding="utf-8")
    assert "\n[policy]\n" in text
    text = text.replace("\n[policy]\n", '\n[policy]\nprovince = "bench-province.toml"\n', 1)
    config_path.write_text(text, encoding="utf-8")
    config = load_config(home)

    start = time.perf_counter()
    screenings = [f.path for f in summary.screenings]
    loaded, rejected = ingest_paths(config, screenings)
    ingest_s = time.perf_counter() - start
    if rejected:
        raise SystemExit(f"ingest rejected: {rejected[0]}")
    rows = sum(r.rows for r in loaded)
    shutil.rmtree(export)
    stamp.write_text(json.dumps(want), encoding="utf-8")
    return config, (
        f"generated {rows:,} screening rows in {synth_s:.1f} s, ingested in {ingest_s:.1f} s"
    )


# --------------------------------------------------------------------------- SmartNoise peer


def smartnoise_python(cache: Path, spec: str) -> tuple[Path | None, str]:
    """The SmartNoise venv's interpreter (created on first use), or None and why not."""
    venv = cache / "smartnoise-venv"
    python = venv / "bin" / "python"
    stamp = venv / "fedscreen-bench.txt"
    if python.exists() and stamp.is_file() and stamp.read_text(encoding="utf-8") == spec:
        return python, f"cached venv {venv}"
    if venv.exists():
        shutil.rmtree(venv)
    cache.mkdir(parents=True, exist_ok=True)
    print(f"creating {venv} and installing {spec} (once) ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        return None, f"python -m venv failed: {exc}"
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", spec],
        capture_output=True,
        text=True,
        check=False,
    )
    if pip.returncode != 0:
        tail = " | ".join((pip.stderr or pip.stdout).strip().splitlines()[-3:])
        return None, f"pip install {spec} failed (exit {pip.returncode}): {tail}"
    probe = subprocess.run(
        [str(python), "-c", "import snsql"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return None, f"import snsql failed: {probe.stderr.strip().splitlines()[-1:]}"
    stamp.write_text(spec, encoding="utf-8")
    return python, f"new venv {venv}"


class Peer:
    """The SmartNoise child process: one JSON request per line, one JSON reply per line."""

    def __init__(self, python: Path, args: list[str], log: Path) -> None:
        self._log: IO[str] = log.open("w", encoding="utf-8")
        self._proc = subprocess.Popen(
            [str(python), str(PEER_SCRIPT), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"SmartNoise peer exited (see {self._log.name})")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"SmartNoise peer: {reply['error']}")
        return reply

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._log.close()


# --------------------------------------------------------------------------- measurement


@dataclass
class Engine:
    """Per-run times and the cells each run released."""

    name: str
    times_ms: list[float] = field(default_factory=list)
    #: per run: released cell -> noisy value
    runs: list[dict[tuple[Any, ...], int]] = field(default_factory=list)
    #: per run: cells shown as "< threshold" (fedscreen only)
    shown_small: int = 0

    def median(self) -> float:
        return statistics.median(self.times_ms)

    def p95(self) -> float:
        return statistics.quantiles(self.times_ms, n=20, method="inclusive")[18]


def epsilons(conn: Any, plan: Plan, epsilon: float) -> Iterator[float]:
    """ε, ε+1µ, ε−1µ, ε+2µ, … skipping values this spec was already answered at (cache)."""
    used = {
        int(m)
        for (m,) in conn.execute(
            "SELECT epsilon_micro FROM query_answer WHERE spec = ?",
            (plan.spec.canonical().decode(),),
        )
    }
    base = to_micro(epsilon)
    step = 0
    while True:
        for micro in (base + step, base - step) if step else (base,):
            if micro > 0 and micro not in used:
                yield micro / MICRO
        step += 1


def mae(engine: Engine, exact: dict[tuple[Any, ...], int]) -> tuple[float, float, int, float]:
    """(MAE over released non-empty cells, its standard error, cells lost, MAE with lost as 0)."""
    errors: list[int] = []
    lost_errors: list[int] = []
    lost = 0
    for run in engine.runs:
        for cell, true in exact.items():
            if true == 0:
                continue
            if cell in run:
                errors.append(abs(run[cell] - true))
                lost_errors.append(abs(run[cell] - true))
            else:
                lost += 1
                lost_errors.append(true)
    if not errors:
        return math.nan, math.nan, lost, math.nan
    se = statistics.stdev(errors) / math.sqrt(len(errors)) if len(errors) > 1 else math.nan
    return statistics.fmean(errors), se, lost, statistics.fmean(lost_errors)


def discrete_laplace_mae(scale: float) -> float:
    """E|X| for discrete Laplace noise with P(k) ∝ exp(−|k|/scale)."""
    q = math.exp(-1 / scale)
    return 2 * q / (1 - q * q)


def floored_laplace_mae(scale: float) -> float:
    """E|floor(X)| for continuous Laplace X of this scale.

    SmartNoise adds float Laplace noise to a count and converts the result to int
    (truncation; a positive count + X is floored), so its error is floor(X).
    """
    q = math.exp(-1 / scale)
    return 0.5 * (1 + q) / (1 - q)


def bench_one(
    query: BenchQuery,
    config: NodeConfig,
    policy: Policy,
    peer: Peer | None,
    args: argparse.Namespace,
) -> None:
    spec = parse_sql(query.fedscreen_sql())
    plan = compile_query(spec, policy)
    base_conn = store.connect(config.database)
    node_conn = store.connect(config.database)
    eps_iter = epsilons(node_conn, plan, args.epsilon)

    exact_rows = base_conn.execute(plan.sql, plan.params).fetchall()
    width = len(plan.spec.group_by)
    found = {tuple(r[:width]): int(r[width]) for r in exact_rows}
    exact = {cell: found.get(cell, 0) for cell in plan.cells}
    nonempty = sum(1 for v in exact.values() if v > 0)
    print(f"\n## {query.label}\n")
    print(f"fedscreen SQL:   {query.fedscreen_sql()}")
    print(f"compiled SQL:    {plan.sql}")
    print(
        f"cells: {len(plan.cells)} in the public domain, {nonempty} non-empty; exact counts "
        f"{min(found.values(), default=0):,} .. {max(found.values(), default=0):,} "
        f"(sum {sum(found.values()):,})"
    )
    smart_scales: list[float] = []
    if peer is not None:
        cost = peer.ask({"cost": query.smartnoise_sql()})
        smart_scales = cost.get("scales") or []
        print(f"SmartNoise SQL:  {query.smartnoise_sql()}")
        print(
            f"SmartNoise cost of one run: ε={cost['epsilon']:g}, δ={cost['delta']:g}, "
            f"noise scale {', '.join(f'{x:.4g}' for x in smart_scales) or '?'} "
            f"(fedscreen: ε≈{args.epsilon:g}, δ=0, scale {1 / args.epsilon:.4g})"
        )

    baseline = Engine("baseline: raw SQLite GROUP BY")
    node = Engine("fedscreen node (answer_query)")
    smart = Engine(f"SmartNoise SQL {peer.info['smartnoise_sql']}" if peer else "SmartNoise SQL")
    taus: set[float] = set()
    node_eps: list[float] = []
    extra_groups = 0

    def run_baseline(record: bool) -> None:
        start = time.perf_counter()
        base_conn.execute(plan.sql, plan.params).fetchall()
        elapsed = (time.perf_counter() - start) * 1000
        if record:
            baseline.times_ms.append(elapsed)

    def run_node(record: bool) -> None:
        eps = next(eps_iter)
        request = QueryRequest(analyst=ANALYST, spec=None, epsilon=eps, text=query.fedscreen_sql())
        start = time.perf_counter()
        answer = answer_query(config, policy, request, conn=node_conn)
        elapsed = (time.perf_counter() - start) * 1000
        assert not answer.cached, "a timed node call hit the answer cache"
        assert abs(answer.body["epsilon"] - eps) < 1e-9, (answer.body["epsilon"], eps)
        if record:
            node_eps.append(eps)
            node.times_ms.append(elapsed)
            cells = {tuple(c["group"]): int(c["value"]) for c in answer.body["cells"]}
            node.runs.append(cells)
            node.shown_small += sum(1 for c in answer.body["cells"] if c["suppressed"])

    def run_smartnoise(record: bool) -> None:
        nonlocal extra_groups
        assert peer is not None
        reply = peer.ask({"sql": query.smartnoise_sql()})
        if record:
            smart.times_ms.append(float(reply["ms"]))
            cells: dict[tuple[Any, ...], int] = {}
            for row in reply["rows"]:
                cell = tuple(row[:width])
                if cell in exact:
                    cells[cell] = int(row[width])
                else:
                    extra_groups += 1
            smart.runs.append(cells)
            if reply.get("tau") is not None:
                taus.add(round(float(reply["tau"]), 6))

    steps: list[Callable[[bool], None]] = [run_baseline, run_node]
    if peer is not None:
        steps.append(run_smartnoise)
    started = time.perf_counter()
    for round_ in range(WARMUP + args.runs):
        shift = round_ % len(steps)
        for step in steps[shift:] + steps[:shift]:
            step(round_ >= WARMUP)
    elapsed_s = time.perf_counter() - started
    base_conn.close()
    node_conn.close()

    runs = args.runs
    base_ms = baseline.median()
    print(
        f"\n{runs} interleaved runs per engine after {WARMUP} warm-up rounds "
        f"({elapsed_s:.0f} s), ε = {args.epsilon:g} "
        f"(fedscreen: {min(node_eps):.6f} .. {max(node_eps):.6f}, one per run)\n"
    )
    header = (
        f"{'engine':34} {'median ms':>10} {'p95 ms':>9} {'x baseline':>10} "
        f"{'MAE':>13} {f'cells lost/{runs} runs':>22}"
    )
    print(header)
    print("-" * len(header))
    print(
        f"{baseline.name:34} {base_ms:10.1f} {baseline.p95():9.1f} {1.0:10.2f} "
        f"{'0 (exact)':>13} {'-':>22}"
    )
    node_mae, node_se, node_lost, _ = mae(node, exact)
    print(
        f"{node.name:34} {node.median():10.1f} {node.p95():9.1f} "
        f"{node.median() / base_ms:10.2f} {f'{node_mae:.3f}±{node_se:.3f}':>13} "
        f"{node_lost:>22}"
    )
    smart_mae = smart_mae_lost = smart_se = math.nan
    smart_lost = 0
    if peer is not None:
        smart_mae, smart_se, smart_lost, smart_mae_lost = mae(smart, exact)
        print(
            f"{smart.name:34} {smart.median():10.1f} {smart.p95():9.1f} "
            f"{smart.median() / base_ms:10.2f} {f'{smart_mae:.3f}±{smart_se:.3f}':>13} "
            f"{smart_lost:>22}"
        )
    else:
        print(f"{smart.name:34} {'not run: ' + args.smartnoise_reason}")

    print(
        f"\nMAE: mean |noisy - exact| over the {nonempty} non-empty cells x {runs} runs "
        "(± one standard error); fedscreen's are the timed engine answers themselves."
    )
    expected = (
        f"expected MAE: fedscreen {discrete_laplace_mae(1 / args.epsilon):.3f} "
        f"(discrete Laplace, scale {1 / args.epsilon:.4g})"
    )
    if peer is not None and len(smart_scales) == 1:
        expected += (
            f"; SmartNoise {floored_laplace_mae(smart_scales[0]):.3f} "
            f"(float Laplace, scale {smart_scales[0]:.4g}, then int())"
        )
    print(expected)
    threshold = policy.limits.publication_threshold
    print(
        f"fedscreen released all {len(plan.cells)} cells in every run; "
        f'{node.shown_small} cell-runs were shown as "< {threshold}" (value still in the answer)'
    )
    if peer is not None:
        tau = ", ".join(f"{t:.2f}" for t in sorted(taus)) or "-"
        print(
            f"SmartNoise dropped {smart_lost} of {nonempty * runs} non-empty cell-runs "
            f"(noisy count under τ = {tau}, δ = {args.delta:g}); "
            f"MAE counting a lost cell as 0: {smart_mae_lost:.3f}"
        )
        if extra_groups:
            print(f"SmartNoise returned {extra_groups} group-runs outside the public domain")

    print("\ntargets:")
    ratio = node.median() / base_ms
    print(f"  node <= {TARGET_VS_BASELINE} x raw SQLite: {ratio:.2f} x  {verdict(ratio <= 1.3)}")
    if peer is not None:
        faster = node.median() <= smart.median()
        print(
            f"  node no slower than SmartNoise SQL: {node.median():.1f} vs "
            f"{smart.median():.1f} ms  {verdict(faster)}"
        )
        gap = (smart_mae - node_mae) / math.hypot(node_se, smart_se)
        print(
            f"  node MAE <= SmartNoise MAE at equal ε: {node_mae:.3f} vs {smart_mae:.3f} "
            f"(difference {gap:+.1f} standard errors)  {verdict(node_mae <= smart_mae)}"
        )
    else:
        print("  SmartNoise comparisons: not run")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--runs", type=int, default=200, help="timed runs per engine")
    parser.add_argument("--epsilon", type=float, default=0.5)
    parser.add_argument(
        "--delta",
        type=float,
        default=None,
        help="SmartNoise δ for censoring small groups (default 1/(n·√n), n = bounded rows)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep (and reuse) the node")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path.home() / ".cache" / "fedscreen-bench"
    )
    parser.add_argument("--smartnoise-spec", default=SMARTNOISE_SPEC)
    parser.add_argument("--no-smartnoise", action="store_true")
    args = parser.parse_args()
    if not 0 < args.epsilon <= 10:
        parser.error("--epsilon must be in (0, 10]")
    if args.runs < 2:
        parser.error("--runs must be at least 2")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="fedscreen-bench-query-"))
    work.mkdir(parents=True, exist_ok=True)
    config, how = prepare_node(work, args.students, args.seed, args.epsilon)
    policy = config.policy()
    conn = store.connect(config.database)
    rows = int(conn.execute("SELECT COUNT(*) FROM screenings").fetchone()[0])
    conn.close()
    if args.delta is None:
        args.delta = 1 / (rows * math.sqrt(rows))
    print(f"node {config.node_id} at {config.home}: {how}")
    print(
        f"{rows:,} rows in the bounded view; policy: catalogue copy with cap "
        f"ε={policy.limits.max_epsilon_per_query:g}/query, "
        f"{policy.limits.epsilon_per_node_per_year:g}/year, analyst share "
        f"{policy.limits.analyst_share:g}"
    )

    peer: Peer | None = None
    args.smartnoise_reason = "--no-smartnoise"
    if not args.no_smartnoise:
        python, why = smartnoise_python(args.cache_dir, args.smartnoise_spec)
        if python is None:
            args.smartnoise_reason = why
            print(f"\n*** SmartNoise SQL unavailable: {why}\n*** continuing without it\n")
        else:
            metadata_path = work / "smartnoise-metadata.json"
            table = {"row_privacy": True, "max_ids": 1, "rows": rows, **SMARTNOISE_COLUMNS}
            metadata = {"node": {"main": {"screenings": table}}}
            metadata_path.write_text(json.dumps(metadata, indent=1), encoding="utf-8")
            try:
                peer = Peer(
                    python,
                    [
                        "--db",
                        str(config.database),
                        "--metadata",
                        str(metadata_path),
                        "--epsilon",
                        repr(args.epsilon),
                        "--delta",
                        repr(args.delta),
                        "--cache-kib",
                        str(store.CACHE_KIB),
                    ],
                    work / "smartnoise-peer.log",
                )
            except (OSError, RuntimeError, json.JSONDecodeError) as exc:
                args.smartnoise_reason = f"peer failed to start: {exc}"
                print(f"\n*** SmartNoise SQL unavailable: {exc}\n")
            else:
                info = peer.info
                print(
                    f"SmartNoise SQL {info['smartnoise_sql']} (opendp {info['opendp']}, "
                    f"Python {info['python']}) from {why}; metadata: row_privacy, max_ids 1, "
                    f"censor_dims default (on), δ = {args.delta:.3g}"
                )
    try:
        for query in QUERIES:
            bench_one(query, config, policy, peer, args)
    finally:
        if peer is not None:
            peer.close()


if __name__ == "__main__":
    main()
