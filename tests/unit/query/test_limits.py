"""Issue 12 for the query language: any text, spec or ε is served or refused, nothing else.

"Refused" is :class:`fedscreen.errors.QueryRefused` with a message naming the problem;
anything else — ``RecursionError``, ``ValueError``, ``ZeroDivisionError``, OpenDP's
errors — is a crash. Time is bounded by each property's hypothesis ``deadline``.
The limits (README, SQL subset): ``MAX_SQL_CHARS`` characters, ``MAX_NESTING`` levels,
``MAX_CONDITIONS`` comparisons, ε ≥ ``MIN_EPSILON`` (1 µε), noise scale ≤ ``MAX_SCALE``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fedscreen.errors import QueryRefused
from fedscreen.node.home import NodeConfig
from fedscreen.protocol.budget import MICRO, from_micro, to_micro
from fedscreen.query import mechanisms
from fedscreen.query.compile import Plan, compile_query
from fedscreen.query.cost import MIN_EPSILON, request_epsilon
from fedscreen.query.spec import (
    MAX_CONDITIONS,
    MAX_NESTING,
    BoolOp,
    Comparison,
    Condition,
    Measure,
    QuerySpec,
    check_size,
)
from fedscreen.query.sqlparse import MAX_SQL_CHARS, parse_sql

T = TypeVar("T")

YEAR = "2024-2025"
Y = f"WHERE academic_year = '{YEAR}'"
W = f"SELECT COUNT(*) FROM screenings {Y} AND "

#: the merged policy of a node for county 130102 (per-query cap ε 0.5)
POLICY = NodeConfig(
    home=Path("/nonexistent"), node_id="130102", name="x", county_code="130102"
).policy()

PROPERTY = settings(
    max_examples=150,
    deadline=2000,  # ms per example: a parser that hangs on some input fails here
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def served_or_refused(call: Callable[[], T]) -> T | None:
    """Run ``call``: a result or a QueryRefused with a message pass; anything else fails."""
    try:
        return call()
    except QueryRefused as refused:
        message = str(refused)
    assert message, "a refusal must say why"
    return None


def parse_and_compile(text: str) -> Plan | None:
    """The node's path for a text: parse, compile; every served spec can also be signed."""
    spec = served_or_refused(lambda: parse_sql(text))
    if spec is None:
        return None
    spec.canonical()  # what an analyst signs: must never raise for a parsed spec
    assert QuerySpec.from_json(spec.to_json()).canonical() == spec.canonical()
    if not spec.years:
        spec = dataclasses.replace(spec, years=(YEAR,))
    return served_or_refused(lambda: compile_query(spec, POLICY))


@contextmanager
def stack_used(frames: int) -> Iterator[None]:
    """Run the body as if ``frames`` callers already sat on the stack (a server's, a test's)."""
    limit = sys.getrecursionlimit()
    depth = 0
    frame = sys._getframe()
    while frame is not None:
        depth += 1
        frame = frame.f_back  # type: ignore[assignment]
    sys.setrecursionlimit(max(depth, 1) + (limit - frames))
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


# ---------------------------------------------------------------- strategies

#: every code point, lone surrogates included (a command line can carry them)
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=300)

#: fragments of the subset and of what lies just outside it
FRAGMENTS = [
    "SELECT", "COUNT(*)", "RATE(", "HISTOGRAM(", "QUANTILE(", "SUM(", "AVG(", "MAX(",
    "FROM", "screenings", "school_grades", "WHERE", "GROUP BY", "academic_year", "sex",
    "grade_band", "phq9_total", "boarding", "=", "!=", "<>", "<", ">=", "IN", "NOT IN",
    "BETWEEN", "AND", "OR", "NOT", "(", ")", ",", "'F'", "'2024-2025'", "10", "0.5", "-",
    "+", "~", "!", "1e999", "-1e999", "0x10", "9" * 30, "1", "3.5", "NULL", "IS", "CASE",
    "WHEN", "THEN", "ELSE", "END", "INTERVAL", "JOIN", "UNION", "SELECT *", ";", "--", "/*",
    "*/", "'", '"', "`", "[", "]", "{", "}", "*", "LIMIT", "ORDER BY", "HAVING", "AS",
    "DISTINCT", "EXISTS", "CAST(", "AS INT)", "||", ".", "?", ":x", "$1", "@", "\x00",
    "\udcff", "\u202e", "学生",
]  # fmt: skip
NEAR_VALID = st.lists(st.sampled_from(FRAGMENTS), max_size=60).map(" ".join)

