"""The offline window: how old a query carried by file may be when an offline node answers.

The provincial catalogue sets it (``[limits] offline_window_days``, default 30 days), a
county may only shorten it, and it enters the policy digest only when it is not 30, so
every digest made before it existed stays the same.
"""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedscreen.errors import PolicyError
from fedscreen.policy import (
    Limits,
    LimitsOverride,
    Override,
    Policy,
    as_override,
    canonical_json,
    default_policy_dir,
    digest,
    load_node_policy,
    load_policy,
    loosenings,
    merge,
    parse_override,
    parse_policy,
)

POLICIES = Path(__file__).resolve().parents[3] / "policies"
DAY_MS = 86_400_000
KEY = "offline_window_days"

#: digests of the shipped documents computed before the offline window existed: signed
#: answers, logs and test vectors carry them, so the new limit must leave them unchanged
PROVINCE_DIGEST = "sha256:ceeb0cdc2d55ca23f76d831727673caa22cd95b9b7dab6afdcc03f8f5b6dafed"
NODE_130102_DIGEST = "sha256:4e5c99861424e75a8ccb7e8ea1a351bd94ba0871896bfd87a04166d9d58552ce"
UNIVERSITY_130102_DIGEST = "sha256:494494a1e146793d7f9777fa33d0432985b8494815026e2826024348eefe8654"

#: the shipped catalogue, parsed: documents below are edits of it
CATALOGUE: dict[str, Any] = tomllib.loads((POLICIES / "province.toml").read_text(encoding="utf-8"))

days = st.integers(min_value=1, max_value=366)
not_days = st.one_of(
    st.integers(max_value=0),
    st.integers(min_value=367),
    st.booleans(),
    st.floats(allow_nan=True),
    st.text(max_size=5),
    st.lists(st.integers(1, 366), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(1, 366), max_size=2),
)


def _province(window: object | None = None) -> Policy:
    document = copy.deepcopy(CATALOGUE)
    if window is not None:
        document["limits"][KEY] = window
    return parse_policy(document, source="province.toml")


def _county(window: object | None = None) -> Override:
    limits = {} if window is None else {KEY: window}
    return parse_override({"version": "c1", "limits": limits}, source="county.toml")


def _limits_json(policy: Policy) -> dict[str, Any]:
    limits: dict[str, Any] = json.loads(canonical_json(policy))["limits"]
    return limits


# --- the shipped documents --------------------------------------------------------------


@pytest.mark.parametrize("directory", [POLICIES, default_policy_dir()], ids=["examples", "shipped"])
def test_the_shipped_digests_are_unchanged(directory: Path) -> None:
    province, county = directory / "province.toml", directory / "counties" / "130102.toml"
    policy = load_policy(province)
    assert policy.limits.offline_window_days == 30
    assert policy.limits.offline_window_ms == 30 * DAY_MS == 2_592_000_000
    assert KEY not in _limits_json(policy)
    assert digest(policy) == PROVINCE_DIGEST
    node = load_node_policy(province, county)
    assert node.limits.offline_window_ms == 30 * DAY_MS
    assert digest(node) == NODE_130102_DIGEST
    assert digest(load_node_policy(province, county, kind="university")) == (
        UNIVERSITY_130102_DIGEST
    )


def test_the_catalogue_documents_the_key() -> None:
    """The shipped catalogue names the key (commented: the default applies) with its default."""
    text = (default_policy_dir() / "province.toml").read_text(encoding="utf-8")
    assert "\n# offline_window_days = 30 " in text
    uncommented = text.replace("\n# offline_window_days = 30 ", "\noffline_window_days = 30 ")
    assert digest(parse_policy(tomllib.loads(uncommented), source="p")) == PROVINCE_DIGEST


def test_a_county_setting_7_days_changes_the_digest(tmp_path: Path) -> None:
    province = default_policy_dir() / "province.toml"
    county = tmp_path / "130102.toml"
    county.write_text(
        (default_policy_dir() / "counties" / "130102.toml")
        .read_text(encoding="utf-8")
        .replace("[limits]\n", "[limits]\noffline_window_days = 7\n", 1),
        encoding="utf-8",
    )
    policy = load_node_policy(province, county)
    assert policy.limits.offline_window_days == 7
    assert policy.limits.offline_window_ms == 7 * DAY_MS
    assert _limits_json(policy)[KEY] == 7
    assert digest(policy) != NODE_130102_DIGEST
    # everything else is the county's policy as before
    before = load_node_policy(province, default_policy_dir() / "counties" / "130102.toml")
    assert policy.datasets == before.datasets
    assert policy.limits.max_epsilon_per_query == before.limits.max_epsilon_per_query


