"""The report's figures, computed from verified releases only (post-processing: no cost).

Every figure is either a release's own cell (province or county, as signed) or
arithmetic on released noisy values whose noise scales the signed answers state:
sums of noisy counts (a sum's variance is the sum of the discrete Laplace variances),
ratios of sums (the delta method), shares within a group and changes between two
rates. Intervals are 95%. A figure computed from a noisy count below the publication
threshold is shown as "< k", like the cells it came from.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from fedscreen.protocol.answer import dataset_public
from fedscreen.protocol.combine import (
    Z_975,
    NodeCells,
    combine,
    ratio_interval,
)
from fedscreen.query.spec import QuerySpec
from fedscreen.report.format import PROVINCE, format_value
from fedscreen.report.parts import Part, linear_cumulants, linear_half_width
from fedscreen.report.plan import ReportPlan, Statistic


@dataclass(frozen=True)
class Released:
    """One query's verified release: the signed body and each node's verified answer.

    County figures come from the nodes' own signed answers (``node_bodies``), which the
    release was checked to repeat; the release adds the provincial combination.
    """

    body: Mapping[str, Any]
    node_bodies: Mapping[str, Mapping[str, Any]]
    #: node id -> ε that node charged for this delivery (signed by the node; 0 when it
    #: gave its stored answer again; None if it did not say)
    charged: Mapping[str, float | None]
    #: scope id -> its counties, for rows between the province and a county (cities)
    areas: Mapping[str, Sequence[str]] = field(default_factory=dict)

    @property
    def answered(self) -> list[str]:
        """The nodes whose verified answers the release combines, in order."""
        return sorted(self.node_bodies)

    @functools.cached_property
    def public(self) -> bool:
        """Whether the query's dataset is public (exact values), as the shipped catalogue
        says: never read from what an answer states about itself."""
        return dataset_public(QuerySpec.from_json(dict(self.body["query"])))

    def nodes_of(self, scope: str) -> list[str]:
        """The answering nodes a scope's figures combine."""
        if scope == PROVINCE:
            return self.answered
        if scope in self.areas:
            return [n for n in self.areas[scope] if n in self.node_bodies]
        return [scope]

    @property
    def group_by(self) -> list[str]:
        """The query's group columns."""
        return list(self.body["query"]["group_by"])

    def threshold(self, scope: str) -> int:
        """The publication threshold that applies to ``scope``'s cells."""
        if scope == PROVINCE or scope in self.areas:
            return int(self.body["threshold"])
        return int(self.node_bodies[scope].get("threshold", self.body["threshold"]))

    def scopes(self) -> list[str]:
        """Province first, then each area with an answering county, then every county."""
        if not self.answered:
            return []
        return [PROVINCE, *(a for a in self.areas if self.nodes_of(a)), *self.answered]

    def cells(self, scope: str) -> list[dict[str, Any]]:
        """The cells of ``scope``: as released, or combined over an area's counties."""
        if scope == PROVINCE:
            return list(self.body["province"])
        if scope in self.areas:
            # the coordinator's own combination, over the area's counties
            nodes = [NodeCells(n, dict(self.node_bodies[n])) for n in self.nodes_of(scope)]
            kind = str(self.body["query"]["measure"]["kind"])
            return combine(kind, nodes, threshold=self.threshold(scope), public=self.public)
        return list(self.node_bodies[scope]["cells"])

    def rate_parts(self, scope: str) -> dict[str, tuple[Part, Part]]:
        """Each group's noisy numerator and denominator (a RATE or AVG query), by repr(group)."""
        nodes = self.nodes_of(scope)
        merged: dict[str, tuple[Part, Part]] = {}
        for node in nodes:
            for cell in self.node_bodies[node]["cells"]:
                num = Part(int(cell["numerator"]["value"]), (float(cell["numerator"]["scale"]),))
                den = Part(
                    int(cell["denominator"]["value"]), (float(cell["denominator"]["scale"]),)
                )
                key = repr(cell["group"])
                if key in merged:
                    num, den = merged[key][0] + num, merged[key][1] + den
                merged[key] = (num, den)
        return merged

    def parts(self, scope: str) -> list[tuple[list[Any], Part]]:
        """Each group's noisy value and the noise scales in it (a COUNT or SUM query)."""
        nodes = self.nodes_of(scope)
        merged: dict[str, tuple[list[Any], Part]] = {}
        for node in nodes:
            answer = self.node_bodies[node]
            scales = () if self.public else (float(answer["scale"]),)
            for cell in answer["cells"]:
                key = repr(cell["group"])
                part = Part(int(cell["value"]), scales)
                if key in merged:
                    merged[key] = (merged[key][0], merged[key][1] + part)
                else:
                    merged[key] = (list(cell["group"]), part)
        return list(merged.values())


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
    nodes = num_source.nodes_of(scope)
    nums: dict[str, Part] = {}
    dens: dict[str, tuple[list[Any], Part]] = {}
    for node in (n for n in nodes if n in den_source.node_bodies):
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
