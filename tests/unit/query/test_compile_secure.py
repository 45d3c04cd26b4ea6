"""Secure queries at compile time: only counts over the catalogue's secure columns of a
non-public dataset, at a node whose county does not refuse them; everything else the
compiler checks still holds. Runs the compiled SQL on a real node's SQLite store."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from exportrows import varied_rows, write_csv
from hypothesis import given, settings
from hypothesis import strategies as st

from fedscreen.errors import QueryRefused
from fedscreen.node import store
from fedscreen.node.home import NodeConfig, init_home
from fedscreen.node.ingest import ingest_paths
from fedscreen.policy import CategoryRule, Measure, Policy, load_node_policy
from fedscreen.protocol.refusal import MAX_DETAIL_CHARS
from fedscreen.query.compile import (
    SECURE_REFUSAL,
    check_secure,
    check_secure_release,
    compile_query,
)
from fedscreen.query.spec import BoolOp, Comparison, Condition, QuerySpec
from fedscreen.query.spec import Measure as SpecMeasure
from fedscreen.query.sqlparse import parse_sql

YEAR = "2024-2025"
Y = f"WHERE academic_year = '{YEAR}'"
POLICIES = Path(__file__).resolve().parents[3] / "policies"
PROVINCE = POLICIES / "province.toml"
COUNTY = POLICIES / "counties" / "130102.toml"

#: the policy a node for 130102 enforces (catalogue ∩ county document)
POLICY = load_node_policy(PROVINCE, COUNTY)
SECURE_COLUMNS = POLICY.secure.columns["screenings"]


def _secure(sql: str) -> QuerySpec:
    return replace(parse_sql(sql), secure=True)


def _county(tmp_path: Path, text: str) -> Policy:
    """The node policy of 130102 with its document extended by ``text``."""
    path = tmp_path / "130102.toml"
    path.write_text(COUNTY.read_text(encoding="utf-8") + text, encoding="utf-8")
    return load_node_policy(PROVINCE, path)


def _rows() -> list[dict[str, str]]:
    """600 screenings spread over PHQ-9 totals, with some anxious, warned, referred students."""
    rows = varied_rows(600)
    for i, row in enumerate(rows):
        if row["participation"] != "screened":
            continue
        if i % 3 == 0:
            row.update(gad7_items="3322110", gad7_total="")  # 12: moderate
        if i % 13 == 0:
            row.update(warning_level="red", warning_status="open", referred="yes")
            row.update(referral_visited="yes" if i % 2 else "no")
    return rows


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> NodeConfig:
    """A node for 130102 with 600 screenings for 2024-2025 (read only in this module)."""
    base = tmp_path_factory.mktemp("secure")
    config = init_home(base / "node", node_id="130102", name="长安区")
    _, rejected = ingest_paths(config, [write_csv(base / "s.csv", _rows())])
    assert not rejected, rejected
    assert config.policy() == POLICY
    return config


@pytest.fixture
def conn(node: NodeConfig) -> Iterator[sqlite3.Connection]:
    connection = store.connect(node.database)
    try:
        yield connection
    finally:
        connection.close()


# --- what compiles ------------------------------------------------------------------------

ALLOWED = [
    f"SELECT COUNT(*) FROM screenings {Y} AND phq9_valid = 1 AND phq9_item9 = 1",
    f"SELECT grade_band, phq9_item9, COUNT(*) FROM screenings {Y} AND phq9_valid = 1 "
    "GROUP BY grade_band, phq9_item9",
    f"SELECT grade, sex, COUNT(*) FROM screenings {Y} AND phq9_item9_2 = 1 GROUP BY grade, sex",
    f"SELECT sex, COUNT(*) FROM screenings {Y} AND phq9_band IN ('moderate', "
    "'moderately_severe', 'severe') AND gad7_band IN ('moderate', 'severe') GROUP BY sex",
    f"SELECT school_type, location, COUNT(*) FROM screenings {Y} AND referred = 1 "
    "AND NOT referral_visited = 1 GROUP BY school_type, location",
    f"SELECT HISTOGRAM(warning_level) FROM screenings {Y}",
    "SELECT academic_year, COUNT(*) FROM screenings "
    "WHERE academic_year IN ('2023-2024', '2024-2025') AND phq9_positive = 1 "
    "AND gad7_positive = 1 GROUP BY academic_year",
]


@pytest.mark.parametrize("sql", ALLOWED)
def test_a_secure_count_runs_as_its_plain_count(sql: str, conn: sqlite3.Connection) -> None:
    """The secret-shared cells are exactly the cells the plain query would noise."""
    spec = _secure(sql)
    check_secure(spec, POLICY)
    secure, plain = compile_query(spec, POLICY), compile_query(parse_sql(sql), POLICY)
    assert secure.spec.secure
    assert (secure.sql, secure.params, secure.cells) == (plain.sql, plain.params, plain.cells)
    rows = conn.execute(secure.sql, secure.params).fetchall()
    assert rows == conn.execute(plain.sql, plain.params).fetchall()
    assert sum(row[-1] for row in rows) > 0  # the crafted rows do reach these cells


def test_count_of_a_column_counts_its_values(conn: sqlite3.Connection) -> None:
    """COUNT(column) (a spec from JSON) needs the column's 'count' right and counts non-NULLs."""
    spec = QuerySpec(
        "screenings", SpecMeasure("count", column="phq9_band"), ("sex",), None, (YEAR,)
    )
    for secure in (False, True):
        plan = compile_query(replace(spec, secure=secure), POLICY)
        assert "COUNT(phq9_band)" in plan.sql
        got = dict(conn.execute(plan.sql, plan.params).fetchall())
        expected = dict(
            conn.execute(
                "SELECT sex, COUNT(*) FROM screenings WHERE academic_year = ? "
                "AND phq9_band IS NOT NULL GROUP BY sex",
                (YEAR,),
            ).fetchall()
        )
        assert got == expected
        all_rows = conn.execute(
            "SELECT COUNT(*) FROM screenings WHERE academic_year = ?", (YEAR,)
        ).fetchone()[0]
        assert sum(got.values()) < all_rows  # some students took no PHQ-9
    sex = replace(spec, measure=SpecMeasure("count", column="sex"))
    with pytest.raises(QueryRefused, match="column sex may not be used for COUNT"):
        compile_query(sex, POLICY)


