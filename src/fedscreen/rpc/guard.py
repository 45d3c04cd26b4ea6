"""Every request is measured before it is parsed; a refused one leaves nothing behind.

gRPC's ``grpc.max_receive_message_length`` is one number per server, so the
server is given the largest limit (a node's stream, which carries answers) and
:class:`RequestGuard`, a server interceptor, holds every method to its own
limit (:class:`RequestLimits`): it replaces each method's deserializer with one
that looks at the length of the raw bytes first and parses only what fits. A
request that is too large or not a protobuf never reaches a servicer: the call
ends with RESOURCE_EXHAUSTED or INVALID_ARGUMENT, a fixed text.

Leaving nothing behind (issue 12: every refused 5 MB request used to stay in
memory). ``context.abort`` keeps the AbortError it raises on the call's state,
and that exception's traceback holds the servicer's finished frame, whose
locals hold the request and the context — which holds the call's state again:
a reference cycle only the cyclic garbage collector frees, and it runs rarely
when little else is allocated. So the guard, the outermost frame of each call,
clears the frames of an abort's traceback (and drops the exceptions chained to
it) before the abort leaves it; :func:`fedscreen.rpc.transport.abort_for` aborts
outside the ``except`` block, so nothing is chained in the first place.

What stays after that is not held by anyone: a request larger than the server's
limit is refused by gRPC's C core, which still reads it in (in TLS records of
16 KiB) and frees it — into glibc's heap, which keeps freed memory for reuse
(tens of MiB after a flood of 5 MB requests). :func:`return_freed_memory`
hands it back to the system every few seconds (``malloc_trim``; nothing else
on other C libraries), so the process's resident size stays bounded.

Refusals are logged by fedscreen's own logger with the peer's address, at most
one line per peer per ``interval`` (:class:`PeerLog`), with a count of what was
not shown. What cannot be logged here: a failed TLS handshake (no client
certificate, one from another CA) ends inside gRPC's C core before any Python
code runs, so it is invisible to this process; gRPC's own tracer
(``GRPC_TRACE=handshaker``, stderr) is the only witness. A certificate that
passes the handshake but not the manifest is refused and logged here.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import gc
import logging
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Final

import grpc

__all__ = [
    "DEFAULT_REQUEST_LIMITS",
    "PeerLog",
    "RequestGuard",
    "RequestLimits",
    "name_os_thread",
    "peer_host",
    "release_abort",
    "return_freed_memory",
    "settle_collector",
]

_log = logging.getLogger(__name__)

SUBMIT: Final = "/fedscreen.v1.Analyst/Submit"
CONNECT: Final = "/fedscreen.v1.NodeLink/Connect"
AGGREGATOR_CONNECT: Final = "/fedscreen.v1.AggregatorLink/Connect"


@dataclass(frozen=True)
class RequestLimits:
    """The largest request message each method accepts, in bytes (serialized protobuf)."""

    #: Analyst.Submit: one signed query (a DSSE envelope of a few KiB) and a wait
    submit_bytes: int = 64 * 1024
    #: one message up a node's NodeLink stream: answers grow with their cells (a few
    #: KiB to a few hundred KiB for the largest histogram by every public group)
    node_message_bytes: int = 4 * 1024 * 1024
    #: one message up the second aggregator's AggregatorLink stream: a signed partial
    #: has one cell per group, as an answer does
    aggregator_message_bytes: int = 4 * 1024 * 1024
    #: every other method (Budgets, Status, the Audit reads, health): they carry
    #: nothing or a log's origin and a few integers
    small_bytes: int = 4 * 1024

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"request limit {f.name} must be a positive integer")

    def of(self, method: str) -> int:
        """The limit of ``method`` (its full name, ``/package.Service/Method``)."""
        return {
            SUBMIT: self.submit_bytes,
            CONNECT: self.node_message_bytes,
            AGGREGATOR_CONNECT: self.aggregator_message_bytes,
        }.get(method, self.small_bytes)

    @property
    def largest(self) -> int:
        """The server-wide receive limit: gRPC's core refuses anything larger unread."""
        return max(
            self.submit_bytes,
            self.node_message_bytes,
            self.aggregator_message_bytes,
            self.small_bytes,
        )


