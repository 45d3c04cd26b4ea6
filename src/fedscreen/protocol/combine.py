"""Combining nodes' noisy answers into provincial figures with honest intervals.

Counts and sums add up: the provincial value is the sum of the nodes' noisy
values, and its noise is the sum of independent discrete-Laplace noises, whose
variance is known exactly. The 95% interval uses that variance with a
Cornish–Fisher correction for the noise's heavy tails (a sum of few Laplace
terms is not yet normal): for a symmetric sum with excess kurtosis κ the 97.5%
point is z + (z³ − 3z)·κ/24. Rates and means combine numerators and
denominators separately and use the delta method. A single node's answer keeps
the node's own exact interval, recomputed from its scale (``mechanisms.half_width``),
never read from what the node states.

Nothing here sees anything but the nodes' released (noisy) values.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from fedscreen.protocol.memo import cell_key
from fedscreen.query import mechanisms

Z_975: Final = 1.959963984540054
#: excess kurtosis of (continuous) Laplace noise; discrete Laplace is at most this
LAPLACE_EXCESS_KURTOSIS: Final = 3.0


@dataclass(frozen=True)
class NodeCells:
    """One node's answer body, as verified (``answer["cells"]`` etc.)."""

    node_id: str
    body: dict[str, Any]


def discrete_laplace_variance(scale: float) -> float:
    """Variance of discrete Laplace noise with this scale: 2q/(1−q)², q = e^(−1/scale)."""
    if scale <= 0:
        return 0.0
    q = math.exp(-1.0 / scale)
    return 2.0 * q / (1.0 - q) ** 2


def _z(variances: Sequence[float]) -> float:
    """The 97.5% point of a sum of independent Laplace-like noises (Cornish–Fisher)."""
    total = sum(variances)
    if total <= 0:
        return Z_975
    kurtosis = LAPLACE_EXCESS_KURTOSIS * sum(v * v for v in variances) / (total * total)
    return Z_975 + (Z_975**3 - 3 * Z_975) * kurtosis / 24


def sum_interval(values: Sequence[int], scales: Sequence[float]) -> tuple[int, float, float, float]:
    """(sum, lower, upper, standard error) of a sum of noisy values."""
    variances = [discrete_laplace_variance(s) for s in scales]
    total = sum(values)
    half = _z(variances) * math.sqrt(sum(variances))
    return total, total - half, total + half, math.sqrt(sum(variances))


def ratio_interval(
    num: int, num_var: float, den: int, den_var: float, low: float, high: float
) -> tuple[float | None, float, float]:
    """(ratio, lower, upper) by the delta method, clipped to [low, high]."""
    if den <= 0:
        return None, low, high
    ratio = num / den
    half = Z_975 * math.sqrt(num_var + ratio * ratio * den_var) / den
    return _clip(ratio, low, high), _clip(ratio - half, low, high), _clip(ratio + half, low, high)


def _clip(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def combine(
    kind: str, answers: Sequence[NodeCells], *, threshold: int, public: bool | None = None
) -> list[dict[str, Any]]:
    """Provincial cells from the nodes' cells.

    ``public``: whether the dataset is public (exact values), as the catalogue says;
    releases are always combined with it given. None (a report's own regrouping of
    verified answers) reads it from the answers, which must then all agree.

    Nodes answer the same query, but a county policy may narrow a public domain (a
    district without a university has no "university" cells): each provincial cell
    combines the nodes that released it, and says how many (``nodes``). Cells come
    in the order they first appear. Each cell: ``group``, ``value``, ``lower``,
    ``upper``, ``display``, ``nodes``.
    """
    if not answers:
        return []
    if public is None:
        flags = {"scale" not in a.body for a in answers}
        if len(flags) != 1:
            raise ValueError("the answers do not agree on the mechanism")
        public = flags.pop()
    by_group: dict[Hashable, list[tuple[NodeCells, dict[str, Any]]]] = {}
    groups: dict[Hashable, list[Any]] = {}
    for answer in answers:
        for node_cell in answer.body["cells"]:
            # groups are the same cell exactly when their JSON is the same (``cell_key``:
            # 1 and 1.0 are two cells); one lookup per cell, the hottest loop of a release
            group = node_cell["group"]
            key: Hashable = cell_key(group)
            try:
                released = by_group.get(key)
            except TypeError:  # an unhashable value (a list): keyed by its JSON text
                key = json.dumps(group)
                released = by_group.get(key)
            if released is None:
                released = by_group[key] = []
                groups[key] = group
            released.append((answer, node_cell))
    combined: list[dict[str, Any]] = []
    for key, group in groups.items():
        released = by_group[key]
        parts = [c for _, c in released]
        if kind in ("count", "sum"):
            if public:  # exact values
                total = sum(int(p["value"]) for p in parts)
                combined.append(_cell(group, total, total, total, None, len(parts)))
                continue
            scales = [float(a.body["scale"]) for a, _ in released]
            total, low, high, _ = sum_interval([int(p["value"]) for p in parts], scales)
            if len(parts) == 1:  # the node's exact interval, as its scale gives it
                half = mechanisms.half_width(scales[0])
                low, high = float(total - half), float(total + half)
            small = threshold if kind == "count" and total < threshold else None
            combined.append(_cell(group, total, low, high, small, len(parts)))
        elif kind in ("rate", "mean"):
            num = sum(int(p["numerator"]["value"]) for p in parts)
            den = sum(int(p["denominator"]["value"]) for p in parts)
            num_var = sum(discrete_laplace_variance(float(p["numerator"]["scale"])) for p in parts)
            den_var = sum(
                discrete_laplace_variance(float(p["denominator"]["scale"])) for p in parts
            )
            bounds = (0.0, 1.0) if kind == "rate" else (-math.inf, math.inf)
            value, low, high = ratio_interval(num, num_var, den, den_var, *bounds)
            small = threshold if den < threshold else None
            entry = _cell(group, value, low, high, small, len(parts))
            entry["numerator"], entry["denominator"] = num, den
            combined.append(entry)
        else:
            # quantiles do not add up across nodes: the release lists each node's value only
            combined.append(
                {"group": group, "value": None, "display": "per node", "nodes": len(parts)}
            )
    return combined


def _cell(
    group: list[Any], value: float | None, low: float, high: float, small: int | None, nodes: int
) -> dict[str, Any]:
    if small is not None:
        display = f"< {small}"
    elif isinstance(value, float):
        display = f"{value:.4g}"
    else:
        display = str(value)
    return {
        "group": group,
        "value": value,
        "lower": low,
        "upper": high,
        "display": display,
        "suppressed": small is not None,
        "nodes": nodes,
    }
