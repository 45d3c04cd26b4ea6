"""Measured tables: one noisy contingency table serves several of a plan's queries.

A plan query is *servable* by a table when it is a private COUNT(*) or RATE whose
grouping and RATE condition use only category columns, compared exactly (``=``,
``!=``, ``IN``, ``NOT IN``), and not secure (its exact cells go to the two
aggregators only): each of its cells is then a sum of table cells, and a
RATE's numerator the sum of those meeting its condition. Queries served by one table
share its dataset, filter (WHERE) and years; its attributes are the union of theirs.

A table groups its rows by every attribute, and NULL is never a group: a served query
counts the rows whose table attributes are all known. For the annual plan's tables
that is every row of its filter (an instrument's band and items are set exactly when
it is valid): ``tests/unit/report/test_strategy.py`` checks every served query against
the same query asked directly, on synthetic counties.

Nothing here reads a file or draws noise; :func:`table_sql` writes the COUNT query that
measures a table, in the SQL the nodes parse, and :func:`build_table` checks it parses
back to the same question.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from fedscreen.errors import ConfigError, QueryRefused
from fedscreen.policy import Policy
from fedscreen.policy.model import CategoryRule, Dataset
from fedscreen.query.spec import BoolOp, Comparison, Condition, Measure, QuerySpec, Value
from fedscreen.query.sqlparse import parse_sql

#: the comparisons a table cell can be tested with exactly (its values are domain codes)
EXACT_OPS: Final = ("=", "!=", "in", "not in")
#: most cells of a population's joint table (the product of the domains of every attribute
#: its tables use): the least-squares solve holds a joint-cells × measured-cells matrix
#: (20,000 × a few hundred doubles: tens of MB, a fraction of a second per county)
MAX_JOINT_CELLS: Final = 20_000


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
        index.setdefault(typed_key(cell[p] for p in position), []).append(i)
    dens = tuple(tuple(index.get(typed_key(group), ())) for group in cells)
    condition = spec.measure.condition
    nums = None
    if spec.measure.kind == "rate":
        assert condition is not None
        nums = tuple(tuple(i for i in den if holds(condition, rows[i])) for den in dens)
    return Served(tuple(cells), nums, dens)


@functools.lru_cache(maxsize=1024)
def served_by(table: Table, spec: QuerySpec) -> Served:
    """How each of ``spec``'s cells — the product of its group columns' domains, as the
    table holds them — is a sum of ``table``'s cells."""
    domains = [table.domains[table.attributes.index(c)] for c in spec.group_by]
    return served_cells(table, spec, tuple(itertools.product(*domains)))


def typed_key(values: Any) -> tuple[Any, ...]:
    """A cell's values as a dict key in which 1 and "1" differ."""
    # 1 and "1" are two codes (as in canonical JSON and SQLite)
    return tuple((type(v).__name__, v) for v in values)


# --- selection ----------------------------------------------------------------------------


def measurable(spec: QuerySpec, dataset: Dataset) -> tuple[str, ...] | None:
    """The attributes a table needs to serve ``spec`` (None: it cannot be served)."""
    measure = spec.measure
    if spec.secure:
        # its exact cells go to the two aggregators only (``protocol.secure``)
        return None
    if dataset.public or measure.kind not in ("count", "rate") or measure.column is not None:
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


@dataclass(frozen=True)
class Measurements:
    """A plan's ``[measure]``: the tables it measures instead of the queries they serve."""

    #: ε per node in the plan's year that the plan states it spends in all
    epsilon: float
    tables: tuple[Table, ...]

    def check_joints(self, where: str) -> None:
        """ConfigError if a population's joint table is over ``MAX_JOINT_CELLS``."""
        joints: dict[tuple[str, str, tuple[str, ...]], dict[str, int]] = {}
        for t in self.tables:
            joint = joints.setdefault((t.dataset, repr(t.where), t.years), {})
            joint.update((a, len(d)) for a, d in zip(t.attributes, t.domains, strict=True))
        for sizes in joints.values():
            cells = math.prod(sizes.values())
            if cells > MAX_JOINT_CELLS:
                raise ConfigError(
                    f"{where}: tables of one population use {', '.join(sizes)}: a joint of"
                    f" {cells} cells, above {MAX_JOINT_CELLS}; measure fewer attributes"
                )

    @property
    def served(self) -> dict[str, Table]:
        """Plan query name -> the table serving it."""
        return {m: t for t in self.tables for m in t.members}


