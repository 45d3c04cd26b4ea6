"""The report model (a JSON-shaped dict) read once into frozen, typed values.

The renderer works on these values only, so a missing key or a wrong type is
reported once, here, with its path in the model ("sections[1].statistics[0]
.rows[3].scope"), instead of surfacing as a KeyError half-way through a page.
Optional fields get their documented defaults.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

UNITS: Final = ("percent", "points", "count", "days", "ratio")


@dataclass(frozen=True)
class Row:
    """One cell of a statistic: a scope (province or node id) and a group."""

    scope: str
    group: tuple[str, ...]
    value: float | None
    lower: float | None
    upper: float | None
    display: str | None
    suppressed: bool


@dataclass(frozen=True)
class Secure:
    """How a statistic's figures came from secure aggregation: province totals only."""

    #: the coordinator, then the second aggregator
    aggregators: tuple[str, ...]
    #: why the release states no figure (None: it does)
    failure: str | None = None


@dataclass(frozen=True)
class Stat:
    """One statistic of the report."""

    id: str
    item: int | None
    title: str
    description: str
    unit: str
    dims: tuple[str, ...]
    target: float | None
    target_label: str | None
    epsilon: float
    public: bool
    queries: tuple[str, ...]
    missing: tuple[str, ...]
    rows: tuple[Row, ...]
    #: its figures came from secure aggregation (None: from the counties' noisy answers)
    secure: Secure | None = None
    #: query ids of the province releases its published province figures came from
    compared: tuple[str, ...] = ()


@dataclass(frozen=True)
class Section:
    """A chapter of the report."""

    id: str
    title: str
    statistics: tuple[Stat, ...]


@dataclass(frozen=True)
class Node:
    """A county node the report asked."""

    id: str
    name: str
    asked: int
    answered: int
    missing_from: tuple[str, ...]


@dataclass(frozen=True)
class Area:
    """A row between the report's top and its nodes: a city, or a county combining its
    county node and school nodes."""

    id: str
    name: str
    nodes: tuple[str, ...]
    #: "city" or "county"
    kind: str = "city"


@dataclass(frozen=True)
class Spent:
    """ε this report spent at one node in one academic year."""

    node: str
    year: str
    epsilon: float
    budget: float | None
    left: float | None


@dataclass(frozen=True)
class Missing:
    """A node that did not contribute to a statistic, and why."""

    node: str
    statistic: str
    reason: str


@dataclass(frozen=True)
class Table:
    """One measured table of a compiled plan."""

    name: str
    attributes: tuple[str, ...]
    cells: int
    epsilon: float
    serves: tuple[str, ...]


@dataclass(frozen=True)
class Measure:
    """A compiled plan's measurements: ε per county and year, and the tables."""

    epsilon: float
    spent: float
    tables: tuple[Table, ...]
    #: counties whose tables disagree beyond their noise
    disagreeing: tuple[str, ...] = ()


@dataclass(frozen=True)
class SecurePage:
    """The privacy page's secure aggregation: who aggregated, which statistics."""

    #: (id, name) of the coordinator and of the second aggregator
    aggregators: tuple[tuple[str, str], ...]
    statistics: tuple[str, ...]


@dataclass(frozen=True)
class Privacy:
    """The privacy page's facts."""

    unit: str
    mechanism: str
    threshold: int
    spent: tuple[Spent, ...]
    missing: tuple[Missing, ...]
    #: the plan's measured tables (None: every query was asked as written)
    measure: Measure | None = None
    #: the statistics from secure aggregation (None: there are none)
    secure: SecurePage | None = None


@dataclass(frozen=True)
class Plan:
    """The plan the report ran."""

    name: str
    file: str
    sha256: str
    year: str


@dataclass(frozen=True)
class Report:
    """The whole report model."""

    title: str
    plan: Plan
    generated_at: str
    analyst: str
    coordinator: str
    nodes: tuple[Node, ...]
    privacy: Privacy
    sections: tuple[Section, ...]
    #: city and county rows, in order (optional in the model)
    areas: tuple[Area, ...] = ()
    #: what the report covers: "province", "city:<code>" or "county:<code>"; its top
    #: rows carry this id
    scope: str = "province"
    scope_name: str = "Province"
    #: areas and nodes in display order (empty: areas, then nodes)
    scopes: tuple[str, ...] = ()
    #: (title, SHA-256) of the province report compared with (None: none)
    compared: tuple[str, str] | None = None

    def statistics(self) -> list[Stat]:
        """Every statistic, in report order."""
        return [stat for section in self.sections for stat in section.statistics]


