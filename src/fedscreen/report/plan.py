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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from fedscreen.errors import ConfigError, QueryRefused
from fedscreen.policy import Policy
from fedscreen.policy.model import Dataset
from fedscreen.query.compile import check_secure, compile_query
from fedscreen.query.cost import request_epsilon
from fedscreen.query.spec import QuerySpec
from fedscreen.query.sqlparse import parse_sql
from fedscreen.report.measured import Measurements, Table, build_table, table_sql
from fedscreen.report.statistic import FORMS, UNITS, Statistic, parse_statistic
from fedscreen.report.statistic import text as _text

__all__ = ["FORMS", "UNITS", "PlannedQuery", "ReportPlan", "Statistic", "load_plan"]

_QUERY_KEYS: Final = {"sql", "epsilon", "accuracy", "secure"}


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

    @property
    def secure(self) -> bool:
        """Released only as province totals through the two aggregators (``protocol.secure``)."""
        return self.spec.secure


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
        parse_statistic(
            s,
            {name: q.spec for name, q in queries.items()},
            {sid for sid, _ in sections},
            policy,
            f"{where} [[statistic]] #{n + 1}",
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
        secure = [q for q in serves if queries[q].secure]
        if secure:
            # its exact cells go to the two aggregators only: no table may hold them
            raise ConfigError(
                f"{at}: {', '.join(secure)} is secure: a secure query is asked as written, "
                "never served by a measured table"
            )
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
    secure = doc.get("secure", False)
    if not isinstance(secure, bool):
        raise ConfigError(f"{where}: secure must be true or false")
    for key, value in (("epsilon", epsilon), ("accuracy", accuracy)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ConfigError(f"{where}: {key} must be a number")
    try:
        spec = replace(parse_sql(sql), secure=secure)
        if secure:
            # said first and on its own: a COUNT over the catalogue's secure columns only
            check_secure(spec, policy)
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
