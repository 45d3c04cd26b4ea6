"""The Analyst service's read-only calls: budget statements, node status, newest releases.

Part of the coordinator's gRPC face (:mod:`.server`, which adds ``Submit``), kept apart
so each module stays small. Thin, as the other servicers: authenticate, read on the
core's thread, encode (``rpc.serde``); errors go through the transport's one table.

* **Budgets** — the nodes' newest budget statements, verbatim, for analysts and
  auditors to verify and plan with (to an analyst, the nodes inside its scope only).
* **Status** — the coordinator's view of its active nodes.
* **Fetch** — the newest stored version of a query's release (``coordinator.releases``):
  a later version than Submit returned once an offline node's answer came by file.
  Only the analyst who signed the query gets it; every other case — another analyst's
  query, no release, an id that is no query id — gets the same NOT_FOUND text, so a
  caller learns nothing of queries that are not its own.
"""

from __future__ import annotations

from typing import Any, Final

import grpc

from fedscreen.coordinator import scoping
from fedscreen.coordinator.core import Coordinator
from fedscreen.coordinator.offline import offline_statements
from fedscreen.coordinator.releases import StoredRelease, newest_release
from fedscreen.coordinator.runtime import (
    CoreThread,
    ServerLimits,
    active_nodes,
    settle_statements,
)
from fedscreen.coordinator.sessions import SessionRegistry, now_ms
from fedscreen.crypto.envelope import Envelope
from fedscreen.errors import FedscreenError
from fedscreen.protocol.query import ANY_AGE_MS, is_query_id, shown_query_id, verify_query
from fedscreen.rpc import serde, transport
from fedscreen.v1 import federation_pb2 as pb
from fedscreen.v1 import federation_pb2_grpc as pb_grpc

__all__ = ["BUDGET_READERS", "FETCH_READERS", "STATUS_READERS", "AnalystReads", "own_release"]

#: who may read the nodes' budget statements
BUDGET_READERS: Final = frozenset({"analyst", "auditor"})
#: who may read the coordinator's view of its nodes: its operator (the coordinator's
#: own identity), analysts and auditors
STATUS_READERS: Final = frozenset({"coordinator", "analyst", "auditor"})
#: who may fetch a release: the analyst who signed its query (checked per query)
FETCH_READERS: Final = frozenset({"analyst"})


def own_release(core: Coordinator, query_id: str, analyst: str) -> StoredRelease | None:
    """The newest release of ``query_id`` if ``analyst`` signed the query, else None.

    The stored query is verified (signature against the manifest, any age) before its
    analyst is read: a release made without its signed query (b"", tests calling the
    core directly) or one whose analyst's key is no longer in the manifest is nobody's.
    """
    if not is_query_id(query_id):
        return None
    stored = newest_release(core.conn, query_id)
    if stored is None or not stored.query_envelope:
        return None
    try:
        query = verify_query(
            Envelope.from_json(stored.query_envelope),
            manifest=core.manifest,
            now_ms=0,
            window_ms=ANY_AGE_MS,
        )
    except FedscreenError:
        return None
    return stored if query.analyst == analyst and query.query_id == query_id else None


class AnalystReads(pb_grpc.AnalystServicer):
    """Budgets, Status and Fetch; :class:`.server.AnalystServicer` adds Submit and
    provides the attributes below."""

    core: CoreThread
    sessions: SessionRegistry
    limits: ServerLimits

    async def Budgets(
        self, request: pb.BudgetsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.BudgetsResponse:
        """Every active node's newest budget statement, verbatim, and who is connected
        (to an analyst, the nodes inside its scope only)."""
        member = await transport.authenticate(
            context, self.core.core.manifest, roles=BUDGET_READERS
        )
        async with transport.abort_on_error(context):
            # a revoked node's statements are no longer handed out (as Submit, newest manifest)
            node_ids = set(await self.core.call(active_nodes))
            if member.role == "analyst":
                node_ids = scoping.within(self.core.core.manifest, member.id, node_ids)
        settle_statements(self.core.core.manifest, self.sessions)
        held = {n: envelope for n, (_, envelope) in self.sessions.budgets.items() if n in node_ids}
        # an offline node's newest statement came in its last answer file
        offline = (node_ids & self.core.core.manifest.offline) - set(held)
        if offline:
            held.update(await self.core.call(lambda core: offline_statements(core, offline)))
        return serde.statements_response(
            held,
            connected=[n for n in self.sessions.connected if n in node_ids],
            missing=node_ids - set(held),
        )

    async def Status(
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.StatusResponse:
        """The coordinator's view of its active nodes: link, clock offset, statement age."""
        await transport.authenticate(context, self.core.core.manifest, roles=STATUS_READERS)
        async with transport.abort_on_error(context):
            node_ids = await self.core.call(active_nodes)
            settle_statements(self.core.core.manifest, self.sessions)
            book = self.core.book
            # read from the database: a readmission made by another process shows at once
            logs = await self.core.call(lambda _: book.states(node_ids))
        return serde.status_response(
            node_ids,
            self.sessions.seen,
            connected=set(self.sessions.connected),
            now_ms=now_ms(),
            tolerance_ms=self.limits.clock_tolerance_ms,
            logs={s.node_id: s for s in logs},
        )

    async def Fetch(
        self, request: pb.FetchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.FetchResponse:
        """The newest release of one of the caller's own queries; NOT_FOUND otherwise."""
        member = await transport.authenticate(context, self.core.core.manifest, roles=FETCH_READERS)
        query_id = request.query_id
        async with transport.abort_on_error(context):
            stored = await self.core.call(lambda core: own_release(core, query_id, member.id))
        if stored is None:
            # one text for "not yours" and "none": whose queries exist is not disclosed
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no release of query {shown_query_id(query_id)} for analyst {member.id}",
            )
        return serde.fetch_response(
            query_envelope=stored.query_envelope,
            release_envelope=stored.envelope,
            answers=stored.answers,
            missing=stored.missing,
            release_version=stored.release_version,
        )
