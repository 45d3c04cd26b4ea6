"""The report's figures, computed from verified releases only (post-processing: no cost).

Every figure is either a release's own cell (province or county, as signed) or
arithmetic on released noisy values whose noise scales the signed answers state:
sums of noisy counts (a sum's variance is the sum of the discrete Laplace variances),
ratios of sums (the delta method), shares within a group and changes between two
rates. Intervals are 95%. A figure computed from a noisy count below the publication
threshold is shown as "< k", like the cells it came from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final

from fedscreen.protocol.combine import (
    Z_975,
    ratio_interval,
)
from fedscreen.report.format import PROVINCE, format_value
from fedscreen.report.parts import Part, linear_cumulants, linear_half_width
from fedscreen.report.plan import ReportPlan, Statistic
from fedscreen.report.released import Released

__all__ = ["PROVINCE", "Part", "Released", "dims", "statistic_rows"]


def _sum_by(
    parts: Iterable[tuple[list[Any], Part]], keep: Sequence[int]
) -> list[tuple[list[Any], Part]]:
    """Parts added up over the group positions not in ``keep`` (order of first appearance)."""
    out: dict[str, tuple[list[Any], Part]] = {}
    for group, part in parts:
        kept = [group[i] for i in keep]
        key = repr(kept)
        out[key] = (kept, out[key][1] + part) if key in out else (kept, part)
    return list(out.values())


def _kept(
    parts: Iterable[tuple[list[Any], Part]], columns: Sequence[str], where: Mapping[str, Any]
) -> list[tuple[list[Any], Part]]:
    index = {c: i for i, c in enumerate(columns)}
    return [(g, p) for g, p in parts if all(g[index[c]] in vals for c, vals in where.items())]


def _row(
    scope: str,
    group: list[Any],
    value: float | None,
    low: float | None,
    high: float | None,
    *,
    unit: str,
    small: int | None = None,
) -> dict[str, Any]:
    """One figure; ``small`` = the threshold a noisy count in it fell below."""
    if small is not None:
        return {
            "scope": scope, "group": group, "value": None, "lower": None, "upper": None,
            "display": f"< {small}", "suppressed": True,
        }  # fmt: skip
    return {
        "scope": scope,
        "group": group,
        "value": value,
        "lower": low,
        "upper": high,
        "display": format_value(value, unit),
        "suppressed": False,
    }


def _small(part: Part, threshold: int) -> int | None:
    """The threshold if ``part`` is a noisy count below it (exact data is never hidden)."""
    return threshold if not part.exact and part.value < threshold else None


def _share(
    num: Part, rest: Part, threshold: int
) -> tuple[float | None, float | None, float | None, int | None]:
    """num / (num + rest) by the delta method."""
    small = _small(num, threshold) or _small(num + rest, threshold)
    total = num.value + rest.value
    if total <= 0:
        return None, None, None, small
    p = min(max(num.value / total, 0.0), 1.0)
    if num.terms or rest.terms:
        # parts of one measured table share noise: the linearised A − p(A + B), exactly
        share = num.value / total
        sd = math.sqrt(linear_cumulants((1 - share, num), (-share, rest))[0]) / total
    else:
        # d/dA A/(A+B) = B/(A+B)², d/dB = −A/(A+B)²
        sd = math.sqrt(rest.value**2 * num.variance + num.value**2 * rest.variance) / total**2
    return p, max(p - Z_975 * sd, 0.0), min(p + Z_975 * sd, 1.0), small


def statistic_rows(
    stat: Statistic,
    plan: ReportPlan,
    released: Mapping[str, Released],
    areas: Mapping[str, Sequence[str]] | None = None,
) -> list[dict[str, Any]]:
    """Every row (province, then each area such as a city, then each county) of one statistic."""
    if areas:
        released = {name: replace(r, areas=areas) for name, r in released.items()}
    first = released[stat.queries[0]]
    columns = first.group_by
    rows: list[dict[str, Any]] = []
    form: Callable[..., list[dict[str, Any]]] = _FORMS[stat.form]
    for scope in first.scopes():
        if stat.form == "ratio" and scope not in released[stat.queries[1]].scopes():
            continue
        rows.extend(form(stat, scope, columns, released))
    return rows


def dims(stat: Statistic, released: Mapping[str, Released]) -> list[str]:
    """The group columns of a statistic's rows."""
    columns = released[stat.queries[0]].group_by
    if stat.form == "query":
        return [c for c in columns if c not in stat.columns]
    if stat.form == "ratio":
        return released[stat.queries[1]].group_by
    if stat.form == "flags":
        return ["factor"]
    if stat.form == "change":
        return [c for c in columns if c not in stat.columns]
    return columns


