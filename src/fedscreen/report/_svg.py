"""Inline SVG bar charts for the report: plain strings, no fonts, no scripts, no links.

One chart per statistic: for each group (grade band × sex …) one horizontal bar
per scope (the province first, then each county), a whisker for the 95% interval,
the value written at the bar's end, and a dashed line for a policy target. A
suppressed cell gets no bar at all, only its "< k" text, so no one can read a
hidden value off a bar's length.

Colours are the Okabe–Ito palette (distinguishable with the common colour-vision
deficiencies), and every bar is also named in words beside it, so colour is
never the only way to tell the scopes apart, in print or in grey.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from typing import Final

from fedscreen.report.format import format_tick, format_value

#: the province, then the counties; the last colours repeat, but bars are labelled too
PROVINCE_COLOUR: Final = "#0072B2"
COUNTY_COLOURS: Final = (
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#F0E442",
    "#999999",
)

WIDTH: Final = 760  # px; scales down to A4's text width (about 680 px) in print
_PAD: Final = 8
_FONT: Final = 12
_SMALL: Final = 11
_BAR: Final = 14
_BAR_GAP: Final = 4
_GROUP_GAP: Final = 12
_LEGEND_ROW: Final = 18
_INK: Final = "#1a1a1a"
_MUTED: Final = "#4a4a4a"
_GRID: Final = "#d9d9d9"
#: a white outline under text that may cross a grid or target line
_HALO: Final = ' stroke="#fff" stroke-width="3" stroke-linejoin="round" paint-order="stroke"'


@dataclass(frozen=True)
class Bar:
    """One cell: a scope's value in one group."""

    scope: str  # raw scope id, kept as a data attribute for tests and tools
    label: str  # the scope in words
    colour: str
    value: float | None
    lower: float | None
    upper: float | None
    text: str  # written at the bar's end: "21.4%", or "< 10" for a suppressed cell
    suppressed: bool
    tooltip: str


@dataclass(frozen=True)
class Group:
    """The bars of one group label."""

    key: str  # raw codes, for a data attribute
    label: str
    bars: tuple[Bar, ...]


@dataclass(frozen=True)
class Chart:
    """Everything one chart shows; ``ident`` must be unique in the page and safe as an id."""

    ident: str
    title: str
    description: str
    unit: str
    groups: tuple[Group, ...]
    legend: tuple[tuple[str, str], ...]  # (label, colour)
    target: float | None = None
    target_label: str | None = None


def text_width(text: str, size: float) -> float:
    """A generous estimate of ``text``'s width in px (no font metrics in an SVG string)."""
    width = 0.0
    for ch in text:
        if ord(ch) >= 0x2E80:  # CJK and full-width forms: one em
            width += size
        elif ch in "il.,:;|!' ":
            width += size * 0.32
        elif ch.isupper() or ch in "mwMW%":
            width += size * 0.72
        else:
            width += size * 0.56
    return width


def fit(text: str, width: float, size: float) -> str:
    """``text`` cut with an ellipsis so that it fits in ``width`` px."""
    if text_width(text, size) <= width:
        return text
    while text and text_width(text + "…", size) > width:
        text = text[:-1]
    return text + "…"


def nice_axis(low: float, high: float, ticks: int = 5) -> tuple[float, float, float]:
    """An axis [lo, hi] covering [low, high] with a round step (1, 2, 2.5 or 5 × 10^k)."""
    span = high - low
    if not math.isfinite(span) or span <= 0:
        raise ValueError("nice_axis needs high > low")
    raw = span / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    step = 10 * magnitude
    for m in (1, 2, 2.5, 5):
        if m * magnitude >= raw * (1 - 1e-9):
            step = m * magnitude
            break
    if not (math.isfinite(step) and step > 0):
        raise ValueError("nice_axis: no round step for this range")
    lo = math.floor(low / step + 1e-9) * step
    hi = math.ceil(high / step - 1e-9) * step
    return lo, hi, step


def _axis(chart: Chart) -> tuple[float, float, float]:
    values = [b.value for g in chart.groups for b in g.bars if b.value is not None]
    values = [v for v in values if not _hidden(v)]
    uppers = [b.upper for g in chart.groups for b in g.bars if b.upper is not None]
    uppers = [v for v in uppers if not _hidden(v)]
    tops = [*values, *uppers]
    if chart.target is not None and not _hidden(chart.target):
        tops.append(chart.target)
    high = max([0.0, *tops])
    if chart.unit == "percent" and all(v <= 1 for v in values) and (chart.target or 0) <= 1:
        # a share cannot pass 100%: an interval reaching past it is noise, clip it
        high = min(high, 1.0)
    # axes start at 0; only a statistic whose values go below 0 (a change) extends left
    low = min([0.0, *values])
    if low < 0 or chart.unit == "points":
        # a change's interval may cross 0 even when every change is positive
        lowers = [b.lower for g in chart.groups for b in g.bars if b.lower is not None]
        low = min([low, *(v for v in lowers if not _hidden(v))])
    if high - low <= 0:
        high = {"percent": 0.1, "points": 0.1, "count": 10.0}.get(chart.unit, 1.0)
    try:
        lo, hi, step = nice_axis(low, high)
        if math.isfinite(hi - lo) and hi > lo:
            return lo, hi, step
    except (ValueError, OverflowError):
        pass
    # only for absurd values (spans beyond float range or below its resolution)
    return 0.0, 1.0, 0.2


