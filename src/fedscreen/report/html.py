"""The provincial monitoring report as one self-contained HTML file.

``render_html(model)`` turns the report model (the JSON-shaped dict that
``fedscreen report run`` builds) into a page that needs nothing else: the style
is inline, the charts are inline SVG, there is no script, font, image or link to
fetch, so the file opens offline and makes no network request (a reader's
browser tells no one that the report was opened). Every text from the model is
HTML-escaped.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from html import escape
from typing import Any, Final

from fedscreen.report._svg import (
    COUNTY_COLOURS,
    PROVINCE_COLOUR,
    Bar,
    Chart,
    Group,
    render_chart,
)
from fedscreen.report._view import Missing, Report, Row, Section, Stat, read_report
from fedscreen.report.format import (
    PROVINCE,
    code_label,
    code_rank,
    dimension_label,
    format_epsilon,
    format_interval,
    format_value,
)

__all__ = ["render_html"]

#: how many cells a target summary names before it says "and N more"
_MAX_NAMED: Final = 8
#: the tallest chart (px as drawn) that fits on an A4 page once scaled to its text width
_PRINT_PAGE_PX: Final = 1000


def render_html(model: Mapping[str, Any]) -> str:
    """The report model as a complete, self-contained HTML document.

    Raises ``ValueError`` naming the field when the model lacks a required field,
    has a value of the wrong type, or uses one statistic id twice.
    """
    report = read_report(model)
    page = _Page(report)
    return "".join(
        [
            "<!DOCTYPE html>\n",
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n',
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
            # belt and braces: even an injected reference could not be fetched
            '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
            "style-src 'unsafe-inline'\">\n",
            '<meta name="referrer" content="no-referrer">\n',
            f"<title>{_e(report.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n",
            '<main class="report">\n',
            page.header(),
            page.summary(),
            page.contents(),
            *(page.section(i, s) for i, s in enumerate(report.sections, start=1)),
            page.privacy(),
            page.verify(),
            "</main>\n</body>\n</html>\n",
        ]
    )


def _e(text: str) -> str:
    return escape(text, quote=True)


class _Page:
    """Rendering with the lookups every part needs (county names, colours, reasons)."""

    def __init__(self, report: Report) -> None:
        self.r = report
        self.k = report.privacy.threshold
        self.names = {n.id: n.name or n.id for n in report.nodes}
        self.areas = {a.id: a for a in report.areas}
        self.names.update({a.id: a.name or a.id for a in report.areas})
        # province, then the cities, then the counties
        scopes = [a.id for a in report.areas] + [n.id for n in report.nodes]
        for stat in report.statistics():
            scopes.extend(row.scope for row in stat.rows if row.scope != PROVINCE)
        self.scope_order = {PROVINCE: 0}
        for scope in scopes:
            self.scope_order.setdefault(scope, len(self.scope_order))
        colours = itertools.cycle(COUNTY_COLOURS)
        self.colours = {
            scope: PROVINCE_COLOUR if scope == PROVINCE else next(colours)
            for scope in self.scope_order
        }
        self.reasons: dict[tuple[str, str], str] = {
            (m.node, m.statistic): m.reason for m in report.privacy.missing
        }

    # --- names ------------------------------------------------------------------------

    def scope_name(self, scope: str) -> str:
        return "Province" if scope == PROVINCE else self.names.get(scope, scope)

    def scope_full(self, scope: str) -> str:
        if scope == PROVINCE:
            return "Province (all counties combined)"
        area = self.areas.get(scope)
        if area is not None:
            counties = ", ".join(self.names.get(c, c) for c in area.counties)
            return f"{area.name or area.id} (city: {counties})"
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

    # --- parts of the page --------------------------------------------------------------

    def header(self) -> str:
        r = self.r
        facts = [
            ("Academic year", _e(r.plan.year)),
            (
                "Plan",
                _e(r.plan.name) + (f" (<code>{_e(r.plan.file)}</code>)" if r.plan.file else ""),
            ),
            ("Plan SHA-256", f'<code class="hash">{_e(r.plan.sha256)}</code>'),
            ("Generated", _e(_when(r.generated_at))),
            ("Analyst", f"<code>{_e(r.analyst)}</code>"),
            ("Coordinator", f"<code>{_e(r.coordinator)}</code>"),
        ]
        rows = "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in facts)
        year = f" · academic year {_e(r.plan.year)}" if r.plan.year else ""
        return (
            '<header class="cover">\n'
            f'<p class="kicker">Provincial monitoring report{year}</p>\n'
            f"<h1>{_e(r.title)}</h1>\n"
            f'<dl class="facts">{rows}</dl>\n</header>\n'
        )

    def summary(self) -> str:
        r = self.r
        nodes = r.nodes
        answered = [n for n in nodes if n.answered > 0]
        lacking = [n for n in nodes if n.missing_from or n.answered < n.asked]
        # budgets are per academic year, so ε is summed per county within a year only:
        # the card shows the report's year, other years (a previous-year figure) below it
        by_year: dict[str, dict[str, float]] = {}
        for s in r.privacy.spent:
            year = by_year.setdefault(s.year, {})
            year[s.node] = year.get(s.node, 0.0) + s.epsilon
        main = r.plan.year if r.plan.year in by_year else next(iter(by_year), "")
        eps = _span(by_year[main].values()) if by_year else "—"
        others = "".join(
            f"; {_e(_span(spent.values()))} in {_e(year)}"
            for year, spent in sorted(by_year.items())
            if year != main
        )
        eps_sub = (
            f'spent in {_e(main)} by this report{others}; see <a href="#privacy">Privacy</a>'
            if by_year
            else "no spending recorded"
        )
        stats = r.statistics()
        public = sum(1 for s in stats if s.public)
        lacking_text = (
            ", ".join(
                f"{_e(self.scope_full(n.id))} ({len(n.missing_from)} "
                f"{'statistic' if len(n.missing_from) == 1 else 'statistics'})"
                for n in lacking
            )
            or "none"
        )
        cards = [
            ("Counties answered", f"{len(answered)} of {len(nodes)}", "county nodes asked"),
            ("Counties missing anything", str(len(lacking)), lacking_text),
            ("ε per county", eps, eps_sub),
            (
                "Statistics",
                str(len(stats)),
                f"in {len(r.sections)} sections; {public} from public data",
            ),
        ]
        body = "".join(
            f'<div class="card"><dt>{k}</dt><dd><span class="big">{_e(v)}</span>'
            f'<span class="sub">{sub}</span></dd></div>'
            for k, v, sub in cards
        )
        return (
            '<section id="summary" class="summary" aria-labelledby="summary-h">\n'
            f'<h2 id="summary-h">Summary</h2>\n<dl class="cards">{body}</dl>\n'
            '<p class="howto"><strong>Reading the figures.</strong> Figures from student '
            "records carry random noise added at each county (differential privacy); "
            "whiskers and the “95% interval” columns show how far the noise may move them. "
            f"A noisy count below {self.k} is shown as “&lt; {self.k}” and drawn without a bar. "
            "Figures marked “public data, exact” come from the schools’ own tables and have "
            "no noise. Province figures combine the counties that answered.</p>\n"
            "</section>\n"
        )

    def contents(self) -> str:
        items = []
        for i, section in enumerate(self.r.sections, start=1):
            stats = "".join(
                f'<li><a href="#stat-{_e(s.id)}">{_item(s)}{_e(s.title)}</a></li>'
                for s in section.statistics
            )
            items.append(
                f'<li><a href="#part-{_e(section.id)}">{i}. {_e(section.title)}</a>'
                f"<ol>{stats}</ol></li>"
            )
        items.append('<li><a href="#privacy">Privacy</a></li>')
        items.append('<li><a href="#verify">How to verify</a></li>')
        return (
            '<nav id="contents" class="toc" aria-labelledby="contents-h">\n'
            f'<h2 id="contents-h">Contents</h2>\n<ol>{"".join(items)}</ol>\n</nav>\n'
        )

    def section(self, number: int, section: Section) -> str:
        stats = "".join(self.statistic(s) for s in section.statistics)
        return (
            f'<section class="part" id="part-{_e(section.id)}">\n'
            f"<h2>{number}. {_e(section.title)}</h2>\n{stats}</section>\n"
        )

    def statistic(self, stat: Stat) -> str:
        groups, scopes = self.ordered(stat)
        if stat.public:
            cost = "public data, exact (no noise, no privacy cost)"
        else:
            cost = f"ε = {format_epsilon(stat.epsilon)} at each county"
        facts = [f"<li><strong>Privacy cost:</strong> {_e(cost)}</li>"]
        if stat.dims:
            dims = " × ".join(dimension_label(d) for d in stat.dims)
            facts.append(f"<li><strong>By:</strong> {_e(dims)}</li>")
        if stat.queries:
            queries = ", ".join(f"<code>{_e(q)}</code>" for q in stat.queries)
            facts.append(f"<li><strong>Signed releases:</strong> {queries}</li>")
        parts = [
            f'<section class="stat" id="stat-{_e(stat.id)}">\n',
            f'<p class="stat-id">{_item(stat)}<code>{_e(stat.id)}</code></p>\n',
            f"<h3>{_e(stat.title)}</h3>\n",
        ]
        if stat.description:
            parts.append(f'<p class="desc">{_e(stat.description)}</p>\n')
        parts.append(f'<ul class="stat-facts">{"".join(facts)}</ul>\n')
        missing = [self.missing_text(stat, n) for n in stat.missing]
        if not stat.rows:
            why = (
                "no county contributed. Missing: " + "; ".join(missing)
                if missing
                else "the release has no cells for this statistic."
            )
            parts.append(f'<p class="notice empty">No figures: {_e(why)}</p>\n</section>\n')
            return "".join(parts)
        if missing:
            parts.append(
                '<p class="notice missing"><strong>Not included:</strong> '
                f"{_e('; '.join(missing))}. Province figures combine the other counties only.</p>\n"
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
                "Horizontal bars, one per area (province first, then each county) "
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
        return f'<p class="target-summary {verdict}">{_e(text)}</p>\n'

    def table(self, stat: Stat, groups: list[tuple[str, ...]], scopes: list[str]) -> str:
        width = max((len(g) for g in groups), default=0)
        dims = list(stat.dims[:width]) + [""] * (width - len(stat.dims))
        heads = ["Area", *(dimension_label(d) if d else "Group" for d in dims)]
        heads += ["Value", "95% interval"]
        if stat.target is not None:
            label = stat.target_label or "target"
            heads.append(label[:1].upper() + label[1:])
        thead = "".join(f'<th scope="col">{_e(h)}</th>' for h in heads)
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
                        f"{_e(self.scope_full(scope))}</th>"
                    )
                padded = list(group) + [""] * (width - len(group))
                tds += [
                    f"<td>{_e(code_label(d, c))}</td>" for d, c in zip(dims, padded, strict=True)
                ]
                cls = ' class="num suppressed"' if row.suppressed else ' class="num"'
                tds.append(f"<td{cls}>{_e(self.text(stat, row))}</td>")
                if row.suppressed or row.value is None:
                    interval = "—"
                elif stat.public:
                    interval = "exact"
                else:
                    interval = format_interval(row.lower, row.upper, stat.unit)
                tds.append(f'<td class="num interval">{_e(interval)}</td>')
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
        note = (
            '<p class="table-note">† The 95% interval contains the target: '
            "the difference is within the noise.</p>\n"
            if dagger
            else ""
        )
        return (
            f'<table class="figures"><caption>{_e(stat.title)}: figures</caption>'
            f"<thead><tr>{thead}</tr></thead>{''.join(bodies)}</table>\n{note}"
        )

    def privacy(self) -> str:
        p = self.r.privacy
        k = self.k
        spent = "".join(
            "<tr>"
            f'<th scope="row">{_e(self.scope_name(s.node))}</th><td><code>{_e(s.node)}</code></td>'
            f"<td>{_e(s.year)}</td>"
            f'<td class="num">{format_epsilon(s.epsilon)}</td>'
            f'<td class="num">{_eps_or(s.budget, "not reported")}</td>'
            f'<td class="num">{_eps_or(s.left, "—")}</td>'
            "</tr>"
            for s in sorted(p.spent, key=lambda s: (self.scope_order.get(s.node, 1 << 30), s.year))
        )
        spent_table = (
            '<table class="spent"><caption>ε spent by this report, per county and year</caption>'
            '<thead><tr><th scope="col">County</th><th scope="col">Code</th>'
            '<th scope="col">Academic year</th><th scope="col">ε spent by this report</th>'
            '<th scope="col">Budget for the year</th><th scope="col">Left</th></tr></thead>'
            f"<tbody>{spent}</tbody></table>\n"
            if p.spent
            else '<p class="notice">No privacy spending was recorded for this report.</p>\n'
        )
        missing = self._missing_list()
        missing_table = (
            '<table class="missing-list"><caption>Counties missing from statistics</caption>'
            '<thead><tr><th scope="col">Statistic</th><th scope="col">County</th>'
            '<th scope="col">Reason</th></tr></thead><tbody>'
            + "".join(
                f'<tr><td><a href="#stat-{_e(m.statistic)}">{_e(title)}</a> '
                f"<code>{_e(m.statistic)}</code></td>"
                f"<td>{_e(self.scope_full(m.node))}</td>"
                f"<td>{_e(m.reason or 'did not answer')}</td></tr>"
                for m, title in missing
            )
            + "</tbody></table>\n"
            if missing
            else "<p>Every county contributed to every statistic.</p>\n"
        )
        mechanism = f"<p>{_e(p.mechanism)}</p>\n" if p.mechanism else ""
        return (
            '<section id="privacy" class="privacy" aria-labelledby="privacy-h">\n'
            '<h2 id="privacy-h">Privacy</h2>\n'
            "<h3>What is protected</h3>\n"
            f"<p>The unit of privacy is <strong>{_e(p.unit)}</strong>: each figure in this "
            "report would have been about as likely to come out the same had any one student’s "
            "records for one academic year been left out, so no figure reveals whether a "
            "particular student was screened or what their answers were.</p>\n"
            f"{mechanism}"
            "<ul>"
            "<li><strong>Noise at the source.</strong> Each county node adds the noise to its "
            "own answer before anything leaves it; student records and exact counts never "
            "leave the county.</li>"
            "<li><strong>Pure ε-differential privacy.</strong> The ε of every answer a county "
            "gives about a year adds up; the smaller the total, the stronger the protection.</li>"
            "<li><strong>Budgets.</strong> Each county keeps its own budget per academic year "
            "and per analyst, charges it before answering and refuses a query that would "
            "exceed it.</li>"
            f"<li><strong>Small cells.</strong> A noisy count below the provincial publication "
            f"threshold k = {k} is shown as “&lt; {k}”. This is done on values that are "
            "already noisy (post-processing), so it costs no budget.</li>"
            "<li><strong>Public data.</strong> Figures marked “public data, exact” come from "
            "the schools’ public tables; they carry no noise and cost nothing.</li>"
            "</ul>\n"
            "<h3>Privacy budget spent by this report</h3>\n"
            f"{spent_table}"
            "<h3>Counties missing from statistics</h3>\n"
            f"{missing_table}"
            "</section>\n"
        )

    def _missing_list(self) -> list[tuple[Missing, str]]:
        """Every (node, statistic) gap with its reason, in report order."""
        out: list[tuple[Missing, str]] = []
        listed: set[tuple[str, str]] = set()
        titles = {s.id: s.title for s in self.r.statistics()}
        for stat in self.r.statistics():
            for node in stat.missing:
                if (node, stat.id) not in listed:
                    listed.add((node, stat.id))
                    out.append(
                        (Missing(node, stat.id, self.reasons.get((node, stat.id), "")), stat.title)
                    )
        for m in self.r.privacy.missing:
            if (m.node, m.statistic) not in listed:
                listed.add((m.node, m.statistic))
                out.append((m, titles.get(m.statistic, m.statistic)))
        return out

    def verify(self) -> str:
        return (
            '<section id="verify" class="verify" aria-labelledby="verify-h">\n'
            '<h2 id="verify-h">How to verify</h2>\n'
            "<p>Every figure here was computed from signed releases only. The signed "
            "releases, with the signed queries and county answers they combine, are in the "
            "<code>releases/</code> folder next to this report; each statistic above names the "
            "releases it came from. <code>fedscreen audit verify</code> checks them against the "
            "coordinator’s and the counties’ transparency logs. The plan’s SHA-256 on the first "
            "page identifies the exact plan that was run.</p>\n"
            "</section>\n"
        )


def _span(values: Iterable[float]) -> str:
    """ "2.35", or "2.2 – 2.35" when the values differ."""
    texts = sorted({format_epsilon(v) for v in values}, key=float)
    return texts[0] if len(texts) == 1 else f"{texts[0]} – {texts[-1]}"


def _eps_or(epsilon: float | None, absent: str) -> str:
    return format_epsilon(epsilon) if epsilon is not None else absent


def _item(stat: Stat) -> str:
    return f'<span class="item">Item {stat.item}</span> ' if stat.item is not None else ""


def _when(iso: str) -> str:
    """An ISO 8601 time as "2025-07-01 08:30 UTC"; anything else as it is."""
    try:
        when = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if when.tzinfo is None:
        return iso
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


_CSS: Final = """
:root {
  --ink: #1a1a1a; --muted: #555; --rule: #c9ced6; --soft: #f2f3f5;
  --accent: #0b4f8a; --warn: #8a4b00;
}
* { box-sizing: border-box; }
body {
  margin: 0; background: #fff; color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", "Helvetica Neue", Arial,
    "Noto Sans CJK SC", "Source Han Sans SC", "PingFang SC", "Microsoft YaHei",
    "WenQuanYi Micro Hei", sans-serif;
}
.report { max-width: 800px; margin: 0 auto; padding: 32px 20px 48px; }
h1 { font-size: 26px; line-height: 1.25; margin: 4px 0 16px; color: var(--accent); }
h2 {
  font-size: 20px; margin: 40px 0 12px; padding-bottom: 4px;
  border-bottom: 2px solid var(--accent); color: var(--accent);
}
h3 { font-size: 17px; margin: 4px 0 6px; }
a { color: var(--accent); }
code {
  font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: .86em;
}
.kicker {
  margin: 0; text-transform: uppercase; letter-spacing: .06em; font-size: 12px;
  color: var(--muted);
}
.cover { border-bottom: 1px solid var(--rule); padding-bottom: 12px; }
.facts {
  display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0;
  font-size: 14px;
}
.facts div { display: contents; }
.facts dt { color: var(--muted); }
.facts dd { margin: 0; }
.hash { word-break: break-all; }
.cards { display: grid; grid-template-columns: repeat(4, 1fr); gap: 10px; margin: 0; }
.card {
  border: 1px solid var(--rule); border-radius: 4px; padding: 10px 12px; background: var(--soft);
}
.card dt { font-size: 13px; color: var(--muted); font-weight: 600; }
.card dd { margin: 0; }
.card .big { display: block; font-size: 24px; font-weight: 600; }
.card .sub { display: block; font-size: 12px; color: var(--muted); }
.howto { font-size: 13.5px; color: #333; border-left: 3px solid var(--rule); padding-left: 10px; }
.toc ol { list-style: none; padding-left: 0; margin: 4px 0; }
.toc > ol > li { margin-top: 6px; font-weight: 600; }
.toc ol ol { font-weight: 400; font-size: 14px; padding-left: 22px; }
.toc a { text-decoration: none; }
.toc a:hover { text-decoration: underline; }
.item {
  display: inline-block; background: var(--accent); color: #fff; font-size: 11px;
  font-weight: 600; padding: 0 6px; border-radius: 3px; margin-right: 4px;
}
.toc .item {
  background: none; color: var(--muted); padding: 0; font-weight: 400; min-width: 4.2em;
}
.stat { margin: 28px 0 36px; padding-top: 4px; border-top: 1px solid var(--rule); }
.part > h2 + .stat { border-top: none; margin-top: 12px; }
.stat-id { margin: 8px 0 2px; font-size: 12px; color: var(--muted); }
.desc { margin: 2px 0 6px; }
.stat-facts {
  list-style: none; padding: 0; margin: 0 0 8px; font-size: 13px; color: #333;
  display: flex; flex-wrap: wrap; gap: 2px 18px;
}
.notice {
  font-size: 14px; background: #fff6e5; border-left: 3px solid #e69f00;
  padding: 6px 10px; margin: 6px 0;
}
.empty { background: #fdecea; border-left-color: #d55e00; }
figure.chart { margin: 8px 0; }
figure.chart svg { display: block; width: 100%; max-width: 760px; height: auto; }
figcaption { font-size: 12px; color: var(--muted); margin-top: 2px; }
.target-summary { font-size: 14px; margin: 6px 0; }
.target-summary.some-missed { color: var(--warn); }
table {
  border-collapse: collapse; min-width: 66%; font-size: 13px; margin: 8px 0;
  font-variant-numeric: tabular-nums;
}
table.spent, table.missing-list { width: 100%; }
caption { text-align: left; font-size: 12px; color: var(--muted); padding-bottom: 2px; }
th, td {
  padding: 3px 12px 3px 8px; border-bottom: 1px solid #e3e6ea; text-align: left;
  vertical-align: top;
}
th[scope=rowgroup], .missing-list td:nth-child(2) { white-space: nowrap; }
thead th {
  border-bottom: 2px solid var(--rule); font-weight: 600; background: var(--soft);
  white-space: nowrap;
}
tbody { border-top: 1px solid var(--rule); }
td.num { text-align: right; white-space: nowrap; }
td.suppressed { color: var(--muted); font-style: italic; }
td.met { color: #00603f; }
td.not-met { color: var(--warn); font-weight: 600; }
sup { line-height: 0; }
.table-note { font-size: 12px; color: var(--muted); margin: 0; }
.privacy ul { padding-left: 20px; }
.privacy li { margin: 4px 0; }
@media (max-width: 700px) { .cards { grid-template-columns: repeat(2, 1fr); } }
@page { size: A4; margin: 16mm 14mm; }
@media print {
  body { font-size: 10pt; }
  .report { max-width: none; padding: 0; }
  h2, h3, .stat-id { break-after: avoid; }
  figure.chart, .card, tr { break-inside: avoid; }
  figure.chart.tall { break-inside: auto; }
  .toc { break-after: page; }
  .privacy { break-before: page; }
  a { color: inherit; text-decoration: none; }
  .card, thead th, .item { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""
