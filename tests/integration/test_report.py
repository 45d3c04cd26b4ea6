"""`fedscreen report plan|run|verify` against a real federation.

The federation of ``test_federation.py`` (its builder and helpers, reused): a real
coordinator and three real node processes on 127.0.0.1, mutual TLS, SQLite ledgers.
The CLI runs as separate processes, as an analyst and an auditor would run it. The
tests run in file order and leave every node running normally. Secure statistics run
on the federation of ``test_secure_federation.py``, which adds a real second
aggregator process.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from reportplans import count_plan, secure_plan
from securefed import AGGREGATOR, exact_count
from test_federation import (
    NODES,
    Federation,
    _cli,
    running_federation,
)
from test_secure_federation import Running, running
from test_secure_federation import _charges as _charges_counted

from fedscreen.coordinator.core import DATABASE_FILE
from fedscreen.policy.default import PROVINCE_FILE, default_policy_dir
from fedscreen.policy.load import load_policy
from fedscreen.protocol.combine import discrete_laplace_variance
from fedscreen.report.plan import load_plan

ANNUAL = default_policy_dir() / "reports" / "annual.toml"
#: seconds one `report run` may take (a plan of a few queries over three nodes)
REPORT_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with running_federation(tmp_path_factory.mktemp("report")) as federation:
        yield federation


def _charges(fed: Federation) -> dict[str, int]:
    return {n: fed.charges(n) for n in NODES}


def _logged(fed: Federation) -> int:
    """Entries in the coordinator's transparency log (read beside the running server)."""
    conn = sqlite3.connect(fed.coordinator_home / DATABASE_FILE)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM tlog_leaves").fetchone()[0])
    finally:
        conn.close()


def _analyst(fed: Federation) -> list[str]:
    return ["--home", str(fed.analyst.home), "--coordinator", fed.address]


def test_plan_prints_each_querys_cost_against_every_nodes_budget(fed: Federation) -> None:
    done = _cli("report", "plan", str(ANNUAL), *_analyst(fed))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "phq9_positive" in out
    costs = load_plan(ANNUAL, load_policy(default_policy_dir() / PROVINCE_FILE)).cost_by_year()
    before, year = costs["2023-2024"], costs["2024-2025"]
    assert f"total per node: ε={before:g} in 2023-2024, ε={year:g} in 2024-2025" in out
    for node in NODES:
        # alice has the default share: half of each node's ε = 10 a year
        assert f"{node}  yes        2024-2025  {year:g}" in out
    assert "every node can pay for this plan" in out


def test_a_plan_that_would_overspend_is_refused_before_any_query_runs(
    fed: Federation, tmp_path: Path
) -> None:
    # six queries at the per-query cap: ε = 6 > the 5 alice may spend at each node
    plan = count_plan(tmp_path / "greedy.toml", [1.0] * 6)
    before = _charges(fed)
    log_before = _logged(fed)
    planned = _cli("report", "plan", str(plan), *_analyst(fed))
    assert planned.returncode == 3, planned.stdout + planned.stderr
    assert "the plan costs ε=6, 130104 has ε=5 left for alice" in planned.stderr
    ran = _cli("report", "run", str(plan), *_analyst(fed), "--out", str(tmp_path / "out"))
    assert ran.returncode == 3, ran.stdout + ran.stderr
    assert "refused before any query runs" in ran.stderr
    # nothing was asked, so nothing was charged or logged, and no report was written
    assert _charges(fed) == before
    assert _logged(fed) == log_before
    assert not (tmp_path / "out" / "report.json").exists()


def test_a_report_with_a_node_down_marks_that_county_missing(
    fed: Federation, tmp_path: Path
) -> None:
    down = NODES[2]
    fed.kill_node(down)
    try:
        out = tmp_path / "report"
        plan = count_plan(tmp_path / "small.toml", [0.1, 0.1])
        checked = _cli("report", "plan", str(plan), *_analyst(fed))
        assert checked.returncode == 0, checked.stderr
        assert f"{down}: note: not connected now" in checked.stdout
        ran = _cli("report", "run", str(plan), *_analyst(fed), "--out", str(out))
        assert ran.returncode == 0, ran.stdout + ran.stderr
    finally:
        fed.start_node(down)
    assert f"nodes missing from some figures: {down}" in ran.stdout
    model = json.loads((out / "report.json").read_text(encoding="utf-8"))
    nodes = {n["id"]: n for n in model["nodes"]}
    assert nodes[down]["answered"] == 0
    assert nodes[down]["missing_from"] == ["s0", "s1"]
    assert {m["node"] for m in model["privacy"]["missing"]} == {down}
    assert all("not connected" in m["reason"] for m in model["privacy"]["missing"])
    for stat in model["sections"][0]["statistics"]:
        assert stat["missing"] == [down]
        assert {r["scope"] for r in stat["rows"]} == {"province", *NODES[:2]}
    html = (out / "report.html").read_text(encoding="utf-8")
    assert down in html
    # the signed bytes of every query, release and answer are kept beside the report
    releases = sorted(p.name for p in (out / "releases").iterdir())
    assert releases == ["q0.json", "q1.json"]
    assert (out / "plan.toml").read_bytes() == plan.read_bytes()


