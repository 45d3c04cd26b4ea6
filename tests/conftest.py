"""Shared fixtures: real node homes in temporary directories."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fedscreen.node.home import NodeConfig, init_home

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture
def node_home(tmp_path: Path) -> NodeConfig:
    """A freshly initialised node for county 130102."""
    return init_home(tmp_path / "node", node_id="130102", name="长安区")
