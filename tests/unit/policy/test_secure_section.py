"""The [secure] section: the shipped catalogue's choice, malformed sections refused with the
file and key path, and a county document read from TOML that narrows it (or is refused)."""

from __future__ import annotations

import copy
import json
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedscreen.errors import PolicyError
from fedscreen.policy import (
    MIN_SECURE_NODES,
    CategoryRule,
    Measure,
    Override,
    Secure,
    SecureOverride,
    check_tightens,
    digest,
    load_node_policy,
    load_policy,
    merge,
    parse_override,
    parse_policy,
)

POLICIES = Path(__file__).resolve().parents[3] / "policies"
PROVINCE = POLICIES / "province.toml"
COUNTY = POLICIES / "counties" / "130102.toml"

#: what the rare outcomes of issue 14 need (self-harm ideation, comorbidity, referrals)
RARE_OUTCOMES = {
    "phq9_item9",
    "phq9_item9_2",
    "upi_item25",
    "phq9_band",
    "gad7_band",
    "referred",
    "referral_visited",
}


# --- the shipped catalogue ------------------------------------------------------------


def test_the_catalogue_allows_secure_counts_of_the_rare_outcomes() -> None:
    policy = load_policy(PROVINCE)
    secure = policy.secure
    assert secure.min_nodes == 3
    assert not secure.refused
    assert set(secure.columns) == {"screenings"}
    columns = secure.columns["screenings"]
    assert columns >= RARE_OUTCOMES | {"academic_year", "grade_band", "sex", "school_type"}
    dataset = policy.datasets["screenings"]
    assert not dataset.public
    for name in columns:
        rule = dataset.columns[name]
        assert isinstance(rule, CategoryRule), name
        assert rule.measures & {Measure.GROUP, Measure.FILTER}, name


def test_the_catalogue_never_lets_a_secure_query_name_a_county() -> None:
    """Grouping or filtering by county would make a cell one county's value."""
    columns = load_policy(PROVINCE).secure.columns["screenings"]
    assert "county_code" not in columns
    assert "school_id" not in columns
    # the small household groups stay out: collusion would reveal their exact counts
    assert not columns & {"left_behind", "boarding", "single_parent", "economic_hardship"}


def test_the_example_county_takes_part() -> None:
    """130102's document leaves secure aggregation as the province says (an example only)."""
    assert load_node_policy(PROVINCE, COUNTY).secure == load_policy(PROVINCE).secure


# --- malformed sections ---------------------------------------------------------------


def _catalogue() -> dict[str, Any]:
    category = {"kind": "category", "measures": ["group", "filter"]}
    return {
        "version": "t1",
        "limits": {
            "max_epsilon_per_query": 1.0,
            "epsilon_per_node_per_year": 10.0,
            "analyst_share": 0.5,
            "publication_threshold": 10,
            "max_groups": 100,
        },
        "datasets": {
            "screenings": {
                "period": "academic_year",
                "unit": "one student in one academic year",
                "withheld": ["school_id"],
                "columns": {
                    "academic_year": {**category, "domain": ["2024-2025"]},
                    "sex": {**category, "domain": ["M", "F"]},
                    "mode": {"kind": "category", "measures": ["count"], "domain": ["a", "b"]},
                    "phq9_total": {"kind": "numeric", "measures": ["sum"], "bounds": [0, 27]},
                },
            },
            "schools": {
                "public": True,
                "period": "academic_year",
                "columns": {"academic_year": {**category, "domain": ["2024-2025"]}},
            },
        },
        "secure": {
            "min_nodes": 3,
            "datasets": {"screenings": {"columns": ["academic_year", "sex"]}},
        },
    }


def _edit(doc: dict[str, Any], key: str, value: object) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    *parents, last = key.split(".")
    table = doc
    for part in parents:
        table = table[part]
    table[last] = value
    return doc


