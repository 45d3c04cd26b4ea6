"""The demo's scope step: 石家庄's city analyst asks a county of another city.

The coordinator refuses the query before asking any node; and the county's node,
given the same signed query directly (as a coordinator that skipped its check could
do), refuses it itself against its own manifest copy: recorded in its log, nothing
charged. The second half runs once the node's process has stopped, since a node's log
has one writer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from fedscreen.analyst.query import make_query
from fedscreen.demo.members import CITY_ANALYST, YEAR, Members
from fedscreen.errors import ConfigError, QueryRefused
from fedscreen.node import ledger, store
from fedscreen.node.home import load_config
from fedscreen.node.requests import handle_query
from fedscreen.rpc.client import submit
from fedscreen.rpc.transport import RpcFailed
from fedscreen.trust.identity import load_identity
from fedscreen.trust.scope import county_of, scope_contains

__all__ = ["ask_outside", "outside_node", "refused_at_node"]

SQL: Final = f"SELECT sex, COUNT(*) FROM screenings WHERE academic_year = '{YEAR}' GROUP BY sex"
EPSILON: Final = 0.1


def outside_node(homes: Members) -> str | None:
    """A county node of the demo outside the city analyst's scope (None: there is none)."""
    manifest = load_identity(homes.city_analyst).manifest()
    scope = manifest.member(CITY_ANALYST[0]).scope
    for member in manifest.members:
        if member.id in homes.nodes and county_of(member) and not scope_contains(scope, member):
            return member.id
    return None


def ask_outside(homes: Members, address: str, node: str, say: Callable[[str], None]) -> bytes:
    """The city analyst asks ``node`` through the coordinator, which must refuse; returns
    the signed query."""
    _, envelope = make_query(homes.city_analyst, SQL, epsilon=EPSILON, accuracy=None, nodes=(node,))
    try:
        asyncio.run(submit(homes.city_analyst, address, envelope))
    except RpcFailed as exc:
        say(f"   the coordinator refuses it: {exc}")
        return envelope
    raise ConfigError(f"the coordinator relayed a query outside the city's scope to {node}")


def refused_at_node(homes: Members, node: str, envelope: bytes, say: Callable[[str], None]) -> None:
    """Deliver the signed query to ``node`` directly: its own check refuses it, free."""
    config = load_config(homes.nodes[node])
    manifest = load_identity(config.home).manifest()
    conn = store.connect(config.database)
    try:
        before = ledger.spent(conn, YEAR, CITY_ANALYST[0]).node_micro
        try:
            handle_query(config, config.policy(), manifest, envelope, conn=conn)
        except QueryRefused as exc:
            if ledger.spent(conn, YEAR, CITY_ANALYST[0]).node_micro != before:
                raise ConfigError(f"node {node} charged for a query it refused") from None
            say(f"   given it anyway, {config.name}'s node refuses it itself: {exc}")
            say("   (recorded in its signed log; nothing charged)")
            return
    finally:
        conn.close()
    raise ConfigError(f"node {node} answered a query from outside the analyst's scope")
