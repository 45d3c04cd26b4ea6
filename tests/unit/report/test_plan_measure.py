"""A plan's ``[measure]`` section: every malformed one is named, an accepted one is asked.

The plans are small TOML files in ``tmp_path`` over the shipped provincial catalogue:
a handful of queries of one population (valid PHQ-9 results), one of another (valid
GAD-7 results), a two-year query, a median, a public table and a private SUM, so that
each way a table can be wrong has a query to be wrong with.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fedscreen.cli.main import main
from fedscreen.errors import ConfigError
from fedscreen.policy import Policy
from fedscreen.policy.default import PROVINCE_FILE, default_policy_dir
from fedscreen.policy.load import load_policy
from fedscreen.query.sqlparse import parse_sql
from fedscreen.report.plan import ReportPlan, load_plan

ANNUAL = default_policy_dir() / "reports" / "annual.toml"
YEAR, PREVIOUS = "2024-2025", "2023-2024"
POSITIVE = "phq9_band IN ('moderate', 'moderately_severe', 'severe')"
PHQ9 = "WHERE academic_year = '{year}' AND phq9_valid = 1"

#: name -> (sql, epsilon or None for a public query)
QUERIES: dict[str, tuple[str, float | None]] = {
    "phq9_positive": (
        f"SELECT grade_band, sex, RATE({POSITIVE}) FROM screenings {PHQ9} GROUP BY grade_band, sex",
        0.1,
    ),
    "phq9_bands": (
        f"SELECT grade_band, phq9_band, COUNT(*) FROM screenings {PHQ9}"
        " GROUP BY grade_band, phq9_band",
        0.1,
    ),
    "phq9_total10": (
        f"SELECT grade_band, RATE(phq9_total >= 10) FROM screenings {PHQ9} GROUP BY grade_band",
        0.05,
    ),
    "phq9_sum": (
        f"SELECT grade_band, SUM(phq9_total) FROM screenings {PHQ9} GROUP BY grade_band",
        0.05,
    ),
    # 78 cells, and with by_grade_rate 390: above max_groups (200) together
    "by_grade": (
        f"SELECT grade, location, sex, COUNT(*) FROM screenings {PHQ9}"
        " GROUP BY grade, location, sex",
        0.05,
    ),
    "by_grade_rate": (
        f"SELECT grade, location, RATE({POSITIVE}) FROM screenings {PHQ9} GROUP BY grade, location",
        0.05,
    ),
    # 175 cells; with by_grade's and by_home's tables a joint of 54,600 cells (> 20,000)
    "by_type_age": (
        f"SELECT school_type, age_band, RATE({POSITIVE}) FROM screenings {PHQ9}"
        " GROUP BY school_type, age_band",
        0.05,
    ),
    "by_home": (
        f"SELECT boarding, left_behind, COUNT(*) FROM screenings {PHQ9}"
        " GROUP BY boarding, left_behind",
        0.05,
    ),
    "gad7_positive": (
        "SELECT grade_band, sex, RATE(gad7_band IN ('moderate', 'severe')) FROM screenings"
        " WHERE academic_year = '{year}' AND gad7_valid = 1 GROUP BY grade_band, sex",
        0.1,
    ),
    "phq9_trend": (
        f"SELECT academic_year, RATE({POSITIVE}) FROM screenings WHERE academic_year IN"
        " ('{previous_year}', '{year}') AND phq9_valid = 1 GROUP BY academic_year",
        0.1,
    ),
    "referred": (
        "SELECT COUNT(*) FROM screenings WHERE academic_year = '{year}' AND referred = 1",
        0.05,
    ),
    "interview_days": (
        "SELECT QUANTILE(interview_days, 0.5) FROM screenings"
        " WHERE academic_year = '{year}' AND interview_done = 1",
        0.1,
    ),
    "eligible": (
        "SELECT grade_band, SUM(eligible) FROM school_grades"
        " WHERE academic_year = '{year}' GROUP BY grade_band",
        None,
    ),
}
#: what the queries cost as written in the plan's year and in the one before
AS_WRITTEN = sum(e for _, e in QUERIES.values() if e is not None)
#: a [measure] that the plan accepts: two tables, the other queries asked as written
GOOD_MEASURE = """
[measure]
epsilon = 2.0

