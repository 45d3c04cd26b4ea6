"""Canonical serialisation of a policy and its digest, carried by every signed answer.

The canonical form is JSON (RFC 8259) with sorted keys, no insignificant whitespace,
UTF-8, and numbers as Python writes them (epsilons and shares are always floats, so
``1.0`` never meets ``1``). Sets (measures, withheld columns, override versions) are
sorted; domains and candidates keep their catalogue order, which is the order groups
are released in. It depends only on the policy's values, never on the layout of the
TOML documents it came from.

``secure`` is present only when the policy differs from one allowing no secure query
(a ``[secure]`` section, or a county's refusal): a policy without it keeps the digest
it had before secure aggregation existed, as a plain query keeps its own. ``kinds``
(what each kind of node holds), ``kind`` (the kind a node's policy is restricted to)
and a dataset's ``held_by``/``not_held`` likewise appear only when set, and the
limits' ``offline_window_days`` only when it is not the default 30 days.
"""

from __future__ import annotations

import hashlib
from typing import Final

from fedscreen._util.canonical import canonical_json as canonical
from fedscreen.policy.model import (
    OFFLINE_WINDOW_DAYS,
    CategoryRule,
    ColumnRule,
    Dataset,
    Limits,
    Policy,
    Secure,
)

__all__ = ["FORMAT", "canonical_json", "digest"]

#: names this serialisation; change it whenever the canonical form changes
FORMAT: Final = "fedscreen-policy/1"


def canonical_json(policy: Policy) -> bytes:
    """The canonical JSON bytes of ``policy``."""
    document = {
        "format": FORMAT,
        "version": policy.version,
        "overrides": sorted(policy.overrides),
        "limits": _limits(policy.limits),
        "datasets": {name: _dataset(d) for name, d in policy.datasets.items()},
    }
    if policy.secure != Secure():
        document["secure"] = _secure(policy.secure)
    # present only when set, so a policy without kinds keeps its earlier digest
    if policy.kinds:
        document["kinds"] = {
            kind: {name: sorted(cols) for name, cols in datasets.items()}
            for kind, datasets in policy.kinds.items()
        }
    if policy.kind:
        document["kind"] = policy.kind
    return canonical(document)


def digest(policy: Policy) -> str:
    """``"sha256:"`` and the hex SHA-256 of the canonical JSON of ``policy``."""
    return "sha256:" + hashlib.sha256(canonical_json(policy)).hexdigest()


def _limits(limits: Limits) -> dict[str, object]:
    out: dict[str, object] = {
        "max_epsilon_per_query": limits.max_epsilon_per_query,
        "epsilon_per_node_per_year": limits.epsilon_per_node_per_year,
        "analyst_share": limits.analyst_share,
        "analysts": dict(limits.analysts),
        "publication_threshold": limits.publication_threshold,
        "max_groups": limits.max_groups,
        "approval_above_epsilon": limits.approval_above_epsilon,
    }
    # only when not the default, so every policy digest from before the offline window
    # existed (in signed answers, logs and test vectors) stays the same
    if limits.offline_window_days != OFFLINE_WINDOW_DAYS:
        out["offline_window_days"] = limits.offline_window_days
    return out


def _secure(secure: Secure) -> dict[str, object]:
    return {
        "min_nodes": secure.min_nodes,
        "refused": secure.refused,
        "columns": {name: sorted(cols) for name, cols in secure.columns.items()},
    }


def _dataset(dataset: Dataset) -> dict[str, object]:
    out: dict[str, object] = {
        "public": dataset.public,
        "period": dataset.period,
        "unit": dataset.unit,
        "withheld": sorted(dataset.withheld),
        "columns": {name: _column(rule) for name, rule in dataset.columns.items()},
    }
    if dataset.held_by:
        out["held_by"] = dataset.held_by
        out["not_held"] = sorted(dataset.not_held)
    return out


def _column(rule: ColumnRule) -> dict[str, object]:
    out: dict[str, object] = {"kind": rule.kind, "measures": sorted(rule.measures)}
    if isinstance(rule, CategoryRule):
        out["domain"] = list(rule.domain)
    else:
        out["bounds"] = list(rule.bounds)
        out["candidates"] = list(rule.candidates)
    return out
