"""What each kind of node holds: the catalogue's ``[kinds.<kind>]`` section, applied.

A county node holds every column of the catalogue; a university holds its freshmen's
screenings (no MHT, no school-register flags of minors, no county or city: it reports
to the province, not to a county); a school node holds what its county does but UPI.
The catalogue lists, per kind and dataset, the columns held (a kind or dataset it does
not name holds everything). A county document may keep fewer (the lists intersect),
never more: :func:`kinds_loosenings` names any column it adds.

:func:`for_kind` turns a node's merged policy into what that kind of node enforces: the
columns it does not hold leave the dataset and are listed in ``Dataset.not_held``, so
the compiler refuses them with "not held by a university node" rather than as unknown.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from fedscreen.errors import PolicyError
from fedscreen.policy.model import NODE_KINDS, Dataset, Policy, Secure

__all__ = [
    "NO_SECURE_KINDS",
    "answers_secure",
    "for_kind",
    "held",
    "kinds_loosenings",
    "merge_kinds",
    "secure_answerers",
]

Holdings = Mapping[str, Mapping[str, frozenset[str]]]

#: kinds of node that answer no secure query. A release must sum at least ``min_nodes``
#: nodes so that it is never one county's value, and a county with two school nodes would
#: be three nodes on its own; a school's students are left out of secure figures (the
#: release lists it missing, with the reason), its county's plain figures keep them.
NO_SECURE_KINDS: Final = frozenset({"school"})


def answers_secure(kind: str) -> bool:
    """Whether a node of ``kind`` ("" in older manifests: a county) answers secure queries."""
    return (kind or "county") not in NO_SECURE_KINDS


def secure_answerers(levels: Mapping[str, str], nodes: Iterable[str]) -> list[str]:
    """The ``nodes`` (node id -> kind in ``levels``) that answer secure queries, in order."""
    return [n for n in nodes if answers_secure(levels.get(n, ""))]


def held(policy: Policy, kind: str, dataset: str) -> frozenset[str]:
    """The columns of ``dataset`` a node of ``kind`` holds under ``policy``."""
    columns = frozenset(policy.datasets[dataset].columns)
    return columns & policy.kinds.get(kind, {}).get(dataset, columns)


def merge_kinds(province: Policy, county: Holdings) -> dict[str, dict[str, frozenset[str]]]:
    """The catalogue's holdings narrowed by a county document's (they intersect)."""
    merged: dict[str, dict[str, frozenset[str]]] = {}
    for kind in sorted({*province.kinds, *county}):
        theirs, mine = province.kinds.get(kind, {}), county.get(kind, {})
        merged[kind] = {
            name: held(province, kind, name) & mine.get(name, held(province, kind, name))
            for name in sorted({*theirs, *mine})
            if name in province.datasets
        }
    return merged


def kinds_loosenings(province: Policy, county: Holdings) -> list[str]:
    """Every column a county document's ``[kinds]`` would add to what a kind holds."""
    found: list[str] = []
    for kind, datasets in sorted(county.items()):
        for name, columns in sorted(datasets.items()):
            where = f"kinds.{kind}.datasets.{name}"
            if name not in province.datasets:
                found.append(f"{where}: not in the provincial catalogue")
                continue
            extra = sorted(columns - held(province, kind, name))
            if extra:
                shown = ", ".join(repr(c) for c in extra)
                found.append(f"{where}: {shown} not held by a {kind} node in the catalogue")
    return found


def for_kind(policy: Policy, kind: str) -> Policy:
    """``policy`` as a node of ``kind`` enforces it: only the columns that kind holds.

    A kind that holds every column (a county) enforces ``policy`` itself, digest and all,
    so a county node's answers state the policy they stated before kinds existed.
    """
    if kind not in NODE_KINDS:
        raise PolicyError(f"node kind {kind!r}: one of {', '.join(NODE_KINDS)}")
    datasets: dict[str, Dataset] = {}
    for name, dataset in policy.datasets.items():
        keep = held(policy, kind, name)
        if dataset.period not in keep:
            # as in merge: a dataset whose period is gone cannot be charged, so none of it
            keep = frozenset()
        datasets[name] = Dataset(
            public=dataset.public,
            period=dataset.period,
            unit=dataset.unit,
            columns={c: rule for c, rule in dataset.columns.items() if c in keep},
            withheld=dataset.withheld,
            not_held=dataset.not_held | (frozenset(dataset.columns) - keep),
            held_by=kind,
        )
    refuses = not answers_secure(kind)
    if not refuses and all(d.columns == policy.datasets[n].columns for n, d in datasets.items()):
        return policy
    secure = Secure(
        min_nodes=policy.secure.min_nodes,
        columns={
            name: kept
            for name, cols in policy.secure.columns.items()
            if (kept := cols & frozenset(datasets[name].columns))
        },
        refused=policy.secure.refused or refuses,
    )
    return Policy(
        version=policy.version,
        limits=policy.limits,
        datasets=datasets,
        overrides=policy.overrides,
        secure=secure,
        kinds=policy.kinds,
        kind=kind,
    )