[measure.tables.m_phq9]
serves = ["phq9_bands", "phq9_positive"]
epsilon = 0.15

[measure.tables.m_gad7]
serves = ["gad7_positive"]
epsilon = 0.1
"""


def plan_text(
    measure: str = "",
    *,
    top: str = "",
    weight: str = "",
    queries: Mapping[str, tuple[str, float | None]] = QUERIES,
) -> str:
    """A plan over ``queries``, one statistic each; ``top`` goes before the first header."""
    lines = [
        'name = "t"',
        'title = "T"',
        f'year = "{YEAR}"',
        f'previous_year = "{PREVIOUS}"',
        top,
        "[[section]]",
        'id = "s"',
        'title = "S"',
    ]
    for name, (sql, epsilon) in queries.items():
        lines += [f"[queries.{name}]", f"sql = {json.dumps(sql)}"]
        if epsilon is not None:
            lines.append(f"epsilon = {epsilon}")
    for name in queries:
        lines += [
            "[[statistic]]",
            f'id = "s_{name}"',
            'section = "s"',
            f'title = "{name}"',
            'description = "d"',
            'unit = "count"',
            f'query = "{name}"',
        ]
        if name == "phq9_positive" and weight:
            lines.append(f"weight = {weight}")
    return "\n".join(lines) + "\n" + measure


@pytest.fixture(scope="module")
def province() -> Policy:
    return load_policy(default_policy_dir() / PROVINCE_FILE)


def write(path: Path, text: str) -> Path:
    plan_file = path / "plan.toml"
    plan_file.write_text(text, encoding="utf-8")
    return plan_file


def table(name: str, serves: list[str], epsilon: float = 0.1, total: float = 5.0) -> str:
    return (
        f"[measure]\nepsilon = {total}\n\n[measure.tables.{name}]\n"
        f"serves = {json.dumps(serves)}\nepsilon = {epsilon}\n"
    )


def test_the_base_plan_loads_without_measure(tmp_path: Path, province: Policy) -> None:
    plan = load_plan(write(tmp_path, plan_text()), province)
    assert plan.measure is None
    assert list(plan.asked) == list(QUERIES)
    assert plan.cost_by_year() == {
        YEAR: pytest.approx(AS_WRITTEN),
        PREVIOUS: pytest.approx(QUERIES["phq9_trend"][1]),
    }


# --- refused -------------------------------------------------------------------------------

#: (the [measure] text, or `measure = …` before the first header; what the error says)
SECTION_MISTAKES = [
    ("measure = 1", "takes epsilon and"),
    ('measure = "tables"', "takes epsilon and"),
    ("measure = [1, 2]", "takes epsilon and"),
    ("measure = []", "takes epsilon and"),
    ("[measure]\nepsilon = 1.0\ncolour = 1\n", "takes epsilon and"),
    ("[measure]\nepsilon = 1.0\ntables = {}\nTables = 1\n", "takes epsilon and"),
    ("[measure]\ntables = { m = { serves = ['phq9_bands'], epsilon = 0.1 } }", "epsilon must"),
    ("[measure]\nepsilon = -1.0\n", "epsilon must be a positive number"),
    ("[measure]\nepsilon = 0\n", "epsilon must be a positive number"),
    ("[measure]\nepsilon = 0.0\n", "epsilon must be a positive number"),
    ("[measure]\nepsilon = -0.0\n", "epsilon must be a positive number"),
    ("[measure]\nepsilon = true\n", "epsilon must be a positive number"),
    ("[measure]\nepsilon = false\n", "epsilon must be a positive number"),
    ('[measure]\nepsilon = "1.0"\n', "epsilon must be a positive number"),
    ("[measure]\nepsilon = nan\n", "epsilon must be a positive number"),
    ("[measure]\nepsilon = inf\n", "epsilon must be a positive number"),
    ("[measure]\nepsilon = -inf\n", "epsilon must be a positive number"),
    ("[measure]\nepsilon = 1e300\n", "epsilon must be a positive number"),
    ("[measure]\nepsilon = 1000000\n", "epsilon must be a positive number"),
    ("[measure]\nepsilon = 9223372036854775807\n", "epsilon must be a positive number"),
    ("[measure]\nepsilon = [1.0]\n", "epsilon must be a positive number"),
    ("[measure]\nepsilon = 1979-05-27\n", "epsilon must be a positive number"),
    ("[measure]\nepsilon = 1.0\n", r"no \[measure.tables"),
    ("[measure]\nepsilon = 1.0\ntables = {}\n", r"no \[measure.tables"),
    ("[measure]\nepsilon = 1.0\ntables = 1\n", r"no \[measure.tables"),
    ("[measure]\nepsilon = 1.0\ntables = [{ serves = ['phq9_bands'] }]\n", r"no \[measure.tables"),
]


@pytest.mark.parametrize(("measure", "message"), SECTION_MISTAKES)
def test_a_malformed_measure_section_is_named(
    tmp_path: Path, province: Policy, measure: str, message: str
) -> None:
    top, section = (measure, "") if measure.startswith("measure =") else ("", measure)
    plan_file = write(tmp_path, plan_text(section, top=top))
    with pytest.raises(ConfigError, match=message) as caught:
        load_plan(plan_file, province)
    assert f"{plan_file} [measure]" in str(caught.value)


#: (the table's name, its body, what the error says)
TABLE_MISTAKES = [
    ("m", "serves = ['phq9_bands']", "takes serves"),
    ("m", "epsilon = 0.1", "takes serves"),
    ("m", "serves = ['phq9_bands']\nepsilon = 0.1\nweight = 2", "takes serves"),
    ("m", "serves = 'phq9_bands'\nepsilon = 0.1", "serves must be a list"),
    ("m", "serves = { phq9_bands = 1 }\nepsilon = 0.1", "serves must be a list"),
    ("m", "serves = [1, 2]\nepsilon = 0.1", "serves must be a list"),
    ("m", "serves = ['phq9_bands', 1]\nepsilon = 0.1", "serves must be a list"),
    ("m", "serves = [['phq9_bands']]\nepsilon = 0.1", "serves must be a list"),
    ("m", "serves = []\nepsilon = 0.1", "serves unknown queries: none"),
    ("m", "serves = ['nope']\nepsilon = 0.1", "serves unknown queries: nope"),
    ("m", "serves = ['phq9_bands', 'nope']\nepsilon = 0.1", "unknown queries: nope"),
    ("m", "serves = ['phq9_bands', 'phq9_bands']\nepsilon = 0.1", "one table only"),
    ("m", "serves = ['phq9_bands']\nepsilon = 0", "epsilon must be a positive number"),
    ("m", "serves = ['phq9_bands']\nepsilon = -0.1", "epsilon must be a positive number"),
    ("m", "serves = ['phq9_bands']\nepsilon = true", "epsilon must be a positive number"),
    ("m", "serves = ['phq9_bands']\nepsilon = '0.1'", "epsilon must be a positive number"),
    ("m", "serves = ['phq9_bands']\nepsilon = nan", "epsilon must be a positive number"),
    ("m", "serves = ['phq9_bands']\nepsilon = inf", "epsilon must be a positive number"),
    ("m", "serves = ['phq9_bands']\nepsilon = 1e300", "per-query cap"),
    ('"m x"', "serves = ['phq9_bands']\nepsilon = 0.1", "an identifier no query has"),
    ('"1m"', "serves = ['phq9_bands']\nepsilon = 0.1", "an identifier no query has"),
    ("m-x", "serves = ['phq9_bands']\nepsilon = 0.1", "an identifier no query has"),
    ('""', "serves = ['phq9_bands']\nepsilon = 0.1", "an identifier no query has"),
    ("phq9_bands", "serves = ['phq9_bands']\nepsilon = 0.1", "an identifier no query has"),
    ("gad7_positive", "serves = ['phq9_bands']\nepsilon = 0.1", "an identifier no query has"),
    # two populations: another filter (valid GAD-7 results, not PHQ-9), another year
    ("m", "serves = ['phq9_positive', 'gad7_positive']\nepsilon = 0.1", "one population"),
    ("m", "serves = ['gad7_positive', 'phq9_bands']\nepsilon = 0.1", "one population"),
    ("m", "serves = ['phq9_positive', 'phq9_trend']\nepsilon = 0.1", "one population"),
    ("m", "serves = ['phq9_trend', 'phq9_bands']\nepsilon = 0.1", "one population"),
    ("m", "serves = ['phq9_bands', 'referred']\nepsilon = 0.1", "one population"),
    # another dataset: a public one, which no table serves anyway
    ("m", "serves = ['phq9_bands', 'eligible']\nepsilon = 0.1", "query eligible cannot be"),
    # queries no table can serve
    ("m", "serves = ['interview_days']\nepsilon = 0.1", "query interview_days cannot be"),
    ("m", "serves = ['eligible']\nepsilon = 0.1", "query eligible cannot be served"),
    ("m", "serves = ['phq9_total10']\nepsilon = 0.1", "query phq9_total10 cannot be"),
    ("m", "serves = ['phq9_bands', 'phq9_total10']\nepsilon = 0.1", "phq9_total10 cannot be"),
    ("m", "serves = ['phq9_sum']\nepsilon = 0.1", "query phq9_sum cannot be served"),
    # 13 grades × 3 locations × 2 sexes × 5 PHQ-9 bands = 390 cells > 200
    ("m", "serves = ['by_grade', 'by_grade_rate']\nepsilon = 0.1", "390 cells, above"),
]


@pytest.mark.parametrize(("name", "body", "message"), TABLE_MISTAKES)
def test_a_malformed_table_is_named(
    tmp_path: Path, province: Policy, name: str, body: str, message: str
) -> None:
    measure = f"[measure]\nepsilon = 5.0\n\n[measure.tables.{name}]\n{body}\n"
    plan_file = write(tmp_path, plan_text(measure))
    with pytest.raises(ConfigError, match=message) as caught:
        load_plan(plan_file, province)
    text = str(caught.value)
    assert text.startswith(f"{plan_file} [measure]")
    if "more than the epsilon" not in message:
        shown = name.strip('"')
        assert f"[measure].tables.{shown}:" in text


def test_a_table_that_is_not_a_table_is_named(tmp_path: Path, province: Policy) -> None:
    for value in ("1", "'x'", "[1]", "true"):
        measure = f"[measure]\nepsilon = 5.0\n[measure.tables]\nm = {value}\n"
        plan_file = write(tmp_path, plan_text(measure))
        with pytest.raises(ConfigError, match=r"\[measure\]\.tables\.m: takes serves"):
            load_plan(plan_file, province)


def test_a_query_served_by_two_tables_is_refused(tmp_path: Path, province: Policy) -> None:
    measure = GOOD_MEASURE + '\n[measure.tables.m_again]\nserves = ["phq9_bands"]\nepsilon = 0.1\n'
    plan_file = write(tmp_path, plan_text(measure))
    with pytest.raises(ConfigError, match=r"tables\.m_again: a query is served by one table"):
        load_plan(plan_file, province)


def test_count_of_a_column_is_refused_before_any_table(tmp_path: Path, province: Policy) -> None:
    """COUNT(column) is not the plan's SQL: the query itself is refused, by name."""
    counted = f"SELECT grade_band, COUNT(phq9_total) FROM screenings {PHQ9} GROUP BY grade_band"
    queries = {**QUERIES, "phq9_bands": (counted, 0.1)}
    plan_file = write(tmp_path, plan_text(table("m", ["phq9_bands"]), queries=queries))
    with pytest.raises(ConfigError, match=r"\[queries\.phq9_bands\].*COUNT\(\*\)"):
        load_plan(plan_file, province)


