"""An in-process federation with one offline node, for the offline path's tests: real
homes (authority, coordinator, analyst, an online and an offline county node with
synthetic rows), real signatures and SQLite. The server's part of a query (accept,
queue for the offline node, the online node's answer, release) runs on the core."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from countyhomes import county_homes
from localnode import answer_locally

from fedscreen.analyst.query import make_query
from fedscreen.coordinator.core import Coordinator
from fedscreen.coordinator.offline import make_outbox, queue_offline
from fedscreen.node.home import NodeConfig
from fedscreen.node.offline import answer_outbox

SQL = "SELECT sex, COUNT(*) FROM screenings WHERE academic_year = '2024-2025' GROUP BY sex"
ONLINE, OFFLINE = "130104", "130105"


@dataclass
class Fed:
    root: Path
    auth: Path
    coordinator: Path
    analyst: Path
    nodes: dict[str, NodeConfig]


def make_fed(root: Path) -> Fed:
    """The federation in ``root``: its offline node is ``OFFLINE``."""
    homes = county_homes(root, {ONLINE: 119, OFFLINE: 119}, offline=(OFFLINE,))
    return Fed(root, homes.auth, homes.coordinator, homes.analysts["analyst-1"], homes.nodes)


def ask(
    fed: Fed, core: Coordinator, *, secure: bool = False, epsilon: float = 0.5
) -> tuple[str, dict[str, str]]:
    """Submit a query as the server does: accept, queue for the offline node, answer the
    online one, release. Returns the query id and why nodes are missing."""
    query, envelope = make_query(fed.analyst, SQL, epsilon=epsilon, accuracy=None, secure=secure)
    accepted = core.accept(envelope, now_ms=int(time.time() * 1000))
    why = queue_offline(core, accepted, envelope, core.targets(accepted), academic_year=None)
    if secure:
        return query.query_id, why
    answer = answer_locally(fed.nodes[ONLINE], envelope)
    core.release(accepted, {ONLINE: answer}, [OFFLINE], reasons=why, query_envelope=envelope)
    return query.query_id, why


def trip(fed: Fed, core: Coordinator, name: str, *, later_ms: int = 0) -> Path:
    """Outbox -> the offline node's answer file (its clock ``later_ms`` ahead) -> its path."""
    data, _ = make_outbox(core, OFFLINE)
    out = fed.root / name
    answer_outbox(
        fed.nodes[OFFLINE].home, data, out, now_ms=lambda: int(time.time() * 1000) + later_ms
    )
    return out
