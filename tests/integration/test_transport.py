"""Mutual TLS over real grpc.aio servers on 127.0.0.1: who gets in, who is refused, and how.

pytest-asyncio is not used: each test drives its own event loop with
``asyncio.run`` and bounds it with :data:`SCENARIO_TIMEOUT_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedscreen.errors import (
    ConfigError,
    MalformedEnvelope,
    PolicyError,
    QueryRefused,
    RoleNotPermitted,
    UnknownMember,
    VerificationError,
)
from fedscreen.rpc import transport
from fedscreen.rpc.transport import RpcFailed, TransportLimits
from fedscreen.trust import authority
from fedscreen.trust.identity import Identity, create_identity, issue_here
from fedscreen.trust.manifest import Manifest
from fedscreen.v1 import federation_pb2 as pb
from fedscreen.v1 import federation_pb2_grpc as pb_grpc

#: deadline of every test call (s)
CALL_TIMEOUT_S = 5.0
#: bound on one whole scenario: server up, calls, server down (s)
SCENARIO_TIMEOUT_S = 20.0
#: entries one GetEntries call may return in the test servicer (count)
MAX_ENTRIES = 10
AUDIT_SERVICE = "fedscreen.v1.Audit"
COORDINATOR = "coordinator"
NODE = "130102"
ANALYST = "analyst-1"
REVOKED = "analyst-r"

T = TypeVar("T")


@dataclass(frozen=True)
class Federation:
    auth: Path
    manifest: Manifest
    coordinator: Identity
    node: Identity
    analyst: Identity
    #: an analyst to revoke (the shared manifest above still lists it)
    revokee: Identity
    #: "analyst-1" again, but issued by another federation's CA
    outsider: Identity


def _enrol(auth: Path, home: Path, member_id: str, role: str) -> Identity:
    ident = create_identity(home, member_id=member_id, role=role, name=f"name {member_id}")
    issue_here(auth, home)
    return ident


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    root = tmp_path_factory.mktemp("federation")
    authority.init_authority(root / "auth", federation="河北省")
    authority.init_authority(root / "other-auth", federation="another federation")
    members = {
        member_id: _enrol(root / "auth", root / member_id, member_id, role)
        for member_id, role in [
            (COORDINATOR, "coordinator"),
            (NODE, "node"),
            (ANALYST, "analyst"),
            (REVOKED, "analyst"),
        ]
    }
    outsider = _enrol(root / "other-auth", root / "outsider", ANALYST, "analyst")
    return Federation(
        auth=root / "auth",
        manifest=authority.current_manifest(root / "auth"),
        coordinator=members[COORDINATOR],
        node=members[NODE],
        analyst=members[ANALYST],
        revokee=members[REVOKED],
        outsider=outsider,
    )


class AuditForTests(pb_grpc.AuditServicer):
    """A tiny Audit servicer: authenticate, then answer with who called or fail on purpose."""

    def __init__(self, manifest: Manifest, roles: set[str]) -> None:
        self.manifest = manifest
        self.roles = roles

    async def GetCheckpoint(
        self, request: pb.CheckpointRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CheckpointResponse:
        member = await transport.authenticate(context, self.manifest, roles=self.roles)
        return pb.CheckpointResponse(note=f"{member.role}:{member.id}")

    async def GetEntries(
        self, request: pb.EntriesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.Entry]:
        await transport.authenticate(context, self.manifest, roles=self.roles)
        async with transport.abort_on_error(context):
            if request.end - request.start > MAX_ENTRIES:
                raise QueryRefused(f"at most {MAX_ENTRIES} entries per call")
            for index in range(request.start, request.end):
                yield pb.Entry(index=index, data=b"entry %d" % index)

    async def GetInclusionProof(
        self, request: pb.InclusionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ProofResponse:
        await transport.authenticate(context, self.manifest, roles=self.roles)
        async with transport.abort_on_error(context):
            raise PolicyError("policies/province.toml: secret-looking detail 42")
        raise AssertionError("unreachable")

    async def GetConsistencyProof(
        self, request: pb.ConsistencyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ProofResponse:
        await transport.authenticate(context, self.manifest, roles=self.roles)
        async with transport.abort_on_error(context):
            raise RuntimeError("student 4711 detail")
        raise AssertionError("unreachable")


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    """Run one async scenario in a fresh event loop, bounded in time."""

    async def bounded() -> T:
        return await asyncio.wait_for(scenario(), SCENARIO_TIMEOUT_S)

    return asyncio.run(bounded())


@contextlib.asynccontextmanager
async def serving(fed: Federation, *, roles: set[str]) -> AsyncIterator[tuple[str, AuditForTests]]:
    """The coordinator's mTLS server, Audit + health, on 127.0.0.1:0; yields (target, servicer)."""
    srv = transport.server()
    servicer = AuditForTests(fed.manifest, roles)
    pb_grpc.add_AuditServicer_to_server(servicer, srv)
    await transport.add_health(srv, services=[AUDIT_SERVICE])
    port = transport.add_secure_port(srv, fed.coordinator, "127.0.0.1:0")
    await srv.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        await srv.stop(grace=None)