#: prefixes that nest when repeated, and the suffix that closes one (if any)
NESTERS = [
    ("(", ")"), ("NOT ", ""), ("NOT (", ")"), ("- ", ""), ("+ ", ""), ("~ ", ""), ("! ", ""),
    ("CASE WHEN ", " THEN 1 END"), ("INTERVAL ", ""), ("RATE(", ")"), ("CAST(", " AS INT)"),
    ("sex IN (", ")"), ("(sex = 'F' OR ", ")"), ("[", "]"), ("{", "}"), ("NOT NOT ", ""),
]  # fmt: skip


@st.composite
def deep_texts(draw: st.DrawFn) -> str:
    """A valid query with a condition nested ``n`` times by one construct (n up to 2,000)."""
    opening, closing = draw(st.sampled_from(NESTERS))
    n = draw(st.integers(0, 2000) | st.sampled_from([MAX_NESTING - 1, MAX_NESTING, 50, 100]))
    balanced = draw(st.booleans())
    leaf = draw(st.sampled_from(["sex = 'F'", "phq9_total >= 10", "1", "sex"]))
    return W + opening * n + leaf + (closing * n if balanced else "")


@st.composite
def long_texts(draw: st.DrawFn) -> str:
    """A valid query with many conditions, around and beyond the length and term limits."""
    n = draw(st.integers(1, 600))
    joiner = draw(st.sampled_from([" AND ", " OR ", ", "]))
    term = draw(st.sampled_from(["sex = 'F'", "phq9_total >= 10", "NOT boarding = 1", "'F'"]))
    body = joiner.join([term] * n)
    if joiner == ", ":
        body = f"sex IN ({body})"
    return W + body


_COLUMNS = st.sampled_from(["sex", "grade_band", "phq9_total", "boarding", "nosuch"])
_VALUES = st.one_of(
    st.sampled_from(["F", "M", "junior", "x"]),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
)


def _conditions() -> st.SearchStrategy[Condition]:
    leaf = st.builds(
        Comparison,
        _COLUMNS,
        st.sampled_from(["=", "!=", "<", ">=", "in", "not in"]),
        st.lists(_VALUES, min_size=1, max_size=3).map(tuple),
    )
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.builds(BoolOp, st.just("not"), st.tuples(inner)),
            st.builds(
                BoolOp, st.sampled_from(["and", "or"]), st.lists(inner, min_size=2).map(tuple)
            ),
        ),
        max_leaves=100,
    )


# ---------------------------------------------------------------- the parser and compiler


@PROPERTY
@given(text=ANY_TEXT)
@example(text="SELECT sex, COUNT(*) FROM screenings GROUP BY 1.5")
@example(text="SELECT sex, COUNT(*) FROM screenings GROUP BY 99999999999999999999999")
@example(text=f"SELECT COUNT(*) FROM screenings {Y} AND sex = '\udcff'")
@example(text=f"SELECT COUNT(*) FROM screenings {Y} AND phq9_total > 1e999")
def test_any_text_is_served_or_refused(text: str) -> None:
    parse_and_compile(text)


@PROPERTY
@given(text=NEAR_VALID)
def test_near_valid_sql_is_served_or_refused(text: str) -> None:
    parse_and_compile(f"SELECT COUNT(*) FROM screenings {Y} AND {text}")
    parse_and_compile(text)


@PROPERTY
@given(text=deep_texts())
def test_deeply_nested_sql_is_served_or_refused(text: str) -> None:
    parse_and_compile(text)


@PROPERTY
@given(text=long_texts())
def test_long_sql_is_served_or_refused(text: str) -> None:
    parse_and_compile(text)


@PROPERTY
@given(where=_conditions())
def test_any_typed_spec_compiles_or_is_refused(where: Condition) -> None:
    """A spec built in Python skips the parser: the compiler refuses what the parser would."""
    served_or_refused(
        lambda: compile_query(QuerySpec("screenings", Measure("count"), (), where, (YEAR,)), POLICY)
    )


