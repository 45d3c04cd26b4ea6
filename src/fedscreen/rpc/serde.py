"""Protobuf ↔ fedscreen values, at the gRPC edge: the core never sees a protobuf type.

Envelopes cross the wire as opaque bytes and are kept verbatim (signatures are
over exactly those bytes); everything else is converted here.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from fedscreen.v1 import federation_pb2 as pb

__all__ = [
    "AggregationWork",
    "CoordinatorStatus",
    "Fetched",
    "NodeView",
    "Statements",
    "Submitted",
    "aggregation_request",
    "aggregation_work",
    "fetch_response",
    "fetched",
    "statements",
    "statements_response",
    "status",
    "status_response",
    "submit_response",
    "submitted",
]


@dataclass(frozen=True)
class Submitted:
    """What the coordinator returned for one query, as received (not yet verified)."""

    release_envelope: bytes
    #: node id -> the node's answer envelope, verbatim
    answers: dict[str, bytes]
    missing: tuple[str, ...]


@dataclass(frozen=True)
class Statements:
    """The nodes' budget statements as the coordinator holds them (not yet verified)."""

    #: (node id, the node's statement envelope, verbatim)
    envelopes: tuple[tuple[str, bytes], ...]
    #: nodes with a live session (the coordinator's word: nothing signs this)
    connected: tuple[str, ...]


def submitted(response: pb.SubmitResponse) -> Submitted:
    """The analyst's view of a SubmitResponse."""
    return Submitted(
        release_envelope=bytes(response.release_envelope),
        answers={a.node_id: bytes(a.envelope) for a in response.answers},
        missing=tuple(response.missing_nodes),
    )


def submit_response(
    release_envelope: bytes, answers: Mapping[str, bytes], missing: Iterable[str]
) -> pb.SubmitResponse:
    """The coordinator's SubmitResponse: the release and the answers it combines."""
    return pb.SubmitResponse(
        release_envelope=release_envelope,
        answers=[pb.NodeAnswer(node_id=n, envelope=answers[n]) for n in sorted(answers)],
        missing_nodes=list(missing),
    )


@dataclass(frozen=True)
class Fetched:
    """The newest release of a query as the coordinator returned it (not yet verified)."""

    #: the analyst's signed query, verbatim
    query_envelope: bytes
    release_envelope: bytes
    #: node id -> the node's answer envelope, verbatim
    answers: dict[str, bytes]
    missing: tuple[str, ...]
    #: the coordinator's word; the signed release states its own
    release_version: int


def fetch_response(
    *,
    query_envelope: bytes,
    release_envelope: bytes,
    answers: Mapping[str, bytes],
    missing: Iterable[str],
    release_version: int,
) -> pb.FetchResponse:
    """The coordinator's FetchResponse: a stored release and what it is made of."""
    return pb.FetchResponse(
        query_envelope=query_envelope,
        release_envelope=release_envelope,
        answers=[pb.NodeAnswer(node_id=n, envelope=answers[n]) for n in sorted(answers)],
        missing_nodes=list(missing),
        release_version=release_version,
    )


def fetched(response: pb.FetchResponse) -> Fetched:
    """The analyst's view of a FetchResponse."""
    return Fetched(
        query_envelope=bytes(response.query_envelope),
        release_envelope=bytes(response.release_envelope),
        answers={a.node_id: bytes(a.envelope) for a in response.answers},
        missing=tuple(response.missing_nodes),
        release_version=int(response.release_version),
    )


def statements(response: pb.BudgetsResponse) -> Statements:
    """The analyst's view of a BudgetsResponse."""
    return Statements(
        envelopes=tuple((s.node_id, bytes(s.envelope)) for s in response.statements),
        connected=tuple(response.connected_nodes),
    )


def statements_response(
    held: Mapping[str, bytes], *, connected: Iterable[str], missing: Iterable[str]
) -> pb.BudgetsResponse:
    """The coordinator's BudgetsResponse: each node's newest statement, verbatim."""
    return pb.BudgetsResponse(
        statements=[pb.NodeAnswer(node_id=n, envelope=held[n]) for n in sorted(held)],
        connected_nodes=list(connected),
        missing_nodes=sorted(missing),
    )


class _Seen(Protocol):
    """What the coordinator keeps per node (``coordinator.sessions.NodeSeen``)."""

    @property
    def clock_offset_ms(self) -> int | None: ...
    @property
    def session_opened_ms(self) -> int: ...
    @property
    def statement_at_ms(self) -> int: ...
    @property
    def software_version(self) -> str: ...


class _QuarantineView(Protocol):
    @property
    def reason(self) -> str: ...