async def checkpoint_note(ident: Identity, target: str, *, peer_id: str = COORDINATOR) -> str:
    async with transport.channel(ident, target, peer_id=peer_id) as ch:
        with transport.rpc_errors("get checkpoint"):
            response = await pb_grpc.AuditStub(ch).GetCheckpoint(
                pb.CheckpointRequest(), timeout=CALL_TIMEOUT_S
            )
    return response.note


async def note_with_credentials(credentials: grpc.ChannelCredentials, target: str) -> str:
    """GetCheckpoint over a hand-made channel (for clients transport.channel would not build)."""
    options = [("grpc.ssl_target_name_override", COORDINATOR)]
    async with grpc.aio.secure_channel(target, credentials, options=options) as ch:
        with transport.rpc_errors("get checkpoint"):
            response = await pb_grpc.AuditStub(ch).GetCheckpoint(
                pb.CheckpointRequest(), timeout=CALL_TIMEOUT_S
            )
    return response.note


# ---------------------------------------------------------------- who gets in


def test_analyst_admitted_where_analysts_are(fed: Federation) -> None:
    async def scenario() -> str:
        async with serving(fed, roles={"analyst", "auditor"}) as (target, _):
            return await checkpoint_note(fed.analyst, target)

    assert run(scenario) == f"analyst:{ANALYST}"


def test_node_refused_where_only_analysts_are(fed: Federation) -> None:
    async def scenario() -> RpcFailed:
        async with serving(fed, roles={"analyst"}) as (target, _):
            with pytest.raises(RpcFailed) as info:
                await checkpoint_note(fed.node, target)
            return info.value

    err = run(scenario)
    assert err.code is grpc.StatusCode.PERMISSION_DENIED
    # the refusal carries no data: not even who was refused
    assert NODE not in err.details
    assert "role" in str(err)


def test_client_without_certificate_fails_the_handshake(fed: Federation) -> None:
    ca = fed.analyst.tls_files()[2]

    async def scenario() -> RpcFailed:
        async with serving(fed, roles={"analyst"}) as (target, _):
            with pytest.raises(RpcFailed) as info:
                await note_with_credentials(grpc.ssl_channel_credentials(ca), target)
            return info.value

    assert run(scenario).code is grpc.StatusCode.UNAVAILABLE


def test_client_certificate_from_another_ca_fails_the_handshake(fed: Federation) -> None:
    cert, key, _ = fed.outsider.tls_files()
    # trusts our CA (so it accepts the server) but presents the other federation's cert
    ca = fed.analyst.tls_files()[2]
    credentials = grpc.ssl_channel_credentials(ca, private_key=key, certificate_chain=cert)

    async def scenario() -> RpcFailed:
        async with serving(fed, roles={"analyst"}) as (target, _):
            with pytest.raises(RpcFailed) as info:
                await note_with_credentials(credentials, target)
            return info.value

    assert run(scenario).code is grpc.StatusCode.UNAVAILABLE