@PROPERTY
@given(data=st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["op", "args", "column", "values", "kind", "q",
                                       "measure", "dataset", "where", "years", "group_by",
                                       "condition", "x"]), inner, max_size=5),
    max_leaves=30,
))  # fmt: skip
def test_any_json_spec_is_read_or_refused(data: Any) -> None:
    spec = served_or_refused(lambda: QuerySpec.from_json(data))
    if spec is not None:
        served_or_refused(lambda: compile_query(spec, POLICY))


REFUSED_NESTING = [
    ("50 nested parentheses", W + "(" * 50 + "sex = 'F'" + ")" * 50),
    ("100 NOT", W + "NOT " * 100 + "sex = 'F'"),
    ("800 NOT", W + "NOT " * 800 + "sex = 'F'"),
    ("NOT ( chains", W + "NOT (" * 30 + "sex = 'F'" + ")" * 30),
    ("signs", W + "phq9_total = " + "- " * 300 + "1"),
    ("CASE", W + "sex = " + "CASE WHEN " * 200 + "1"),
    ("INTERVAL", W + "sex = " + "INTERVAL " * 300 + "1"),
    ("CAST", "SELECT " + "CAST(" * 100 + "1" + " AS INT)" * 100 + " FROM screenings"),
    ("RATE", "SELECT RATE(" + "(" * 60 + "sex = 'F'" + ")" * 60 + ") FROM screenings"),
    ("unbalanced", W + "(" * 1900),
]


@pytest.mark.parametrize(("name", "text"), REFUSED_NESTING, ids=[n for n, _ in REFUSED_NESTING])
def test_deep_nesting_is_refused_naming_the_limit(name: str, text: str) -> None:
    assert len(text) <= MAX_SQL_CHARS
    with pytest.raises(QueryRefused, match=f"nested deeper than {MAX_NESTING} levels"):
        parse_sql(text)


