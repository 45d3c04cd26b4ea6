"""A federation of real homes for secure-aggregation tests: an authority, a coordinator,
a second aggregator, an analyst (``alice``) and three county nodes with synthetic data.

Every member is issued by the authority and every home holds the final manifest. The
exact counts a secure release must sum to are read from the nodes' own databases
(``exact_count``): only a test looks at raw rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedscreen.aggregator.home import init_aggregator
from fedscreen.coordinator.core import init_coordinator
from fedscreen.node import store
from fedscreen.node.home import NodeConfig, init_home
from fedscreen.node.ingest import ingest_paths
from fedscreen.synth import generate, write_export
from fedscreen.trust import authority
from fedscreen.trust.identity import create_identity, issue_here, update_manifest

COORDINATOR = "coordinator"
AGGREGATOR = "stats-bureau"
ANALYST = "alice"
NODES = ("130104", "130105", "130107")
YEAR = "2024-2025"


@dataclass
class SecureHomes:
    auth: Path
    coordinator: Path
    aggregator: Path
    analyst: Path
    nodes: dict[str, NodeConfig]


def make_secure_homes(
    root: Path, *, students: int = 300, nodes: tuple[str, ...] = NODES, varied: bool = False
) -> SecureHomes:
    """Every home under ``root``; each node holds ``students`` synthetic students of YEAR
    (``varied``: the i-th node 37·i more, so the counties' counts differ)."""
    auth = root / "auth"
    authority.init_authority(auth, federation="test")
    init_coordinator(root / "coord", member_id=COORDINATOR, name="省平台")
    issue_here(auth, root / "coord")
    init_aggregator(root / "agg", member_id=AGGREGATOR, name="省统计局")
    issue_here(auth, root / "agg")
    create_identity(root / ANALYST, member_id=ANALYST, role="analyst", name="Alice")
    issue_here(auth, root / ANALYST)
    configs: dict[str, NodeConfig] = {}
    for seed, node in enumerate(nodes):
        config = init_home(root / node, node_id=node, name=f"county {node}")
        issue_here(auth, config.home)
        size = students + (37 * seed if varied else 0)
        write_export(generate(node, size, YEAR, seed=seed + 1), root / f"export-{node}")
        _, rejected = ingest_paths(config, [root / f"export-{node}"])
        assert not rejected
        configs[node] = config
    text = authority.manifest_text(auth)
    for home in (root / "coord", root / "agg", root / ANALYST, *(c.home for c in configs.values())):
        update_manifest(home, text)
    return SecureHomes(auth, root / "coord", root / "agg", root / ANALYST, configs)


def exact_count(config: NodeConfig, where: str = "1 = 1") -> int:
    """The node's exact number of YEAR's screenings matching ``where`` (test-only SQL)."""
    conn = store.connect(config.database)
    try:
        row = conn.execute(
            f"SELECT COUNT(*) FROM screenings WHERE academic_year = ? AND {where}", (YEAR,)
        ).fetchone()
    finally:
        conn.close()
    return int(row[0])
