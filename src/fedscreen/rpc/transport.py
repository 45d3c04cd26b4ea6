"""Mutual-TLS gRPC plumbing shared by the coordinator, nodes, analysts and auditors.

Everything here is ``grpc.aio`` (one concurrency model per process).

* **Who may connect.** Servers demand a client certificate chaining to the
  federation CA (the TLS handshake fails otherwise), and every servicer method
  starts with :func:`authenticate`, which matches that certificate against the
  signed manifest (:func:`fedscreen.trust.certs.verify_peer`) and the roles the method
  admits. The manifest is the revocation list: a revoked member's still-valid
  certificate passes the handshake and is refused here.
* **Who we dial.** Clients trust only the federation CA and check that the
  server certificate names the member they meant to reach
  (``grpc.ssl_target_name_override`` = its member id, the certificate's SAN
  DNS name), so a different member of the same federation cannot stand in.
* **Limits.** Message sizes, keepalive, connect and call timeouts are named
  fields of :class:`TransportLimits`, with their units. Servers hold every
  method to its own request size (:class:`~fedscreen.rpc.guard.RequestLimits`,
  checked before parsing by :class:`~fedscreen.rpc.guard.RequestGuard`).
* **Errors.** Domain errors become gRPC status codes through one table
  (:data:`STATUS_OF`, :func:`abort_for`); abort details are fixed texts, never
  data. Clients turn ``grpc.RpcError`` into :class:`RpcFailed`.

Limit of the client-side check: gRPC Python does not expose the server's
certificate to the client, so a client checks the server's name and CA but
not the manifest. That is enough because nothing a server says is trusted on
its word: queries, answers and releases are signed envelopes verified against
the manifest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Collection, Iterable, Iterator, Mapping
from typing import Any, Final, NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedscreen.errors import (
    ConfigError,
    FedscreenError,
    IngestError,
    InstrumentError,
    MalformedEnvelope,
    PolicyError,
    QueryRefused,
    RoleNotPermitted,
    VerificationError,
)
from fedscreen.rpc.guard import REFUSALS, RequestGuard, release_abort
from fedscreen.rpc.limits import DEFAULT_LIMITS, TransportLimits, check_positive_limits
from fedscreen.trust import certs
from fedscreen.trust.identity import Identity
from fedscreen.trust.manifest import ROLES, Manifest, Member, a_role, show_id

__all__ = [
    "DEFAULT_LIMITS",
    "STATUS_OF",
    "RpcFailed",
    "TransportLimits",
    "abort_for",
    "abort_on_error",
    "add_health",
    "add_secure_port",
    "authenticate",
    "channel",
    "check_positive_limits",
    "connect",
    "peer_certificate",
    "peer_member",
    "rpc_errors",
    "server",
    "server_credentials",
    "status_of",
    "wrap_rpc_error",
]

_log = logging.getLogger(__name__)

#: auth_context() key holding the peer's leaf certificate, PEM (gRPC core's name)
_PEER_CERT_KEY: Final = "x509_pem_cert"
_SECURITY_TYPE_KEY: Final = "transport_security_type"
#: longest server-supplied detail text copied into an RpcFailed message (characters)
MAX_DETAIL_CHARS: Final = 300


# ---------------------------------------------------------------- credentials


def server_credentials(identity: Identity) -> grpc.ServerCredentials:
    """TLS server credentials: this member's certificate; clients must present one from the CA.

    ``require_client_auth`` makes the handshake itself fail for a client without
    a certificate issued by the federation CA (the only root trusted).
    """
    cert, key, ca = identity.tls_files()
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


def channel(
    identity: Identity,
    target: str,
    *,
    peer_id: str,
    limits: TransportLimits = DEFAULT_LIMITS,
) -> grpc.aio.Channel:
    """A secure channel to member ``peer_id`` at ``target`` (``host:port``), not yet connected.

    The server's certificate must chain to the federation CA and name
    ``peer_id``. Call from inside the running event loop; close it (``await
    ch.close()`` or ``async with``). See :func:`connect` to also wait for it.
    """
    if not certs.MEMBER_ID_PATTERN.fullmatch(peer_id):
        raise ConfigError(f"peer id {peer_id!r} is not a member id")
    cert, key, ca = identity.tls_files()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )
    options: list[tuple[str, str | int]] = [
        # verify the server's SAN against the member id, whatever address we dial
        ("grpc.ssl_target_name_override", peer_id),
        *limits.channel_options(),
    ]
    return grpc.aio.secure_channel(target, credentials, options=options)


async def connect(
    identity: Identity,
    target: str,
    *,
    peer_id: str,
    limits: TransportLimits = DEFAULT_LIMITS,
) -> grpc.aio.Channel:
    """Like :func:`channel`, but wait (at most ``connect_timeout_ms``) until it is connected.

    Raises RpcFailed(UNAVAILABLE) if no connection — TCP and TLS, both ways
    authenticated — comes up in time; the channel is closed then.
    """
    ch = channel(identity, target, peer_id=peer_id, limits=limits)
    try:
        await asyncio.wait_for(ch.channel_ready(), timeout=limits.connect_timeout_s)
    except TimeoutError:
        await ch.close(grace=None)
        raise RpcFailed(
            grpc.StatusCode.UNAVAILABLE,
            f"no connection within {limits.connect_timeout_ms} ms",
            what=f"connect to {peer_id} at {target}",
        ) from None
    except BaseException:
        await ch.close(grace=None)
        raise
    return ch


def server(*, limits: TransportLimits = DEFAULT_LIMITS) -> grpc.aio.Server:
    """A ``grpc.aio`` server with the limits applied; add services, a port, then ``start()``.

    Every method is held to its request limit before parsing (:class:`RequestGuard`).
    """
    return grpc.aio.server(
        interceptors=[RequestGuard(limits.requests)],
        options=limits.server_options(),
        maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
    )


def add_secure_port(srv: grpc.aio.Server, identity: Identity, address: str) -> int:
    """Listen on ``address`` (e.g. ``0.0.0.0:7443``, ``127.0.0.1:0``) with mutual TLS; the port."""
    credentials = server_credentials(identity)
    try:
        port = srv.add_secure_port(address, credentials)
    except RuntimeError as exc:  # recent gRPC raises instead of returning 0
        raise ConfigError(f"cannot listen on {address}: {exc}") from None
    if port == 0:
        raise ConfigError(f"cannot listen on {address}")
    return port


async def add_health(srv: grpc.aio.Server, *, services: Iterable[str] = ()) -> Any:
    """Add the standard gRPC health service (grpc.health.v1), SERVING for ``services`` and "".

    Returns the servicer, whose ``set()`` and ``enter_graceful_shutdown()`` the
    caller uses to report changes. Reachable by any member that passes the TLS
    handshake; it reveals nothing but liveness.
    """
    # grpc-stubs types only the sync health servicer; health.aio is the public async one
    servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(servicer, srv)
    for name in ("", *services):
        await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return servicer


# ---------------------------------------------------------------- who is calling


def peer_certificate(auth_context: Mapping[str, Iterable[bytes]]) -> bytes | None:
    """The peer's leaf certificate (PEM) from a gRPC auth context, or None without TLS."""
    if list(auth_context.get(_SECURITY_TYPE_KEY, ())) != [b"ssl"]:
        return None
    certs = list(auth_context.get(_PEER_CERT_KEY, ()))
    return certs[0] if len(certs) == 1 else None


