"""Check a query against the policy and compile it to parameterised SQL.

The SQL text is assembled only from names the policy lists (checked against
an identifier pattern as well) and fixed keywords; every value travels as a
parameter. Cells are the cartesian product of the group columns' *public*
domains, so which cells an answer has never depends on the data. SQLite groups
every row, but groups outside the public domains (or NULL) are never among the
cells and are dropped unseen (engine ``_filled``); each student still falls in at
most one released cell. (Filtering them in SQL instead cost 25% of the query.)

A secure query (``spec.secure``: exact cells secret-shared to two aggregators) must
also pass :func:`check_secure`: a count, over a non-public dataset, using only the
catalogue's secure columns, at a node whose county does not refuse secure queries.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Final

from fedscreen.errors import QueryRefused
from fedscreen.policy.kinds import answers_secure
from fedscreen.policy.model import (
    CategoryRule,
    ColumnRule,
    Dataset,
    Measure,
    NumericRule,
    Policy,
)
from fedscreen.query.spec import (
    BoolOp,
    Condition,
    QuerySpec,
    Value,
    check_size,
    condition_columns,
)
from fedscreen.query.sqlparse import IDENTIFIER

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
SQL_OPS: Final = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_SPEC_MEASURE: Final = {"sum": Measure.SUM, "mean": Measure.MEAN, "quantile": Measure.QUANTILE}


@dataclass(frozen=True)
class Plan:
    """A checked, compiled query: run ``sql`` with ``params``, then fill ``cells``."""

    spec: QuerySpec
    dataset: Dataset
    sql: str
    params: tuple[Value, ...]
    cells: tuple[tuple[Value, ...], ...]
    #: number of aggregate columns after the group columns in each result row
    aggregates: int
    #: L1 sensitivity of the measure's main aggregate (sum bound; 1 for counts)
    sensitivity: int
    bounds: tuple[int, int] | None = None
    candidates: tuple[int, ...] = ()


def _rule(dataset: Dataset, column: str, need: Measure, what: str) -> ColumnRule:
    if not IDENTIFIER.fullmatch(column):
        raise QueryRefused(f"column {column!r} is not a plain identifier")
    if column in dataset.not_held:
        raise QueryRefused(f"column {column} is not held by a {dataset.held_by} node")
    if column in dataset.withheld:
        raise QueryRefused(f"column {column} is withheld by this node's policy")
    rule = dataset.columns.get(column)
    if rule is None:
        raise QueryRefused(f"unknown column {column} (not in the catalogue)")
    if need not in rule.measures:
        raise QueryRefused(f"column {column} may not be used for {what}")
    return rule


def _value(rule: ColumnRule, column: str, value: Value) -> Value:
    if isinstance(rule, CategoryRule):
        if value not in rule.domain or isinstance(value, float):
            shown = ", ".join(map(str, rule.domain))
            raise QueryRefused(f"value {value!r} is not in the public domain of {column} ({shown})")
        return value
    if isinstance(value, str):
        raise QueryRefused(f"column {column} is numeric; {value!r} is not a number")
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise QueryRefused(f"value for {column} outside the 64-bit integer range")
    if isinstance(value, float) and not math.isfinite(value):
        raise QueryRefused(f"column {column} is numeric; {value!r} is not a finite number")
    return value


def _condition(dataset: Dataset, cond: Condition, params: list[Value]) -> str:
    if isinstance(cond, BoolOp):
        parts = [_condition(dataset, arg, params) for arg in cond.args]
        if cond.op == "not":
            return f"NOT ({parts[0]})"
        return "(" + f" {cond.op.upper()} ".join(f"({p})" for p in parts) + ")"
    rule = _rule(dataset, cond.column, Measure.FILTER, "conditions")
    values = [_value(rule, cond.column, v) for v in cond.values]
    params.extend(values)
    if cond.op in ("in", "not in"):
        marks = ", ".join("?" * len(values))
        return f"{cond.column} {'NOT IN' if cond.op == 'not in' else 'IN'} ({marks})"
    return f"{cond.column} {SQL_OPS[cond.op]} ?"


#: the first words of every secure-aggregation refusal, so an operator knows which rule spoke
SECURE_REFUSAL: Final = "secure aggregation: "
#: most offending column names one refusal lists
_SHOWN: Final = 5


#: columns a secure query may group by but not filter on
GROUP_ONLY_IN_SECURE: Final = frozenset({"city_code"})


def check_secure(spec: QuerySpec, policy: Policy) -> None:
    """Refuse (QueryRefused) a secure ``spec`` that ``policy`` does not allow; else return.

    Only what is particular to secure aggregation: the node's county does not refuse it,
    the measure is a count (only counts are secret-shared and summed), the dataset is
    not public, and every column ``spec`` mentions is one of the catalogue's secure
    columns of that dataset. :func:`compile_query` calls it for every secure spec and
    checks the rest (group and filter rights, domains, ``max_groups``).
    """
    if policy.secure.refused:
        if policy.kind and not answers_secure(policy.kind):
            raise QueryRefused(
                SECURE_REFUSAL + f"a {policy.kind} node answers no secure query (with its "
                "county's node it would count as two of the nodes a release must sum)"
            )
        raise QueryRefused(
            SECURE_REFUSAL + "this county's policy refuses secure queries (if the two "
            "aggregators colluded they would see its exact counts)"
        )
    if spec.measure.kind != "count":
        raise QueryRefused(
            SECURE_REFUSAL + "only counts (COUNT(*), HISTOGRAM(column)) can be secret-shared, "
            f"not {spec.measure.kind.upper()}"
        )
    dataset = policy.datasets.get(spec.dataset)
    if dataset is None:
        raise QueryRefused(SECURE_REFUSAL + f"unknown dataset {spec.dataset!r:.80}")
    if dataset.public:
        raise QueryRefused(
            SECURE_REFUSAL + f"{spec.dataset} is public data, released exactly: "
            "ask it as a plain query"
        )
    allowed = policy.secure.columns.get(spec.dataset, frozenset())
    if not allowed:
        raise QueryRefused(
            SECURE_REFUSAL + f"no column of {spec.dataset} may be aggregated securely"
        )
    outside = sorted(spec.columns() - allowed)
    if outside:
        shown = ", ".join(f"{c!r:.40}" for c in outside[:_SHOWN])
        more = f" and {len(outside) - _SHOWN} more" if len(outside) > _SHOWN else ""
        # the allowed columns are not listed: a refusal detail is cut at 300 characters
        raise QueryRefused(
            SECURE_REFUSAL + f"column(s) {shown}{more} may not be used in a secure query "
            f"(the catalogue lists those that may under [secure.datasets.{spec.dataset}])"
        )
    conditions = [c for c in (spec.where, spec.measure.condition) if c is not None]
    if any(GROUP_ONLY_IN_SECURE & condition_columns(c) for c in conditions):
        # a filter on the city leaves the other cities' counties summing zeros: the
        # release would be that city's counties, however few; grouped, each city's cell
        # counts its own counties (protocol.partial.released_cells)
        raise QueryRefused(
            SECURE_REFUSAL + "city_code may group a secure query, not filter it "
            "(GROUP BY city_code gives each city over its own counties)"
        )


def check_secure_release(policy: Policy, *, nodes: int) -> None:
    """Refuse (QueryRefused) a secure release summing fewer than ``policy.secure.min_nodes``
    nodes: over fewer it would come too close to one county's own value."""
    if nodes < policy.secure.min_nodes:
        raise QueryRefused(
            SECURE_REFUSAL + f"a release must sum at least {policy.secure.min_nodes} nodes, "
            f"not {nodes}"
        )


