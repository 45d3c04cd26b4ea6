"""Hebei's prefecture-level cities, for the report's city rows.

The province asks some figures "per city, where county cells are small"
(DOMAIN.md, items 4, 6, 13 and 14). A county's GB/T 2260 code begins with its
city's four digits, so a city's figures combine its counties' answers: the same
post-processing as the provincial figures, over fewer counties.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

#: GB/T 2260 city prefix -> name (the 11 prefecture-level cities of Hebei)
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
#: scope ids of city rows: "city:1301"
CITY_PREFIX: Final = "city:"


def city_scopes(counties: Sequence[str]) -> dict[str, list[str]]:
    """City scope id -> its counties among ``counties``, for the rows worth showing.

    A city row is shown only when the report spans two or more cities (otherwise the
    city is the province) and for a city with two or more counties (otherwise it is
    that county).
    """
    by_city: dict[str, list[str]] = {}
    for county in sorted(counties):
        if county[:4] in CITIES:
            by_city.setdefault(county[:4], []).append(county)
    if len(by_city) < 2:
        return {}
    return {
        f"{CITY_PREFIX}{city}": members
        for city, members in sorted(by_city.items())
        if len(members) >= 2
    }


def city_name(scope: str) -> str:
    """The name of a city scope ("city:1301" -> "石家庄市")."""
    return CITIES.get(scope.removeprefix(CITY_PREFIX), scope)
