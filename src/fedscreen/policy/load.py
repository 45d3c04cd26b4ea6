"""Read policy documents (TOML) into policy values, refusing anything malformed.

Errors are :class:`PolicyError` naming the file and the key path (``_reader`` checks
each value), e.g.
``province.toml: datasets.screenings.columns.sex.domain: must be a non-empty list``.
Unknown keys are errors too: a misspelt key in a document meant to restrict would
otherwise restrict nothing. The schema is documented in ``policies/province.toml``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path

from fedscreen.errors import PolicyError
from fedscreen.policy._reader import At, Reader, show
from fedscreen.policy.kinds import for_kind
from fedscreen.policy.merge import check_tightens, merge
from fedscreen.policy.model import (
    CATEGORY_MEASURES,
    MIN_SECURE_NODES,
    NODE_KINDS,
    NUMERIC_MEASURES,
    OFFLINE_WINDOW_DAYS,
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
)

__all__ = ["load_node_policy", "load_override", "load_policy", "parse_override", "parse_policy"]

_LIMITS = ("max_epsilon_per_query", "epsilon_per_node_per_year", "analyst_share")
_LIMITS_INT = ("publication_threshold", "max_groups")
_WINDOW = "offline_window_days"
_LIMITS_OPTIONAL = ("analysts", "approval_above_epsilon", _WINDOW)


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
    r = Reader(source)
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
    r = Reader(source)
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


def _limits(r: Reader, t: dict[str, object]) -> Limits:
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
        offline_window_days=r.days(t.get(_WINDOW, OFFLINE_WINDOW_DAYS), (*at, _WINDOW)),
    )


def _limits_override(r: Reader, t: dict[str, object]) -> LimitsOverride:
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
        offline_window_days=r.days(t[_WINDOW], (*at, _WINDOW)) if _WINDOW in t else None,
    )


def _analysts(r: Reader, value: object) -> dict[str, float]:
    at = ("limits", "analysts")
    table = r.table(value, at)
    for analyst in table:
        if not analyst.strip():
            r.fail(at, "analyst ids must not be empty")
    return {analyst: r.share(share, (*at, analyst)) for analyst, share in table.items()}


def _dataset(r: Reader, t: dict[str, object], at: At) -> Dataset:
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


def _column(r: Reader, t: dict[str, object], at: At) -> ColumnRule:
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
    r.fail((*at, "kind"), f'must be "category" or "numeric", not {show(kind)}')


def _dataset_override(r: Reader, t: dict[str, object], at: At) -> DatasetOverride:
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


def _secure(r: Reader, t: dict[str, object], datasets: Mapping[str, Dataset]) -> Secure:
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


def _secure_override(r: Reader, t: dict[str, object]) -> SecureOverride:
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
    r: Reader, value: object, datasets: Mapping[str, Dataset] | None
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


def _read(path: Path) -> dict[str, object]:
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as err:
        raise PolicyError(f"{path}: cannot read: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise PolicyError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as err:
        raise PolicyError(f"{path}: invalid TOML: {err}") from None
