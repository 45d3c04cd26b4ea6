"""QuerySpec: canonical form (signed, logged, the cache key) and its JSON round trip."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedscreen.errors import QueryRefused
from fedscreen.query.spec import (
    BoolOp,
    Comparison,
    Condition,
    Measure,
    QuerySpec,
    canonical_json,
)
from fedscreen.query.sqlparse import parse_sql

# --- two spellings of one question are one question ---------------------------------

SAME_QUESTION: list[tuple[str, str]] = [
    (
        "SELECT sex, COUNT(*) FROM screenings WHERE academic_year = '2024-2025' GROUP BY sex",
        "select   sex ,count( * )\nfrom screenings\nwhere academic_year='2024-2025' group by 1",
    ),
    (
        "SELECT COUNT(*) AS n FROM screenings WHERE academic_year = '2024-2025' AND sex = 'F'",
        "SELECT COUNT(*) FROM screenings WHERE sex = 'F' AND '2024-2025' = academic_year "
        "-- females",
    ),
    (
        "SELECT COUNT(*) FROM screenings WHERE academic_year IN ('2023-2024', '2024-2025')",
        "SELECT COUNT(*) FROM screenings WHERE academic_year IN ('2024-2025', '2023-2024')",
    ),
    (
        "SELECT RATE(phq9_total >= 10) FROM screenings WHERE academic_year = '2024-2025'",
        "SELECT rate(10 <= phq9_total) FROM screenings WHERE (academic_year = '2024-2025')",
    ),
    (
        "SELECT COUNT(*) FROM screenings WHERE academic_year = '2024-2025' "
        "AND phq9_total BETWEEN 5 AND 9",
        "SELECT COUNT(*) FROM screenings WHERE academic_year = '2024-2025' "
        "AND phq9_total >= 5 AND phq9_total <= 9",
    ),
    (
        "SELECT COUNT(*) FROM screenings WHERE academic_year = '2024-2025' "
        "AND grade NOT IN ('S10', 'S11')",
        "SELECT COUNT(*) FROM screenings WHERE academic_year = '2024-2025' "
        "AND NOT (grade IN ('S10', 'S11'))",
    ),
    (
        "SELECT COUNT(*) FROM screenings WHERE academic_year = '2024-2025' "
        "AND sex = 'F' AND boarding = 1 AND grade = 'S10'",
        "SELECT COUNT(*) FROM screenings WHERE academic_year = '2024-2025' "
        "AND (sex = 'F' AND (boarding = 1 AND grade = 'S10'))",
    ),
    (
        "SELECT phq9_band, COUNT(*) FROM screenings WHERE academic_year = '2024-2025' "
        "GROUP BY phq9_band",
        "SELECT HISTOGRAM(phq9_band) FROM screenings WHERE academic_year = '2024-2025'",
    ),
    (
        "SELECT QUANTILE(phq9_total, 0.5) FROM screenings WHERE academic_year = '2024-2025'",
        "SELECT quantile(phq9_total, .50) FROM screenings WHERE academic_year = '2024-2025'",
    ),
    (
        "SELECT AVG(phq9_total) FROM screenings WHERE academic_year = '2024-2025' "
        "AND phq9_total <> 3",
        "SELECT avg(phq9_total) FROM screenings WHERE academic_year = '2024-2025' "
        "AND phq9_total != 3",
    ),
]


@pytest.mark.parametrize(("one", "other"), SAME_QUESTION)
def test_two_spellings_have_the_same_canonical_bytes(one: str, other: str) -> None:
    a, b = parse_sql(one), parse_sql(other)
    assert a.canonical() == b.canonical()
    assert a.digest() == b.digest()


@pytest.mark.parametrize(
    ("one", "other"),
    [
        # a different period, grouping order, value type or level is a different question
        ("WHERE academic_year = '2024-2025'", "WHERE academic_year = '2023-2024'"),
        (
            "WHERE academic_year = '2024-2025' AND boarding = 1",
            "WHERE academic_year = '2024-2025' AND boarding = 1.0",
        ),
        (
            "WHERE academic_year = '2024-2025' AND boarding = 1",
            "WHERE academic_year = '2024-2025' AND boarding = '1'",
        ),
        (
            "WHERE academic_year = '2024-2025' AND phq9_total > 5",
            "WHERE academic_year = '2024-2025' AND phq9_total >= 5",
        ),
    ],
)
def test_different_questions_have_different_canonical_bytes(one: str, other: str) -> None:
    a = parse_sql(f"SELECT COUNT(*) FROM screenings {one}")
    b = parse_sql(f"SELECT COUNT(*) FROM screenings {other}")
    assert a.canonical() != b.canonical()


def test_grouping_order_is_part_of_the_question() -> None:
    a = parse_sql("SELECT sex, grade, COUNT(*) FROM screenings GROUP BY sex, grade")
    b = parse_sql("SELECT sex, grade, COUNT(*) FROM screenings GROUP BY grade, sex")
    assert a.group_by == ("sex", "grade")
    assert b.group_by == ("grade", "sex")
    assert a.canonical() != b.canonical()


def test_canonical_bytes_are_sorted_compact_utf8() -> None:
    spec = QuerySpec(
        "screenings",
        Measure("rate", condition=Comparison("sex", "=", ("女",))),
        ("grade",),
        Comparison("boarding", "in", (1, 0)),
        ("2024-2025", "2023-2024"),
    )
    text = spec.canonical().decode("utf-8")
    assert text == (
        '{"dataset":"screenings","group_by":["grade"],'
        '"measure":{"condition":{"column":"sex","op":"=","values":["女"]},"kind":"rate"},'
        '"where":{"column":"boarding","op":"in","values":[0,1]},'
        '"years":["2023-2024","2024-2025"]}'
    )
    assert spec.digest() == hashlib.sha256(text.encode("utf-8")).hexdigest()
    # the years' order never matters
    flipped = QuerySpec(
        spec.dataset, spec.measure, spec.group_by, spec.where, ("2023-2024", "2024-2025")
    )
    assert flipped.canonical() == spec.canonical()


def test_canonical_json_refuses_nan() -> None:
    with pytest.raises(ValueError, match="Out of range float"):
        canonical_json({"x": math.nan})


def test_columns_lists_every_mentioned_column() -> None:
    spec = parse_sql(
        "SELECT sex, RATE(phq9_total >= 10 OR gad7_total >= 10) FROM screenings "
        "WHERE academic_year = '2024-2025' AND NOT boarding = 1 GROUP BY sex"
    )
    assert spec.columns() == {"sex", "phq9_total", "gad7_total", "boarding"}
    avg = parse_sql("SELECT AVG(mht_total) FROM screenings")
    assert avg.columns() == {"mht_total"}


# --- from_json(to_json()) -----------------------------------------------------------

_NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
_VALUES = (
    st.text(max_size=8)
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
)


@st.composite
def _comparisons(draw: st.DrawFn) -> Comparison:
    op = draw(st.sampled_from(["=", "!=", "<", "<=", ">", ">=", "in", "not in"]))
    count = draw(st.integers(1, 4)) if op in ("in", "not in") else 1
    return Comparison(draw(_NAMES), op, tuple(draw(_VALUES) for _ in range(count)))


_CONDITIONS: st.SearchStrategy[Condition] = st.recursive(
    _comparisons(),
    lambda inner: (
        st.builds(lambda a: BoolOp("not", (a,)), inner)
        | st.builds(
            lambda op, args: BoolOp(op, tuple(args)),
            st.sampled_from(["and", "or"]),
            st.lists(inner, min_size=2, max_size=3),
        )
    ),
    max_leaves=8,
)


@st.composite
def _measures(draw: st.DrawFn) -> Measure:
    kind = draw(st.sampled_from(["count", "sum", "mean", "rate", "quantile"]))
    if kind == "count":
        return Measure("count")
    if kind == "rate":
        return Measure("rate", condition=draw(_CONDITIONS))
    if kind == "quantile":
        q = draw(st.floats(min_value=0.0, max_value=1.0, exclude_min=True, exclude_max=True))
        return Measure("quantile", column=draw(_NAMES), q=q)
    return Measure(kind, column=draw(_NAMES))


_SPECS = st.builds(
    QuerySpec,
    dataset=_NAMES,
    measure=_measures(),
    group_by=st.lists(_NAMES, max_size=3, unique=True).map(tuple),
    where=st.none() | _CONDITIONS,
    years=st.lists(st.sampled_from(["2023-2024", "2024-2025", "2025-2026"]), unique=True).map(
        lambda ys: tuple(sorted(ys))
    ),
)


@settings(max_examples=100, deadline=None, database=None)
@given(spec=_SPECS)
def test_from_json_to_json_round_trips(spec: QuerySpec) -> None:
    # the canonical form normalises order-free parts (IN lists, AND/OR operands), so the
    # round trip is exact on the canonical form and idempotent from there on
    rebuilt = QuerySpec.from_json(json.loads(spec.canonical()))
    assert rebuilt.canonical() == spec.canonical()
    assert QuerySpec.from_json(rebuilt.to_json()) == rebuilt


@settings(max_examples=40, deadline=None, database=None)
@given(spec=_SPECS, data=st.data())
def test_years_order_never_changes_the_canonical_form(spec: QuerySpec, data: st.DataObject) -> None:
    shuffled = tuple(data.draw(st.permutations(spec.years)))
    other = QuerySpec(spec.dataset, spec.measure, spec.group_by, spec.where, shuffled)
    assert other.canonical() == spec.canonical()
    assert QuerySpec.from_json(other.to_json()).canonical() == spec.canonical()


def _base(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "dataset": "screenings",
        "measure": {"kind": "count"},
        "group_by": [],
        "where": None,
        "years": ["2024-2025"],
    }
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({}, "malformed"),
        ([], "malformed"),
        ("SELECT 1", "malformed"),
        (_base(measure={"kind": "max"}), "measure 'max' is not one of"),
        (_base(measure="count"), "malformed"),
        (_base(measure={}), "malformed"),
        (_base(extra=1), "unknown query fields: extra"),
        (_base(where={"column": "sex", "op": "like", "values": ["F"]}), "comparison 'like'"),
        (_base(where={"column": "sex", "op": "=", "values": []}), "strings or numbers"),
        (_base(where={"column": "sex", "op": "=", "values": [True]}), "strings or numbers"),
        (_base(where={"column": "sex", "op": "=", "values": [None]}), "strings or numbers"),
        (_base(where={"column": "sex", "op": "=", "values": [["F"]]}), "strings or numbers"),
        (_base(where={"column": "sex", "op": "=", "values": ["F", "M"]}), "exactly one value"),
        (_base(where={"column": "sex", "op": "="}), "malformed"),
        (_base(where={"op": "not", "args": []}), "wrong number"),
        (
            _base(
                where={
                    "op": "not",
                    "args": [
                        {"column": "sex", "op": "=", "values": ["F"]},
                        {"column": "sex", "op": "=", "values": ["M"]},
                    ],
                }
            ),
            "wrong number",
        ),
        (
            _base(where={"op": "and", "args": [{"column": "sex", "op": "=", "values": ["F"]}]}),
            "wrong number",
        ),
        (_base(where={"op": "or", "args": []}), "wrong number"),
        (_base(where="sex = 'F'"), "malformed"),
        (_base(years=5), "malformed"),
        (_base(measure={"kind": "quantile", "column": "phq9_total", "q": "half"}), "malformed"),
    ],
)
def test_from_json_refuses_malformed_specs(data: Any, reason: str) -> None:
    with pytest.raises(QueryRefused, match=reason):
        QuerySpec.from_json(data)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, database=None)
@given(
    measure=_JSON
    | st.fixed_dictionaries(
        {"kind": st.sampled_from(["count", "rate"])},
        optional={"condition": _JSON, "column": _JSON, "q": _JSON},
    ),
    where=_JSON,
    years=_JSON,
)
def test_from_json_never_fails_with_anything_but_a_refusal(
    measure: Any, where: Any, years: Any
) -> None:
    with contextlib.suppress(QueryRefused):
        QuerySpec.from_json(_base(measure=measure, where=where, years=years))


@pytest.mark.parametrize("q", ["nan", 1.5, 0])
def test_from_json_refuses_a_quantile_level_outside_0_1(q: Any) -> None:
    """Like parse_sql, ``from_json`` (the path of a typed request) refuses a QUANTILE level
    outside (0, 1), NaN included (a NaN spec could not even be canonicalised)."""
    data = _base(measure={"kind": "quantile", "column": "phq9_total", "q": q})
    with pytest.raises(QueryRefused):
        QuerySpec.from_json(data)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_from_json_refuses_non_finite_values(value: float) -> None:
    """A NaN/infinite comparison value (Python's json.loads reads ``NaN`` and ``Infinity``)
    is refused: the canonical form cannot encode it."""
    data = _base(where={"column": "phq9_total", "op": ">", "values": [value]})
    with pytest.raises(QueryRefused):
        QuerySpec.from_json(data)