def _query_form(
    stat: Statistic, scope: str, columns: list[str], released: Mapping[str, Released]
) -> list[dict[str, Any]]:
    source = released[stat.queries[0]]
    if not stat.columns:  # the release's own cells, as signed
        index = {c: i for i, c in enumerate(columns)}
        return [
            _as_row(scope, cell, stat.unit)
            for cell in source.cells(scope)
            if all(cell["group"][index[c]] in v for c, v in stat.where.items())
            # medians do not combine: no provincial or city median
            and cell.get("display") != "per node"
        ]
    keep = [i for i, c in enumerate(columns) if c not in stat.columns]
    threshold = source.threshold(scope)
    out = []
    for group, part in _sum_by(_kept(source.parts(scope), columns, stat.where), keep):
        low, high = part.interval()
        out.append(
            _row(scope, group, part.value, max(low, 0.0), high, unit=stat.unit,
                 small=_small(part, threshold))
        )  # fmt: skip
    return out


def _as_row(scope: str, cell: Mapping[str, Any], unit: str) -> dict[str, Any]:
    suppressed = bool(cell.get("suppressed"))
    value = cell.get("value")
    return {
        "scope": scope,
        "group": list(cell["group"]),
        "value": None if suppressed else value,
        "lower": None if suppressed else cell.get("lower"),
        "upper": None if suppressed else cell.get("upper"),
        "display": str(cell["display"]) if suppressed else format_value(value, unit),
        "suppressed": suppressed,
    }


def _ratio_form(
    stat: Statistic, scope: str, columns: list[str], released: Mapping[str, Released]
) -> list[dict[str, Any]]:
    num_source, den_source = released[stat.queries[0]], released[stat.queries[1]]
    keep = [columns.index(c) for c in den_source.group_by]
    if num_source.secure or den_source.secure:
        pair = _secure_ratio_parts(stat, columns, keep, num_source, den_source)
        if pair is None:
            return [_note_row(scope, "no figure: its two parts cover different counties")]
        nums, dens = pair
    else:
        nums, dens = _node_ratio_parts(stat, scope, columns, keep, num_source, den_source)
    threshold = num_source.threshold(scope)
    # a percentage is a share of its denominator: noise can push the estimate past 100%
    # (coverage of a small university), and clipping it back is free post-processing
    top = 1.0 if stat.unit == "percent" else math.inf
    out = []
    for key, (group, den) in dens.items():
        num = nums[key]
        small = _small(num, threshold) or _small(den, den_source.threshold(scope))
        if den.exact and den.value <= 0:
            # nothing to divide by (a county without universities): no figure, not a small one
            out.append(_row(scope, group, None, None, None, unit=stat.unit))
        elif den.value <= 0:
            out.append(_row(scope, group, None, None, None, unit=stat.unit, small=small))
        elif den.exact:
            low, high = num.interval()
            out.append(
                _row(scope, group, _clip(num.value / den.value, top),
                     _clip(low / den.value, top), _clip(high / den.value, top),
                     unit=stat.unit, small=small)
            )  # fmt: skip
        elif num.terms or den.terms:
            # estimates from measured tables may share noise: N − rD, exactly
            r = num.value / den.value
            half = linear_half_width((1.0, num), (-r, den)) / den.value
            out.append(
                _row(scope, group, _clip(r, top), _clip(r - half, top), _clip(r + half, top),
                     unit=stat.unit, small=small)
            )  # fmt: skip
        else:
            value, low, high = ratio_interval(
                int(num.value), num.variance, int(den.value), den.variance, 0.0, top
            )
            out.append(_row(scope, group, value, low, high, unit=stat.unit, small=small))
    return out


