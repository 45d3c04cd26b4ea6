"""Secure aggregation end to end: a coordinator, a second aggregator and four nodes, each its
own process (``fedscreen coordinator serve``, ``fedscreen aggregator serve``, ``fedscreen
node serve``) on 127.0.0.1 with mutual TLS, real SQLite and synthetic screenings; the
analyst is the real ``fedscreen query --secure`` CLI, the auditor ``fedscreen audit``.

The nodes hold crafted numbers of students, so each county's exact count for the
question asked is a distinctive number: the tests search every log, bundle and release
(every DSSE payload decoded, at every depth) for those numbers and find none.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from securefed import AGGREGATOR, YEAR, SecureHomes, exact_count, make_secure_homes

from fedscreen.protocol.combine import discrete_laplace_variance

SRC = Path(__file__).resolve().parents[2] / "src"
DISHONEST_NODE = Path(__file__).resolve().parents[1] / "dishonestnode.py"
CLI = [sys.executable, "-m", "fedscreen.cli.main"]
#: crafted so that each county's count of valid PHQ-9 screenings is its own 3-4 digit number
NODES = ("130104", "130105", "130107", "130108")
STUDENTS = 700
WHERE = "phq9_valid = 1"
SQL = f"SELECT COUNT(*) FROM screenings WHERE academic_year = '{YEAR}' AND {WHERE}"
#: bound on a process getting ready, and on one CLI run (s)
READY_TIMEOUT_S = 30.0
PROCESS_TIMEOUT_S = 60.0


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(SRC)}


def _wait_for_file(path: Path, proc: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text(encoding="utf-8").strip():
            return dict(json.loads(path.read_text(encoding="utf-8")))
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.05)
    raise AssertionError(f"not ready within {READY_TIMEOUT_S} s:\n{log.read_text()}")


@dataclass
class Running:
    homes: SecureHomes
    root: Path
    address: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    exact: dict[str, int] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], *, ready: bool = True) -> dict[str, Any]:
        log = self.root / f"{name}.log"
        ready_file = self.root / f"{name}.ready"
        ready_file.unlink(missing_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [*argv, "--ready-file", str(ready_file)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_env(),
            )
        self.procs[name] = proc
        return _wait_for_file(ready_file, proc, log) if ready else {}

    def start_node(self, node: str) -> None:
        home = self.homes.nodes[node].home
        self.start(
            node, [*CLI, "node", "serve", "--home", str(home), "--coordinator", self.address]
        )

    def start_dishonest(self, node: str, mode: str) -> None:
        """The node as a dishonest county (``tests/dishonestnode.py MODE``), its own keys."""
        home = self.homes.nodes[node].home
        self.start(
            node,
            [sys.executable, str(DISHONEST_NODE), mode, "--home", str(home),
             "--coordinator", self.address],
        )  # fmt: skip

    def start_aggregator(self) -> None:
        self.start(
            "aggregator",
            [*CLI, "aggregator", "serve", "--home", str(self.homes.aggregator),
             "--coordinator", self.address],
        )  # fmt: skip

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait(timeout=10)

    def query(self, *extra: str, epsilon: float = 0.5, sql: str = SQL) -> dict[str, Any]:
        """``fedscreen query --secure`` as the analyst; its JSON output (exit 0 asserted)."""
        result = self.cli(
            "query", "--home", str(self.homes.analyst), "--coordinator", self.address,
            "--epsilon", str(epsilon), "--secure", "--format", "json", *extra, sql,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)
        assert out["verified"] is True
        return dict(out["release"])

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args], capture_output=True, text=True, env=_env(), timeout=PROCESS_TIMEOUT_S
        )


@contextlib.contextmanager
def running(root: Path) -> Iterator[Running]:
    homes = make_secure_homes(root, students=STUDENTS, nodes=NODES, varied=True)
    fed = Running(homes, root)
    fed.exact = {n: exact_count(c, WHERE) for n, c in homes.nodes.items()}
    try:
        listening = fed.start(
            "coordinator",
            [*CLI, "coordinator", "serve", "--home", str(homes.coordinator),
             "--listen", "127.0.0.1:0"],
        )  # fmt: skip
        fed.address = str(listening["address"])
        fed.start_aggregator()
        for node in NODES:
            fed.start_node(node)
        yield fed
    finally:
        for name in list(fed.procs):
            fed.stop(name)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running(tmp_path_factory.mktemp("secure-federation")) as federation:
        yield federation


def _province(release: dict[str, Any]) -> int:
    (cell,) = release["province"]
    return int(cell["value"])


def test_a_secure_release_is_the_province_total_with_two_draws(fed: Running) -> None:
    release = fed.query()
    assert release["secure"]["aggregators"] == ["coordinator", AGGREGATOR]
    assert release["secure"]["failure"] is None
    assert len(release["secure"]["partials"]) == 2
    assert release["answered"] == sorted(NODES)
    # no node's cells carry a value: only its groups
    assert all("value" not in cell for cells in release["per_node"].values() for cell in cells)
    (cell,) = release["province"]
    exact = sum(fed.exact.values())
    # the stated interval is that of two draws at ε = 0.5, not of four
    sd = math.sqrt(2 * discrete_laplace_variance(2.0))
    assert cell["upper"] - cell["lower"] == pytest.approx(2 * 1.96 * sd, rel=0.15)
    assert abs(cell["value"] - exact) < 8 * sd


def test_a_city_figure_is_released_over_its_counties(fed: Running) -> None:
    sql = (
        f"SELECT city_code, COUNT(*) FROM screenings WHERE academic_year = '{YEAR}' "
        f"AND {WHERE} GROUP BY city_code"
    )
    release = fed.query(epsilon=0.2, sql=sql)
    # all four counties are in 石家庄: one city cell; the ten others summed no county
    (cell,) = release["province"]
    assert cell["group"] == ["1301"]
    sd = math.sqrt(2 * discrete_laplace_variance(5.0))
    assert abs(cell["value"] - sum(fed.exact.values())) < 8 * sd


def test_releases_are_exact_plus_noise_of_two_draws(fed: Running) -> None:
    """Twelve distinct secure questions (distinct ε, so no store answers them): the errors
    against the exact total are centred and spread as two discrete-Laplace draws."""
    exact = sum(fed.exact.values())
    scores = []
    for i in range(12):
        # distinct, and twelve of them well within alice's share of each county's budget
        epsilon = 0.1 + 0.005 * i
        release = fed.query(epsilon=epsilon)
        sd = math.sqrt(2 * discrete_laplace_variance(1 / epsilon))
        scores.append((_province(release) - exact) / sd)
    assert max(abs(z) for z in scores) < 5
    assert abs(sum(scores) / len(scores)) < 5 / math.sqrt(len(scores))
    spread = sum(z * z for z in scores) / len(scores)
    assert 0.15 < spread < 4.0


def test_a_node_that_drops_out_is_excluded_by_both_aggregators(fed: Running) -> None:
    gone = NODES[-1]
    fed.kill(gone)
    try:
        release = fed.query("--deadline-ms", "5000", epsilon=0.47)
    finally:
        fed.start_node(gone)
    present = sorted(n for n in NODES if n != gone)
    assert release["answered"] == present
    assert release["missing"] == [gone]
    assert release["secure"]["failure"] is None, release["secure"]["failure"]
    bodies = [_payload(text)["partial"] for text in release["secure"]["partials"]]
    for body in bodies:
        assert [n["node_id"] for n in body["nodes"]] == present
    assert bodies[0]["nodes"] == bodies[1]["nodes"]
    sd = math.sqrt(2 * discrete_laplace_variance(1 / 0.47))
    assert abs(_province(release) - sum(fed.exact[n] for n in present)) < 8 * sd


def test_answers_summed_once_are_not_summed_again_over_fewer_nodes(fed: Running) -> None:
    """The same question again while a node is down: the others answer from their stores,
    but their answers were summed with the missing node's; a new sum with fresh noise
    would let the two releases be differenced. No figure, and the reason."""
    fed.query(epsilon=0.53)
    gone = NODES[0]
    fed.kill(gone)
    try:
        release = fed.query("--deadline-ms", "5000", epsilon=0.53)
    finally:
        fed.start_node(gone)
    assert release["province"] == []
    assert "already summed" in release["secure"]["failure"]


@pytest.mark.parametrize(
    ("mode", "why"),
    [
        ("shortbox", "the second aggregator did not sum its answer"),
        ("coordbox", "its share for 'coordinator' did not open"),
    ],
)
def test_a_county_sealing_a_bad_box_is_left_out_not_the_release(
    fed: Running, mode: str, why: str
) -> None:
    """One dishonest county cannot sink a secure release for the others: its answer is
    left out of both sums (listed missing, with why) and the others' figure stands."""
    bad = NODES[-1]
    fed.stop(bad)
    fed.start_dishonest(bad, mode)
    try:
        epsilon = 0.21 if mode == "shortbox" else 0.23
        release = fed.query(epsilon=epsilon)
    finally:
        fed.stop(bad)
        fed.start_node(bad)
    honest = sorted(n for n in NODES if n != bad)
    assert release["secure"]["failure"] is None, release["secure"]["failure"]
    assert release["answered"] == honest
    assert release["missing"] == [bad]
    assert why in release["missing_reasons"][bad]
    sd = math.sqrt(2 * discrete_laplace_variance(1 / epsilon))
    assert abs(_province(release) - sum(fed.exact[n] for n in honest)) < 8 * sd


