"""Combine the provincial catalogue with a county override, by intersection.

Semantics (the choice, and why):

* :func:`merge` is a pure intersection and never raises: caps and budgets take the
  minimum, the publication threshold the maximum, domains, measures, candidates and
  column sets intersect, bounds narrow. Whatever a county document says, the result is
  never looser than the province (nor than the county), so merging is safe even with
  a document nobody checked. It is idempotent, and applying several overrides gives
  the same policy in any order.
* The offline window (how old a query carried by file may be when a node answers it)
  takes the minimum too: a county may shorten it, never lengthen it.
* Whatever in a county document *would* loosen (a higher cap, an unknown column or
  value, wider bounds) has no effect on the merge, and that silence would hide
  mistakes: a misspelt column in a document meant to tighten is a restriction that
  silently does not happen. So :func:`loosenings` lists every such attempt and
  :func:`check_tightens` raises on any; the node's loader calls it, and refuses to
  start on a county document that is not a pure tightening.
* A column left with no measure, no domain value or empty bounds is withheld. A
  dataset whose period column is no longer filterable is emptied (every column
  withheld): the node could not charge a year's budget for its queries.
* What each kind of node holds (``[kinds]``, see ``kinds``) narrows too: the column
  lists intersect, and a county document naming a column the catalogue does not give
  that kind is a loosening.
* Secure aggregation narrows the same way: a county may refuse it (refusals add up),
  raise ``min_nodes`` (the maximum wins) and keep fewer columns (they intersect). A
  secure column must stay a column of its merged dataset that can be grouped by or
  filtered on; one that is withheld or loses both rights leaves the secure list too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TypeVar

from fedscreen.errors import PolicyError
from fedscreen.policy.kinds import kinds_loosenings, merge_kinds
from fedscreen.policy.model import (
    CategoryRule,
    ColumnOverride,
    ColumnRule,
    Dataset,
    DatasetOverride,
    Limits,
    LimitsOverride,
    Measure,
    NumericRule,
    Override,
    Policy,
    Secure,
    SecureOverride,
    key_path,
)

__all__ = ["as_override", "check_tightens", "loosenings", "merge"]

_N = TypeVar("_N", int, float)
_V = TypeVar("_V")


def merge(province: Policy, county: Override) -> Policy:
    """The policy allowing only what both ``province`` and ``county`` allow."""
    datasets: dict[str, Dataset] = {}
    for name, dataset in province.datasets.items():
        override = county.datasets.get(name)
        datasets[name] = dataset if override is None else _merge_dataset(dataset, override)
    overrides = province.overrides
    if county.version is not None:
        overrides = overrides | {county.version}
    return Policy(
        version=province.version,
        limits=_merge_limits(province.limits, county.limits),
        datasets=datasets,
        overrides=overrides,
        secure=_merge_secure(province.secure, county.secure, datasets),
        kinds=merge_kinds(province, county.kinds),
        kind=province.kind,
    )


def as_override(policy: Policy) -> Override:
    """``policy`` restated as an override: merging it into a policy meets the two."""
    limits = policy.limits
    return Override(
        limits=LimitsOverride(
            max_epsilon_per_query=limits.max_epsilon_per_query,
            epsilon_per_node_per_year=limits.epsilon_per_node_per_year,
            analyst_share=limits.analyst_share,
            publication_threshold=limits.publication_threshold,
            max_groups=limits.max_groups,
            analysts=dict(limits.analysts),
            approval_above_epsilon=limits.approval_above_epsilon,
            offline_window_days=limits.offline_window_days,
        ),
        datasets={
            name: DatasetOverride(
                withheld=dataset.withheld,
                columns={col: _restate(rule) for col, rule in dataset.columns.items()},
            )
            for name, dataset in policy.datasets.items()
        },
        secure=SecureOverride(
            refuse=policy.secure.refused,
            min_nodes=policy.secure.min_nodes,
            # every dataset is named: an absent one would mean "as the province says"
            columns={
                name: policy.secure.columns.get(name, frozenset()) for name in policy.datasets
            },
        ),
        kinds={kind: dict(datasets) for kind, datasets in policy.kinds.items()},
    )


def loosenings(province: Policy, county: Override) -> list[str]:
    """Every part of ``county`` that would loosen ``province`` (and so has no effect).

    Each entry is "key.path: what is wrong"; an empty list means a pure tightening.
    """
    found: list[str] = []
    p, c = province.limits, county.limits
    for key, mine, theirs in (
        ("max_epsilon_per_query", c.max_epsilon_per_query, p.max_epsilon_per_query),
        ("epsilon_per_node_per_year", c.epsilon_per_node_per_year, p.epsilon_per_node_per_year),
        ("analyst_share", c.analyst_share, p.analyst_share),
        ("max_groups", c.max_groups, p.max_groups),
        ("offline_window_days", c.offline_window_days, p.offline_window_days),
    ):
        if mine is not None and mine > theirs:
            found.append(f"limits.{key}: {mine} is above the provincial {theirs}")
    if c.publication_threshold is not None and c.publication_threshold < p.publication_threshold:
        found.append(
            f"limits.publication_threshold: {c.publication_threshold} is below "
            f"the provincial {p.publication_threshold}"
        )
    for analyst, share in sorted(c.analysts.items()):
        if share > p.share_of(analyst):
            found.append(
                f"{key_path(('limits', 'analysts', analyst))}: {share} is above "
                f"the provincial {p.share_of(analyst)}"
            )
    approval = c.approval_above_epsilon
    if approval is not None and approval > _or_inf(p.approval_above_epsilon):
        found.append(
            f"limits.approval_above_epsilon: {approval} is above the provincial "
            f"{p.approval_above_epsilon}"
        )
    for name, override in sorted(county.datasets.items()):
        dataset = province.datasets.get(name)
        if dataset is None:
            found.append(f"datasets.{name}: not in the provincial catalogue")
        else:
            found.extend(_dataset_loosenings(f"datasets.{name}", dataset, override))
    found.extend(_secure_loosenings(province, county.secure))
    found.extend(kinds_loosenings(province, county.kinds))
    return found


def check_tightens(province: Policy, county: Override, *, source: str = "county policy") -> None:
    """Raise :class:`PolicyError` naming every attempt of ``county`` to loosen ``province``."""
    found = loosenings(province, county)
    if found:
        lines = [f"{source}: {entry}" for entry in found]
        lines.append(f"{source}: a county policy may only tighten the provincial catalogue")
        raise PolicyError("\n".join(lines))


# --- merging --------------------------------------------------------------------------


def _merge_limits(p: Limits, c: LimitsOverride) -> Limits:
    per_year = _min(p.epsilon_per_node_per_year, c.epsilon_per_node_per_year)
    # a per-query cap above the yearly budget could never be spent: keep the two consistent
    per_query = min(_min(p.max_epsilon_per_query, c.max_epsilon_per_query), per_year)
    share = _min(p.analyst_share, c.analyst_share)
    # the county's default share caps every analyst it does not name, even ones the
    # province grants more; with no default it caps only those it names
    county_share = _or_inf(c.analyst_share)
    analysts = {
        a: min(p.share_of(a), c.analysts.get(a, county_share))
        for a in sorted({*p.analysts, *c.analysts})
    }
    approval = min(_or_inf(p.approval_above_epsilon), _or_inf(c.approval_above_epsilon))
    return Limits(
        max_epsilon_per_query=per_query,
        epsilon_per_node_per_year=per_year,
        analyst_share=share,
        publication_threshold=max(p.publication_threshold, c.publication_threshold or 0),
        max_groups=_min(p.max_groups, c.max_groups),
        analysts=analysts,
        approval_above_epsilon=None if math.isinf(approval) else approval,
        # an offline node answers a carried query only while it is this fresh: shorter wins
        offline_window_days=_min(p.offline_window_days, c.offline_window_days),
    )


def _merge_dataset(p: Dataset, c: DatasetOverride) -> Dataset:
    withheld = set(p.withheld) | (c.withheld & p.columns.keys())
    columns: dict[str, ColumnRule] = {}
    for name, rule in p.columns.items():
        if name in withheld:
            continue
        override = c.columns.get(name)
        merged = rule if override is None else _merge_rule(rule, override)
        if merged is None:
            withheld.add(name)
        else:
            columns[name] = merged
    period = columns.get(p.period)
    if period is None or Measure.FILTER not in period.measures:
        withheld |= columns.keys()
        columns = {}
    return Dataset(
        public=p.public, period=p.period, unit=p.unit, columns=columns, withheld=frozenset(withheld)
    )


def _merge_secure(p: Secure, c: SecureOverride, datasets: Mapping[str, Dataset]) -> Secure:
    columns: dict[str, frozenset[str]] = {}
    for name, allowed in p.columns.items():
        dataset = datasets.get(name)
        if dataset is None:
            continue
        kept = allowed & c.columns.get(name, allowed)
        kept = frozenset(col for col in kept if _securable(dataset, col))
        if kept:
            columns[name] = kept
    return Secure(
        min_nodes=max(p.min_nodes, c.min_nodes or 0),
        columns=columns,
        refused=p.refused or c.refuse,
    )


def _securable(dataset: Dataset, column: str) -> bool:
    """May a secure query use ``column`` of ``dataset`` at all (see ``load``)?"""
    rule = dataset.columns.get(column)
    return isinstance(rule, CategoryRule) and bool(rule.measures & {Measure.GROUP, Measure.FILTER})


def _merge_rule(p: ColumnRule, c: ColumnOverride) -> ColumnRule | None:
    """The narrower rule, or None when nothing of the column is left."""
    measures = p.measures if c.measures is None else p.measures & c.measures
    if isinstance(p, CategoryRule):
        domain = p.domain if c.domain is None else _keep(p.domain, c.domain)
        if not measures or not domain:
            return None
        return CategoryRule(domain=domain, measures=measures)
    low, high = p.bounds
    if c.bounds is not None:
        low, high = max(low, c.bounds[0]), min(high, c.bounds[1])
    if low > high:
        return None
    candidates = p.candidates if c.candidates is None else _keep(p.candidates, c.candidates)
    candidates = tuple(x for x in candidates if low <= x <= high)
    if not candidates or Measure.QUANTILE not in measures:
        measures, candidates = measures - {Measure.QUANTILE}, ()
    if not measures:
        return None
    return NumericRule(bounds=(low, high), measures=measures, candidates=candidates)


def _restate(rule: ColumnRule) -> ColumnOverride:
    if isinstance(rule, CategoryRule):
        return ColumnOverride(measures=rule.measures, domain=rule.domain)
    return ColumnOverride(measures=rule.measures, bounds=rule.bounds, candidates=rule.candidates)


# --- reporting loosenings ---------------------------------------------------------------


def _dataset_loosenings(where: str, p: Dataset, c: DatasetOverride) -> list[str]:
    found = [
        f"{where}.withheld: {name!r} is not a column of the provincial catalogue"
        for name in sorted(c.withheld - p.columns.keys() - p.withheld)
    ]
    for name, override in sorted(c.columns.items()):
        rule = p.columns.get(name)
        if rule is None:
            found.append(f"{where}.columns.{name}: not a queryable column of the catalogue")
        else:
            found.extend(_column_loosenings(f"{where}.columns.{name}", rule, override))
    return found


def _column_loosenings(where: str, p: ColumnRule, c: ColumnOverride) -> list[str]:
    found: list[str] = []
    if c.measures is not None and c.measures - p.measures:
        found.append(
            f"{where}.measures: {_names(c.measures - p.measures)} not allowed by the province"
        )
    if isinstance(p, CategoryRule):
        found.extend(
            f"{where}.{key}: a category column has no {key}"
            for key, value in (("bounds", c.bounds), ("candidates", c.candidates))
            if value is not None
        )
        if c.domain is not None and set(c.domain) - set(p.domain):
            extra = [v for v in c.domain if v not in p.domain]
            found.append(f"{where}.domain: {_names(extra)} not in the provincial domain")
        return found
    if c.domain is not None:
        found.append(f"{where}.domain: a numeric column has no domain")
    if c.bounds is not None and (c.bounds[0] < p.bounds[0] or c.bounds[1] > p.bounds[1]):
        found.append(
            f"{where}.bounds: {list(c.bounds)} is wider than the provincial {list(p.bounds)}"
        )
    if c.candidates is not None and set(c.candidates) - set(p.candidates):
        extra = [v for v in c.candidates if v not in p.candidates]
        found.append(f"{where}.candidates: {_names(extra)} not among the provincial candidates")
    return found


def _secure_loosenings(province: Policy, c: SecureOverride) -> list[str]:
    p = province.secure
    found: list[str] = []
    if c.min_nodes is not None and c.min_nodes < p.min_nodes:
        found.append(f"secure.min_nodes: {c.min_nodes} is below the provincial {p.min_nodes}")
    for name, columns in sorted(c.columns.items()):
        where = f"secure.datasets.{name}"
        if name not in province.datasets:
            found.append(f"{where}: not in the provincial catalogue")
            continue
        extra = columns - p.columns.get(name, frozenset())
        if extra:
            found.append(
                f"{where}.columns: {_names(extra)} not allowed in secure queries by the province"
            )
    return found


# --- helpers ----------------------------------------------------------------------------


def _min(theirs: _N, mine: _N | None) -> _N:
    return theirs if mine is None else min(theirs, mine)


def _or_inf(value: float | None) -> float:
    return math.inf if value is None else value


def _keep(ordered: tuple[_V, ...], allowed: Iterable[_V]) -> tuple[_V, ...]:
    """``ordered`` restricted to ``allowed``, in the province's order (so merges commute)."""
    keep = set(allowed)
    return tuple(v for v in ordered if v in keep)


def _names(values: Iterable[object]) -> str:
    return ", ".join(
        repr(str(v)) if isinstance(v, str) else repr(v) for v in sorted(values, key=str)
    )
