"""Typed calls to the coordinator's Analyst service, as one member (analyst or auditor).

What comes back is returned as received — envelopes byte for byte — for the
caller to verify against its own manifest (``fedscreen.analyst``): nothing here
trusts the coordinator.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

from fedscreen.rpc import serde, transport
from fedscreen.rpc.serde import CoordinatorStatus, Fetched, Statements, Submitted
from fedscreen.rpc.transport import DEFAULT_LIMITS, TransportLimits
from fedscreen.trust.identity import load_identity
from fedscreen.v1 import federation_pb2 as pb
from fedscreen.v1 import federation_pb2_grpc as pb_grpc

__all__ = [
    "CALL_MARGIN_MS",
    "CoordinatorStatus",
    "Fetched",
    "Statements",
    "Submitted",
    "budgets",
    "fetch_release",
    "status",
    "submit",
]

#: added to the wait for nodes to make the call's own deadline: time for the
#: coordinator to verify, combine, sign, log and send the release back (ms)
CALL_MARGIN_MS: Final = 5_000


@contextlib.asynccontextmanager
async def _analyst(
    home: Path, coordinator: str, coordinator_id: str | None, limits: TransportLimits, what: str
) -> AsyncIterator[pb_grpc.AnalystStub]:
    """The coordinator's Analyst service over mutual TLS, as the member in ``home``.

    The coordinator's member id is ``coordinator_id`` or the single active
    coordinator of the member's manifest; a refused call raises RpcFailed.
    """
    identity = load_identity(home)
    peer = coordinator_id or identity.manifest().coordinator()
    async with transport.channel(identity, coordinator, peer_id=peer, limits=limits) as channel:
        with transport.rpc_errors(what):
            yield pb_grpc.AnalystStub(channel)


async def submit(
    home: Path,
    coordinator: str,
    query_envelope: bytes,
    *,
    coordinator_id: str | None = None,
    deadline_ms: int = 0,
    limits: TransportLimits = DEFAULT_LIMITS,
) -> Submitted:
    """Submit a signed query as the member in ``home``; raises RpcFailed if refused."""
    timeout_s = (deadline_ms + CALL_MARGIN_MS) / 1000 if deadline_ms > 0 else limits.call_timeout_s
    request = pb.SubmitRequest(query_envelope=query_envelope, deadline_ms=deadline_ms)
    async with _analyst(home, coordinator, coordinator_id, limits, "submit") as stub:
        response = await stub.Submit(request, timeout=timeout_s)
    return serde.submitted(response)


async def budgets(
    home: Path,
    coordinator: str,
    *,
    coordinator_id: str | None = None,
    limits: TransportLimits = DEFAULT_LIMITS,
) -> Statements:
    """Every node's budget statement as the coordinator holds it (not yet verified)."""
    async with _analyst(home, coordinator, coordinator_id, limits, "budgets") as stub:
        response = await stub.Budgets(pb.BudgetsRequest(), timeout=limits.call_timeout_s)
    return serde.statements(response)


async def status(
    home: Path,
    coordinator: str,
    *,
    coordinator_id: str | None = None,
    limits: TransportLimits = DEFAULT_LIMITS,
) -> CoordinatorStatus:
    """The coordinator's view of its nodes (link, clock offset, newest statement)."""
    async with _analyst(home, coordinator, coordinator_id, limits, "status") as stub:
        response = await stub.Status(pb.StatusRequest(), timeout=limits.call_timeout_s)
    return serde.status(response)


async def fetch_release(
    home: Path,
    coordinator: str,
    query_id: str,
    *,
    coordinator_id: str | None = None,
    limits: TransportLimits = DEFAULT_LIMITS,
) -> Fetched:
    """The newest release of one of this analyst's queries (not yet verified); RpcFailed
    with NOT_FOUND if the coordinator has none for this analyst."""
    request = pb.FetchRequest(query_id=query_id)
    async with _analyst(home, coordinator, coordinator_id, limits, "fetch") as stub:
        response = await stub.Fetch(request, timeout=limits.call_timeout_s)
    return serde.fetched(response)