class _Reader:
    """Typed access to one mapping of the model, naming the path in every error."""

    def __init__(self, value: object, path: str) -> None:
        if not isinstance(value, Mapping):
            raise ValueError(f"report model: {path or 'the model'} must be an object")
        self._m: Mapping[str, Any] = value
        self._path = path

    def has(self, key: str) -> bool:
        """Whether the mapping holds ``key`` (an optional part of the model)."""
        return key in self._m

    def _where(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def _get(self, key: str, *, required: bool) -> Any:
        if key not in self._m:
            if required:
                raise ValueError(f"report model: {self._where(key)} is missing")
            return None
        return self._m[key]

    def text(self, key: str, default: str | None = None) -> str:
        value = self._get(key, required=default is None)
        if value is None:
            return default if default is not None else ""
        if not isinstance(value, str):
            raise ValueError(f"report model: {self._where(key)} must be a string")
        return value

    def optional_text(self, key: str) -> str | None:
        value = self._get(key, required=False)
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError(f"report model: {self._where(key)} must be a string")
        return value

    def number(self, key: str, default: float | None = None) -> float:
        value = self.optional_number(key)
        if value is None:
            if default is None:
                raise ValueError(f"report model: {self._where(key)} must be a number")
            return default
        return value

    def optional_number(self, key: str) -> float | None:
        value = self._get(key, required=False)
        if value is None:
            return None
        # bool is an int in Python; a flag is never a number here
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"report model: {self._where(key)} must be a number")
        number = float(value)
        # JSON cannot carry NaN or infinity; treat them as no value, never as a bar
        return number if math.isfinite(number) else None

    def integer(self, key: str, default: int | None = None) -> int:
        value = self._get(key, required=default is None)
        if value is None and default is not None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"report model: {self._where(key)} must be an integer")
        return value

    def optional_integer(self, key: str) -> int | None:
        if self._get(key, required=False) is None:
            return None
        return self.integer(key)

    def flag(self, key: str, default: bool = False) -> bool:
        value = self._get(key, required=False)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ValueError(f"report model: {self._where(key)} must be true or false")
        return value

    def codes(self, key: str) -> tuple[str, ...]:
        """A list of ids or codes (numbers such as 0/1 flags become their text)."""
        value = self._get(key, required=False)
        if value is None:
            return ()
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ValueError(f"report model: {self._where(key)} must be a list")
        return tuple(_code(v, f"{self._where(key)}[{i}]") for i, v in enumerate(value))

    def objects(self, key: str) -> list[_Reader]:
        value = self._get(key, required=False)
        if value is None:
            return []
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ValueError(f"report model: {self._where(key)} must be a list")
        return [_Reader(v, f"{self._where(key)}[{i}]") for i, v in enumerate(value)]

    def child(self, key: str) -> _Reader:
        return _Reader(self._get(key, required=True), self._where(key))


def _code(value: object, where: str) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if value is None:
        return ""
    raise ValueError(f"report model: {where} must be a string or an integer")


def _row(r: _Reader) -> Row:
    return Row(
        scope=r.text("scope"),
        group=r.codes("group"),
        value=r.optional_number("value"),
        lower=r.optional_number("lower"),
        upper=r.optional_number("upper"),
        display=r.optional_text("display"),
        suppressed=r.flag("suppressed"),
    )


def _stat(r: _Reader) -> Stat:
    unit = r.text("unit")
    province = r.child("province") if r.has("province") else _Reader({}, "province")
    if unit not in UNITS:
        raise ValueError(f"report model: unit {unit!r} is not one of {', '.join(UNITS)}")
    return Stat(
        id=r.text("id"),
        item=r.optional_integer("item"),
        title=r.text("title"),
        description=r.text("description", ""),
        unit=unit,
        dims=r.codes("dims"),
        target=r.optional_number("target"),
        target_label=r.optional_text("target_label"),
        epsilon=r.number("epsilon", 0.0),
        public=r.flag("public"),
        queries=r.codes("queries"),
        missing=r.codes("missing"),
        # the province's published figures sit beside the scope's own (a city report)
        rows=tuple(_row(x) for x in r.objects("rows"))
        + tuple(_row(x) for x in province.objects("rows")),
        secure=_secure(r),
        compared=province.codes("queries"),
    )