ACCEPTED_AT_THE_LIMIT = [
    W + "(" * MAX_NESTING + "sex = 'F'" + ")" * MAX_NESTING,
    W + "NOT " * MAX_NESTING + "sex = 'F'",
    W + "NOT (" * (MAX_NESTING // 2) + "sex = 'F'" + ")" * (MAX_NESTING // 2),
    W + "(" * (MAX_NESTING - 1) + "sex IN ('F')" + ")" * (MAX_NESTING - 1),
    "SELECT RATE("
    + "(" * (MAX_NESTING - 1)
    + "sex = 'F'"
    + ")" * (MAX_NESTING - 1)
    + f") FROM screenings {Y}",
    W + " AND ".join(["sex = 'F'"] * (MAX_CONDITIONS - 1)),
]


@pytest.mark.parametrize("text", ACCEPTED_AT_THE_LIMIT)
def test_queries_at_the_limits_are_served_even_on_a_busy_stack(text: str) -> None:
    """Nesting up to the limit parses and compiles with 500 frames already in use (half of
    Python's default recursion limit): the limit leaves room for any caller."""
    with stack_used(500):
        plan = compile_query(parse_sql(text), POLICY)
    assert plan.sql


def test_too_many_comparisons_are_refused() -> None:
    for joiner in (" AND ", " OR "):
        text = W + joiner.join(["sex = 'F'"] * MAX_CONDITIONS)
        with pytest.raises(QueryRefused, match=f"more than {MAX_CONDITIONS} comparisons"):
            parse_sql(text)
    # BETWEEN is two comparisons (and one AND)
    text = W + " AND ".join(["phq9_total BETWEEN 1 AND 2"] * (MAX_CONDITIONS // 2))
    with pytest.raises(QueryRefused, match=f"more than {MAX_CONDITIONS} comparisons"):
        parse_sql(text)


def test_a_long_in_list_is_one_comparison() -> None:
    values = ", ".join(["'F'"] * 700)
    spec = parse_sql(W + f"sex IN ({values})")
    assert spec.where == Comparison("sex", "in", ("F",) * 700)


def test_what_the_stack_cannot_hold_is_still_a_refusal() -> None:
    """The last resort: whatever slips past the pre-scan and overflows is a QueryRefused."""
    text = W + "(" * MAX_NESTING + "sex = 'F'" + ")" * MAX_NESTING
    with stack_used(sys.getrecursionlimit() - 60), pytest.raises(QueryRefused):
        parse_sql(text)


def test_text_that_is_not_unicode_is_refused() -> None:
    with pytest.raises(QueryRefused, match="not valid Unicode"):
        parse_sql(f"SELECT COUNT(*) FROM screenings {Y} AND sex = '\udcff'")


def _nested_not(depth: int) -> Condition:
    cond: Condition = Comparison("sex", "=", ("F",))
    for _ in range(depth):
        cond = BoolOp("not", (cond,))
    return cond


def _nested_json(depth: int) -> dict[str, Any]:
    cond: dict[str, Any] = {"column": "sex", "op": "=", "values": ["F"]}
    for _ in range(depth):
        cond = {"op": "not", "args": [cond]}
    return cond


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 10_000])
def test_deep_specs_are_refused_on_every_path(depth: int) -> None:
    spec = QuerySpec("screenings", Measure("count"), (), _nested_not(depth), (YEAR,))
    with pytest.raises(QueryRefused, match=f"deeper than {MAX_NESTING}"):
        check_size(spec)
    with pytest.raises(QueryRefused, match=f"deeper than {MAX_NESTING}"):
        compile_query(spec, POLICY)
    data = {"dataset": "screenings", "measure": {"kind": "count"}, "where": _nested_json(depth)}
    with pytest.raises(QueryRefused, match=f"deeper than {MAX_NESTING}"):
        QuerySpec.from_json(data)
    rate = {"dataset": "screenings", "measure": {"kind": "rate", "condition": _nested_json(depth)}}
    with pytest.raises(QueryRefused, match=f"deeper than {MAX_NESTING}"):
        QuerySpec.from_json(rate)


def test_specs_at_the_nesting_limit_pass() -> None:
    spec = QuerySpec("screenings", Measure("count"), (), _nested_not(MAX_NESTING), (YEAR,))
    check_size(spec)
    assert QuerySpec.from_json(spec.to_json()).canonical() == spec.canonical()
    compile_query(spec, POLICY)


def test_wide_specs_are_refused() -> None:
    leaf = Comparison("sex", "=", ("F",))
    wide = QuerySpec("screenings", Measure("count"), (), BoolOp("or", (leaf,) * 10_000), (YEAR,))
    with pytest.raises(QueryRefused, match=f"more than {MAX_CONDITIONS} comparisons"):
        compile_query(wide, POLICY)
    with pytest.raises(QueryRefused, match=f"more than {MAX_CONDITIONS} comparisons"):
        QuerySpec.from_json(wide.to_json())
    ok = QuerySpec("screenings", Measure("count"), (), BoolOp("or", (leaf,) * MAX_CONDITIONS), ())
    check_size(ok)


# ---------------------------------------------------------------- ε and accuracy

PLANS = {
    kind: compile_query(parse_sql(sql), POLICY)
    for kind, sql in {
        "count": f"SELECT sex, COUNT(*) FROM screenings {Y} GROUP BY sex",
        "sum": f"SELECT SUM(phq9_total) FROM screenings {Y}",
        "mean": f"SELECT AVG(mht_total) FROM screenings {Y}",
        "rate": f"SELECT RATE(phq9_total >= 10) FROM screenings {Y}",
        "quantile": f"SELECT QUANTILE(phq9_total, 0.37) FROM screenings {Y}",
    }.items()
}
CAP = POLICY.limits.max_epsilon_per_query

_FLOATS = st.floats() | st.sampled_from(
    [0.0, -0.0, 5e-324, 2.2250738585072014e-308, 1e-300, 1e-13, 9.999999999e-7, MIN_EPSILON,
     math.nextafter(MIN_EPSILON, 0), 1.5e-6, 0.1, CAP, math.nextafter(CAP, math.inf), 1.0, 20.0,
     1e7, 1e15, 1e308, math.inf, -math.inf, math.nan, -1.0]
)  # fmt: skip


def _largest_scale(plan: Plan, epsilon: float) -> float:
    kind = plan.spec.measure.kind
    if kind == "quantile":
        assert plan.spec.measure.q is not None
        return mechanisms.quantile_scale(q=plan.spec.measure.q, epsilon=epsilon)
    share = epsilon / 2 if kind in ("mean", "rate") else epsilon
    return max(plan.sensitivity, 1) / share


@settings(PROPERTY, max_examples=300)
@given(kind=st.sampled_from(sorted(PLANS)), value=_FLOATS, by_accuracy=st.booleans())
def test_request_epsilon_is_a_chargeable_epsilon_or_a_refusal(
    kind: str, value: float, by_accuracy: bool
) -> None:
    plan = PLANS[kind]
    epsilon = served_or_refused(
        lambda: request_epsilon(
            plan,
            POLICY,
            epsilon=None if by_accuracy else value,
            accuracy=value if by_accuracy else None,
        )
    )
    if epsilon is None:
        return
    assert MIN_EPSILON <= epsilon <= CAP
    if not by_accuracy:
        assert epsilon == value
    charged = from_micro(to_micro(epsilon))
    assert epsilon <= charged < epsilon + 1.01e-6
    assert _largest_scale(plan, charged) <= _largest_scale(plan, epsilon) <= mechanisms.MAX_SCALE


def test_min_epsilon_is_the_ledgers_resolution() -> None:
    assert MIN_EPSILON == 1 / MICRO
    assert to_micro(MIN_EPSILON) == 1
    assert from_micro(to_micro(MIN_EPSILON)) == MIN_EPSILON


@pytest.mark.parametrize("kind", sorted(PLANS))
@pytest.mark.parametrize(
    ("options", "part"),
    [
        ({"epsilon": 1e-300}, "below 1e-06"),
        ({"epsilon": 5e-324}, "below 1e-06"),
        ({"epsilon": math.nextafter(MIN_EPSILON, 0)}, "below 1e-06"),
        ({"epsilon": None, "accuracy": 1e308}, "below 1e-06"),
        ({"epsilon": None, "accuracy": 1e9}, "below 1e-06"),
        ({"epsilon": None, "accuracy": 5e-324}, "cap"),
        ({"epsilon": None, "accuracy": 0.1}, "cap"),
    ],
    ids=["1e-300", "subnormal", "just-below-1e-6", "accuracy-1e308", "accuracy-1e9",
         "accuracy-subnormal", "accuracy-0.1"],
)  # fmt: skip
def test_epsilons_the_ledger_cannot_charge_are_refused(
    kind: str, options: dict[str, float | None], part: str
) -> None:
    if kind == "quantile" and options.get("accuracy") is not None:
        part = "not accuracy"
    with pytest.raises(QueryRefused, match=part):
        request_epsilon(PLANS[kind], POLICY, **{"accuracy": None, **options})


@pytest.mark.parametrize("kind", sorted(PLANS))
def test_the_smallest_epsilon_is_served_with_a_representable_scale(kind: str) -> None:
    assert request_epsilon(PLANS[kind], POLICY, epsilon=MIN_EPSILON, accuracy=None) == MIN_EPSILON


def test_a_scale_above_the_maximum_is_refused() -> None:
    """A clamp bound of 10^7 at ε 1 µε would need noise of scale 10^13."""
    wide = dataclasses.replace(PLANS["sum"], sensitivity=10**7)
    with pytest.raises(QueryRefused, match="scale 1e\\+13"):
        request_epsilon(wide, POLICY, epsilon=MIN_EPSILON, accuracy=None)
    assert request_epsilon(wide, POLICY, epsilon=0.1, accuracy=None) == 0.1


def test_noise_at_the_largest_scale_stays_exact_and_finite() -> None:
    noisy = mechanisms.laplace_vector(
        [0, 10**6, 2**40] * 100, epsilon=1 / mechanisms.MAX_SCALE, sensitivity=1
    )
    assert all(abs(v) < 2**53 for v in noisy.values)
    assert 0 < noisy.half_width < 2**53
    assert math.isfinite(noisy.scale)
    assert noisy.scale <= mechanisms.MAX_SCALE * (1 + 1e-9)


def test_an_unreachable_accuracy_needs_infinite_epsilon() -> None:
    assert mechanisms.epsilon_for_accuracy(accuracy=5e-324, sensitivity=1) == math.inf
