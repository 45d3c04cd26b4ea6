"""The OpenDP mechanisms: real noise, checked statistically, and OpenDP's quantile scorer.

Statistical tests use fixed sample sizes and fixed tolerances chosen so that each
assertion sits at least 5 standard deviations from the expected value (the margin is
recomputed and asserted inside each test). A failure of a correct implementation
therefore has probability below ~1e-6 per assertion: a failure means a bug.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings
from collections import Counter
from fractions import Fraction

import opendp.prelude as dp
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from fedscreen.query import mechanisms
from fedscreen.query.mechanisms import (
    ALPHA,
    exponential_quantile,
    half_width,
    laplace_vector,
    quantile_fraction,
    quantile_scores,
    scale_for,
)

dp.enable_features("contrib")

# When a Hypothesis test fails, its pytest plugin imports libcst to suggest a patch, and
# libcst's import raises a DeprecationWarning (mypy_extensions.TypedDict) that the
# project's "warnings are errors" turns into an INTERNALERROR ending the whole session.
# Importing libcst once here, with that warning silenced, keeps a failure a failure.
with warnings.catch_warnings(), contextlib.suppress(ImportError):
    warnings.simplefilter("ignore", DeprecationWarning)
    import libcst  # noqa: F401

#: a fixed true count: every cell of every release has this value
TRUE_COUNT = 1_000
#: standard deviations between each statistical assertion and its tolerance bound
SIGMAS = 5.0


def dlap_p(scale: float) -> float:
    return math.exp(-1.0 / scale)


def dlap_variance(scale: float) -> float:
    """Variance of discrete Laplace noise of this scale: 2·e^{-1/s}/(1−e^{-1/s})²."""
    p = dlap_p(scale)
    return 2 * p / (1 - p) ** 2


def dlap_fourth_moment(scale: float) -> float:
    """E[Y⁴] of discrete Laplace noise, summed from the pmf (tail below 1e-30 ignored)."""
    p = dlap_p(scale)
    norm = (1 - p) / (1 + p)
    kmax = math.ceil(80 * scale) + 50
    return 2 * norm * sum(k**4 * p**k for k in range(1, kmax))


def dlap_coverage(scale: float, half: int) -> float:
    """P(|Y| <= half) for discrete Laplace noise: 1 − 2·p^{half+1}/(1+p)."""
    p = dlap_p(scale)
    return 1 - 2 * p ** (half + 1) / (1 + p)


def _noise(epsilon: float, sensitivity: int, releases: int, cells: int) -> list[int]:
    out: list[int] = []
    for _ in range(releases):
        noisy = laplace_vector([TRUE_COUNT] * cells, epsilon=epsilon, sensitivity=sensitivity)
        out.extend(v - TRUE_COUNT for v in noisy.values)
    return out


# --- discrete Laplace: variance -------------------------------------------------------

#: relative tolerance on the empirical variance
VARIANCE_TOLERANCE = 0.05
#: samples per case: 60 releases of a 1,000-cell vector (each cell one release of the count)
VARIANCE_SAMPLES = (60, 1_000)


@pytest.mark.parametrize(
    ("epsilon", "sensitivity"),
    [(0.1, 1), (0.5, 1), (0.2, 27)],
    ids=["count-eps0.1", "count-eps0.5", "sum-bound27-eps0.2"],
)
def test_empirical_variance_matches_discrete_laplace(epsilon: float, sensitivity: int) -> None:
    releases, cells = VARIANCE_SAMPLES
    noise = _noise(epsilon, sensitivity, releases, cells)
    n = len(noise)
    scale = sensitivity / epsilon
    expected = dlap_variance(scale)
    # the true mean (0) is known: mean of squares is unbiased, sd = sqrt((μ4 − σ⁴)/n)
    empirical = sum(x * x for x in noise) / n
    sd = math.sqrt((dlap_fourth_moment(scale) - expected**2) / n)
    assert VARIANCE_TOLERANCE * expected >= SIGMAS * sd, "too few samples for the tolerance"
    assert abs(empirical - expected) <= VARIANCE_TOLERANCE * expected, (empirical, expected)
    # and the noise is centred
    mean_sd = math.sqrt(expected / n)
    assert abs(sum(noise) / n) <= SIGMAS * mean_sd


# --- discrete Laplace: the stated 95% interval ------------------------------------------

#: ε = 0.1 (scale 10): the exact coverage of ±half_width is 0.9527, inside 94–96%; at ε = 1
#: the integer noise pushes it to 0.973, which is why a small ε is used here
COVERAGE_EPSILON = 0.1
COVERAGE_SAMPLES = (100, 1_000)


def test_interval_covers_the_true_count_95_percent_of_the_time() -> None:
    releases, cells = COVERAGE_SAMPLES
    covered = 0
    total = 0
    half = None
    for _ in range(releases):
        noisy = laplace_vector([TRUE_COUNT] * cells, epsilon=COVERAGE_EPSILON, sensitivity=1)
        half = noisy.half_width
        covered += sum(v - half <= TRUE_COUNT <= v + half for v in noisy.values)
        total += len(noisy.values)
    assert half is not None
    scale = 1 / COVERAGE_EPSILON
    exact = dlap_coverage(scale, half)
    sd = math.sqrt(exact * (1 - exact) / total)
    # the tolerance band 94–96% is at least 5 sd away from the exact coverage
    assert 0.94 + SIGMAS * sd <= exact <= 0.96 - SIGMAS * sd
    rate = covered / total
    assert 0.94 <= rate <= 0.96, rate
    assert abs(rate - exact) <= SIGMAS * sd, (rate, exact)


@pytest.mark.parametrize(
    "scale",
    [0.5, 1.0, 2.0, 10 / 3, 5.0, 10.0, 20.0, 50.0, 100.0, 135.0, 270.0, 1000.0],
)
@pytest.mark.parametrize("alpha", [ALPHA, ALPHA / 2])
def test_half_width_is_the_smallest_integer_with_the_coverage(scale: float, alpha: float) -> None:
    """Exact check (no sampling): ±h covers with probability ≥ 1−α, and ±(h−1) does not."""
    h = half_width(scale, alpha=alpha)
    assert dlap_coverage(scale, h) >= 1 - alpha
    assert h == 0 or dlap_coverage(scale, h - 1) < 1 - alpha


def test_noisy_vector_reports_what_opendp_spent() -> None:
    noisy = laplace_vector([5, 0, 12], epsilon=0.25, sensitivity=27)
    assert noisy.mechanism == "discrete_laplace"
    assert noisy.scale == pytest.approx(27 / 0.25)
    assert noisy.epsilon == pytest.approx(0.25)
    assert noisy.epsilon <= 0.25 * (1 + mechanisms.EPSILON_SLACK)
    assert noisy.half_width == half_width(27 / 0.25)
    assert len(noisy.values) == 3
    assert all(isinstance(v, int) for v in noisy.values)
    assert laplace_vector([], epsilon=0.25, sensitivity=1).values == ()


@pytest.mark.parametrize("epsilon", [0.0, -1.0, math.inf, math.nan])
def test_scale_for_refuses_a_bad_epsilon(epsilon: float) -> None:
    with pytest.raises(ValueError, match="epsilon must be a positive number"):
        scale_for(epsilon=epsilon, sensitivity=1)


@pytest.mark.parametrize("accuracy", [1.0, 3.0, 10.0, 30.5, 100.0])
def test_epsilon_for_accuracy_gives_that_half_width(accuracy: float) -> None:
    for sensitivity in (1, 27):
        epsilon = mechanisms.epsilon_for_accuracy(accuracy=accuracy, sensitivity=sensitivity)
        scale = scale_for(epsilon=epsilon, sensitivity=sensitivity)
        assert half_width(scale) <= accuracy
        assert dlap_coverage(scale, math.floor(accuracy)) >= 1 - ALPHA


# --- quantile: the score is OpenDP's --------------------------------------------------

#: integer data in [0, 40]; the catalogue clamps to bounds before scoring, so in-range data
_DATA = st.lists(st.integers(min_value=0, max_value=40), min_size=0, max_size=60)
_CANDIDATES = st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=12, unique=True)
_LEVELS = st.floats(min_value=0.001, max_value=0.999)


def _opendp_scorer(candidates: list[int], q: float) -> dp.Transformation:
    return dp.t.make_quantile_score_candidates(
        dp.vector_domain(dp.atom_domain(T="i64")), dp.symmetric_distance(), candidates, q
    )


def _assert_opendp_scores(data: list[int], candidates: list[int], q: float) -> None:
    """Our scores and sensitivity, from SQL-style counts, equal OpenDP's own scorer's."""
    below, above = _sql_counts(data, candidates)
    scores, sensitivity = quantile_scores(below, above, q)
    scorer = _opendp_scorer(candidates, q)
    assert scores == list(scorer(data))
    assert sensitivity == scorer.map(1)


def _sql_counts(data: list[int], candidates: list[int]) -> tuple[list[int], list[int]]:
    """Counts below/above each candidate, the way the compiled SQL computes them."""
    below = [sum(x < c for x in data) for c in candidates]
    above = [sum(x > c for x in data) for c in candidates]
    return below, above


@pytest.mark.parametrize("q", [0.5, 0.25, 0.75, 0.125, 0.1, 0.9, 1 / 3, 0.95, 0.77777])
def test_quantile_scores_equal_opendp_scores(q: float) -> None:
    """fedscreen computes OpenDP's quantile score from SQL counts; the two must agree.

    OpenDP 0.16 rationalises q as its exact binary fraction when that has a denominator
    below 10,000 (0.5 → 1/2, 0.125 → 1/8), and otherwise as ⌊q·10,000⌋/10,000 *unreduced*
    (0.1 → 1,000/10,000; 1/3 → 3,333/10,000; 0.77777 → 7,777/10,000): scores and
    sensitivity then scale with that denominator. (``Fraction.limit_denominator`` — 1/10,
    1/3, 7,773/9,994 — gives different scores.)
    """
    data = [3, 7, 7, 0, 12, 5, 5, 5, 9, 1, 27, 14, 2, 8]
    candidates = [0, 2, 4, 5, 7, 10, 15, 27]
    _assert_opendp_scores(data, candidates, q)


# no shrinking: the first non-dyadic level already fails (see the test above), and
# shrinking through OpenDP calls would take tens of seconds
@settings(
    max_examples=150,
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
)
@given(data=_DATA, candidates=_CANDIDATES, q=_LEVELS)
def test_quantile_scores_equal_opendp_scores_on_random_data(
    data: list[int], candidates: list[int], q: float
) -> None:
    candidates = sorted(candidates)
    _assert_opendp_scores(data, candidates, q)


@settings(max_examples=150, deadline=None, database=None)
@given(
    data=_DATA,
    candidates=_CANDIDATES,
    q=st.sampled_from([0.5, 0.25, 0.75, 0.125, 0.375, 0.0625, 0.5625]),
)
def test_quantile_scores_equal_opendp_scores_for_dyadic_levels(
    data: list[int], candidates: list[int], q: float
) -> None:
    """Where both rationalise q the same way (binary fractions), the scores agree."""
    candidates = sorted(candidates)
    _assert_opendp_scores(data, candidates, q)


@settings(max_examples=200, deadline=None, database=None)
@given(data=_DATA, extra=st.integers(0, 40), candidates=_CANDIDATES, q=_LEVELS)
def test_quantile_score_sensitivity_bounds_one_row(
    data: list[int], extra: int, candidates: list[int], q: float
) -> None:
    """Adding one row moves every score by at most the stated sensitivity (L∞)."""
    candidates = sorted(candidates)
    before, sensitivity = quantile_scores(*_sql_counts(data, candidates), q)
    after, _ = quantile_scores(*_sql_counts([*data, extra], candidates), q)
    assert max(abs(a - b) for a, b in zip(before, after, strict=True)) <= sensitivity
    # the level is rationalised within 1/den (den at most OpenDP's 10,000)
    num, den = quantile_fraction(q)
    assert 0 <= num <= den <= mechanisms.QUANTILE_DENOMINATOR
    assert abs(Fraction(num, den) - Fraction(q)) < Fraction(1, den)


def test_exponential_quantile_spends_epsilon_and_finds_a_clear_minimum() -> None:
    scores = [40, 25, 3, 0, 9, 60]
    # at a huge ε the noise (scale 2e-4) cannot overcome a score gap of 3
    for _ in range(50):
        index, scale = exponential_quantile(scores, sensitivity=1, epsilon=1e4)
        assert index == 3
    assert scale == pytest.approx(2e-4)
    index, scale = exponential_quantile(scores, sensitivity=7, epsilon=0.5)
    assert 0 <= index < len(scores)
    # OpenDP's map for report-noisy-max on non-monotonic scores: ε = 2·Δ/scale
    assert scale == pytest.approx(2 * 7 / 0.5)


def _noisy_min_probabilities(scores: list[int], scale: float) -> list[float]:
    """Exact selection probabilities of report-noisy-min with exponential noise.

    The candidate wins with the largest ``-score + Exp(scale)``; integrate its density
    times the others' CDFs (Simpson on each piece between the kinks at ``-score_j``).
    """
    breaks = sorted({-s for s in scores} | {-min(scores) + 60 * scale})
    probs = []
    for i, si in enumerate(scores):
        total = 0.0
        for lo, hi in itertools.pairwise(breaks):
            if hi <= -si:
                continue
            lo = max(lo, -si)
            steps = 2_000

            def density(x: float, si: float = si, i: int = i) -> float:
                f = math.exp(-(x + si) / scale) / scale
                for j, sj in enumerate(scores):
                    if j != i:
                        f *= 1 - math.exp(-(x + sj) / scale) if x >= -sj else 0.0
                return f

            h = (hi - lo) / steps
            acc = density(lo) + density(hi)
            acc += sum((4 if k % 2 else 2) * density(lo + k * h) for k in range(1, steps))
            total += acc * h / 3
        probs.append(total)
    return probs


def test_exponential_quantile_selection_distribution() -> None:
    """The chosen index follows report-noisy-min with exponential noise at the stated scale.

    (OpenDP 0.16's ``make_noisy_max`` with ``max_divergence`` adds exponential noise —
    permute-and-flip — not Gumbel noise; with Gumbel noise the first probability
    would be 0.786 instead of 0.867, 12 sd away at this sample size.)
    """
    scores = [0, 3, 6]
    draws = 3_000
    _, scale = exponential_quantile(scores, sensitivity=1, epsilon=1.0)
    expected = _noisy_min_probabilities(scores, scale)
    assert sum(expected) == pytest.approx(1.0, abs=1e-6)
    counts = Counter(
        exponential_quantile(scores, sensitivity=1, epsilon=1.0)[0] for _ in range(draws)
    )
    for index, p in enumerate(expected):
        sd = math.sqrt(p * (1 - p) / draws)
        assert abs(counts[index] / draws - p) <= SIGMAS * sd, (index, counts, expected)
