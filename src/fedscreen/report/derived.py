"""Plan queries computed from a measured table's verified release (*reconstruct*).

A query that a compiled plan serves from a table (``report.strategy``) is never asked
of the nodes; its cells are sums of the table's cells. :class:`Derived` offers the
same reading interface as a query's own :class:`~fedscreen.report.figures.Released`,
so every statistic form (shares, ratios, flags, changes) works on it unchanged.

Every scope's table is made consistent first (``report.tables.consistent``): no
negative cells, each county's cells adding up exactly to its city's and the
province's. A served query's cell is then an exact sum of integers, so its parts
add up to its wholes (PHQ-9 bands to valid screenings, warning levels to warnings,
counties to their city and province) in every report.

Intervals: a count cell's noise is the sum of its table cells' discrete Laplace
noises (the scales the nodes signed); a rate r = N/D with N ⊂ D is linearised,
N − rD = (1 − r)·Σ_N e − r·Σ_{D∖N} e, and given the same Cornish–Fisher 95% point as
the provincial sums, with the weighted cumulants. The consistency step moves values
by less than their noise; the intervals are those of the linear estimator, and
``scripts/bench_report_accuracy.py`` measures that they keep their coverage.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedscreen.protocol.combine import LAPLACE_EXCESS_KURTOSIS, Z_975, discrete_laplace_variance
from fedscreen.query.spec import QuerySpec
from fedscreen.report.figures import Part, Released
from fedscreen.report.format import PROVINCE
from fedscreen.report.measured import Served, Table, served_cells
from fedscreen.report.plan import ReportPlan
from fedscreen.report.tables import Ints, Noisy, consistent


@dataclass
class Measured:
    """One table's verified release, made consistent once per set of areas."""

    table: Table
    released: Released
    _cache: dict[tuple[tuple[str, tuple[str, ...]], ...], dict[str, Ints]] = field(
        default_factory=dict, repr=False
    )

    @functools.cached_property
    def index(self) -> dict[tuple[Any, ...], int]:
        """Table cell (typed values) -> its position."""
        return {_typed(cell): i for i, cell in enumerate(self.table.cells)}

    @functools.cached_property
    def noisy(self) -> dict[str, Noisy]:
        """Each answering node's measured table, cells in the table's order."""
        size = len(self.table.cells)
        out: dict[str, Noisy] = {}
        for node, body in self.released.node_bodies.items():
            values = np.zeros(size)
            present = np.zeros(size, dtype=bool)
            for cell in body["cells"]:
                i = self.index.get(_typed(cell["group"]))
                if i is not None:
                    values[i] = int(cell["value"])
                    present[i] = True
            variance = discrete_laplace_variance(float(body["scale"]))
            out[node] = Noisy(values, np.where(present, variance, 0.0), present)
        return out

    def scales(self, node: str) -> float:
        """The noise scale ``node`` signed for the table."""
        return float(self.released.node_bodies[node]["scale"])

    def tables(self, areas: Mapping[str, Sequence[str]]) -> dict[str, Ints]:
        """Every scope's consistent table: province, ``areas`` (cities), counties."""
        key = tuple(sorted((a, tuple(c)) for a, c in areas.items()))
        if key not in self._cache:
            nodes = sorted(self.noisy)
            placed: set[str] = set()
            children: dict[str, list[str]] = {PROVINCE: []}
            noisy = dict(self.noisy)
            for area, counties in sorted(areas.items()):
                kids = [c for c in counties if c in self.noisy and c not in placed]
                if not kids:
                    continue
                placed.update(kids)
                children[area] = kids
                children[PROVINCE].append(area)
                noisy[area] = _sum(self.noisy[k] for k in kids)
            children[PROVINCE].extend(n for n in nodes if n not in placed)
            if not nodes:
                self._cache[key] = {}
                return self._cache[key]
            noisy[PROVINCE] = _sum(self.noisy[n] for n in nodes)
            self._cache[key] = consistent(noisy, PROVINCE, children)
        return self._cache[key]


def _sum(tables: Iterable[Noisy]) -> Noisy:
    items = list(tables)
    total = items[0]
    for t in items[1:]:
        total = total + t
    return total


def _typed(values: Any) -> tuple[Any, ...]:
    return tuple((type(v).__name__, v) for v in values)


