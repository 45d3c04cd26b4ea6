"""A report plan: the named federated queries of a report and the statistics made from them.

A plan is a TOML file (``policies/reports/annual.toml`` documents the schema). Loading
it parses every query with the same SQL subset the nodes accept, checks it against the
provincial catalogue, and works out what each query costs every node: the ε given, or
the ε that reaches the accuracy asked (the node's own rule, ``query.cost.request_epsilon``).
The catalogue's clamp bounds are the widest a county may have, so the cost computed
here is an upper bound of what any node charges.
"""

from __future__ import annotations

import functools
import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from fedscreen.errors import ConfigError, QueryRefused
from fedscreen.policy import Policy
from fedscreen.policy.model import CategoryRule, Dataset
from fedscreen.query.compile import compile_query
from fedscreen.query.cost import request_epsilon
from fedscreen.query.spec import QuerySpec
from fedscreen.query.sqlparse import parse_sql
from fedscreen.report.measured import Measurements, Table, build_table, table_sql

#: "points" are percentage points: the difference of two percentages (fractions, like them)
UNITS: Final = ("percent", "points", "count", "days", "ratio")
#: the ways a statistic is made from its queries (see the plan schema)
FORMS: Final = ("query", "ratio", "shares", "flags", "change")
_STAT_KEYS: Final = {
    "id", "item", "section", "title", "description", "unit", "target", "target_label",
    "where", "sum_over", "within", "columns", "along", "weight", *FORMS,
}  # fmt: skip
_QUERY_KEYS: Final = {"sql", "epsilon", "accuracy"}


@dataclass(frozen=True)
class PlannedQuery:
    """One federated query of the plan, checked against the provincial catalogue."""

    name: str
    sql: str
    spec: QuerySpec
    epsilon: float | None
    accuracy: float | None
    #: a public dataset: exact figures, no noise, no charge
    public: bool
    #: ε each node charges to each year the query reads (an upper bound, see the module)
    cost: float
    #: cells it releases (the product of its group-by domains in the catalogue)
    cells: int

    @property
    def years(self) -> tuple[str, ...]:
        """The academic years whose budgets the query charges."""
        return () if self.public else self.spec.years


@dataclass(frozen=True)
class Statistic:
    """One figure of the report and how it is computed from the plan's queries."""

    id: str
    item: int | None
    section: str
    title: str
    description: str
    unit: str
    target: float | None
    target_label: str | None
    #: one of FORMS
    form: str
    #: the query names it reads, in the form's order (ratio: numerator, denominator)
    queries: tuple[str, ...]
    #: cells kept before anything else: column -> allowed values
    where: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    #: query: columns summed over; shares: the distribution's column; flags: the 0/1
    #: columns reported (empty: all); change: the column along which it changes
    columns: tuple[str, ...] = ()
    #: how much its accuracy counts when ``report plan --compile`` splits ε (default 1)
    weight: float = 1.0


@dataclass(frozen=True)
class ReportPlan:
    """A loaded, checked report plan."""

    name: str
    title: str
    year: str
    #: the year "{previous_year}" in the plan's SQL stands for (None: the plan uses none)
    previous_year: str | None
    path: Path
    sha256: str
    #: the file's bytes, kept with the report so that its figures can be recomputed
    source: bytes
    deadline_ms: int
    #: (id, title) of each section, in order
    sections: tuple[tuple[str, str], ...]
    queries: Mapping[str, PlannedQuery]
    statistics: tuple[Statistic, ...]
    #: the tables measured instead of the queries they serve (None: every query is asked)
    measure: Measurements | None = None
    #: the catalogue's datasets the plan reads (a table's SQL names its columns)
    datasets: Mapping[str, Dataset] = field(default_factory=dict)

    @functools.cached_property
    def asked(self) -> dict[str, PlannedQuery]:
        """What is asked of the nodes: each measured table, then each query no table serves."""
        if self.measure is None:
            return dict(self.queries)
        served = self.measure.served
        asked = {t.name: _table_query(t, self.datasets[t.dataset]) for t in self.measure.tables}
        asked.update((n, q) for n, q in self.queries.items() if n not in served)
        return asked

    def sources(self, query: str) -> list[str]:
        """What plan query ``query``'s figures are computed from: every table of its
        population (``report.derived`` estimates it from all of them), or itself."""
        table = None if self.measure is None else self.measure.served.get(query)
        if table is None:
            return [query]
        population = (table.dataset, table.where, table.years)
        assert self.measure is not None
        return [t.name for t in self.measure.tables if (t.dataset, t.where, t.years) == population]

    def cost_by_year(self) -> dict[str, float]:
        """The ε each node is charged per academic year if it answers everything asked."""
        totals: dict[str, float] = {}
        for query in self.asked.values():
            for year in query.years:
                totals[year] = totals.get(year, 0.0) + query.cost
        return totals

    def statistic(self, sid: str) -> Statistic:
        """The statistic with id ``sid``."""
        return next(s for s in self.statistics if s.id == sid)

    def statistics_of(self, query: str) -> list[str]:
        """The ids of the statistics that read ``query`` (a table: the queries it serves)."""
        names = {query}
        for table in () if self.measure is None else self.measure.tables:
            if table.name == query:
                names = set(table.members)
        return [s.id for s in self.statistics if names & set(s.queries)]


