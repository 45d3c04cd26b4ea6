"""The report's HTML: complete, escaped, self-contained, and saying what the model says."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from html_models import (
    NODES,
    REFUSED,
    THRESHOLD,
    Element,
    all_stats,
    parse,
    realistic_model,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedscreen.report._svg import nice_axis
from fedscreen.report.format import format_interval, format_tick, format_value
from fedscreen.report.html import render_html


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    return realistic_model()


@pytest.fixture(scope="module")
def page(model: dict[str, Any]) -> str:
    return render_html(model)


@pytest.fixture(scope="module")
def dom(page: str) -> Element:
    return parse(page)


def _stat(model: dict[str, Any], stat_id: str) -> dict[str, Any]:
    return next(s for s in all_stats(model) if s["id"] == stat_id)


def _cells(section: Element) -> list[Element]:
    """The chart's cells (one per row drawn) of a statistic's section."""
    return section.find_all("g", "cell")


def test_the_page_is_a_complete_document(page: str, dom: Element) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert dom.iter("html").__next__().attrs["lang"] == "en"
    meta = [e.attrs for e in dom.iter("meta")]
    assert {"charset": "utf-8"} in meta
    assert json.dumps(realistic_model())  # the model really is JSON-shaped


def test_every_statistic_has_one_section_with_its_id_and_title(
    model: dict[str, Any], dom: Element
) -> None:
    for stat in all_stats(model):
        section = dom.by_id(f"stat-{stat['id']}")
        assert section.tag == "section"
        assert section.find_all("h3")[0].text() == stat["title"]
        assert stat["id"] in [c.text() for c in section.find_all("code")]
        if stat["item"] is not None:
            assert section.find_all("span", "item")[0].text() == f"Item {stat['item']}"
        # the table of contents links to it
        assert any(a.attrs.get("href") == f"#stat-{stat['id']}" for a in dom.iter("a"))


def test_statistics_are_grouped_in_their_sections(model: dict[str, Any], dom: Element) -> None:
    for section in model["sections"]:
        part = dom.by_id(f"part-{section['id']}")
        inside = [e.attrs["id"] for e in part.find_all("section", "stat")]
        assert inside == [f"stat-{s['id']}" for s in section["statistics"]]


def test_suppressed_cells_show_less_than_k_and_draw_no_bar(
    model: dict[str, Any], dom: Element
) -> None:
    checked = 0
    for stat in all_stats(model):
        if not stat["rows"]:
            continue
        section = dom.by_id(f"stat-{stat['id']}")
        cells = _cells(section)
        assert len(cells) == len(stat["rows"])
        suppressed = [c for c in cells if c.attrs["data-suppressed"] == "true"]
        assert len(suppressed) == sum(r["suppressed"] for r in stat["rows"])
        for cell in suppressed:
            assert cell.find_all("rect", "bar") == []
            assert cell.find_all("line", "whisker") == []
            assert [t.text() for t in cell.find_all("text", "suppressed")] == [f"< {THRESHOLD}"]
            checked += 1
        for cell in cells:
            if cell not in suppressed:
                assert len(cell.find_all("rect", "bar")) == 1
        # the table says "< 10" in the same places
        table_cells = section.find_all("td", "suppressed")
        assert [td.text() for td in table_cells] == [f"< {THRESHOLD}"] * len(suppressed)
    assert checked >= 10  # the model has suppressed cells in several statistics


def test_a_statistic_whose_cells_are_all_suppressed_still_appears(dom: Element) -> None:
    section = dom.by_id("stat-upi_item25")
    assert section.find_all("rect", "bar") == []
    assert "Every cell is below the publication threshold" in section.text()
    # no scale under an empty chart (it would only suggest values near 0)
    assert "%" not in "".join(t.text() for t in section.find_all("g", "grid")[0].iter("text"))


def test_intervals_are_drawn_and_tabulated(model: dict[str, Any], dom: Element) -> None:
    stat = _stat(model, "phq9_positive")
    section = dom.by_id("stat-phq9_positive")
    shown = [r for r in stat["rows"] if not r["suppressed"]]
    assert len(section.find_all("line", "whisker")) == len(shown)
    intervals = [td.text() for td in section.find_all("td", "interval")]
    for row in shown:
        assert format_interval(row["lower"], row["upper"], "percent") in intervals
    first = shown[0]
    assert re.fullmatch(
        r"\d+\.\d% – \d+\.\d%", format_interval(first["lower"], first["upper"], "percent")
    )


def test_no_reference_leaves_the_file(page: str, dom: Element) -> None:
    for needle in ("http://", "https://", "//", "url(", "@import", "src=", "<script", "<link"):
        assert needle not in page.lower(), needle
    for element in dom.iter():
        assert element.tag not in {"script", "link", "img", "iframe", "object", "embed", "image"}
        for name, value in element.attrs.items():
            assert not name.startswith("on"), name
            if name in {"href", "src", "xlink:href", "action", "srcset", "poster", "data"}:
                assert value.startswith("#"), (name, value)


def test_hostile_text_is_escaped() -> None:
    model = realistic_model()
    hostile = '<script>alert("x")</script>'
    model["nodes"][0]["name"] = hostile
    model["title"] = "<img src=x onerror=alert(1)> & report"
    model["plan"]["name"] = '"><b>plan</b>'
    stat = _stat(model, "phq9_positive")
    stat["title"] = "</h3><iframe>"
    stat["description"] = "a & b < c"
    stat["rows"][0]["group"] = ["<i>band</i>", "F"]
    model["privacy"]["missing"][0]["reason"] = "<b>refused</b>"
    page = render_html(model)
    dom = parse(page)
    for tag in ("<script>", "<iframe>", "<img"):
        assert tag not in page
    for element in dom.iter():
        assert element.tag not in {"script", "iframe", "img", "i", "b"}
        assert not any(name.startswith("on") for name in element.attrs)
    text = dom.text()
    for raw in (hostile, "<img src=x onerror=alert(1)> & report", "</h3><iframe>", "a & b < c"):
        assert raw in text
    assert dom.find_all("title")[0].text() == model["title"]
    assert dom.by_id("stat-phq9_positive").find_all("h3")[0].text() == "</h3><iframe>"
    # the legend names the county by its (hostile) name, as text
    legend = dom.by_id("stat-phq9_positive").find_all("g", "legend")[0]
    assert f"{hostile} (130102)" in [t.text() for t in legend.iter("text")]


def test_hostile_statistic_id_stays_an_attribute_value() -> None:
    model = realistic_model()
    stat = _stat(model, "coverage")
    stat["id"] = '"><script>x</script>'
    dom = parse(render_html(model))
    section = dom.by_id('stat-"><script>x</script>')
    assert section.tag == "section"
    assert not dom.find_all("script")


def test_privacy_page_lists_epsilon_per_node_and_year(model: dict[str, Any], dom: Element) -> None:
    privacy = dom.by_id("privacy")
    rows = [
        [c.text() for c in tr.children if isinstance(c, Element)]
        for tr in privacy.find_all("table", "spent")[0].iter("tr")
    ]
    body = rows[1:]
    assert len(body) == len(model["privacy"]["spent"])
    names = dict(NODES)
    for spent in model["privacy"]["spent"]:
        row = [names[spent["node"]], spent["node"], spent["year"]]
        match = [r for r in body if r[:3] == row]
        assert len(match) == 1, row
        eps, budget, left = match[0][3:]
        assert eps == f"{spent['epsilon']:g}"
        assert budget == (f"{spent['budget']:g}" if spent["budget"] is not None else "not reported")
        assert left == (f"{spent['left']:g}" if spent["left"] is not None else "—")
    text = privacy.text()
    for words in (
        "one student in one academic year",
        "pure ε-differential privacy",
        "before anything leaves it",
        "per academic year and per analyst",
        "post-processing",
        f"k = {THRESHOLD}",
    ):
        assert words.lower() in text.lower(), words
    # the privacy page starts a printed page
    assert re.search(r"\.privacy\s*\{\s*break-before:\s*page", page_css(dom))


def page_css(dom: Element) -> str:
    return "".join(style.text() for style in dom.iter("style"))


def test_missing_nodes_are_named_with_reasons(dom: Element) -> None:
    trend = dom.by_id("stat-phq9_trend")
    notice = trend.find_all("p", "missing")[0].text()
    assert "井陉县 (130121)" in notice
    assert REFUSED in notice
    # no row, no bar for the county that refused
    assert "130121" not in [c.attrs["data-scope"] for c in _cells(trend)]
    listing = dom.by_id("privacy").find_all("table", "missing-list")[0]
    rows = [tr.text() for tr in listing.iter("tr")][1:]
    assert any("phq9_trend" in r and "井陉县 (130121)" in r and REFUSED in r for r in rows)
    assert sum("referral_unknown_county" in r for r in rows) == 3


def test_a_statistic_without_rows_says_why(dom: Element) -> None:
    section = dom.by_id("stat-referral_unknown_county")
    assert section.find_all("svg") == []
    assert section.find_all("table") == []
    text = section.find_all("p", "empty")[0].text()
    assert "no county contributed" in text
    for node, name in NODES:
        assert f"{name} ({node}): no answer before the deadline" in text


def test_public_statistic_is_exact_and_costs_nothing(dom: Element) -> None:
    section = dom.by_id("stat-teacher_share")
    assert "public data, exact" in section.text()
    assert section.find_all("line", "whisker") == []
    assert {td.text() for td in section.find_all("td", "interval")} == {"exact"}


def test_target_line_and_verdicts(model: dict[str, Any], dom: Element) -> None:
    section = dom.by_id("stat-teacher_share")
    target = section.find_all("g", "target")[0]
    assert target.find_all("line")[0].attrs["stroke-dasharray"]
    assert target.text() == "target 95%"
    verdicts = [td.text() for td in section.iter("td") if td.classes() & {"met", "not-met"}]
    values = [r["value"] for r in _stat(model, "teacher_share")["rows"]]
    assert verdicts == ["met" if v >= 0.95 else "not met" for v in values]
    assert "met by 1 of 4 figures" in section.find_all("p", "target-summary")[0].text()
    # the target line sits at 95% of the axis
    svg = section.find_all("svg")[0]
    ticks = {t.text(): float(t.attrs["x"]) for t in svg.find_all("g", "grid")[0].iter("text")}
    x = float(target.find_all("line")[0].attrs["x1"])
    assert x == pytest.approx(ticks["80%"] + 0.75 * (ticks["100%"] - ticks["80%"]), abs=0.2)


def test_percent_axis_fits_the_data_not_always_100(dom: Element) -> None:
    svg = dom.by_id("stat-phq9_positive").find_all("svg")[0]
    ticks = [t.text() for t in svg.find_all("g", "grid")[0].iter("text")]
    assert ticks[0] == "0%"
    assert "100%" not in ticks
    assert ticks[-1] in {"30%", "35%", "40%"}


def test_negative_changes_extend_the_axis_left(dom: Element) -> None:
    svg = dom.by_id("stat-phq9_trend").find_all("svg")[0]
    ticks = [t.text() for t in svg.find_all("g", "grid")[0].iter("text")]
    assert ticks[0].startswith("−")
    assert "0%" in ticks


def test_chart_height_grows_with_rows(dom: Element) -> None:
    def height(stat_id: str) -> float:
        return float(dom.by_id(f"stat-{stat_id}").find_all("svg")[0].attrs["height"])

    # 54 cells (9 grades × 2 sexes × 3 areas) against 40 and 4
    assert height("mht_obvious") > height("phq9_positive") > 4 * height("teacher_share") / 2
    assert height("mht_obvious") / 54 == pytest.approx(height("phq9_positive") / 40, rel=0.15)


def test_charts_are_accessible(model: dict[str, Any], dom: Element) -> None:
    svgs = dom.find_all("svg", "chart")
    assert len(svgs) == sum(1 for s in all_stats(model) if s["rows"])
    for svg in svgs:
        assert svg.attrs["role"] == "img"
        for ident in svg.attrs["aria-labelledby"].split():
            assert dom.by_id(ident).tag in {"title", "desc"}
        assert svg.find_all("title")[0].text()


def test_codes_are_labelled_and_counties_named(dom: Element) -> None:
    section = dom.by_id("stat-phq9_positive")
    groups = [t.own_text() for t in section.find_all("text", "group-label")]
    assert groups[:2] == ["Upper primary · Male", "Upper primary · Female"]
    assert groups[-1] == "University freshmen · Female"
    legend = [t.text() for t in section.find_all("g", "legend")[0].iter("text")]
    assert legend == ["Province (all counties combined)"] + [f"{n} ({c})" for c, n in NODES]
    headers = [th.text() for th in section.find_all("thead")[0].iter("th")]
    assert headers == ["Area", "Grade band", "Sex", "Value", "95% interval"]


def test_flag_columns_read_as_words(dom: Element) -> None:
    section = dom.by_id("stat-teacher_share")
    assert [t.own_text() for t in section.find_all("text", "group-label")] == [
        "Has a mental-health teacher"
    ]
    headers = [th.text() for th in section.find_all("thead")[0].iter("th")]
    assert headers[:2] == ["Area", "Factor"]


def test_summary_counts(dom: Element) -> None:
    cards = {
        card.find_all("dt")[0].text(): card.find_all("span", "big")[0].text()
        for card in dom.by_id("summary").find_all("div", "card")
    }
    assert cards["Counties answered"] == "3 of 3"
    assert cards["Counties missing anything"] == "3"
    # per year: budgets are yearly; the previous year's spending is named apart
    assert cards["ε per county"] == "2.2 – 2.35"
    sub = dom.by_id("summary").find_all("div", "card")[2].find_all("span", "sub")[0].text()
    assert "in 2024-2025" in sub
    assert "0.15 in 2023-2024" in sub
    assert cards["Statistics"] == "10"


def test_header_names_the_plan_and_people(model: dict[str, Any], dom: Element) -> None:
    header = dom.find_all("header", "cover")[0].text()
    for value in (
        model["plan"]["name"],
        model["plan"]["sha256"],
        model["analyst"],
        model["coordinator"],
        model["plan"]["year"],
        "2025-07-01 08:30 UTC",
    ):
        assert value in header


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (0.2144, "percent", "21.4%"),
        (0.0, "percent", "0.0%"),
        (-0.0004, "percent", "0.0%"),
        (-0.012, "percent", "−1.2%"),
        (12345, "count", "12,345"),
        (812.5, "count", "812"),
        (3512.44, "ratio", "3,512.4"),
        (17.5, "days", "17.5 days"),
        (None, "count", "—"),
        (float("nan"), "count", "—"),
    ],
)
def test_number_formats(value: float | None, unit: str, text: str) -> None:
    assert format_value(value, unit) == text


def test_axis_steps_are_round() -> None:
    assert nice_axis(0, 0.234) == pytest.approx((0, 0.25, 0.05))
    assert nice_axis(0, 1041) == pytest.approx((0, 1250, 250))
    assert nice_axis(-0.021, 0.023) == pytest.approx((-0.03, 0.03, 0.01))
    assert format_tick(0.025, "percent", 0.025) == "2.5%"
    assert format_tick(0.2, "percent", 0.05) == "20%"
    assert format_tick(1250, "count", 250) == "1,250"


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("title",), None, "title is missing"),
        (("privacy", "threshold"), "ten", "privacy.threshold must be an integer"),
        (("sections", 1, "statistics", 0, "unit"), "litres", "unit 'litres'"),
        (
            ("sections", 1, "statistics", 0, "rows", 2, "value"),
            "1",
            "rows[2].value must be a number",
        ),
    ],
)
def test_a_malformed_model_is_refused_naming_the_field(
    path: tuple[Any, ...], value: Any, message: str
) -> None:
    model = realistic_model()
    where: Any = model
    for key in path[:-1]:
        where = where[key]
    if value is None:
        del where[path[-1]]
    else:
        where[path[-1]] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        render_html(model)


def test_duplicate_statistic_ids_are_refused() -> None:
    model = realistic_model()
    model["sections"][0]["statistics"].append(copy.deepcopy(_stat(model, "phq9_positive")))
    with pytest.raises(ValueError, match="phq9_positive"):
        render_html(model)


# --- any model renders to a well-formed page ---------------------------------------------

_text = st.text(max_size=30)
_number = st.one_of(
    st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**6), 10**6)
)


@st.composite
def _models(draw: st.DrawFn) -> dict[str, Any]:
    node_ids = draw(st.lists(_text, max_size=4, unique=True))
    scopes = st.sampled_from(["province", *node_ids, "unknown-county"])
    dims = draw(st.lists(_text, max_size=3))

    def row() -> dict[str, Any]:
        return {
            "scope": draw(scopes),
            "group": draw(st.lists(st.one_of(_text, st.integers(0, 1)), max_size=len(dims) + 1)),
            "value": draw(_number),
            "lower": draw(_number),
            "upper": draw(_number),
            "display": draw(_text),
            "suppressed": draw(st.booleans()),
        }

    stat_ids = draw(st.lists(_text, min_size=1, max_size=5, unique=True))
    stats = [
        {
            "id": stat_id,
            "item": draw(st.one_of(st.none(), st.integers(1, 18))),
            "title": draw(_text),
            "description": draw(_text),
            "unit": draw(st.sampled_from(["percent", "count", "days", "ratio"])),
            "dims": dims,
            "target": draw(_number),
            "target_label": draw(st.one_of(st.none(), _text)),
            "epsilon": draw(st.floats(0, 10)),
            "public": draw(st.booleans()),
            "queries": draw(st.lists(_text, max_size=2)),
            "missing": draw(st.lists(st.sampled_from([*node_ids, "x"]), max_size=2)),
            "rows": [row() for _ in range(draw(st.integers(0, 6)))],
        }
        for stat_id in stat_ids
    ]
    cut = draw(st.integers(0, len(stats)))
    return {
        "title": draw(_text),
        "plan": {
            "name": draw(_text),
            "file": draw(_text),
            "sha256": draw(_text),
            "year": draw(_text),
        },
        "generated_at": draw(_text),
        "analyst": draw(_text),
        "coordinator": draw(_text),
        "nodes": [
            {
                "id": n,
                "name": draw(_text),
                "asked": 3,
                "answered": draw(st.integers(0, 3)),
                "missing_from": [],
            }
            for n in node_ids
        ],
        "privacy": {
            "unit": draw(_text),
            "mechanism": draw(_text),
            "threshold": draw(st.integers(0, 100)),
            "spent": [
                {
                    "node": n,
                    "year": draw(_text),
                    "epsilon": draw(st.floats(0, 10)),
                    "budget": draw(_number),
                    "left": draw(_number),
                }
                for n in node_ids
            ],
            "missing": [
                {"node": draw(_text), "statistic": s, "reason": draw(_text)} for s in stat_ids[:2]
            ],
        },
        "sections": [
            {"id": "a", "title": draw(_text), "statistics": stats[:cut]},
            {"id": "b", "title": draw(_text), "statistics": stats[cut:]},
        ],
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_models())
def test_any_model_renders_a_well_formed_page(model: dict[str, Any]) -> None:
    page = render_html(model)
    dom = parse(page)  # asserts every element is closed, in order
    ids = [e.attrs["id"] for e in dom.iter() if "id" in e.attrs]
    assert len(ids) == len(set(ids))
    for stat in all_stats(model):
        section = dom.by_id(f"stat-{stat['id']}")  # exactly once
        assert section.find_all("h3")[0].text() == stat["title"]
    assert not dom.find_all("script")
    bars = dom.find_all("rect", "bar")
    drawn = [r for s in all_stats(model) for r in s["rows"] if not r["suppressed"]]
    assert len(bars) <= len(drawn)
    for cell in dom.find_all("g", "cell"):
        if cell.attrs["data-suppressed"] == "true":
            assert not cell.find_all("rect", "bar")