def test_too_few_nodes_is_refused_before_any_charge(fed: Running) -> None:
    before = _charges(fed)
    result = fed.cli(
        "query", "--home", str(fed.homes.analyst), "--coordinator", fed.address,
        "--epsilon", "0.5", "--secure", "--nodes", ",".join(NODES[:2]), SQL,
    )  # fmt: skip
    assert result.returncode != 0
    assert "at least 3" in result.stderr
    assert "Traceback" not in result.stderr
    assert _charges(fed) == before


def test_without_the_second_aggregator_nothing_is_charged(fed: Running) -> None:
    before = _charges(fed)
    fed.stop("aggregator")
    try:
        result = fed.cli(
            "query", "--home", str(fed.homes.analyst), "--coordinator", fed.address,
            "--epsilon", "0.5", "--secure", SQL,
        )  # fmt: skip
    finally:
        fed.start_aggregator()
    assert result.returncode != 0
    assert "not connected" in result.stderr
    assert _charges(fed) == before


def test_a_resubmitted_question_gets_the_same_release(fed: Running) -> None:
    first = fed.query(epsilon=0.61)
    again = fed.query(epsilon=0.61)
    assert first["province"] == again["province"]
    assert (
        _payload(first["secure"]["partials"][1])["partial"]
        == (_payload(again["secure"]["partials"][1])["partial"])
    )