def load_plan(
    path: Path, policy: Policy, *, year: str | None = None, previous_year: str | None = None
) -> ReportPlan:
    """Read and check the plan in ``path`` against ``policy``; ConfigError says what is wrong.

    ``year`` replaces the plan's own ``year``; its ``previous_year`` is then the year
    before it, unless ``previous_year`` says otherwise.
    """
    try:
        raw = path.read_bytes()
        doc = tomllib.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the report plan: {exc}") from exc
    except RecursionError:
        # tomllib recurses per level of nesting: no plan nests deeper than a few levels
        raise ConfigError(f"{path}: cannot read the report plan: nested too deeply") from None
    where = str(path)
    plan_year = year or _text(doc, "year", where)
    if previous_year is not None:
        previous: object = previous_year
    elif year is not None:
        previous = _previous_year(plan_year)
    else:
        previous = doc.get("previous_year")
    if previous is not None and not isinstance(previous, str):
        raise ConfigError(f"{where}: previous_year must be a string")
    deadline = doc.get("deadline_ms", 0)
    if not isinstance(deadline, int) or deadline < 0:
        raise ConfigError(f"{where}: deadline_ms must be a non-negative integer")
    sections = tuple(
        (_text(s, "id", f"{where} [[section]]"), _text(s, "title", f"{where} [[section]]"))
        for s in _tables(doc, "section", where)
    )
    raw_queries = doc.get("queries")
    if not isinstance(raw_queries, dict) or not raw_queries:
        raise ConfigError(f"{where}: no [queries.<name>] tables")
    queries = {
        name: _query(name, q, policy, plan_year, previous, f"{where} [queries.{name}]")
        for name, q in raw_queries.items()
    }
    statistics = tuple(
        _statistic(
            s, queries, {sid for sid, _ in sections}, policy, f"{where} [[statistic]] #{n + 1}"
        )
        for n, s in enumerate(_tables(doc, "statistic", where))
    )
    ids = [s.id for s in statistics]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{where}: statistic ids must be unique")
    unused = sorted(set(queries) - {q for s in statistics for q in s.queries})
    if unused:
        # a query no figure reads would spend budget for nothing
        raise ConfigError(f"{where}: queries no statistic reads: {', '.join(unused)}")
    measure = _measure(doc.get("measure"), queries, policy, plan_year, where)
    return ReportPlan(
        name=_text(doc, "name", where),
        title=_text(doc, "title", where),
        year=plan_year,
        previous_year=previous,
        path=path,
        sha256=hashlib.sha256(raw).hexdigest(),
        source=raw,
        deadline_ms=deadline,
        sections=sections,
        queries=queries,
        statistics=statistics,
        measure=measure,
        datasets={q.spec.dataset: policy.datasets[q.spec.dataset] for q in queries.values()},
    )


def _table_query(table: Table, dataset: Dataset) -> PlannedQuery:
    return PlannedQuery(
        name=table.name,
        sql=table_sql(table, dataset),
        spec=table.spec(),
        epsilon=table.epsilon,
        accuracy=None,
        public=False,
        cost=table.epsilon,
        cells=len(table.cells),
    )


