"""The report's lookups and its body: one section per part, one per statistic.

``Sections`` holds what every part of the page needs (county names, the order
and colour of each scope, the reasons counties are missing) and renders each
statistic as its facts, notices, chart, target summary and table. The page
around it (cover, summary, contents, privacy, how to verify) is in ``html``.
Every text from the model is HTML-escaped.
"""

from __future__ import annotations

import itertools
from html import escape
from typing import Final

from fedscreen.report._svg import (
    COUNTY_COLOURS,
    PROVINCE_COLOUR,
    Bar,
    Chart,
    Group,
    render_chart,
)
from fedscreen.report._view import Report, Row, Section, Stat
from fedscreen.report.format import (
    PROVINCE,
    SECURE_FAILED,
    SECURE_ONLY,
    code_label,
    code_rank,
    dimension_label,
    format_epsilon,
    format_interval,
    format_value,
)

__all__ = ["Sections", "esc", "item_badge"]

#: how many cells a target summary names before it says "and N more"
_MAX_NAMED: Final = 8
#: the tallest chart (px as drawn) that fits on an A4 page once scaled to its text width
_PRINT_PAGE_PX: Final = 1000


def esc(text: str) -> str:
    """``text`` HTML-escaped, quotes included (safe in text and attribute values)."""
    return escape(text, quote=True)


def item_badge(stat: Stat) -> str:
    """The "Item N" badge before a statistic's title; empty when it has no item number."""
    return f'<span class="item">Item {stat.item}</span> ' if stat.item is not None else ""


