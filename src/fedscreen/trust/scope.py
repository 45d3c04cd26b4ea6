"""Scopes: which nodes an analyst may ask, and where each node sits.

The provincial plan runs the work as "province coordinates, city is the centre,
county the base, schools the points". Every analyst has a **scope** in the
manifest, and every node a **place**; an analyst may ask a node only when the
node's place lies inside the analyst's scope. The same pure function decides it at
the coordinator (which sends a query only to the nodes inside its analyst's scope)
and at each node (which refuses a query from outside it, whatever the coordinator
relayed), so neither has to trust the other.

Scopes (an analyst's ``scope`` in the manifest):

* ``province`` — every node (also what an analyst without a scope has: manifests
  older than scopes keep their meaning);
* ``city:<4 digits>`` — the county and school nodes of that city's counties
  (GB/T 2260: a county's code begins with its city's four digits);
* ``county:<6 digits>`` — that county's node and the school nodes under it;
* ``node:<member id>`` — one node (a university's or a school's own analyst).

Places (a node's ``scope`` in the manifest): ``county:<6 digits>`` for a county node
and a school node (the county it belongs to), ``province`` for a university node,
which reports to the province and to no city or county. A node without one (an older
manifest) is placed by its id: ``county:<id>`` for a six-digit id, else ``province``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final, Protocol

from fedscreen.errors import ConfigError

__all__ = [
    "NODE_KINDS",
    "PROVINCE",
    "check_member_scope",
    "city_of",
    "county_of",
    "describe",
    "in_scope",
    "node_place",
    "node_scope",
    "nodes_in_scope",
    "parse_scope",
    "place_county",
    "scope_contains",
]

PROVINCE: Final = "province"
#: a node member's ``level``: what kind of holder it is ("" in older manifests: county)
NODE_KINDS: Final = ("county", "university", "school")
# ASCII digits only: "city:１３０１" (full-width) must not look like 石家庄 and reach nothing
_CITY: Final = re.compile(r"city:([0-9]{4})")
_COUNTY: Final = re.compile(r"county:([0-9]{6})")
# the member-id grammar of trust.certs (MEMBER_ID_PATTERN), inlined: certs imports us
_NODE: Final = re.compile(r"node:([A-Za-z0-9][A-Za-z0-9_.-]{1,63})")
_SIX_DIGITS: Final = re.compile(r"[0-9]{6}")


class _Placed(Protocol):
    """What a scope decision reads of a manifest member."""

    @property
    def id(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def level(self) -> str: ...
    @property
    def scope(self) -> str: ...


def parse_scope(text: str) -> tuple[str, str]:
    """The form and code of a scope or place: ``("province", "")``, ``("city", "1301")``,
    ``("county", "130102")`` or ``("node", "<id>")``; ``("", "")`` for any other text."""
    if text == PROVINCE:
        return PROVINCE, ""
    for form, pattern in (("city", _CITY), ("county", _COUNTY), ("node", _NODE)):
        if match := pattern.fullmatch(text):
            return form, match[1]
    return "", ""


def place_county(place: str) -> str | None:
    """The county code of a place (``county:<code>``), None for the province."""
    form, code = parse_scope(place)
    return code if form == "county" else None


def _is_analyst_scope(scope: str) -> bool:
    return parse_scope(scope)[0] != ""


def check_member_scope(*, role: str, level: str, scope: str, member_id: str = "") -> None:
    """Raise ConfigError unless ``scope`` fits a member of ``role`` (and node kind ``level``).

    An analyst's scope is one of the four forms (or empty: the province). A node's
    is its place: ``county:<code>`` for a county or school node, ``province`` for a
    university (or empty: placed by its id); a county node whose id is a county code
    (``member_id``, when given) is placed at that county, not another. Other roles
    have none.
    """
    if not scope:
        return
    if role not in ("analyst", "node"):
        raise ConfigError(f"only analysts and nodes have a scope, not {role}s ({scope!r})")
    if role == "analyst":
        if not _is_analyst_scope(scope):
            raise ConfigError(
                f"scope {scope!r}: one of province, city:<4 digits>, county:<6 digits>, "
                "node:<member id>"
            )
        return
    if role == "node":
        kind = level or "county"
        wanted = "province" if kind == "university" else "county:<6 digits>"
        ok = scope == PROVINCE if kind == "university" else bool(_COUNTY.fullmatch(scope))
        if kind not in NODE_KINDS or not ok:
            raise ConfigError(f"a {kind} node's place is {wanted}, not {scope!r}")
        if kind == "county" and _SIX_DIGITS.fullmatch(member_id) and scope != f"county:{member_id}":
            raise ConfigError(
                f"county node {member_id} is placed at {scope!r}: a county node named by its "
                f"county code is placed at county:{member_id}"
            )


def node_scope(kind: str, county_code: str) -> str:
    """The place a new node of ``kind`` records: ``county:<code>``, or ``province`` for a
    university."""
    if kind not in NODE_KINDS:
        raise ConfigError(f"node kind {kind!r}: one of {', '.join(NODE_KINDS)}")
    if kind == "university":
        return PROVINCE
    if not _SIX_DIGITS.fullmatch(county_code):
        raise ConfigError(f"county code {county_code!r}: six digits (GB/T 2260), e.g. 130102")
    return f"county:{county_code}"


def node_place(node: _Placed) -> str:
    """A node member's place, the default applied (see the module docstring)."""
    if node.scope:
        return node.scope
    return f"county:{node.id}" if _SIX_DIGITS.fullmatch(node.id) else PROVINCE


def county_of(node: _Placed) -> str | None:
    """The county code a node belongs to (None: a university, under the province)."""
    return place_county(node_place(node))


def city_of(node: _Placed) -> str | None:
    """The city code (4 digits) a node belongs to (None: a university)."""
    county = county_of(node)
    return None if county is None else county[:4]


def scope_contains(scope: str, node: _Placed) -> bool:
    """Whether an analyst scope (empty: the province) includes ``node``."""
    if not scope:
        return True
    form, code = parse_scope(scope)
    county = county_of(node)
    # an unknown form ("") includes nothing: a scope the code cannot read grants nothing
    return {
        PROVINCE: True,
        "node": node.id == code,
        "city": county is not None and county[:4] == code,
        "county": county == code,
    }.get(form, False)


def in_scope(analyst: _Placed, node: _Placed) -> bool:
    """Whether ``analyst`` may ask ``node`` (scope only: revocation is the manifest's)."""
    return scope_contains(analyst.scope, node)


def nodes_in_scope(scope: str, nodes: Iterable[_Placed]) -> tuple[str, ...]:
    """The ids of ``nodes`` inside ``scope``, in the order given."""
    return tuple(n.id for n in nodes if scope_contains(scope, n))


def describe(scope: str) -> str:
    """A scope as messages show it (empty: the province)."""
    return scope or PROVINCE