def test_no_log_bundle_or_release_holds_a_county_value(fed: Running, tmp_path: Path) -> None:
    release = fed.query(epsilon=0.3)
    bundle = tmp_path / "bundle.json"
    homes = [
        fed.homes.coordinator,
        fed.homes.aggregator,
        *(c.home for c in fed.homes.nodes.values()),
    ]
    result = fed.cli(
        "audit", "export", *[a for h in homes for a in ("--home", str(h))], "--out", str(bundle)
    )
    assert result.returncode == 0, result.stderr
    verified = fed.cli(
        "audit", "verify", str(bundle), "--manifest", str(fed.homes.coordinator / "manifest.json")
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    texts = [_decoded(bundle.read_text(encoding="utf-8")), _decoded(json.dumps(release))]
    for name in ("coordinator", "aggregator", *NODES):  # the processes' own log lines
        log = (fed.root / f"{name}.log").read_text(encoding="utf-8", errors="replace")
        # without each line's time stamp: its milliseconds (",460") are no count
        texts.append(re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", "", log, flags=re.M))
    # positive controls: the search finds a number that is there, and it reached every
    # layer (the aggregator's log entries, the nodes' answer bodies inside the coordinator's)
    assert _holds_number(texts[1], release["province"][0]["value"])
    assert '"kind":"partial"' in texts[0]
    assert '"shares":{' in texts[0]
    for node, value in fed.exact.items():
        for text in texts:
            assert not _holds_number(text, value), f"{node}'s exact count {value} appears"


def _charges(fed: Running) -> int:
    from fedscreen.node import store

    total = 0
    for config in fed.homes.nodes.values():
        conn = store.connect(config.database)
        try:
            total += int(conn.execute("SELECT COUNT(*) FROM ledger_charge").fetchone()[0])
        finally:
            conn.close()
    return total


def _payload(envelope_text: str) -> dict[str, Any]:
    envelope = json.loads(envelope_text)
    return dict(json.loads(base64.b64decode(envelope["payload"])))


def _decoded(text: str, depth: int = 0) -> str:
    """``text`` with everything inside it opened, at every depth: JSON parsed, and every
    string that is JSON or base64 of UTF-8 text (DSSE payloads, a bundle's log entries,
    envelopes held as strings) decoded in turn and appended."""
    parts = [text]
    if depth > 8:
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and len(item) >= 16:
            for inner in _openings(item):
                parts.append(_decoded(inner, depth + 1))
    return "\n".join(parts)


def _openings(text: str) -> list[str]:
    found = []
    if text[:1] in "{[":
        found.append(text)
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        return found
    with contextlib.suppress(UnicodeDecodeError):
        found.append(raw.decode("utf-8"))
    return found


def _holds_number(text: str, value: int) -> bool:
    # a number token: not part of a longer number, word or base64 run
    return re.search(rf"(?<![0-9A-Za-z+/.]){value}(?![0-9A-Za-z+/=.])", text) is not None