def compile_query(spec: QuerySpec, policy: Policy) -> Plan:
    """Check ``spec`` against ``policy``; return the SQL plan or raise QueryRefused."""
    check_size(spec)  # a spec built in Python skipped the parser's limits
    dataset = policy.datasets.get(spec.dataset)
    if dataset is None or not IDENTIFIER.fullmatch(spec.dataset):
        known = ", ".join(sorted(policy.datasets))
        raise QueryRefused(f"unknown dataset {spec.dataset!r} (known: {known})")
    if spec.secure:
        check_secure(spec, policy)
    if not spec.years:
        raise QueryRefused("no academic year given (WHERE academic_year = '2024-2025')")
    period_rule = _rule(dataset, dataset.period, Measure.FILTER, "the period")
    for year in spec.years:
        _value(period_rule, dataset.period, year)
    params: list[Value] = []
    # unary + keeps SQLite off the (year, school) index: a year is most of the table, and
    # a full scan is faster than walking the index for it (measured: 15-20% at 10^6 rows)
    where = [f"+{dataset.period} IN ({', '.join('?' * len(spec.years))})"]
    params.extend(spec.years)

    domains: list[tuple[Value, ...]] = []
    for column in spec.group_by:
        if column == dataset.period:
            domains.append(tuple(spec.years))
            continue
        rule = _rule(dataset, column, Measure.GROUP, "GROUP BY")
        if not isinstance(rule, CategoryRule):
            raise QueryRefused(f"column {column} has no public domain to group by")
        domains.append(rule.domain)
    cells = tuple(itertools.product(*domains))
    if len(cells) > policy.limits.max_groups:
        raise QueryRefused(f"{len(cells)} cells exceed the limit of {policy.limits.max_groups}")
    if spec.where is not None:
        where.append(_condition(dataset, spec.where, params))

    measure = spec.measure
    sensitivity = 1
    bounds: tuple[int, int] | None = None
    candidates: tuple[int, ...] = ()
    agg_params: list[Value] = []
    if measure.kind == "count" and measure.column is not None:
        # COUNT(column): rows where it is not NULL (a spec from JSON; SQL text says HISTOGRAM)
        _rule(dataset, measure.column, Measure.COUNT, "COUNT")
        aggregates = [f"COUNT({measure.column})"]
    elif measure.kind == "count":
        aggregates = ["COUNT(*)"]
    elif measure.kind == "rate":
        if measure.condition is None:
            raise QueryRefused("RATE needs a condition")
        matching = _condition(dataset, measure.condition, agg_params)
        aggregates = [f"SUM(CASE WHEN {matching} THEN 1 ELSE 0 END)", "COUNT(*)"]
    else:
        column = measure.column or ""
        rule = _rule(dataset, column, _SPEC_MEASURE[measure.kind], measure.kind.upper())
        if not isinstance(rule, NumericRule):
            raise QueryRefused(f"column {column} is not numeric")
        low, high = bounds = rule.bounds
        clamped = f"MIN(MAX({column}, ?), ?)"
        where.append(f"{column} IS NOT NULL")
        if measure.kind == "quantile":
            if measure.q is None or not 0 < measure.q < 1:  # also refuses NaN
                raise QueryRefused(f"QUANTILE level {measure.q} is not strictly between 0 and 1")
            candidates = rule.candidates
            aggregates = []
            for candidate in candidates:
                aggregates += [f"SUM({clamped} < ?)", f"SUM({clamped} > ?)"]
                agg_params += [low, high, candidate, low, high, candidate]
        else:
            sensitivity = max(abs(low), abs(high))
            aggregates = [f"SUM({clamped})"] + (["COUNT(*)"] if measure.kind == "mean" else [])
            agg_params += [low, high]

    groups = ", ".join(spec.group_by)
    select = ", ".join([*spec.group_by, *aggregates])
    sql = f"SELECT {select} FROM {spec.dataset} WHERE " + " AND ".join(f"({w})" for w in where)
    if groups:
        sql += f" GROUP BY {groups}"
    return Plan(
        spec=spec,
        dataset=dataset,
        sql=sql,
        # aggregate parameters come first: they sit in the SELECT list, before WHERE
        params=(*agg_params, *params),
        cells=cells,
        aggregates=len(aggregates),
        sensitivity=sensitivity,
        bounds=bounds,
        candidates=candidates,
    )
