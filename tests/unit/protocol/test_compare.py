"""``same_figures``: one rule for comparing recomputed figures with stated ones."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from fedscreen.protocol.compare import REL_TOL, same_figures

SCALARS = st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.floats()
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(VALUES)
def test_every_value_is_the_same_as_itself(value: Any) -> None:
    assert same_figures(value, value)


@given(VALUES, VALUES)
def test_the_comparison_is_symmetric(a: Any, b: Any) -> None:
    assert same_figures(a, b) == same_figures(b, a)


@given(st.floats(min_value=-1e12, max_value=1e12, allow_nan=False), st.integers(-4, 4))
def test_floats_within_the_relative_tolerance_are_the_same(x: float, ulps: int) -> None:
    # another libm: a few units in the last place apart
    y = x
    for _ in range(abs(ulps)):
        y = math.nextafter(y, math.inf if ulps > 0 else -math.inf)
    assert same_figures(x, y)
    assert same_figures([{"lower": x}], [{"lower": y}])


@given(st.floats(min_value=1.0, max_value=1e12))
def test_floats_further_apart_differ(x: float) -> None:
    assert not same_figures(x, x * (1 + 100 * REL_TOL))
    assert not same_figures(-x, -x * (1 + 100 * REL_TOL))


def test_near_zero_the_tolerance_is_absolute() -> None:
    assert same_figures(0.0, 1e-12)
    assert same_figures(-0.0, 0.0)
    assert not same_figures(0.0, 1e-6)


@given(st.integers(), st.integers())
def test_integers_compare_exactly(a: int, b: int) -> None:
    assert same_figures(a, b) == (a == b)


def test_integers_strings_flags_and_none_are_never_approximate() -> None:
    assert not same_figures(10**18, 10**18 + 1)
    assert not same_figures(True, 1)
    assert not same_figures(False, 0.0)
    assert not same_figures(None, 0)
    assert not same_figures("< 10", "< 11")
    assert not same_figures("1", 1)
    assert same_figures(3, 3.0)  # a float recomputed where an integer was stated
    assert not same_figures(math.nan, 0.0)
    assert same_figures(math.inf, math.inf)
    assert not same_figures(math.inf, -math.inf)
    assert not same_figures(1e308, math.inf)


def test_structures_must_have_the_same_shape() -> None:
    assert not same_figures([1, 2], [1, 2, 3])
    assert not same_figures({"a": 1}, {"a": 1, "b": 2})
    assert not same_figures({"a": 1}, [1])
    assert same_figures((1, 2.0), [1, 2.0])  # a tuple recomputed, a list stated (JSON)


@given(VALUES)
def test_a_json_round_trip_keeps_the_figures(value: Any) -> None:
    try:
        text = json.dumps(value)
    except ValueError:
        return
    if any(isinstance(v, float) and math.isnan(v) for v in _leaves(value)):
        return
    assert same_figures(json.loads(text), value)


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    return [value]