def column_order(dataset: Dataset) -> list[str]:
    """The catalogue's order of a dataset's columns (the period first)."""
    return [dataset.period, *(c for c in dataset.columns if c != dataset.period)]


def domain(dataset: Dataset, column: str, years: tuple[str, ...]) -> tuple[Value, ...]:
    """A category column's public domain (the period's: the years asked)."""
    if column == dataset.period:
        return years
    rule = dataset.columns[column]
    assert isinstance(rule, CategoryRule)
    return tuple(rule.domain)


def size(dataset: Dataset, attributes: Sequence[str], years: tuple[str, ...]) -> int:
    """How many cells a table over ``attributes`` has."""
    return math.prod(len(domain(dataset, c, years)) for c in attributes)


def build_table(
    name: str,
    members: Mapping[str, QuerySpec],
    policy: Policy,
    *,
    epsilon: float = 0.0,
    where: str = "",
) -> Table:
    """The table serving ``members`` (plan query name -> its spec); ConfigError if they
    cannot share one (another dataset, filter or year; a query no table can serve; more
    cells than the catalogue's ``max_groups``)."""
    specs = list(members.values())
    if not specs:
        raise ConfigError(f"{where}: a measured table serves no query")
    first = specs[0]
    dataset = policy.datasets.get(first.dataset)
    if dataset is None:
        raise ConfigError(f"{where}: unknown dataset {first.dataset}")
    attrs: list[str] = []
    for query, spec in members.items():
        needed = measurable(spec, dataset) if spec.dataset == first.dataset else None
        if needed is None:
            raise ConfigError(
                f"{where}: query {query} cannot be served by a table (a private COUNT(*) or"
                " RATE over category columns, compared with =, !=, IN or NOT IN)"
            )
        if (spec.dataset, spec.where, spec.years) != (first.dataset, first.where, first.years):
            raise ConfigError(
                f"{where}: query {query} has another dataset, filter or years than"
                f" {next(iter(members))}: one table serves queries of one population"
            )
        attrs.extend(a for a in needed if a not in attrs)
    ordered = tuple(c for c in column_order(dataset) if c in attrs)
    cells = size(dataset, ordered, first.years)
    if cells > policy.limits.max_groups:
        raise ConfigError(
            f"{where}: the table has {cells} cells, above the catalogue's max_groups"
            f" ({policy.limits.max_groups})"
        )
    table = Table(
        name=name,
        dataset=first.dataset,
        where=first.where,
        years=first.years,
        attributes=ordered,
        domains=tuple(domain(dataset, c, first.years) for c in ordered),
        members=tuple(sorted(members)),
        epsilon=epsilon,
    )
    try:
        parsed = parse_sql(table_sql(table, dataset))
    except QueryRefused as exc:  # pragma: no cover - table_sql writes the parser's SQL
        raise ConfigError(f"{where}: the table's query does not parse: {exc}") from None
    if parsed != table.spec():
        raise ConfigError(f"{where}: the table's query does not parse back to itself")
    return table


def table_sql(table: Table, dataset: Dataset) -> str:
    """The COUNT query that measures ``table``, in the nodes' SQL."""
    years = ", ".join(_literal(y) for y in table.years)
    period = (
        f"{dataset.period} = {years}" if len(table.years) == 1 else f"{dataset.period} IN ({years})"
    )
    where = period if table.where is None else f"{period} AND {_sql(table.where)}"
    if not table.attributes:  # one cell: the count of the whole population
        return f"SELECT COUNT(*) FROM {table.dataset} WHERE {where}"
    columns = ", ".join(table.attributes)
    return f"SELECT {columns}, COUNT(*) FROM {table.dataset} WHERE {where} GROUP BY {columns}"


def _sql(cond: Condition) -> str:
    if isinstance(cond, BoolOp):
        if cond.op == "not":
            return f"NOT ({_sql(cond.args[0])})"
        return "(" + f" {cond.op.upper()} ".join(_sql(c) for c in cond.args) + ")"
    if cond.op in ("in", "not in"):
        values = ", ".join(_literal(v) for v in cond.values)
        return f"{cond.column} {cond.op.upper()} ({values})"
    op = "<>" if cond.op == "!=" else cond.op
    return f"{cond.column} {op} {_literal(cond.values[0])}"


def _literal(value: Value) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)
