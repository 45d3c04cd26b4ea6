"""Policy documents: the shipped ones load and agree with the data; malformed ones are refused
with the file and key path."""

from __future__ import annotations

import copy
import csv
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fedscreen.policy
from fedscreen.errors import PolicyError
from fedscreen.node.store import view_columns
from fedscreen.policy import (
    CategoryRule,
    Measure,
    NumericRule,
    default_policy_dir,
    load_node_policy,
    load_override,
    load_policy,
    loosenings,
    parse_override,
    parse_policy,
)
from fedscreen.screening import exports
from fedscreen.screening.instruments import instruments

POLICIES = Path(__file__).resolve().parents[3] / "policies"
PROVINCE = POLICIES / "province.toml"
COUNTY = POLICIES / "counties" / "130102.toml"
DIVISIONS = Path(__file__).resolve().parents[4] / "shared" / "data" / "hebei_divisions.csv"

DELETE = object()


def test_exported_names() -> None:
    assert fedscreen.policy.__all__ == [
        "CATEGORY_MEASURES",
        "MIN_SECURE_NODES",
        "NODE_KINDS",
        "NUMERIC_MEASURES",
        "CategoryRule",
        "ColumnOverride",
        "ColumnRule",
        "Dataset",
        "DatasetOverride",
        "Limits",
        "LimitsOverride",
        "Measure",
        "NumericRule",
        "Override",
        "Policy",
        "Secure",
        "SecureOverride",
        "Value",
        "answers_secure",
        "as_override",
        "canonical_json",
        "check_tightens",
        "county_policy_path",
        "default_policy_dir",
        "digest",
        "for_kind",
        "held",
        "load_node_policy",
        "load_override",
        "load_policy",
        "loosenings",
        "merge",
        "parse_override",
        "parse_policy",
        "secure_answerers",
    ]


# --- the shipped documents ------------------------------------------------------------


def test_the_editable_examples_are_what_ships() -> None:
    """``policies/`` (editable examples) holds exactly the documents the package ships."""
    shipped = default_policy_dir()
    assert shipped == Path(fedscreen.policy.__file__).resolve().parent / "catalogue"
    names = sorted(p.relative_to(shipped) for p in shipped.rglob("*.toml"))
    examples = sorted(p.relative_to(POLICIES) for p in POLICIES.rglob("*.toml"))
    assert names == examples
    assert [str(n) for n in names] == [
        "counties/130102.toml",
        "province.toml",
        "reports/annual.toml",
    ]
    for name in names:
        assert (shipped / name).read_bytes() == (POLICIES / name).read_bytes(), name


def test_province_loads() -> None:
    policy = load_policy(PROVINCE)
    screenings = policy.datasets["screenings"]
    assert not screenings.public
    assert screenings.unit == "one student in one academic year"
    assert screenings.period == "academic_year"
    assert "school_id" in screenings.withheld
    assert policy.datasets["school_grades"].public
    assert policy.limits.max_epsilon_per_query <= policy.limits.epsilon_per_node_per_year


def test_every_view_column_is_listed_or_withheld() -> None:
    screenings = load_policy(PROVINCE).datasets["screenings"]
    assert set(screenings.columns) | screenings.withheld == set(view_columns())


def _expected_domains() -> dict[str, set[object]]:
    expected: dict[str, set[object]] = {
        "school_type": set(exports.SCHOOL_TYPES),
        "location": set(exports.LOCATIONS),
        "grade": set(exports.GRADES),
        "grade_band": set(exports.GRADE_BANDS),
        "sex": set(exports.SEXES),
        "age_band": {label for label, _, _ in exports.AGE_BANDS},
        "participation": set(exports.PARTICIPATION),
        "mode": set(exports.MODES),
        "warning_level": set(exports.WARNING_LEVELS),
        "warning_status": set(exports.WARNING_STATUSES),
        "plan_status": set(exports.PLAN_STATUSES),
    }
    for code, instrument in instruments().items():
        expected[f"{code}_band"] = set(instrument.band_labels)
    return expected


def test_domains_follow_the_vocabularies_and_instruments() -> None:
    policy = load_policy(PROVINCE)
    expected = _expected_domains()
    for dataset in policy.datasets.values():
        for name, rule in dataset.columns.items():
            if not isinstance(rule, CategoryRule) or name in ("academic_year", "county_code"):
                continue
            if name == "city_code":  # every county code's city, and no other
                counties = dataset.columns["county_code"]
                assert isinstance(counties, CategoryRule)
                assert set(rule.domain) == {str(c)[:4] for c in counties.domain}
                continue
            assert set(rule.domain) == expected.get(name, {0, 1}), name


