"""Policy digests: a function of the policy's values only, and of every one of them."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest

from fedscreen.policy import (
    CategoryRule,
    ColumnRule,
    Dataset,
    Limits,
    Measure,
    NumericRule,
    Policy,
    Secure,
    canonical_json,
    digest,
    load_node_policy,
    load_policy,
    parse_policy,
)

POLICIES = Path(__file__).resolve().parents[3] / "policies"

DOC = """
version = "t1"

[limits]
max_epsilon_per_query = 1.0
epsilon_per_node_per_year = 10.0
analyst_share = 0.5
publication_threshold = 10
max_groups = 100
[limits.analysts]
ana = 0.8
bob = 0.25

[datasets.screenings]
period = "academic_year"
unit = "一个学年中的一名学生"
withheld = ["school_id", "class_id"]
[datasets.screenings.columns]
academic_year = { kind = "category", measures = ["group", "filter"], domain = ["2024-2025"] }
sex = { kind = "category", measures = ["group", "filter"], domain = ["M", "F"] }
[datasets.screenings.columns.phq9_total]
kind = "numeric"
measures = ["filter", "sum", "quantile"]
bounds = [0, 27]
candidates = [0, 10, 27]
"""

# the same values: tables, keys, set-like lists and number spellings in another order
REORDERED = """
version = "t1"

# a comment
[datasets.screenings.columns.phq9_total]
candidates = [0, 10, 27]
measures = ["quantile", "sum", "filter"]
bounds = [0, 27]
kind = "numeric"

[datasets.screenings.columns.sex]
domain = ["M", "F"]
measures = ["filter", "group"]
kind = "category"

[datasets.screenings.columns.academic_year]
kind = "category"
domain = ["2024-2025"]
measures = ["filter", "group"]

[datasets.screenings]
withheld = ["class_id", "school_id"]
unit = "一个学年中的一名学生"
period = "academic_year"

