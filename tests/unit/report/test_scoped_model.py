"""City, county and province reports from real signed answers: areas from node places,
the top row labelled with the report's scope, universities' own rows, the province's
published figures beside a city's, and the scope checks ``report verify`` makes.

Five real node homes answer each query (signed answers from synthetic data); the
releases are built and checked the way the coordinator and the analyst do. The places
are the model's input, as the manifest gives them: one node stands as a school node of
130104 and one as a university, so areas and rows can be checked against them.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from securefed import ANALYST, COORDINATOR, YEAR, SecureHomes, make_secure_homes

from fedscreen.crypto.envelope import Envelope
from fedscreen.errors import ConfigError, VerificationError
from fedscreen.node import store
from fedscreen.node.requests import handle_query
from fedscreen.policy.default import PROVINCE_FILE, default_policy_dir
from fedscreen.policy.load import load_policy
from fedscreen.protocol.answer import VerifiedAnswer, verify_answer
from fedscreen.protocol.query import SignedQuery, issue_query, new_query_id
from fedscreen.protocol.release import check_release, release_body
from fedscreen.query.sqlparse import parse_sql
from fedscreen.report.compare import ProvinceReport
from fedscreen.report.files import QueryRun, csv_text, normalized
from fedscreen.report.html import render_html
from fedscreen.report.model import build_model, member_names
from fedscreen.report.plan import ReportPlan, load_plan
from fedscreen.report.released import Released
from fedscreen.report.run import scope_nodes
from fedscreen.report.verify import _check_scope
from fedscreen.trust.identity import load_identity
from fedscreen.trust.manifest import Manifest

EPSILON = 0.5
NODES = ("130104", "130105", "130107", "130202", "130203")
CITY = ("130104", "130105", "130107")
#: 130105 stands as a school node of 130104, 130203 as a university
PLACES = {
    "130104": "county:130104",
    "130105": "county:130104",
    "130107": "county:130107",
    "130202": "county:130202",
    "130203": "province",
}
SQL = f"SELECT sex, COUNT(*) FROM screenings WHERE academic_year = '{YEAR}' GROUP BY sex"
PLAN = f"""
name = "scoped"
title = "Scoped test report"
year = "{YEAR}"
[[section]]
id = "p"
title = "Prevalence"
[[section]]
id = "universities"
title = "Universities"
[queries.by_sex]
sql = "{SQL}"
epsilon = {EPSILON}
[[statistic]]
id = "by_sex"
section = "p"
title = "Screened by sex"
description = "Screenings by sex."
unit = "count"
query = "by_sex"
[[statistic]]
id = "by_sex_u"
section = "universities"
title = "Screened by sex, per university"
description = "Freshmen screened by sex, at each university."
unit = "count"
query = "by_sex"
"""
WHEN = "2025-07-01T00:00:00+00:00"


@dataclass
class Fed:
    homes: SecureHomes
    manifest: Manifest
    plan: ReportPlan


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Fed:
    root = tmp_path_factory.mktemp("scoped-report")
    homes = make_secure_homes(root, students=120, nodes=NODES, varied=True)
    (root / "plan.toml").write_text(PLAN, encoding="utf-8")
    plan = load_plan(root / "plan.toml", load_policy(default_policy_dir() / PROVINCE_FILE))
    return Fed(homes, load_identity(homes.coordinator).manifest(), plan)


def _released(fed: Fed, targeted: tuple[str, ...]) -> Released:
    """The verified release of the plan's query, asked of ``targeted`` only."""
    key = load_identity(fed.homes.analyst).signing_key()
    unsigned = SignedQuery(new_query_id(), ANALYST, 0, parse_sql(SQL), EPSILON, None, targeted)
    query, envelope = issue_query(unsigned, key=key)
    answers: list[VerifiedAnswer] = []
    for node in targeted:
        config = fed.homes.nodes[node]
        conn = store.connect(config.database)
        try:
            signed = handle_query(
                config, config.policy(), fed.manifest, envelope.to_json().encode(), conn=conn,
                now_ms=query.issued_at_ms,
            )  # fmt: skip
        finally:
            conn.close()
        answers.append(
            verify_answer(
                Envelope.from_json(signed),
                manifest=fed.manifest,
                node_id=node,
                expected_query=query,
                public=False,
            )
        )
    body = release_body(
        coordinator_id=COORDINATOR, query=query,
        answers={a.node_id: (json.dumps(a.body).encode(), a) for a in answers},
        missing=[], targeted=list(targeted), threshold=10, public=False,
    )  # fmt: skip
    body = json.loads(json.dumps(body))
    check_release(body, query, answers, public=False, manifest=fed.manifest)
    return Released(
        body, {a.node_id: a.body for a in answers}, {a.node_id: EPSILON for a in answers}
    )