COLUMNS = "secure.datasets.screenings.columns"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("secure", [], "secure: must be a table"),
        ("secure", {}, "secure.min_nodes: missing"),
        (
            "secure.refuse",
            True,
            "secure.refuse: unknown key (expected one of: min_nodes, datasets)",
        ),
        ("secure.min_nodes", 1, f"secure.min_nodes: must be an integer >= {MIN_SECURE_NODES}"),
        ("secure.min_nodes", 3.0, "secure.min_nodes: must be an integer >= 2"),
        ("secure.min_nodes", True, "secure.min_nodes: must be an integer >= 2"),
        ("secure.datasets", {}, "secure.datasets: must be a non-empty table"),
        (
            "secure.datasets.screening",
            {"columns": ["sex"]},
            "secure.datasets.screening: not one of the catalogue's datasets",
        ),
        (
            "secure.datasets.schools",
            {"columns": ["academic_year"]},
            "secure.datasets.schools: public data is released exactly: "
            "it needs no secure aggregation",
        ),
        (
            "secure.datasets.screenings",
            {"columns": ["sex"], "refuse": True},
            "secure.datasets.screenings.refuse: unknown key (expected one of: columns)",
        ),
        ("secure.datasets.screenings", {}, f"{COLUMNS}: missing"),
        (COLUMNS, [], f"{COLUMNS}: must be a non-empty list of column names"),
        (COLUMNS, "sex", f"{COLUMNS}: must be a list of column names"),
        (COLUMNS, ["sex", "sex"], f'{COLUMNS}: "sex" is listed twice'),
        (COLUMNS, ["Sex"], f'{COLUMNS}: "Sex" is not a column name'),
        (
            COLUMNS,
            ["grade"],
            f"{COLUMNS}: 'grade' is not one of its columns in datasets.screenings",
        ),
        (COLUMNS, ["school_id"], f"{COLUMNS}: 'school_id' is withheld in datasets.screenings"),
        (
            COLUMNS,
            ["phq9_total"],
            f"{COLUMNS}: 'phq9_total' is numeric: secure queries use category columns only",
        ),
        (COLUMNS, ["mode"], f"{COLUMNS}: 'mode' allows neither 'group' nor 'filter'"),
    ],
)
def test_malformed_secure_section(key: str, value: object, message: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy(_edit(_catalogue(), key, value), source="province.toml")
    assert str(err.value) == f"province.toml: {message}"


def test_the_fixture_is_valid_and_without_a_section_nothing_is_secure() -> None:
    policy = parse_policy(_catalogue(), source="province.toml")
    assert policy.secure == Secure(
        min_nodes=3, columns={"screenings": frozenset({"academic_year", "sex"})}
    )
    bare = _catalogue()
    del bare["secure"]
    assert parse_policy(bare, source="province.toml").secure == Secure()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("secure", "no", "secure: must be a table"),
        ("secure.refuse", "yes", "secure.refuse: must be true or false"),
        ("secure.min_nodes", 0, "secure.min_nodes: must be an integer >= 2"),
        (
            "secure.refused",
            True,
            "secure.refused: unknown key (expected one of: refuse, min_nodes, datasets)",
        ),
        ("secure.datasets", [], "secure.datasets: must be a table"),
        (
            "secure.datasets.Screenings",
            {"columns": []},
            "secure.datasets.Screenings: names must be lowercase identifiers ([a-z][a-z0-9_]*)",
        ),
        ("secure.datasets.screenings", {}, f"{COLUMNS}: missing"),
        (COLUMNS, "sex", f"{COLUMNS}: must be a list of column names"),
        (COLUMNS, [1], f"{COLUMNS}: 1 is not a column name"),
    ],
)
def test_malformed_county_secure_section(key: str, value: object, message: str) -> None:
    doc: dict[str, Any] = {
        "version": "c1",
        "secure": {"datasets": {"screenings": {"columns": ["sex"]}}},
    }
    with pytest.raises(PolicyError) as err:
        parse_override(_edit(doc, key, value), source="130102.toml")
    assert str(err.value) == f"130102.toml: {message}"


def test_a_county_refusing_secure_queries(tmp_path: Path) -> None:
    county = tmp_path / "130102.toml"
    county.write_text('version = "c1"\n[secure]\nrefuse = true\n', encoding="utf-8")
    policy = load_node_policy(PROVINCE, county)
    province = load_policy(PROVINCE)
    assert policy.secure == Secure(
        min_nodes=province.secure.min_nodes, columns=province.secure.columns, refused=True
    )
    assert policy.secure.allows("screenings") == frozenset()
    # the refusal is part of what the node states in every answer
    assert digest(policy) != digest(replace(policy, secure=province.secure))


def test_a_county_loosening_secure_aggregation_is_refused(tmp_path: Path) -> None:
    county = tmp_path / "130102.toml"
    county.write_text(
        'version = "c1"\n[secure]\nmin_nodes = 2\n'
        "[secure.datasets.screenings]\ncolumns = ['sex', 'county_code', 'left_behind']\n"
        "[secure.datasets.schools]\ncolumns = ['academic_year']\n"
        "[secure.datasets.nope]\ncolumns = []\n",
        encoding="utf-8",
    )
    with pytest.raises(PolicyError) as err:
        load_node_policy(PROVINCE, county)
    assert str(err.value).splitlines() == [
        f"{county}: secure.min_nodes: 2 is below the provincial 3",
        f"{county}: secure.datasets.nope: not in the provincial catalogue",
        f"{county}: secure.datasets.schools.columns: 'academic_year' not allowed in secure "
        "queries by the province",
        f"{county}: secure.datasets.screenings.columns: 'county_code', 'left_behind' not "
        "allowed in secure queries by the province",
        f"{county}: a county policy may only tighten the provincial catalogue",
    ]


