"""An answer goes up as soon as it is made: its consistency proof and budget statement are
made in the same job of the node's one worker thread, not queued behind the next query's
work (an outside review found the statement queued there; a late answer is charged at
the node and counted missing by the coordinator).

Real node home, real ingest, real analyst query, the real agent and its QueryWorker; the
"next query" queued on the worker is stood in for by one 1.5 s job on its executor."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from nodehomes import Homes, idle_agent, make_homes

from fedscreen.analyst.query import make_query
from fedscreen.v1 import federation_pb2 as pb

SQL = "SELECT COUNT(*) FROM screenings WHERE academic_year = '2024-2025'"
OTHER_WORK_S = 1.5


@pytest.fixture
def homes(tmp_path: Path) -> Homes:
    return make_homes(tmp_path, students=200)


def test_an_answer_is_not_held_back_by_the_next_querys_work(homes: Homes) -> None:
    _, envelope = make_query(homes.auth.parent / "alice", SQL, epsilon=0.25, accuracy=None)
    agent = idle_agent(homes.node)
    sent: list[tuple[float, str]] = []

    async def send(message: pb.NodeMessage) -> None:
        sent.append((time.monotonic(), message.WhichOneof("kind")))

    async def scenario() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        request = pb.QueryRequest(query_id="ab" * 16, query_envelope=envelope)
        started = time.monotonic()
        task = asyncio.create_task(agent._answer(request, send, asyncio.Event()))
        await asyncio.sleep(0)  # the answer's job is on the worker
        # the next query arrives: its work is queued on the same worker thread
        other = loop.run_in_executor(agent.worker._executor, time.sleep, OTHER_WORK_S)
        await task
        await other
        return started, sent[0][0]

    try:
        started, answered = asyncio.run(scenario())
    finally:
        agent.worker.close()
    assert sent[0][1] == "answer"
    took = answered - started
    assert took < OTHER_WORK_S, f"the answer went up after {took:.2f} s, behind other work"
