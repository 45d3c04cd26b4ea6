"""Plan queries computed from measured tables' verified releases (*reconstruct*).

A query a compiled plan serves from a table (``report.strategy``) is never asked of
the nodes. Its figures come from the least-squares estimate of its population's joint
table (``report.wls``: every table of the plan that counts the same rows), node by
node; a scope's figures are the sums of its counties'. :class:`Derived` offers the
reading interface of a query's own :class:`~fedscreen.report.figures.Released`, so
every statistic form (shares, ratios, flags, changes) works on it unchanged, and
each value carries its noise as weights on the measured cells' noises
(:class:`~fedscreen.report.parts.Part`): intervals account for what two figures of
one table share.

Everything here is post-processing of verified releases: it costs no privacy, and
``report verify`` recomputes it from the same signed bytes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedscreen.errors import VerificationError
from fedscreen.protocol.combine import discrete_laplace_variance
from fedscreen.query.spec import QuerySpec
from fedscreen.report.measured import Served, Table, served_by, typed_key
from fedscreen.report.parts import Part, Term, linear_half_width, total
from fedscreen.report.plan import ReportPlan
from fedscreen.report.released import Released
from fedscreen.report.wls import Joint, Matrix, estimable, estimator

#: a weight below this in a figure's noise is float dust from the pseudo-inverse
NEGLIGIBLE_WEIGHT = 1e-12


@dataclass(frozen=True)
class Design:
    """What some nodes measured of a population (the same cells at the same scales)."""

    #: its number in the population, a cache key
    number: int
    #: A: one row per measured cell, over the joint's cells
    rows: Matrix
    #: L: x̂ = L·y
    solve: Matrix
    #: degrees of freedom of the fit: measured cells less the rank of the design
    dof: int


@dataclass(frozen=True)
class Solved:
    """One node's measurements of a population: its design and its noisy cells."""

    design: Design
    #: y: the node's noisy cells
    values: np.ndarray[Any, np.dtype[np.float64]]
    #: the discrete Laplace scale of each measured cell's noise
    scales: tuple[float, ...]
    #: each measured cell's name in a Part's shared terms: (node, table, cell index)
    keys: tuple[tuple[str, str, int], ...]


@dataclass
class Population:
    """The tables that count one population, with their verified releases."""

    tables: tuple[Table, ...]
    releases: Mapping[str, Released]
    _solved: dict[tuple[str, str | None], Solved] = field(default_factory=dict, repr=False)
    _disagreements: dict[str, tuple[float, int] | None] = field(default_factory=dict, repr=False)
    _patterns: dict[Hashable, Design] = field(default_factory=dict, repr=False)

    @functools.cached_property
    def joint(self) -> Joint:
        """The joint table over every attribute of the population's tables."""
        domains: dict[str, tuple[Any, ...]] = {}
        for table in self.tables:
            for attribute, values in zip(table.attributes, table.domains, strict=True):
                domains.setdefault(attribute, values)
        return Joint(tuple(domains), tuple(domains.values()))

    @functools.cached_property
    def operators(self) -> dict[str, Matrix]:
        """Table name -> the matrix summing the joint into the table's cells."""
        return {t.name: self.joint.operator(t.attributes) for t in self.tables}

    def _allowed(self, node: str) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """The joint cells whose every value some table of ``node`` released."""
        seen: dict[str, set[tuple[str, Any]]] = {}
        for table in self.tables:
            body = self.releases[table.name].node_bodies.get(node)
            if body is None:
                continue
            for cell in body["cells"]:
                for attribute, value in zip(table.attributes, cell["group"], strict=False):
                    seen.setdefault(attribute, set()).add((type(value).__name__, value))
        allowed = np.ones(len(self.joint.cells), dtype=bool)
        for position, attribute in enumerate(self.joint.attributes):
            if attribute in seen:
                known = seen[attribute]
                allowed &= np.array(
                    [(type(c[position]).__name__, c[position]) in known for c in self.joint.cells]
                )
        return allowed

    def disagreement(self, node: str) -> tuple[float, int] | None:
        """(χ², degrees of freedom) of ``node``'s tables against their least-squares fit,
        if they disagree beyond what their noise explains; None if they agree.

        Honest tables of one population differ only by their noise: the weighted
        residuals' squares add up to about the degrees of freedom (each has mean 1 and,
        for Laplace noise, variance 5). A node whose tables tell different stories (one
        of them made up) would otherwise pass its lie into the figures of its honest
        tables, with intervals that do not show it.
        """
        if node not in self._disagreements:
            solved = self.solved(node)
            design = solved.design
            found = None
            if design.dof > 0:
                residual = solved.values - design.rows @ (design.solve @ solved.values)
                variances = np.array([discrete_laplace_variance(s) for s in solved.scales])
                chi2 = float(np.sum(residual**2 / variances))
                # far beyond honest noise (mean dof, sd √(5·dof)): a false alarm would need
                # a deviation of 8 standard deviations and more
                if chi2 > design.dof + 8 * math.sqrt(5 * design.dof) + 20:
                    found = (chi2, design.dof)
            self._disagreements[node] = found
        return self._disagreements[node]

    def solved(self, node: str, only: str | None = None) -> Solved:
        """What ``node`` measured of the population, solved (every table it answered, or
        table ``only``)."""
        if (node, only) not in self._solved:
            cells: list[tuple[str, int]] = []
            values: list[float] = []
            scales: list[float] = []
            for table in self.tables:
                body = self.releases[table.name].node_bodies.get(node)
                if body is None or only not in (None, table.name):
                    continue
                index = {typed_key(cell): i for i, cell in enumerate(table.cells)}
                scale = float(body["scale"])
                for cell in body["cells"]:
                    i = index.get(typed_key(cell["group"]))
                    if i is not None:
                        cells.append((table.name, i))
                        values.append(float(cell["value"]))
                        scales.append(scale)
            allowed = self._allowed(node)
            # nodes that measured the same cells at the same scales share one design and
            # one estimator (a province of 189 counties holds a handful, not 189)
            pattern = (tuple(cells), tuple(scales), allowed.tobytes())
            if pattern not in self._patterns:
                rows = np.array([self.operators[t][i] for t, i in cells]).reshape(
                    len(cells), len(self.joint.cells)
                )
                # a county policy narrows a domain (no university there): the node releases
                # no cell with that value, and the joint has no students with it either —
                # without this, a table without the attribute would put some there
                rows[:, ~allowed] = 0.0
                variances = np.array([discrete_laplace_variance(s) for s in scales])
                solve = estimator(rows, variances) if cells else rows.T
                rank = int(np.linalg.matrix_rank(rows, tol=1e-9)) if cells else 0
                self._patterns[pattern] = Design(
                    len(self._patterns), rows, solve, len(cells) - rank
                )
            design = self._patterns[pattern]
            self._solved[(node, only)] = Solved(
                design,
                np.array(values),
                tuple(scales),
                tuple((node, t, i) for t, i in cells),
            )
        return self._solved[(node, only)]


