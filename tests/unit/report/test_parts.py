"""report.parts: noisy values, their independent and shared noise, and their intervals."""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Hashable, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedscreen.protocol.combine import discrete_laplace_variance, sum_interval
from fedscreen.report.parts import Part, Term, linear_cumulants, linear_half_width, total

EXAMPLES = settings(max_examples=200, deadline=None, database=None)

#: a discrete Laplace scale: ε from about 0.01 to 2 per cell
scale_st = st.floats(min_value=0.5, max_value=100.0, allow_nan=False)
value_st = st.integers(min_value=-1000, max_value=10**6)
#: a measured cell's weight in a figure: least-squares weights below 1e-12 are dropped as
#: float dust (report.derived.NEGLIGIBLE_WEIGHT); see the underflow test for far smaller ones
weight_st = st.one_of(
    st.just(0.0),
    st.floats(min_value=1e-12, max_value=3.0),
    st.floats(min_value=-3.0, max_value=-1e-12),
)
#: the measured cells noise can be shared through: each has its one scale
CELLS = tuple(("node", "table", i) for i in range(6))


@st.composite
def cell_scales(draw: st.DrawFn) -> dict[Hashable, float]:
    return {key: draw(scale_st) for key in CELLS}


@st.composite
def parts(draw: st.DrawFn, scales: Mapping[Hashable, float] | None = None) -> Part:
    keys = draw(st.lists(st.sampled_from(CELLS), unique=True, max_size=4)) if scales else []
    terms: dict[Hashable, Term] = {k: (draw(weight_st), scales[k]) for k in keys} if scales else {}
    return Part(float(draw(value_st)), tuple(draw(st.lists(scale_st, max_size=4))), terms)


@st.composite
def part_lists(draw: st.DrawFn) -> list[Part]:
    scales = draw(cell_scales())
    return draw(st.lists(parts(scales), min_size=1, max_size=6))


def exact_variance(pairs: list[tuple[float, Part]]) -> float:
    """Var(Σ c·part) from first principles: each noise term's total coefficient."""
    coefficient: dict[Hashable, float] = {}
    scale_of: dict[Hashable, float] = {}
    independent = 0.0
    for c, part in pairs:
        independent += sum(c * c * discrete_laplace_variance(s) for s in part.scales)
        for key, (weight, scale) in part.terms.items():
            coefficient[key] = coefficient.get(key, 0.0) + c * weight
            scale_of[key] = scale
    shared = sum(w * w * discrete_laplace_variance(scale_of[k]) for k, w in coefficient.items())
    return independent + shared


# --- arithmetic -------------------------------------------------------------------------


@EXAMPLES
@given(part_lists())
def test_total_is_the_pairwise_sum(items: list[Part]) -> None:
    before = [dict(p.terms) for p in items]
    summed = functools.reduce(operator.add, items)
    one_pass = total(items)
    # the same additions in the same order
    assert one_pass.value == summed.value
    assert one_pass.scales == summed.scales
    assert one_pass.terms.keys() == summed.terms.keys()
    for key, (weight, scale) in one_pass.terms.items():
        assert summed.terms[key] == pytest.approx((weight, scale), rel=1e-12, abs=1e-12)
    # adding never changes an operand (terms are copied, not updated in place)
    assert [dict(p.terms) for p in items] == before
    assert one_pass.variance == pytest.approx(exact_variance([(1.0, p) for p in items]), rel=1e-9)


def test_total_of_nothing_is_an_exact_zero() -> None:
    assert total([]) == Part(0.0)
    assert total([]).exact
    assert total([]).interval() == (0.0, 0.0)


@EXAMPLES
@given(st.lists(st.tuples(value_st, st.lists(scale_st, max_size=4)), min_size=1, max_size=6))
def test_independent_parts_add_their_variances(items: list[tuple[int, list[float]]]) -> None:
    parts_ = [Part(float(v), tuple(s)) for v, s in items]
    kappa2, fourth = linear_cumulants(*((1.0, p) for p in parts_))
    assert kappa2 == pytest.approx(sum(p.variance for p in parts_), rel=1e-12)
    assert total(parts_).variance == pytest.approx(kappa2, rel=1e-12)
    each = [discrete_laplace_variance(s) for _, scales in items for s in scales]
    assert fourth == pytest.approx(sum(v * v for v in each), rel=1e-12)


@EXAMPLES
@given(part_lists(), st.lists(st.floats(min_value=-2, max_value=2), min_size=6, max_size=6))
def test_shared_terms_add_their_weights(items: list[Part], coefficients: list[float]) -> None:
    pairs = list(zip(coefficients, items, strict=False))
    kappa2, _ = linear_cumulants(*pairs)
    assert kappa2 == pytest.approx(exact_variance(pairs), rel=1e-9, abs=1e-9)


