"""Real processes against one node: concurrent CLI queries never overspend, a kill -9
never leaves an answer without its charge (or a charge without its answer), and an
exhausted budget stays exhausted for a new process.

The node for county 130102 has ε 6 per academic year, analysts ε 2.4 (0.4), the
provincial monitoring centre ε 3.6 (0.6); queries above ε 0.3 wait for approval, so the
queries here cost at most 0.3.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from exportrows import screening_row, write_csv

from fedscreen.node import ledger, store
from fedscreen.node.engine import QueryRequest, answer_query
from fedscreen.node.home import NodeConfig
from fedscreen.node.ingest import ingest_paths

SRC = Path(__file__).resolve().parents[2] / "src"
YEAR = "2024-2025"
EARLIER = "2023-2024"
AGES = {"S10": 15, "S11": 16, "S12": 17}
GRADES = ("P4", "P5", "P6", "J7", "J8", "J9", "S10", "S11", "S12", "V1", "V2", "V3")
#: 72 distinct questions (grade × sex × location), so no query is a cache hit
QUESTIONS = [
    f"SELECT COUNT(*) FROM screenings WHERE academic_year = '{YEAR}' "
    f"AND grade = '{g}' AND sex = '{s}' AND location = '{loc}'"
    for g in GRADES
    for s in ("M", "F")
    for loc in ("urban", "town", "rural")
]
EPSILON = 0.3
NODE_BUDGET = 6_000_000
ANALYST_BUDGET = {"alice": 2_400_000, "bob": 2_400_000, "hebei-monitoring-centre": 3_600_000}
PROCESS_TIMEOUT_S = 120


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), path) if p)}


@pytest.fixture
def node(node_home: NodeConfig, tmp_path: Path) -> NodeConfig:
    for year, first in ((YEAR, 1), (EARLIER, 1_000)):
        rows = []
        for i in range(150):
            grade = list(AGES)[i % 3]
            rows.append(
                screening_row(
                    first + i,
                    academic_year=year,
                    screening_date=f"{year[:4]}-10-08",
                    grade=grade,
                    age=AGES[grade],
                    sex="MF"[i % 2],
                    location=("urban", "town", "rural")[(i // 2) % 3],
                )
            )
        _, rejected = ingest_paths(node_home, [write_csv(tmp_path / f"{year}.csv", rows)])
        assert not rejected, rejected
    return node_home


def _cli(config: NodeConfig, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``fedscreen node <command> --home <home> <args>`` in a new process."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "fedscreen.cli.main",
            "node",
            command,
            "--home",
            str(config.home),
            *args,
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=PROCESS_TIMEOUT_S,
        check=False,
    )


def _query(config: NodeConfig, analyst: str, sql: str) -> subprocess.CompletedProcess[str]:
    return _cli(
        config, "query", "--analyst", analyst, "--epsilon", str(EPSILON), "--format", "json", sql
    )


def _spend(config: NodeConfig, analyst: str, questions: list[str]) -> None:
    conn = store.connect(config.database)
    try:
        for sql in questions:
            request = QueryRequest(analyst, None, epsilon=EPSILON, text=sql)
            answer_query(config, config.policy(), request, conn=conn)
    finally:
        conn.close()


def _check_ledger_matches_answers(conn: sqlite3.Connection) -> tuple[int, int]:
    """Every charged answer has one charge per year it read (same µε, same analyst), and
    every charge belongs to an answer that read its year. Returns (answers, charges)."""
    answers = conn.execute(
        "SELECT answer_id, analyst, spec, epsilon_micro FROM query_answer WHERE epsilon_micro > 0"
    ).fetchall()
    charges: dict[int, list[tuple[str, str, int]]] = {}
    for answer_id, year, analyst, micro in conn.execute(
        "SELECT answer_id, academic_year, analyst, epsilon_micro FROM ledger_charge"
    ):
        charges.setdefault(answer_id, []).append((year, analyst, micro))
    for answer_id, analyst, spec, micro in answers:
        years = json.loads(spec)["years"]
        got = sorted(charges.pop(answer_id, []))
        assert got == sorted((y, analyst, micro) for y in years), (answer_id, got, years)
    assert charges == {}, f"charges without a charged answer: {charges}"
    (total,) = conn.execute("SELECT COUNT(*) FROM ledger_charge").fetchone()
    return len(answers), int(total)


# --- concurrency ---------------------------------------------------------------------


@pytest.mark.slow
def test_concurrent_cli_queries_never_overspend(node: NodeConfig) -> None:
    # already spent: carol 2.4, alice 1.5, dave 0.9 → the node has 1.2 left (4 queries) and
    # alice 0.9 (3 queries)
    _spend(node, "carol", QUESTIONS[0:8])
    _spend(node, "alice", QUESTIONS[8:13])
    _spend(node, "dave", QUESTIONS[13:16])
    # four processes at a time, each lane firing distinct queries one after another: alice
    # asks 4 (two lanes racing for her 3), bob and the centre 2 each (all racing for the 4)
    per_lane = 2
    lanes = ["alice", "alice", "bob", "hebei-monitoring-centre"]
    work = [
        (analyst, QUESTIONS[16 + lane * per_lane : 16 + (lane + 1) * per_lane])
        for lane, analyst in enumerate(lanes)
    ]

    def run_lane(analyst: str, questions: list[str]) -> list[tuple[str, int, str, str]]:
        out = []
        for sql in questions:
            done = _query(node, analyst, sql)
            out.append((analyst, done.returncode, done.stdout, done.stderr))
        return out

    with ThreadPoolExecutor(max_workers=len(work)) as pool:
        results = [r for lane in pool.map(lambda w: run_lane(*w), work) for r in lane]

    answered = [r for r in results if r[1] == 0]
    refused = [r for r in results if r[1] != 0]
    for analyst, _, stdout, _ in answered:
        body = json.loads(stdout)
        assert body["analyst"] == analyst
        assert body["epsilon"] == EPSILON
        assert not body["cached"]
    for _, code, _, stderr in refused:
        assert code == 1, stderr
        assert stderr.startswith("error: budget: "), stderr
        assert "Traceback" not in stderr

    conn = store.connect(node.database)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        spent = ledger.spent(conn, YEAR, "alice")
        # the node's 1.2 left is 4 queries and bob and the centre asked 4 between them, so
        # whatever the interleaving the node ends exactly full — never over
        assert spent.node_micro == NODE_BUDGET
        assert len(answered) == 4
        assert len([r for r in answered if r[0] == "alice"]) <= 3
        by_analyst = {a: m for y, a, m in ledger.budget_table(conn) if y == YEAR}
        for analyst, budget in ANALYST_BUDGET.items():
            assert by_analyst.get(analyst, 0) <= budget
        assert by_analyst["carol"] == 2_400_000
        # one charge per (single-year) answer, and every refusal recorded with its reason
        answers, charges = _check_ledger_matches_answers(conn)
        assert answers == charges == 8 + 5 + 3 + 4
        recorded = conn.execute("SELECT analyst, reason FROM query_refusal").fetchall()
        assert sorted(recorded) == sorted(
            (analyst, stderr.removeprefix("error: ").strip()) for analyst, _, _, stderr in refused
        )
    finally:
        conn.close()


# --- kill -9 between charging and answering -----------------------------------------
#
# A driver process imports fedscreen once, then for each run forks a worker that opens
# its own connection and answers queries in a loop, printing each answer (with its id)
# as soon as answer_query returns it. The test SIGKILLs the worker at a random moment
# — a real kill -9 of a real process, most often inside the BEGIN IMMEDIATE … COMMIT of
# an answer — and then checks the database. Forking saves a second of imports per kill.

DRIVER = r"""
import json, os, sys
from pathlib import Path
from fedscreen.errors import QueryRefused
from fedscreen.node import store
from fedscreen.node.engine import QueryRequest, answer_query
from fedscreen.node.home import load_config
from fedscreen.query.sqlparse import parse_sql