# --- what is refused ----------------------------------------------------------------------

REFUSED: list[tuple[str, str]] = [
    (f"SELECT RATE(phq9_item9 = 1) FROM screenings {Y}", "only counts"),
    (f"SELECT grade_band, RATE(referred = 1) FROM screenings {Y} GROUP BY 1", "not RATE"),
    (f"SELECT SUM(phq9_total) FROM screenings {Y}", "not SUM"),
    (f"SELECT AVG(phq9_total) FROM screenings {Y}", "not MEAN"),
    (f"SELECT QUANTILE(phq9_total, 0.5) FROM screenings {Y}", "not QUANTILE"),
    (f"SELECT COUNT(*) FROM schools {Y}", "schools is public data, released exactly"),
    (f"SELECT grade_band, COUNT(*) FROM school_grades {Y} GROUP BY 1", "school_grades is public"),
    # a county's cell would come out: never a secure column
    (
        f"SELECT county_code, COUNT(*) FROM screenings {Y} GROUP BY 1",
        "column(s) 'county_code' may not be used in a secure query (the catalogue lists "
        "those that may under [secure.datasets.screenings])",
    ),
    (
        f"SELECT COUNT(*) FROM screenings {Y} AND county_code = '130102'",
        "column(s) 'county_code' may not",
    ),
    # allowed in a plain query, not in a secure one
    (f"SELECT COUNT(*) FROM screenings {Y} AND left_behind = 1", "'left_behind' may not"),
    (f"SELECT age_band, COUNT(*) FROM screenings {Y} GROUP BY 1", "'age_band' may not"),
    (f"SELECT COUNT(*) FROM screenings {Y} AND phq9_total >= 10", "'phq9_total' may not"),
    (
        f"SELECT mode, boarding, COUNT(*) FROM screenings {Y} AND sex = 'F' GROUP BY 1, 2",
        "column(s) 'boarding', 'mode' may not",
    ),
]


