"""How a node dials its coordinator: the agent's limits, its redial backoff, what a Welcome reports.

Kept apart from :mod:`fedscreen.node.agent` (which re-exports them) so that module stays
within its size; no protobuf and no gRPC here. The redial loop itself is
:mod:`fedscreen.rpc.redial`, shared with the second aggregator's agent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from fedscreen.errors import ConfigError
from fedscreen.rpc import clock, redial, transport
from fedscreen.rpc.redial import keep_dialling
from fedscreen.rpc.transport import DEFAULT_LIMITS, TransportLimits

__all__ = ["DEFAULT_NODE_LIMITS", "NodeLimits", "Welcomed", "backoff_ms", "keep_dialling"]


@dataclass(frozen=True)
class NodeLimits:
    """Every wait and interval of the node agent, with its unit."""

    #: a Heartbeat goes up the stream this often (ms); the coordinator drops a
    #: session silent for its ``session_idle_timeout_ms`` (60 s by default)
    heartbeat_interval_ms: int = 15_000
    #: first redial delay after a failed or ended stream (ms)
    backoff_initial_ms: int = 500
    #: the redial delay doubles per failure up to this (ms)
    backoff_max_ms: int = 30_000
    #: dialing, the TLS handshake, Hello and Welcome together must take at most this (ms)
    welcome_timeout_ms: int = 10_000
    #: the largest clock offset from the coordinator, either way, at which the node
    #: still answers (ms); see fedscreen.rpc.clock
    clock_tolerance_ms: int = clock.CLOCK_TOLERANCE_MS
    transport: TransportLimits = field(default=DEFAULT_LIMITS)

    def __post_init__(self) -> None:
        transport.check_positive_limits(self, "node")
        if self.backoff_initial_ms > self.backoff_max_ms:
            raise ConfigError("backoff_initial_ms must not exceed backoff_max_ms")


DEFAULT_NODE_LIMITS: Final = NodeLimits()


@dataclass(frozen=True)
class Welcomed:
    """The coordinator accepted a session (reported to ``on_welcome``)."""

    node_id: str
    coordinator: str
    #: sessions opened since the agent started, this one included (count)
    session: int
    manifest_version: int
    #: this node's clock minus the coordinator's (ms); None if the coordinator sent no clock
    clock_offset_ms: int | None = None


def backoff_ms(attempt: int, *, limits: NodeLimits = DEFAULT_NODE_LIMITS) -> int:
    """The delay before redial number ``attempt`` (0-based), in ms: jittered exponential
    backoff (:func:`fedscreen.rpc.redial.backoff_ms`)."""
    return redial.backoff_ms(attempt, limits=limits)
