"""The cells of an answer: OpenDP noise on the aggregates (exact values for public data).

Split from the engine (which runs the transaction around it); nothing here reads
the database or charges the ledger.
"""

from __future__ import annotations

from typing import Any

from fedscreen.protocol.answer import PUBLIC_MECHANISM, SHARES_MECHANISM
from fedscreen.protocol.secure import seal_shares
from fedscreen.query import mechanisms
from fedscreen.query.compile import Plan


def _filled(plan: Plan, rows: list[tuple[Any, ...]]) -> list[list[int]]:
    """Aggregates per cell in ``plan.cells`` order; cells with no rows are zeros."""
    width = len(plan.spec.group_by)
    found = {tuple(r[:width]): [int(v or 0) for v in r[width:]] for r in rows}
    return [found.get(cell, [0] * plan.aggregates) for cell in plan.cells]


def release(
    plan: Plan,
    rows: list[tuple[Any, ...]],
    epsilon: float,
    threshold: int,
    *,
    node_id: str = "",
    recipients: tuple[tuple[str, bytes], ...] = (),
    min_nodes: int = 0,
) -> dict[str, Any]:
    """Noisy cells for the plan's measure (exact cells for a public dataset).

    A secure count (``plan.spec.secure``) states its groups only: its exact values
    leave as two additive shares, each sealed to one of ``recipients`` (the two
    aggregators), which add the noise to their sums; it states ``min_nodes``, the fewest
    answers its county's policy lets it be summed with.
    """
    values = _filled(plan, rows)
    kind = plan.spec.measure.kind
    groups = [list(cell) for cell in plan.cells]
    if plan.spec.secure:
        if kind != "count" or plan.dataset.public:
            raise ValueError("only a count over private data is aggregated securely")
        shares = seal_shares([v[0] for v in values], node_id=node_id, recipients=recipients)
        return {
            "mechanism": SHARES_MECHANISM,
            "cells": [{"group": g} for g in groups],
            "shares": shares,
            "min_nodes": min_nodes,
        }
    if plan.dataset.public:
        return {
            "mechanism": PUBLIC_MECHANISM,
            "cells": [
                {"group": g, "value": v[0], **({"denominator": v[1]} if len(v) > 1 else {})}
                for g, v in zip(groups, values, strict=True)
            ],
        }
    if kind in ("count", "sum"):
        noisy = mechanisms.laplace_vector(
            [v[0] for v in values], epsilon=epsilon, sensitivity=plan.sensitivity
        )
        cells = [
            _cell(g, value, noisy.scale, noisy.half_width, threshold if kind == "count" else None)
            for g, value in zip(groups, noisy.values, strict=True)
        ]
        return {"mechanism": noisy.mechanism, "scale": noisy.scale, "cells": cells}
    if kind in ("mean", "rate"):
        # split ε: half for the numerator (sum or matching count), half for the count
        numerator = mechanisms.laplace_vector(
            [v[0] for v in values], epsilon=epsilon / 2, sensitivity=plan.sensitivity
        )
        denominator = mechanisms.laplace_vector(
            [v[1] for v in values], epsilon=epsilon / 2, sensitivity=1
        )
        low, high = plan.bounds if kind == "mean" and plan.bounds else (0, 1)
        cells = []
        for g, num, den in zip(groups, numerator.values, denominator.values, strict=True):
            cells.append(
                {
                    "group": g,
                    **ratio(num, numerator.scale, den, denominator.scale, low, high, threshold),
                    "numerator": {"value": num, "scale": numerator.scale},
                    "denominator": {"value": den, "scale": denominator.scale},
                }
            )
        return {"mechanism": "discrete_laplace ratio", "cells": cells}
    assert kind == "quantile"
    assert plan.spec.measure.q is not None
    cells = []
    per_cell = len(plan.candidates)
    scale = 0.0
    for g, v in zip(groups, values, strict=True):
        below, above = v[0 : 2 * per_cell : 2], v[1 : 2 * per_cell : 2]
        scores, sensitivity = mechanisms.quantile_scores(below, above, plan.spec.measure.q)
        # cells are disjoint: each spends ε on its own rows (parallel composition)
        index, scale = mechanisms.exponential_quantile(
            scores, sensitivity=sensitivity, epsilon=epsilon
        )
        cells.append(
            {"group": g, "value": plan.candidates[index], "display": str(plan.candidates[index])}
        )
    return {
        "mechanism": "exponential mechanism (report noisy max, exponential noise)",
        "scale": scale,
        "cells": cells,
    }


def _cell(
    group: list[Any], value: int, scale: float, half: int, threshold: int | None
) -> dict[str, Any]:
    small = threshold is not None and value < threshold
    return {
        "group": group,
        "value": value,
        "lower": value - half,
        "upper": value + half,
        "display": f"< {threshold}" if small else str(value),
        "suppressed": small,
    }


def ratio(
    num: int, num_scale: float, den: int, den_scale: float, low: float, high: float, threshold: int
) -> dict[str, Any]:
    """A noisy ratio with a ≥95% interval (each part at 97.5%, union bound), clipped to bounds."""
    # a county may set the threshold to 0: a noisy denominator of 0 still divides nothing
    if den < threshold or den <= 0:
        return {
            "value": None,
            "lower": low,
            "upper": high,
            "display": f"< {threshold}",
            "suppressed": True,
        }
    num_half = mechanisms.half_width(num_scale, alpha=mechanisms.ALPHA / 2)
    den_half = mechanisms.half_width(den_scale, alpha=mechanisms.ALPHA / 2)
    value = min(max(num / den, low), high)
    lows = [(num - num_half) / (den + den_half)]
    highs = [(num + num_half) / (den - den_half)] if den - den_half > 0 else [high]
    if den - den_half > 0:
        lows.append((num - num_half) / (den - den_half))
        highs.append((num + num_half) / (den + den_half))
    return {
        "value": value,
        "lower": min(max(min(lows), low), high),
        "upper": min(max(max(highs), low), high),
        "display": f"{value:.4g}",
        "suppressed": False,
    }