DEFAULT_REQUEST_LIMITS: Final = RequestLimits()


def peer_host(peer: str) -> str:
    """The address part of a gRPC peer string (``ipv4:10.0.0.7:51234`` -> ``10.0.0.7``)."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6") and rest:
        return rest.rsplit(":", 1)[0]
    return peer


@dataclass
class _Seen:
    since: float
    suppressed: int = 0


class PeerLog:
    """Warnings about peers, at most one line per peer (host) per ``interval_s``.

    Lines held back are counted and the count is added to the peer's next line,
    so a flood shows up as one line a minute, not one per request. At most
    ``max_peers`` peers are remembered (the oldest is forgotten first): a storm
    from many addresses costs bounded memory.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval_s: float = 60.0,
        max_peers: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._max_peers = max_peers
        self._clock = clock
        self._peers: collections.OrderedDict[str, _Seen] = collections.OrderedDict()

    def warning(self, peer: str, message: str) -> bool:
        """Log ``message`` about ``peer`` unless one was logged lately; True if logged."""
        host = peer_host(peer)
        now = self._clock()
        seen = self._peers.get(host)
        if seen is not None and now - seen.since < self._interval_s:
            seen.suppressed += 1
            return False
        more = ""
        if seen is not None and seen.suppressed:
            ago = now - seen.since
            more = f" (and {seen.suppressed} more from this peer in the last {ago:.0f} s)"
        self._peers[host] = _Seen(now)
        self._peers.move_to_end(host)
        while len(self._peers) > self._max_peers:
            self._peers.popitem(last=False)
        self._logger.warning("peer %s: %s%s", host, message, more)
        return True


#: refusals of calls, one line per peer a minute (fedscreen's own logger)
REFUSALS: Final = PeerLog(logging.getLogger("fedscreen.rpc.refused"))


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where there is no such thing."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)  # glibc has it, musl does not
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


async def return_freed_memory(*, interval_s: float) -> None:
    """Every ``interval_s``, return the C heap's free memory to the system (until cancelled).

    ``malloc_trim`` runs on a worker thread: it walks the heap's free lists.
    """
    trim = _malloc_trim()
    if trim is None:
        return
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval_s)
        await loop.run_in_executor(None, trim)


#: prctl's PR_SET_NAME (Linux): the calling thread's name, as /proc, top and perf show it
_PR_SET_NAME: Final = 15


def name_os_thread(name: str) -> None:
    """Name the calling thread for the operating system (at most 15 bytes; Linux only,
    elsewhere nothing), so an operator's ``top -H`` and a benchmark's per-thread CPU
    tell it from the interpreter's other threads, all called "python" otherwise."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(_PR_SET_NAME, name.encode("ascii")[:15], 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: the name is only for people
        return


#: the cyclic collector's thresholds for a long-running server (young, middle, old);
#: Python's are (700, 10, 10)
SERVER_COLLECTOR_THRESHOLDS: Final = (20_000, 50, 20)


def settle_collector() -> None:
    """Tune the cyclic garbage collector for a long-running server, once it is up.

    What is alive then (the manifest, caches, gRPC's objects) lives as long as the
    process: it is frozen out of the collector's passes (``gc.freeze``). Each answer
    a coordinator reads parses into hundreds of small containers, so with Python's
    thresholds the collector ran every few answers and walked the old generations
    often: about 5% of the coordinator's CPU (``perf``, scripts/bench_federation.py
    at 292 nodes). Young passes now come every 20,000 containers: cyclic garbage is
    still collected, only later (the guard already breaks the cycle a call's abort
    makes, see above).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVER_COLLECTOR_THRESHOLDS)


@dataclass(frozen=True)
class _Refused:
    """What a guarded deserializer returns instead of a message it will not parse."""

    code: grpc.StatusCode
    details: str
    log: str


