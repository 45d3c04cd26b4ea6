"""The provincial monitoring report as one self-contained HTML file.

``render_html(model)`` turns the report model (the JSON-shaped dict that
``fedscreen report run`` builds) into a page that needs nothing else: the style
is inline, the charts are inline SVG, there is no script, font, image or link to
fetch, so the file opens offline and makes no network request (a reader's
browser tells no one that the report was opened). Every text from the model is
HTML-escaped.

This module renders the page around the statistics (cover, summary, contents,
privacy, how to verify); the statistics' sections are in ``_sections`` and the
style sheet in ``_css``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from fedscreen.report._css import CSS
from fedscreen.report._sections import Sections, esc, item_badge
from fedscreen.report._view import Missing, Report, read_report
from fedscreen.report.format import PROVINCE, format_epsilon
from fedscreen.report.versions import ReleaseUse, read_versions

__all__ = ["render_html"]

#: the cover's kicker by the kind of scope the report covers (the part before ":")
_KICKERS: Final = {
    "province": "Provincial monitoring",
    "city": "City monitoring",
    "county": "County monitoring",
}


def render_html(model: Mapping[str, Any]) -> str:
    """The report model as a complete, self-contained HTML document.

    Raises ``ValueError`` naming the field when the model lacks a required field,
    has a value of the wrong type, or uses one statistic id twice.
    """
    page = _Page(read_report(model), read_versions(model))
    report = page.r
    return "".join(
        [
            "<!DOCTYPE html>\n",
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n',
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
            # belt and braces: even an injected reference could not be fetched
            '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
            "style-src 'unsafe-inline'\">\n",
            '<meta name="referrer" content="no-referrer">\n',
            f"<title>{esc(report.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n",
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


class _Page(Sections):
    """The whole page: cover, summary, contents, the sections, privacy, how to verify."""

    def __init__(self, report: Report, versions: tuple[ReleaseUse, ...]) -> None:
        super().__init__(report)
        #: the release version each query used (none: a report from before versions)
        self.versions = versions

    # --- parts of the page around the statistics ----------------------------------------

    def header(self) -> str:
        r = self.r
        facts = [
            ("Academic year", esc(r.plan.year)),
            (
                "Plan",
                esc(r.plan.name) + (f" (<code>{esc(r.plan.file)}</code>)" if r.plan.file else ""),
            ),
            ("Plan SHA-256", f'<code class="hash">{esc(r.plan.sha256)}</code>'),
            ("Generated", esc(_when(r.generated_at))),
            ("Analyst", f"<code>{esc(r.analyst)}</code>"),
            ("Coordinator", f"<code>{esc(r.coordinator)}</code>"),
        ]
        if r.scope != PROVINCE:
            facts.insert(0, ("Covers", f"{esc(r.scope_name)} (<code>{esc(r.scope)}</code>)"))
        if r.compared is not None:
            facts.append(
                (
                    "Compared with",
                    f"{esc(r.compared[0])} (report.json SHA-256 "
                    f'<code class="hash">{esc(r.compared[1])}</code>)',
                )
            )
        rows = "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in facts)
        year = f" · academic year {esc(r.plan.year)}" if r.plan.year else ""
        kicker = _KICKERS.get(r.scope.split(":")[0], "Monitoring")
        return (
            '<header class="cover">\n'
            f'<p class="kicker">{esc(kicker)} report{year}</p>\n'
            f"<h1>{esc(r.title)}</h1>\n"
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
            f"; {esc(_span(spent.values()))} in {esc(year)}"
            for year, spent in sorted(by_year.items())
            if year != main
        )
        eps_sub = (
            f'spent in {esc(main)} by this report{others}; see <a href="#privacy">Privacy</a>'
            if by_year
            else "no spending recorded"
        )
        stats = r.statistics()
        public = sum(1 for s in stats if s.public)
        lacking_text = (
            ", ".join(
                f"{esc(self.scope_full(n.id))} ({len(n.missing_from)} "
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
                f"in {len(r.sections)} sections; {public} from public data"
                + (
                    f", {sum(1 for s in stats if s.secure is not None)} from secure aggregation"
                    if r.privacy.secure is not None
                    else ""
                ),
            ),
        ]
        body = "".join(
            f'<div class="card"><dt>{k}</dt><dd><span class="big">{esc(v)}</span>'
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
            "no noise. "
            + (
                "Province figures combine the counties that answered."
                if r.scope == PROVINCE
                else f"{esc(r.scope_name)} figures combine its nodes that answered"
                + (
                    "; the province figures beside them are the province’s published ones."
                    if r.compared is not None
                    else "."
                )
            )
            + (
                " Figures marked “province only: secure aggregation” are province totals "
                "whose noise the two aggregators added, with no county or city figure "
                '(see <a href="#secure">Secure aggregation</a>).'
                if r.privacy.secure is not None
                else ""
            )
            + "</p>\n"
            "</section>\n"
        )

    def contents(self) -> str:
        items = []
        for i, section in enumerate(self.r.sections, start=1):
            stats = "".join(
                f'<li><a href="#stat-{esc(s.id)}">{item_badge(s)}{esc(s.title)}</a></li>'
                for s in section.statistics
            )
            items.append(
                f'<li><a href="#part-{esc(section.id)}">{i}. {esc(section.title)}</a>'
                f"<ol>{stats}</ol></li>"
            )
        items.append('<li><a href="#privacy">Privacy</a></li>')
        items.append('<li><a href="#verify">How to verify</a></li>')
        return (
            '<nav id="contents" class="toc" aria-labelledby="contents-h">\n'
            f'<h2 id="contents-h">Contents</h2>\n<ol>{"".join(items)}</ol>\n</nav>\n'
        )

    def privacy(self) -> str:
        p = self.r.privacy
        k = self.k
        spent = "".join(
            "<tr>"
            f'<th scope="row">{esc(self.scope_name(s.node))}</th>'
            f"<td><code>{esc(s.node)}</code></td>"
            f"<td>{esc(s.year)}</td>"
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
                f'<tr><td><a href="#stat-{esc(m.statistic)}">{esc(title)}</a> '
                f"<code>{esc(m.statistic)}</code></td>"
                f"<td>{esc(self.scope_full(m.node))}</td>"
                f"<td>{esc(m.reason or 'did not answer')}</td></tr>"
                for m, title in missing
            )
            + "</tbody></table>\n"
            if missing
            else "<p>Every county contributed to every statistic.</p>\n"
        )
        mechanism = f"<p>{esc(p.mechanism)}</p>\n" if p.mechanism else ""
        return (
            '<section id="privacy" class="privacy" aria-labelledby="privacy-h">\n'
            '<h2 id="privacy-h">Privacy</h2>\n'
            "<h3>What is protected</h3>\n"
            f"<p>The unit of privacy is <strong>{esc(p.unit)}</strong>: each figure in this "
            "report would have been about as likely to come out the same had any one student’s "
            "records for one academic year been left out, so no figure reveals whether a "
            "particular student was screened or what their answers were.</p>\n"
            f"{mechanism}"
            "<ul>"
            "<li><strong>Noise at the source.</strong> Each county node adds the noise to its "
            "own answer before anything leaves it; student records and exact counts never "
            "leave the county"
            + (
                " (except, for the figures from secure aggregation, as two random shares "
                "that neither aggregator can read alone: see below)"
                if p.secure is not None
                else ""
            )
            + ".</li>"
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
            f"{self._measured()}"
            f"{self._secure()}"
            "<h3>Privacy budget spent by this report</h3>\n"
            f"{spent_table}"
            "<h3>Counties missing from statistics</h3>\n"
            f"{missing_table}"
            "</section>\n"
        )

    def _measured(self) -> str:
        """The compiled plan's measured tables, if it had any."""
        m = self.r.privacy.measure
        if m is None:
            return ""
        rows = "".join(
            f"<tr><td><code>{esc(t.name)}</code></td>"
            f"<td>{esc(' × '.join(t.attributes))} ({t.cells} cells)</td>"
            f"<td>{esc(format_epsilon(t.epsilon))}</td>"
            f"<td>{esc(', '.join(t.serves))}</td></tr>"
            for t in m.tables
        )
        return (
            "<h3>Measured once, used many times</h3>\n"
            f"<p>This plan spends at most <strong>ε = {esc(format_epsilon(m.epsilon))} per "
            f"county and academic year</strong> ({esc(format_epsilon(m.spent))} in the "
            "report’s year). Rather than asking one noisy question per figure, each county "
            f"answered {len(m.tables)} noisy tables once; the figures of the questions each "
            "table serves are sums of its cells (post-processing: free), so parts add up "
            "to their wholes and counties to their cities and the province.</p>\n"
            '<table class="measured"><caption>The measured tables</caption><thead><tr>'
            '<th scope="col">Table</th><th scope="col">Counts students by</th>'
            '<th scope="col">ε per county</th><th scope="col">Serves</th></tr></thead>'
            f"<tbody>{rows}</tbody></table>\n"
            + (
                '<p class="notice">The tables of '
                + esc(", ".join(self.scope_full(n) for n in m.disagreeing))
                + " disagree with one another beyond their noise: their figures come from "
                "each question's own table alone, and the data should be checked.</p>\n"
                if m.disagreeing
                else ""
            )
        )

    def _secure(self) -> str:
        """Which figures came from secure aggregation, by whom, and what that means."""
        secure = self.r.privacy.secure
        if secure is None:
            return ""
        titles = {s.id: s.title for s in self.r.statistics()}
        stats = "".join(
            f'<li><a href="#stat-{esc(sid)}">{esc(titles.get(sid, sid))}</a> '
            f"<code>{esc(sid)}</code></li>"
            for sid in secure.statistics
        )
        who = " and ".join(
            f"{esc(name or ident)} (<code>{esc(ident)}</code>)"
            for ident, name in secure.aggregators
        )
        return (
            '<h3 id="secure">Secure aggregation</h3>\n'
            "<p>These figures are province totals from secure aggregation, with no county "
            f"or city figure; the two aggregators were {who}:</p>\n"
            f'<ul class="secure-list">{stats}</ul>\n'
            "<p>Each county’s exact counts for these questions were split into two random "
            "shares, one for each aggregator, so that a share alone says nothing about the "
            "count. Each aggregator added up its shares over the same counties and added one "
            "noise draw before signing its sum; the province figure is the sum of the two, with "
            "two noise draws in all instead of one per county. Neither aggregator saw any "
            "county’s value, which only both together, colluding, could recover; each county’s "
            "privacy budget was still charged for these questions, as for any other.</p>\n"
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
            f"{self._versions()}"
            "</section>\n"
        )

    def _versions(self) -> str:
        """Which release version each query's figures used, and the nodes it combines."""
        if not self.versions:
            return ""
        uses = "; ".join(
            f"<code>{esc(u.name)}</code> version {u.version} ({u.answered} of {u.targeted} "
            "nodes answered)"
            for u in self.versions
        )
        later = sum(u.version > 1 for u in self.versions)
        note = (
            f" {later} of them a later version, adding answers that came late."
            if later
            else " Each is the first release of its query."
        )
        return f'<p class="versions">Releases used: {uses}.{note}</p>\n'


def _span(values: Iterable[float]) -> str:
    """ "2.35", or "2.2 – 2.35" when the values differ."""
    texts = sorted({format_epsilon(v) for v in values}, key=float)
    return texts[0] if len(texts) == 1 else f"{texts[0]} – {texts[-1]}"


def _eps_or(epsilon: float | None, absent: str) -> str:
    return format_epsilon(epsilon) if epsilon is not None else absent


def _when(iso: str) -> str:
    """An ISO 8601 time as "2025-07-01 08:30 UTC"; anything else as it is."""
    try:
        when = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if when.tzinfo is None:
        return iso
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
