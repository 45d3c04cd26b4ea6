"""[kinds]: which columns each kind of node holds — parsing, a county narrowing only,
the digest, and the compiler's refusal of a column a kind does not hold."""

from __future__ import annotations

import copy
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedscreen.errors import PolicyError, QueryRefused
from fedscreen.policy import (
    NODE_KINDS,
    answers_secure,
    digest,
    for_kind,
    held,
    load_node_policy,
    loosenings,
    merge,
    parse_override,
    parse_policy,
    secure_answerers,
)
from fedscreen.query.compile import compile_query
from fedscreen.query.sqlparse import parse_sql

POLICIES = Path(__file__).resolve().parents[3] / "policies"
PROVINCE = POLICIES / "province.toml"
COUNTY = POLICIES / "counties" / "130102.toml"
DOC: dict[str, Any] = tomllib.loads(PROVINCE.read_text(encoding="utf-8"))
CATALOGUE = parse_policy(DOC, source="province.toml")
SCREENING_COLUMNS = sorted(CATALOGUE.datasets["screenings"].columns)
MHT = {"mht_total", "mht_band", "mht_valid", "mht_positive", "mht_scale_high"}
UPI = {"upi_total", "upi_band", "upi_valid", "upi_item25"}
YEAR = "WHERE academic_year = '2024-2025'"