def release_abort(exc: BaseException) -> None:
    """Let go of what an ending call's exception holds: its frames' locals, its chain.

    Clears the locals of every finished frame in the tracebacks of ``exc`` and
    of the exceptions chained to it (a frame still running is left alone), and
    unchains them. See the module docstring for why this matters.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if current.__traceback__ is not None:
            traceback.clear_frames(current.__traceback__)
        following = current.__cause__ or current.__context__
        current.__cause__ = None
        current.__context__ = None
        current = following


def _deserializer(
    method: str, limit: int, parse: Callable[[bytes], Any] | None
) -> Callable[[bytes], Any]:
    def deserialize(raw: bytes) -> Any:
        # the length first: nothing larger than the method's limit is parsed
        if len(raw) > limit:
            return _Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request larger than this method's limit of {limit} bytes",
                f"{method}: refused a request of {len(raw)} bytes (limit {limit})",
            )
        if parse is None:
            return raw
        try:
            return parse(raw)
        except Exception:  # DecodeError and whatever a parser raises: the bytes are bad
            return _Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                "malformed request",
                f"{method}: refused a request of {len(raw)} bytes that does not parse",
            )

    return deserialize


async def _refuse(context: grpc.aio.ServicerContext[Any, Any], refused: _Refused) -> None:
    REFUSALS.warning(context.peer(), refused.log)
    try:
        await context.abort(refused.code, refused.details)
    except grpc.aio.AbortError as exc:
        release_abort(exc)
        raise


Behaviour = Callable[..., Any]
if TYPE_CHECKING:
    _Handler = grpc.RpcMethodHandler[Any, Any]


def _unary_request(inner: Behaviour, streaming_response: bool) -> Behaviour:
    if streaming_response:

        async def unary_stream(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            if isinstance(request, _Refused):
                await _refuse(context, request)
            try:
                async for response in inner(request, context):
                    yield response
            except grpc.aio.AbortError as exc:
                del request
                release_abort(exc)
                raise

        return unary_stream

    async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, _Refused):
            await _refuse(context, request)
        try:
            return await inner(request, context)
        except grpc.aio.AbortError as exc:
            del request
            release_abort(exc)
            raise

    return unary_unary


def _stream_request(inner: Behaviour, streaming_response: bool) -> Behaviour:
    async def checked(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        async for message in requests:
            if isinstance(message, _Refused):
                await _refuse(context, message)
            yield message

    if streaming_response:

        async def stream_stream(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            try:
                async for response in inner(checked(requests, context), context):
                    yield response
            except grpc.aio.AbortError as exc:
                exc.__context__ = None
                raise

        return stream_stream

    async def stream_unary(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        try:
            return await inner(checked(requests, context), context)
        except grpc.aio.AbortError as exc:
            exc.__context__ = None
            raise

    return stream_unary


class RequestGuard(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Hold each method to its request limit and refuse unparsable requests (module docstring)."""

    def __init__(self, limits: RequestLimits = DEFAULT_REQUEST_LIMITS) -> None:
        self.limits = limits
        self._handlers: dict[str, _Handler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        guarded = self._handlers.get(method)
        if guarded is None:
            guarded = self._handlers[method] = self._guard(method, handler)
        return guarded

    def _guard(self, method: str, handler: _Handler) -> _Handler:
        deserialize = _deserializer(method, self.limits.of(method), handler.request_deserializer)
        serialize = handler.response_serializer
        make: Mapping[tuple[bool, bool], Callable[..., _Handler]] = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }
        kind = (handler.request_streaming, handler.response_streaming)
        inner = {
            (False, False): handler.unary_unary,
            (False, True): handler.unary_stream,
            (True, False): handler.stream_unary,
            (True, True): handler.stream_stream,
        }[kind]
        if inner is None:  # a handler without its behaviour: nothing to guard
            return handler
        wrap = _stream_request if handler.request_streaming else _unary_request
        return make[kind](
            wrap(inner, handler.response_streaming),
            request_deserializer=deserialize,
            response_serializer=serialize,
        )