def peer_member(
    auth_context: Mapping[str, Iterable[bytes]], manifest: Manifest, *, roles: Collection[str]
) -> Member:
    """The active member behind a connection, if its role is one of ``roles``.

    Raises VerificationError (no or unknown certificate, one the manifest does
    not list, a revoked member) or RoleNotPermitted. The chain to the CA was
    already checked by the TLS handshake (``require_client_auth``).
    """
    wanted = _roles(roles)
    pem = peer_certificate(auth_context)
    if pem is None:
        raise VerificationError("the connection carries no client certificate")
    member = certs.verify_peer(manifest, pem)
    if member.role not in wanted:
        raise RoleNotPermitted(
            f"{show_id(member.id)} is {a_role(member.role)}; allowed: {sorted(wanted)}"
        )
    return member


async def authenticate(
    context: grpc.aio.ServicerContext[Any, Any], manifest: Manifest, *, roles: Collection[str]
) -> Member:
    """The calling member (see :func:`peer_member`), or abort the call.

    The one verification function every servicer method calls first, with the
    current manifest. Aborts with UNAUTHENTICATED (not an active member, or not
    this certificate) or PERMISSION_DENIED (wrong role); the reason is logged
    here (at most a line per peer a minute), never sent.
    """
    try:
        return peer_member(context.auth_context(), manifest, roles=roles)
    except VerificationError as exc:
        REFUSALS.warning(context.peer(), f"refused: {exc}")
        refused: VerificationError = exc
    # aborted outside the except block: the abort chains no exception (see rpc.guard)
    await abort_for(context, refused)


def _roles(roles: Collection[str]) -> frozenset[str]:
    wanted = frozenset(roles)
    if isinstance(roles, str) or not wanted or not wanted <= set(ROLES):
        # a programming error: an empty or misspelt role set would admit nobody
        raise ConfigError(f"roles must be a non-empty collection of {ROLES}, not {roles!r}")
    return wanted


# ---------------------------------------------------------------- errors -> status codes


class RpcFailed(FedscreenError):
    """A gRPC call failed; ``code`` is the gRPC status, ``details`` the peer's short reason."""

    def __init__(self, code: grpc.StatusCode, details: str, *, what: str = "call") -> None:
        self.code = code
        self.details = details[:MAX_DETAIL_CHARS]
        hint = _HINTS.get(code, "")
        text = f"{what} failed: {code.name}"
        if self.details:
            text += f": {self.details}"
        super().__init__(f"{text}; {hint}" if hint else text)


