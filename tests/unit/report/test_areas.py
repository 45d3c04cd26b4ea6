"""City rows: only where they add something between the province and a county."""

from __future__ import annotations

from fedscreen.report.areas import city_name, city_scopes


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
