"""Differentially private mechanisms, all from OpenDP.

The node aggregates in SQLite and adds noise to the aggregates (DESIGN.md: pushing
a million rows through an OpenDP transformation costs seconds; noising a vector
of counts costs a fraction of a millisecond). What OpenDP is asked to do, and the
sensitivity it is told, follow from the unit of privacy — one student in one
academic year, one row of the bounded view — under add/remove-one neighbours:

* counts over disjoint cells: L1 sensitivity 1 → discrete Laplace (pure ε-DP);
* clamped sums over disjoint cells: L1 sensitivity max(|lo|, |hi|);
* quantiles: the exponential mechanism (OpenDP's report-noisy-max, which under
  pure DP adds exponential noise — permute-and-flip) on
  OpenDP's quantile score, whose per-candidate terms are computed in SQL.

Every measurement is built here from numbers, never deserialised from input,
and its privacy map is asked for the ε it spends (no hand-written ε formula).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any, Final

import opendp.prelude as dp
from opendp.accuracy import (
    accuracy_to_discrete_laplacian_scale,
    discrete_laplacian_scale_to_accuracy,
)

dp.enable_features("contrib")

#: every stated interval is a 95% interval
ALPHA: Final = 0.05
#: quantile levels are rationals with at most this denominator (as in OpenDP's scorer)
QUANTILE_DENOMINATOR: Final = 10_000
#: float rounding slack when checking a measurement's privacy map against a budget
EPSILON_SLACK: Final = 1e-9
#: largest noise scale a release may use (the scale of the discrete Laplace or of the
#: quantile's exponential noise): at 10^12 a noisy 64-bit count or sum passes 2^53 (the
#: last integer every JSON reader keeps exact; 2^63 saturates OpenDP's i64) with
#: probability below e^-9000, and every interval is a finite integer. ε ≥ 1 µε keeps
#: counts at scale ≤ 10^6; only very large clamp bounds come near it.
MAX_SCALE: Final = 10**12


@dataclass(frozen=True)
class NoisyVector:
    """Noisy integer aggregates with the mechanism that produced them."""

    values: tuple[int, ...]
    mechanism: str
    scale: float
    epsilon: float
    #: noisy value ± half_width covers the true value with probability ≥ 95%
    half_width: int


@lru_cache(maxsize=256)
def _laplace(scale: float) -> Any:
    # vector input: one OpenDP call noises every cell of a query
    return dp.m.make_laplace(
        dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64"), scale
    )


def scale_for(*, epsilon: float, sensitivity: int) -> float:
    """Discrete-Laplace scale that spends ``epsilon`` at L1 ``sensitivity``."""
    if not epsilon > 0 or not math.isfinite(epsilon):
        raise ValueError("epsilon must be a positive number")
    return sensitivity / epsilon


def epsilon_for_accuracy(*, accuracy: float, sensitivity: int) -> float:
    """ε at which each noisy aggregate is within ±accuracy with 95% probability
    (``inf`` when no finite ε reaches an accuracy that fine)."""
    scale = float(accuracy_to_discrete_laplacian_scale(accuracy, ALPHA))
    if not scale > 0:
        return math.inf
    return sensitivity / scale


def quantile_scale(*, q: float, epsilon: float) -> float:
    """The scale :func:`exponential_quantile` uses for level ``q`` at ``epsilon``."""
    num, den = quantile_fraction(q)
    return _quantile_scale(max(num, den - num), epsilon)


def _quantile_scale(sensitivity: int, epsilon: float) -> float:
    # the privacy map is linear in 1/scale: the scale that spends exactly ε
    return float(_noisy_min(1.0).map(sensitivity)) / epsilon


@lru_cache(maxsize=1024)
def half_width(scale: float, *, alpha: float = ALPHA) -> int:
    """(1 − alpha) half-width of discrete Laplace noise of this scale (integer noise → floor).

    Cached: OpenDP's accuracy call costs about 30 µs, and a coordinator checks every
    answer's intervals with it (all answers to one query share a scale).
    """
    return math.floor(float(discrete_laplacian_scale_to_accuracy(scale, alpha)))


def laplace_vector(values: list[int], *, epsilon: float, sensitivity: int) -> NoisyVector:
    """Add discrete Laplace noise to integer aggregates of disjoint cells."""
    scale = scale_for(epsilon=epsilon, sensitivity=sensitivity)
    measurement = _laplace(scale)
    spent = float(measurement.map(sensitivity))
    if spent > epsilon * (1 + EPSILON_SLACK):
        raise AssertionError(f"OpenDP maps this release to ε={spent}, above the {epsilon} charged")
    noisy = measurement([int(v) for v in values]) if values else []
    return NoisyVector(
        tuple(int(v) for v in noisy), "discrete_laplace", scale, spent, half_width(scale)
    )


def laplace_noise(count: int, *, epsilon: float, sensitivity: int) -> NoisyVector:
    """``count`` discrete-Laplace draws alone (OpenDP's mechanism on zeros), to add to a
    secret-shared sum mod 2⁶⁴: OpenDP's i64 arithmetic would saturate on a residue."""
    return laplace_vector([0] * count, epsilon=epsilon, sensitivity=sensitivity)


def quantile_fraction(q: float) -> tuple[int, int]:
    """The quantile level as num/den, exactly as OpenDP's quantile scorer rationalises it.

    OpenDP (``score_candidates_constants``) keeps the float's exact fraction when
    its denominator is below 10,000 (0.5 → 1/2) and otherwise uses
    ⌊q · 10,000⌋/10,000 (the tests pin this against OpenDP itself).
    """
    exact = Fraction(q)
    if exact.denominator < QUANTILE_DENOMINATOR:
        return exact.numerator, exact.denominator
    return math.floor(q * QUANTILE_DENOMINATOR), QUANTILE_DENOMINATOR


def quantile_scores(below: list[int], above: list[int], q: float) -> tuple[list[int], int]:
    """OpenDP's quantile score per candidate, from counts below/above it, and its sensitivity.

    score = |(den − num)·#below − num·#above| for q = num/den, as in
    ``opendp.trans.make_quantile_score_candidates``; adding or removing one row
    moves one count by one, so the scores' L∞ sensitivity is max(num, den − num).
    """
    num, den = quantile_fraction(q)
    scores = [abs((den - num) * b - num * a) for b, a in zip(below, above, strict=True)]
    return scores, max(num, den - num)


@lru_cache(maxsize=256)
def _noisy_min(scale: float) -> Any:
    return dp.m.make_noisy_max(
        dp.vector_domain(dp.atom_domain(T="u64")),
        dp.linf_distance(T="u64"),
        dp.max_divergence(),
        scale,
        negate=True,
    )


def exponential_quantile(
    scores: list[int], *, sensitivity: int, epsilon: float
) -> tuple[int, float]:
    """Index of the chosen candidate (lowest noisy score) and the mechanism's scale."""
    scale = _quantile_scale(sensitivity, epsilon)
    measurement = _noisy_min(scale)
    spent = float(measurement.map(sensitivity))
    if spent > epsilon * (1 + EPSILON_SLACK):
        raise AssertionError(f"OpenDP maps this release to ε={spent}, above the {epsilon} charged")
    return int(measurement(scores)), scale
