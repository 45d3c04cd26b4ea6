"""Policy values: the provincial catalogue, a county's override, and what a node enforces.

A :class:`Policy` is complete: every limit is set and every queryable column has its
rule. An :class:`Override` (a county document) is partial: ``None`` or an absent entry
means "as the province says". :func:`fedscreen.policy.merge` combines the two.

Everything here is a plain frozen value; parsing and checking live in ``load``.

:class:`Secure` says which columns a *secure* query (exact cells secret-shared to two
aggregators, released only as a sum over at least ``min_nodes`` nodes) may use; a
county's :class:`SecureOverride` may narrow it or refuse secure queries altogether.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar, Final, TypeAlias


class Measure(StrEnum):
    """What a query may do with a column."""

    GROUP = "group"  # GROUP BY it: needs a public domain, so groups never depend on data
    FILTER = "filter"  # use it in WHERE / RATE(...) conditions
    COUNT = "count"  # COUNT(column): rows where it is not NULL
    SUM = "sum"  # clamped to the column's bounds; sensitivity = the larger |bound|
    MEAN = "mean"  # noisy clamped sum / noisy count
    QUANTILE = "quantile"  # exponential mechanism over the declared candidates


CATEGORY_MEASURES: Final = frozenset({Measure.GROUP, Measure.FILTER, Measure.COUNT})
NUMERIC_MEASURES: Final = frozenset(
    {Measure.FILTER, Measure.COUNT, Measure.SUM, Measure.MEAN, Measure.QUANTILE}
)

#: the fewest nodes any secure release may sum, whatever a catalogue says: one node's
#: sum is that county's own value, which a secure query must never release
MIN_SECURE_NODES: Final = 2

#: how many days after an analyst signs it an offline node (queries carried by file) may
#: still answer a query, unless the catalogue says otherwise; a county may only shorten it
OFFLINE_WINDOW_DAYS: Final = 30
#: the longest offline window a catalogue may set: a query is signed for one academic year
MAX_OFFLINE_WINDOW_DAYS: Final = 366
_DAY_MS: Final = 86_400_000

#: the kinds of node (a manifest member's ``level``; trust.scope.NODE_KINDS agrees)
NODE_KINDS: Final = ("county", "university", "school")

#: a coded value of a category column: a code ("F", "junior") or a 0/1 flag
Value: TypeAlias = str | int

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def key_path(keys: Iterable[str]) -> str:
    """A key path as TOML writes it (``limits.analysts."a.b"``), for messages."""
    return ".".join(
        k if _BARE_KEY.fullmatch(k) else json.dumps(k, ensure_ascii=False) for k in keys
    )


@dataclass(frozen=True)
class CategoryRule:
    """A column with a public, finite domain (codes, bands, 0/1 flags).

    NULL (e.g. an instrument not taken) is never one of the values.
    """

    kind: ClassVar[str] = "category"

    #: every value that may be released, in display order
    domain: tuple[Value, ...]
    measures: frozenset[Measure]


@dataclass(frozen=True)
class NumericRule:
    """An integer column: values are clamped to ``bounds`` (inclusive) before any sum."""

    kind: ClassVar[str] = "numeric"

    bounds: tuple[int, int]
    measures: frozenset[Measure]
    #: quantile answers are chosen among these (strictly increasing, within bounds);
    #: non-empty exactly when QUANTILE is allowed
    candidates: tuple[int, ...] = ()


ColumnRule: TypeAlias = CategoryRule | NumericRule


@dataclass(frozen=True)
class Dataset:
    """One queryable table or view.

    A dataset's columns are an allow-list: anything not in ``columns`` is refused.
    ``withheld`` names view columns refused on purpose, so a refusal can say so.
    A dataset whose ``period`` column is not filterable has no columns at all (a
    merge may empty it): the node cannot charge a year's budget for it.
    """

    #: public data (no personal rows) is released exactly, without noise or budget
    public: bool
    #: the column naming the reporting period; each period has its own budget
    period: str
    #: the unit of privacy, stated in every answer; None for public data
    unit: str | None
    columns: Mapping[str, ColumnRule]
    withheld: frozenset[str] = frozenset()
    #: catalogue columns this kind of node does not hold (see ``Policy.kinds``)
    not_held: frozenset[str] = frozenset()
    #: the node kind ``not_held`` is about ("" when the policy is no node kind's)
    held_by: str = ""


@dataclass(frozen=True)
class Limits:
    """Budgets and release limits, per node."""

    max_epsilon_per_query: float
    #: total ε per node per reporting period (sequential composition)
    epsilon_per_node_per_year: float
    #: fraction of the node's yearly budget one analyst may spend
    analyst_share: float
    #: cells with a noisy count below this are published as "< k"
    publication_threshold: int
    #: most cells one query may release
    max_groups: int
    #: per-analyst shares (analyst id -> fraction) replacing ``analyst_share``
    analysts: Mapping[str, float] = field(default_factory=dict)
    #: a query costing more than this ε waits for an operator's approval; None: never
    approval_above_epsilon: float | None = None
    #: whole days (1..366) an offline node may still answer a query after it was signed
    offline_window_days: int = OFFLINE_WINDOW_DAYS

    @property
    def offline_window_ms(self) -> int:
        """The offline window in milliseconds, the unit of a signed query's timestamps."""
        return self.offline_window_days * _DAY_MS

    def share_of(self, analyst: str) -> float:
        """The fraction of the yearly budget ``analyst`` may spend."""
        return self.analysts.get(analyst, self.analyst_share)

    def analyst_budget(self, analyst: str) -> float:
        """The ε ``analyst`` may spend per node per year."""
        return self.share_of(analyst) * self.epsilon_per_node_per_year