@EXAMPLES
@given(cell_scales(), st.data())
def test_a_rate_numerator_and_its_denominator_share_their_cells(
    scales: dict[Hashable, float], data: st.DataObject
) -> None:
    # a rate from one table: the denominator sums cells, the numerator some of them
    den_keys = data.draw(st.lists(st.sampled_from(CELLS), unique=True, min_size=1))
    num_keys = data.draw(st.lists(st.sampled_from(den_keys), unique=True))
    r = data.draw(st.floats(min_value=0.0, max_value=1.0))
    num = Part(100.0, (), {k: (1.0, scales[k]) for k in num_keys})
    den = Part(300.0, (), {k: (1.0, scales[k]) for k in den_keys})
    expected = sum(
        ((1.0 if k in num_keys else 0.0) - r) ** 2 * discrete_laplace_variance(scales[k])
        for k in den_keys
    )
    kappa2, _ = linear_cumulants((1.0, num), (-r, den))
    assert kappa2 == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # the whole over itself: no noise at all in the ratio 1
    assert linear_cumulants((1.0, den), (-1.0, den)) == (0.0, 0.0)
    assert linear_half_width((1.0, den), (-1.0, den)) == 0.0
    # independent scales do not cancel: they are separate draws
    twice = Part(5.0, (2.0,))
    assert linear_cumulants((1.0, twice), (-1.0, twice))[0] == pytest.approx(
        2 * discrete_laplace_variance(2.0)
    )


def test_a_shared_cell_counted_twice_has_four_times_the_variance() -> None:
    cell = Part(10.0, (), {("n", "t", 0): (1.0, 3.0)})
    assert (cell + cell).variance == pytest.approx(4 * discrete_laplace_variance(3.0))
    assert (cell + cell).terms == {("n", "t", 0): (2.0, 3.0)}
    other = Part(10.0, (), {("m", "t", 0): (1.0, 3.0)})
    assert (cell + other).variance == pytest.approx(2 * discrete_laplace_variance(3.0))


# --- intervals --------------------------------------------------------------------------


@EXAMPLES
@given(value_st, st.lists(scale_st, min_size=1, max_size=8))
def test_a_scales_only_interval_is_the_provincial_sums(value: int, scales: list[float]) -> None:
    low, high = Part(float(value), tuple(scales)).interval()
    _, expected_low, expected_high, _ = sum_interval([value], scales)
    assert low == pytest.approx(expected_low, rel=1e-12, abs=1e-9)
    assert high == pytest.approx(expected_high, rel=1e-12, abs=1e-9)
    # the same noise written as shared terms of weight 1 gets the same interval
    terms: dict[Hashable, Term] = {i: (1.0, s) for i, s in enumerate(scales)}
    assert Part(float(value), (), terms).interval() == pytest.approx((low, high), rel=1e-12)


@EXAMPLES
@given(cell_scales().flatmap(parts))
def test_intervals_are_symmetric(part: Part) -> None:
    low, high = part.interval()
    assert low <= part.value <= high
    assert part.value - low == pytest.approx(high - part.value, rel=1e-9, abs=1e-9)
    if part.exact:
        assert low == high == part.value
    elif math.sqrt(part.variance) > 1e-9 * max(1.0, abs(part.value)):
        # (a noise far below the value's float resolution leaves low == value == high)
        assert high - low > 0


def independent(scales: list[float]) -> Part:
    return Part(0.0, tuple(scales))


def weighted(scales: list[float]) -> Part:
    return Part(0.0, (), {i: (0.5 + i, x) for i, x in enumerate(scales)})


@EXAMPLES
@given(
    st.lists(scale_st, min_size=1, max_size=6),
    st.integers(min_value=0, max_value=5),
    st.floats(min_value=1.01, max_value=10.0),
)
def test_half_widths_grow_with_the_scales(scales: list[float], which: int, factor: float) -> None:
    which %= len(scales)
    wider = list(scales)
    wider[which] *= factor
    for make in (independent, weighted):
        before, after = make(scales).interval()[1], make(wider).interval()[1]
        assert after > before
        # another noise term never narrows the interval either
        assert make([*scales, 1.0]).interval()[1] > before


def test_an_exact_part_has_no_interval_width() -> None:
    assert Part(42.0).interval() == (42.0, 42.0)
    assert Part(42.0).variance == 0.0
    # a shared term whose weights cancelled is noise-free, but not "exact" data
    cancelled = Part(3.0, (), {"k": (1.0, 2.0)}) + Part(-3.0, (), {"k": (-1.0, 2.0)})
    assert cancelled.interval() == (0.0, 0.0)


def test_a_negligible_shared_weight_has_a_negligible_interval() -> None:
    part = Part(0.0, (), {("n", "t", 0): (1.2e-158, 1.0)})
    assert part.variance > 0
    low, high = part.interval()
    assert -1e-150 < low < 0.0 < high < 1e-150
