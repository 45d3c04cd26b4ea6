"""Analyst.Budgets' view keeps the statement the node *issued* last among those queued,
not the one that *arrived* last: one that arrives late (an old stream's) must not hide a
newer one queued before it (found by an outside review).

Real node home, real signed statements from the node's worker (issue times strictly
increase), the real SessionRegistry, keep_statement and settle_statements."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nodehomes import NODE, idle_agent, make_homes

from fedscreen.coordinator.runtime import keep_statement, settle_statements
from fedscreen.coordinator.sessions import SessionRegistry
from fedscreen.protocol.budget import verify_statement
from fedscreen.trust.identity import load_identity


def test_the_newest_issued_statement_is_the_one_held(tmp_path: Path) -> None:
    homes = make_homes(tmp_path)
    agent = idle_agent(homes.node)

    async def two() -> tuple[bytes, bytes]:
        try:
            return await agent.worker.statement(), await agent.worker.statement()
        finally:
            agent.worker.close()

    older, newer = asyncio.run(two())
    manifest = load_identity(homes.node.home).manifest()
    issued = [verify_statement(s, manifest=manifest, node_id=NODE).issued_at_ms
              for s in (older, newer)]  # fmt: skip
    assert issued[0] < issued[1]
    sessions = SessionRegistry()
    keep_statement(sessions, NODE, newer)
    keep_statement(sessions, NODE, older)  # arrives late (another stream)
    settle_statements(manifest, sessions)
    held = sessions.budgets[NODE][0]
    assert held.issued_at_ms == issued[1], "Budgets shows the older statement"