@dataclass(frozen=True)
class Secure:
    """What secure aggregation may touch, and what a node enforces of it.

    A secure query is a COUNT whose exact cells a node secret-shares to two aggregators;
    if the two collude, they see those exact cells. So only the ``columns`` listed here
    (per non-public dataset: category columns the dataset lets queries group by or filter
    on) may appear in one, and a county may refuse them. The default allows nothing.
    """

    #: fewest nodes whose shares one secure release may sum (>= ``MIN_SECURE_NODES``)
    min_nodes: int = MIN_SECURE_NODES
    #: dataset -> the columns a secure query may group by, filter on or count
    columns: Mapping[str, frozenset[str]] = field(default_factory=dict)
    #: this node answers no secure query (its county's policy says so)
    refused: bool = False

    def allows(self, dataset: str) -> frozenset[str]:
        """The columns of ``dataset`` a secure query may use (empty: none may run)."""
        return frozenset() if self.refused else self.columns.get(dataset, frozenset())


@dataclass(frozen=True)
class Policy:
    """The complete policy a node enforces and states (by digest) in every answer."""

    #: version of the provincial catalogue
    version: str
    limits: Limits
    datasets: Mapping[str, Dataset]
    #: versions of the county documents merged in
    overrides: frozenset[str] = frozenset()
    #: secure aggregation; a catalogue without a [secure] section allows none
    secure: Secure = field(default_factory=Secure)
    #: node kind -> dataset -> the columns a node of that kind holds; a kind or dataset
    #: not named holds everything (``policy.kinds.for_kind`` applies it)
    kinds: Mapping[str, Mapping[str, frozenset[str]]] = field(default_factory=dict)
    #: the node kind this policy was restricted to ("": none, the whole catalogue)
    kind: str = ""


# --- a county's override: every field optional, it can only narrow ---------------------


@dataclass(frozen=True)
class ColumnOverride:
    """Narrowings of one column; ``None`` keeps the province's."""

    measures: frozenset[Measure] | None = None
    domain: tuple[Value, ...] | None = None
    bounds: tuple[int, int] | None = None
    candidates: tuple[int, ...] | None = None


@dataclass(frozen=True)
class DatasetOverride:
    """Narrowings of one dataset: columns to withhold and per-column narrowings."""

    withheld: frozenset[str] = frozenset()
    columns: Mapping[str, ColumnOverride] = field(default_factory=dict)


@dataclass(frozen=True)
class LimitsOverride:
    """Lower caps and budgets, a higher threshold; ``None`` keeps the province's."""

    max_epsilon_per_query: float | None = None
    epsilon_per_node_per_year: float | None = None
    analyst_share: float | None = None
    publication_threshold: int | None = None
    max_groups: int | None = None
    analysts: Mapping[str, float] = field(default_factory=dict)
    approval_above_epsilon: float | None = None
    offline_window_days: int | None = None


@dataclass(frozen=True)
class SecureOverride:
    """A county's narrowing of secure aggregation; ``None`` or absent keeps the province's."""

    #: answer no secure query: under collusion of the two aggregators this county's
    #: exact counts would be revealed
    refuse: bool = False
    #: a higher minimum of nodes per secure release
    min_nodes: int | None = None
    #: dataset -> the only columns kept (an empty set: none of that dataset)
    columns: Mapping[str, frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Override:
    """A county policy document: the same schema as the catalogue, every field optional."""

    version: str | None = None
    limits: LimitsOverride = field(default_factory=LimitsOverride)
    datasets: Mapping[str, DatasetOverride] = field(default_factory=dict)
    secure: SecureOverride = field(default_factory=SecureOverride)
    #: node kind -> dataset -> the only columns kept of those the catalogue gives it
    kinds: Mapping[str, Mapping[str, frozenset[str]]] = field(default_factory=dict)
