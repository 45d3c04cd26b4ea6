"""The coordinator's Audit service: its transparency log, read-only, over gRPC.

Checkpoint, entries and RFC 9162 Merkle proofs, for auditors and analysts, who verify
them themselves; part of the coordinator's gRPC face (:mod:`.server`), kept apart so
each module stays small.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import grpc

from fedscreen.coordinator.runtime import CoreThread, ServerLimits
from fedscreen.errors import QueryRefused
from fedscreen.rpc import transport
from fedscreen.v1 import federation_pb2 as pb
from fedscreen.v1 import federation_pb2_grpc as pb_grpc

__all__ = ["AuditServicer"]


class AuditServicer(pb_grpc.AuditServicer):
    """The coordinator's transparency log, read-only, for auditors and analysts."""

    ROLES: Final = frozenset({"auditor", "analyst"})

    def __init__(self, core: CoreThread, limits: ServerLimits) -> None:
        self.core = core
        self.limits = limits

    async def _check(self, context: grpc.aio.ServicerContext[Any, Any], origin: str) -> None:
        await transport.authenticate(context, self.core.core.manifest, roles=self.ROLES)
        if origin and origin != self.core.core.origin:
            await context.abort(grpc.StatusCode.NOT_FOUND, "this server holds no such log")

    async def _size(self) -> int:
        return await self.core.call(lambda core: core.log.size())

    async def GetCheckpoint(
        self, request: pb.CheckpointRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CheckpointResponse:
        """The newest signed checkpoint ("" while the log is empty)."""
        await self._check(context, request.origin)
        async with transport.abort_on_error(context):
            note = await self.core.call(lambda core: core.checkpoint())
        return pb.CheckpointResponse(note=note)

    async def GetEntries(
        self, request: pb.EntriesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.Entry]:
        """Entries [start, end), at most ``max_entries_per_call`` of them."""
        await self._check(context, request.origin)
        async with transport.abort_on_error(context):
            size = await self._size()
            if not 0 <= request.start <= request.end <= size:
                raise QueryRefused(f"entries must satisfy 0 <= start <= end <= {size}")
            start = request.start
            end = min(request.end, start + self.limits.max_entries_per_call)
            entries = await self.core.call(lambda core: core.entries(start, end))
        for offset, data in enumerate(entries):
            yield pb.Entry(index=start + offset, data=data)

    async def GetInclusionProof(
        self, request: pb.InclusionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ProofResponse:
        """RFC 9162 §2.1.3 inclusion proof."""
        await self._check(context, request.origin)
        async with transport.abort_on_error(context):
            size = await self._size()
            index, tree = request.index, request.size
            if not 0 <= index < tree <= size:
                raise QueryRefused(f"the proof needs 0 <= index < size <= {size}")
            hashes = await self.core.call(lambda core: core.inclusion_proof(index, tree))
        return pb.ProofResponse(hashes=hashes)

    async def GetConsistencyProof(
        self, request: pb.ConsistencyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ProofResponse:
        """RFC 9162 §2.1.4 consistency proof."""
        await self._check(context, request.origin)
        async with transport.abort_on_error(context):
            size = await self._size()
            size1, size2 = request.size1, request.size2
            # RFC 9162 §2.1.4 defines proofs from a non-empty tree only
            if not 0 < size1 <= size2 <= size:
                raise QueryRefused(f"the proof needs 0 < size1 <= size2 <= {size}")
            hashes = await self.core.call(lambda core: core.consistency_proof(size1, size2))
        return pb.ProofResponse(hashes=hashes)