def _with_kinds(kinds: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(DOC)
    doc["kinds"] = kinds
    return doc


def test_the_shipped_catalogue_says_what_each_kind_holds() -> None:
    every = set(SCREENING_COLUMNS)
    assert held(CATALOGUE, "county", "screenings") == every
    university = held(CATALOGUE, "university", "screenings")
    assert not university & (MHT | {"left_behind", "boarding", "county_code", "city_code"})
    assert university >= UPI
    assert held(CATALOGUE, "school", "screenings") == every - UPI
    # the public school tables: every kind holds all of them (its own rows, by ingest)
    for kind in NODE_KINDS:
        assert held(CATALOGUE, kind, "schools") == set(CATALOGUE.datasets["schools"].columns)


def test_a_node_policy_keeps_only_its_kinds_columns() -> None:
    university = load_node_policy(PROVINCE, kind="university")
    screenings = university.datasets["screenings"]
    assert university.kind == "university"
    assert screenings.held_by == "university"
    assert set(screenings.columns) == held(CATALOGUE, "university", "screenings")
    assert screenings.not_held == set(SCREENING_COLUMNS) - set(screenings.columns)
    # a secure query may not use what the node does not hold either
    assert "city_code" not in university.secure.allows("screenings")
    county = load_node_policy(PROVINCE, COUNTY, kind="county")
    assert county.datasets["screenings"].not_held == frozenset()
    assert county.overrides == {"130102-2025.1"}


@pytest.mark.parametrize(
    ("column", "sql"),
    [
        ("mht_total", f"SELECT COUNT(*) FROM screenings {YEAR} AND mht_total >= 65"),
        ("mht_band", f"SELECT mht_band, COUNT(*) FROM screenings {YEAR} GROUP BY mht_band"),
        ("mht_positive", f"SELECT COUNT(*) FROM screenings {YEAR} AND mht_positive = 1"),
        ("left_behind", f"SELECT COUNT(*) FROM screenings {YEAR} AND left_behind = 1"),
        (
            "county_code",
            f"SELECT county_code, COUNT(*) FROM screenings {YEAR} GROUP BY county_code",
        ),
    ],
)
def test_a_university_refuses_what_it_does_not_hold(column: str, sql: str) -> None:
    policy = load_node_policy(PROVINCE, kind="university")
    spec = parse_sql(sql)
    with pytest.raises(QueryRefused) as err:
        compile_query(spec, policy)
    assert str(err.value) == f"column {column} is not held by a university node"
    # the county node holds it: the same query compiles
    compile_query(spec, load_node_policy(PROVINCE, kind="county"))


def test_a_university_answers_the_upi_table() -> None:
    sql = (
        f"SELECT upi_band, sex, COUNT(*) FROM screenings {YEAR} AND upi_valid = 1 "
        "GROUP BY upi_band, sex"
    )
    plan = compile_query(parse_sql(sql), load_node_policy(PROVINCE, kind="university"))
    assert len(plan.cells) == 6
    with pytest.raises(QueryRefused, match="upi_band is not held by a school node"):
        compile_query(parse_sql(sql), load_node_policy(PROVINCE, COUNTY, kind="school"))


def test_kinds_change_the_digest_and_a_policy_without_them_keeps_its_own() -> None:
    plain = parse_policy({k: v for k, v in DOC.items() if k != "kinds"}, source="p")
    assert digest(CATALOGUE) != digest(plain)
    # a county holds everything: it enforces the policy itself, digest unchanged
    assert for_kind(CATALOGUE, "county") is CATALOGUE
    assert digest(for_kind(CATALOGUE, "university")) != digest(CATALOGUE)
    assert digest(for_kind(CATALOGUE, "university")) != digest(for_kind(CATALOGUE, "school"))
    assert digest(for_kind(CATALOGUE, "university")) == digest(for_kind(CATALOGUE, "university"))


@pytest.mark.parametrize(
    ("kinds", "message"),
    [
        ({"province": {}}, "kinds.province: not a kind of node"),
        ({"school": {"tables": {}}}, "kinds.school.tables: unknown key"),
        ({"school": {"datasets": {"nope": ["academic_year"]}}}, "not one of the catalogue's"),
        (
            {"school": {"datasets": {"screenings": ["academic_year", "shoe_size"]}}},
            "'shoe_size' is not one of the columns of datasets.screenings",
        ),
        (
            {"university": {"datasets": {"screenings": ["sex"]}}},
            "must hold the period column 'academic_year'",
        ),
        ({"school": {"datasets": {"screenings": "sex"}}}, "must be a list of column names"),
        ({"school": {"datasets": {"screenings": ["sex", "sex"]}}}, "listed twice"),
    ],
)
def test_malformed_kinds_are_refused(kinds: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy(_with_kinds(kinds), source="province.toml")


def test_an_unknown_kind_is_refused_when_restricting() -> None:
    with pytest.raises(PolicyError, match="node kind 'city'"):
        for_kind(CATALOGUE, "city")


_subsets = st.lists(st.sampled_from(SCREENING_COLUMNS), unique=True).map(
    lambda cols: sorted({"academic_year", *cols})
)


@settings(max_examples=60, deadline=None)
@given(catalogue=_subsets, county=_subsets, kind=st.sampled_from(NODE_KINDS))
def test_a_county_document_only_narrows_what_a_kind_holds(
    catalogue: list[str], county: list[str], kind: str
) -> None:
    province = parse_policy(
        _with_kinds({kind: {"datasets": {"screenings": catalogue}}}), source="p"
    )
    override = parse_override(
        {"version": "c-1", "kinds": {kind: {"datasets": {"screenings": county}}}}, source="c"
    )
    merged = merge(province, override)
    assert held(merged, kind, "screenings") == set(catalogue) & set(county)
    # a column the catalogue does not give the kind is a loosening, named
    wider = set(county) - set(catalogue)
    found = loosenings(province, override)
    assert bool(found) == bool(wider)
    for column in wider:
        assert any(repr(column) in line for line in found)
    # restricting the merged policy never holds more than either document allows
    restricted = for_kind(merged, kind).datasets["screenings"]
    assert set(restricted.columns) <= set(catalogue) & set(county)
    assert set(restricted.columns) | restricted.not_held == set(SCREENING_COLUMNS)


def test_a_county_document_widening_a_kind_stops_the_node(tmp_path: Path) -> None:
    county = tmp_path / "130102.toml"
    county.write_text(
        'version = "c-1"\n[kinds.university.datasets]\n'
        'screenings = ["academic_year", "mht_total"]\n',
        encoding="utf-8",
    )
    with pytest.raises(PolicyError, match="'mht_total' not held by a university node"):
        load_node_policy(PROVINCE, county, kind="university")


def test_a_school_node_answers_no_secure_query_and_the_others_do() -> None:
    """A county with two school nodes must not make a three-node secure release on its
    own: school nodes refuse secure queries (their plain answers stand)."""
    sql = f"SELECT sex, COUNT(*) FROM screenings {YEAR} AND phq9_valid = 1 GROUP BY sex"
    secure = replace(parse_sql(sql), secure=True)
    school = load_node_policy(PROVINCE, kind="school")
    with pytest.raises(QueryRefused, match="a school node answers no secure query"):
        compile_query(secure, school)
    assert compile_query(parse_sql(sql), school).cells
    for kind in ("county", "university"):
        assert compile_query(secure, load_node_policy(PROVINCE, kind=kind)).cells


def test_one_rule_says_which_nodes_answer_secure_queries() -> None:
    """The coordinator's early floor and a report's are counted by the rule the node's
    own policy follows (for_kind): a node refuses a secure query exactly when it is not
    counted."""
    levels = {"130102": "county", "130102-s": "school", "10094": "university", "old": ""}
    assert secure_answerers(levels, ["130102-s", "10094", "130102", "old", "unknown"]) == [
        "10094", "130102", "old", "unknown",
    ]  # fmt: skip
    for kind in NODE_KINDS:
        policy = load_node_policy(PROVINCE, kind=kind)
        assert policy.secure.refused == (not answers_secure(kind))