def test_an_auditor_verifies_a_report_against_the_logs(fed: Federation, tmp_path: Path) -> None:
    out = tmp_path / "report"
    plan = count_plan(tmp_path / "audited.toml", [0.2])
    ran = _cli("report", "run", str(plan), *_analyst(fed), "--out", str(out))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    bundle = tmp_path / "coordinator.bundle"
    exported = _cli("audit", "export", "--home", str(fed.coordinator_home), "--out", str(bundle))
    assert exported.returncode == 0, exported.stderr
    manifest = str(fed.auth / "manifest.json")
    verified = _cli("report", "verify", str(out), "--manifest", manifest, "--bundle", str(bundle))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "every release is in the coordinator's log" in verified.stdout
    # a figure changed after the fact is caught
    model = json.loads((out / "report.json").read_text(encoding="utf-8"))
    row = model["sections"][0]["statistics"][0]["rows"][0]
    row["value"] += 1
    (out / "report.json").write_text(json.dumps(model), encoding="utf-8")
    tampered = _cli("report", "verify", str(out), "--manifest", manifest)
    assert tampered.returncode == 2
    assert "statistic s0: the report's figures are not what its releases give" in tampered.stderr
    # so is a forged copy of a statistic, a changed title, or another report.html
    row["value"] -= 1
    forgeries = {
        "duplicate": lambda m: m["sections"][0]["statistics"].insert(
            0, {**m["sections"][0]["statistics"][0], "rows": []}
        ),
        "title": lambda m: m.update(title="Everything is fine"),
    }
    for what, forge in forgeries.items():
        forged = json.loads(json.dumps(model))
        forge(forged)
        (out / "report.json").write_text(json.dumps(forged), encoding="utf-8")
        done = _cli("report", "verify", str(out), "--manifest", manifest)
        assert done.returncode == 2, (what, done.stdout, done.stderr)
    (out / "report.json").write_text(json.dumps(model), encoding="utf-8")
    html = (out / "report.html").read_bytes()
    (out / "report.html").write_bytes(html.replace(b"</h1>", b" (approved)</h1>", 1))
    done = _cli("report", "verify", str(out), "--manifest", manifest)
    assert done.returncode == 2
    assert "report.html is not the report rendered" in done.stderr
    (out / "report.html").write_bytes(html)
    assert _cli("report", "verify", str(out), "--manifest", manifest).returncode == 0
    # a file in releases/ the plan does not ask for, a release file that is not an object,
    # and a plan.toml that no longer loads (its SHA-256 restated in report.json): exit 2
    stray = out / "releases" / "extra.json"
    stray.write_text("{}", encoding="utf-8")
    done = _cli("report", "verify", str(out), "--manifest", manifest)
    assert done.returncode == 2
    assert "releases/ holds files the plan does not ask for: extra.json" in done.stderr
    stray.unlink()
    (release,) = (out / "releases").glob("*.json")
    signed = release.read_bytes()
    release.write_text("[1, 2, 3]", encoding="utf-8")
    done = _cli("report", "verify", str(out), "--manifest", manifest)
    assert done.returncode == 2
    assert "not a readable release file" in done.stderr
    assert "Traceback" not in done.stderr
    release.write_bytes(signed)
    source = (out / "plan.toml").read_bytes()
    broken = source + b"\n[measure]\nepsilon = 1.0\n"
    (out / "plan.toml").write_bytes(broken)
    restated = json.loads(json.dumps(model))
    restated["plan"]["sha256"] = hashlib.sha256(broken).hexdigest()
    (out / "report.json").write_text(json.dumps(restated), encoding="utf-8")
    done = _cli("report", "verify", str(out), "--manifest", manifest)
    assert done.returncode == 2
    assert "plan.toml:" in done.stderr
    assert "[measure]" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_run_that_stopped_part_way_resumes_without_charging_again(
    fed: Federation, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    # an ε no other test asks, so that no answer comes from an earlier test's store
    plan = count_plan(tmp_path / "resumed.toml", [0.11, 0.11, 0.11])
    ran = _cli("report", "run", str(plan), *_analyst(fed), "--out", str(out))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    # as if it had stopped before the last query and before writing the report
    for name in ("report.json", "report.html", "report.csv", "releases/q2.json"):
        (out / name).unlink()
    before = _charges(fed)
    resumed = _cli("report", "run", str(plan), *_analyst(fed), "--out", str(out))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming: 2 of 3 queries already released" in resumed.stdout
    assert resumed.stdout.count("verified (released before)") == 2
    # only the missing query ran, and an identical question on the same data is answered
    # from the node's store: nothing is charged twice
    assert _charges(fed) == before
    model = json.loads((out / "report.json").read_text(encoding="utf-8"))
    for spent in model["privacy"]["spent"]:
        # the figures carry ε = 0.33 of answers; q2's came again from the node's store, as
        # its node signed, so the deliveries charged 0.22
        assert (spent["epsilon"], spent["charged"]) == (pytest.approx(0.33), pytest.approx(0.22))
    manifest = str(fed.auth / "manifest.json")
    verified = _cli("report", "verify", str(out), "--manifest", manifest)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    again = _cli("report", "run", str(plan), *_analyst(fed), "--out", str(out))
    assert again.returncode == 1
    assert "already holds a report" in again.stderr


@pytest.fixture(scope="module")
def secure_fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running(tmp_path_factory.mktemp("report-secure")) as federation:
        yield federation


def _secure_analyst(fed: Running) -> list[str]:
    return ["--home", str(fed.homes.analyst), "--coordinator", fed.address]


def test_a_report_with_secure_statistics_end_to_end(secure_fed: Running, tmp_path: Path) -> None:
    """A plan with a secure count, run through a real coordinator, a real second aggregator
    and four real nodes: province figures only, from both partials, verified again by
    ``report verify`` against the coordinator's and the aggregator's logs. With the
    aggregator down the run stops at the secure query, nothing charged for it, and
    resumes once it is back."""
    fed = secure_fed
    epsilon = 0.3
    plan = secure_plan(tmp_path / "secure.toml", epsilon=epsilon)
    planned = fed.cli("report", "plan", str(plan))
    assert planned.returncode == 0, planned.stderr
    assert "secure statistics (province figures only)" in planned.stdout
    out = tmp_path / "report"
    before = _charges_counted(fed)
    fed.stop("aggregator")
    try:
        stopped = fed.cli("report", "run", str(plan), *_secure_analyst(fed), "--out", str(out))
    finally:
        fed.start_aggregator()
    assert stopped.returncode != 0
    assert f"the second aggregator {AGGREGATOR} is not connected" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert not (out / "report.json").exists()
    # the plain query ran and was kept; the secure one was refused before any node was asked
    assert _charges_counted(fed) == before + len(fed.homes.nodes)
    ran = fed.cli("report", "run", str(plan), *_secure_analyst(fed), "--out", str(out))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "resuming: 1 of 2 queries already released" in ran.stdout
    assert f"s_item9: 4/4 nodes, ε={epsilon:g} per node, secure: province total only" in ran.stdout
    assert _charges_counted(fed) == before + 2 * len(fed.homes.nodes)
    model = json.loads((out / "report.json").read_text(encoding="utf-8"))
    stats = {s["id"]: s for sec in model["sections"] for s in sec["statistics"]}
    nodes = sorted(fed.homes.nodes)
    assert {r["scope"] for r in stats["valid"]["rows"]} == {"province", *nodes}
    for sid in ("item9_count", "item9_rate"):
        assert {r["scope"] for r in stats[sid]["rows"]} == {"province"}
        assert stats[sid]["secure"] == {"aggregators": ["coordinator", AGGREGATOR], "failure": None}
    # the province count is the exact total and two draws at ε (sd √(2·Var)), per sex
    sd = (2 * discrete_laplace_variance(1 / epsilon)) ** 0.5
    for row in stats["item9_count"]["rows"]:
        (sex,) = row["group"]
        exact = sum(
            exact_count(c, f"phq9_valid = 1 AND phq9_item9 = 1 AND sex = '{sex}'")
            for c in fed.homes.nodes.values()
        )
        if not row["suppressed"]:
            assert abs(row["value"] - exact) < 8 * sd
    assert [a["id"] for a in model["privacy"]["secure"]["aggregators"]] == [
        "coordinator", AGGREGATOR,
    ]  # fmt: skip
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "province only: secure aggregation" in html
    assert "split into two random shares" in html
    # each county was charged for the secure query as for any: its ε, in the year
    for spent in model["privacy"]["spent"]:
        assert spent["epsilon"] == pytest.approx(2 * epsilon)
    # the auditor: both logs, then the report recomputed from its releases
    bundle = tmp_path / "logs.bundle"
    exported = fed.cli(
        "audit", "export", "--home", str(fed.homes.coordinator), "--home",
        str(fed.homes.aggregator), "--out", str(bundle),
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    manifest = str(fed.homes.auth / "manifest.json")
    verified = fed.cli(
        "report", "verify", str(out), "--manifest", manifest, "--bundle", str(bundle)
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "every release is in the coordinator's log" in verified.stdout
    # a secure figure changed after the fact is caught
    model["sections"][0]["statistics"][0]["rows"][0]["value"] += 1
    (out / "report.json").write_text(json.dumps(model), encoding="utf-8")
    tampered = fed.cli("report", "verify", str(out), "--manifest", manifest)
    assert tampered.returncode == 2
    assert "item9_count" in tampered.stderr
