"""The README's main job: `fedscreen demo` runs end to end on its embedded defaults."""

from __future__ import annotations

import ast
import csv
import json
import re
from pathlib import Path

import pytest

from fedscreen.cli.main import main
from fedscreen.node import store
from fedscreen.node.home import load_config
from fedscreen.policy.default import PROVINCE_FILE, default_policy_dir
from fedscreen.policy.load import load_policy
from fedscreen.report.derived import resolve
from fedscreen.report.files import read_run
from fedscreen.report.plan import load_plan
from fedscreen.report.verify import verify_report
from fedscreen.trust.identity import load_identity

ALL_STATISTICS = {
    s.id
    for s in load_plan(
        default_policy_dir() / "reports" / "annual.toml",
        load_policy(default_policy_dir() / PROVINCE_FILE),
    ).statistics
}


def test_demo_loads_a_county_and_answers_with_privacy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["demo", "--single-node", "--dir", str(tmp_path / "demo"), "--students", "3000"]) == 0
    )
    out = capsys.readouterr().out
    assert "0 rejected" in out
    assert "differentially private answers" in out
    assert "rate over screenings 2024-2025; mechanism discrete_laplace ratio" in out
    config = load_config(tmp_path / "demo" / "node")
    conn = store.connect(config.database)
    try:
        loaded = conn.execute("SELECT COUNT(*) FROM screening").fetchone()[0]
        charged = conn.execute("SELECT SUM(epsilon_micro) FROM ledger_charge").fetchone()[0]
    finally:
        conn.close()
    assert loaded == 3000
    assert charged == 2 * 300_000  # two private queries at ε = 0.3; the public one is free