# --- TOML → override → merge, for any county section ------------------------------------

_PROVINCE = load_policy(PROVINCE)
_SECURE_COLUMNS = sorted(_PROVINCE.secure.columns["screenings"])
_OTHER_COLUMNS = sorted(set(_PROVINCE.datasets["screenings"].columns) - set(_SECURE_COLUMNS))


def _toml(secure: dict[str, Any]) -> str:
    """A county document holding ``secure`` (json.dumps writes TOML's strings and lists)."""
    lines = ['version = "c1"', "[secure]"]
    for key in ("refuse", "min_nodes"):
        if key in secure:
            lines.append(f"{key} = {json.dumps(secure[key])}")
    for name, columns in secure.get("datasets", {}).items():
        lines += [f"[secure.datasets.{name}]", f"columns = {json.dumps(columns)}"]
    return "\n".join(lines) + "\n"


@st.composite
def county_sections(draw: st.DrawFn) -> dict[str, Any]:
    """A county's [secure] section: tightening, or (sometimes) loosening somewhere."""
    section: dict[str, Any] = {}
    if draw(st.booleans()):
        section["refuse"] = draw(st.booleans())
    if draw(st.booleans()):
        section["min_nodes"] = draw(st.integers(MIN_SECURE_NODES, 8))
    if draw(st.booleans()):
        pool = _SECURE_COLUMNS + (_OTHER_COLUMNS if draw(st.booleans()) else [])
        section["datasets"] = {"screenings": draw(st.lists(st.sampled_from(pool), unique=True))}
    return section


@settings(deadline=None)  # shared CI machines: a slow example is not a bug
@given(county_sections())
def test_a_county_section_reads_back_and_only_tightens(section: dict[str, Any]) -> None:
    text = _toml(section)
    county = parse_override(tomllib.loads(text), source="c.toml")
    columns = section.get("datasets", {}).get("screenings")
    assert county == Override(
        version="c1",
        secure=SecureOverride(
            refuse=section.get("refuse", False),
            min_nodes=section.get("min_nodes"),
            columns={} if columns is None else {"screenings": frozenset(columns)},
        ),
    )
    province = _PROVINCE.secure
    loosens = section.get("min_nodes", province.min_nodes) < province.min_nodes or (
        columns is not None and not set(columns) <= set(_SECURE_COLUMNS)
    )
    if loosens:
        with pytest.raises(PolicyError, match=r"^c\.toml: secure\.") as err:
            check_tightens(_PROVINCE, county, source="c.toml")
        assert str(err.value).endswith("a county policy may only tighten the provincial catalogue")
        return
    check_tightens(_PROVINCE, county, source="c.toml")
    merged = merge(_PROVINCE, county).secure
    assert merged.refused == section.get("refuse", False)
    assert merged.min_nodes == max(province.min_nodes, section.get("min_nodes", 0))
    kept = province.columns["screenings"] if columns is None else frozenset(columns)
    assert merged.columns == ({"screenings": kept} if kept else {})
    assert merged.allows("screenings") == (frozenset() if merged.refused else kept)


toml_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=5)
    | st.sampled_from(["sex", "academic_year", "phq9_total", "schools", "screenings"]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
SECURE_PATHS = [
    "secure",
    "secure.min_nodes",
    "secure.refuse",
    "secure.datasets",
    "secure.datasets.screenings",
    "secure.datasets.schools",
    COLUMNS,
]


@settings(deadline=None)  # shared CI machines: a slow example is not a bug
@given(st.sampled_from(SECURE_PATHS), toml_values)
def test_any_secure_edit_parses_or_is_a_policy_error(key: str, value: object) -> None:
    """Whatever the section holds, the loader answers with a policy or a PolicyError."""
    doc = _edit(_catalogue(), key, value)
    for parse, source in ((parse_policy, "province.toml"), (parse_override, "c.toml")):
        if parse is parse_override:
            doc = {"version": "c1", "secure": doc["secure"]}
        message = f"{source}: (parsed)"
        try:
            parse(doc, source=source)
        except PolicyError as err:
            message = str(err)
        assert message.startswith(f"{source}: ")
