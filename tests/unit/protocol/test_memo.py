"""protocol.memo: the memos of an answer's verification can change no verdict.

Each memo is checked against the uncached function it stands for: ``cell_key`` against
canonical JSON (1, 1.0 and "1" are three cells), ``spec_from_json`` against
``QuerySpec.from_json`` (the same spec, typed alike, or the same refusal, and a refusal
is never kept), ``spec_canonical``/``plan_for`` against the spec they were given even
when another spec is ``==`` to it (``10 == 10.0``), and ``BoundedMemo`` under threads.
Through ``verify_answer``: an answer restating the question with 10.0 for 10 is
refused whatever the memos hold.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from signedanswers import MANIFEST, YEAR, signed_answer, signed_query

from fedscreen._util.canonical import canonical_json
from fedscreen.errors import QueryRefused, VerificationError
from fedscreen.node.cells import release
from fedscreen.protocol.answer import shipped_catalogue, verify_answer
from fedscreen.protocol.memo import (
    BoundedMemo,
    cell_key,
    plan_for,
    spec_canonical,
    spec_from_json,
)
from fedscreen.query.compile import compile_query
from fedscreen.query.spec import COMPARISONS, MEASURE_KINDS, Comparison, Measure, QuerySpec

# values that canonical JSON tells apart though Python may call them equal, or the reverse
TWINS: tuple[str | int | float, ...] = (
    1, 1.0, "1", 0, 0.0, -0.0, "0", 10**20, float(10**20), 1e16, 10**16, -1, -1.0,
    "é", "e\u0301", "\u00e9\u0000", "", 2**53, 2**53 + 1, float(2**53),
)  # fmt: skip
SCALARS = (
    st.sampled_from(TWINS)
    | st.text(max_size=6)
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
)
GROUPS = st.lists(SCALARS, max_size=3).map(tuple)


def _twin(value: str | int | float) -> str | int | float:
    """A value equal to ``value`` under ``==`` (or in print) but of another type."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < 1e300 else repr(value)
    if isinstance(value, int):
        return float(value) if abs(value) < 2**1000 else str(value)
    return value


@given(GROUPS, GROUPS)
def test_cell_keys_are_equal_exactly_when_canonical_json_is(
    a: tuple[str | int | float, ...], b: tuple[str | int | float, ...]
) -> None:
    same = canonical_json(list(a)) == canonical_json(list(b))
    assert (cell_key(a) == cell_key(b)) is same
    assert (cell_key(a) in {cell_key(b)}) is same  # as the set lookup of _check_cells
    assert cell_key(list(a)) == cell_key(a)


@given(GROUPS, st.data())
def test_a_cell_group_with_one_value_retyped_is_another_cell(
    a: tuple[str | int | float, ...], data: st.DataObject
) -> None:
    if not a:
        return
    i = data.draw(st.integers(min_value=0, max_value=len(a) - 1))
    b = (*a[:i], _twin(a[i]), *a[i + 1 :])
    same = canonical_json(list(a)) == canonical_json(list(b))
    assert (cell_key(a) == cell_key(b)) is same
    if type(a[i]) is not type(b[i]):
        assert not same


def test_the_named_twins_are_distinct_cells() -> None:
    keys = {cell_key((v,)) for v in (1, 1.0, "1", 0.0, -0.0, 0, 10**20, float(10**20))}
    assert len(keys) == 8
    assert cell_key(("é",)) != cell_key(("e\u0301",))  # no Unicode normalisation
    assert cell_key((2**53 + 1,)) != cell_key((float(2**53 + 1),))


# --- spec_from_json ------------------------------------------------------------------------