def _node_ratio_parts(
    stat: Statistic,
    scope: str,
    columns: list[str],
    keep: list[int],
    num_source: Released,
    den_source: Released,
) -> tuple[dict[str, Part], dict[str, tuple[list[Any], Part]]]:
    """Numerators and denominators by group, summed over the scope's counties."""
    nums: dict[str, Part] = {}
    dens: dict[str, tuple[list[Any], Part]] = {}
    for node in (n for n in num_source.nodes_of(scope) if n in den_source.node_bodies):
        node_nums = {
            repr(g): p for g, p in _sum_by(_kept(num_source.parts(node), columns, stat.where), keep)
        }
        for group, den in den_source.parts(node):
            key = repr(group)
            # a cell the node's county policy withholds from the numerator (a district
            # without universities) leaves its denominator out too: like with like
            if key not in node_nums:
                continue
            nums[key] = nums.get(key, Part(0)) + node_nums[key]
            dens[key] = (group, dens[key][1] + den) if key in dens else (group, den)
    return nums, dens


def _secure_ratio_parts(
    stat: Statistic,
    columns: list[str],
    keep: list[int],
    num_source: Released,
    den_source: Released,
) -> tuple[dict[str, Part], dict[str, tuple[list[Any], Part]]] | None:
    """A province ratio with a secure part: that part's province total, the other summed
    over exactly the counties in it (None if one answered a part the other lacks).
    Keys are the denominator's groups (``repr``), as in ``_node_ratio_parts``."""
    secure, plain = (num_source, den_source) if num_source.secure else (den_source, num_source)
    if plain.secure:
        if set(plain.answered) != set(secure.answered):
            return None
    elif not set(secure.answered) <= set(plain.node_bodies):
        return None

    def numerators(scope: str) -> list[tuple[list[Any], Part]]:
        return _sum_by(_kept(num_source.parts(scope), columns, stat.where), keep)

    def by_key(parts: list[tuple[list[Any], Part]]) -> dict[str, tuple[list[Any], Part]]:
        return {repr(g): (g, p) for g, p in parts}

    if plain.secure:
        nums, dens = by_key(numerators(PROVINCE)), by_key(den_source.parts(PROVINCE))
    else:
        summed: dict[str, tuple[list[Any], Part]] = {}
        for node in secure.answered:
            # like with like: a county's plain cell counts where its secure answer (its
            # groups, no values) has that cell
            cells = secure.node_bodies[node]["cells"]
            held = {
                repr([c["group"][i] for i in keep] if secure is num_source else list(c["group"]))
                for c in cells
            }
            parts = numerators(node) if plain is num_source else den_source.parts(node)
            for group, part in parts:
                key = repr(group)
                if key in held:
                    summed[key] = (group, summed[key][1] + part) if key in summed else (group, part)
        if plain is num_source:
            nums, dens = summed, by_key(den_source.parts(PROVINCE))
        else:
            nums, dens = by_key(numerators(PROVINCE)), summed
    return {k: p for k, (_, p) in nums.items()}, {k: v for k, v in dens.items() if k in nums}


def _note_row(scope: str, note: str) -> dict[str, Any]:
    """A row with no figure, saying why (never a blank)."""
    return {
        "scope": scope, "group": [], "value": None, "lower": None, "upper": None,
        "display": note, "suppressed": False,
    }  # fmt: skip