def test_client_refuses_a_server_that_is_not_the_expected_member(fed: Federation) -> None:
    async def scenario() -> RpcFailed:
        async with serving(fed, roles={"analyst"}) as (target, _):
            with pytest.raises(RpcFailed) as info:
                # the coordinator answers, but the analyst meant to reach the node
                await checkpoint_note(fed.analyst, target, peer_id=NODE)
            return info.value

    assert run(scenario).code is grpc.StatusCode.UNAVAILABLE


def test_revoked_member_is_refused_by_authenticate(fed: Federation) -> None:
    async def scenario() -> tuple[str, RpcFailed]:
        async with serving(fed, roles={"analyst"}) as (target, servicer):
            before = await checkpoint_note(fed.revokee, target)
            # a new manifest version marks it revoked; its certificate stays valid for TLS
            servicer.manifest = authority.revoke(fed.auth, REVOKED)
            with pytest.raises(RpcFailed) as info:
                await checkpoint_note(fed.revokee, target)
            # everyone else is unaffected
            assert await checkpoint_note(fed.analyst, target) == f"analyst:{ANALYST}"
            return before, info.value

    before, err = run(scenario)
    assert before == f"analyst:{REVOKED}"
    assert err.code is grpc.StatusCode.UNAUTHENTICATED
    assert REVOKED not in err.details


def test_health_service_answers_serving(fed: Federation) -> None:
    async def scenario() -> list[int]:
        async with (
            serving(fed, roles={"analyst"}) as (target, _),
            transport.channel(fed.node, target, peer_id=COORDINATOR) as ch,
        ):
            stub = health_pb2_grpc.HealthStub(ch)
            statuses = []
            for service in ("", AUDIT_SERVICE):
                response = await stub.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT_S
                )
                statuses.append(response.status)
            return statuses

    serving_status = health_pb2.HealthCheckResponse.SERVING
    assert run(scenario) == [serving_status, serving_status]


# ---------------------------------------------------------------- errors and streams


def test_errors_map_to_status_codes_without_data(fed: Federation) -> None:
    async def scenario() -> tuple[list[int], RpcFailed, RpcFailed, RpcFailed]:
        async with (
            serving(fed, roles={"auditor", "analyst"}) as (target, _),
            transport.channel(fed.analyst, target, peer_id=COORDINATOR) as ch,
        ):
            stub = pb_grpc.AuditStub(ch)
            call = stub.GetEntries(pb.EntriesRequest(start=3, end=6), timeout=CALL_TIMEOUT_S)
            indexes = [entry.index async for entry in call]
            failures = []
            for make_call in (
                lambda: stub.GetEntries(
                    pb.EntriesRequest(start=0, end=MAX_ENTRIES + 1), timeout=CALL_TIMEOUT_S
                ).read(),
                lambda: stub.GetInclusionProof(pb.InclusionRequest(), timeout=CALL_TIMEOUT_S),
                lambda: stub.GetConsistencyProof(pb.ConsistencyRequest(), timeout=CALL_TIMEOUT_S),
            ):
                with pytest.raises(RpcFailed) as info, transport.rpc_errors("audit"):
                    await make_call()
                failures.append(info.value)
            return indexes, failures[0], failures[1], failures[2]

    indexes, refused, policy, unexpected = run(scenario)
    assert indexes == [3, 4, 5]
    # a refusal explains itself to the caller
    assert refused.code is grpc.StatusCode.FAILED_PRECONDITION
    assert f"at most {MAX_ENTRIES} entries" in refused.details
    # the server's own trouble is INTERNAL and its details stay on the server
    assert policy.code is grpc.StatusCode.INTERNAL
    assert "42" not in policy.details
    assert "toml" not in policy.details
    assert unexpected.code is grpc.StatusCode.INTERNAL
    assert "4711" not in unexpected.details
    assert str(unexpected).startswith("audit failed: INTERNAL")