def _secure(r: _Reader) -> Secure | None:
    if not r.has("secure"):
        return None
    s = r.child("secure")
    return Secure(aggregators=s.codes("aggregators"), failure=s.optional_text("failure"))


def _secure_page(r: _Reader) -> SecurePage | None:
    if not r.has("secure"):
        return None
    s = r.child("secure")
    return SecurePage(
        aggregators=tuple((a.text("id"), a.text("name", "")) for a in s.objects("aggregators")),
        statistics=s.codes("statistics"),
    )


def _measure(r: _Reader) -> Measure | None:
    if not r.has("measure"):
        return None
    m = r.child("measure")
    return Measure(
        epsilon=m.number("epsilon"),
        spent=m.number("spent"),
        tables=tuple(
            Table(
                name=t.text("name"),
                attributes=t.codes("attributes"),
                cells=t.integer("cells"),
                epsilon=t.number("epsilon"),
                serves=t.codes("serves"),
            )
            for t in m.objects("tables")
        ),
        disagreeing=tuple(d.text("node") for d in m.objects("disagreeing")),
    )


def _scope(r: _Reader) -> dict[str, Any]:
    """The report's scope, its display order and the province report it compares with."""
    out: dict[str, Any] = {"scopes": r.codes("scopes")}
    if r.has("scope"):
        out["scope"] = r.child("scope").text("id")
        out["scope_name"] = r.child("scope").text("name", out["scope"])
    if r.has("province_report"):
        compared = r.child("province_report")
        out["compared"] = (compared.text("title", ""), compared.text("sha256", ""))
    return out


def read_report(model: Mapping[str, Any]) -> Report:
    """Read and check the report model; raises ``ValueError`` naming the bad field."""
    r = _Reader(model, "")
    plan = r.child("plan")
    privacy = r.child("privacy")
    sections = tuple(
        Section(
            id=s.text("id"),
            title=s.text("title"),
            statistics=tuple(_stat(x) for x in s.objects("statistics")),
        )
        for s in r.objects("sections")
    )
    report = Report(
        title=r.text("title"),
        plan=Plan(
            name=plan.text("name"),
            file=plan.text("file", ""),
            sha256=plan.text("sha256", ""),
            year=plan.text("year", ""),
        ),
        generated_at=r.text("generated_at", ""),
        analyst=r.text("analyst", ""),
        coordinator=r.text("coordinator", ""),
        nodes=tuple(
            Node(
                id=n.text("id"),
                name=n.text("name", ""),
                asked=n.integer("asked", 0),
                answered=n.integer("answered", 0),
                missing_from=n.codes("missing_from"),
            )
            for n in r.objects("nodes")
        ),
        privacy=Privacy(
            unit=privacy.text("unit", "one student in one academic year"),
            mechanism=privacy.text("mechanism", ""),
            threshold=privacy.integer("threshold"),
            spent=tuple(
                Spent(
                    node=s.text("node"),
                    year=s.text("year", ""),
                    epsilon=s.number("epsilon"),
                    budget=s.optional_number("budget"),
                    left=s.optional_number("left"),
                )
                for s in privacy.objects("spent")
            ),
            missing=tuple(
                Missing(
                    node=m.text("node"),
                    statistic=m.text("statistic"),
                    reason=m.text("reason", ""),
                )
                for m in privacy.objects("missing")
            ),
            measure=_measure(r),
            secure=_secure_page(privacy),
        ),
        sections=sections,
        areas=tuple(
            Area(
                id=a.text("id"),
                name=a.text("name", ""),
                # reports before node places named an area's nodes "counties"
                nodes=a.codes("nodes") if a.has("nodes") else a.codes("counties"),
                kind=a.text("kind", "city"),
            )
            for a in r.objects("areas")
        ),
        **_scope(r),
    )
    counts = Counter(stat.id for stat in report.statistics())
    duplicates = sorted(i for i, n in counts.items() if n > 1)
    if duplicates:
        # each statistic is an anchor (#stat-<id>); two with one id would clash
        raise ValueError(f"report model: statistic ids used twice: {', '.join(duplicates)}")
    return report
