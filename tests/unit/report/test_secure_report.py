"""A report with secure statistics, from real verified releases: three real node homes
answer (sealed shares for the secure questions, noisy cells for the plain ones), both
aggregators sum their shares with real keys and noise, the releases pass the analyst's
check, and the report shows province figures only, says so where counties would be,
and explains secure aggregation on its privacy page.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, replace
from typing import Any

import pytest
from securefed import AGGREGATOR, ANALYST, COORDINATOR, YEAR, SecureHomes, make_secure_homes

from fedscreen.crypto.envelope import Envelope
from fedscreen.node import store
from fedscreen.node.requests import handle_query
from fedscreen.policy.default import PROVINCE_FILE, default_policy_dir
from fedscreen.policy.load import load_policy
from fedscreen.protocol import secure
from fedscreen.protocol.answer import VerifiedAnswer, verify_answer
from fedscreen.protocol.combine import discrete_laplace_variance
from fedscreen.protocol.query import SignedQuery, issue_query, new_query_id
from fedscreen.protocol.release import SecureOutcome, check_release, release_body
from fedscreen.query.sqlparse import parse_sql
from fedscreen.report.files import csv_text, normalized
from fedscreen.report.html import render_html
from fedscreen.report.model import build_model, member_names
from fedscreen.report.plan import ReportPlan, load_plan
from fedscreen.report.released import Released
from fedscreen.trust.identity import load_identity
from fedscreen.trust.manifest import Manifest

EPSILON = 0.5
WHERE = f"academic_year = '{YEAR}' AND phq9_valid = 1"
SQL = {
    "s_item9": f"SELECT grade_band, COUNT(*) FROM screenings WHERE {WHERE} AND phq9_item9 = 1 "
    "GROUP BY grade_band",
    "n_valid": f"SELECT grade_band, COUNT(*) FROM screenings WHERE {WHERE} GROUP BY grade_band",
    "s_sex": f"SELECT sex, COUNT(*) FROM screenings WHERE {WHERE} GROUP BY sex",
}
SECURE = ("s_item9", "s_sex")
PLAN = f"""
name = "secure"
title = "Secure test report"
year = "{YEAR}"
[[section]]
id = "p"
title = "Prevalence"
[queries.s_item9]
sql = "{SQL["s_item9"]}"
epsilon = {EPSILON}
secure = true
[queries.n_valid]
sql = "{SQL["n_valid"]}"
epsilon = {EPSILON}
[queries.s_sex]
sql = "{SQL["s_sex"]}"
epsilon = {EPSILON}
secure = true
[[statistic]]
id = "item9"
section = "p"
title = "Item 9"
description = "A rate from a secure count over a plain one."
unit = "percent"
ratio = ["s_item9", "n_valid"]
[[statistic]]
id = "valid"
section = "p"
title = "Valid"
description = "The plain denominators, by county."
unit = "count"
query = "n_valid"
[[statistic]]
id = "by_sex"
section = "p"
title = "By sex"
description = "A secure count as released."
unit = "count"
query = "s_sex"
"""


@dataclass
class Fed:
    homes: SecureHomes
    manifest: Manifest
    plan: ReportPlan
    #: query name -> (signed query, the nodes' verified answers)
    asked: dict[str, tuple[SignedQuery, list[VerifiedAnswer]]]


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Fed:
    root = tmp_path_factory.mktemp("secure-report")
    homes = make_secure_homes(root, varied=True)
    manifest = load_identity(homes.coordinator).manifest()
    (root / "plan.toml").write_text(PLAN, encoding="utf-8")
    plan = load_plan(root / "plan.toml", load_policy(default_policy_dir() / PROVINCE_FILE))
    asked = {name: _ask(homes, manifest, sql, secure=name in SECURE) for name, sql in SQL.items()}
    return Fed(homes, manifest, plan, asked)


def _ask(
    homes: SecureHomes, manifest: Manifest, sql: str, *, secure: bool
) -> tuple[SignedQuery, list[VerifiedAnswer]]:
    key = load_identity(homes.analyst).signing_key()
    unsigned = SignedQuery(
        new_query_id(), ANALYST, 0, replace(parse_sql(sql), secure=secure), EPSILON, None, ()
    )
    query, envelope = issue_query(unsigned, key=key)
    raw = envelope.to_json().encode()
    answers = []
    for node, config in homes.nodes.items():
        conn = store.connect(config.database)
        try:
            signed = handle_query(
                config, config.policy(), manifest, raw, conn=conn, now_ms=query.issued_at_ms
            )
        finally:
            conn.close()
        verified = verify_answer(
            Envelope.from_json(signed),
            manifest=manifest,
            node_id=node,
            expected_query=query,
            public=False,
        )
        answers.append(verified)
    return query, answers


def _partials(fed: Fed, query: SignedQuery, answers: list[VerifiedAnswer]) -> SecureOutcome:
    made = []
    for member, home in ((COORDINATOR, fed.homes.coordinator), (AGGREGATOR, fed.homes.aggregator)):
        key = load_identity(home).signing_key()
        body = secure.aggregate(query, answers, me=member, key=key, academic_year=None, min_nodes=3)
        envelope = secure.sign_partial(
            body, key, query_id=query.query_id, query_sha256=query.digest
        )
        partial = secure.verify_partial(
            envelope, manifest=fed.manifest, aggregator_id=member, expected_query=query
        )
        made.append((envelope.to_json(), partial))
    return SecureOutcome((COORDINATOR, AGGREGATOR), tuple(made))


def _released(
    fed: Fed,
    name: str,
    *,
    failure: str | None = None,
    leave_out: str | None = None,
) -> Released:
    """The verified release of ``name`` (``failure``: a secure one without partials;
    ``leave_out``: a node that did not answer)."""
    query, answers = fed.asked[name]
    answers = [a for a in answers if a.node_id != leave_out]
    outcome = None
    if query.spec.secure:
        outcome = (
            _partials(fed, query, answers)
            if failure is None
            else SecureOutcome((COORDINATOR, AGGREGATOR), failure=failure)
        )
    body = release_body(
        coordinator_id=COORDINATOR, query=query,
        answers={a.node_id: (json.dumps(a.body).encode(), a) for a in answers},
        missing=[leave_out] if leave_out else [], targeted=sorted(fed.homes.nodes),
        threshold=10, public=False, secure=outcome,
    )  # fmt: skip
    body = json.loads(json.dumps(body))
    # the analyst's check of the release against its answers (and both partials)
    check_release(body, query, answers, public=False, manifest=fed.manifest)
    return Released(
        body, {a.node_id: a.body for a in answers}, {a.node_id: EPSILON for a in answers}
    )


def _model(fed: Fed, released: dict[str, Released]) -> dict[str, Any]:
    model = build_model(
        fed.plan, released, [], list(released), names=member_names(fed.manifest),
        analyst=ANALYST, generated_at="2025-07-01T00:00:00+00:00",
    )  # fmt: skip
    result = normalized(model)
    assert isinstance(result, dict)
    return result


def _stats(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for sec in model["sections"] for s in sec["statistics"]}


def test_a_secure_statistic_has_province_figures_only(fed: Fed) -> None:
    released = {name: _released(fed, name) for name in SQL}
    model = _model(fed, released)
    stats = _stats(model)
    nodes = sorted(fed.homes.nodes)
    # the plain statistic: the province and every county
    assert {r["scope"] for r in stats["valid"]["rows"]} == {"province", *nodes}
    assert "secure" not in stats["valid"]
    for sid in ("item9", "by_sex"):
        assert {r["scope"] for r in stats[sid]["rows"]} == {"province"}
        assert stats[sid]["secure"] == {"aggregators": [COORDINATOR, AGGREGATOR], "failure": None}
    # a secure count's rows are the release's province cells, as signed (two draws)
    cells = {tuple(c["group"]): c for c in released["s_sex"].body["province"]}
    for row in stats["by_sex"]["rows"]:
        cell = cells[tuple(row["group"])]
        assert (row["value"], row["lower"], row["upper"]) == (
            cell["value"], cell["lower"], cell["upper"],
        )  # fmt: skip
    # the rate: the secure province total over the plain counts of the same counties
    dens: dict[str, int] = {}
    for node in nodes:
        for cell in released["n_valid"].node_bodies[node]["cells"]:
            dens[cell["group"][0]] = dens.get(cell["group"][0], 0) + int(cell["value"])
    nums = {c["group"][0]: int(c["value"]) for c in released["s_item9"].body["province"]}
    shown = [r for r in stats["item9"]["rows"] if not r["suppressed"]]
    assert shown
    for row in shown:
        band = row["group"][0]
        assert row["value"] == pytest.approx(min(max(nums[band] / dens[band], 0.0), 1.0))
        assert row["lower"] <= row["value"] <= row["upper"]
        # wider than the numerator's two draws alone would make it, never zero
        sd = (2 * discrete_laplace_variance(1 / EPSILON)) ** 0.5 / dens[band]
        assert row["upper"] - row["lower"] >= min(2 * sd, 1.0) * 0.99 or row["upper"] == 1.0
    # the privacy page's facts: the aggregators by name, the statistics from them
    assert model["privacy"]["secure"] == {
        "aggregators": [
            {"id": COORDINATOR, "name": "省平台"},
            {"id": AGGREGATOR, "name": "省统计局"},
        ],
        "statistics": ["item9", "by_sex"],
    }
    html = render_html(model)
    # the reading note, and each statistic's facts and table
    assert html.count("province only: secure aggregation") == 1 + 2 * 2
    assert "in 1 sections; 0 from public data, 2 from secure aggregation" in html
    assert "except, for the figures from secure aggregation, as two random shares" in html
    assert "省平台 (<code>coordinator</code>) and 省统计局 (<code>stats-bureau</code>)" in html
    for line in (
        "split into two random shares, one for each aggregator",
        "added one noise draw",
        "Neither aggregator saw any county’s value",
        "only both together, colluding, could recover",
        "budget was still charged",
    ):
        assert line in html
    for sid in ("item9", "by_sex"):
        assert f'<li><a href="#stat-{sid}">' in html
    # no county row in a secure statistic's table: only the province's and the note
    section = html[html.index('id="stat-by_sex"') :]
    section = section[: section.index("</section>")]
    assert not any(f"county {n}" in section for n in nodes)
    rows = list(csv.DictReader(io.StringIO(csv_text(model))))
    notes = [r for r in rows if r["scope"] == "counties"]
    assert [(r["statistic"], r["display"]) for r in notes] == [
        ("item9", "province only: secure aggregation"),
        ("by_sex", "province only: secure aggregation"),
    ]


def test_a_secure_release_without_figures_shows_its_reason(fed: Fed) -> None:
    reason = "secure aggregation: the second aggregator stats-bureau did not answer in time"
    released = {name: _released(fed, name) for name in SQL}
    released["s_sex"] = _released(fed, "s_sex", failure=reason)
    model = _model(fed, released)
    stat = _stats(model)["by_sex"]
    assert stat["rows"] == []
    assert stat["secure"]["failure"] == reason
    html = render_html(model)
    assert f"No figure: secure aggregation did not complete: {reason}" in html
    rows = list(csv.DictReader(io.StringIO(csv_text(model))))
    (note,) = [r for r in rows if r["statistic"] == "by_sex"]
    assert note["scope"] == "province"
    assert note["display"] == f"no figure: secure aggregation did not complete: {reason}"
    assert note["value"] == ""


def test_a_ratio_whose_parts_cover_different_counties_has_no_figure(fed: Fed) -> None:
    """A secure total cannot lose a county: a denominator without one gives no figure."""
    gone = sorted(fed.homes.nodes)[0]
    released = {name: _released(fed, name) for name in SQL}
    released["n_valid"] = _released(fed, "n_valid", leave_out=gone)
    stat = _stats(_model(fed, released))["item9"]
    (row,) = stat["rows"]
    assert row["value"] is None
    assert row["display"] == "no figure: its two parts cover different counties"
    assert gone in stat["missing"]


def test_a_secure_release_is_read_from_its_province_cells_only(fed: Fed) -> None:
    released = _released(fed, "s_sex")
    assert released.secure
    assert released.failure is None
    assert released.aggregators == [COORDINATOR, AGGREGATOR]
    assert released.scopes() == ["province"]
    scale = 1 / EPSILON
    for (group, part), cell in zip(
        released.parts("province"), released.body["province"], strict=True
    ):
        assert group == cell["group"]
        assert part.value == cell["value"]
        # one draw from each aggregator, at the scale of the query's ε
        assert part.scales == pytest.approx((scale, scale))
    with pytest.raises(ValueError, match="province figures only"):
        released.parts(sorted(fed.homes.nodes)[0])
    failed = _released(fed, "s_sex", failure="no partials")
    assert failed.failure == "no partials"
    assert failed.scopes() == []


def test_the_secure_report_renders_the_same_from_json(fed: Fed) -> None:
    """What ``report verify`` relies on: the model read back from JSON renders the same."""
    model = _model(fed, {name: _released(fed, name) for name in SQL})
    again = json.loads(json.dumps(model, ensure_ascii=False))
    assert render_html(again) == render_html(model)
    assert csv_text(again) == csv_text(model)


def test_a_report_without_secure_statistics_says_nothing_of_them(
    fed: Fed, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("plain") / "plan.toml"
    start = PLAN.index("[queries.s_item9]")
    plain = PLAN[:start] + PLAN[PLAN.index("[queries.n_valid]") : PLAN.index("[queries.s_sex]")]
    plain += PLAN[
        PLAN.index('[[statistic]]\nid = "valid"') : PLAN.index('[[statistic]]\nid = "by_sex"')
    ]
    plain = plain.replace('name = "secure"', 'name = "plain"').replace("Secure test", "Plain test")
    path.write_text(plain, encoding="utf-8")
    plan = load_plan(path, load_policy(default_policy_dir() / PROVINCE_FILE))
    model = normalized(
        build_model(
            plan,
            {"n_valid": _released(fed, "n_valid")},
            [],
            ["n_valid"],
            names=member_names(fed.manifest),
            analyst=ANALYST,
        )
    )
    assert "secure" not in model["privacy"]
    html = render_html(model)
    assert "secure" not in html.lower()
    assert "secure" not in csv_text(model)