def _hidden(value: float) -> bool:
    # values too large to place are written, not drawn
    return not math.isfinite(value) or abs(value) > 1e15


def _num(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _attr(text: str) -> str:
    return escape(text, quote=True)


@dataclass(frozen=True)
class Rendered:
    """A chart's ``<svg>`` element, to inline in HTML, and its height in px."""

    svg: str
    height: float


def render_chart(chart: Chart) -> Rendered:
    """Draw ``chart`` (its height grows with its number of bars)."""
    bars = [b for g in chart.groups for b in g.bars]
    lo, hi, step = _axis(chart)

    group_w = max((text_width(g.label, _FONT) for g in chart.groups), default=0.0)
    group_w = min(group_w + 14, 210.0) if group_w else 0.0
    # one scope only (a province-level figure): its name is in the legend, not on every bar
    show_scope = len({b.scope for b in bars}) > 1 or not group_w
    scope_w = max((text_width(b.label, _SMALL) for b in bars), default=0.0) if show_scope else 0
    scope_w = min(scope_w + 10, 150.0) if scope_w else 0.0
    right = max((text_width(b.text, _SMALL) for b in bars), default=30.0) + 12
    x0 = _PAD + group_w + scope_w
    x1 = WIDTH - _PAD - min(max(right, 40.0), 150.0)

    def x(v: float) -> float:
        v = min(max(v, lo), hi)
        return x0 + (v - lo) / (hi - lo) * (x1 - x0)

    # legend, wrapped at the chart's width
    y = float(_PAD)
    cx = float(_PAD)
    legend: list[str] = []
    for label, colour in chart.legend:
        item_w = 14 + text_width(label, _SMALL) + 16
        if cx + item_w > WIDTH - _PAD and cx > _PAD:
            cx, y = float(_PAD), y + _LEGEND_ROW
        legend.append(
            f'<rect x="{_num(cx)}" y="{_num(y + 2)}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{_num(cx + 14)}" y="{_num(y + 11)}" font-size="{_SMALL}" '
            f'fill="{_INK}">{escape(label)}</text>'
        )
        cx += item_w
    if legend:
        y += _LEGEND_ROW + 6
    top_ticks = len(bars) > 16  # a tall chart repeats its scale at the top
    if top_ticks:
        y += 16
    if chart.target is not None:
        y += 16
    plot_top = y

    # groups: zebra bands underneath, then labels and bars
    bands: list[str] = []
    groups: list[str] = []
    y = plot_top + _GROUP_GAP / 2
    for gi, group in enumerate(chart.groups):
        g_top = y
        cells: list[str] = []
        for bar in group.bars:
            cells.append(_cell(bar, y, x, axis=(lo, hi), scope_w=scope_w, x0=x0))
            y += _BAR + _BAR_GAP
        g_bottom = y - _BAR_GAP
        if gi % 2 == 0:
            bands.append(
                f'<rect x="{_PAD}" y="{_num(g_top - _GROUP_GAP / 2)}" '
                f'width="{WIDTH - 2 * _PAD}" height="{_num(g_bottom - g_top + _GROUP_GAP)}" '
                f'fill="#f2f3f5"/>'
            )
        label = ""
        if group_w:
            shown = fit(group.label, group_w - 14, _FONT)
            label = (
                f'<text class="group-label" x="{_PAD + 4}" '
                f'y="{_num((g_top + g_bottom) / 2 + 4)}" font-size="{_FONT}" '
                f'font-weight="600" fill="{_INK}"><title>{escape(group.label)}</title>'
                f"{escape(shown)}</text>"
            )
        groups.append(
            f'<g class="group" data-group="{_attr(group.key)}">{label}{"".join(cells)}</g>'
        )
        y += _GROUP_GAP
    plot_bottom = y - _GROUP_GAP / 2
    height = plot_bottom + 22 + _PAD

    # the scale: grid, tick labels (bottom, and top for tall charts), the zero line
    grid: list[str] = []
    # nothing drawn (every cell hidden): no scale, which would only suggest values near 0
    drawn = any(b.value is not None and not _hidden(b.value) for b in bars)
    for i in range(round((hi - lo) / step) + 1 if drawn else 0):
        v = lo + i * step
        tx = _num(x(v))
        label = escape(format_tick(v, chart.unit, step))
        grid.append(
            f'<line x1="{tx}" x2="{tx}" y1="{_num(plot_top)}" y2="{_num(plot_bottom)}" '
            f'stroke="{_GRID}" stroke-width="1"/>'
            f'<text x="{tx}" y="{_num(plot_bottom + 15)}" font-size="{_SMALL}" '
            f'text-anchor="middle" fill="{_MUTED}">{label}</text>'
        )
        if top_ticks:
            grid.append(
                f'<text x="{tx}" y="{_num(plot_top - 5 - (16 if chart.target is not None else 0))}"'
                f' font-size="{_SMALL}" text-anchor="middle" fill="{_MUTED}">{label}</text>'
            )
    zx = _num(x(0.0))
    grid.append(
        f'<line x1="{zx}" x2="{zx}" y1="{_num(plot_top)}" y2="{_num(plot_bottom)}" '
        f'stroke="{_MUTED}" stroke-width="1"/>'
    )

    target = ""
    if chart.target is not None:
        at = x(chart.target)
        text = chart.target_label or f"target {format_value(chart.target, chart.unit)}"
        right_side = at > (x0 + x1) / 2
        target = (
            f'<g class="target"><line x1="{_num(at)}" x2="{_num(at)}" '
            f'y1="{_num(plot_top - 14)}" y2="{_num(plot_bottom)}" stroke="{_INK}" '
            f'stroke-width="1.5" stroke-dasharray="5 3"/>'
            f'<text x="{_num(at - 5 if right_side else at + 5)}" y="{_num(plot_top - 4)}" '
            f'font-size="{_SMALL}" font-weight="600" '
            f'text-anchor="{"end" if right_side else "start"}" fill="{_INK}"{_HALO}>'
            f"{escape(text)}</text></g>"
        )

    ident = _attr(chart.ident)
    svg = (
        f'<svg class="chart" id="{ident}" role="img" '
        f'aria-labelledby="{ident}-title {ident}-desc" '
        f'viewBox="0 0 {WIDTH} {_num(height)}" width="{WIDTH}" height="{_num(height)}">'
        f'<title id="{ident}-title">{escape(chart.title)}</title>'
        f'<desc id="{ident}-desc">{escape(chart.description)}</desc>'
        f'<g class="legend">{"".join(legend)}</g>'
        f'<g class="bands">{"".join(bands)}</g>'
        f'<g class="grid">{"".join(grid)}</g>'
        f"{''.join(groups)}{target}</svg>"
    )
    return Rendered(svg=svg, height=height)


def _cell(
    bar: Bar,
    y: float,
    x: Callable[[float], float],
    *,
    axis: tuple[float, float],
    scope_w: float,
    x0: float,
) -> str:
    """One scope's bar, whisker and value text, or only the text for a hidden cell."""
    lo, hi = axis
    mid = y + _BAR / 2
    parts = [f"<title>{escape(bar.tooltip)}</title>"]
    if scope_w:
        parts.append(
            f'<text class="scope-label" x="{_num(x0 - 6)}" y="{_num(mid + 4)}" '
            f'font-size="{_SMALL}" text-anchor="end" fill="{_MUTED}">'
            f"{escape(fit(bar.label, scope_w - 10, _SMALL))}</text>"
        )
    if bar.suppressed or bar.value is None or _hidden(bar.value):
        # no bar: a suppressed cell's value must not be readable from a length
        cls = "suppressed" if bar.suppressed else "no-value"
        parts.append(
            f'<text class="{cls}" x="{_num(x(0.0) + 4)}" y="{_num(mid + 4)}" '
            f'font-size="{_SMALL}" font-style="italic" fill="{_MUTED}"{_HALO}>'
            f"{escape(bar.text)}</text>"
        )
    else:
        zero, end = x(0.0), x(bar.value)
        left, width = min(zero, end), abs(end - zero)
        parts.append(
            f'<rect class="bar" x="{_num(left)}" y="{_num(y)}" width="{_num(width)}" '
            f'height="{_BAR}" fill="{bar.colour}"/>'
        )
        text_x = max(end, zero)
        if bar.lower is not None and bar.upper is not None:
            wl, wu = x(bar.lower), x(bar.upper)
            parts.append(
                f'<line class="whisker" x1="{_num(wl)}" x2="{_num(wu)}" y1="{_num(mid)}" '
                f'y2="{_num(mid)}" stroke="{_INK}" stroke-width="1.3"/>'
            )
            # caps only on ends inside the axis: a missing cap says "clipped here"
            for v, wx in ((bar.lower, wl), (bar.upper, wu)):
                if lo <= v <= hi:
                    parts.append(
                        f'<line class="cap" x1="{_num(wx)}" x2="{_num(wx)}" '
                        f'y1="{_num(mid - 4)}" y2="{_num(mid + 4)}" stroke="{_INK}" '
                        f'stroke-width="1.3"/>'
                    )
            text_x = max(text_x, wu)
        parts.append(
            f'<text class="value" x="{_num(text_x + 4)}" y="{_num(mid + 4)}" '
            f'font-size="{_SMALL}" fill="{_INK}"{_HALO}>{escape(bar.text)}</text>'
        )
    return (
        f'<g class="cell" data-scope="{_attr(bar.scope)}" '
        f'data-suppressed="{"true" if bar.suppressed else "false"}">{"".join(parts)}</g>'
    )