def _model(fed: Fed, released: Released, **kwargs: Any) -> dict[str, Any]:
    model = normalized(
        build_model(
            fed.plan,
            {"by_sex": released},
            [],
            ["by_sex"],
            names=member_names(fed.manifest),
            analyst=ANALYST,
            places=PLACES,
            generated_at=WHEN,
            **kwargs,
        )
    )
    assert isinstance(model, dict)
    return model


def _stats(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for sec in model["sections"] for s in sec["statistics"]}


def _values(stat: dict[str, Any], scope: str) -> dict[str, float]:
    return {r["group"][0]: r["value"] for r in stat["rows"] if r["scope"] == scope}


@pytest.fixture(scope="module")
def province(fed: Fed) -> dict[str, Any]:
    return _model(fed, _released(fed, NODES))


@pytest.fixture(scope="module")
def city(fed: Fed, province: dict[str, Any]) -> dict[str, Any]:
    published = ProvinceReport.from_bytes(json.dumps(province, ensure_ascii=False).encode())
    return _model(fed, _released(fed, CITY), scope="city:1301", province=published)


def test_a_province_report_has_city_and_county_rows_from_places(
    fed: Fed, province: dict[str, Any]
) -> None:
    assert [(a["id"], a["kind"], a["nodes"]) for a in province["areas"]] == [
        ("city:1301", "city", ["130104", "130105", "130107"]),
        ("county:130104", "county", ["130104", "130105"]),
    ]  # 唐山 has one county node: its row would be that node's
    assert province["places"] == PLACES
    assert province["universities"] == ["130203"]
    assert province["scope"] == {"id": "province", "kind": "province", "name": "Province",
                                 "nodes": list(NODES)}  # fmt: skip
    stat = _stats(province)["by_sex"]
    nodes = {n: _values(stat, n) for n in NODES}
    # a city's and a county's counts are their nodes' noisy counts added up
    for area, members in (("city:1301", CITY), ("county:130104", ("130104", "130105"))):
        for sex, value in _values(stat, area).items():
            assert value == sum(nodes[n][sex] for n in members)
    assert _values(stat, "province") == {
        s: sum(nodes[n][s] for n in NODES) for s in _values(stat, "province")
    }


def test_the_universities_section_shows_each_university_only(province: dict[str, Any]) -> None:
    rows = _stats(province)["by_sex_u"]["rows"]
    assert {r["scope"] for r in rows} == {"province", "130203"}
    html = render_html(province)
    assert "Provincial monitoring report" in html


