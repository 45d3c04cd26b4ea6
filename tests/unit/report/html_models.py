"""Report models for the HTML renderer's tests, shaped like ``fedscreen report run``'s.

Three real Hebei counties; a grade band × sex statistic with four scopes (40 rows)
and small suppressed cells; a grade × sex statistic large enough to test a tall
chart; a statistic one county refused; public (exact) staffing figures with a
target; a change that goes below zero; a statistic whose cells are all
suppressed and one with no rows at all. Also a strict HTML tree builder, so the
tests assert on structure rather than on substrings.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

THRESHOLD = 10
NODES = [("130102", "长安区"), ("130104", "桥西区"), ("130121", "井陉县")]
SCOPES = ["province"] + [node for node, _ in NODES]
BANDS = ["upper_primary", "junior", "senior", "vocational", "university"]
GRADES = ["P4", "P5", "P6", "J7", "J8", "J9", "S10", "S11", "S12"]
REFUSED = "refused: the query would exceed the county's ε budget for 2023-2024"


def _rate_row(rng: random.Random, scope: str, group: list[Any], p: float, n: int) -> dict[str, Any]:
    """A noisy rate over ``n`` students; "< 10" when the noisy numerator is small."""
    if p * n < THRESHOLD:
        return {
            "scope": scope,
            "group": group,
            "value": None,
            "lower": None,
            "upper": None,
            "display": f"< {THRESHOLD}",
            "suppressed": True,
        }
    value = min(max(p + rng.gauss(0, 0.01), 0.0), 1.0)
    half = 1.96 * (value * (1 - value) / n) ** 0.5 + 0.004
    return {
        "scope": scope,
        "group": group,
        "value": value,
        "lower": value - half,
        "upper": value + half,
        "display": f"{value * 100:.1f}%",
        "suppressed": False,
    }


def _count_row(rng: random.Random, scope: str, group: list[Any], mean: float) -> dict[str, Any]:
    value = round(mean + rng.gauss(0, 3))
    if value < THRESHOLD:
        return {
            "scope": scope,
            "group": group,
            "value": None,
            "lower": None,
            "upper": None,
            "display": f"< {THRESHOLD}",
            "suppressed": True,
        }
    return {
        "scope": scope,
        "group": group,
        "value": value,
        "lower": value - 16.5,
        "upper": value + 16.5,
        "display": f"{value:,}",
        "suppressed": False,
    }


def _stat(**fields: Any) -> dict[str, Any]:
    stat: dict[str, Any] = {
        "item": None,
        "description": "",
        "dims": [],
        "target": None,
        "target_label": None,
        "epsilon": 0.1,
        "public": False,
        "queries": [fields["id"]],
        "missing": [],
        "rows": [],
    }
    stat.update(fields)
    return stat


def realistic_model(seed: int = 7) -> dict[str, Any]:
    """A complete report model (JSON-serialisable), the same for the same seed."""
    rng = random.Random(seed)
    size = {"province": 13000, "130102": 6000, "130104": 4500, "130121": 2500}
    band_p = dict(zip(BANDS, (0.10, 0.20, 0.23, 0.22, 0.14), strict=True))
    band_n = dict(zip(BANDS, (0.3, 0.3, 0.25, 0.1, 0.05), strict=True))

    coverage = _stat(
        id="coverage",
        item=1,
        title="Screening coverage by grade band",
        description="Students screened this year (noisy count) over the students eligible "
        "for screening in the schools' own tables (public, exact).",
        unit="percent",
        dims=["grade_band"],
        target=0.95,
        target_label="target 95%",
        epsilon=0.15,
        queries=["screened", "eligible"],
        rows=[
            _rate_row(rng, scope, [band], 0.96 - 0.02 * i, 3000)
            for band in BANDS
            for i, scope in enumerate(SCOPES)
        ],
    )
    phq9 = _stat(
        id="phq9_positive",
        item=3,
        title="PHQ-9 ≥ 10 (screen-positive for depression) by grade band and sex",
        description="Share of valid PHQ-9 results with a total of 10 or more.",
        unit="percent",
        dims=["grade_band", "sex"],
        epsilon=0.25,
        rows=[
            _rate_row(
                rng,
                scope,
                [band, sex],
                band_p[band] * (1.15 if sex == "F" else 0.87),
                # 井陉县 has few university freshmen: its cells are suppressed
                int(size[scope] * band_n[band] / 2)
                if scope != "130121" or band != "university"
                else 30,
            )
            for band in BANDS
            for sex in ("M", "F")
            for scope in SCOPES
        ],
    )
    mht = _stat(
        id="mht_obvious",
        item=7,
        title="MHT content total ≥ 65 by grade",
        description="Share of valid MHT results with a content total of 65 or more.",
        unit="percent",
        dims=["grade", "sex"],
        epsilon=0.15,
        rows=[
            _rate_row(
                rng, scope, [grade, sex], 0.015 if grade.startswith("P") else 0.05, size[scope] // 9
            )
            for grade in GRADES
            for sex in ("M", "F")
            for scope in ["province", "130102", "130104"]
        ],
    )
    warnings = _stat(
        id="warning_levels",
        item=9,
        title="Warnings in force by level",
        description="Students with a yellow, orange or red warning this year (noisy counts).",
        unit="count",
        dims=["warning_level"],
        epsilon=0.2,
        queries=["warnings"],
        rows=[
            _count_row(rng, scope, [level], size[scope] * share)
            for level, share in (("yellow", 0.08), ("orange", 0.03), ("red", 0.004))
            for scope in SCOPES
        ],
    )
    interview = _stat(
        id="interview_days",
        item=10,
        title="Median days from screening to the second-stage interview",
        description="Exponential-mechanism median over interviewed students, per county.",
        unit="days",
        rows=[
            {
                "scope": node,
                "group": [],
                "value": days,
                "lower": days - 3,
                "upper": days + 4,
                "display": f"{days:.1f}",
                "suppressed": False,
            }
            for (node, _), days in zip(NODES, (12.0, 17.5, 26.0), strict=True)
        ],
    )
    risk_small = _stat(
        id="upi_item25",
        item=8,
        title="University freshmen: UPI item 25 (suicidal thoughts) by sex",
        description="Share of valid UPI results answering yes to item 25.",
        unit="percent",
        dims=["sex"],
        rows=[_rate_row(rng, scope, [sex], 0.01, 200) for sex in ("M", "F") for scope in SCOPES],
    )
    teachers = _stat(
        id="teacher_share",
        item=15,
        title="Schools with a mental-health teacher",
        description="Primary and secondary schools with at least one mental-health teacher "
        "(school tables, exact).",
        unit="percent",
        dims=["factor"],  # the "flags" form: the group is the flag's column name
        target=0.95,
        target_label="target 95%",
        epsilon=0.0,
        public=True,
        queries=["school_staffing"],
        rows=[
            {
                "scope": scope,
                "group": ["has_mh_teacher"],
                "value": share,
                "lower": None,
                "upper": None,
                "display": f"{share * 100:.1f}%",
                "suppressed": False,
            }
            for scope, share in zip(SCOPES, (0.912, 0.975, 0.9, 0.74), strict=True)
        ],
    )
    ratio = _stat(
        id="students_per_teacher",
        item=17,
        title="Students per mental-health teacher",
        description="Students eligible for screening per mental-health teacher (exact).",
        unit="ratio",
        epsilon=0.0,
        public=True,
        queries=["students", "teachers"],
        rows=[
            {
                "scope": scope,
                "group": [],
                "value": size[scope] / teachers_n,
                "lower": None,
                "upper": None,
                "display": f"{size[scope] / teachers_n:,.1f}",
                "suppressed": False,
            }
            for scope, teachers_n in zip(SCOPES, (9, 4, 3, 2), strict=True)
        ],
    )
    trend = _stat(
        id="phq9_trend",
        item=18,
        title="Change in the PHQ-9 ≥ 10 rate from the previous year",
        description="This year's rate minus last year's, in percentage points.",
        unit="percent",
        epsilon=0.15,
        missing=["130121"],
        rows=[
            {
                "scope": scope,
                "group": [],
                "value": change,
                "lower": change - 0.012,
                "upper": change + 0.012,
                "display": f"{change * 100:.1f}%",
                "suppressed": False,
            }
            for scope, change in zip(SCOPES[:3], (0.006, 0.011, -0.009), strict=True)
        ],
    )
    referral = _stat(
        id="referral_unknown_county",
        item=11,
        title="Referrals with a confirmed visit",
        description="Share of referred students whose visit to a specialist was confirmed.",
        unit="percent",
        missing=["130102", "130104", "130121"],
        rows=[],
    )
    nodes = []
    for node, name in NODES:
        missing_from = [s["id"] for s in (trend, referral) if node in s["missing"]]
        nodes.append(
            {
                "id": node,
                "name": name,
                "asked": 24,
                "answered": 24 - len(missing_from),
                "missing_from": missing_from,
            }
        )
    privacy_missing = [
        {"node": "130121", "statistic": "phq9_trend", "reason": REFUSED},
        *(
            {
                "node": node,
                "statistic": "referral_unknown_county",
                "reason": "no answer before the deadline",
            }
            for node, _ in NODES
        ),
    ]
    return copy.deepcopy(
        {
            "title": "Student mental-health screening — annual monitoring report 2024-2025",
            "plan": {
                "name": "annual",
                "file": "policies/reports/annual.toml",
                "sha256": "9f2c4e1b7a0d5e3f" * 4,
                "year": "2024-2025",
            },
            "generated_at": "2025-07-01T08:30:00+00:00",
            "analyst": "analyst-hebei-mhc",
            "coordinator": "coordinator-hebei",
            "nodes": nodes,
            "privacy": {
                "unit": "one student in one academic year",
                "mechanism": "Each county answers with pure ε-differential privacy: counts and "
                "sums get discrete Laplace noise, medians use the exponential mechanism, "
                "both from OpenDP, calibrated to one student's largest possible effect.",
                "threshold": THRESHOLD,
                "spent": [
                    {
                        "node": "130102",
                        "year": "2024-2025",
                        "epsilon": 2.35,
                        "budget": 3.6,
                        "left": 1.25,
                    },
                    {
                        "node": "130102",
                        "year": "2023-2024",
                        "epsilon": 0.15,
                        "budget": 3.6,
                        "left": 0.4,
                    },
                    {
                        "node": "130104",
                        "year": "2024-2025",
                        "epsilon": 2.35,
                        "budget": 8.0,
                        "left": 5.65,
                    },
                    {
                        "node": "130104",
                        "year": "2023-2024",
                        "epsilon": 0.15,
                        "budget": 8.0,
                        "left": 6.1,
                    },
                    {
                        "node": "130121",
                        "year": "2024-2025",
                        "epsilon": 2.2,
                        "budget": None,
                        "left": None,
                    },
                ],
                "missing": privacy_missing,
            },
            "sections": [
                {
                    "id": "coverage",
                    "title": "Screening coverage and response",
                    "statistics": [coverage],
                },
                {
                    "id": "prevalence",
                    "title": "Screening results",
                    "statistics": [phq9, mht, risk_small],
                },
                {
                    "id": "warnings",
                    "title": "Early warning, referral and follow-up",
                    "statistics": [warnings, interview, referral],
                },
                {
                    "id": "staffing",
                    "title": "Mental-health teachers and counselling rooms",
                    "statistics": [teachers, ratio],
                },
                {"id": "trend", "title": "Change from the previous year", "statistics": [trend]},
            ],
        }
    )


def all_stats(model: dict[str, Any]) -> list[dict[str, Any]]:
    """Every statistic of ``model`` in order."""
    return [stat for section in model["sections"] for stat in section["statistics"]]


# --- a strict DOM for assertions ---------------------------------------------------------

VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}
    | {"track", "wbr"}
)


@dataclass
class Element:
    """One element of a parsed page: tag, attributes, children (elements and text)."""

    tag: str
    attrs: dict[str, str]
    children: list[Element | str] = field(default_factory=list)

    def text(self) -> str:
        """All text inside, in order."""
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def own_text(self) -> str:
        """The text directly inside (not in child elements such as an SVG <title>)."""
        return "".join(c for c in self.children if isinstance(c, str))

    def iter(self, tag: str | None = None) -> Iterator[Element]:
        """This element and every descendant (with ``tag`` only, if given)."""
        if tag is None or self.tag == tag:
            yield self
        for child in self.children:
            if isinstance(child, Element):
                yield from child.iter(tag)

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def find_all(self, tag: str | None = None, cls: str | None = None) -> list[Element]:
        return [e for e in self.iter(tag) if cls is None or cls in e.classes()]

    def by_id(self, ident: str) -> Element:
        found = [e for e in self.iter() if e.attrs.get("id") == ident]
        assert len(found) == 1, f"{len(found)} elements with id {ident!r}"
        return found[0]


class StrictTreeBuilder(HTMLParser):
    """Builds an Element tree and fails on any unclosed or misnested tag."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]
        self.doctype: str | None = None

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = [name for name, _ in attrs]
        assert len(names) == len(set(names)), f"<{tag}> repeats an attribute: {names}"
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        assert tag not in VOID, f"</{tag}> closes a void element"
        open_tag = self.stack[-1].tag
        assert open_tag == tag, f"</{tag}> closes <{open_tag}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(document: str) -> Element:
    """Parse ``document`` strictly: every element closed, in order; returns the root."""
    builder = StrictTreeBuilder()
    builder.feed(document)
    builder.close()
    assert builder.stack == [builder.root], f"unclosed: {[e.tag for e in builder.stack[1:]]}"
    return builder.root
