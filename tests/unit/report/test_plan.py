"""Report plans: the annual plan loads, costs add up like the ledger, mistakes are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedscreen.errors import ConfigError
from fedscreen.policy import Policy
from fedscreen.policy.default import PROVINCE_FILE, default_policy_dir
from fedscreen.policy.load import load_node_policy, load_policy
from fedscreen.protocol.budget import to_micro
from fedscreen.query.compile import compile_query
from fedscreen.query.cost import request_epsilon
from fedscreen.report.plan import load_plan

ANNUAL = default_policy_dir() / "reports" / "annual.toml"


@pytest.fixture(scope="module")
def province() -> Policy:
    return load_policy(default_policy_dir() / PROVINCE_FILE)


def test_the_annual_plan_covers_the_standard_report(province: Policy) -> None:
    plan = load_plan(ANNUAL, province)
    assert plan.year == "2024-2025"
    # DOMAIN.md's 18 standard statistics, each at least once
    assert {s.item for s in plan.statistics} == set(range(1, 19))
    public = {q.name for q in plan.queries.values() if q.public}
    assert public == {"eligible", "school_staffing", "university_ratio", "teachers", "students"}
    assert all(q.cost == 0 for q in plan.queries.values() if q.public)
    # the year-over-year query charges both years
    assert plan.queries["phq9_trend"].years == ("2023-2024", "2024-2025")
    # as written, every query is asked: ε = 3.15 in the year, 0.15 in the year before
    assert sum(q.cost for q in plan.queries.values()) == pytest.approx(3.15)
    # measured: the tables and the queries no table serves, ε ≤ 1 in the year
    assert plan.measure is not None
    assert plan.measure.epsilon == 1.0
    costs = plan.cost_by_year()
    assert 0.99 < costs["2024-2025"] <= 1.0
    assert costs["2024-2025"] == pytest.approx(sum(q.cost for q in plan.asked.values()))
    trend = plan.measure.served["phq9_trend"]
    assert costs["2023-2024"] == trend.epsilon
    assert set(plan.asked) - set(plan.queries) == {t.name for t in plan.measure.tables}
    # the median and the public tables are asked as written
    assert {"interview_days", "eligible", "teachers"} <= set(plan.asked)
    # the rare outcomes' province figures come from secure aggregation: asked as written
    secure = {n for n, q in plan.queries.items() if q.secure}
    assert secure == {"s_item9", "s_item9_2", "s_comorbid", "s_upi_item25", "s_referred"}
    assert secure <= set(plan.asked)
    assert not secure & set(plan.measure.served)
    # 0.01 each: the tables keep 0.9, so PHQ-9 by grade band and sex stays within ±2 points
    # for a county of 20,000 (scripts/bench_report_accuracy.py)
    assert sum(plan.queries[n].cost for n in secure) == pytest.approx(0.05)


def test_the_annual_plan_fits_the_strictest_county(province: Policy) -> None:
    """长安区 gives the monitoring centre 60% of ε=6, caps a query at 0.5, approves above 0.3."""
    county = load_node_policy(
        default_policy_dir() / PROVINCE_FILE, default_policy_dir() / "counties" / "130102.toml"
    )
    plan = load_plan(ANNUAL, province)
    limits = county.limits
    budget = limits.analysts["hebei-monitoring-centre"] * limits.epsilon_per_node_per_year
    charged = sum(to_micro(q.cost) for q in plan.queries.values() if "2024-2025" in q.years)
    assert charged <= to_micro(budget)
    assert limits.approval_above_epsilon is not None
    assert all(q.cost <= limits.approval_above_epsilon for q in plan.queries.values())


def test_accuracy_costs_what_the_node_charges(tmp_path: Path, province: Policy) -> None:
    plan_file = tmp_path / "plan.toml"
    plan_file.write_text(
        _plan(
            '[queries.q]\nsql = "SELECT grade_band, RATE(phq9_total >= 10) FROM screenings '
            "WHERE academic_year = '{year}' AND phq9_valid = 1 GROUP BY grade_band\"\n"
            "accuracy = 30\n"
        ),
        encoding="utf-8",
    )
    planned = load_plan(plan_file, province).queries["q"]
    node_cost = request_epsilon(
        compile_query(planned.spec, province), province, epsilon=None, accuracy=30.0
    )
    assert planned.cost == node_cost
    assert planned.epsilon is None
    assert planned.accuracy == 30.0


def test_year_override_moves_the_previous_year_too(province: Policy) -> None:
    plan = load_plan(ANNUAL, province, year="2025-2026")
    assert plan.queries["phq9_trend"].years == ("2024-2025", "2025-2026")
    assert plan.queries["screened"].years == ("2025-2026",)


def _plan(queries: str, statistic: str = 'query = "q"') -> str:
    return (
        'name = "t"\ntitle = "T"\nyear = "2024-2025"\n'
        '[[section]]\nid = "s"\ntitle = "S"\n'
        f"{queries}\n"
        '[[statistic]]\nid = "x"\nsection = "s"\ntitle = "X"\ndescription = "d"\n'
        f'unit = "count"\n{statistic}\n'
    )


COUNT = (
    '[queries.q]\nsql = "SELECT sex, COUNT(*) FROM screenings '
    "WHERE academic_year = '{year}' GROUP BY sex\"\nepsilon = 0.1\n"
)


@pytest.mark.parametrize(
    ("queries", "statistic", "message"),
    [
        (COUNT, 'query = "nope"', "no query named 'nope'"),
        (COUNT, 'query = "q"\nratio = ["q", "q"]', "exactly one of"),
        (COUNT.replace("epsilon = 0.1", "epsilon = 5.0"), 'query = "q"', "per-query cap"),
        (COUNT.replace("sex", "class_id"), 'query = "q"', "refuses it"),
        (
            '[queries.q]\nsql = "SELECT SUM(eligible) FROM schools '
            "WHERE academic_year = '{year}'\"\nepsilon = 0.1\n",
            'query = "q"',
            "is public",
        ),
        (COUNT + COUNT.replace("queries.q", "queries.r"), 'query = "q"', "no statistic reads: r"),
        (COUNT, 'query = "q"\nwhere = { grade = ["J7"] }', "does not group by"),
        (COUNT, 'shares = "q"\nwithin = ["grade"]', "does not group by grade"),
        (COUNT, 'change = "q"\nalong = "sex"', "needs a RATE query"),
        (COUNT, 'query = "q"\nwhere = { sex = ["X"] }', "outside its domain"),
        (COUNT, 'flags = "q"', "flags needs 0/1 columns; sex is not one"),
        (COUNT + "colour = 1\n", 'query = "q"', "unknown keys colour"),
        (
            COUNT.replace("'{year}'", "'{previous_year}'"),
            'query = "q"',
            "no previous_year",
        ),
    ],
)
def test_plan_mistakes_are_named(
    tmp_path: Path, province: Policy, queries: str, statistic: str, message: str
) -> None:
    plan_file = tmp_path / "plan.toml"
    plan_file.write_text(_plan(queries, statistic), encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as caught:
        load_plan(plan_file, province)
    assert str(plan_file) in str(caught.value)


def test_an_unreadable_plan_names_the_file(tmp_path: Path, province: Policy) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.toml: cannot read"):
        load_plan(bad, province)