def test_instrument_totals_clamp_to_their_range() -> None:
    columns = load_policy(PROVINCE).datasets["screenings"].columns
    for code, instrument in instruments().items():
        rule = columns[f"{code}_total"]
        assert isinstance(rule, NumericRule)
        assert rule.bounds == (0, instrument.max_total)


@pytest.mark.skipif(not DIVISIONS.is_file(), reason="shared reference data not present")
def test_county_codes_are_hebeis() -> None:
    rule = load_policy(PROVINCE).datasets["screenings"].columns["county_code"]
    with DIVISIONS.open(encoding="utf-8") as f:
        codes = [row["code"] for row in csv.DictReader(f)]
    assert isinstance(rule, CategoryRule)
    assert list(rule.domain) == codes


def test_county_document_only_tightens() -> None:
    province = load_policy(PROVINCE)
    assert loosenings(province, load_override(COUNTY)) == []
    policy = load_node_policy(PROVINCE, COUNTY)
    screenings = policy.datasets["screenings"]
    assert policy.limits.max_epsilon_per_query < province.limits.max_epsilon_per_query
    assert policy.limits.publication_threshold > province.limits.publication_threshold
    assert policy.overrides == {"130102-2025.1"}
    assert "economic_hardship" in screenings.withheld
    assert Measure.GROUP not in screenings.columns["left_behind"].measures
    assert screenings.columns["county_code"] == CategoryRule(
        domain=("130102",), measures=frozenset({Measure.GROUP, Measure.FILTER})
    )


def test_node_policy_without_county_is_the_province() -> None:
    assert load_node_policy(PROVINCE) == load_policy(PROVINCE)


# --- malformed catalogues -------------------------------------------------------------


def _catalogue() -> dict[str, Any]:
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
                "columns": {
                    "academic_year": {
                        "kind": "category",
                        "measures": ["group", "filter"],
                        "domain": ["2024-2025"],
                    },
                    "sex": {
                        "kind": "category",
                        "measures": ["group", "filter"],
                        "domain": ["M", "F"],
                    },
                    "phq9_total": {
                        "kind": "numeric",
                        "measures": ["filter", "sum", "quantile"],
                        "bounds": [0, 27],
                        "candidates": [0, 10, 27],
                    },
                },
            }
        },
    }


def _edit(doc: dict[str, Any], key: str, value: object) -> dict[str, Any]:
    """A copy of ``doc`` with the value at dotted ``key`` replaced (or deleted)."""
    doc = copy.deepcopy(doc)
    *parents, last = key.split(".")
    table = doc
    for part in parents:
        table = table[part]
    if value is DELETE:
        del table[last]
    else:
        table[last] = value
    return doc


