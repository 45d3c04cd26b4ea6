"""The typed query specification and its canonical form.

A query asks for **one measure** over the cells of a grouping, in one or more
academic years::

    QuerySpec(dataset="screenings", measure=Measure("rate", condition=...),
              group_by=("grade_band", "sex"), where=..., years=("2024-2025",))

The canonical form (sorted keys, no whitespace, every value typed) is what is
signed, logged and used as the cache key, so two spellings of one question are
one question.

A query's conditions have explicit size limits (:func:`check_size`), enforced on
every path a spec can take — the SQL parser, :meth:`QuerySpec.from_json` (a signed
query from the network) and the compiler (a spec built in Python) — so that no
condition tree is too deep for the recursive code that walks it:
``MAX_NESTING`` levels of AND/OR/NOT and ``MAX_CONDITIONS`` comparisons.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Final, Literal

from fedscreen._util.canonical import canonical_json
from fedscreen.errors import QueryRefused

Value = str | int | float
MeasureKind = Literal["count", "sum", "mean", "rate", "quantile"]
MEASURE_KINDS: Final = ("count", "sum", "mean", "rate", "quantile")
COMPARISONS: Final = ("=", "!=", "<", "<=", ">", ">=", "in", "not in")
BOOL_OPS: Final = ("and", "or", "not")
#: most levels of nesting in one condition (count): AND/OR/NOT inside one another in a
#: spec; in SQL text, parentheses plus NOT (and other prefix operators) in one another
#: (``fedscreen.query.sqlparse``). Real queries use 2-5; the parser needs ~25 Python
#: frames per level, so 16 levels stay far below the interpreter's recursion limit.
MAX_NESTING: Final = 16
#: most comparisons in one query (count), WHERE and RATE together; a BETWEEN is two,
#: an IN list one. Real queries use a handful.
MAX_CONDITIONS: Final = 64


@dataclass(frozen=True)
class Comparison:
    """``column op value`` (``in``/``not in`` take several values)."""

    column: str
    op: str
    values: tuple[Value, ...]


@dataclass(frozen=True)
class BoolOp:
    """``and``/``or`` over two or more conditions, or ``not`` of one."""

    op: str
    args: tuple[Condition, ...]


Condition = Comparison | BoolOp


@dataclass(frozen=True)
class Measure:
    """What is computed per cell.

    count: rows; sum/mean: of ``column`` clamped to the catalogue bounds;
    rate: share of rows meeting ``condition``; quantile: the ``q`` quantile of
    ``column`` among the catalogue's candidates.
    """

    kind: MeasureKind
    column: str | None = None
    q: float | None = None
    condition: Condition | None = None


@dataclass(frozen=True)
class QuerySpec:
    """One question to a node."""

    dataset: str
    measure: Measure
    group_by: tuple[str, ...] = ()
    where: Condition | None = None
    years: tuple[str, ...] = ()
    #: released only as a province total through two aggregators (secret-shared exact
    #: cells, one noise draw each: ``protocol.secure``); never a county value
    secure: bool = False

    def columns(self) -> set[str]:
        """Every column the query mentions."""
        found = set(self.group_by)
        if self.measure.column:
            found.add(self.measure.column)
        for cond in (self.where, self.measure.condition):
            if cond is not None:
                found |= condition_columns(cond)
        return found

    def to_json(self) -> dict[str, Any]:
        """The canonical, JSON-ready form."""
        measure: dict[str, Any] = {"kind": self.measure.kind}
        if self.measure.column is not None:
            measure["column"] = self.measure.column
        if self.measure.q is not None:
            measure["q"] = self.measure.q
        if self.measure.condition is not None:
            measure["condition"] = _cond_json(self.measure.condition)
        data: dict[str, Any] = {
            "dataset": self.dataset,
            "measure": measure,
            "group_by": list(self.group_by),
            "where": _cond_json(self.where) if self.where is not None else None,
            "years": sorted(self.years),
        }
        if self.secure:  # absent when false: every plain query keeps its digest
            data["secure"] = True
        return data

    def canonical(self) -> bytes:
        """Canonical JSON bytes (sorted keys, compact, UTF-8)."""
        return canonical_json(self.to_json())

    def digest(self) -> str:
        """SHA-256 of the canonical form, hex."""
        return hashlib.sha256(self.canonical()).hexdigest()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QuerySpec:
        """Rebuild a spec from its JSON form; raises QueryRefused on any malformation."""
        try:
            m = data["measure"]
            kind = m["kind"]
            if kind not in MEASURE_KINDS:
                raise QueryRefused(f"measure {kind!r:.40} is not one of {', '.join(MEASURE_KINDS)}")
            q = float(m["q"]) if m.get("q") is not None else None
            if q is not None and not 0 < q < 1:  # also refuses NaN
                raise QueryRefused("a quantile level must be strictly between 0 and 1")
            measure = Measure(
                kind=kind,
                column=_opt_str(m.get("column")),
                q=q,
                condition=_cond_from(m["condition"], 0) if m.get("condition") is not None else None,
            )
            extra = set(data) - {"dataset", "measure", "group_by", "where", "years", "secure"}
            if extra:
                raise QueryRefused(f"unknown query fields: {', '.join(sorted(extra))}")
            spec = cls(
                dataset=str(data["dataset"]),
                measure=measure,
                group_by=tuple(str(c) for c in data.get("group_by", [])),
                where=_cond_from(data["where"], 0) if data.get("where") is not None else None,
                years=tuple(sorted(str(y) for y in data.get("years", []))),
                secure=_secure_flag(data.get("secure", False)),
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise QueryRefused(f"malformed query spec: {exc!r}"[:200]) from None
        check_size(spec)
        return spec


def _secure_flag(value: object) -> bool:
    # only the JSON literal true: anything else (1, "yes") would give one question two digests
    if value is True:
        return True
    if value is False:
        return False
    raise QueryRefused("secure must be true or false")


def check_size(spec: QuerySpec) -> None:
    """Refuse a spec whose conditions nest deeper than ``MAX_NESTING`` levels of AND/OR/NOT
    or hold more than ``MAX_CONDITIONS`` comparisons. Iterative: safe on any tree."""
    comparisons = 0
    for root in (spec.where, spec.measure.condition):
        stack: list[tuple[object, int]] = [(root, 0)] if root is not None else []
        while stack:
            cond, depth = stack.pop()
            if isinstance(cond, BoolOp):
                if depth >= MAX_NESTING:
                    raise QueryRefused(
                        f"conditions nested deeper than {MAX_NESTING} levels of AND/OR/NOT"
                    )
                stack.extend((arg, depth + 1) for arg in cond.args)
            else:
                comparisons += 1
                if comparisons > MAX_CONDITIONS:
                    raise QueryRefused(f"more than {MAX_CONDITIONS} comparisons in one query")


def condition_columns(cond: Condition) -> set[str]:
    """Columns mentioned by a condition tree."""
    if isinstance(cond, Comparison):
        return {cond.column}
    found: set[str] = set()
    for arg in cond.args:
        found |= condition_columns(arg)
    return found


def _plain_value(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return False
    return not isinstance(value, float) or math.isfinite(value)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _cond_json(cond: Condition) -> dict[str, Any]:
    # order-free parts are sorted, so that reordering an IN list or the operands of
    # AND/OR is the same question (and the same cached answer), not a new charge
    if isinstance(cond, Comparison):
        values = list(cond.values)
        if cond.op in ("in", "not in"):
            values = sorted(set(values), key=lambda v: (type(v).__name__, v))
        return {"column": cond.column, "op": cond.op, "values": values}
    args = [_cond_json(a) for a in cond.args]
    if cond.op in ("and", "or"):
        args.sort(key=lambda a: canonical_json(a))
    return {"op": cond.op, "args": args}


def _cond_from(data: dict[str, Any], depth: int) -> Condition:
    op = data["op"]
    if op in BOOL_OPS:
        if depth >= MAX_NESTING:
            raise QueryRefused(f"conditions nested deeper than {MAX_NESTING} levels of AND/OR/NOT")
        args = tuple(_cond_from(a, depth + 1) for a in data["args"])
        if (op == "not") != (len(args) == 1) or not args:
            raise QueryRefused(f"'{op}' has the wrong number of conditions")
        return BoolOp(op, args)
    if op not in COMPARISONS:
        raise QueryRefused(f"comparison {op!r} is not one of {', '.join(COMPARISONS)}")
    values = tuple(data["values"])
    if not values or any(not _plain_value(v) for v in values):
        raise QueryRefused("comparison values must be strings or numbers (finite)")
    if op not in ("in", "not in") and len(values) != 1:
        raise QueryRefused(f"'{op}' compares with exactly one value")
    return Comparison(str(data["column"]), op, values)