@dataclass(frozen=True)
class Derived(Released):
    """A served query's release, estimated from its population's tables."""

    spec: QuerySpec | None = None
    population: Population | None = field(default=None, compare=False)
    table: Table | None = None
    served: Served | None = field(default=None, compare=False)
    #: (node, "num"/"den") -> that node's parts: the same whatever the areas
    _nodes: dict[tuple[str, str], list[Part]] = field(
        default_factory=dict, compare=False, repr=False
    )
    #: (design number, "num"/"den") -> q·L
    _designs: dict[tuple[int, str], Matrix] = field(default_factory=dict, compare=False, repr=False)

    @staticmethod
    def of(spec: QuerySpec, table: Table, population: Population) -> Derived:
        """The served query ``spec``, from ``table`` and the rest of its population."""
        released = population.releases[table.name]
        return Derived(
            released.body,
            released.node_bodies,
            released.charged,
            released.areas,
            spec=spec,
            population=population,
            table=table,
            served=served_by(table, spec),
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

    def _node_parts(self, node: str, kind: str) -> list[Part]:
        """``node``'s estimate of each served cell (its numerator or denominator): from all
        its tables of the population, or from the query's own table alone if they disagree
        beyond their noise (``Population.disagreement``)."""
        population = self._population
        alone = self.table_name if population.disagreement(node) else None
        solved = population.solved(node, alone)
        weights = self._weights(solved.design, kind)
        estimates = weights @ solved.values
        out = []
        for estimate, row in zip(estimates, weights, strict=True):
            terms: dict[Hashable, Term] = {
                solved.keys[j]: (float(row[j]), solved.scales[j])
                for j in np.flatnonzero(np.abs(row) > NEGLIGIBLE_WEIGHT)
            }
            out.append(Part(float(estimate), (), terms))
        return out

    def _weights(self, design: Design, kind: str) -> Matrix:
        """q·L for each served cell: its estimate's weight on each measured cell (one
        matrix per design, shared by every node that measured alike)."""
        key = (design.number, kind)
        if key not in self._designs:
            assert self.served is not None
            lists = self.served.denominator if kind == "den" else self.served.numerator
            assert lists is not None
            joint = len(self._population.joint.cells)
            # a cell the node did not release (its county's policy narrowed the domain: no
            # university there) is 0 by that policy, as in the node's own answers; its
            # operator row is what the design zeroed
            operator = self._population.operators[self.table_name] * (
                np.abs(design.rows).sum(axis=0) > 0
            )
            query = np.array([operator[list(cells)].sum(axis=0) for cells in lists]).reshape(
                len(lists), joint
            )
            if design.rows.shape[0] and not estimable(query, design.rows, design.solve).all():
                raise VerificationError(f"a node's tables do not determine {self.table_name}")
            self._designs[key] = query @ design.solve
        return self._designs[key]

    @property
    def _population(self) -> Population:
        assert self.population is not None
        return self.population

    @property
    def table_name(self) -> str:
        """The name of the query's own table."""
        assert self.table is not None
        return self.table.name

    def _scope_parts(self, scope: str, kind: str) -> list[Part]:
        assert self.served is not None
        per_node = []
        for node in self.nodes_of(scope):
            if (node, kind) not in self._nodes:
                self._nodes[(node, kind)] = self._node_parts(node, kind)
            per_node.append(self._nodes[(node, kind)])
        if not per_node:
            return [Part(0.0) for _ in self.served.groups]
        return [total(cell) for cell in zip(*per_node, strict=True)]

    def parts(self, scope: str) -> list[tuple[list[Any], Part]]:
        """Each cell's estimate and its noise (a COUNT)."""
        assert self.served is not None
        groups = [list(g) for g in self.served.groups]
        return list(zip(groups, self._scope_parts(scope, "den"), strict=True))

    def rate_parts(self, scope: str) -> dict[str, tuple[Part, Part]]:
        """Each group's numerator and denominator estimates (a RATE)."""
        assert self.served is not None
        nums, dens = self._scope_parts(scope, "num"), self._scope_parts(scope, "den")
        return {
            repr(list(g)): (n, d) for g, n, d in zip(self.served.groups, nums, dens, strict=True)
        }

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
                    {"group": group, "value": part.value, "lower": max(low, 0.0),
                     "upper": high, "suppressed": small,
                     "display": f"< {threshold}" if small else f"{part.value:.0f}"}
                )  # fmt: skip
            return out
        out = []
        for key, (n, d) in self.rate_parts(scope).items():
            cell: dict[str, Any] = {"group": _group(key, self.served)}
            if d.value < threshold or d.value <= 0:
                cell.update(value=None, lower=0.0, upper=1.0, display=f"< {threshold}")
                cell["suppressed"] = True
            else:
                r = n.value / d.value
                half = linear_half_width((1.0, n), (-r, d)) / d.value
                value = min(max(r, 0.0), 1.0)
                # both ends clipped to [0, 1]: a negative estimate must not invert it
                low, high = (min(max(x, 0.0), 1.0) for x in (r - half, r + half))
                cell.update(value=value, lower=low, upper=high)
                cell.update(display=f"{value:.4g}", suppressed=False)
            cell["numerator"] = {"value": n.value}
            cell["denominator"] = {"value": d.value}
            out.append(cell)
        return out


