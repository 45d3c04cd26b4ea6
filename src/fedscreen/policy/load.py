"""Read policy documents (TOML) into policy values, refusing anything malformed.

Errors are :class:`PolicyError` naming the file and the key path, e.g.
``province.toml: datasets.screenings.columns.sex.domain: must be a non-empty list``.
Unknown keys are errors too: a misspelt key in a document meant to restrict would
otherwise restrict nothing. The schema is documented in ``policies/province.toml``.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import NoReturn

from fedscreen.errors import PolicyError
from fedscreen.policy.kinds import for_kind
from fedscreen.policy.merge import check_tightens, merge
from fedscreen.policy.model import (
    CATEGORY_MEASURES,
    MIN_SECURE_NODES,
    NODE_KINDS,
    NUMERIC_MEASURES,
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
    Value,
    key_path,
)

__all__ = ["load_node_policy", "load_override", "load_policy", "parse_override", "parse_policy"]

#: dataset and column names become SQL identifiers: nothing but lowercase identifiers
_IDENT = re.compile(r"[a-z][a-z0-9_]{0,62}")
_LIMITS = ("max_epsilon_per_query", "epsilon_per_node_per_year", "analyst_share")
_LIMITS_INT = ("publication_threshold", "max_groups")
_LIMITS_OPTIONAL = ("analysts", "approval_above_epsilon")

#: a key path inside a document, for error messages
_At = tuple[str, ...]


def load_node_policy(
    province_path: Path, county_path: Path | None = None, *, kind: str | None = None
) -> Policy:
    """The policy a node enforces: the catalogue, intersected with its county's document,
    restricted to the columns a node of ``kind`` holds (None: the whole catalogue).

    Raises :class:`PolicyError` if either document is malformed, or if the county
    document tries to loosen anything (see ``merge`` for why that is an error).
    """
    policy = load_policy(province_path)
    if county_path is not None:
        county = load_override(county_path)
        check_tightens(policy, county, source=str(county_path))
        policy = merge(policy, county)
    return policy if kind is None else for_kind(policy, kind)


def load_policy(path: Path) -> Policy:
    """Read a complete policy document (the provincial catalogue)."""
    return parse_policy(_read(path), source=str(path))


def load_override(path: Path) -> Override:
    """Read a county policy document (every field optional)."""
    return parse_override(_read(path), source=str(path))


def parse_policy(data: Mapping[str, object], *, source: str) -> Policy:
    """Check a parsed catalogue document and build its :class:`Policy`."""
    r = _Reader(source)
    top = r.table(data, ())
    r.keys(top, (), required=("version", "limits", "datasets"), optional=("secure", "kinds"))
    version = r.text(top["version"], ("version",))
    limits = _limits(r, r.table(top["limits"], ("limits",)))
    datasets = {
        name: _dataset(r, r.table(value, ("datasets", name)), ("datasets", name))
        for name, value in r.named(
            r.table(top["datasets"], ("datasets",), non_empty=True), ("datasets",)
        )
    }
    secure = Secure()  # no section: no secure query may run
    if "secure" in top:
        secure = _secure(r, r.table(top["secure"], ("secure",)), datasets)
    kinds = _kinds(r, top.get("kinds", {}), datasets)
    return Policy(version=version, limits=limits, datasets=datasets, secure=secure, kinds=kinds)


def parse_override(data: Mapping[str, object], *, source: str) -> Override:
    """Check a parsed county document and build its :class:`Override`."""
    r = _Reader(source)
    top = r.table(data, ())
    r.keys(top, (), required=("version",), optional=("limits", "datasets", "secure", "kinds"))
    version = r.text(top["version"], ("version",))
    limits = _limits_override(r, r.table(top.get("limits", {}), ("limits",)))
    datasets = r.table(top.get("datasets", {}), ("datasets",))
    return Override(
        version=version,
        limits=limits,
        datasets={
            name: _dataset_override(r, r.table(value, ("datasets", name)), ("datasets", name))
            for name, value in r.named(datasets, ("datasets",))
        },
        secure=_secure_override(r, r.table(top.get("secure", {}), ("secure",))),
        # checked against the catalogue by check_tightens, which knows its datasets
        kinds=_kinds(r, top.get("kinds", {}), None),
    )


# --- sections -------------------------------------------------------------------------


def _limits(r: _Reader, t: dict[str, object]) -> Limits:
    at = ("limits",)
    r.keys(t, at, required=_LIMITS + _LIMITS_INT, optional=_LIMITS_OPTIONAL)
    per_query = r.epsilon(t["max_epsilon_per_query"], (*at, "max_epsilon_per_query"))
    per_year = r.epsilon(t["epsilon_per_node_per_year"], (*at, "epsilon_per_node_per_year"))
    if per_query > per_year:
        r.fail(
            (*at, "max_epsilon_per_query"),
            f"must not exceed epsilon_per_node_per_year ({per_year})",
        )
    approval = t.get("approval_above_epsilon")
    return Limits(
        max_epsilon_per_query=per_query,
        epsilon_per_node_per_year=per_year,
        analyst_share=r.share(t["analyst_share"], (*at, "analyst_share")),
        publication_threshold=r.integer(
            t["publication_threshold"], (*at, "publication_threshold"), minimum=0
        ),
        max_groups=r.integer(t["max_groups"], (*at, "max_groups"), minimum=1),
        analysts=_analysts(r, t.get("analysts", {})),
        approval_above_epsilon=(
            None if approval is None else r.epsilon(approval, (*at, "approval_above_epsilon"))
        ),
    )


def _limits_override(r: _Reader, t: dict[str, object]) -> LimitsOverride:
    at = ("limits",)
    r.keys(t, at, optional=_LIMITS + _LIMITS_INT + _LIMITS_OPTIONAL)

    def get_epsilon(key: str) -> float | None:
        return None if key not in t else r.epsilon(t[key], (*at, key))

    def get_integer(key: str, minimum: int) -> int | None:
        return None if key not in t else r.integer(t[key], (*at, key), minimum=minimum)

    share = t.get("analyst_share")
    return LimitsOverride(
        max_epsilon_per_query=get_epsilon("max_epsilon_per_query"),
        epsilon_per_node_per_year=get_epsilon("epsilon_per_node_per_year"),
        analyst_share=None if share is None else r.share(share, (*at, "analyst_share")),
        publication_threshold=get_integer("publication_threshold", 0),
        max_groups=get_integer("max_groups", 1),
        analysts=_analysts(r, t.get("analysts", {})),
        approval_above_epsilon=get_epsilon("approval_above_epsilon"),
    )


def _analysts(r: _Reader, value: object) -> dict[str, float]:
    at = ("limits", "analysts")
    table = r.table(value, at)
    for analyst in table:
        if not analyst.strip():
            r.fail(at, "analyst ids must not be empty")
    return {analyst: r.share(share, (*at, analyst)) for analyst, share in table.items()}


def _dataset(r: _Reader, t: dict[str, object], at: _At) -> Dataset:
    r.keys(t, at, required=("period", "columns"), optional=("public", "unit", "withheld"))
    public = r.boolean(t.get("public", False), (*at, "public"))
    if not public and "unit" not in t:
        r.fail((*at, "unit"), "missing: a non-public dataset must state its unit of privacy")
    unit = r.text(t["unit"], (*at, "unit")) if "unit" in t else None
    columns_at = (*at, "columns")
    columns = {
        name: _column(r, r.table(value, (*columns_at, name)), (*columns_at, name))
        for name, value in r.named(r.table(t["columns"], columns_at, non_empty=True), columns_at)
    }
    withheld = r.identifiers(t.get("withheld", []), (*at, "withheld"))
    for name in sorted(withheld & columns.keys()):
        r.fail((*at, "withheld"), f"{name!r} is also listed under columns")
    period = r.text(t["period"], (*at, "period"))
    rule = columns.get(period)
    if rule is None:
        r.fail((*at, "period"), f"{period!r} is not one of this dataset's columns")
    if Measure.FILTER not in rule.measures:
        r.fail((*at, "period"), f"column {period!r} must allow 'filter' (queries select periods)")
    return Dataset(public=public, period=period, unit=unit, columns=columns, withheld=withheld)


def _column(r: _Reader, t: dict[str, object], at: _At) -> ColumnRule:
    if "kind" not in t:
        r.fail((*at, "kind"), 'missing: must be "category" or "numeric"')
    kind = t["kind"]
    if kind == "category":
        r.keys(t, at, required=("kind", "measures", "domain"))
        measures = r.measures(t["measures"], (*at, "measures"), allowed=CATEGORY_MEASURES)
        return CategoryRule(domain=r.domain(t["domain"], (*at, "domain")), measures=measures)
    if kind == "numeric":
        r.keys(t, at, required=("kind", "measures", "bounds"), optional=("candidates",))
        measures = r.measures(t["measures"], (*at, "measures"), allowed=NUMERIC_MEASURES)
        low, high = bounds = r.bounds(t["bounds"], (*at, "bounds"))
        if Measure.QUANTILE not in measures:
            if "candidates" in t:
                r.fail((*at, "candidates"), "given, but 'quantile' is not among the measures")
            return NumericRule(bounds=bounds, measures=measures)
        if "candidates" not in t:
            r.fail((*at, "candidates"), "missing: 'quantile' needs candidates")
        candidates = r.candidates(t["candidates"], (*at, "candidates"))
        if not (low <= candidates[0] and candidates[-1] <= high):
            r.fail((*at, "candidates"), f"must lie within bounds [{low}, {high}]")
        return NumericRule(bounds=bounds, measures=measures, candidates=candidates)
    r.fail((*at, "kind"), f'must be "category" or "numeric", not {_show(kind)}')


def _dataset_override(r: _Reader, t: dict[str, object], at: _At) -> DatasetOverride:
    r.keys(t, at, optional=("withheld", "columns"))
    columns_at = (*at, "columns")
    columns: dict[str, ColumnOverride] = {}
    for name, value in r.named(r.table(t.get("columns", {}), columns_at), columns_at):
        c_at = (*columns_at, name)
        c = r.table(value, c_at)
        r.keys(c, c_at, optional=("measures", "domain", "bounds", "candidates"))
        columns[name] = ColumnOverride(
            measures=(
                r.measures(c["measures"], (*c_at, "measures"), allowed=frozenset(Measure))
                if "measures" in c
                else None
            ),
            domain=r.domain(c["domain"], (*c_at, "domain")) if "domain" in c else None,
            bounds=r.bounds(c["bounds"], (*c_at, "bounds")) if "bounds" in c else None,
            candidates=(
                r.candidates(c["candidates"], (*c_at, "candidates")) if "candidates" in c else None
            ),
        )
    return DatasetOverride(
        withheld=r.identifiers(t.get("withheld", []), (*at, "withheld")), columns=columns
    )


def _secure(r: _Reader, t: dict[str, object], datasets: Mapping[str, Dataset]) -> Secure:
    at = ("secure",)
    r.keys(t, at, required=("min_nodes", "datasets"))
    min_nodes = r.integer(t["min_nodes"], (*at, "min_nodes"), minimum=MIN_SECURE_NODES)
    sets_at = (*at, "datasets")
    columns: dict[str, frozenset[str]] = {}
    for name, value in r.named(r.table(t["datasets"], sets_at, non_empty=True), sets_at):
        d_at = (*sets_at, name)
        d = r.table(value, d_at)
        r.keys(d, d_at, required=("columns",))
        dataset = datasets.get(name)
        if dataset is None:
            r.fail(d_at, "not one of the catalogue's datasets")
        if dataset.public:
            r.fail(d_at, "public data is released exactly: it needs no secure aggregation")
        c_at = (*d_at, "columns")
        names = r.identifiers(d["columns"], c_at)
        if not names:
            r.fail(c_at, "must be a non-empty list of column names")
        for column in sorted(names):
            rule = dataset.columns.get(column)
            if rule is None:
                why = "withheld" if column in dataset.withheld else "not one of its columns"
                r.fail(c_at, f"{column!r} is {why} in datasets.{name}")
            if not isinstance(rule, CategoryRule):
                r.fail(c_at, f"{column!r} is numeric: secure queries use category columns only")
            if not rule.measures & {Measure.GROUP, Measure.FILTER}:
                r.fail(c_at, f"{column!r} allows neither 'group' nor 'filter'")
        columns[name] = names
    return Secure(min_nodes=min_nodes, columns=columns)


def _secure_override(r: _Reader, t: dict[str, object]) -> SecureOverride:
    at = ("secure",)
    r.keys(t, at, optional=("refuse", "min_nodes", "datasets"))
    sets_at = (*at, "datasets")
    columns: dict[str, frozenset[str]] = {}
    for name, value in r.named(r.table(t.get("datasets", {}), sets_at), sets_at):
        d_at = (*sets_at, name)
        d = r.table(value, d_at)
        r.keys(d, d_at, required=("columns",))
        # an empty list is a county keeping none of this dataset's columns
        columns[name] = r.identifiers(d["columns"], (*d_at, "columns"))
    min_nodes = t.get("min_nodes")
    return SecureOverride(
        refuse=r.boolean(t.get("refuse", False), (*at, "refuse")),
        min_nodes=(
            None
            if min_nodes is None
            else r.integer(min_nodes, (*at, "min_nodes"), minimum=MIN_SECURE_NODES)
        ),
        columns=columns,
    )


def _kinds(
    r: _Reader, value: object, datasets: Mapping[str, Dataset] | None
) -> dict[str, dict[str, frozenset[str]]]:
    """``[kinds.<kind>] datasets.<name> = [columns]``; ``datasets``: the catalogue's own
    (each list must name its columns, period included), None in a county document."""
    kinds: dict[str, dict[str, frozenset[str]]] = {}
    for kind, table in r.table(value, ("kinds",)).items():
        at = ("kinds", kind)
        if kind not in NODE_KINDS:
            r.fail(at, f"not a kind of node (one of: {', '.join(NODE_KINDS)})")
        t = r.table(table, at)
        r.keys(t, at, optional=("datasets",))
        sets_at = (*at, "datasets")
        kinds[kind] = {}
        for name, columns in r.named(r.table(t.get("datasets", {}), sets_at), sets_at):
            c_at = (*sets_at, name)
            names = kinds[kind][name] = r.identifiers(columns, c_at)
            if datasets is None:
                continue
            dataset = datasets.get(name)
            if dataset is None:
                r.fail(c_at, "not one of the catalogue's datasets")
            for column in sorted(names - dataset.columns.keys()):
                r.fail(c_at, f"{column!r} is not one of the columns of datasets.{name}")
            if dataset.period not in names:
                r.fail(c_at, f"must hold the period column {dataset.period!r}")
    return kinds


# --- values ---------------------------------------------------------------------------


class _Reader:
    """Typed access to one parsed document; every failure names the file and key path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, at: _At, message: str) -> NoReturn:
        raise PolicyError(f"{self.source}: {key_path(at) or '(document)'}: {message}")

    def keys(
        self,
        table: Mapping[str, object],
        at: _At,
        *,
        required: Collection[str] = (),
        optional: Collection[str] = (),
    ) -> None:
        expected = [*required, *optional]
        for key in table:
            if key not in expected:
                self.fail((*at, key), f"unknown key (expected one of: {', '.join(expected)})")
        for key in required:
            if key not in table:
                self.fail((*at, key), "missing")

    def table(self, value: object, at: _At, *, non_empty: bool = False) -> dict[str, object]:
        if not isinstance(value, Mapping) or (non_empty and not value):
            self.fail(at, "must be a non-empty table" if non_empty else "must be a table")
        return {str(k): v for k, v in value.items()}

    def named(self, table: dict[str, object], at: _At) -> list[tuple[str, object]]:
        """The entries of a table keyed by dataset or column names, names checked."""
        for name in table:
            if not _IDENT.fullmatch(name):
                self.fail((*at, name), "names must be lowercase identifiers ([a-z][a-z0-9_]*)")
        return list(table.items())

    def text(self, value: object, at: _At) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(at, "must be a non-empty string")
        return value

    def boolean(self, value: object, at: _At) -> bool:
        if not isinstance(value, bool):
            self.fail(at, "must be true or false")
        return value

    def integer(self, value: object, at: _At, *, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(at, f"must be an integer >= {minimum}")
        return value

    def epsilon(self, value: object, at: _At) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(at, "must be a number")
        try:
            number = float(value)  # TOML integers are accepted: 10 means 10.0
        except OverflowError:
            number = math.inf
        if not (math.isfinite(number) and number > 0):
            self.fail(at, "must be a finite number > 0")
        return number

    def share(self, value: object, at: _At) -> float:
        share = self.epsilon(value, at)
        if share > 1:
            self.fail(at, "must be a fraction in (0, 1]")
        return share

    def _list(self, value: object, at: _At) -> list[object]:
        if not isinstance(value, list) or not value:
            self.fail(at, "must be a non-empty list")
        return value

    def _unique(self, values: list[object], at: _At) -> None:
        seen: set[object] = set()
        for v in values:
            if v in seen:
                self.fail(at, f"{_show(v)} is listed twice")
            seen.add(v)

    def domain(self, value: object, at: _At) -> tuple[Value, ...]:
        values = self._list(value, at)
        # all strings or all integers; bool is excluded (True == 1 would merge two values)
        if not (
            all(isinstance(v, str) for v in values)
            or all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        ):
            self.fail(at, "values must be all strings or all integers")
        self._unique(values, at)
        return tuple(v for v in values if isinstance(v, str | int))

    def measures(
        self, value: object, at: _At, *, allowed: frozenset[Measure]
    ) -> frozenset[Measure]:
        values = self._list(value, at)
        names = ", ".join(sorted(allowed))
        for v in values:
            if not isinstance(v, str) or v not in allowed:
                kind = "" if allowed == frozenset(Measure) else " for this kind of column"
                self.fail(at, f"{_show(v)} is not a measure{kind} (allowed: {names})")
        self._unique(values, at)
        return frozenset(Measure(v) for v in values if isinstance(v, str))

    def _integers(self, value: object, at: _At) -> list[int]:
        values = self._list(value, at)
        ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
        if len(ints) != len(values):
            self.fail(at, "values must be integers")
        return ints

    def bounds(self, value: object, at: _At) -> tuple[int, int]:
        if not isinstance(value, list) or len(value) != 2:
            self.fail(at, "must be [low, high]")
        low, high = self._integers(value, at)
        if low > high:
            self.fail(at, f"low {low} is above high {high}")
        return low, high

    def candidates(self, value: object, at: _At) -> tuple[int, ...]:
        values = self._integers(value, at)
        if any(a >= b for a, b in itertools.pairwise(values)):
            self.fail(at, "must be strictly increasing")
        return tuple(values)

    def identifiers(self, value: object, at: _At) -> frozenset[str]:
        if not isinstance(value, list):
            self.fail(at, "must be a list of column names")
        for v in value:
            if not isinstance(v, str) or not _IDENT.fullmatch(v):
                self.fail(at, f"{_show(v)} is not a column name")
        self._unique(value, at)
        return frozenset(value)


def _read(path: Path) -> dict[str, object]:
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as err:
        raise PolicyError(f"{path}: cannot read: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise PolicyError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as err:
        raise PolicyError(f"{path}: invalid TOML: {err}") from None


def _show(value: object) -> str:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)