def unserved_cost(plan: ReportPlan, served: set[str]) -> float:
    return sum(q.cost for n, q in plan.queries.items() if n not in served and YEAR in q.years)


@pytest.mark.parametrize(
    "serves",
    [["phq9_bands"], ["phq9_bands", "phq9_positive"], ["gad7_positive"], ["referred"]],
)
def test_the_stated_epsilon_bounds_tables_and_unserved_queries(
    tmp_path: Path, province: Policy, serves: list[str]
) -> None:
    as_written = load_plan(write(tmp_path, plan_text()), province)
    fixed = unserved_cost(as_written, set(serves))
    # exactly what it spends: accepted
    plan = load_plan(write(tmp_path, plan_text(table("m", serves, 0.25, fixed + 0.25))), province)
    assert plan.cost_by_year()[YEAR] == pytest.approx(fixed + 0.25)
    # the tables alone within it, the unserved queries pushing it over: refused
    for total in (fixed + 0.24, 0.3):
        plan_file = write(tmp_path, plan_text(table("m", serves, 0.25, total)))
        with pytest.raises(ConfigError, match="more than the epsilon") as caught:
            load_plan(plan_file, province)
        assert str(caught.value).startswith(f"{plan_file} [measure]")
    # the tables alone above it
    plan_file = write(tmp_path, plan_text(table("m", serves, 0.25, 0.2)))
    with pytest.raises(ConfigError, match=f"spend ε = {fixed + 0.25:g} in {YEAR}"):
        load_plan(plan_file, province)