VALUES = st.sampled_from(TWINS) | st.booleans() | st.none() | st.text(max_size=3)
COMPARISON = st.fixed_dictionaries(
    {
        "column": st.sampled_from(["phq9_total", "sex", "grade_band"]) | st.integers(0, 3),
        "op": st.sampled_from([*COMPARISONS, "like"]),
        "values": st.lists(VALUES, max_size=3),
    }
)
CONDITION = st.recursive(
    COMPARISON,
    lambda inner: st.fixed_dictionaries(
        {"op": st.sampled_from(["and", "or", "not", "xor"]), "args": st.lists(inner, max_size=3)}
    ),
    max_leaves=6,
)
MEASURE = st.fixed_dictionaries(
    {"kind": st.sampled_from([*MEASURE_KINDS, "median"])},
    optional={
        "column": st.sampled_from(["phq9_total", "gad7_total"]) | st.none() | st.integers(0, 2),
        "q": st.sampled_from([0.5, 0, 1, "0.5", 0.25]) | st.none(),
        "condition": CONDITION | st.none(),
    },
)
# well-formed specs (most of them valid), so the memo's success path is exercised too
PLAIN = st.sampled_from([v for v in TWINS if not isinstance(v, bool)]) | st.text(max_size=3)
COMPARISON_OK = st.fixed_dictionaries(
    {
        "column": st.sampled_from(["phq9_total", "sex", "grade_band"]),
        "op": st.sampled_from([c for c in COMPARISONS if c not in ("in", "not in")]),
        "values": st.lists(PLAIN, min_size=1, max_size=1),
    }
) | st.fixed_dictionaries(
    {
        "column": st.sampled_from(["phq9_total", "sex"]),
        "op": st.sampled_from(["in", "not in"]),
        "values": st.lists(PLAIN, min_size=1, max_size=4),
    }
)
CONDITION_OK = st.recursive(
    COMPARISON_OK,
    lambda inner: st.fixed_dictionaries(
        {"op": st.sampled_from(["and", "or"]), "args": st.lists(inner, min_size=2, max_size=3)}
    )
    | st.fixed_dictionaries({"op": st.just("not"), "args": st.lists(inner, min_size=1,
                                                                      max_size=1)}),
    max_leaves=5,
)  # fmt: skip
SPEC_JSON_OK = st.fixed_dictionaries(
    {
        "dataset": st.just("screenings"),
        "measure": st.fixed_dictionaries(
            {"kind": st.sampled_from(MEASURE_KINDS)},
            optional={
                "column": st.sampled_from(["phq9_total", "gad7_total"]),
                "q": st.sampled_from([0.5, 0.25]),
                "condition": CONDITION_OK,
            },
        ),
        "group_by": st.lists(st.sampled_from(["sex", "grade_band"]), max_size=2),
        "years": st.lists(st.sampled_from([YEAR, "2023-2024"]), max_size=2),
    },
    optional={"where": CONDITION_OK | st.none()},
)
SPEC_JSON = SPEC_JSON_OK | st.fixed_dictionaries(
    {"measure": MEASURE},
    optional={
        "dataset": st.sampled_from(["screenings", "other"]) | st.integers(0, 2),
        "group_by": st.lists(st.sampled_from(["sex", "grade_band", 1]), max_size=2),
        "where": CONDITION | st.none(),
        "years": st.lists(st.sampled_from([YEAR, "2023-2024", 2024]), max_size=2),
        "extra": st.just(1),
    },
)


def _outcome(parse: Any, data: dict[str, Any]) -> tuple[str, str]:
    """What a parse gives: the spec, typed (its repr shows 10 against 10.0), or the error."""
    try:
        return "spec", repr(parse(data))
    except QueryRefused as exc:
        return "refused", str(exc)


@settings(max_examples=300)
@given(SPEC_JSON)
def test_spec_from_json_is_from_json(data: dict[str, Any]) -> None:
    expected = _outcome(QuerySpec.from_json, copy.deepcopy(data))
    assert _outcome(spec_from_json, copy.deepcopy(data)) == expected
    assert _outcome(spec_from_json, data) == expected  # the second time, from the memo


def test_a_refusal_is_not_kept_and_the_argument_not_aliased() -> None:
    good: dict[str, Any] = {
        "dataset": "screenings",
        "measure": {"kind": "rate", "condition": {"column": "phq9_total", "op": ">=",
                                                  "values": [10]}},
        "group_by": ["sex"],
        "years": [YEAR],
    }  # fmt: skip
    bad = copy.deepcopy(good)
    bad["measure"]["kind"] = "median"
    for _ in range(2):
        with pytest.raises(QueryRefused):
            spec_from_json(bad)
        assert spec_from_json(good) == QuerySpec.from_json(good)
    kept = spec_from_json(good)
    good["measure"]["condition"]["values"] = [10.0]  # the caller's dict changes afterwards
    retyped = spec_from_json(good)
    assert repr(retyped) == repr(QuerySpec.from_json(good))
    assert retyped.measure.condition == Comparison("phq9_total", ">=", (10.0,))
    assert repr(kept) != repr(retyped)
    assert kept.canonical() != retyped.canonical()


# --- specs equal under == but not in type ---------------------------------------------------


def _rate(value: int | float) -> QuerySpec:
    return QuerySpec(
        "screenings",
        Measure("rate", condition=Comparison("phq9_total", ">=", (value,))),
        ("sex",),
        None,
        (YEAR,),
    )