#: Domain error -> gRPC status code. The most specific class in an error's MRO
#: wins; anything else becomes INTERNAL. Codes follow the meanings in
#: https://grpc.github.io/grpc/core/md_doc_statuscodes.html.
STATUS_OF: Final[Mapping[type[BaseException], grpc.StatusCode]] = {
    # a well-formed query the policy, budget or shape rules refuse
    QueryRefused: grpc.StatusCode.FAILED_PRECONDITION,
    # authenticated, but this role may not call this method
    RoleNotPermitted: grpc.StatusCode.PERMISSION_DENIED,
    # bytes that are not an envelope at all: the request is malformed
    MalformedEnvelope: grpc.StatusCode.INVALID_ARGUMENT,
    # unknown or revoked member, bad signature, wrong certificate
    VerificationError: grpc.StatusCode.UNAUTHENTICATED,
    IngestError: grpc.StatusCode.INVALID_ARGUMENT,
    # the server's own configuration, policy files or instrument files are wrong
    ConfigError: grpc.StatusCode.INTERNAL,
    PolicyError: grpc.StatusCode.INTERNAL,
    InstrumentError: grpc.StatusCode.INTERNAL,
    # a call this server made on the caller's behalf failed (e.g. a node link)
    RpcFailed: grpc.StatusCode.UNAVAILABLE,
    FedscreenError: grpc.StatusCode.INTERNAL,
}

#: Errors whose message is written for the caller (which part of its query was
#: refused, and why) and holds no data; every other error is sent as a fixed text.
_EXPLAINED: Final = (QueryRefused,)

_PUBLIC_DETAILS: Final[Mapping[grpc.StatusCode, str]] = {
    grpc.StatusCode.UNAUTHENTICATED: "not an active member of this federation, or not verified",
    grpc.StatusCode.PERMISSION_DENIED: "this member's role may not call this method",
    grpc.StatusCode.INVALID_ARGUMENT: "malformed request",
    grpc.StatusCode.FAILED_PRECONDITION: "request refused",
    grpc.StatusCode.UNAVAILABLE: "a peer this request needs is unavailable",
    grpc.StatusCode.INTERNAL: "internal error; see the server's log",
}

#: One line a user can act on, appended to RpcFailed messages.
_HINTS: Final[Mapping[grpc.StatusCode, str]] = {
    grpc.StatusCode.UNAVAILABLE: (
        "check the address and the network, and that both sides hold certificates "
        "from this federation's CA"
    ),
    grpc.StatusCode.DEADLINE_EXCEEDED: "the peer did not answer in time; try again later",
    grpc.StatusCode.UNAUTHENTICATED: (
        "the peer does not accept this member (revoked, not yet in its manifest, "
        "or another federation)"
    ),
    grpc.StatusCode.PERMISSION_DENIED: "use an identity whose role may make this call",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "the peer is overloaded or the message is too large",
}


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The status code :data:`STATUS_OF` assigns to ``exc`` (INTERNAL if none)."""
    for cls in type(exc).__mro__:
        code = STATUS_OF.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


async def abort_for(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> NoReturn:
    """Abort the call with ``exc``'s status code and a detail text that holds no data.

    An abort already under way (``grpc.aio.AbortError``) is re-raised unchanged.
    Errors that are not fedscreen's own are logged with their traceback here.
    ``exc``'s frames are cleared and the abort chains nothing (see :mod:`fedscreen.rpc.guard`).
    """
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    code = status_of(exc)
    if isinstance(exc, _EXPLAINED):
        details = str(exc)[:MAX_DETAIL_CHARS]
    else:
        details = _PUBLIC_DETAILS.get(code, code.name.lower().replace("_", " "))
    if not isinstance(exc, FedscreenError):
        _log.error("unexpected error in %s", context.peer(), exc_info=exc)
    elif code is grpc.StatusCode.INTERNAL:
        _log.error("call from %s failed: %s", context.peer(), exc)
    release_abort(exc)
    del exc
    try:
        await context.abort(code, details)
    except grpc.aio.AbortError as abort:
        abort.__context__ = None
        raise


@contextlib.asynccontextmanager
async def abort_on_error(context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
    """Turn any error raised in the block into the mapped status (:func:`abort_for`).

    Servicer methods wrap their body in it instead of catching errors one by one.
    """
    try:
        yield
    except grpc.aio.AbortError:  # an abort under way passes untouched
        raise
    except Exception as exc:  # every error, so nothing unmapped reaches the caller
        failed: Exception = exc
    else:
        return
    # outside the except block, so the abort is chained to nothing
    await abort_for(context, failed)


def wrap_rpc_error(exc: grpc.RpcError, *, what: str = "call") -> RpcFailed:
    """The :class:`RpcFailed` for a client-side ``grpc.RpcError``."""
    code_of = getattr(exc, "code", None)
    details_of = getattr(exc, "details", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    details = details_of() if callable(details_of) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    return RpcFailed(code, details if isinstance(details, str) else "", what=what)


@contextlib.contextmanager
def rpc_errors(what: str = "call") -> Iterator[None]:
    """Re-raise ``grpc.RpcError`` raised in the block as :class:`RpcFailed`.

    Works around ``await`` too: ``with rpc_errors("submit"): await stub.Submit(...)``.
    """
    try:
        yield
    except grpc.RpcError as exc:
        raise wrap_rpc_error(exc, what=what) from exc
