"""Noisy values and their noise, for the report's arithmetic on released figures.

A :class:`Part` is a value computed from noisy releases and what its noise is made
of: independent discrete Laplace terms, each added once (a node's noisy cell, given by
its scale), and *shared* terms, each with a weight (a least-squares estimate from a
measured table is a weighted sum of that table's noisy cells, and two figures of one
table share those cells' noise). Sums add the weights of shared terms, so the
variance of any linear combination — a share, a rate's linearisation — accounts for
the correlation exactly.

The 95% interval of a linear combination Σ wᵢ·eᵢ of independent discrete Laplace
noises is the Cornish–Fisher point with the weighted cumulants (κ₂ = Σ wᵢ²σᵢ²,
κ₄ = 3·Σ (wᵢ²σᵢ²)², as for Laplace noise), as for the provincial sums.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field

from fedscreen.protocol.combine import (
    LAPLACE_EXCESS_KURTOSIS,
    Z_975,
    discrete_laplace_variance,
    sum_interval,
)

#: a shared noise term: its weight in the value, and the discrete Laplace scale of the noise
Term = tuple[float, float]


@dataclass(frozen=True)
class Part:
    """A value and its noise: independent terms (``scales``) and shared ones (``terms``)."""

    value: float
    scales: tuple[float, ...] = ()
    terms: Mapping[Hashable, Term] = field(default_factory=dict)

    def __add__(self, other: Part) -> Part:
        terms = dict(self.terms)
        for key, (weight, scale) in other.terms.items():
            terms[key] = (terms[key][0] + weight, scale) if key in terms else (weight, scale)
        return Part(self.value + other.value, self.scales + other.scales, terms)

    @property
    def exact(self) -> bool:
        """No noise in it (public data)."""
        return not self.scales and not self.terms

    @property
    def variance(self) -> float:
        """The variance of its noise."""
        return linear_cumulants((1.0, self))[0]

    def interval(self) -> tuple[float, float]:
        """95% interval (Cornish–Fisher for a sum of Laplace-like noises)."""
        if self.exact:
            return float(self.value), float(self.value)
        if not self.terms:
            _, low, high, _ = sum_interval([0], list(self.scales))
            return self.value + low, self.value + high
        half = linear_half_width((1.0, self))
        return self.value - half, self.value + half


def total(parts: Iterable[Part]) -> Part:
    """The sum of ``parts``, in one pass (adding them pairwise copies the terms each time)."""
    value = 0.0
    scales: list[float] = []
    terms: dict[Hashable, Term] = {}
    for part in parts:
        value += part.value
        scales.extend(part.scales)
        for key, (weight, scale) in part.terms.items():
            terms[key] = (terms[key][0] + weight, scale) if key in terms else (weight, scale)
    return Part(value, tuple(scales), terms)


def linear_cumulants(*pairs: tuple[float, Part]) -> tuple[float, float]:
    """(κ₂, Σ (wᵢ²σᵢ²)²) of the noise of Σ c·part over (c, part) pairs: shared terms add
    their weights first (correlated), independent ones each count once."""
    kappa2 = fourth = 0.0
    shared: dict[Hashable, Term] = {}
    for c, part in pairs:
        for scale in part.scales:
            v = c * c * discrete_laplace_variance(scale)
            kappa2 += v
            fourth += v * v
        for key, (weight, scale) in part.terms.items():
            w = shared[key][0] + c * weight if key in shared else c * weight
            shared[key] = (w, scale)
    for weight, scale in shared.values():
        v = weight * weight * discrete_laplace_variance(scale)
        kappa2 += v
        fourth += v * v
    return kappa2, fourth


def linear_half_width(*pairs: tuple[float, Part]) -> float:
    """95% half-width of the noise of Σ c·part (Cornish–Fisher, weighted cumulants)."""
    kappa2, fourth = linear_cumulants(*pairs)
    if kappa2 <= 0:
        return 0.0
    # divided twice: κ₂² underflows to 0 below ~1e-154 where κ₂ itself does not
    kurtosis = LAPLACE_EXCESS_KURTOSIS * (fourth / kappa2) / kappa2
    return (Z_975 + (Z_975**3 - 3 * Z_975) * kurtosis / 24) * math.sqrt(kappa2)