config = load_config(Path(sys.argv[1]))
policy = config.policy()
analysts = ("alice", "bob", "hebei-monitoring-centre")
shapes = [
    parse_sql(
        f"SELECT {column}, COUNT(*) FROM screenings WHERE academic_year IN ({years}) "
        f"GROUP BY {column}"
    )
    for column in ("sex", "grade", "location", "grade_band")
    for years in ("'2024-2025'", "'2023-2024', '2024-2025'")
]


def work(run):
    conn = store.connect(config.database)
    print(f"ready {os.getpid()}", flush=True)
    for i in range(600):
        k = run * 600 + i
        # 500 costs (0.0001 to 0.0006) x 8 shapes: distinct questions (almost no cache
        # hits), and at most 24,000 x 0.0006 / 3 analysts spent: the budget never runs out
        epsilon = 0.0001 + (k % 500) * 1e-6
        spec = shapes[(k // 500) % len(shapes)]
        request = QueryRequest(analysts[k % 3], spec, epsilon=epsilon)
        try:
            answer = answer_query(config, policy, request, conn=conn)
        except QueryRefused as exc:
            print(json.dumps({"refused": str(exc)}), flush=True)
            continue
        print(json.dumps({"answer_id": answer.answer_id, "body": answer.body}), flush=True)


for line in sys.stdin:
    run = int(line)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        try:
            work(run)
        finally:
            os._exit(0)
    # nothing printed while the worker lives: its lines are the only ones on the pipe
    _, status = os.waitpid(pid, 0)
    # a newline first: the killed worker may have left half a line
    print(f"\nreaped {os.waitstatus_to_exitcode(status)}", flush=True)
"""
KILLS = 20
MIN_DELAY_S, MAX_DELAY_S = 0.02, 0.3


def _read_until(stream: Any, prefix: str) -> list[str]:
    lines = []
    while True:
        line = stream.readline()
        assert line, f"the driver ended early, after {lines[-3:]}"
        lines.append(line.rstrip("\n"))
        if line.startswith(prefix):
            return lines


def _check_released(conn: sqlite3.Connection, released: list[dict[str, Any]]) -> None:
    """Every answer that left the worker is durable, as released, with its charges."""
    for item in released:
        row = conn.execute(
            "SELECT answer FROM query_answer WHERE answer_id = ?", (item["answer_id"],)
        ).fetchone()
        assert row is not None, f"released answer {item['answer_id']} is not in the database"
        assert json.loads(row[0]) == item["body"]
        (charged,) = conn.execute(
            "SELECT COUNT(*) FROM ledger_charge WHERE answer_id = ?", (item["answer_id"],)
        ).fetchone()
        assert charged == len(item["body"]["query"]["years"]) > 0


@pytest.mark.slow
def test_kill_9_never_leaves_an_answer_without_its_charge(node: NodeConfig, tmp_path: Path) -> None:
    delays = random.Random(1_729).uniform  # reproducible "random" moments
    errors = (tmp_path / "driver.err").open("w")  # a file: a full pipe could block the driver
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(node.home)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
        env=_env(),
    )
    assert driver.stdin is not None
    assert driver.stdout is not None
    released_total = 0
    try:
        for run in range(KILLS):
            driver.stdin.write(f"{run}\n")
            driver.stdin.flush()
            lines = _read_until(driver.stdout, "ready ")
            pid = int(lines[-1].split()[1])
            time.sleep(delays(MIN_DELAY_S, MAX_DELAY_S))
            os.kill(pid, signal.SIGKILL)
            lines += _read_until(driver.stdout, "reaped ")
            assert lines[-1] == f"reaped {-signal.SIGKILL}", lines[-3:]

            released = []
            for line in lines:
                if line.startswith("{"):
                    try:
                        released.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue  # the line the kill cut short
            assert not [r for r in released if "refused" in r], released
            released_total += len(released)

            conn = sqlite3.connect(node.database)
            try:
                assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
                assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
                _check_ledger_matches_answers(conn)
                _check_released(conn, released)
            finally:
                conn.close()
    finally:
        driver.communicate(timeout=PROCESS_TIMEOUT_S)  # closes stdin: the driver ends
        errors.close()
    stderr = (tmp_path / "driver.err").read_text()
    assert driver.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    assert released_total > 0, "no worker got as far as an answer: raise MAX_DELAY_S"

    # the node still works after the kills
    conn = store.connect(node.database)
    try:
        request = QueryRequest("alice", None, epsilon=0.01, text=QUESTIONS[0])
        assert not answer_query(node, node.policy(), request, conn=conn).cached
        answers, charges = _check_ledger_matches_answers(conn)
        assert answers > released_total
        assert charges >= answers
    finally:
        conn.close()


# --- exhaustion seen by a new process ---------------------------------------------------


@pytest.mark.slow
def test_exhausted_budget_is_refused_by_a_new_process(node: NodeConfig) -> None:
    _spend(node, "alice", QUESTIONS[:8])  # alice's 2.4
    done = _query(node, "alice", QUESTIONS[8])
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"error: budget: analyst alice has ε=0 left for {YEAR}; this query costs ε=0.3"
    )
    # the refusal cost nothing and is on record
    conn = store.connect(node.database)
    try:
        assert ledger.budget_table(conn) == [(YEAR, "alice", 2_400_000)]
        assert conn.execute("SELECT analyst, query, reason FROM query_refusal").fetchall() == [
            ("alice", QUESTIONS[8], done.stderr.strip().removeprefix("error: "))
        ]
    finally:
        conn.close()
    # a question answered before is still answered, free, by the new process
    again = _query(node, "alice", QUESTIONS[0])
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["cached"] is True
    budget = _cli(node, "budget")
    assert budget.returncode == 0, budget.stderr
    assert "alice" in budget.stdout
    lines = [line.split() for line in budget.stdout.splitlines()]
    assert [YEAR, "alice", "2.4", "0"] in lines
    assert [YEAR, "(node", "total)", "2.4", "3.6"] in lines
