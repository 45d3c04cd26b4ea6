"""The report's areas come from the nodes' places in the manifest, never from their ids."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedscreen.errors import ConfigError
from fedscreen.report.areas import (
    CITIES,
    area_kind,
    city_name,
    city_scopes,
    report_areas,
    scope_name,
    scope_order,
    scope_within,
    universities,
)

#: a county node, a school node under it (its id says nothing of its county), a second
#: county of the same city, another city's county and a university (under the province)
PLACES = {
    "130102": "county:130102",
    "school-17": "county:130102",
    "130104": "county:130104",
    "130602": "county:130602",
    "10075": "province",
}


def test_one_city_is_the_province_and_gets_no_row() -> None:
    assert city_scopes(["130102", "130104", "130121"]) == {}


def test_cities_with_two_or_more_counties_get_a_row() -> None:
    scopes = city_scopes(["131102", "130102", "130602", "130104", "131182", "130722"])
    assert scopes == {
        "city:1301": ["130102", "130104"],
        "city:1311": ["131102", "131182"],
    }  # 保定 and 张家口 have one county each: their row would be that county
    assert [city_name(s) for s in scopes] == ["石家庄市", "衡水市"]


def test_unknown_prefixes_are_left_out() -> None:
    assert city_scopes(["990101", "990102", "130102", "130104"]) == {}


def test_a_county_row_combines_its_county_node_and_its_school_nodes() -> None:
    areas = report_areas(PLACES, list(PLACES))
    assert areas == {
        "city:1301": ["130102", "130104", "school-17"],
        "county:130102": ["130102", "school-17"],
    }
    assert universities(PLACES, list(PLACES)) == ["10075"]
    # each city with its counties and their nodes; the university last
    assert scope_order(PLACES, list(PLACES), areas) == [
        "city:1301", "county:130102", "130102", "school-17", "130104", "130602", "10075",
    ]  # fmt: skip


def test_a_city_report_has_no_city_row_and_a_county_report_no_row_for_itself() -> None:
    inside = ["130102", "school-17", "130104"]
    assert report_areas(PLACES, inside, scope="city:1301") == {
        "county:130102": ["130102", "school-17"]
    }
    assert report_areas(PLACES, ["130102", "school-17"], scope="county:130102") == {}


def test_places_decide_not_ids() -> None:
    # a node whose id looks like a county of 唐山 but that the manifest places in 石家庄
    places = {"130202": "county:130102", "130102": "county:130102", "130602": "county:130602"}
    assert report_areas(places, list(places)) == {"county:130102": ["130102", "130202"]}


def test_report_scopes_within_an_analysts_scope() -> None:
    assert scope_within("city:1301", "province")
    assert scope_within("city:1301", "")
    assert scope_within("county:130102", "city:1301")
    assert scope_within("city:1301", "city:1301")
    assert not scope_within("province", "city:1301")
    assert not scope_within("city:1302", "city:1301")
    assert not scope_within("county:130202", "city:1301")
    assert not scope_within("city:1301", "county:130102")
    assert not scope_within("county:130102", "node:130102")
    # a malformed report scope lies inside nothing narrower than the province
    assert not scope_within("city:13015", "city:1301")
    assert not scope_within("county:1301", "city:1301")


def test_scope_names_and_kinds() -> None:
    assert scope_name("province", {}) == "Province"
    assert scope_name("city:1306", {}) == "保定市"
    assert scope_name("county:130102", {"130102": "长安区"}) == "长安区"
    assert scope_name("county:130199", {}) == "county 130199"
    assert [area_kind(s) for s in ("province", "city:1301", "county:130102")] == [
        "province", "city", "county",
    ]  # fmt: skip
    for bad in ("city:13", "node:130102", "county:abc", ""):
        with pytest.raises(ConfigError):
            area_kind(bad)


_COUNTIES = st.sampled_from(["130102", "130104", "130202", "130203", "130602", "990101"])


@given(
    st.dictionaries(
        st.text("abcdefghij0123456789", min_size=1, max_size=6),
        st.one_of(_COUNTIES.map(lambda c: f"county:{c}"), st.just("province")),
        max_size=12,
    )
)
def test_every_area_is_exactly_its_places(places: dict[str, str]) -> None:
    nodes = list(places)
    areas = report_areas(places, nodes)
    unis = universities(places, nodes)
    for area, members in areas.items():
        kind = area_kind(area)
        code = area.split(":")[1]
        # exactly the nodes placed in it, universities in none
        wanted = sorted(n for n in nodes if places[n].startswith(f"county:{code}"))
        assert members == wanted
        assert len(members) >= 2
        assert not set(members) & set(unis)
        if kind == "city":
            assert code in CITIES
    order = scope_order(places, nodes, areas)
    assert sorted(order) == sorted([*areas, *nodes])
    assert order[len(order) - len(unis) :] == sorted(unis)