@dataclass(frozen=True)
class Derived(Released):
    """A served query's release, computed from its table's (the same reading interface)."""

    spec: QuerySpec | None = None
    measured: Measured | None = field(default=None, compare=False)
    served: Served | None = field(default=None, compare=False)

    @staticmethod
    def of(spec: QuerySpec, measured: Measured, cells: Sequence[tuple[Any, ...]]) -> Derived:
        """The served query ``spec`` with these cells (its catalogue groups, in order)."""
        released = measured.released
        return Derived(
            released.body,
            released.node_bodies,
            released.charged,
            released.areas,
            spec=spec,
            measured=measured,
            served=served_cells(measured.table, spec, cells),
        )

    @property
    def group_by(self) -> list[str]:
        """The served query's group columns."""
        assert self.spec is not None
        return list(self.spec.group_by)

    @functools.cached_property
    def public(self) -> bool:
        """Never: a table is measured only over private data."""
        return False

    def _scope_table(self, scope: str) -> tuple[Ints, list[list[float]]]:
        """The scope's consistent table and, per cell, the noise scales in it."""
        assert self.measured is not None
        tables = self.measured.tables(self.areas)
        nodes = self.nodes_of(scope)
        size = len(self.measured.table.cells)
        scales: list[list[float]] = [[] for _ in range(size)]
        for node in nodes:
            present = self.measured.noisy[node].present
            scale = self.measured.scales(node)
            for i in np.flatnonzero(present):
                scales[int(i)].append(scale)
        return tables[scope], scales

    def parts(self, scope: str) -> list[tuple[list[Any], Part]]:
        """Each cell's value and the noise scales in it (a COUNT)."""
        assert self.served is not None
        table, scales = self._scope_table(scope)
        out = []
        for group, cells in zip(self.served.groups, self.served.denominator, strict=True):
            value = int(sum(int(table[i]) for i in cells))
            noise = tuple(s for i in cells for s in scales[i])
            out.append((list(group), Part(value, noise)))
        return out

    def rate_parts(self, scope: str) -> dict[str, tuple[Part, Part]]:
        """Each group's numerator and denominator (a RATE)."""
        assert self.served is not None
        assert self.served.numerator is not None
        table, scales = self._scope_table(scope)
        out: dict[str, tuple[Part, Part]] = {}
        for group, num, den in zip(
            self.served.groups, self.served.numerator, self.served.denominator, strict=True
        ):
            parts = []
            for cells in (num, den):
                value = int(sum(int(table[i]) for i in cells))
                parts.append(Part(value, tuple(s for i in cells for s in scales[i])))
            out[repr(list(group))] = (parts[0], parts[1])
        return out

    def cells(self, scope: str) -> list[dict[str, Any]]:
        """The scope's cells with 95% intervals, as a release states them."""
        assert self.served is not None
        threshold = self.threshold(scope)
        if self.served.numerator is None:
            out = []
            for group, part in self.parts(scope):
                low, high = part.interval()
                small = part.value < threshold
                out.append(
                    {
                        "group": group, "value": part.value, "lower": max(low, 0.0),
                        "upper": high, "suppressed": small,
                        "display": f"< {threshold}" if small else str(part.value),
                    }
                )  # fmt: skip
            return out
        table, scales = self._scope_table(scope)
        out = []
        for key, num, den in zip(
            self.served.groups, self.served.numerator, self.served.denominator, strict=True
        ):
            n = int(sum(int(table[i]) for i in num))
            d = int(sum(int(table[i]) for i in den))
            cell: dict[str, Any] = {"group": list(key)}
            if d < threshold or d <= 0:
                cell.update(value=None, lower=0.0, upper=1.0, display=f"< {threshold}")
                cell["suppressed"] = True
            else:
                r = n / d
                rest = [i for i in den if i not in set(num)]
                weighted = [(1 - r, s) for i in num for s in scales[i]]
                weighted += [(-r, s) for i in rest for s in scales[i]]
                half = linear_half_width(weighted) / d
                cell.update(value=r, lower=max(r - half, 0.0), upper=min(r + half, 1.0))
                cell.update(display=f"{r:.4g}", suppressed=False)
            cell["numerator"] = {"value": n}
            cell["denominator"] = {"value": d}
            out.append(cell)
        return out


def linear_half_width(weighted: Sequence[tuple[float, float]]) -> float:
    """95% half-width of Σ wᵢ·eᵢ for independent discrete Laplace eᵢ of scale sᵢ, given
    as (wᵢ, sᵢ): Cornish–Fisher with the weighted cumulants (κ₄ = 3σ⁴ per term)."""
    variances = [(w * w, discrete_laplace_variance(s)) for w, s in weighted]
    kappa2 = sum(w2 * v for w2, v in variances)
    if kappa2 <= 0:
        return 0.0
    kurtosis = LAPLACE_EXCESS_KURTOSIS * sum((w2 * v) ** 2 for w2, v in variances) / kappa2**2
    z = Z_975 + (Z_975**3 - 3 * Z_975) * kurtosis / 24
    return z * math.sqrt(kappa2)


def resolve(plan: ReportPlan, asked: Mapping[str, Released]) -> dict[str, Released]:
    """Each plan query's release, by name: its own as asked, or derived from the verified
    release of the table that serves it (``asked`` is keyed by what was asked)."""
    out = {name: r for name, r in asked.items() if name in plan.queries}
    if plan.measure is None:
        return out
    for table in plan.measure.tables:
        measured = Measured(table, asked[table.name])
        for name in table.members:
            spec = plan.queries[name].spec
            out[name] = Derived.of(spec, measured, _catalogue_cells(table, spec))
    return out


def _catalogue_cells(table: Table, spec: QuerySpec) -> list[tuple[Any, ...]]:
    """The served query's cells: the product of its group columns' domains (as the table's)."""
    domains = [table.domains[table.attributes.index(c)] for c in spec.group_by]
    return list(itertools.product(*domains))