def test_a_table_above_the_per_query_cap_is_refused(tmp_path: Path, province: Policy) -> None:
    assert province.limits.max_epsilon_per_query == 1.0
    plan_file = write(tmp_path, plan_text(table("m", ["phq9_bands"], epsilon=5.0, total=10.0)))
    with pytest.raises(ConfigError, match=r"\[measure\]\.tables\.m"):
        load_plan(plan_file, province)


def test_every_year_a_table_charges_is_bounded(tmp_path: Path, province: Policy) -> None:
    queries = {
        "last": (
            "SELECT sex, COUNT(*) FROM screenings WHERE academic_year = '{previous_year}'"
            " GROUP BY sex",
            0.1,
        ),
        "now": (
            "SELECT sex, COUNT(*) FROM screenings WHERE academic_year = '{year}' GROUP BY sex",
            0.1,
        ),
    }
    plan_file = write(tmp_path, plan_text(table("m_last", ["last"], 0.9, 0.5), queries=queries))
    with pytest.raises(ConfigError, match="more than the epsilon"):
        # as it stands: {PREVIOUS: 0.9, YEAR: 0.1} under a stated epsilon of 0.5
        load_plan(plan_file, province)


def test_a_deeply_nested_measure_is_refused(tmp_path: Path, province: Policy) -> None:
    top = "measure = " + "[" * 5000 + "]" * 5000
    plan_file = write(tmp_path, plan_text(top=top))
    with pytest.raises(ConfigError, match="cannot read"):
        load_plan(plan_file, province)