def test_connect_gives_up_after_the_connect_timeout(fed: Federation) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    limits = TransportLimits(connect_timeout_ms=300)

    async def scenario() -> RpcFailed:
        with pytest.raises(RpcFailed) as info:
            await transport.connect(
                fed.analyst, f"127.0.0.1:{port}", peer_id=COORDINATOR, limits=limits
            )
        return info.value

    err = run(scenario)
    assert err.code is grpc.StatusCode.UNAVAILABLE
    assert "300 ms" in str(err)


def test_connect_returns_a_ready_channel(fed: Federation) -> None:
    async def scenario() -> str:
        async with serving(fed, roles={"analyst"}) as (target, _):
            ch = await transport.connect(fed.analyst, target, peer_id=COORDINATOR)
            async with ch:
                assert ch.get_state() is grpc.ChannelConnectivity.READY
                response = await pb_grpc.AuditStub(ch).GetCheckpoint(
                    pb.CheckpointRequest(), timeout=CALL_TIMEOUT_S
                )
            return response.note

    assert run(scenario) == f"analyst:{ANALYST}"


# ---------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (QueryRefused("no"), grpc.StatusCode.FAILED_PRECONDITION),
        (RoleNotPermitted("no"), grpc.StatusCode.PERMISSION_DENIED),
        (UnknownMember("no"), grpc.StatusCode.UNAUTHENTICATED),
        (VerificationError("no"), grpc.StatusCode.UNAUTHENTICATED),
        (MalformedEnvelope("no"), grpc.StatusCode.INVALID_ARGUMENT),
        (ConfigError("no"), grpc.StatusCode.INTERNAL),
        (RpcFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "x"), grpc.StatusCode.UNAVAILABLE),
        (ValueError("no"), grpc.StatusCode.INTERNAL),
    ],
)
def test_status_table(error: BaseException, code: grpc.StatusCode) -> None:
    assert transport.status_of(error) is code


def test_peer_member_needs_a_tls_certificate(fed: Federation) -> None:
    with pytest.raises(VerificationError, match="no client certificate"):
        transport.peer_member({}, fed.manifest, roles={"analyst"})
    cert = fed.analyst.tls_files()[0]
    # a certificate outside a TLS auth context (e.g. an insecure port) is not trusted
    with pytest.raises(VerificationError, match="no client certificate"):
        transport.peer_member({"x509_pem_cert": [cert]}, fed.manifest, roles={"analyst"})
    ok = {"transport_security_type": [b"ssl"], "x509_pem_cert": [cert]}
    assert transport.peer_member(ok, fed.manifest, roles={"analyst"}).id == ANALYST


@pytest.mark.parametrize("roles", [set(), {"analyts"}, "analyst"])
def test_peer_member_rejects_a_bad_role_set(fed: Federation, roles: Any) -> None:
    cert = fed.analyst.tls_files()[0]
    auth = {"transport_security_type": [b"ssl"], "x509_pem_cert": [cert]}
    with pytest.raises(ConfigError):
        transport.peer_member(auth, fed.manifest, roles=roles)


@pytest.mark.parametrize("bad", [0, -1, True])
def test_limits_must_be_positive_integers(bad: int) -> None:
    with pytest.raises(ConfigError, match="keepalive_time_ms"):
        TransportLimits(keepalive_time_ms=bad)


def test_channel_rejects_a_peer_id_that_is_no_member_id(fed: Federation) -> None:
    with pytest.raises(ConfigError):
        transport.channel(fed.analyst, "127.0.0.1:1", peer_id="bad name")