def test_equal_specs_of_other_types_keep_their_own_canonical_form_and_plan() -> None:
    catalogue = shipped_catalogue()
    for first, second in ((10, 10.0), (10.0, 10)):
        a, b = _rate(first), _rate(second)
        assert a == b  # the trap: dataclass equality says they are one question
        assert spec_canonical(a) == a.canonical()
        assert spec_canonical(b) == b.canonical()
        assert spec_canonical(a) != spec_canonical(b)
        assert spec_canonical(a, without_years=True) != spec_canonical(b, without_years=True)
        plan_a, keys_a = plan_for(a, catalogue)
        plan_b, keys_b = plan_for(b, catalogue)
        assert plan_a.spec is a
        assert plan_b.spec is b
        assert repr(plan_a.params) == repr(compile_query(a, catalogue).params)
        assert repr(plan_b.params) == repr(compile_query(b, catalogue).params)
        assert keys_a == {cell_key(cell) for cell in compile_query(a, catalogue).cells}
        assert keys_b == {cell_key(cell) for cell in compile_query(b, catalogue).cells}


def test_the_years_switch_is_part_of_the_canonical_key() -> None:
    spec = _rate(10)
    without = spec_canonical(spec, without_years=True)
    assert spec_canonical(spec) == spec.canonical()
    assert without != spec.canonical()
    assert spec_canonical(spec) == spec.canonical()  # the other form did not overwrite it
    assert spec_canonical(spec, without_years=True) == without


def _honest_rate(node: str, value: int | float) -> dict[str, Any]:
    plan = compile_query(_rate(value), shipped_catalogue())
    rows = [(*cell, *[40] * plan.aggregates) for cell in plan.cells]
    threshold = shipped_catalogue().limits.publication_threshold
    return {
        "version": 1,
        "node_id": node,
        "analyst": "alice",
        "query": _rate(value).to_json(),
        "epsilon": 0.3,
        "threshold": threshold,
        **release(plan, rows, 0.3, threshold),
    }


@pytest.mark.parametrize(("asked", "restated"), [(10, 10.0), (10.0, 10)])
def test_an_answer_restating_the_question_retyped_is_refused_memos_warm_or_cold(
    asked: int | float, restated: int | float
) -> None:
    """The answer's question must be the signed one byte for byte: 10.0 for 10 is another
    question, whether or not the memos already hold the signed spec's plan and form."""
    query = signed_query(_rate(asked), 0.3)

    def verify(body: dict[str, Any]) -> None:
        verify_answer(
            signed_answer("130102", body, query), manifest=MANIFEST, node_id="130102",
            expected_query=query, public=False,
        )  # fmt: skip

    retyped = _honest_rate("130102", restated)
    with pytest.raises(VerificationError, match="different question"):
        verify(retyped)  # cold
    for _ in range(2):
        verify(_honest_rate("130102", asked))  # the honest answer warms every memo
        with pytest.raises(VerificationError, match="different question"):
            verify(retyped)


# --- BoundedMemo ------------------------------------------------------------------------------


def test_a_failure_is_not_kept() -> None:
    memo: BoundedMemo[str, int] = BoundedMemo(4)
    calls = []

    def fail() -> int:
        calls.append("fail")
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        memo.get("k", fail)

    def make() -> int:
        calls.append("made")
        return 7

    assert memo.get("k", make) == 7
    assert memo.get("k", fail) == 7  # kept now: fail is not called
    assert calls == ["fail", "made"]


def test_the_oldest_is_forgotten_first() -> None:
    memo: BoundedMemo[int, int] = BoundedMemo(3)
    for k in range(5):
        memo.get(k, lambda k=k: k * 10)  # type: ignore[misc]
    assert memo.get(4, lambda: -1) == 40
    assert memo.get(2, lambda: -1) == 20
    assert memo.get(1, lambda: -1) == -1  # forgotten: made again


def test_a_memo_shared_by_threads_stays_bounded_and_never_mixes_keys() -> None:
    size, threads, rounds = 16, 8, 1500
    memo: BoundedMemo[tuple[int, int], tuple[int, int]] = BoundedMemo(size)
    wrong: list[tuple[object, object]] = []
    largest = [0]
    start = threading.Barrier(threads)

    def work(seed: int) -> None:
        start.wait(timeout=30)
        for n in range(rounds):  # bounded
            key = ((seed * 7919 + n * 104729) % 40, n % 3)
            got = memo.get(key, lambda key=key: key)  # type: ignore[misc]
            if got != key:
                wrong.append((key, got))
            if n % 50 == 0:
                largest[0] = max(largest[0], len(memo._entries))

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert not worker.is_alive()
    assert wrong == []
    # lock-free: each thread adds at most one entry before it evicts (the documented bound)
    assert 0 < largest[0] <= size + threads
    assert len(memo._entries) <= size


def test_take_hands_over_a_kept_value_and_keeps_nothing() -> None:
    memo: BoundedMemo[str, int] = BoundedMemo(4)
    assert memo.get("a", lambda: 1) == 1
    assert memo.take("a", lambda: -1) == 1  # the kept value, no longer kept
    assert memo.take("a", lambda: 2) == 2  # made, and not kept either
    assert memo._entries == {}