def test_a_city_report_is_the_citys_total_then_its_counties(city: dict[str, Any]) -> None:
    assert city["scope"]["id"] == "city:1301"
    assert city["scope"]["name"] == "石家庄市"
    assert city["scope"]["nodes"] == list(CITY)
    assert city["title"].endswith("— 石家庄市")
    assert [a["id"] for a in city["areas"]] == ["county:130104"]
    stat = _stats(city)["by_sex"]
    own = {r["scope"] for r in stat["rows"]}
    # the top row is the city total, never labelled "province"; no other city's node
    assert own == {"city:1301", "county:130104", *CITY}
    nodes = {n: _values(stat, n) for n in CITY}
    assert _values(stat, "city:1301") == {
        s: sum(nodes[n][s] for n in CITY) for s in _values(stat, "city:1301")
    }
    assert "city:1301" in csv_text(city)
    assert ",province," not in csv_text(city)
    html = render_html(city)
    assert "City monitoring report" in html
    assert "石家庄市 (total: all its nodes combined)" in html


def test_a_city_report_shows_the_provinces_published_figures(
    city: dict[str, Any], province: dict[str, Any]
) -> None:
    published = _stats(province)["by_sex"]
    beside = _stats(city)["by_sex"]["province"]
    assert beside["queries"] == published["queries"]
    assert beside["rows"] == [r for r in published["rows"] if r["scope"] == "province"]
    assert city["province_report"]["releases"] == province["releases"]
    html = render_html(city)
    assert "Province (from the province’s published report)" in html
    assert f"<code>{published['queries'][0]}</code>), not asked again" in html


def test_only_a_province_report_of_the_same_plan_is_compared(
    fed: Fed, city: dict[str, Any], province: dict[str, Any], tmp_path: Path
) -> None:
    ProvinceReport.from_bytes(json.dumps(province).encode()).check_for(fed.plan)
    with pytest.raises(ConfigError, match="covers city:1301"):
        ProvinceReport.from_bytes(json.dumps(city).encode()).check_for(fed.plan)
    other = json.loads(json.dumps(province))
    other["plan"]["sha256"] = "0" * 64
    with pytest.raises(ConfigError, match="not this plan"):
        ProvinceReport.from_bytes(json.dumps(other).encode()).check_for(fed.plan)
    other = json.loads(json.dumps(province))
    other["plan"]["year"] = "2023-2024"
    with pytest.raises(ConfigError, match="is for 2023-2024"):
        ProvinceReport.from_bytes(json.dumps(other).encode()).check_for(fed.plan)
    with pytest.raises(ConfigError, match="not JSON"):
        ProvinceReport.from_bytes(b"\xff")
    # a province report narrowed to some nodes (--nodes) is not the province's figure
    asked = [n["id"] for n in province["nodes"]]
    ProvinceReport.from_bytes(json.dumps(province).encode()).check_for(fed.plan, asked)
    narrowed = json.loads(json.dumps(province))
    narrowed["nodes"] = narrowed["nodes"][:1]
    with pytest.raises(ConfigError, match="did not ask"):
        ProvinceReport.from_bytes(json.dumps(narrowed).encode()).check_for(fed.plan, asked)


def _scoped(manifest: Manifest, scope: str) -> Manifest:
    """The manifest with the analyst's scope set (as the authority would issue it)."""
    members = tuple(
        replace(m, scope=scope) if m.id == ANALYST else replace(m, scope=PLACES.get(m.id, m.scope))
        for m in manifest.members
    )
    return replace(manifest, members=members)


def test_a_scope_asks_exactly_its_active_nodes(fed: Fed) -> None:
    province = _scoped(fed.manifest, "")
    assert scope_nodes(province, analyst=ANALYST, scope=None) == ("province", sorted(NODES))
    assert scope_nodes(province, analyst=ANALYST, scope="city:1301") == ("city:1301", list(CITY))
    # the school node of 130104 is in its county; the university in no city or county
    assert scope_nodes(province, analyst=ANALYST, scope="county:130104") == (
        "county:130104", ["130104", "130105"],
    )  # fmt: skip
    city = _scoped(fed.manifest, "city:1301")
    assert scope_nodes(city, analyst=ANALYST, scope=None) == ("city:1301", list(CITY))