# --- accepted ------------------------------------------------------------------------------


def test_an_accepted_plan_asks_its_tables_then_the_unserved_queries(
    tmp_path: Path, province: Policy
) -> None:
    plan = load_plan(write(tmp_path, plan_text(GOOD_MEASURE)), province)
    assert plan.measure is not None
    assert plan.measure.epsilon == 2.0
    tables = {t.name: t for t in plan.measure.tables}
    served = {"phq9_bands": "m_phq9", "phq9_positive": "m_phq9", "gad7_positive": "m_gad7"}
    unserved = [n for n in QUERIES if n not in served]
    assert list(plan.asked) == ["m_phq9", "m_gad7", *unserved]
    for name, table in tables.items():
        asked = plan.asked[name]
        assert parse_sql(asked.sql) == table.spec() == asked.spec
        assert (asked.cost, asked.epsilon) == (table.epsilon, table.epsilon)
        assert not asked.public
        assert asked.accuracy is None
        assert asked.cells == len(table.cells)
        assert asked.years == (YEAR,)
    for name in unserved:
        assert plan.asked[name] is plan.queries[name]
    m_phq9 = tables["m_phq9"]
    assert m_phq9.attributes == ("grade_band", "sex", "phq9_band")
    assert m_phq9.members == ("phq9_bands", "phq9_positive")
    assert len(m_phq9.cells) == 5 * 2 * 5
    assert tables["m_gad7"].attributes == ("grade_band", "sex", "gad7_band")
    # the tables are charged, not the queries they serve
    fixed = unserved_cost(plan, set(served))
    assert plan.cost_by_year() == {
        YEAR: pytest.approx(0.15 + 0.1 + fixed),
        PREVIOUS: pytest.approx(QUERIES["phq9_trend"][1]),
    }
    assert plan.cost_by_year()[YEAR] < AS_WRITTEN
    # a served query's figures come from its population's tables (here: its own only)
    for query in QUERIES:
        assert plan.sources(query) == [served.get(query, query)]
    assert plan.statistics_of("m_phq9") == ["s_phq9_positive", "s_phq9_bands"]
    assert plan.statistics_of("m_gad7") == ["s_gad7_positive"]
    assert plan.statistics_of("phq9_bands") == ["s_phq9_bands"]
    assert plan.statistics_of("interview_days") == ["s_interview_days"]


