"""Weighted least squares over the tables that count one population (*reconstruct*).

The tables of a compiled plan that count the same rows (one dataset, filter and years)
are marginals of one joint table over the union of their attributes: warning levels
by grade band and sex, and warning levels alone, both count the warned students. Each
table is measured with its own noise; the joint x is estimated by

    x̂ = argmin Σₜ ‖(Aₜ·x − yₜ)/σₜ‖²  (minimum norm where the tables leave x open),

the matrix mechanism's estimator (Li, Miklau et al. 2015; McKenna et al., HDMM, 2018):
x̂ = L·y with L = pinv(D·A)·D, D = diag(1/σ). Every figure is a sum of x̂'s cells, so
all of a population's figures add up (levels to warnings, whichever table they came
from), a margin measured twice is estimated from both, and a figure's noise is the
linear combination q·L of the measured cells' noises: its variance is exact.

The estimator is linear and unbiased: a scope's estimate (a city, the province) is
the sum of its counties', so counties add up to cities and the province exactly. It
is not projected onto non-negative values: a projection biases every figure that
sums near-empty cells, and ``scripts/bench_report_accuracy.py`` showed intervals
losing their coverage under it (down to 76%). A negative count is never shown: a
count below the publication threshold is printed "< k", a rate is clipped to [0, 1].

Pure numpy, no I/O.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

from fedscreen.query.spec import Value

Matrix = NDArray[np.float64]
#: a row of A whose coefficient in q·pinv(A)·A differs by more than this from q's is
#: not estimable: the tables do not determine the figure
ESTIMABLE_TOLERANCE = 1e-8
#: relative cut-off of the pseudo-inverse's singular values (numpy's default, about
#: 1e-13 here, keeps some of the float dust of exactly dependent rows)
RCOND = 1e-10


@dataclass(frozen=True)
class Joint:
    """The joint table over a population's attributes (cells in product order)."""

    attributes: tuple[str, ...]
    domains: tuple[tuple[Value, ...], ...]

    @cached_property
    def cells(self) -> list[tuple[Value, ...]]:
        """Every joint cell, in product order."""
        return list(itertools.product(*self.domains))

    def operator(self, attributes: Sequence[str]) -> Matrix:
        """The 0/1 matrix summing the joint into the marginal over ``attributes`` (rows in
        the product order of their domains, as a node releases the marginal's cells)."""
        axes = [self.attributes.index(a) for a in attributes]
        shape = [len(self.domains[i]) for i in axes]
        grid = np.indices([len(d) for d in self.domains]).reshape(len(self.domains), -1)
        rows = np.ravel_multi_index(tuple(grid[i] for i in axes), shape) if axes else 0
        matrix = np.zeros((int(np.prod(shape)), len(self.cells)))
        matrix[rows, np.arange(len(self.cells))] = 1.0
        return matrix


def estimator(rows: Matrix, variances: NDArray[np.float64]) -> Matrix:
    """L (joint cells × measured cells): x̂ = L·y, the minimum-norm weighted
    least-squares estimate from measurements ``rows``·x + noise of these variances."""
    weight = 1.0 / np.sqrt(variances)
    # singular values below 1e-10 of the largest are the tables' overlaps (sums of one
    # margin measured twice): exactly 0 in exact arithmetic, float dust here
    result: Matrix = np.linalg.pinv(rows * weight[:, None], rcond=RCOND) * weight[None, :]
    return result


def estimable(query: Matrix, rows: Matrix, solve: Matrix) -> NDArray[np.bool_]:
    """Which query rows (0/1 over joint cells) the measurements determine: q·L·A = q on
    every joint cell the measurements touch (an untouched cell is a cell no node
    measured — a county policy's narrowed domain — and is 0 by that policy)."""
    touched = np.abs(rows).sum(axis=0) > 0
    recovered = (query @ solve) @ rows
    gap = np.abs(recovered - query)[:, touched]
    scale = np.maximum(np.abs(query[:, touched]).sum(axis=1), 1.0)
    result: NDArray[np.bool_] = gap.max(axis=1, initial=0.0) <= ESTIMABLE_TOLERANCE * scale
    return result