@pytest.mark.parametrize(("sql", "reason"), REFUSED, ids=[q[:70] for q, _ in REFUSED])
def test_secure_refusals_say_why(sql: str, reason: str) -> None:
    spec = _secure(sql)
    for check in (check_secure, compile_query):
        with pytest.raises(QueryRefused) as err:
            check(spec, POLICY)
        assert str(err.value).startswith(SECURE_REFUSAL)
        assert reason in str(err.value)
        # whole in a node's signed log, where a refusal's detail is cut beyond this
        assert len(str(err.value)) <= MAX_DETAIL_CHARS
    if not spec.dataset.startswith("school"):
        compile_query(parse_sql(sql), POLICY)  # the same question, asked plainly, runs


def test_a_long_list_of_columns_is_cut_short() -> None:
    columns = (
        "mode",
        "boarding",
        "age_band",
        "consent",
        "screened",
        "participation",
        "county_code",
    )
    spec = QuerySpec("screenings", SpecMeasure("count"), columns, None, (YEAR,), secure=True)
    with pytest.raises(QueryRefused, match=r"'age_band', 'boarding', 'consent', .* and 2 more"):
        check_secure(spec, POLICY)


def test_an_unknown_dataset_is_refused() -> None:
    spec = QuerySpec("screening", SpecMeasure("count"), (), None, (YEAR,), secure=True)
    with pytest.raises(QueryRefused, match=r"^secure aggregation: unknown dataset 'screening'$"):
        check_secure(spec, POLICY)
    with pytest.raises(QueryRefused, match=r"^unknown dataset 'screening' "):
        compile_query(spec, POLICY)


def test_secure_queries_keep_every_other_rule(tmp_path: Path) -> None:
    """Group and filter rights, domains and max_groups apply to a secure query as to any."""
    policy = _county(
        tmp_path,
        "\n[datasets.screenings.columns.sex]\nmeasures = ['filter']\n"
        "[datasets.screenings.columns.referred]\nmeasures = ['group']\n",
    )
    assert {"sex", "referred"} <= policy.secure.columns["screenings"]
    for sql, reason in [
        (
            f"SELECT sex, COUNT(*) FROM screenings {Y} GROUP BY 1",
            "sex may not be used for GROUP BY",
        ),
        (f"SELECT COUNT(*) FROM screenings {Y} AND referred = 1", "referred may not be used for"),
        (f"SELECT COUNT(*) FROM screenings {Y} AND sex = 'X'", "'X' is not in the public domain"),
        (
            f"SELECT COUNT(*) FROM screenings {Y} AND school_type = 'university'",
            "'university' is not in the public domain of school_type",
        ),
        (
            f"SELECT grade, grade_band, phq9_band, gad7_band, COUNT(*) FROM screenings {Y} "
            "GROUP BY 1, 2, 3, 4",
            "cells exceed the limit of 200",
        ),
        ("SELECT COUNT(*) FROM screenings WHERE academic_year = '2019-2020'", "'2019-2020'"),
    ]:
        with pytest.raises(QueryRefused, match=re.escape(reason)):
            compile_query(_secure(sql), policy)


def test_a_refusing_county_answers_no_secure_query(tmp_path: Path) -> None:
    policy = _county(tmp_path, "\n[secure]\nrefuse = true\n")
    assert policy.secure.refused
    for sql in ALLOWED:
        with pytest.raises(
            QueryRefused, match=r"^secure aggregation: this county's policy refuses"
        ):
            compile_query(_secure(sql), policy)
        compile_query(parse_sql(sql), policy)  # its plain queries run as before