def test_a_served_query_is_computed_from_every_table_of_its_population(
    tmp_path: Path, province: Policy
) -> None:
    measure = (
        table("m_bands", ["phq9_bands"], 0.1)
        + '[measure.tables.m_gad7]\nserves = ["gad7_positive"]\nepsilon = 0.1\n'
        + '[measure.tables.m_pos]\nserves = ["phq9_positive"]\nepsilon = 0.1\n'
    )
    plan = load_plan(write(tmp_path, plan_text(measure)), province)
    assert plan.sources("phq9_bands") == ["m_bands", "m_pos"]
    assert plan.sources("phq9_positive") == ["m_bands", "m_pos"]
    assert plan.sources("gad7_positive") == ["m_gad7"]
    assert plan.sources("phq9_trend") == ["phq9_trend"]
    assert list(plan.asked)[:3] == ["m_bands", "m_gad7", "m_pos"]


def test_a_population_joint_above_the_limit_is_refused(tmp_path: Path, province: Policy) -> None:
    measure = (
        table("m_grade", ["by_grade"], 0.1)
        + '[measure.tables.m_type]\nserves = ["by_type_age"]\nepsilon = 0.1\n'
    )
    # two of them: 78 × 175 = 13,650 cells, within the limit
    assert load_plan(write(tmp_path, plan_text(measure)), province).measure is not None
    measure += '[measure.tables.m_home]\nserves = ["by_home"]\nepsilon = 0.1\n'
    plan_file = write(tmp_path, plan_text(measure))
    with pytest.raises(ConfigError, match="a joint of 54600 cells, above 20000") as caught:
        load_plan(plan_file, province)
    assert str(caught.value).startswith(f"{plan_file} [measure]")


def test_a_two_year_table_charges_both_years(tmp_path: Path, province: Policy) -> None:
    plan_file = write(tmp_path, plan_text(table("m_trend", ["phq9_trend"], 0.07, 5.0)))
    plan = load_plan(plan_file, province)
    fixed = unserved_cost(plan, {"phq9_trend"})
    assert plan.cost_by_year() == {YEAR: pytest.approx(fixed + 0.07), PREVIOUS: 0.07}
    assert plan.asked["m_trend"].years == (PREVIOUS, YEAR)
    assert parse_sql(plan.asked["m_trend"].sql) == plan.asked["m_trend"].spec


def test_a_count_without_groups_is_served_by_a_table_without_attributes(
    tmp_path: Path, province: Policy
) -> None:
    plan = load_plan(write(tmp_path, plan_text(table("m_ref", ["referred"], 0.05))), province)
    asked = plan.asked["m_ref"]
    assert asked.cells == 1
    assert parse_sql(asked.sql) == asked.spec
    assert asked.spec.group_by == ()


@pytest.mark.parametrize(("weight", "expected"), [("6", 6.0), ("0.5", 0.5), ("999999", 999999.0)])
def test_a_statistics_weight_is_read(
    tmp_path: Path, province: Policy, weight: str, expected: float
) -> None:
    plan = load_plan(write(tmp_path, plan_text(GOOD_MEASURE, weight=weight)), province)
    assert plan.statistic("s_phq9_positive").weight == expected
    assert plan.statistic("s_phq9_bands").weight == 1.0


@pytest.mark.parametrize(
    "weight", ["0", "-1", "0.0", "true", '"2"', "nan", "inf", "1e7", "1e-7", "[1]", "{ a = 1 }"]
)
def test_a_bad_weight_is_refused(tmp_path: Path, province: Policy, weight: str) -> None:
    plan_file = write(tmp_path, plan_text(GOOD_MEASURE, weight=weight))
    with pytest.raises(ConfigError, match="weight must be a number from") as caught:
        load_plan(plan_file, province)
    assert str(caught.value).startswith(str(plan_file))
    assert "(s_phq9_positive)" in str(caught.value)


# --- anything at all -----------------------------------------------------------------------


def toml_key(key: str) -> str:
    return toml_string(key)