def _group(key: str, served: Served) -> list[Any]:
    return next(list(g) for g in served.groups if repr(list(g)) == key)


def disagreements(released: Mapping[str, Released]) -> list[dict[str, Any]]:
    """Each node whose tables of one population disagree beyond their noise (its figures
    then come from each query's own table alone), for the report."""
    found = []
    populations = {
        id(r.population): r.population
        for r in released.values()
        if isinstance(r, Derived) and r.population is not None
    }
    for population in populations.values():
        nodes = sorted({n for r in population.releases.values() for n in r.node_bodies})
        for node in nodes:
            seen = population.disagreement(node)
            if seen is not None:
                found.append(
                    {"node": node, "tables": [t.name for t in population.tables],
                     "chi2": round(seen[0], 3), "dof": seen[1]}
                )  # fmt: skip
    return found


def resolve(plan: ReportPlan, asked: Mapping[str, Released]) -> dict[str, Released]:
    """Each plan query's release, by name: its own as asked, or derived from the verified
    releases of its population's tables (``asked`` is keyed by what was asked)."""
    out = {name: r for name, r in asked.items() if name in plan.queries}
    if plan.measure is None:
        return out
    groups: dict[tuple[str, str, tuple[str, ...]], list[Table]] = {}
    for table in plan.measure.tables:
        groups.setdefault((table.dataset, repr(table.where), table.years), []).append(table)
    for tables in groups.values():
        population = Population(tuple(tables), {t.name: asked[t.name] for t in tables})
        for table in tables:
            for name in table.members:
                out[name] = Derived.of(plan.queries[name].spec, table, population)
    return out
