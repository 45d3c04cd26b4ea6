"""An answer carries the node's budget statement made after its charge; a refusal is
followed by a statement of its own (issue 11, item 8: one message per answer, not two)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from nodehomes import NODE, Homes, idle_agent, make_homes

from fedscreen.analyst.query import make_query
from fedscreen.crypto.envelope import BUDGET_V1, Envelope, verify_envelope
from fedscreen.protocol.budget import verify_statement
from fedscreen.trust.identity import load_identity
from fedscreen.v1 import federation_pb2 as pb

SQL = "SELECT COUNT(*) FROM screenings WHERE academic_year = '2024-2025'"


@pytest.fixture
def homes(tmp_path: Path) -> Homes:
    return make_homes(tmp_path, students=200)


def _run(homes: Homes, request: pb.QueryRequest) -> list[pb.NodeMessage]:
    agent = idle_agent(homes.node)
    sent: list[pb.NodeMessage] = []

    async def send(message: pb.NodeMessage) -> None:
        sent.append(message)

    async def answer() -> None:
        try:
            await agent._answer(request, send, asyncio.Event())
        finally:
            agent.worker.close()

    asyncio.run(answer())
    return sent


def _spent(homes: Homes, envelope: bytes) -> dict[str, object]:
    manifest = load_identity(homes.node.home).manifest()
    statement = verify_statement(envelope, manifest=manifest, node_id=NODE)
    return dict(statement.body["spent"])


def test_an_answer_carries_a_statement_that_shows_its_charge(homes: Homes) -> None:
    _, envelope = make_query(homes.auth.parent / "alice", SQL, epsilon=0.25, accuracy=None)
    sent = _run(homes, pb.QueryRequest(query_id="ab" * 16, query_envelope=envelope))
    [message] = sent  # one message: the statement rides with the answer
    assert message.WhichOneof("kind") == "answer"
    statement = message.answer.budget_statement
    assert statement
    spent = json.dumps(_spent(homes, statement))
    assert "250000" in spent  # 0.25 ε in µε, charged before the statement was made
    # the statement is the node's signed BUDGET_V1 envelope, not a copy of the answer
    key = load_identity(homes.node.home)
    verify_envelope(
        Envelope.from_json(statement),
        expected_payload_type=BUDGET_V1,
        trusted_keys={key.key_id: key.signing_public_key},
    )


def test_a_refusal_is_followed_by_a_statement_of_its_own(homes: Homes) -> None:
    sent = _run(homes, pb.QueryRequest(query_id="ab" * 16, query_envelope=b"not an envelope"))
    assert [m.WhichOneof("kind") for m in sent] == ["refusal", "budget"]
    assert "250000" not in json.dumps(_spent(homes, sent[1].budget.envelope))