def toml_string(text: str) -> str:
    # JSON's escapes are TOML's, but DEL must be escaped in a TOML basic string
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value: Any) -> str:
    """``value`` as an inline TOML value (tomllib reads it back as ``value``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
NAMES = st.sampled_from([*QUERIES, "m", "m_phq9", "nope", "", "1m"]) | TEXT
SCALARS = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0.0, -0.0, 1e-12, 0.05, 0.1, 0.3, 1.0, 2.0, 1e6, 1e300])
    | TEXT
    | st.text(max_size=0).map(lambda _: "x" * 100_000)
    | st.dates()
)
VALUES = st.recursive(
    SCALARS | NAMES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(NAMES, inner, max_size=4),
    max_leaves=20,
)
DEEP = st.integers(min_value=1, max_value=200).map(lambda n: "[" * n + "1" + "]" * n)
SERVES = st.lists(st.sampled_from([*QUERIES, "nope"]), max_size=4) | VALUES
TABLES = st.dictionaries(
    NAMES,
    st.fixed_dictionaries(
        {"serves": SERVES, "epsilon": VALUES | st.floats(0.01, 0.5)},
        optional={"weight": VALUES},
    )
    | VALUES,
    max_size=4,
)


#: servable queries of one population (valid PHQ-9 results in the plan's year)
ONE_POPULATION = ["phq9_positive", "phq9_bands", "by_grade", "by_type_age", "by_home"]


@st.composite
def plausible(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed [measure]: tables over disjoint groups of queries (servable or not)."""
    pool = draw(st.sampled_from([list(QUERIES), ONE_POPULATION, ONE_POPULATION]))
    names = draw(st.permutations(pool))[: draw(st.integers(1, 6))]
    cuts = sorted(draw(st.sets(st.integers(1, len(names)), max_size=3)) | {len(names)})
    tables, start = {}, 0
    for n, cut in enumerate(cuts):
        epsilon = draw(SCALARS if draw(st.integers(0, 19)) == 0 else st.floats(0.001, 0.3))
        tables[f"m_{n}"] = {"serves": names[start:cut], "epsilon": epsilon}
        start = cut
    return {
        "epsilon": draw(SCALARS if draw(st.integers(0, 19)) == 0 else st.floats(0.5, 10.0)),
        "tables": tables,
    }


MEASURES = (
    plausible()
    | plausible()
    | st.fixed_dictionaries(
        {"epsilon": VALUES | st.floats(0.5, 5.0), "tables": TABLES | VALUES},
        optional={"more": VALUES},
    )
    | st.dictionaries(NAMES, VALUES, max_size=3)
    | VALUES
)


#: what the fuzzing's refusals say, to show how far it gets (--hypothesis-show-statistics)
PHRASES = [
    "takes epsilon",
    "epsilon must",
    "no [measure.tables",
    "identifier",
    "takes serves",
    "serves must",
    "unknown queries",
    "one table only",
    "cannot be served",
    "one population",
    "cells, above",
    "a joint of",
    "more than the epsilon",
    "cannot read",
    "per-query cap",
    "below 1e-06",
    "measures what table",
]


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(measure=MEASURES)
def test_any_measure_is_a_config_error_or_a_valid_plan(
    fuzz_dir: Path, province: Policy, measure: Any
) -> None:
    plan_file = write(fuzz_dir, plan_text(top=f"measure = {toml_value(measure)}"))
    try:
        plan = load_plan(plan_file, province)
    except ConfigError as exc:
        refused = str(exc)
    else:
        refused = ""
    if refused:
        assert refused.startswith(str(plan_file))
        event(f"refused: {next((p for p in PHRASES if p in refused), refused[-60:])}")
        return
    event("accepted")
    assert plan.measure is not None
    costs = plan.cost_by_year()
    assert costs[YEAR] <= plan.measure.epsilon * (1 + 1e-9)
    for t in plan.measure.tables:
        assert t.epsilon > 0
        assert parse_sql(plan.asked[t.name].sql) == t.spec()
        for member in t.members:
            assert t.name in plan.sources(member)
            assert member not in plan.asked


@settings(max_examples=30, deadline=None)
@given(deep=DEEP, key=st.sampled_from(["measure", "measure.epsilon", "measure.tables.m.serves"]))
def test_nested_arrays_in_measure_are_refused(
    fuzz_dir: Path, province: Policy, deep: str, key: str
) -> None:
    plan_file = write(fuzz_dir, plan_text(top=f"{key} = {deep}"))
    with pytest.raises(ConfigError) as caught:
        load_plan(plan_file, province)
    assert str(caught.value).startswith(f"{plan_file} [measure]")


