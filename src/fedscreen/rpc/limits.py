"""Every size, count, timeout and interval of the gRPC edge, with its unit, in one place."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Final

from fedscreen.errors import ConfigError
from fedscreen.rpc.guard import DEFAULT_REQUEST_LIMITS, RequestLimits

__all__ = ["DEFAULT_LIMITS", "TransportLimits", "check_positive_limits"]


def check_positive_limits(limits: Any, what: str) -> None:
    """Every int field of a limits dataclass must be a positive integer (not a bool)."""
    for f in fields(limits):
        value = getattr(limits, f.name)
        if is_dataclass(value):  # nested limits check themselves
            continue
        # bool is an int; a True here is a mistake, not 1
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{what} limit {f.name} must be a positive integer")


@dataclass(frozen=True)
class TransportLimits:
    """Every size, count and timeout of the transport, with its unit.

    The defaults suit a province: tens to a few hundred nodes, answers of a
    few KiB, county networks behind NAT and firewalls that drop idle flows.
    """

    #: largest message a client accepts and anyone sends (bytes): a release with a few
    #: hundred answers of a few KiB fits; what servers accept is per method (requests)
    max_message_bytes: int = 8 * 1024 * 1024
    #: largest header block accepted (bytes)
    max_metadata_bytes: int = 16 * 1024
    #: interval between HTTP/2 pings on a connection (ms); below the idle
    #: timeout of common NAT boxes, so an open node stream keeps its mapping
    keepalive_time_ms: int = 20_000
    #: a ping unanswered for this long closes the connection (ms), so a dead
    #: node's stream is noticed within keepalive_time_ms + keepalive_timeout_ms
    keepalive_timeout_ms: int = 10_000
    #: a client gives up establishing a connection (TCP + TLS) after this (ms)
    connect_timeout_ms: int = 10_000
    #: a server drops a connection whose TLS handshake takes longer (ms)
    handshake_timeout_ms: int = 10_000
    #: ceiling of gRPC's own exponential reconnect backoff inside a channel (ms)
    max_reconnect_backoff_ms: int = 30_000
    #: default deadline of a unary call (ms)
    call_timeout_ms: int = 30_000
    #: RPCs a server runs at once, streams included (count); more are refused
    #: with RESOURCE_EXHAUSTED
    max_concurrent_rpcs: int = 1024
    #: concurrent streams on one HTTP/2 connection (count)
    max_concurrent_streams: int = 128
    #: how much a server lets one stream send before it reads (bytes): a fixed HTTP/2
    #: flow-control window, since BDP probing is off (see ``_common_options``); the
    #: requests servers take are mostly small (answers of a few KiB, at most 4 MiB): a
    #: request larger than this waits a round trip for each further MiB
    server_stream_window_bytes: int = 1024 * 1024
    #: the same for a client (bytes): analysts receive releases of up to 8 MiB, which
    #: this window lets through in two round trips
    client_stream_window_bytes: int = 4 * 1024 * 1024
    #: the largest request each server method accepts (bytes), checked before parsing
    requests: RequestLimits = field(default=DEFAULT_REQUEST_LIMITS)

    def __post_init__(self) -> None:
        check_positive_limits(self, "transport")

    @property
    def call_timeout_s(self) -> float:
        """:attr:`call_timeout_ms` in seconds, as gRPC's ``timeout=`` wants it."""
        return self.call_timeout_ms / 1000

    @property
    def connect_timeout_s(self) -> float:
        """:attr:`connect_timeout_ms` in seconds."""
        return self.connect_timeout_ms / 1000

    def _common_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_metadata_size", self.max_metadata_bytes),
            ("grpc.keepalive_time_ms", self.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
            # a node's stream may sit idle for hours between queries; keep pinging
            ("grpc.keepalive_permit_without_calls", 1),
            # No bandwidth-delay probing: gRPC would ping the peer on data received to size
            # its window, which for the small messages of a federation (one answer or
            # query of a few KiB at a time) cost more than the message itself — a third
            # of the coordinator's CPU in its gRPC threads at 292 nodes
            # (scripts/bench_federation.py). A fixed window (lookahead) takes its place.
            ("grpc.http2.bdp_probe", 0),
        ]

    def channel_options(self) -> list[tuple[str, int]]:
        """Client channel arguments."""
        return [
            *self._common_options(),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            # gRPC otherwise stops pinging after 2 pings with no data in between,
            # which would let a NAT box forget an idle node stream
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_reconnect_backoff_ms", self.max_reconnect_backoff_ms),
            ("grpc.http2.lookahead_bytes", self.client_stream_window_bytes),
        ]

    def server_options(self) -> list[tuple[str, int]]:
        """Server arguments."""
        return [
            *self._common_options(),
            # gRPC's core refuses anything larger unparsed; RequestGuard does the rest
            ("grpc.max_receive_message_length", self.requests.largest),
            # accept clients' keepalive pings at our own rate (with margin for
            # timer jitter); the default, 5 min, would GOAWAY them as abusive
            ("grpc.http2.min_ping_interval_without_data_ms", self.keepalive_time_ms // 2),
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            ("grpc.server_handshake_timeout_ms", self.handshake_timeout_ms),
            # Linux SO_REUSEPORT would let a second process share our port unnoticed
            ("grpc.so_reuseport", 0),
            ("grpc.http2.lookahead_bytes", self.server_stream_window_bytes),
        ]


DEFAULT_LIMITS: Final = TransportLimits()
