"""The plan compiler: a few measured tables serve many of the plan's queries (*select*).

Many of a plan's queries count the same students by overlapping attributes: PHQ-9
positive by grade band and sex, PHQ-9 bands by grade band, item 9 by grade band — all
over valid PHQ-9 screenings. Asked separately, each pays for its own noise and their
figures do not add up. Compiled, they become **one** noisy contingency table over the
union of their attributes (grade band × sex × PHQ-9 band × item 9), measured once
with one ε, and each query's cells are sums of that table's cells (post-processing:
free, and consistent by construction).

Selection (:func:`compile_strategy`): a private COUNT(*) or RATE query whose grouping
and RATE condition use only category columns (``=``, ``!=``, ``IN``, ``NOT IN``) is
*measurable*. Measurable queries over the same dataset, filter and years are packed,
largest first, into tables whose cells (the product of the attributes' domains) stay
within the catalogue's ``max_groups``; every other query runs as written.

Semantics: a table groups its rows by every one of its attributes, and NULL is never a
group, so a query served by a table counts the rows whose table attributes are all
known. For the annual plan's tables that is every row of the filter (an instrument's
band and items are set exactly when it is valid; the tests check the figures against
the queries asked directly on synthetic counties).

The ε split (:func:`split_epsilon`) minimises the plan's weighted error relative to
today's: Σ_q w_q · mean_cells(Var_compiled / Var_today). Each compiled variance is
c / ε_t² for its table t (a sum of k discrete Laplace cells has variance ≈ 2k/ε²; a
rate's linearised variance likewise), so the objective is Σ_t C_t / ε_t² and the
optimum under Σ ε_t = E is ε_t ∝ C_t^(1/3) (Lagrange) — closed form, no search.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from fedscreen.errors import ConfigError
from fedscreen.policy import Policy
from fedscreen.policy.model import CategoryRule, Dataset
from fedscreen.protocol.combine import Z_975, discrete_laplace_variance
from fedscreen.query.spec import BoolOp, Comparison, Condition, Measure, QuerySpec, Value
from fedscreen.report.plan import PlannedQuery, ReportPlan

#: the comparisons a table cell can be tested with exactly (its values are domain codes)
EXACT_OPS: Final = ("=", "!=", "in", "not in")
#: ε is charged in whole micro-ε: a table's share is rounded down to it
MICRO: Final = 1_000_000


@dataclass(frozen=True)
class Table:
    """One measured contingency table and the plan queries it serves."""

    name: str
    dataset: str
    where: Condition | None
    years: tuple[str, ...]
    attributes: tuple[str, ...]
    domains: tuple[tuple[Value, ...], ...]
    #: plan query names computed from it
    members: tuple[str, ...]
    epsilon: float = 0.0

    @property
    def cells(self) -> tuple[tuple[Value, ...], ...]:
        """Every cell, in the order a node releases them (the product of the domains)."""
        return tuple(itertools.product(*self.domains))

    def spec(self) -> QuerySpec:
        """The COUNT query that measures it."""
        return QuerySpec(
            dataset=self.dataset,
            measure=Measure("count"),
            group_by=self.attributes,
            where=self.where,
            years=self.years,
        )


@dataclass(frozen=True)
class Strategy:
    """A compiled plan: the tables to measure and the queries that still run as written."""

    tables: tuple[Table, ...]
    #: plan query name -> the table that serves it
    served: Mapping[str, str]
    #: ε per node and year of the plan's own year, over every private query it runs
    epsilon: float

    def table(self, name: str) -> Table:
        """The table called ``name``."""
        return next(t for t in self.tables if t.name == name)

    def table_of(self, query: str) -> Table | None:
        """The table that serves plan query ``query`` (None: it runs as written)."""
        name = self.served.get(query)
        return None if name is None else self.table(name)


# --- cells of a served query --------------------------------------------------------------


def holds(cond: Condition, row: Mapping[str, Value]) -> bool:
    """Whether a table cell (column -> value) meets ``cond`` (exact comparisons only)."""
    if isinstance(cond, BoolOp):
        if cond.op == "and":
            return all(holds(c, row) for c in cond.args)
        if cond.op == "or":
            return any(holds(c, row) for c in cond.args)
        return not holds(cond.args[0], row)
    value = row[cond.column]
    # a domain code compares like SQLite's: 1 = 1 and '1' <> 1
    found = any(type(value) is type(v) and value == v for v in cond.values)
    return found if cond.op in ("=", "in") else not found


@dataclass(frozen=True)
class Served:
    """How one query's cells are sums of its table's cells.

    ``groups[i]`` is the query's i-th cell; ``numerator[i]`` and ``denominator[i]`` the
    indexes of the table cells summed (a COUNT's cell has only ``denominator``).
    """

    groups: tuple[tuple[Value, ...], ...]
    numerator: tuple[tuple[int, ...], ...] | None
    denominator: tuple[tuple[int, ...], ...]


def served_cells(table: Table, spec: QuerySpec, cells: Sequence[tuple[Value, ...]]) -> Served:
    """Which of ``table``'s cells make each of the query's ``cells``."""
    position = [table.attributes.index(c) for c in spec.group_by]
    rows = [dict(zip(table.attributes, cell, strict=True)) for cell in table.cells]
    index: dict[tuple[Any, ...], list[int]] = {}
    for i, cell in enumerate(table.cells):
        index.setdefault(_typed(cell[p] for p in position), []).append(i)
    dens = tuple(tuple(index.get(_typed(group), ())) for group in cells)
    condition = spec.measure.condition
    nums = None
    if spec.measure.kind == "rate":
        assert condition is not None
        nums = tuple(tuple(i for i in den if holds(condition, rows[i])) for den in dens)
    return Served(tuple(cells), nums, dens)


def _typed(values: Any) -> tuple[Any, ...]:
    # 1 and "1" are two codes (as in canonical JSON and SQLite)
    return tuple((type(v).__name__, v) for v in values)


# --- selection ----------------------------------------------------------------------------


def measurable(query: PlannedQuery, dataset: Dataset) -> tuple[str, ...] | None:
    """The attributes a table needs to serve ``query`` (None: it cannot be served)."""
    spec = query.spec
    measure = spec.measure
    if query.public or measure.kind not in ("count", "rate") or measure.column is not None:
        return None
    columns = list(spec.group_by)
    if measure.kind == "rate":
        if measure.condition is None or not _exact(measure.condition):
            return None
        columns.extend(sorted(_condition_columns(measure.condition) - set(columns)))
    for column in columns:
        if column != dataset.period and not isinstance(dataset.columns.get(column), CategoryRule):
            return None
    return tuple(columns)


def _exact(cond: Condition) -> bool:
    if isinstance(cond, BoolOp):
        return all(_exact(c) for c in cond.args)
    return cond.op in EXACT_OPS


def _condition_columns(cond: Condition) -> set[str]:
    if isinstance(cond, Comparison):
        return {cond.column}
    return set().union(*(_condition_columns(c) for c in cond.args))


def compile_strategy(
    plan: ReportPlan,
    policy: Policy,
    *,
    epsilon: float,
    reference: Mapping[str, Sequence[tuple[int, int]]] | None = None,
    weights: Mapping[str, float] | None = None,
) -> Strategy:
    """Tables for ``plan``'s measurable queries and ε for each, ``epsilon`` in all per
    node and plan year (less what the queries that run as written spend).

    ``reference``: each plan query's true (numerator, denominator) per cell (COUNT:
    (count, count)) in a reference county, for the split; without it every table gets
    the same share. ``weights``: plan query -> weight (default: how many statistics read
    it).
    """
    groups: dict[tuple[str, str, tuple[str, ...]], list[tuple[str, tuple[str, ...]]]] = {}
    for name, query in plan.queries.items():
        dataset = policy.datasets[query.spec.dataset]
        attributes = measurable(query, dataset)
        if attributes is None:
            continue
        where = "" if query.spec.where is None else repr(query.spec.where)
        groups.setdefault((query.spec.dataset, where, query.spec.years), []).append(
            (name, attributes)
        )
    limit = policy.limits.max_groups
    tables: list[Table] = []
    for (dataset_name, _, years), members in groups.items():
        dataset = policy.datasets[dataset_name]
        bins: list[tuple[list[str], list[str]]] = []  # (attributes, members)
        # largest first, each into the first table it fits (first-fit decreasing)
        members.sort(key=lambda m: (-_size(dataset, m[1], years), m[0]))
        for name, attributes in members:
            for attrs, names in bins:
                union = attrs + [a for a in attributes if a not in attrs]
                if _size(dataset, union, years) <= limit:
                    attrs[:] = union
                    names.append(name)
                    break
            else:
                if _size(dataset, attributes, years) > limit:
                    continue  # too many cells even alone: it runs as written
                bins.append((list(attributes), [name]))
        for attrs, names in bins:
            ordered = tuple(c for c in _column_order(dataset, years) if c in attrs)
            first = plan.queries[names[0]].spec
            tables.append(
                Table(
                    name="table_" + "_".join(sorted(names))[:60],
                    dataset=dataset_name,
                    where=first.where,
                    years=years,
                    attributes=ordered,
                    domains=tuple(_domain(dataset, c, years) for c in ordered),
                    members=tuple(sorted(names)),
                )
            )
    served = {m: t.name for t in tables for m in t.members}
    fixed = sum(q.cost for n, q in plan.queries.items() if n not in served and plan.year in q.years)
    left = epsilon - fixed
    if tables and not left > 0:
        raise ConfigError(
            f"the queries that run as written spend ε = {fixed:g} of the {epsilon:g} given:"
            " nothing is left for the measured tables"
        )
    shares = split_epsilon(
        plan, policy, tables, left, reference=reference, weights=weights or _weights(plan)
    )
    tables = [_with_epsilon(t, shares[t.name]) for t in tables]
    return Strategy(tuple(tables), served, epsilon)


def _with_epsilon(table: Table, epsilon: float) -> Table:
    return Table(
        table.name, table.dataset, table.where, table.years, table.attributes, table.domains,
        table.members, epsilon,
    )  # fmt: skip


def _weights(plan: ReportPlan) -> dict[str, float]:
    return {name: float(len(plan.statistics_of(name)) or 1) for name in plan.queries}


def _column_order(dataset: Dataset, years: tuple[str, ...]) -> list[str]:
    return [dataset.period, *(c for c in dataset.columns if c != dataset.period)]


def _domain(dataset: Dataset, column: str, years: tuple[str, ...]) -> tuple[Value, ...]:
    if column == dataset.period:
        return years
    rule = dataset.columns[column]
    assert isinstance(rule, CategoryRule)
    return tuple(rule.domain)


def _size(dataset: Dataset, attributes: Sequence[str], years: tuple[str, ...]) -> int:
    return math.prod(len(_domain(dataset, c, years)) for c in attributes)


# --- the ε split --------------------------------------------------------------------------


def split_epsilon(
    plan: ReportPlan,
    policy: Policy,
    tables: Sequence[Table],
    epsilon: float,
    *,
    reference: Mapping[str, Sequence[tuple[int, int]]] | None,
    weights: Mapping[str, float],
) -> dict[str, float]:
    """ε per table, Σ = ``epsilon`` (rounded down to whole µε), minimising the weighted
    mean variance ratio to today's plan (closed form: ε_t ∝ C_t^(1/3))."""
    loads: dict[str, float] = {}
    for table in tables:
        load = 0.0
        for name in table.members:
            query = plan.queries[name]
            ratios = [
                unit_variance(table, query, cell, truth) / today_variance(query, truth)
                for cell, truth in _cells_with_truth(query, policy, reference)
            ]
            ratios = [r for r in ratios if math.isfinite(r)]
            if ratios:
                load += weights.get(name, 1.0) * sum(ratios) / len(ratios)
        loads[table.name] = load if load > 0 else 1.0
    roots = {name: load ** (1 / 3) for name, load in loads.items()}
    total = sum(roots.values())
    return {name: math.floor(epsilon * r / total * MICRO) / MICRO for name, r in roots.items()}


