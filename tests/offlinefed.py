"""An in-process federation with one offline node, for the offline path's tests: real
homes (authority, coordinator, analyst, an online and an offline county node with
synthetic rows), real signatures and SQLite. The server's part of a query (accept,
queue for the offline node, the online node's answer, release) runs on the core."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from exportrows import screening_row, write_csv
from localnode import answer_locally

from fedscreen.analyst.query import make_query
from fedscreen.coordinator.core import Coordinator, init_coordinator
from fedscreen.coordinator.offline import make_outbox, queue_offline
from fedscreen.node.home import NodeConfig, init_home
from fedscreen.node.ingest import ingest_paths
from fedscreen.node.offline import answer_outbox
from fedscreen.trust import authority
from fedscreen.trust.identity import create_identity, issue_here, update_manifest

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
    auth = root / "auth"
    authority.init_authority(auth, federation="test")
    init_coordinator(root / "coord", member_id="coordinator", name="省平台")
    issue_here(auth, root / "coord")
    create_identity(root / "analyst", member_id="analyst-1", role="analyst", name="a")
    issue_here(auth, root / "analyst")
    nodes = {}
    for code in (ONLINE, OFFLINE):
        config = init_home(root / code, node_id=code, name=code)
        issue_here(auth, config.home)
        rows = [
            screening_row(i, county_code=code, sex="F" if i % 3 else "M") for i in range(1, 120)
        ]
        ingest_paths(config, [write_csv(root / f"{code}.csv", rows)])
        nodes[code] = config
    authority.set_offline(auth, OFFLINE, offline=True)
    text = authority.manifest_text(auth)
    for home in (root / "coord", root / "analyst", *(c.home for c in nodes.values())):
        update_manifest(home, text)
    return Fed(root, auth, root / "coord", root / "analyst", nodes)


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