class _LogState(Protocol):
    """What the coordinator holds of a node's log (``coordinator.quarantine.NodeLogState``)."""

    @property
    def checkpoint_size(self) -> int: ...
    @property
    def quarantined(self) -> _QuarantineView | None: ...


@dataclass(frozen=True)
class NodeView:
    """One node as the coordinator sees it (its word: nothing here is signed)."""

    node_id: str
    connected: bool
    #: the node's clock minus the coordinator's (ms); None if the node never sent its clock
    clock_offset_ms: int | None
    #: when its newest budget statement arrived (ms since the epoch); 0 if none
    statement_at_ms: int
    #: when its newest session opened (ms since the epoch); 0 if never
    session_opened_ms: int
    software_version: str
    #: the size of the node's log in its newest checkpoint the coordinator verified (0: none)
    checkpoint_size: int = 0
    quarantined: bool = False
    #: why it is quarantined ("" when it is not)
    quarantine_reason: str = ""


@dataclass(frozen=True)
class CoordinatorStatus:
    """The coordinator's view of its nodes."""

    coordinator_time_ms: int
    clock_tolerance_ms: int
    nodes: tuple[NodeView, ...]


def status_response(
    node_ids: Iterable[str],
    seen: Mapping[str, _Seen],
    *,
    connected: Collection[str],
    now_ms: int,
    tolerance_ms: int,
    logs: Mapping[str, _LogState] | None = None,
) -> pb.StatusResponse:
    """The coordinator's StatusResponse: a row per active node, sorted."""
    rows = []
    for node_id in sorted(node_ids):
        node = seen.get(node_id)
        log = (logs or {}).get(node_id)
        held = None if log is None else log.quarantined
        offset = None if node is None else node.clock_offset_ms
        rows.append(
            pb.NodeState(
                node_id=node_id,
                connected=node_id in connected,
                clock_offset_ms=offset or 0,
                clock_known=offset is not None,
                last_statement_unix_ms=0 if node is None else node.statement_at_ms,
                session_opened_unix_ms=0 if node is None else node.session_opened_ms,
                software_version="" if node is None else node.software_version,
                quarantined=held is not None,
                quarantine_reason="" if held is None else held.reason,
                checkpoint_size=0 if log is None else log.checkpoint_size,
            )
        )
    return pb.StatusResponse(
        coordinator_time_unix_ms=now_ms, clock_tolerance_ms=tolerance_ms, nodes=rows
    )


def status(response: pb.StatusResponse) -> CoordinatorStatus:
    """The operator's view of a StatusResponse."""
    return CoordinatorStatus(
        coordinator_time_ms=response.coordinator_time_unix_ms,
        clock_tolerance_ms=response.clock_tolerance_ms,
        nodes=tuple(
            NodeView(
                node_id=n.node_id,
                connected=n.connected,
                clock_offset_ms=n.clock_offset_ms if n.clock_known else None,
                statement_at_ms=n.last_statement_unix_ms,
                session_opened_ms=n.session_opened_unix_ms,
                software_version=n.software_version,
                checkpoint_size=n.checkpoint_size,
                quarantined=n.quarantined,
                quarantine_reason=n.quarantine_reason,
            )
            for n in response.nodes
        ),
    )


@dataclass(frozen=True)
class AggregationWork:
    """One secure query for the second aggregator to sum, as the coordinator sends it
    (nothing verified yet: the aggregator verifies every envelope itself)."""

    query_id: str
    #: the analyst's query envelope, verbatim
    query_envelope: bytes
    #: (node id, the node's answer envelope, verbatim), in the order sent
    answers: tuple[tuple[str, bytes], ...]
    #: the year the coordinator pinned the query to ("": the spec names its years)
    academic_year: str
    #: ms since the Unix epoch after which nobody waits for the partial (0: none)
    deadline_unix_ms: int


def aggregation_request(work: AggregationWork) -> pb.ToAggregator:
    """The AggregationRequest the coordinator sends down the aggregator's stream."""
    return pb.ToAggregator(
        aggregation=pb.AggregationRequest(
            query_id=work.query_id,
            query_envelope=work.query_envelope,
            answers=[pb.NodeAnswer(node_id=n, envelope=e) for n, e in work.answers],
            academic_year=work.academic_year,
            deadline_unix_ms=work.deadline_unix_ms,
        )
    )


def aggregation_work(request: pb.AggregationRequest) -> AggregationWork:
    """The aggregator's view of an AggregationRequest."""
    return AggregationWork(
        query_id=request.query_id,
        query_envelope=bytes(request.query_envelope),
        answers=tuple((a.node_id, bytes(a.envelope)) for a in request.answers),
        academic_year=request.academic_year,
        deadline_unix_ms=request.deadline_unix_ms,
    )