def _measure(
    doc: Any, queries: Mapping[str, PlannedQuery], policy: Policy, year: str, where: str
) -> Measurements | None:
    """The plan's ``[measure]`` section, checked (None if it has none)."""
    if doc is None:
        return None
    where = f"{where} [measure]"
    if not isinstance(doc, dict) or set(doc) - {"epsilon", "tables"}:
        raise ConfigError(f"{where}: takes epsilon and [measure.tables.<name>] only")
    total = doc.get("epsilon")
    if isinstance(total, bool) or not isinstance(total, int | float) or not 0 < total < 1e6:
        raise ConfigError(f"{where}: epsilon must be a positive number")
    raw = doc.get("tables")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: no [measure.tables.<name>]")
    tables: list[Table] = []
    served: set[str] = set()
    for name, t in raw.items():
        at = f"{where}.tables.{name}"
        if not isinstance(name, str) or not name.isidentifier() or name in queries:
            raise ConfigError(f"{at}: a table's name is an identifier no query has")
        if not isinstance(t, dict) or set(t) != {"serves", "epsilon"}:
            raise ConfigError(f"{at}: takes serves = [query names] and epsilon")
        serves, epsilon = t["serves"], t["epsilon"]
        if not isinstance(serves, list) or not all(isinstance(q, str) for q in serves):
            raise ConfigError(f"{at}: serves must be a list of query names")
        unknown = [q for q in serves if q not in queries]
        if unknown or not serves:
            raise ConfigError(f"{at}: serves unknown queries: {', '.join(unknown) or 'none'}")
        twice = served & set(serves)
        if twice or len(set(serves)) != len(serves):
            raise ConfigError(f"{at}: a query is served by one table only")
        served |= set(serves)
        if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not epsilon > 0:
            raise ConfigError(f"{at}: epsilon must be a positive number")
        specs = {q: queries[q].spec for q in serves}
        table = build_table(name, specs, policy, epsilon=float(epsilon), where=at)
        try:
            # the node's own rule, as for every query: 1 µε to the per-query cap, scale bound
            request_epsilon(compile_query(table.spec(), policy), policy,
                            epsilon=table.epsilon, accuracy=None)  # fmt: skip
        except QueryRefused as exc:
            raise ConfigError(f"{at}: {exc}") from None
        twin = next((t.name for t in tables if t.spec() == table.spec()), None)
        if twin is not None:
            # a node answers the same question again from its store: the same noise, which
            # the least squares would count twice (intervals far too narrow)
            raise ConfigError(f"{at}: measures what table {twin} measures")
        tables.append(table)
    measure = Measurements(float(total), tuple(tables))
    measure.check_joints(where)
    years = sorted({y for t in tables for y in t.years} | {year})
    for charged in years:
        spent = sum(t.epsilon for t in tables if charged in t.years) + sum(
            q.cost for n, q in queries.items() if n not in served and charged in q.years
        )
        if spent > measure.epsilon * (1 + 1e-9):
            raise ConfigError(
                f"{where}: the tables and the queries they do not serve spend ε = {spent:g} in"
                f" {charged}, more than the epsilon = {measure.epsilon:g} it states"
            )
    return measure


def _previous_year(year: str) -> str:
    try:
        first = int(year.split("-")[0])
    except ValueError as exc:
        raise ConfigError(f"not an academic year: {year!r} (like 2024-2025)") from exc
    return f"{first - 1}-{first}"


