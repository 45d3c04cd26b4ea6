"""Consistent, non-negative tables from noisy measured tables (the *reconstruct* step).

A measured table is one noisy count per cell of a contingency table, per node. The
report needs, for every scope (province, city, county), one table that

* has no negative cells (a count below zero means nothing to a reader),
* adds up: each cell of a parent scope is exactly the sum of that cell in its
  children (county → city → province), so every figure derived from the tables
  adds up too, and
* stays as close as it can to what was measured, in the weighted least-squares
  sense: a cell measured with twice the noise variance is moved twice as far.

That is the top-down construction of the US Census 2020 (Abowd et al., 2022), in
its simplest form: the root's table is the least-squares projection of its noisy table
onto {x ≥ 0} (negative cells become 0, no other cell moves); each parent's cells are
then split among its children by the weighted projection of the children's noisy
values onto {z ≥ 0, Σz = parent's cell}. Every split solves
``min Σ (z_i − x_i)² / v_i  s.t.  z ≥ 0, Σ z_i = t``, whose solution is
``z_i = max(x_i − v_i·θ, 0)`` for the one θ that meets the total; θ is found by
bisection, vectorised over all cells at once. Integers come last, by largest
remainders, so that the sums hold exactly (not only to float precision).

All of this is post-processing of released noisy values: it costs no privacy.
Nothing here reads a file or knows what a query is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]
Bools = NDArray[np.bool_]

#: bisection steps for θ: each halves the bracket, 200 take any double bracket to its
#: last bit (the loop stops early once no bracket moves)
BISECTION_STEPS: Final = 200


def project(values: Floats, variances: Floats, totals: Floats, present: Bools) -> Floats:
    """Each row of ``values`` moved onto {z ≥ 0, Σz = total, z = 0 where not present}.

    Row-wise weighted least squares: minimises Σ (z − x)²/v. ``variances`` must be > 0
    where present; a row with total ≤ 0 or nothing present becomes zeros.
    """
    x = np.where(present, values, 0.0)
    v = np.where(present, variances, 1.0)
    t = np.maximum(totals, 0.0)
    # θ brackets: at lo every present z_i ≥ x_i − v_i·lo ≥ t, so Σz ≥ t; at hi all z_i = 0
    ratio = np.where(present, x / v, -np.inf)
    lo = np.min(np.where(present, (x - t[:, None]) / v, np.inf), axis=1)
    hi = np.max(ratio, axis=1)
    live = present.any(axis=1) & (t > 0)
    lo = np.where(live, lo, 0.0)
    hi = np.where(live, hi, 0.0)
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        moved = (mid != lo) & (mid != hi)
        if not moved.any():
            break
        mass = np.where(present, np.maximum(x - v * mid[:, None], 0.0), 0.0).sum(axis=1)
        too_much = mass > t
        lo = np.where(moved & too_much, mid, lo)
        hi = np.where(moved & ~too_much, mid, hi)
    z = np.where(present, np.maximum(x - v * lo[:, None], 0.0), 0.0)
    # a total below the float resolution of the values (1e-10 next to 1e6) leaves no mass
    # at the bracket: the optimum is then all of it on the cell(s) of largest x/v
    empty = live & ~(z.sum(axis=1) > 0)
    if empty.any():
        top = ratio == np.max(ratio, axis=1, keepdims=True)
        z = np.where(empty[:, None] & top, 1.0, z)
    # the bracket is exact to the last bit; rescale what float error leaves over
    mass = z.sum(axis=1)
    scale = np.divide(t, mass, out=np.zeros_like(t), where=mass > 0)
    return np.where(live[:, None], z * scale[:, None], 0.0)


def round_to(values: Floats, totals: Ints, present: Bools) -> Ints:
    """Non-negative integers per row adding up to ``totals`` exactly, each within one of
    its real value (largest remainders; ties to the lower index, so it is deterministic),
    and 0 where not present. Each row's values must be ≥ 0 and add up to its total (as
    :func:`project` leaves them).
    """
    floor = np.floor(values).astype(np.int64)
    short = totals - floor.sum(axis=1)
    # a cell nobody measured never takes a unit, whatever float error leaves over
    remainder = np.where(present, values - floor, -1.0)
    # stable order: larger remainder first, then lower index
    order = np.argsort(-remainder, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(values.shape[1])[None, :], axis=1)
    whole: Ints = floor + (rank < short[:, None]).astype(np.int64)
    return whole


@dataclass(frozen=True)
class Noisy:
    """One scope's measured table: per cell, the noisy sum over the scope's nodes, the
    variance of its noise, and whether any node measured the cell at all (a county
    policy may withhold a cell: a district without universities)."""

    values: Floats
    variances: Floats
    present: Bools

    def __add__(self, other: Noisy) -> Noisy:
        return Noisy(
            self.values + other.values,
            self.variances + other.variances,
            self.present | other.present,
        )


def consistent(
    noisy: Mapping[str, Noisy], root: str, children: Mapping[str, Sequence[str]]
) -> dict[str, Ints]:
    """Every scope's consistent integer table, top-down from ``root``.

    ``noisy`` holds every scope's measured table (a parent's is the sum of its
    children's); ``children`` lists each parent's children (a tree: a scope is the child
    of one parent). The root's cells are its noisy cells with negatives set to 0 (the
    least-squares projection onto x ≥ 0: it moves no cell that was not negative, so a
    large cell keeps its unbiased estimate); each parent's cell is then split exactly
    among its children.
    """
    top = noisy[root]
    root_cells = np.where(top.present, np.maximum(np.rint(top.values), 0.0), 0.0)
    tables = {root: root_cells.astype(np.int64)}
    pending = [root]
    while pending:
        parent = pending.pop()
        kids = list(children.get(parent, ()))
        if not kids:
            continue
        # one row per cell, one column per child: the parent's cell is split among them
        values = np.stack([noisy[k].values for k in kids], axis=1)
        variances = np.stack([_positive(noisy[k]) for k in kids], axis=1)
        present = np.stack([noisy[k].present for k in kids], axis=1)
        cells = tables[parent]
        split = project(values, variances, cells.astype(np.float64), present)
        whole = round_to(split, cells, present)
        for i, kid in enumerate(kids):
            tables[kid] = whole[:, i]
        pending.extend(kids)
    return tables


def _positive(table: Noisy) -> Floats:
    """Variances fit to divide by: an exact cell (variance 0, public data) is moved as
    little as the least noisy cell allows, never by a division by zero."""
    floor = 1e-12
    return np.maximum(table.variances, floor)