[limits]
analysts = { bob = 0.25, ana = 0.8 }
max_groups = 100
publication_threshold = 10
analyst_share = 0.5
epsilon_per_node_per_year = 10
max_epsilon_per_query = 1
"""

#: the digest of DOC; it changes only when the canonical form deliberately changes
DOC_DIGEST = "sha256:2a619f8f99d1b72b567a19c27841b6a5ce1d9411bb929ed1b8d3c45a407a2e01"


def _policy(text: str) -> Policy:
    return parse_policy(tomllib.loads(text), source="t.toml")


def test_digest_ignores_document_layout() -> None:
    assert _policy(REORDERED) == _policy(DOC)
    assert canonical_json(_policy(REORDERED)) == canonical_json(_policy(DOC))
    assert digest(_policy(REORDERED)) == digest(_policy(DOC))


def test_digest_is_pinned() -> None:
    assert digest(_policy(DOC)) == DOC_DIGEST


def test_canonical_json_form() -> None:
    data = canonical_json(_policy(DOC))
    text = data.decode("utf-8")
    assert "一个学年中的一名学生" in text  # UTF-8, not \\u escapes
    assert ": " not in text
    assert ", " not in text
    document = json.loads(text)
    assert document["format"] == "fedscreen-policy/1"
    assert json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False) == text
    assert document["limits"]["max_epsilon_per_query"] == 1.0
    assert document["datasets"]["screenings"]["withheld"] == ["class_id", "school_id"]
    assert document["datasets"]["screenings"]["columns"]["phq9_total"]["measures"] == [
        "filter",
        "quantile",
        "sum",
    ]


def _limit_variants() -> list[tuple[str, Limits]]:
    base = _policy(DOC).limits
    changed: dict[str, Any] = {
        "max_epsilon_per_query": 0.9,
        "epsilon_per_node_per_year": 9.0,
        "analyst_share": 0.4,
        "publication_threshold": 11,
        "max_groups": 99,
        "analysts": {"ana": 0.8, "bob": 0.2},
        "approval_above_epsilon": 0.5,
        "offline_window_days": 7,
    }
    assert set(changed) == {f.name for f in fields(Limits)}
    return [(name, replace(base, **{name: value})) for name, value in changed.items()]


@pytest.mark.parametrize(("name", "limits"), _limit_variants())
def test_every_limit_changes_the_digest(name: str, limits: Limits) -> None:
    policy = _policy(DOC)
    assert digest(replace(policy, limits=limits)) != digest(policy)


def _edit_columns(edit: Callable[[dict[str, ColumnRule]], object]) -> Callable[[Dataset], Dataset]:
    def apply(dataset: Dataset) -> Dataset:
        columns = dict(dataset.columns)
        edit(columns)
        return replace(dataset, columns=columns)

    return apply


GROUP_FILTER = frozenset({Measure.GROUP, Measure.FILTER})
DATASET_EDITS: dict[str, Callable[[Dataset], Dataset]] = {
    "public": lambda d: replace(d, public=True),
    "unit": lambda d: replace(d, unit="one student"),
    "withheld": lambda d: replace(d, withheld=d.withheld | {"grade"}),
    "domain value": _edit_columns(lambda c: c.update(sex=CategoryRule(("F",), GROUP_FILTER))),
    "domain order": _edit_columns(lambda c: c.update(sex=CategoryRule(("F", "M"), GROUP_FILTER))),
    "measures": _edit_columns(
        lambda c: c.update(sex=CategoryRule(("M", "F"), frozenset({Measure.FILTER})))
    ),
    "bounds": _edit_columns(
        lambda c: c.update(
            phq9_total=NumericRule(
                (0, 26), frozenset({Measure.FILTER, Measure.SUM, Measure.QUANTILE}), (0, 10, 26)
            )
        )
    ),
    "candidates": _edit_columns(
        lambda c: c.update(
            phq9_total=NumericRule(
                (0, 27), frozenset({Measure.FILTER, Measure.SUM, Measure.QUANTILE}), (0, 27)
            )
        )
    ),
    "column removed": _edit_columns(lambda c: c.pop("sex")),
}


@pytest.mark.parametrize("edit", DATASET_EDITS.values(), ids=DATASET_EDITS.keys())
def test_every_dataset_change_changes_the_digest(edit: Callable[[Dataset], Dataset]) -> None:
    policy = _policy(DOC)
    edited = replace(policy, datasets={"screenings": edit(policy.datasets["screenings"])})
    assert digest(edited) != digest(policy)


def test_versions_change_the_digest() -> None:
    policy = _policy(DOC)
    assert digest(replace(policy, version="t2")) != digest(policy)
    assert digest(replace(policy, overrides=frozenset({"130102-1"}))) != digest(policy)


SECURE = Secure(min_nodes=3, columns={"screenings": frozenset({"academic_year", "sex"})})
SECURE_EDITS: dict[str, Secure] = {
    "min_nodes": replace(SECURE, min_nodes=4),
    "refused": replace(SECURE, refused=True),
    "column removed": replace(SECURE, columns={"screenings": frozenset({"academic_year"})}),
    "dataset removed": replace(SECURE, columns={}),
    "no section": Secure(),
}


@pytest.mark.parametrize("secure", SECURE_EDITS.values(), ids=SECURE_EDITS.keys())
def test_every_secure_change_changes_the_digest(secure: Secure) -> None:
    policy = replace(_policy(DOC), secure=SECURE)
    assert digest(replace(policy, secure=secure)) != digest(policy)


def test_a_policy_without_secure_aggregation_keeps_its_digest() -> None:
    """No [secure] section: the canonical form has no ``secure`` key (DOC_DIGEST stands)."""
    policy = _policy(DOC)
    assert policy.secure == Secure()
    assert "secure" not in json.loads(canonical_json(policy))
    section = (
        "\n[secure]\nmin_nodes = 3\n"
        '[secure.datasets.screenings]\ncolumns = ["sex", "academic_year"]\n'
    )
    secure = _policy(DOC + section)
    assert secure.secure == SECURE
    assert json.loads(canonical_json(secure))["secure"] == {
        "columns": {"screenings": ["academic_year", "sex"]},
        "min_nodes": 3,
        "refused": False,
    }
    # the order of a secure column list is layout, not value
    reordered = section.replace('["sex", "academic_year"]', '["academic_year", "sex"]')
    assert canonical_json(_policy(DOC + reordered)) == canonical_json(secure)


def test_shipped_policies() -> None:
    province = POLICIES / "province.toml"
    county = POLICIES / "counties" / "130102.toml"
    assert digest(load_policy(province)) == digest(load_policy(province))
    assert digest(load_node_policy(province, county)) != digest(load_policy(province))