SEX = "datasets.screenings.columns.sex"
PHQ9 = "datasets.screenings.columns.phq9_total"
NEEDS_KIND = 'missing: must be "category" or "numeric"'


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("version", DELETE, "version: missing"),
        ("version", "", "version: must be a non-empty string"),
        (
            "extra",
            1,
            "extra: unknown key (expected one of: version, limits, datasets, secure, kinds)",
        ),
        ("limits", [], "limits: must be a table"),
        (
            "limits.max_epsilon_per_query",
            -1,
            "limits.max_epsilon_per_query: must be a finite number > 0",
        ),
        (
            "limits.max_epsilon_per_query",
            float("nan"),
            "limits.max_epsilon_per_query: must be a finite number > 0",
        ),
        ("limits.max_epsilon_per_query", True, "limits.max_epsilon_per_query: must be a number"),
        (
            "limits.max_epsilon_per_query",
            20,
            "limits.max_epsilon_per_query: must not exceed epsilon_per_node_per_year (10.0)",
        ),
        ("limits.epsilon_per_node_per_year", DELETE, "limits.epsilon_per_node_per_year: missing"),
        ("limits.analyst_share", 1.5, "limits.analyst_share: must be a fraction in (0, 1]"),
        (
            "limits.publication_threshold",
            2.5,
            "limits.publication_threshold: must be an integer >= 0",
        ),
        ("limits.max_groups", 0, "limits.max_groups: must be an integer >= 1"),
        ("limits.analysts", {"a.b": 2}, 'limits.analysts."a.b": must be a fraction in (0, 1]'),
        (
            "limits.approval_above_epsilon",
            0,
            "limits.approval_above_epsilon: must be a finite number > 0",
        ),
        (
            "limits.max_eps",
            1,
            "limits.max_eps: unknown key (expected one of: max_epsilon_per_query, "
            "epsilon_per_node_per_year, analyst_share, publication_threshold, max_groups, "
            "analysts, approval_above_epsilon, offline_window_days)",
        ),
        ("datasets", {}, "datasets: must be a non-empty table"),
        (
            "datasets.Screenings",
            {},
            "datasets.Screenings: names must be lowercase identifiers ([a-z][a-z0-9_]*)",
        ),
        (
            "datasets.screenings.unit",
            DELETE,
            "datasets.screenings.unit: missing: "
            "a non-public dataset must state its unit of privacy",
        ),
        ("datasets.screenings.public", "no", "datasets.screenings.public: must be true or false"),
        (
            "datasets.screenings.period",
            "year",
            "datasets.screenings.period: 'year' is not one of this dataset's columns",
        ),
        (
            "datasets.screenings.columns.academic_year.measures",
            ["group"],
            "datasets.screenings.period: "
            "column 'academic_year' must allow 'filter' (queries select periods)",
        ),
        (
            "datasets.screenings.withheld",
            ["sex"],
            "datasets.screenings.withheld: 'sex' is also listed under columns",
        ),
        (
            "datasets.screenings.withheld",
            ["Bad-Name"],
            'datasets.screenings.withheld: "Bad-Name" is not a column name',
        ),
        (
            "datasets.screenings.columns",
            {},
            "datasets.screenings.columns: must be a non-empty table",
        ),
        (f"{SEX}.domain", [], f"{SEX}.domain: must be a non-empty list"),
        (f"{SEX}.domain", "M", f"{SEX}.domain: must be a non-empty list"),
        (f"{SEX}.domain", ["M", 1], f"{SEX}.domain: values must be all strings or all integers"),
        (
            f"{SEX}.domain",
            [True, False],
            f"{SEX}.domain: values must be all strings or all integers",
        ),
        (f"{SEX}.domain", ["M", "M"], f'{SEX}.domain: "M" is listed twice'),
        (f"{SEX}.kind", "text", f'{SEX}.kind: must be "category" or "numeric", not "text"'),
        (f"{SEX}.kind", DELETE, f"{SEX}.kind: {NEEDS_KIND}"),
        (
            f"{SEX}.measures",
            ["sum"],
            f'{SEX}.measures: "sum" is not a measure for this kind of column '
            "(allowed: count, filter, group)",
        ),
        (f"{SEX}.measures", ["group", "group"], f'{SEX}.measures: "group" is listed twice'),
        (
            f"{SEX}.bounds",
            [0, 1],
            f"{SEX}.bounds: unknown key (expected one of: kind, measures, domain)",
        ),
        (f"{PHQ9}.bounds", DELETE, f"{PHQ9}.bounds: missing"),
        (f"{PHQ9}.bounds", [27, 0], f"{PHQ9}.bounds: low 27 is above high 0"),
        (f"{PHQ9}.bounds", [0, 27.0], f"{PHQ9}.bounds: values must be integers"),
        (f"{PHQ9}.bounds", [0], f"{PHQ9}.bounds: must be [low, high]"),
        (f"{PHQ9}.candidates", DELETE, f"{PHQ9}.candidates: missing: 'quantile' needs candidates"),
        (f"{PHQ9}.candidates", [0, 30], f"{PHQ9}.candidates: must lie within bounds [0, 27]"),
        (f"{PHQ9}.candidates", [10, 0], f"{PHQ9}.candidates: must be strictly increasing"),
        (
            f"{PHQ9}.measures",
            ["filter"],
            f"{PHQ9}.candidates: given, but 'quantile' is not among the measures",
        ),
        (
            f"{PHQ9}.measures",
            ["group"],
            f'{PHQ9}.measures: "group" is not a measure for this kind of column '
            "(allowed: count, filter, mean, quantile, sum)",
        ),
        (
            f"{PHQ9}.domain",
            [1],
            f"{PHQ9}.domain: unknown key (expected one of: kind, measures, bounds, candidates)",
        ),
    ],
)
def test_malformed_catalogue(key: str, value: object, message: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy(_edit(_catalogue(), key, value), source="province.toml")
    assert str(err.value) == f"province.toml: {message}"


def test_the_catalogue_fixture_is_valid() -> None:
    policy = parse_policy(_catalogue(), source="province.toml")
    assert policy.datasets["screenings"].columns["phq9_total"] == NumericRule(
        bounds=(0, 27),
        measures=frozenset({Measure.FILTER, Measure.SUM, Measure.QUANTILE}),
        candidates=(0, 10, 27),
    )


def _paths(doc: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, value in doc.items():
        paths.append(prefix + key)
        if isinstance(value, dict):
            paths.extend(_paths(value, f"{prefix}{key}."))
    return paths


toml_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=5)
    | st.sampled_from(["category", "numeric", "group", "quantile"]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(deadline=None)  # shared CI machines: a slow example is not a bug
@given(st.sampled_from(_paths(_catalogue())), toml_values)
def test_any_edit_parses_or_is_a_policy_error(key: str, value: object) -> None:
    """Whatever a document holds, the loader answers with a policy or a PolicyError."""
    doc = _edit(_catalogue(), key, value)
    for parse, source in ((parse_policy, "province.toml"), (parse_override, "c.toml")):
        message = f"{source}: (parsed)"
        try:
            parse(doc, source=source)
        except PolicyError as err:
            message = str(err)
        assert message.startswith(f"{source}: ")


# --- malformed county documents -------------------------------------------------------

COUNTY_SEX = "datasets.screenings.columns.sex"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("version", DELETE, "version: missing"),
        ("limits.max_groups", 0, "limits.max_groups: must be an integer >= 1"),
        ("limits.analyst_share", 2, "limits.analyst_share: must be a fraction in (0, 1]"),
        (
            "datasets.screenings.public",
            True,
            "datasets.screenings.public: unknown key (expected one of: withheld, columns)",
        ),
        (
            f"{COUNTY_SEX}.kind",
            "category",
            f"{COUNTY_SEX}.kind: unknown key "
            "(expected one of: measures, domain, bounds, candidates)",
        ),
        (f"{COUNTY_SEX}.domain", [], f"{COUNTY_SEX}.domain: must be a non-empty list"),
        (
            f"{COUNTY_SEX}.measures",
            ["median"],
            f'{COUNTY_SEX}.measures: "median" is not a measure '
            "(allowed: count, filter, group, mean, quantile, sum)",
        ),
        (
            "datasets.screenings.withheld",
            "sex",
            "datasets.screenings.withheld: must be a list of column names",
        ),
    ],
)
def test_malformed_county_document(key: str, value: object, message: str) -> None:
    doc: dict[str, Any] = {
        "version": "c1",
        "limits": {},
        "datasets": {"screenings": {"columns": {"sex": {"measures": ["filter"]}}}},
    }
    with pytest.raises(PolicyError) as err:
        parse_override(_edit(doc, key, value), source="130102.toml")
    assert str(err.value) == f"130102.toml: {message}"


