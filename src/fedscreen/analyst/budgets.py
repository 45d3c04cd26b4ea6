"""Fetching every node's signed budget statement through the coordinator, verified."""

from __future__ import annotations

from pathlib import Path

from fedscreen.protocol.budget import Budgets, verify_budgets
from fedscreen.rpc import client
from fedscreen.rpc.transport import DEFAULT_LIMITS, TransportLimits
from fedscreen.trust.identity import load_identity

__all__ = ["fetch_budgets"]


async def fetch_budgets(
    home: Path,
    coordinator: str,
    *,
    coordinator_id: str | None = None,
    limits: TransportLimits = DEFAULT_LIMITS,
) -> Budgets:
    """Fetch every node's budget statement from the coordinator, as the member in ``home``.

    ``home`` is an analyst's or auditor's identity; the coordinator's member id is
    ``coordinator_id`` or the single active coordinator of its manifest. Every
    statement is verified against the member's own manifest (VerificationError
    names a node whose statement fails); RpcFailed if the call is refused.
    """
    statements = await client.budgets(
        home, coordinator, coordinator_id=coordinator_id, limits=limits
    )
    identity = load_identity(home)
    manifest = identity.manifest()
    # the coordinator hands an analyst the statements of the nodes inside its scope
    own = manifest.find(identity.member_id)
    scope = own.scope if own is not None and own.role == "analyst" else ""
    return verify_budgets(
        manifest, statements.envelopes, connected=statements.connected, scope=scope
    )
