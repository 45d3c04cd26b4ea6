"""Secure plan queries: only counts over the catalogue's secure columns, never measured by a
table, charged like any query no table serves; mistakes named with the query."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedscreen.errors import ConfigError
from fedscreen.policy import Policy
from fedscreen.policy.default import PROVINCE_FILE, default_policy_dir
from fedscreen.policy.load import load_policy
from fedscreen.policy.model import CategoryRule
from fedscreen.report.measured import measurable
from fedscreen.report.plan import ReportPlan, load_plan
from fedscreen.report.strategy import PROVINCE_COUNTIES, compile_strategy, secure_expected

HEAD = 'name = "t"\ntitle = "T"\nyear = "2024-2025"\n[[section]]\nid = "s"\ntitle = "S"\n'


def _plan(queries: dict[str, tuple[str, float, bool]], extra: str = "") -> str:
    """A plan of one count statistic per query: name -> (sql, ε, secure)."""
    text = HEAD
    for name, (sql, epsilon, secure) in queries.items():
        text += f'[queries.{name}]\nsql = "{sql}"\nepsilon = {epsilon}\n'
        text += "secure = true\n" if secure else ""
    for name in queries:
        text += (
            f'[[statistic]]\nid = "x_{name}"\nsection = "s"\ntitle = "X"\ndescription = "d"\n'
            f'unit = "count"\nquery = "{name}"\n'
        )
    return text + extra


def _sql(
    group: str = "grade_band", where: str = "phq9_item9 = 1", measure: str = "COUNT(*)"
) -> str:
    return (
        f"SELECT {group}, {measure} FROM screenings WHERE academic_year = '{{year}}' "
        f"AND phq9_valid = 1 AND {where} GROUP BY {group}"
    )


@pytest.fixture(scope="module")
def province() -> Policy:
    return load_policy(default_policy_dir() / PROVINCE_FILE)


def _load(tmp_path: Path, text: str, province: Policy) -> ReportPlan:
    path = tmp_path / "plan.toml"
    path.write_text(text, encoding="utf-8")
    return load_plan(path, province)


def test_a_secure_count_loads_and_is_charged_like_any_query(
    tmp_path: Path, province: Policy
) -> None:
    plan = _load(tmp_path, _plan({"q": (_sql(), 0.04, True), "p": (_sql(), 0.04, False)}), province)
    secure, plain = plan.queries["q"], plan.queries["p"]
    assert secure.secure
    assert secure.spec.secure
    assert not plain.secure
    # the same ε at every node: a secure answer is charged like a plain one
    assert secure.cost == plain.cost == 0.04
    assert plan.cost_by_year() == {"2024-2025": pytest.approx(0.08)}
    # the signed question differs: secure is part of what the analyst signs
    assert secure.spec != plain.spec
    assert secure.spec.to_json()["secure"] is True
    assert "secure" not in plain.spec.to_json()


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        # left-behind status is no secure column: collusion would expose small groups
        (_sql(group="left_behind"), r"secure aggregation: column\(s\) 'left_behind'"),
        # a filter counts too
        (_sql(where="boarding = 1"), r"secure aggregation: column\(s\) 'boarding'"),
        # a county's own value is the one thing a secure release never holds
        (_sql(group="county_code"), r"secure aggregation: column\(s\) 'county_code'"),
        (_sql(measure="RATE(phq9_item9 = 1)", where="sex = 'F'"), "secure aggregation"),
        (
            "SELECT grade_band, SUM(eligible) FROM school_grades "
            "WHERE academic_year = '{year}' GROUP BY grade_band",
            "secure aggregation",
        ),
    ],
)
def test_a_secure_query_the_catalogue_does_not_allow_is_refused_by_name(
    tmp_path: Path, province: Policy, sql: str, message: str
) -> None:
    epsilon = 0.0 if "school_grades" in sql else 0.04
    text = _plan({"bad": (sql, epsilon, True)})
    if "school_grades" in sql:
        text = text.replace("epsilon = 0.0\n", "")
    with pytest.raises(ConfigError, match=message) as caught:
        _load(tmp_path, text, province)
    assert "[queries.bad]" in str(caught.value)


def test_secure_must_be_a_boolean(tmp_path: Path, province: Policy) -> None:
    text = _plan({"q": (_sql(), 0.04, False)}).replace(
        "epsilon = 0.04\n", 'epsilon = 0.04\nsecure = "yes"\n'
    )
    with pytest.raises(ConfigError, match=r"\[queries.q\]: secure must be true or false"):
        _load(tmp_path, text, province)


def test_a_measured_table_never_serves_a_secure_query(tmp_path: Path, province: Policy) -> None:
    queries = {"q": (_sql(), 0.04, True), "p": (_sql(where="phq9_item9_2 = 1"), 0.04, False)}
    measure = '[measure]\nepsilon = 1.0\n[measure.tables.m]\nserves = ["q", "p"]\nepsilon = 0.1\n'
    with pytest.raises(ConfigError, match="q is secure: a secure query is asked as written"):
        _load(tmp_path, _plan(queries, measure), province)
    # the compiler leaves it out of every table; the plain one is measured
    plan = _load(tmp_path, _plan(queries), province)
    assert measurable(plan.queries["q"].spec, province.datasets["screenings"]) is None
    compiled = compile_strategy(plan, province, epsilon=1.0)
    assert "q" not in compiled.served
    assert "p" in compiled.served
    # it spends its ε beside the tables, within what the plan states
    assert sum(t.epsilon for t in compiled.tables) <= 1.0 - 0.04 + 1e-6


def test_a_secure_query_counts_against_the_measured_epsilon(
    tmp_path: Path, province: Policy
) -> None:
    queries = {"q": (_sql(), 0.2, True), "p": (_sql(where="phq9_item9_2 = 1"), 0.04, False)}
    measure = '[measure]\nepsilon = 1.0\n[measure.tables.m]\nserves = ["p"]\nepsilon = 0.9\n'
    with pytest.raises(ConfigError, match=r"spend ε = 1\.1 in 2024-2025"):
        _load(tmp_path, _plan(queries, measure), province)
    fits = measure.replace("epsilon = 0.9", "epsilon = 0.8")
    plan = _load(tmp_path, _plan(queries, fits), province)
    assert "q" in plan.asked
    assert plan.cost_by_year()["2024-2025"] == pytest.approx(1.0)


def test_report_plan_predicts_two_draws_against_one_per_county(
    tmp_path: Path, province: Policy
) -> None:
    plan = _load(tmp_path, _plan({"q": (_sql(), 0.04, True), "p": (_sql(), 0.04, False)}), province)
    (e,) = secure_expected(plan)
    assert (e.statistic, e.epsilon) == ("x_q", 0.04)
    # a discrete Laplace draw at ε = 0.04 has sd ≈ √2 / 0.04; two of them, or 167
    sd = math.sqrt(2) / 0.04
    assert e.secure == pytest.approx(1.96 * sd * math.sqrt(2), rel=0.1)
    assert e.summed / e.secure == pytest.approx(math.sqrt(PROVINCE_COUNTIES / 2), rel=0.1)


def _category_columns(province: Policy) -> list[str]:
    dataset = province.datasets["screenings"]
    return sorted(
        name
        for name, rule in dataset.columns.items()
        if isinstance(rule, CategoryRule) and "group" in rule.measures and len(rule.domain) <= 12
    )


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_a_secure_query_loads_exactly_when_every_column_is_secure(
    tmp_path: Path, province: Policy, data: st.DataObject
) -> None:
    columns = data.draw(
        st.lists(st.sampled_from(_category_columns(province)), min_size=1, max_size=2, unique=True)
    )
    group = ", ".join(columns)
    sql = (
        f"SELECT {group}, COUNT(*) FROM screenings WHERE academic_year = '{{year}}' "
        f"GROUP BY {group}"
    )
    allowed = province.secure.columns["screenings"]
    text = _plan({"q": (sql, 0.04, True)})
    if not set(columns) <= allowed:
        with pytest.raises(ConfigError, match=r"\[queries.q\]: .*secure aggregation: column"):
            _load(tmp_path, text, province)
        return
    # every column secure: it loads, or fails for another rule than the secure one
    try:
        plan = _load(tmp_path, text, province)
    except ConfigError as exc:
        message = str(exc)
    else:
        assert plan.queries["q"].secure
        return
    assert "secure aggregation" not in message