def test_a_county_may_not_lengthen_the_window(tmp_path: Path) -> None:
    county = tmp_path / "county.toml"
    county.write_text('version = "c1"\n[limits]\noffline_window_days = 31\n', encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        load_node_policy(default_policy_dir() / "province.toml", county)
    assert str(caught.value).splitlines() == [
        f"{county}: limits.offline_window_days: 31 is above the provincial 30",
        f"{county}: a county policy may only tighten the provincial catalogue",
    ]


@pytest.mark.parametrize(
    ("toml", "shown"),
    [
        ("offline_window_days = 30.0", "30.0"),
        ('offline_window_days = "30"', '"30"'),
        ("offline_window_days = true", "true"),
        ("offline_window_days = 0", "0"),
        ("offline_window_days = 367", "367"),
        ("offline_window_days = -7", "-7"),
    ],
)
def test_a_bad_value_is_refused_with_file_and_key(tmp_path: Path, toml: str, shown: str) -> None:
    expected = "limits.offline_window_days: must be a whole number of days, 1 to 366"
    province = tmp_path / "province.toml"
    text = (default_policy_dir() / "province.toml").read_text(encoding="utf-8")
    province.write_text(text.replace("[limits]\n", f"[limits]\n{toml}\n", 1), encoding="utf-8")
    with pytest.raises(PolicyError, match=r"^[^\n]*$") as caught:
        load_policy(province)
    assert str(caught.value) == f"{province}: {expected}"
    county = tmp_path / "county.toml"
    county.write_text(f'version = "c1"\n[limits]\n{toml}\n', encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        load_node_policy(default_policy_dir() / "province.toml", county)
    assert str(caught.value) == f"{county}: {expected}"


def test_the_limit_types() -> None:
    assert Limits(1.0, 10.0, 0.5, 10, 200).offline_window_days == 30
    assert LimitsOverride().offline_window_days is None
    assert Limits(1.0, 10.0, 0.5, 10, 200, offline_window_days=366).offline_window_ms == (
        366 * DAY_MS
    )


# --- properties --------------------------------------------------------------------------


@settings(deadline=None)  # shared CI machines: a slow example is not a bug
@given(days)
def test_every_whole_day_count_loads(window: int) -> None:
    province = _province(window)
    assert province.limits.offline_window_days == window
    assert province.limits.offline_window_ms == window * DAY_MS
    assert _county(window).limits.offline_window_days == window
    # the digest names the window exactly when it is not the default
    assert _limits_json(province).get(KEY, 30) == window
    assert (digest(province) == PROVINCE_DIGEST) == (window == 30)


@settings(deadline=None)
@given(not_days)
def test_anything_else_is_refused(value: object) -> None:
    message = "limits.offline_window_days: must be a whole number of days, 1 to 366"
    with pytest.raises(PolicyError) as caught:
        _province(value)
    assert str(caught.value) == f"province.toml: {message}"
    with pytest.raises(PolicyError) as caught:
        _county(value)
    assert str(caught.value) == f"county.toml: {message}"


@settings(deadline=None)
@given(days, st.none() | days)
def test_a_county_only_shortens(province_days: int, county_days: int | None) -> None:
    province, county = _province(province_days), _county(county_days)
    found = [entry for entry in loosenings(province, county) if entry.startswith(f"limits.{KEY}")]
    widens = county_days is not None and county_days > province_days
    assert found == (
        [f"limits.{KEY}: {county_days} is above the provincial {province_days}"] if widens else []
    )
    merged = merge(province, county)
    expected = province_days if county_days is None else min(province_days, county_days)
    assert merged.limits.offline_window_days == expected
    assert merged.limits.offline_window_days <= province_days
    # restating the merged policy and merging again changes nothing (idempotent)
    assert merge(merged, as_override(merged)).limits == merged.limits
    assert _limits_json(merged).get(KEY, 30) == expected


@settings(deadline=None)
@given(days, st.none() | days, st.none() | days)
def test_merges_commute(province_days: int, a: int | None, b: int | None) -> None:
    province = _province(province_days)
    ab = merge(merge(province, _county(a)), _county(b))
    ba = merge(merge(province, _county(b)), _county(a))
    assert ab.limits.offline_window_days == ba.limits.offline_window_days
    assert digest(ab) == digest(ba)
