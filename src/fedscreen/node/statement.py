"""The node's signed budget statement: its ledger summed per year, with its limits.

The statement's format and its verification are ``fedscreen.protocol.budget``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from typing import Any

from fedscreen._util.canonical import canonical_json
from fedscreen.crypto.envelope import BUDGET_V1, sign_envelope
from fedscreen.crypto.signing import SigningKey
from fedscreen.node import ledger
from fedscreen.policy import Policy
from fedscreen.policy import digest as policy_digest
from fedscreen.protocol.budget import STATEMENT_VERSION, UNIT

__all__ = ["sign_statement", "statement_body"]


def statement_body(
    conn: sqlite3.Connection, policy: Policy, node_id: str, *, now_ms: int | None = None
) -> dict[str, Any]:
    """The node's budget statement: its policy limits and its ledger, summed per year.

    Publishing this leaks nothing about any student: what a node has spent is a
    function of the queries it was asked (their ε and academic years, whether
    its policy and budget admitted them, whether an identical one was answered
    before) and never of the values in its records, so it is as public as the
    queries themselves. It does show every analyst's spending to whoever may
    read statements (analysts and auditors).

    A node recovered from a restored database lists its ``recoveries`` (when, the
    log sizes, the µε charged again, which ``spent`` includes).
    """
    limits = policy.limits
    spent: dict[str, dict[str, Any]] = {}
    # one SELECT: a consistent snapshot of the ledger even while a query is being charged
    for year, analyst, micro in ledger.budget_table(conn):
        entry = spent.setdefault(year, {"node_micro": 0, "analysts": {}})
        entry["node_micro"] += micro
        entry["analysts"][analyst] = micro
    body: dict[str, Any] = {
        "version": STATEMENT_VERSION,
        "node_id": node_id,
        "issued_at_ms": int(time.time() * 1000) if now_ms is None else now_ms,
        "policy_digest": policy_digest(policy),
        "limits": {
            "epsilon_per_node_per_year": limits.epsilon_per_node_per_year,
            "max_epsilon_per_query": limits.max_epsilon_per_query,
            "approval_above_epsilon": limits.approval_above_epsilon,
            "analyst_share": limits.analyst_share,
            "analyst_shares": dict(limits.analysts),
            # not budgets, but what else decides whether a planned query passes
            "publication_threshold": limits.publication_threshold,
            "max_groups": limits.max_groups,
        },
        "spent": spent,
        "unit": UNIT,
    }
    recovered = ledger.recoveries(conn)
    if recovered:
        # restored from a backup: "spent" includes the ε charged again (node/rollback.py)
        body["recoveries"] = [
            {
                "at": r.at,
                "from_size": r.from_size,
                "to_size": r.to_size,
                "log_index": r.log_index,
                "restored_micro": r.restored_micro,
            }
            for r in recovered
        ]
    return body


def sign_statement(body: Mapping[str, Any], *, key: SigningKey) -> bytes:
    """The DSSE envelope (JSON bytes) of a statement body, signed by the node's key."""
    envelope = sign_envelope(payload_type=BUDGET_V1, payload=canonical_json(dict(body)), key=key)
    return envelope.to_json().encode("utf-8")
