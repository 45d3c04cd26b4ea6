"""A real coordinator answers every request it is sent, however malformed, with a status.

Hypothesis generates requests for each of the analysts' and auditors' methods:
well-formed protobuf with arbitrary field values (negative, huge and reversed
ranges, arbitrary origins, envelopes of random or near-JSON bytes), truncated
messages and arbitrary bytes. Each is sent over real mutual TLS to a real
``fedscreen coordinator serve`` process; each must come back OK or refused with
a status that names the caller's mistake — never INTERNAL or UNKNOWN (a crash in
a handler), never a hang — and the coordinator must still serve afterwards.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedscreen.rpc import transport
from fedscreen.trust.identity import Identity
from fedscreen.v1 import federation_pb2 as pb

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from bench_rpc_memory import COORDINATOR, setup, start_coordinator

#: a refused request says why with one of these; INTERNAL or UNKNOWN would be a crash
REFUSED = {
    "INVALID_ARGUMENT",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "NOT_FOUND",
    "OUT_OF_RANGE",
    "PERMISSION_DENIED",
}
CALL_TIMEOUT_S = 20
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
ORIGINS = st.one_of(
    st.text(max_size=80), st.sampled_from(["", "fedscreen.coordinator/coordinator", "x" * 5000])
)
ENVELOPES = st.one_of(
    st.binary(max_size=2000),
    st.sampled_from(
        [b"", b"{}", b"[" * 5000, b'{"payload":"", "payloadType":"x", "signatures":[]}']
    ),
    st.text(max_size=500).map(str.encode),
)


ANALYST = "/fedscreen.v1.Analyst/"
AUDIT = "/fedscreen.v1.Audit/"


def _messages() -> st.SearchStrategy[tuple[str, bool, bytes]]:
    """(method, server-streaming?, request bytes)."""
    unary = st.one_of(
        st.tuples(st.just("Submit"), st.builds(
            lambda e, d: pb.SubmitRequest(query_envelope=e, deadline_ms=d), ENVELOPES, INT64)),
        st.tuples(st.just("Budgets"), st.just(pb.BudgetsRequest())),
        st.tuples(st.just("Status"), st.just(pb.StatusRequest())),
        st.tuples(st.just("GetCheckpoint"), st.builds(pb.CheckpointRequest, origin=ORIGINS)),
        st.tuples(st.just("GetInclusionProof"), st.builds(
            pb.InclusionRequest, origin=ORIGINS, index=INT64, size=INT64)),
        st.tuples(st.just("GetConsistencyProof"), st.builds(
            pb.ConsistencyRequest, origin=ORIGINS, size1=INT64, size2=INT64)),
    )  # fmt: skip
    streaming = st.tuples(
        st.just("GetEntries"),
        st.builds(pb.EntriesRequest, origin=ORIGINS, start=INT64, end=INT64),
    )

    def encoded(item: tuple[str, Any], cut: int | None, streams: bool) -> tuple[str, bool, bytes]:
        name, message = item
        data = message.SerializeToString()
        service = AUDIT if name.startswith("Get") else ANALYST
        return service + name, streams, data if cut is None else data[:cut]

    cuts = st.one_of(st.none(), st.integers(min_value=0, max_value=64))
    methods = st.sampled_from(
        [
            ANALYST + "Submit",
            ANALYST + "Budgets",
            AUDIT + "GetCheckpoint",
            AUDIT + "GetInclusionProof",
        ]
    )
    return st.one_of(
        st.builds(encoded, unary, cuts, st.just(False)),
        st.builds(encoded, streaming, cuts, st.just(True)),
        st.builds(lambda m, b: (m, False, b), methods, st.binary(max_size=3000)),
    )


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Identity]]:
    work = tmp_path_factory.mktemp("rpc-fuzz")
    identities = setup(work, 1)
    proc, address = start_coordinator(work)
    try:
        yield address, identities[0]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except Exception:
            proc.kill()
            proc.wait(timeout=10)
        assert proc.returncode is not None


async def _send(
    identity: Identity, address: str, batch: list[tuple[str, bool, bytes]]
) -> list[str]:
    codes = []
    async with transport.channel(identity, address, peer_id=COORDINATOR) as channel:
        for method, streams, body in batch:
            try:
                if streams:
                    call = channel.unary_stream(
                        method, request_serializer=None, response_deserializer=None
                    )
                    async for _ in call(body, timeout=CALL_TIMEOUT_S):
                        pass
                else:
                    unary = channel.unary_unary(
                        method, request_serializer=None, response_deserializer=None
                    )
                    await unary(body, timeout=CALL_TIMEOUT_S)
                codes.append("OK")
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code().name)
    return codes


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(_messages(), min_size=1, max_size=12))
def test_every_request_gets_a_status_and_the_coordinator_survives(
    coordinator: tuple[str, Identity], batch: list[tuple[str, bool, bytes]]
) -> None:
    address, identity = coordinator
    codes = asyncio.run(asyncio.wait_for(_send(identity, address, batch), 120))
    crashes = [
        (m, c) for (m, _, _), c in zip(batch, codes, strict=True) if c not in REFUSED | {"OK"}
    ]
    assert not crashes, crashes
    # still serving
    after = asyncio.run(
        asyncio.wait_for(
            _send(identity, address, [("/fedscreen.v1.Analyst/Status", False, b"")]), 60
        )
    )
    assert after == ["OK"]