def _cells_with_truth(
    query: PlannedQuery, policy: Policy, reference: Mapping[str, Sequence[tuple[int, int]]] | None
) -> list[tuple[int, tuple[int, int] | None]]:
    cells = range(query.cells)
    if reference is None or query.name not in reference:
        return [(i, None) for i in cells]
    truth = reference[query.name]
    return [(i, truth[i]) for i in cells if truth[i][1] > 0]


def unit_variance(
    table: Table, query: PlannedQuery, cell: int, truth: tuple[int, int] | None
) -> float:
    """Variance of the query's ``cell`` computed from ``table`` measured at ε = 1, in the
    cell's own unit (a count; a rate as a fraction): scale it by 1/ε² for another ε."""
    served = _served(table, query)
    unit = discrete_laplace_variance(1.0)
    den = served.denominator[cell]
    if served.numerator is None or truth is None:
        return unit * max(len(den), 1)
    num = served.numerator[cell]
    r = truth[0] / truth[1]
    return unit * ((1 - r) ** 2 * len(num) + r**2 * (len(den) - len(num))) / truth[1] ** 2


def today_variance(query: PlannedQuery, truth: tuple[int, int] | None) -> float:
    """Variance of the cell as today's plan releases it (its own query at its own ε)."""
    if query.spec.measure.kind == "rate":
        # half of ε for the numerator, half for the denominator, independent noise
        var = discrete_laplace_variance(2 / query.cost)
        if truth is None:
            return var
        r = truth[0] / truth[1]
        return (var + r * r * var) / truth[1] ** 2
    return discrete_laplace_variance(1 / query.cost)


def half_width(variance: float) -> float:
    """The 95% half-width of a figure with this (linearised) noise variance."""
    return Z_975 * math.sqrt(variance)


@functools.lru_cache(maxsize=1024)
def _served(table: Table, query: PlannedQuery) -> Served:
    groups = tuple(itertools.product(*(_query_domain(table, c) for c in query.spec.group_by)))
    return served_cells(table, query.spec, groups)


def _query_domain(table: Table, column: str) -> tuple[Value, ...]:
    return table.domains[table.attributes.index(column)]