class Sections:
    """The lookups every part of the page needs, and the sections showing the statistics."""

    def __init__(self, report: Report) -> None:
        self.r = report
        self.k = report.privacy.threshold
        self.names = {n.id: n.name or n.id for n in report.nodes}
        self.areas = {a.id: a for a in report.areas}
        self.names.update({a.id: a.name or a.id for a in report.areas})
        #: the report's own total: the province, or a city or county report's scope
        self.top = report.scope
        # a city report's secure figures are the city's totals, not the province's
        self.secure_only = (
            SECURE_ONLY
            if self.top == PROVINCE
            else SECURE_ONLY.replace("province", report.scope_name, 1)
        )
        # the top, the province's published figures (a city report), then each city
        # with its counties and their nodes, the universities last
        scopes = list(report.scopes) or [a.id for a in report.areas] + [n.id for n in report.nodes]
        for stat in report.statistics():
            scopes.extend(row.scope for row in stat.rows)
        self.scope_order = {self.top: 0}
        self.scope_order.setdefault(PROVINCE, 1)
        for scope in scopes:
            self.scope_order.setdefault(scope, len(self.scope_order))
        colours = itertools.cycle(COUNTY_COLOURS)
        self.colours = {
            scope: PROVINCE_COLOUR if scope == self.top else next(colours)
            for scope in self.scope_order
        }
        secure = report.privacy.secure
        self.aggregators = {a: n or a for a, n in (secure.aggregators if secure else ())}
        self.reasons: dict[tuple[str, str], str] = {
            (m.node, m.statistic): m.reason for m in report.privacy.missing
        }

    # --- names ------------------------------------------------------------------------

    def scope_name(self, scope: str) -> str:
        if scope == self.top:
            return self.r.scope_name
        if scope == PROVINCE:
            return "Province (published)"
        return self.names.get(scope, scope)

    def scope_full(self, scope: str) -> str:
        if scope == self.top:
            if scope == PROVINCE:
                return "Province (all counties combined)"
            return f"{self.r.scope_name} (total: all its nodes combined)"
        if scope == PROVINCE:
            return "Province (from the province’s published report)"
        area = self.areas.get(scope)
        if area is not None:
            nodes = ", ".join(self.names.get(c, c) for c in area.nodes)
            return f"{area.name or area.id} ({area.kind}: {nodes})"
        name = self.names.get(scope)
        return f"{name} ({scope})" if name and name != scope else scope

    def group_label(self, stat: Stat, group: tuple[str, ...]) -> str:
        dims = list(stat.dims) + [""] * (len(group) - len(stat.dims))
        return " · ".join(code_label(d, c) for d, c in zip(dims, group, strict=False))

    def missing_text(self, stat: Stat, node: str) -> str:
        reason = self.reasons.get((node, stat.id), "")
        return f"{self.scope_full(node)}: {reason}" if reason else self.scope_full(node)

    # --- cells in display order ---------------------------------------------------------

    def ordered(self, stat: Stat) -> tuple[list[tuple[str, ...]], list[str]]:
        """The stat's groups (natural code order, else first seen) and scopes (province first)."""
        seen: dict[str, int] = {}
        groups: dict[tuple[str, ...], None] = {}
        for row in stat.rows:
            groups.setdefault(row.group, None)
            for code in row.group:
                seen.setdefault(code, len(seen))

        def key(group: tuple[str, ...]) -> list[tuple[int, int]]:
            ranks = [code_rank(c) for c in group]
            return [
                (0, r) if r is not None else (1, seen[c]) for c, r in zip(group, ranks, strict=True)
            ]

        scopes = sorted({row.scope for row in stat.rows}, key=lambda s: self.scope_order[s])
        return sorted(groups, key=key), scopes

    def text(self, stat: Stat, row: Row) -> str:
        if row.suppressed:
            return row.display or f"< {self.k}"
        if row.value is None:
            return row.display or "no value"
        return format_value(row.value, stat.unit)

    # --- one section per part of the plan, one per statistic ----------------------------

    def section(self, number: int, section: Section) -> str:
        stats = "".join(self.statistic(s) for s in section.statistics)
        return (
            f'<section class="part" id="part-{esc(section.id)}">\n'
            f"<h2>{number}. {esc(section.title)}</h2>\n{stats}</section>\n"
        )

    def statistic(self, stat: Stat) -> str:
        groups, scopes = self.ordered(stat)
        if stat.public:
            cost = "public data, exact (no noise, no privacy cost)"
        else:
            cost = f"ε = {format_epsilon(stat.epsilon)} at each county"
        facts = [f"<li><strong>Privacy cost:</strong> {esc(cost)}</li>"]
        if stat.dims:
            dims = " × ".join(dimension_label(d) for d in stat.dims)
            facts.append(f"<li><strong>By:</strong> {esc(dims)}</li>")
        if stat.queries:
            queries = ", ".join(f"<code>{esc(q)}</code>" for q in stat.queries)
            facts.append(f"<li><strong>Signed releases:</strong> {queries}</li>")
        if stat.compared:
            queries = ", ".join(f"<code>{esc(q)}</code>" for q in stat.compared)
            facts.append(
                "<li><strong>Province figures:</strong> from the province’s published report "
                f"(releases {queries}), not asked again</li>"
            )
        if stat.secure is not None:
            by = " and ".join(self.aggregators.get(a, a) for a in stat.secure.aggregators)
            facts.append(
                f"<li><strong>Secure aggregation:</strong> {esc(self.secure_only)} ({esc(by)}; "
                'see <a href="#secure">Privacy</a>): no county or city figure</li>'
            )
        parts = [
            f'<section class="stat" id="stat-{esc(stat.id)}">\n',
            f'<p class="stat-id">{item_badge(stat)}<code>{esc(stat.id)}</code></p>\n',
            f"<h3>{esc(stat.title)}</h3>\n",
        ]
        if stat.description:
            parts.append(f'<p class="desc">{esc(stat.description)}</p>\n')
        parts.append(f'<ul class="stat-facts">{"".join(facts)}</ul>\n')
        missing = [self.missing_text(stat, n) for n in stat.missing]
        if stat.secure is not None and stat.secure.failure is not None:
            parts.append(
                f'<p class="notice empty">{esc(SECURE_FAILED[:1].upper() + SECURE_FAILED[1:])}: '
                f"{esc(stat.secure.failure)}</p>\n</section>\n"
            )
            return "".join(parts)
        if not stat.rows:
            why = (
                "no county contributed. Missing: " + "; ".join(missing)
                if missing
                else "the release has no cells for this statistic."
            )
            parts.append(f'<p class="notice empty">No figures: {esc(why)}</p>\n</section>\n')
            return "".join(parts)
        if missing:
            parts.append(
                '<p class="notice missing"><strong>Not included:</strong> '
                f"{esc('; '.join(missing))}. "
                f"{esc(self.scope_name(self.top))} figures combine the other nodes only.</p>\n"
            )
        if all(row.suppressed for row in stat.rows):
            parts.append(
                f'<p class="notice">Every cell is below the publication threshold (k = {self.k}) '
                f"and is shown as “&lt; {self.k}”.</p>\n"
            )
        parts.append(self.chart(stat, groups, scopes))
        parts.append(self.target_summary(stat, groups, scopes))
        parts.append(self.table(stat, groups, scopes))
        parts.append("</section>\n")
        return "".join(parts)

    def _cells(
        self, stat: Stat, groups: list[tuple[str, ...]], scopes: list[str]
    ) -> list[tuple[tuple[str, ...], str, Row]]:
        by_key = {(row.group, row.scope): row for row in stat.rows}
        return [(g, s, by_key[g, s]) for g in groups for s in scopes if (g, s) in by_key]

    def chart(self, stat: Stat, groups: list[tuple[str, ...]], scopes: list[str]) -> str:
        by_group: dict[tuple[str, ...], list[Bar]] = {g: [] for g in groups}
        for group, scope, row in self._cells(stat, groups, scopes):
            label = self.group_label(stat, group)
            where = f"{self.scope_name(scope)}, {label}" if label else self.scope_name(scope)
            tip = f"{where}: {self.text(stat, row)}"
            if not row.suppressed and row.lower is not None and row.upper is not None:
                tip += f" (95% interval {format_interval(row.lower, row.upper, stat.unit)})"
            by_group[group].append(
                Bar(
                    scope=scope,
                    label=self.scope_name(scope),
                    colour=self.colours[scope],
                    value=None if row.suppressed else row.value,
                    lower=None if row.suppressed else row.lower,
                    upper=None if row.suppressed else row.upper,
                    text=self.text(stat, row),
                    suppressed=row.suppressed,
                    tooltip=tip,
                )
            )
        chart = Chart(
            ident=f"chart-{self._index(stat)}",
            title=stat.title,
            description=(
                (
                    "Horizontal bars, one per area (province first, then each county) "
                    if stat.secure is None
                    else "Horizontal bars for the province only (secure aggregation: no city "
                    "or county figure) "
                )
                + ("for each group; " if stat.dims else "; ")
                + ("exact public figures." if stat.public else "whiskers show 95% intervals.")
                + f" Cells below {self.k} show “< {self.k}” and no bar."
            ),
            unit=stat.unit,
            groups=tuple(
                Group(key="|".join(g), label=self.group_label(stat, g), bars=tuple(by_group[g]))
                for g in groups
            ),
            legend=tuple((self.scope_full(s), self.colours[s]) for s in scopes),
            target=stat.target,
            target_label=stat.target_label,
        )
        caption = (
            "Exact figures from the schools’ public tables."
            if stat.public
            else "Bars: noisy estimates; whiskers: 95% intervals."
        )
        if any(row.suppressed for row in stat.rows):
            caption += f" “&lt; {self.k}”: below the publication threshold, no bar drawn."
        drawn = render_chart(chart)
        # in print, a chart that fits on a page is kept whole; a taller one may break
        fits = drawn.height <= _PRINT_PAGE_PX
        return (
            f'<figure class="chart{"" if fits else " tall"}">{drawn.svg}'
            f"<figcaption>{caption}</figcaption></figure>\n"
        )

    def _index(self, stat: Stat) -> int:
        # chart ids come from the position, not the stat id: aria-labelledby splits on spaces
        return next(i for i, s in enumerate(self.r.statistics()) if s.id == stat.id)

    def _status(self, stat: Stat, row: Row) -> tuple[str, bool] | None:
        """("met" | "not met", whether the interval holds the target); None if not judged."""
        if stat.target is None or row.suppressed or row.value is None:
            return None
        met = row.value >= stat.target
        close = (
            not stat.public
            and row.lower is not None
            and row.upper is not None
            and row.lower <= stat.target <= row.upper
        )
        return ("met" if met else "not met"), close

    def target_summary(self, stat: Stat, groups: list[tuple[str, ...]], scopes: list[str]) -> str:
        if stat.target is None:
            return ""
        judged, missed, hidden = 0, [], 0
        for group, scope, row in self._cells(stat, groups, scopes):
            status = self._status(stat, row)
            if status is None:
                hidden += 1
                continue
            judged += 1
            if status[0] == "not met":
                label = self.group_label(stat, group)
                missed.append(
                    f"{self.scope_name(scope)} · {label}" if label else self.scope_name(scope)
                )
        label = stat.target_label or f"target {format_value(stat.target, stat.unit)}"
        text = f"{label[:1].upper()}{label[1:]}: met by {judged - len(missed)} of {judged} figures"
        if missed:
            named = ", ".join(missed[:_MAX_NAMED])
            more = f" and {len(missed) - _MAX_NAMED} more" if len(missed) > _MAX_NAMED else ""
            text += f"; not met: {named}{more}"
        text += "."
        if hidden:
            text += (
                f" {hidden} hidden or empty {'cell is' if hidden == 1 else 'cells are'} not judged."
            )
        verdict = "all-met" if not missed and judged else "some-missed"
        return f'<p class="target-summary {verdict}">{esc(text)}</p>\n'

    def table(self, stat: Stat, groups: list[tuple[str, ...]], scopes: list[str]) -> str:
        width = max((len(g) for g in groups), default=0)
        dims = list(stat.dims[:width]) + [""] * (width - len(stat.dims))
        heads = ["Area", *(dimension_label(d) if d else "Group" for d in dims)]
        heads += ["Value", "95% interval"]
        if stat.target is not None:
            label = stat.target_label or "target"
            heads.append(label[:1].upper() + label[1:])
        thead = "".join(f'<th scope="col">{esc(h)}</th>' for h in heads)
        cells = self._cells(stat, groups, scopes)
        bodies, dagger = [], False
        for scope in scopes:
            rows = [(g, row) for g, s, row in cells if s == scope]
            trs = []
            for i, (group, row) in enumerate(rows):
                tds = []
                if i == 0:
                    tds.append(
                        f'<th scope="rowgroup" rowspan="{len(rows)}">'
                        f"{esc(self.scope_full(scope))}</th>"
                    )
                padded = list(group) + [""] * (width - len(group))
                tds += [
                    f"<td>{esc(code_label(d, c))}</td>" for d, c in zip(dims, padded, strict=True)
                ]
                cls = ' class="num suppressed"' if row.suppressed else ' class="num"'
                tds.append(f"<td{cls}>{esc(self.text(stat, row))}</td>")
                if row.suppressed or row.value is None:
                    interval = "—"
                elif stat.public:
                    interval = "exact"
                else:
                    interval = format_interval(row.lower, row.upper, stat.unit)
                tds.append(f'<td class="num interval">{esc(interval)}</td>')
                if stat.target is not None:
                    status = self._status(stat, row)
                    if status is None:
                        tds.append("<td>—</td>")
                    else:
                        mark = "<sup>†</sup>" if status[1] else ""
                        dagger = dagger or status[1]
                        cls = "met" if status[0] == "met" else "not-met"
                        tds.append(f'<td class="{cls}">{status[0]}{mark}</td>')
                trs.append(f"<tr>{''.join(tds)}</tr>")
            bodies.append(f"<tbody>{''.join(trs)}</tbody>")
        if stat.secure is not None:
            # where other statistics list each city and county
            bodies.append(
                '<tbody class="secure-only"><tr><th scope="rowgroup">Each city and county</th>'
                f'<td colspan="{len(heads) - 1}">{esc(self.secure_only)}</td></tr></tbody>'
            )
        note = (
            '<p class="table-note">† The 95% interval contains the target: '
            "the difference is within the noise.</p>\n"
            if dagger
            else ""
        )
        return (
            f'<table class="figures"><caption>{esc(stat.title)}: figures</caption>'
            f"<thead><tr>{thead}</tr></thead>{''.join(bodies)}</table>\n{note}"
        )
