"""What every answer to one query repeats, worked out once: the spec's parse, its plan.

A release combines the answers of up to 167 nodes to the same question; each answer
states the question again and must be checked against the catalogue's plan for it.
Parsing the spec and compiling the plan took most of an answer's verification, and
give the same result for the same question, so both are kept in small bounded memos
(safe from several threads: the coordinator, analysts and auditors may verify at once).
Only successes are kept; a key is exact (canonical JSON, or the very spec and
catalogue objects, never merely equal ones: ``10 == 10.0``), so a memo can change no
verdict.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Final, Generic, TypeVar

from fedscreen._util.canonical import canonical_json
from fedscreen.policy import Policy
from fedscreen.query.compile import Plan, compile_query
from fedscreen.query.spec import QuerySpec

__all__ = ["BoundedMemo", "CellKey", "cell_key", "plan_for", "spec_canonical", "spec_from_json"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: entries each memo keeps (the newest): far more questions than are in flight at once
MEMO_ENTRIES: Final = 512

#: a cell's group as a set key that tells what canonical JSON tells apart: 1, 1.0 and "1"
#: are three cells, as are 0.0 and -0.0
CellKey = tuple[tuple[type, object], ...]


class BoundedMemo(Generic[K, V]):
    """A dict of at most about ``size`` entries that forgets the oldest first.

    Safe from several threads without a lock: each dict operation here is one step under
    the GIL; two threads may both make a missing value (both equal) or both forget the
    same oldest entry (the second finds it gone), never more than one entry each.
    """

    def __init__(self, size: int = MEMO_ENTRIES) -> None:
        self._size = size
        self._entries: dict[K, V] = {}

    def get(self, key: K, make: Callable[[], V]) -> V:
        """The value kept for ``key``, or ``make()`` kept (exceptions propagate, unkept)."""
        try:
            return self._entries[key]
        except KeyError:
            pass
        value = self._entries[key] = make()
        while len(self._entries) > self._size:
            try:
                self._entries.pop(next(iter(self._entries)), None)
            except (StopIteration, RuntimeError):  # emptied or changed by another thread
                break
        return value

    def forget(self, key: K) -> None:
        """Drop ``key``'s entry, if kept."""
        self._entries.pop(key, None)

    def take(self, key: K, make: Callable[[], V]) -> V:
        """The value kept for ``key``, no longer kept; or ``make()``, not kept."""
        try:
            return self._entries.pop(key)
        except KeyError:
            return make()


_specs: BoundedMemo[bytes, QuerySpec] = BoundedMemo()
_plans: BoundedMemo[tuple[int, int], tuple[QuerySpec, Policy, Plan, frozenset[CellKey]]] = (
    BoundedMemo()
)
_canonicals: BoundedMemo[tuple[int, bool], tuple[QuerySpec, bytes]] = BoundedMemo()


def spec_from_json(data: dict[str, Any]) -> QuerySpec:
    """:meth:`QuerySpec.from_json`, kept by the canonical JSON of ``data``.

    Raises as ``from_json`` does (QueryRefused), and ValueError for what canonical
    JSON cannot hold (NaN): ``from_json`` would refuse those anyway.
    """
    return _specs.get(canonical_json(data), lambda: QuerySpec.from_json(data))


def plan_for(spec: QuerySpec, catalogue: Policy) -> tuple[Plan, frozenset[CellKey]]:
    """``compile_query(spec, catalogue)`` and the keys of its cells (:func:`cell_key`).

    Raises QueryRefused as ``compile_query`` does. Kept per spec and catalogue *object*
    (the specs of :func:`spec_from_json` are shared), so two merely equal specs or a
    catalogue loaded again are compiled again, never confused.
    """

    def make() -> tuple[QuerySpec, Policy, Plan, frozenset[CellKey]]:
        plan = compile_query(spec, catalogue)
        return spec, catalogue, plan, frozenset(cell_key(cell) for cell in plan.cells)

    held_spec, held, plan, keys = _plans.get((id(spec), id(catalogue)), make)
    if held_spec is not spec or held is not catalogue:  # an id reused after a free
        _, _, plan, keys = make()
    return plan, keys


def spec_canonical(spec: QuerySpec, *, without_years: bool = False) -> bytes:
    """``spec``'s canonical JSON (with ``years`` emptied if ``without_years``), kept per
    spec object."""

    def make() -> tuple[QuerySpec, bytes]:
        data = spec.to_json()
        if without_years:
            data["years"] = []
        return spec, canonical_json(data)

    held, canonical = _canonicals.get((id(spec), without_years), make)
    return canonical if held is spec else make()[1]


def cell_key(group: tuple[object, ...] | list[object]) -> CellKey:
    """A cell's group, typed: equal exactly when the groups' canonical JSON is equal."""
    # a list, not a generator: 30% less per call, and a release keys every node's cells
    return tuple([(v.__class__, repr(v) if v.__class__ is float else v) for v in group])
