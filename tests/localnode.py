"""Test helper: a node answering a signed query in process, as its agent would."""

from __future__ import annotations

from fedscreen.node import store
from fedscreen.node.home import NodeConfig
from fedscreen.node.requests import handle_query
from fedscreen.trust.identity import load_identity


def answer_locally(config: NodeConfig, envelope: bytes) -> bytes:
    """The node's signed answer (or refusal envelope) to a signed query."""
    conn = store.connect(config.database)
    try:
        return handle_query(
            config, config.policy(), load_identity(config.home).manifest(), envelope, conn=conn
        )
    finally:
        conn.close()
