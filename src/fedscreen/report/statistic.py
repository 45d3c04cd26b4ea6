"""A report plan's statistics: one figure each, and how it is made from the plan's queries.

``parse_statistic`` checks one ``[[statistic]]`` table of a plan (``report.plan``)
against the queries it reads and the provincial catalogue's public domains.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from fedscreen.errors import ConfigError
from fedscreen.policy import Policy
from fedscreen.policy.model import CategoryRule, Dataset
from fedscreen.query.spec import QuerySpec

#: "points" are percentage points: the difference of two percentages (fractions, like them)
UNITS: Final = ("percent", "points", "count", "days", "ratio")
#: the ways a statistic is made from its queries (see the plan schema)
FORMS: Final = ("query", "ratio", "shares", "flags", "change")
_STAT_KEYS: Final = {
    "id", "item", "section", "title", "description", "unit", "target", "target_label",
    "where", "sum_over", "within", "columns", "along", "weight", *FORMS,
}  # fmt: skip


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


def parse_statistic(
    doc: dict[str, Any],
    queries: Mapping[str, QuerySpec],
    sections: set[str],
    policy: Policy,
    where: str,
) -> Statistic:
    extra = sorted(set(doc) - _STAT_KEYS)
    if extra:
        raise ConfigError(f"{where}: unknown keys {', '.join(extra)}")
    sid = text(doc, "id", where)
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
    section = text(doc, "section", where)
    if section not in sections:
        raise ConfigError(f"{where}: no section {section!r}")
    unit = text(doc, "unit", where)
    if unit not in UNITS:
        raise ConfigError(f"{where}: unit must be one of {', '.join(UNITS)}")
    item, target, label = doc.get("item"), doc.get("target"), doc.get("target_label")
    if item is not None and (isinstance(item, bool) or not isinstance(item, int)):
        raise ConfigError(f"{where}: item must be an integer")
    if target is not None and (isinstance(target, bool) or not isinstance(target, int | float)):
        raise ConfigError(f"{where}: target must be a number")
    columns = _columns(doc, form, where)
    first = queries[names[0]]
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
            if queries[name].measure.kind not in ("count", "sum"):
                raise ConfigError(f"{where}: a ratio's parts must be COUNT or SUM queries")
        missing = set(queries[names[1]].group_by) - set(first.group_by)
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
        title=text(doc, "title", where),
        description=text(doc, "description", where),
        unit=unit,
        target=None if target is None else float(target),
        target_label=label if isinstance(label, str) else None,
        form=form,
        queries=tuple(names),
        where=cells_where,
        columns=columns,
        weight=_weight(doc.get("weight", 1.0), where),
    )


def text(doc: Mapping[str, Any], key: str, where: str) -> str:
    """``doc[key]``, a non-empty string; ConfigError naming ``where`` otherwise."""
    value = doc.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: {key} must be a non-empty string")
    return value


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
