"""One small federation of homes for node-side unit tests: an authority, a coordinator,
an analyst (``alice``) and a node, all issued; and a node agent that is never dialled."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedscreen.coordinator.core import init_coordinator
from fedscreen.node.agent import _Agent
from fedscreen.node.dial import DEFAULT_NODE_LIMITS
from fedscreen.node.home import NodeConfig, init_home
from fedscreen.node.ingest import ingest_paths
from fedscreen.synth import generate, write_export
from fedscreen.trust import authority
from fedscreen.trust.identity import create_identity, issue_here, update_manifest

NODE = "130102"
COORDINATOR = "coordinator"


@dataclass
class Homes:
    auth: Path
    node: NodeConfig
    coordinator: Path


def make_homes(root: Path, *, students: int = 0) -> Homes:
    """Authority, coordinator, analyst ``alice`` and node ``NODE`` under ``root``; with
    ``students``, the node holds a synthetic 2024-2025 export of that many."""
    auth = root / "auth"
    authority.init_authority(auth, federation="test")
    init_coordinator(root / "coord", member_id=COORDINATOR, name="省平台")
    issue_here(auth, root / "coord")
    create_identity(root / "alice", member_id="alice", role="analyst", name="Alice")
    issue_here(auth, root / "alice")
    config = init_home(root / NODE, node_id=NODE, name="长安区")
    issue_here(auth, config.home)
    update_manifest(config.home, authority.manifest_text(auth))
    if students:
        write_export(generate(NODE, students, "2024-2025", seed=3), root / "export")
        _, rejected = ingest_paths(config, [root / "export"])
        assert not rejected
    return Homes(auth, config, root / "coord")


def idle_agent(config: NodeConfig) -> _Agent:
    """The node's agent, never dialled: tests drive what a QueryRequest makes it do."""
    return _Agent(
        config.home,
        "127.0.0.1:1",
        coordinator_id=COORDINATOR,
        limits=DEFAULT_NODE_LIMITS,
        on_welcome=None,
        unsafe_test_answer_delay_ms=0,
        unsafe_test_clock_skew_ms=0,
    )