def test_demo_runs_a_whole_federation_reports_and_audits_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default demo: real coordinator and node processes on 127.0.0.1, mutual TLS,
    the annual report, and the auditor's check of every log and of the report."""
    work = tmp_path / "fed"
    assert main(["demo", "--dir", str(work), "--students", "2000"]) == 0
    out = capsys.readouterr().out
    report = work / "report"
    # the senior high school of 长安区 that runs its own node
    (school,) = [
        m.id for m in load_identity(work / "auditor").manifest().members if m.level == "school"
    ]
    assert f"the reports: {report / 'report.html'}" in out
    plan = load_plan(
        default_policy_dir() / "reports" / "annual.toml",
        load_policy(default_policy_dir() / PROVINCE_FILE),
    )
    asked = len(plan.asked)  # the measured tables and the queries no table serves
    assert plan.measure is not None
    assert asked < len(plan.queries)
    # each release verified by the analyst: the province's report, then 石家庄's
    assert out.count("— verified") == 2 * asked
    # 长安区's policy does not let anyone group by left-behind status: it is missing there,
    # and so is its school's own node (under 长安区's rules) and the university (which
    # holds no left-behind column)
    table = plan.measure.served["phq9_by_left_behind"]
    assert (
        f"{table.name}: 3/6 nodes, ε={table.epsilon:g} per node; "
        f"missing 10094, 130102, {school}" in out
    )
    # the university's node is offline: its queries were queued, carried to it by file,
    # answered there and imported as later release versions; the report was regenerated
    assert "(10094 offline: reached by file)" in out
    assert "the province writes 10094-outbox.json: " in out
    assert re.search(r"node 10094 answers it offline: \d+ answered", out)
    assert re.search(r"\d+ of \d+ releases replaced by a later version; report verified", out)
    # the city's report asks the city's nodes only: three counties and the school
    assert f"scope city:1301: 4 nodes (130102, {school}, 130104, 130121)" in out
    assert f"{table.name}: 2/4 nodes, ε={table.epsilon:g} per node; missing 130102, {school}" in out
    # the city analyst's query to 唐山's county: refused by the coordinator, then by the
    # county's node itself, free
    assert "the coordinator refuses it: " in out
    assert "out of scope: analyst shijiazhuang-centre's scope is city:1301" in out
    assert "路北区's node refuses it itself: out-of-scope: " in out
    assert "(recorded in its signed log; nothing charged)" in out
    # ... and only there: the compiler kept PHQ-9 by location out of that table
    assert plan.measure.served["phq9_by_location"] != table
    # the auditor: the coordinator's log, the second aggregator's and each node's, then the
    # report against them
    # ... its releases: both reports', and the later versions the university's answers
    # (carried by file) made
    later = int(re.search(r"imports it: (\d+) new release versions", out)[1])  # type: ignore[index]
    assert later > 0
    assert f"{2 * asked + later} releases — valid" in out
    secure = [n for n, q in plan.queries.items() if q.secure]
    assert "fedscreen.aggregator/hebei-stats-bureau: " in out
    assert f"{len(secure)} answers, 0 releases — valid" in out
    # the coordinator's log, the aggregator's, six nodes' and two reports
    assert out.count(" — valid") == 10
    recomputed = f"recomputed from its {asked} signed releases, each found in the coordinator's log"
    assert recomputed in out
    city_report = work / "report-city-1301"
    assert f"{city_report / 'report.html'}" in out

    model = json.loads((report / "report.json").read_text(encoding="utf-8"))
    manifest = load_identity(work / "auditor").manifest()
    policy = load_policy(default_policy_dir() / PROVINCE_FILE)
    # every figure is what its signed releases give (recomputed independently of the run)
    checked = verify_report(report, manifest=manifest, policy=policy)
    assert checked.statistics == len(ALL_STATISTICS)
    assert {s["id"] for sec in model["sections"] for s in sec["statistics"]} == ALL_STATISTICS
    # the figures add up in this report: bands to valid screenings (PHQ-9 ≥ 10's
    # denominators, from another table of the same population), warning levels by grade
    # band and sex to warning levels (two tables), counties to the province
    asked = {
        name: read_run(report / "releases" / f"{name}.json", query, manifest=manifest).released
        for name, query in plan.asked.items()
    }
    released = resolve(plan, asked)
    counties = released["phq9_bands"].answered
    assert counties == sorted(["10094", "130102", school, "130104", "130121", "130203"])
    for scope in ("province", *counties):
        bands = released["phq9_bands"].parts(scope)
        positive = released["phq9_positive"].rate_parts(scope)
        for band in plan.datasets["screenings"].columns["grade_band"].domain:  # type: ignore[union-attr]
            valid = sum(p.value for g, p in bands if g[0] == band)
            by_sex = sum(
                d.value for k, (_, d) in positive.items() if ast.literal_eval(k)[0] == band
            )
            assert valid == pytest.approx(by_sex, rel=1e-9, abs=1e-6)
        detail = released["warnings"].parts(scope)
        for level, part in released["warning_levels"].parts(scope):
            summed = sum(p.value for g, p in detail if g[2] == level[0])
            assert part.value == pytest.approx(summed, rel=1e-9, abs=1e-6)
    for name in ("phq9_bands", "warnings", "screened"):
        province = dict((json.dumps(g), p.value) for g, p in released[name].parts("province"))
        for key, value in province.items():
            counted = sum(
                dict((json.dumps(g), p.value) for g, p in released[name].parts(c))[key]
                for c in counties
            )
            assert value == pytest.approx(counted, rel=1e-9, abs=1e-6)
    # the county that refused is marked missing, with its node's reason
    (changan,) = [n for n in model["nodes"] if n["id"] == "130102"]
    assert changan["name"] == "长安区"
    assert changan["missing_from"] == ["phq9_by_left_behind"]
    assert any(
        m["node"] == "130102" and "left_behind" in m["reason"] for m in model["privacy"]["missing"]
    )
    # ε spent per node and year, within what each node allows this analyst
    for spent in model["privacy"]["spent"]:
        if spent["node"] == "10094":
            # offline: no statement of its budget had come back when the plan was checked
            assert spent["budget"] is None
            continue
        assert spent["epsilon"] <= spent["budget"]
    # the secure statistics: province figures only, from both aggregators' partials
    stats = {s["id"]: s for sec in model["sections"] for s in sec["statistics"]}
    from_secure = [s for s in stats.values() if "secure" in s]
    assert {s["id"] for s in from_secure} == set(model["privacy"]["secure"]["statistics"])
    assert len(from_secure) >= len(secure)
    for stat in from_secure:
        assert stat["secure"] == {
            "aggregators": ["coordinator", "hebei-stats-bureau"],
            "failure": None,
        }
        assert stat["rows"]
        assert {r["scope"] for r in stat["rows"]} == {"province"}
    for name in secure:
        body = released[name].body
        # every node, but a school node holds no UPI answers
        assert sorted([*body["answered"], *body["missing"]]) == counties
        # a school node holds no UPI answers; an offline node cannot join a secure round
        assert set(body["missing"]) <= {school, "10094"}
        assert body["missing_reasons"]["10094"].startswith("offline: a secure query")
        assert len(body["secure"]["partials"]) == 2
    html = (report / "report.html").read_text(encoding="utf-8")
    # each statistic's facts and table, and the note on reading the figures
    assert html.count("province only: secure aggregation") == 2 * len(from_secure) + 1
    assert "河北省统计局 (<code>hebei-stats-bureau</code>)" in html
    # the CSV holds the same figures, and a line per secure statistic saying it has no
    # county figure
    with (report / "report.csv").open(encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    notes = [r for r in rows if r["display"] == "province only: secure aggregation"]
    assert {r["statistic"] for r in notes} == {s["id"] for s in from_secure}
    assert len(rows) == checked.figures + len(notes)