@pytest.mark.parametrize(
    ("own", "asked", "why"),
    [
        ("city:1301", "city:1302", "outside analyst alice's scope"),
        ("city:1301", "province", "outside analyst alice's scope"),
        ("county:130104", "city:1301", "outside analyst alice's scope"),
        ("", "city:13", "report scope 'city:13'"),
        ("node:130203", None, "give --scope"),
        ("", "city:1309", "no active node"),
    ],
)
def test_a_scope_outside_the_analysts_is_refused(
    fed: Fed, own: str, asked: str | None, why: str
) -> None:
    with pytest.raises(ConfigError, match=why):
        scope_nodes(_scoped(fed.manifest, own), analyst=ANALYST, scope=asked)


def _run(released: Released) -> dict[str, QueryRun]:
    return {"by_sex": QueryRun("by_sex", b"", b"", {}, released, ANALYST)}


def test_verify_requires_the_releases_to_stay_inside_the_scope(
    fed: Fed, city: dict[str, Any]
) -> None:
    manifest = _scoped(fed.manifest, "city:1301")
    scope, places = _check_scope(city, _run(_released(fed, CITY)), manifest, analyst=ANALYST)
    assert scope == "city:1301"
    assert places is not None
    assert places["130105"] == "county:130104"
    with pytest.raises(VerificationError, match="outside city:1301: 130202"):
        _check_scope(city, _run(_released(fed, (*CITY, "130202"))), manifest, analyst=ANALYST)
    # a node that joined the city after the report ran was not there to ask: still valid
    fewer = {**city, "places": {n: p for n, p in city["places"].items() if n in CITY[:2]}}
    _check_scope(fewer, _run(_released(fed, CITY[:2])), manifest, analyst=ANALYST)
    # a city analyst's releases relabelled as the province's report
    relabelled = {**city, "scope": {**city["scope"], "id": "province"}}
    with pytest.raises(VerificationError, match="province is outside analyst alice's scope"):
        _check_scope(relabelled, _run(_released(fed, CITY)), manifest, analyst=ANALYST)
    with pytest.raises(VerificationError, match="outside analyst alice's scope"):
        _check_scope(
            city, _run(_released(fed, CITY)), _scoped(fed.manifest, "city:1302"), analyst=ANALYST
        )
    mixed = {**_run(_released(fed, CITY)), "again": _run(_released(fed, CITY[:2]))["by_sex"]}
    with pytest.raises(VerificationError, match="did not all ask city:1301's nodes"):
        _check_scope(city, mixed, manifest, analyst=ANALYST)
    moved = {**city, "places": {**city["places"], "130105": "county:130107"}}
    with pytest.raises(VerificationError, match="node places are not the manifest's"):
        _check_scope(moved, _run(_released(fed, CITY)), manifest, analyst=ANALYST)


def test_a_city_reports_secure_figures_are_the_citys(city: dict[str, Any]) -> None:
    model = json.loads(json.dumps(city))
    model["sections"][0]["statistics"][0]["secure"] = {
        "aggregators": [COORDINATOR, "stats-bureau"],
        "failure": None,
    }
    html = render_html(model)
    assert "石家庄市 only: secure aggregation" in html
    assert "province only: secure aggregation" not in html


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries(
        {"sections": st.lists(_json, max_size=3)},
        optional={
            "nodes": _json,
            "releases": _json,
            "plan": _json,
            "scope": _json,
            "title": _json,
        },
    ),
    st.sampled_from(["s0", "s1", "x"]),
)
def test_a_province_copy_of_any_shape_gives_an_error_not_a_traceback(
    fed: Fed, model: dict[str, Any], statistic: str
) -> None:
    """An edited ``province-report.json`` is read without a traceback: only ConfigError
    (refused) or an empty comparison, which verify then finds differs from the report."""
    province = ProvinceReport.from_bytes(json.dumps(model).encode())
    province.comparison(statistic)
    province.summary()
    with contextlib.suppress(ConfigError):
        province.check_for(fed.plan, ["130104"])
