"""The report page's style sheet, inlined into its ``<style>`` element.

Plain CSS with nothing to fetch (system fonts only); the ``@media print`` rules
lay the page out on A4.
"""

from __future__ import annotations

from typing import Final

__all__ = ["CSS"]

CSS: Final = """
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
