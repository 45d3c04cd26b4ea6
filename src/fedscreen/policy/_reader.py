"""Typed reading of one parsed policy document: every failure names the file and key path.

``load`` says which keys each section has; :class:`Reader` checks each value and raises
:class:`PolicyError` as ``<file>: <key.path>: <what is wrong>``.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Collection, Mapping
from typing import NoReturn

from fedscreen.errors import PolicyError
from fedscreen.policy.model import MAX_OFFLINE_WINDOW_DAYS, Measure, Value, key_path

__all__ = ["IDENT", "At", "Reader", "show"]

#: dataset and column names become SQL identifiers: nothing but lowercase identifiers
IDENT = re.compile(r"[a-z][a-z0-9_]{0,62}")
#: a key path inside a document, for error messages
At = tuple[str, ...]


class Reader:
    """Typed access to one parsed document; every failure names the file and key path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, at: At, message: str) -> NoReturn:
        raise PolicyError(f"{self.source}: {key_path(at) or '(document)'}: {message}")

    def keys(
        self,
        table: Mapping[str, object],
        at: At,
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

    def table(self, value: object, at: At, *, non_empty: bool = False) -> dict[str, object]:
        if not isinstance(value, Mapping) or (non_empty and not value):
            self.fail(at, "must be a non-empty table" if non_empty else "must be a table")
        return {str(k): v for k, v in value.items()}

    def named(self, table: dict[str, object], at: At) -> list[tuple[str, object]]:
        """The entries of a table keyed by dataset or column names, names checked."""
        for name in table:
            if not IDENT.fullmatch(name):
                self.fail((*at, name), "names must be lowercase identifiers ([a-z][a-z0-9_]*)")
        return list(table.items())

    def text(self, value: object, at: At) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(at, "must be a non-empty string")
        return value

    def boolean(self, value: object, at: At) -> bool:
        if not isinstance(value, bool):
            self.fail(at, "must be true or false")
        return value

    def integer(self, value: object, at: At, *, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(at, f"must be an integer >= {minimum}")
        return value

    def days(self, value: object, at: At) -> int:
        """A whole number of days, 1 to ``MAX_OFFLINE_WINDOW_DAYS`` (an offline window)."""
        top = MAX_OFFLINE_WINDOW_DAYS
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            self.fail(at, f"must be a whole number of days, 1 to {top}")
        return value

    def epsilon(self, value: object, at: At) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(at, "must be a number")
        try:
            number = float(value)  # TOML integers are accepted: 10 means 10.0
        except OverflowError:
            number = math.inf
        if not (math.isfinite(number) and number > 0):
            self.fail(at, "must be a finite number > 0")
        return number

    def share(self, value: object, at: At) -> float:
        share = self.epsilon(value, at)
        if share > 1:
            self.fail(at, "must be a fraction in (0, 1]")
        return share

    def _list(self, value: object, at: At) -> list[object]:
        if not isinstance(value, list) or not value:
            self.fail(at, "must be a non-empty list")
        return value

    def _unique(self, values: list[object], at: At) -> None:
        seen: set[object] = set()
        for v in values:
            if v in seen:
                self.fail(at, f"{show(v)} is listed twice")
            seen.add(v)

    def domain(self, value: object, at: At) -> tuple[Value, ...]:
        values = self._list(value, at)
        # all strings or all integers; bool is excluded (True == 1 would merge two values)
        if not (
            all(isinstance(v, str) for v in values)
            or all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        ):
            self.fail(at, "values must be all strings or all integers")
        self._unique(values, at)
        return tuple(v for v in values if isinstance(v, str | int))

    def measures(self, value: object, at: At, *, allowed: frozenset[Measure]) -> frozenset[Measure]:
        values = self._list(value, at)
        names = ", ".join(sorted(allowed))
        for v in values:
            if not isinstance(v, str) or v not in allowed:
                kind = "" if allowed == frozenset(Measure) else " for this kind of column"
                self.fail(at, f"{show(v)} is not a measure{kind} (allowed: {names})")
        self._unique(values, at)
        return frozenset(Measure(v) for v in values if isinstance(v, str))

    def _integers(self, value: object, at: At) -> list[int]:
        values = self._list(value, at)
        ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
        if len(ints) != len(values):
            self.fail(at, "values must be integers")
        return ints

    def bounds(self, value: object, at: At) -> tuple[int, int]:
        if not isinstance(value, list) or len(value) != 2:
            self.fail(at, "must be [low, high]")
        low, high = self._integers(value, at)
        if low > high:
            self.fail(at, f"low {low} is above high {high}")
        return low, high

    def candidates(self, value: object, at: At) -> tuple[int, ...]:
        values = self._integers(value, at)
        if any(a >= b for a, b in itertools.pairwise(values)):
            self.fail(at, "must be strictly increasing")
        return tuple(values)

    def identifiers(self, value: object, at: At) -> frozenset[str]:
        if not isinstance(value, list):
            self.fail(at, "must be a list of column names")
        for v in value:
            if not isinstance(v, str) or not IDENT.fullmatch(v):
                self.fail(at, f"{show(v)} is not a column name")
        self._unique(value, at)
        return frozenset(value)


def show(value: object) -> str:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)