# --- files ----------------------------------------------------------------------------


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "province.toml"
    path.write_text("version = \n", encoding="utf-8")
    with pytest.raises(PolicyError, match=r"province\.toml: invalid TOML: "):
        load_policy(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"nope\.toml: cannot read"):
        load_policy(tmp_path / "nope.toml")


def test_errors_name_the_file_given(tmp_path: Path) -> None:
    text = PROVINCE.read_text(encoding="utf-8")
    line = 'sex = { kind = "category", measures = ["group", "filter"], domain = ["M", "F"] }'
    assert line in text
    path = tmp_path / "province.toml"
    path.write_text(text.replace(line, line.replace('["M", "F"]', "[]")), encoding="utf-8")
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert (
        str(err.value)
        == f"{path}: datasets.screenings.columns.sex.domain: must be a non-empty list"
    )


def test_a_loosening_county_document_is_refused(tmp_path: Path) -> None:
    county = tmp_path / "130102.toml"
    county.write_text(
        'version = "bad"\n'
        "[limits]\nmax_epsilon_per_query = 2.0\n"
        "[datasets.screenings]\nwithheld = ['left_behnd']\n"
        "[datasets.screenings.columns]\n"
        "sex = { domain = ['M', 'F', 'X'] }\n"
        "phq9_total = { bounds = [0, 30] }\n"
        "school_id = { measures = ['group'] }\n",
        encoding="utf-8",
    )
    with pytest.raises(PolicyError) as err:
        load_node_policy(PROVINCE, county)
    at = "datasets.screenings"
    assert str(err.value).splitlines() == [
        f"{county}: limits.max_epsilon_per_query: 2.0 is above the provincial 1.0",
        f"{county}: {at}.withheld: 'left_behnd' is not a column of the provincial catalogue",
        f"{county}: {at}.columns.phq9_total.bounds: [0, 30] is wider than the provincial [0, 27]",
        f"{county}: {at}.columns.school_id: not a queryable column of the catalogue",
        f"{county}: {at}.columns.sex.domain: 'X' not in the provincial domain",
        f"{county}: a county policy may only tighten the provincial catalogue",
    ]