def test_a_county_keeps_fewer_secure_columns(tmp_path: Path) -> None:
    policy = _county(
        tmp_path,
        "\n[secure.datasets.screenings]\ncolumns = ['academic_year', 'grade_band', 'phq9_item9']\n",
    )
    keep = f"SELECT grade_band, COUNT(*) FROM screenings {Y} AND phq9_item9 = 1 GROUP BY 1"
    compile_query(_secure(keep), policy)
    with pytest.raises(QueryRefused, match=r"^secure aggregation: column\(s\) 'sex' may not"):
        compile_query(_secure(f"SELECT sex, COUNT(*) FROM screenings {Y} GROUP BY 1"), policy)


def test_a_release_sums_at_least_min_nodes(tmp_path: Path) -> None:
    assert POLICY.secure.min_nodes == 3
    check_secure_release(POLICY, nodes=3)
    check_secure_release(POLICY, nodes=167)
    for nodes in (0, 1, 2):
        with pytest.raises(
            QueryRefused,
            match=f"^secure aggregation: a release must sum at least 3 nodes, not {nodes}$",
        ):
            check_secure_release(POLICY, nodes=nodes)
    stricter = _county(tmp_path, "\n[secure]\nmin_nodes = 5\n")
    with pytest.raises(QueryRefused, match="at least 5 nodes, not 4"):
        check_secure_release(stricter, nodes=4)
    check_secure_release(stricter, nodes=5)


# --- for any columns ------------------------------------------------------------------

#: every column a plain query may group by (county_code too: one group at this node)
_GROUPABLE = sorted(
    name
    for name, rule in POLICY.datasets["screenings"].columns.items()
    if Measure.GROUP in rule.measures
)
_FILTERABLE = sorted(
    name
    for name, rule in POLICY.datasets["screenings"].columns.items()
    if Measure.FILTER in rule.measures and isinstance(rule, CategoryRule)
)


@settings(deadline=None)  # shared CI machines: a slow example is not a bug
@given(
    st.lists(st.sampled_from(_GROUPABLE), min_size=0, max_size=2, unique=True),
    st.lists(st.sampled_from(_FILTERABLE), min_size=0, max_size=3, unique=True),
)
def test_a_secure_query_runs_exactly_when_its_columns_are_secure(
    group_by: list[str], filters: list[str]
) -> None:
    dataset = POLICY.datasets["screenings"]
    conditions = []
    for column in filters:
        rule = dataset.columns[column]
        assert isinstance(rule, CategoryRule)
        conditions.append(Comparison(column, "=", (rule.domain[0],)))
    where: Condition | None = None
    if conditions:
        where = conditions[0] if len(conditions) == 1 else BoolOp("and", tuple(conditions))
    spec = QuerySpec("screenings", SpecMeasure("count"), tuple(group_by), where, (YEAR,))
    plain = compile_query(spec, POLICY)  # every such question runs plainly
    if not set(group_by) | set(filters) <= SECURE_COLUMNS:
        with pytest.raises(QueryRefused, match=r"^secure aggregation: column"):
            compile_query(replace(spec, secure=True), POLICY)
    elif "city_code" in filters:  # the city may group a secure query, never filter it
        with pytest.raises(QueryRefused, match=r"^secure aggregation: city_code may group"):
            compile_query(replace(spec, secure=True), POLICY)
    else:
        assert compile_query(replace(spec, secure=True), POLICY).sql == plain.sql


def test_a_secure_query_may_group_by_city_but_not_filter_on_it() -> None:
    """Filtered to one city, every other city's counties would sum zeros and the release
    would be that city's counties alone, however few; grouped, each city's cell counts
    its own counties."""
    catalogue = POLICY
    year = "academic_year = '2024-2025'"
    grouped = parse_sql(
        f"SELECT city_code, COUNT(*) FROM screenings WHERE {year} GROUP BY city_code"
    )
    check_secure(replace(grouped, secure=True), catalogue)
    for where in (
        "city_code = '1302'",
        "NOT city_code IN ('1301')",
        "sex = 'F' OR city_code = '1302'",
    ):
        spec = parse_sql(f"SELECT COUNT(*) FROM screenings WHERE {year} AND ({where})")
        with pytest.raises(QueryRefused, match="city_code may group a secure query, not filter"):
            check_secure(replace(spec, secure=True), catalogue)
