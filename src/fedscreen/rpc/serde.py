"""Protobuf ↔ fedscreen values, at the gRPC edge: the core never sees a protobuf type.

Envelopes cross the wire as opaque bytes and are kept verbatim (signatures are
over exactly those bytes); everything else is converted here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fedscreen.v1 import federation_pb2 as pb

__all__ = [
    "Statements",
    "Submitted",
    "statements",
    "statements_response",
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
