"""A node's handling of a signed query that arrived from the federation.

The node trusts nobody on the path: it verifies the analyst's signature and
role against its own copy of the manifest (the coordinator cannot forge or
alter a query), checks freshness, the coordinator's deadline and that the query
is addressed to it, then runs the engine, which answers each query id once (a
replay gets the stored answer and costs nothing). Every refusal — a bad or stale
envelope, a passed deadline, a query for other nodes, and whatever the engine
refuses — is recorded and logged, and costs nothing.
"""

from __future__ import annotations

import sqlite3
import time

from fedscreen._util.canonical import canonical_json
from fedscreen.crypto.envelope import Envelope
from fedscreen.errors import FedscreenError, QueryRefused, VerificationError
from fedscreen.node.engine import QueryRequest, answer_query, record_refusal
from fedscreen.node.home import NodeConfig
from fedscreen.policy import Policy
from fedscreen.protocol.query import FRESHNESS_WINDOW_MS, verify_query
from fedscreen.trust.manifest import Manifest


def handle_query(
    config: NodeConfig,
    policy: Policy,
    manifest: Manifest,
    envelope_bytes: bytes,
    *,
    conn: sqlite3.Connection,
    now_ms: int | None = None,
    window_ms: int = FRESHNESS_WINDOW_MS,
    deadline_unix_ms: int | None = None,
) -> bytes:
    """Answer a signed query; returns the signed answer envelope (JSON bytes).

    ``deadline_unix_ms`` (the coordinator's, 0 or None: none): a query that reaches
    the node when its deadline has passed is refused, not started — its answer
    could not be delivered, and a charge for it would buy nothing.

    Raises QueryRefused (recorded and logged) for anything the node will not answer.
    """
    clock = int(time.time() * 1000) if now_ms is None else now_ms
    try:
        envelope = Envelope.from_json(envelope_bytes)
        query = verify_query(envelope, manifest=manifest, now_ms=clock, window_ms=window_ms)
    except (VerificationError, QueryRefused, RecursionError) as exc:
        problem = str(exc) if isinstance(exc, FedscreenError) else "nested too deeply"
        reason = f"not a valid analyst query: {problem}"
        record_refusal(config, conn, analyst="(unverified)", query="", reason=reason)
        raise QueryRefused(reason) from None
    if deadline_unix_ms and clock >= deadline_unix_ms:
        reason = (
            f"the coordinator's deadline for query {query.query_id} passed "
            f"{(clock - deadline_unix_ms) / 1000:.3g} s before the node could start"
        )
        record_refusal(config, conn, analyst=query.analyst, query=query.query_id, reason=reason)
        raise QueryRefused(reason)
    if query.nodes and config.node_id not in query.nodes:
        reason = f"query {query.query_id} is not addressed to node {config.node_id}"
        record_refusal(config, conn, analyst=query.analyst, query=query.query_id, reason=reason)
        raise QueryRefused(reason)
    request = QueryRequest(
        analyst=query.analyst,
        spec=query.spec,
        epsilon=query.epsilon,
        accuracy=query.accuracy,
        text=canonical_json(query.to_json()).decode(),
        query_id=query.query_id,
    )
    answer = answer_query(config, policy, request, conn=conn)
    return answer.envelope.to_json().encode("utf-8")