def _clip(value: float, top: float) -> float:
    return min(max(value, 0.0), top)


def _shares_form(
    stat: Statistic, scope: str, columns: list[str], released: Mapping[str, Released]
) -> list[dict[str, Any]]:
    source = released[stat.queries[0]]
    within = columns.index(stat.columns[0])
    keep = [i for i in range(len(columns)) if i != within]
    parts = _kept(source.parts(scope), columns, stat.where)
    # the cells sharing everything but the distribution's column make one whole
    wholes: dict[str, list[Part]] = {}
    for group, part in parts:
        wholes.setdefault(repr([group[i] for i in keep]), []).append(part)
    threshold = source.threshold(scope)
    out = []
    for group, part in parts:
        others = (o for o in wholes[repr([group[i] for i in keep])] if o is not part)
        p, low, high, small = _share(part, sum(others, Part(0)), threshold)
        out.append(_row(scope, group, p, low, high, unit=stat.unit, small=small))
    return out


def _flags_form(
    stat: Statistic, scope: str, columns: list[str], released: Mapping[str, Released]
) -> list[dict[str, Any]]:
    source = released[stat.queries[0]]
    parts = _kept(source.parts(scope), columns, stat.where)
    threshold = source.threshold(scope)
    out = []
    for column in stat.columns or tuple(columns):
        i = columns.index(column)
        num, rest = Part(0), Part(0)
        for group, part in parts:
            if group[i] == 1:
                num = num + part
            else:
                rest = rest + part
        p, low, high, small = _share(num, rest, threshold)
        out.append(_row(scope, [column], p, low, high, unit=stat.unit, small=small))
    return out


def _change_form(
    stat: Statistic, scope: str, columns: list[str], released: Mapping[str, Released]
) -> list[dict[str, Any]]:
    source = released[stat.queries[0]]
    along = columns.index(stat.columns[0])
    keep = [i for i in range(len(columns)) if i != along]
    series: dict[str, list[Mapping[str, Any]]] = {}
    for cell in source.cells(scope):
        series.setdefault(repr([cell["group"][i] for i in keep]), []).append(cell)
    parts = source.rate_parts(scope)
    out = []
    for cells in series.values():
        cells = sorted(cells, key=lambda c: str(c["group"][along]))
        before, after = cells[0], cells[-1]
        group = [after["group"][i] for i in keep]
        if len(cells) < 2:
            out.append(_row(scope, group, None, None, None, unit=stat.unit))
            continue
        if before.get("suppressed") or after.get("suppressed"):
            small = source.threshold(scope)
            out.append(_row(scope, group, None, None, None, unit=stat.unit, small=small))
            continue
        # the two years' noises are independent: their rates' variances add (delta method
        # on each year's noisy numerator and denominator; the cells' own intervals are
        # clipped to [0, 1] and would understate it)
        variance = sum(_rate_variance(*parts[repr(c["group"])]) for c in (before, after))
        diff = float(after["value"]) - float(before["value"])
        half = Z_975 * math.sqrt(variance)
        out.append(_row(scope, group, diff, diff - half, diff + half, unit=stat.unit))
    return out


def _rate_variance(num: Part, den: Part) -> float:
    """Variance of num / den by the delta method (den > 0: the cell was not suppressed)."""
    ratio = num.value / den.value
    if num.terms or den.terms:
        # a measured table's numerator and denominator share noise: N − rD, exactly
        return linear_cumulants((1.0, num), (-ratio, den))[0] / den.value**2
    return (num.variance + ratio * ratio * den.variance) / den.value**2


_FORMS: Final[dict[str, Callable[..., list[dict[str, Any]]]]] = {
    "query": _query_form,
    "ratio": _ratio_form,
    "shares": _shares_form,
    "flags": _flags_form,
    "change": _change_form,
}
