"""Which nodes an analyst's query goes to: those it names, else those inside its scope.

The coordinator sends a query only to nodes inside its analyst's scope
(``trust.scope``: province, a city, a county, one node) and refuses, before anything
is logged or asked, a query that names a node outside it. Each node decides the same
again against its own manifest copy (``node.requests``), so a coordinator that skips
this check gets refusals, not answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from fedscreen.errors import QueryRefused
from fedscreen.policy import secure_answerers
from fedscreen.protocol.query import SignedQuery
from fedscreen.trust.manifest import Manifest, show_id
from fedscreen.trust.scope import PROVINCE, describe, nodes_in_scope, scope_contains

__all__ = ["MAX_NAMED_NODES", "check_scope", "named", "secure_targets", "targets", "within"]

#: node ids a refusal names before it only counts them
MAX_NAMED_NODES: Final = 10


def targets(manifest: Manifest, query: SignedQuery) -> tuple[str, ...]:
    """The nodes ``query`` goes to: those it names, else the active nodes inside its
    analyst's scope; each once, in the order asked (manifest order by default)."""
    if query.nodes:
        return tuple(dict.fromkeys(query.nodes))
    analyst = manifest.member(query.analyst, role="analyst")
    nodes = [m for m in manifest.members if m.role == "node" and not m.revoked]
    return nodes_in_scope(analyst.scope, nodes)


def within(manifest: Manifest, analyst: str, node_ids: set[str]) -> set[str]:
    """The nodes of ``node_ids`` inside ``analyst``'s scope (what it may see of them, as
    budget statements: a city's analyst sees its own city's)."""
    scope = manifest.member(analyst, role="analyst").scope
    members = {m.id: m for m in manifest.members if m.role == "node"}
    return {n for n in node_ids if n in members and scope_contains(scope, members[n])}


def secure_targets(manifest: Manifest, query: SignedQuery) -> tuple[str, ...]:
    """The targets that can answer a secure query (``policy.secure_answerers``: not school
    nodes, so a county with its school nodes never counts as several of a release's; not
    offline nodes, whose answers come by file long after the aggregators' one round)."""
    levels = {m.id: m.level for m in manifest.members if m.role == "node"}
    online = [n for n in targets(manifest, query) if n not in manifest.offline]
    return tuple(secure_answerers(levels, online))


def check_scope(manifest: Manifest, query: SignedQuery) -> None:
    """QueryRefused if ``query`` names a node twice, or an active node outside its
    analyst's scope, or a city's, county's or node's scope holds no active node (the
    nodes it names are known to be active)."""
    twice = [n for n in dict.fromkeys(query.nodes) if query.nodes.count(n) > 1]
    if twice:
        # a release names each node once: a list with repeats could never verify
        raise QueryRefused(f"the query names {named(twice)} more than once; nothing was asked")
    analyst = manifest.member(query.analyst, role="analyst")
    scope = describe(analyst.scope)
    outside = [n for n in query.nodes if not scope_contains(analyst.scope, manifest.member(n))]
    if outside:
        raise QueryRefused(
            f"out of scope: analyst {query.analyst}'s scope is {scope}, which does not "
            f"include {named(outside)}; nothing was asked of any node"
        )
    if analyst.scope not in ("", PROVINCE) and not targets(manifest, query):
        # (a province query before any node joined is logged and released empty, as ever)
        raise QueryRefused(f"no active node lies inside analyst {query.analyst}'s scope {scope}")


def named(ids: Sequence[str]) -> str:
    """Node ids for a refusal, shown by code point (an analyst's terminal must not get raw
    control characters), the first :data:`MAX_NAMED_NODES` only."""
    shown = ", ".join(show_id(n) for n in ids[:MAX_NAMED_NODES])
    extra = len(ids) - MAX_NAMED_NODES
    return shown + (f" and {extra} more" if extra > 0 else "")
