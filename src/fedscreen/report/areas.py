"""The report's areas: which nodes each city and county row combines, from node places.

The province asks some figures "per city, where county cells are small" (DOMAIN.md,
items 4, 6, 13 and 14), and "the county's figures combine the county node and the
school nodes that carry its code" (issue 15). Both come from each node's **place** in
the manifest (``trust.scope``), never from its id: a school node ``130102-s01`` sits in
county 130102, a university node in no city or county. The report is given the places
explicitly (node id -> place, as ``node_places`` reads them from the manifest) and
records them, so ``report verify`` rebuilds the same areas from the same facts.

A county's GB/T 2260 code begins with its city's four digits, so a city area is every
node whose county is in that city; a county area is a county's nodes when it has more
than one. An area is a row only where it adds something: a city row in a report that
spans two or more cities (and for a city with two or more counties), a county row
below the report's own scope.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from fedscreen.errors import ConfigError
from fedscreen.trust.manifest import Manifest
from fedscreen.trust.scope import PROVINCE, node_place, parse_scope, place_county

__all__ = [
    "CITIES",
    "CITY_PREFIX",
    "COUNTY_PREFIX",
    "REPORT_SCOPES",
    "area_kind",
    "city_name",
    "city_scopes",
    "node_places",
    "report_areas",
    "scope_name",
    "scope_order",
    "scope_within",
    "universities",
]

#: GB/T 2260 city prefix -> name (the 11 prefecture-level cities of Hebei). 雄安新区 has no
#: code in the division table the federation uses (shared/data/hebei_divisions.csv; its
#: counties still carry 保定's 1306), so it has no row of its own.
CITIES: Final = {
    "1301": "石家庄市",
    "1302": "唐山市",
    "1303": "秦皇岛市",
    "1304": "邯郸市",
    "1305": "邢台市",
    "1306": "保定市",
    "1307": "张家口市",
    "1308": "承德市",
    "1309": "沧州市",
    "1310": "廊坊市",
    "1311": "衡水市",
}
#: area ids: "city:1301", "county:130102" (the analyst scope of the same nodes)
CITY_PREFIX: Final = "city:"
COUNTY_PREFIX: Final = "county:"
#: the scopes a report may cover: the province, a city or a county
REPORT_SCOPES: Final = "province, city:<4 digits> or county:<6 digits>"


def node_places(manifest: Manifest) -> dict[str, str]:
    """Node id -> its place (``trust.scope.node_place``), for every node of ``manifest``."""
    return {m.id: node_place(m) for m in manifest.members if m.role == "node"}


def area_kind(scope: str) -> str:
    """``province``, ``city`` or ``county``; ConfigError for anything else."""
    form, _ = parse_scope(scope)
    if form not in (PROVINCE, "city", "county"):
        raise ConfigError(f"report scope {scope!r}: one of {REPORT_SCOPES}")
    return form


def scope_within(inner: str, outer: str) -> bool:
    """Whether report scope ``inner`` lies inside analyst scope ``outer`` (empty: province).

    A node scope (``node:<id>``) holds no city or county: a university's or school's
    analyst has no report scope but its own node, which this does not cover.
    """
    if not outer or outer == PROVINCE:
        return True
    (inner_form, inner_code), (outer_form, outer_code) = parse_scope(inner), parse_scope(outer)
    if outer_form == "city":
        return inner_form in ("city", "county") and inner_code[:4] == outer_code
    return outer_form == "county" and inner == outer


def report_areas(
    places: Mapping[str, str], nodes: Sequence[str], *, scope: str = PROVINCE
) -> dict[str, list[str]]:
    """Area id -> its nodes among ``nodes``, for the rows worth showing, in report order.

    Cities (those in ``CITIES``) get a row when the report spans two or more of them and
    the city holds nodes of two or more counties; a county gets one when it has two or
    more nodes (its county node and school nodes) and is not the report's own scope.
    Universities (placed at the province) are in no area.
    """
    by_city: dict[str, dict[str, list[str]]] = {}
    for node in sorted(nodes):
        county = place_county(places.get(node, ""))
        if county is not None:
            by_city.setdefault(county[:4], {}).setdefault(county, []).append(node)
    areas: dict[str, list[str]] = {}
    known = [c for c in by_city if c in CITIES]
    for city, counties in sorted(by_city.items()):
        if len(known) >= 2 and city in CITIES and len(counties) >= 2:
            areas[f"{CITY_PREFIX}{city}"] = sorted(n for ns in counties.values() for n in ns)
        for county, members in sorted(counties.items()):
            if len(members) >= 2 and f"{COUNTY_PREFIX}{county}" != scope:
                areas[f"{COUNTY_PREFIX}{county}"] = members
    return areas


def city_scopes(counties: Sequence[str]) -> dict[str, list[str]]:
    """City rows for county nodes placed by their ids (older manifests without places)."""
    places = {c: f"{COUNTY_PREFIX}{c}" for c in counties}
    return {a: n for a, n in report_areas(places, counties).items() if a.startswith(CITY_PREFIX)}


def universities(places: Mapping[str, str], nodes: Sequence[str]) -> list[str]:
    """The nodes of ``nodes`` placed at the province (universities), in order."""
    return [n for n in nodes if place_county(places.get(n, "")) is None]


def scope_order(
    places: Mapping[str, str], nodes: Sequence[str], areas: Mapping[str, Sequence[str]]
) -> list[str]:
    """Areas and nodes in display order: each city, then each of its counties (its county
    row, then its nodes), and the universities last."""

    def key(scope: str) -> tuple[str, str, int, str]:
        if scope.startswith(CITY_PREFIX):
            return (scope.removeprefix(CITY_PREFIX), "", 0, "")
        if scope.startswith(COUNTY_PREFIX):
            county = scope.removeprefix(COUNTY_PREFIX)
            return (county[:4], county, 0, "")
        county = place_county(places.get(scope, "")) or ""
        # "~" sorts after every digit: universities after the last city
        return (county[:4] or "~", county, 1, scope)

    return sorted([*areas, *nodes], key=key)


def city_name(scope: str) -> str:
    """The name of a city scope ("city:1301" -> "石家庄市")."""
    return CITIES.get(scope.removeprefix(CITY_PREFIX), scope)


def scope_name(scope: str, names: Mapping[str, str]) -> str:
    """A report scope or area as titles show it: "Province", a city's name, a county's
    node name (the county node carries the county's code as its id) or its code."""
    kind = area_kind(scope)
    if kind == PROVINCE:
        return "Province"
    if kind == "city":
        return city_name(scope)
    code = scope.removeprefix(COUNTY_PREFIX)
    return names.get(code, f"county {code}")