# --- the command line ----------------------------------------------------------------------


def without_measure(text: str) -> str:
    head, found, _ = text.partition("\n[measure]\n")
    assert found, "the annual plan has a [measure] section"
    return head + "\n"


def test_report_plan_compiles_a_measure_section_the_plan_accepts(
    tmp_path: Path, province: Policy, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["report", "plan", str(ANNUAL), "--compile", "1.0", "--students", "3000"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Traceback" not in err
    _, found, rest = out.partition("\n[measure]\n")
    assert found, out
    section = "[measure]\n" + rest.partition("\n(budgets not checked")[0]
    assert "[measure.tables." in section
    bare = without_measure(ANNUAL.read_text(encoding="utf-8"))
    # the section is what makes the plan measure: the copy without it does not
    assert load_plan(write(tmp_path, bare), province).measure is None
    plan = load_plan(write(tmp_path, bare + "\n" + section), province)
    assert plan.measure is not None
    assert plan.measure.epsilon == 1.0
    assert 0.99 < plan.cost_by_year()[plan.year] <= 1.0 + 1e-9
    # every table served something, and the median and public tables are still asked
    assert all(t.members for t in plan.measure.tables)
    assert {"interview_days", "eligible"} <= set(plan.asked)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--students", "0"], "--students must be between 1 and"),
        (["--students", "-5"], "--students must be between 1 and"),
        (["--compile", "0.01", "--students", "3000"], "nothing is left for the measured tables"),
        (["--compile", "0", "--students", "3000"], "must be in (0, 1000]"),
        # any one-line message will do: today's says nothing is left for the tables
        (["--compile", "-1", "--students", "3000"], ""),
        (["--compile", "nan", "--students", "3000"], ""),
    ],
)
def test_report_plan_refuses_bad_arguments_in_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code = main(["report", "plan", str(ANNUAL), *argv])
    _, err = capsys.readouterr()
    assert code != 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert message in lines[0]


@pytest.mark.parametrize("epsilon", ["inf", "1e308"])
def test_report_plan_refuses_an_infinite_epsilon(
    capsys: pytest.CaptureFixture[str], epsilon: str
) -> None:
    code = main(["report", "plan", str(ANNUAL), "--compile", epsilon, "--students", "3000"])
    _, err = capsys.readouterr()
    assert code != 0
    assert err.startswith("error: ")


def test_report_plan_compiles_no_table_above_the_per_query_cap(
    province: Policy, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["report", "plan", str(ANNUAL), "--compile", "100", "--students", "3000"])
    out, _ = capsys.readouterr()
    if code == 0:
        _, _, section = out.partition("\n[measure]\n")
        epsilons = [float(line.split("=")[1]) for line in section.splitlines()
                    if line.startswith("epsilon = ")][1:]  # fmt: skip
        assert epsilons
        assert max(epsilons) <= province.limits.max_epsilon_per_query


def test_two_tables_measuring_the_same_thing_are_refused(tmp_path: Path, province: Policy) -> None:
    # a node answers the same question again from its store: the same noise twice, which
    # the least squares would take for two measurements (intervals far too narrow)
    again = {**QUERIES, "phq9_bands_again": (QUERIES["phq9_bands"][0], 0.07)}
    measure = (
        "[measure]\nepsilon = 5.0\n\n"
        '[measure.tables.m_a]\nserves = ["phq9_bands"]\nepsilon = 0.1\n\n'
        '[measure.tables.m_b]\nserves = ["phq9_bands_again"]\nepsilon = 0.1\n'
    )
    plan_file = write(tmp_path, plan_text(measure, queries=again))
    with pytest.raises(ConfigError, match=r"tables\.m_b: measures what table m_a measures"):
        load_plan(plan_file, province)
    # at another ε it is another question (other noise): still refused, nothing to gain
    measure = measure.replace("epsilon = 0.1\n", "epsilon = 0.2\n", 1)
    with pytest.raises(ConfigError, match="measures what table m_a measures"):
        load_plan(write(tmp_path, plan_text(measure, queries=again)), province)