def _text(doc: Mapping[str, Any], key: str, where: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: {key} must be a non-empty string")
    return value


def _tables(doc: Mapping[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    value = doc.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(t, dict) for t in value):
        raise ConfigError(f"{where}: needs at least one [[{key}]] table")
    return value


def _query(
    name: str,
    doc: Any,
    policy: Policy,
    year: str,
    previous: str | None,
    where: str,
) -> PlannedQuery:
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: must be a table")
    extra = sorted(set(doc) - _QUERY_KEYS)
    if extra:
        raise ConfigError(f"{where}: unknown keys {', '.join(extra)}")
    template = _text(doc, "sql", where)
    if "{previous_year}" in template and previous is None:
        raise ConfigError(f"{where}: uses {{previous_year}} but the plan has no previous_year")
    sql = template.replace("{year}", year).replace("{previous_year}", previous or "")
    epsilon, accuracy = doc.get("epsilon"), doc.get("accuracy")
    for key, value in (("epsilon", epsilon), ("accuracy", accuracy)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ConfigError(f"{where}: {key} must be a number")
    try:
        spec = parse_sql(sql)
        compiled = compile_query(spec, policy)
        public = compiled.dataset.public
        if public and (epsilon is not None or accuracy is not None):
            raise ConfigError(f"{where}: {spec.dataset} is public (exact, free): give no ε")
        epsilon = None if epsilon is None else float(epsilon)
        accuracy = None if accuracy is None else float(accuracy)
        cost = request_epsilon(compiled, policy, epsilon=epsilon, accuracy=accuracy)
    except QueryRefused as exc:
        raise ConfigError(f"{where}: the provincial catalogue refuses it: {exc}") from exc
    return PlannedQuery(
        name=name,
        sql=sql,
        spec=spec,
        epsilon=epsilon,
        accuracy=accuracy,
        public=public,
        cost=cost,
        cells=len(compiled.cells),
    )


def _statistic(
    doc: dict[str, Any],
    queries: Mapping[str, PlannedQuery],
    sections: set[str],
    policy: Policy,
    where: str,
) -> Statistic:
    extra = sorted(set(doc) - _STAT_KEYS)
    if extra:
        raise ConfigError(f"{where}: unknown keys {', '.join(extra)}")
    sid = _text(doc, "id", where)
    where = f"{where} ({sid})"
    forms = [f for f in FORMS if f in doc]
    if len(forms) != 1:
        raise ConfigError(f"{where}: give exactly one of {', '.join(FORMS)}")
    form = forms[0]
    names = doc[form]
    names = [names] if isinstance(names, str) else names
    if (
        not isinstance(names, list)
        or not all(isinstance(n, str) for n in names)
        or len(names) != (2 if form == "ratio" else 1)
    ):
        count = "two query names" if form == "ratio" else "one query name"
        raise ConfigError(f"{where}: {form} must name {count}")
    for name in names:
        if name not in queries:
            raise ConfigError(f"{where}: no query named {name!r}")
    section = _text(doc, "section", where)
    if section not in sections:
        raise ConfigError(f"{where}: no section {section!r}")
    unit = _text(doc, "unit", where)
    if unit not in UNITS:
        raise ConfigError(f"{where}: unit must be one of {', '.join(UNITS)}")
    item, target, label = doc.get("item"), doc.get("target"), doc.get("target_label")
    if item is not None and (isinstance(item, bool) or not isinstance(item, int)):
        raise ConfigError(f"{where}: item must be an integer")
    if target is not None and (isinstance(target, bool) or not isinstance(target, int | float)):
        raise ConfigError(f"{where}: target must be a number")
    columns = _columns(doc, form, where)
    first = queries[names[0]].spec
    cells_where = _where(doc.get("where", {}), first.group_by, where)
    kind = first.measure.kind
    if form in ("shares", "flags") and kind not in ("count", "sum"):
        raise ConfigError(f"{where}: {form} needs a COUNT or SUM query, not {kind.upper()}")
    if form == "query" and columns and kind not in ("count", "sum"):
        raise ConfigError(f"{where}: sum_over needs a COUNT or SUM query, not {kind.upper()}")
    if form == "change" and kind != "rate":
        raise ConfigError(f"{where}: change needs a RATE query")
    if form == "ratio":
        for name in names:
            if queries[name].spec.measure.kind not in ("count", "sum"):
                raise ConfigError(f"{where}: a ratio's parts must be COUNT or SUM queries")
        missing = set(queries[names[1]].spec.group_by) - set(first.group_by)
        if missing:
            raise ConfigError(
                f"{where}: the denominator groups by {', '.join(sorted(missing))}, "
                "which the numerator lacks"
            )
    for column in columns:
        if column not in first.group_by:
            raise ConfigError(f"{where}: {names[0]} does not group by {column}")
    dataset = policy.datasets[first.dataset]
    for column, values in cells_where.items():
        # a value outside the public domain would silently empty the statistic
        allowed = _domain(dataset, column)
        if allowed is not None and not set(values) <= set(allowed):
            raise ConfigError(f"{where}: where.{column} has values outside its domain {allowed}")
    if form == "flags":
        for column in columns or first.group_by:
            if set(_domain(dataset, column) or ()) != {0, 1}:
                raise ConfigError(f"{where}: flags needs 0/1 columns; {column} is not one")
    if form == "change" and cells_where:
        raise ConfigError(f"{where}: where does not apply to change")
    if form in ("shares", "change") and len(columns) != 1:
        raise ConfigError(
            f"{where}: {form} needs one column ({'within' if form == 'shares' else 'along'})"
        )
    return Statistic(
        id=sid,
        item=item,
        section=section,
        title=_text(doc, "title", where),
        description=_text(doc, "description", where),
        unit=unit,
        target=None if target is None else float(target),
        target_label=label if isinstance(label, str) else None,
        form=form,
        queries=tuple(names),
        where=cells_where,
        columns=columns,
        weight=_weight(doc.get("weight", 1.0), where),
    )


def _weight(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 1e-6 <= value <= 1e6:
        raise ConfigError(f"{where}: weight must be a number from 0.000001 to 1000000")
    return float(value)


def _domain(dataset: Dataset, column: str) -> tuple[Any, ...] | None:
    """The public domain of a category column (None for a numeric one)."""
    rule = dataset.columns.get(column)
    return rule.domain if isinstance(rule, CategoryRule) else None


def _columns(doc: Mapping[str, Any], form: str, where: str) -> tuple[str, ...]:
    key = {"query": "sum_over", "shares": "within", "flags": "columns", "change": "along"}.get(form)
    for other in ("sum_over", "within", "columns", "along"):
        if other in doc and other != key:
            raise ConfigError(f"{where}: {other} does not apply to {form}")
    if key is None or key not in doc:
        return ()
    value = doc[key]
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {key} must be a list of column names")
    return tuple(value)


def _where(doc: Any, group_by: tuple[str, ...], where: str) -> dict[str, tuple[Any, ...]]:
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: where must be a table of column = [values]")
    kept: dict[str, tuple[Any, ...]] = {}
    for column, values in doc.items():
        if column not in group_by:
            raise ConfigError(f"{where}: where names {column}, which the query does not group by")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: where.{column} must be a non-empty list")
        kept[column] = tuple(values)
    return kept
