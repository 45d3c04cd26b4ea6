"""The node's privacy ledger: what every answer cost, per academic year and analyst.

ε is stored in integer micro-units (1 µε = 10⁻⁶ ε), and a charge is rounded
*up*, so sums are exact and the ledger never records less than was spent.
Checking and charging happen inside the caller's ``BEGIN IMMEDIATE``
transaction (one writer at a time across processes), and the answer is stored
in the same transaction, so an answer exists only if its charge does.

The decision itself (:func:`fedscreen.protocol.budget.check_budget`) takes numbers and
returns or raises: no I/O; analysts planning a report run the same function.

What the node has spent is its answers' charges plus any *restored* charges: ε a
database restored from a backup had forgotten, charged again by ``fedscreen node
recover`` (:mod:`fedscreen.node.rollback`), so a restore never gives budget back.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from fedscreen.errors import QueryRefused
from fedscreen.protocol.budget import Spent, from_micro

#: Recoveries from a restored database (``fedscreen node recover``) and the ε they
#: carried forward: the spending the restored database forgot, charged again so a
#: restore never gives budget back (see ``fedscreen.node.rollback``). ``IF NOT EXISTS``:
#: homes made before these tables get them from :func:`ensure_recovery_schema`.
RECOVERY_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS node_recovery (
    recovery_id INTEGER PRIMARY KEY,
    recovered_at TEXT NOT NULL,
    from_size INTEGER NOT NULL CHECK (from_size >= 0),
    to_size INTEGER NOT NULL CHECK (to_size >= 0),
    log_index INTEGER NOT NULL CHECK (log_index >= 0),
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_restored (
    restored_id INTEGER PRIMARY KEY,
    academic_year TEXT NOT NULL,
    analyst TEXT NOT NULL,
    epsilon_micro INTEGER NOT NULL CHECK (epsilon_micro > 0),
    recovery_id INTEGER NOT NULL REFERENCES node_recovery (recovery_id)
);
"""

#: every charge the budget counts: answers' charges and ε restored by a recovery
_CHARGES: Final = (
    "(SELECT academic_year, analyst, epsilon_micro FROM ledger_charge "
    "UNION ALL SELECT academic_year, analyst, epsilon_micro FROM ledger_restored)"
)

SCHEMA: Final = (
    """
CREATE TABLE query_answer (
    answer_id INTEGER PRIMARY KEY,
    cache_key TEXT NOT NULL UNIQUE,
    analyst TEXT NOT NULL,
    spec TEXT NOT NULL,
    epsilon_micro INTEGER NOT NULL CHECK (epsilon_micro >= 0),
    policy_digest TEXT NOT NULL,
    data_version INTEGER NOT NULL,
    answer TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE ledger_charge (
    charge_id INTEGER PRIMARY KEY,
    academic_year TEXT NOT NULL,
    analyst TEXT NOT NULL,
    epsilon_micro INTEGER NOT NULL CHECK (epsilon_micro > 0),
    answer_id INTEGER NOT NULL REFERENCES query_answer (answer_id),
    charged_at TEXT NOT NULL
);
CREATE INDEX ledger_charge_year ON ledger_charge (academic_year, analyst);
CREATE TABLE query_request (
    query_id TEXT PRIMARY KEY,
    analyst TEXT NOT NULL,
    answer_id INTEGER NOT NULL REFERENCES query_answer (answer_id),
    received_at TEXT NOT NULL
);
CREATE TABLE query_approval (
    approval_id INTEGER PRIMARY KEY,
    request_key TEXT NOT NULL UNIQUE,
    analyst TEXT NOT NULL,
    spec TEXT NOT NULL,
    epsilon_micro INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected')),
    requested_at TEXT NOT NULL,
    decided_at TEXT
);
CREATE TABLE query_refusal (
    refusal_id INTEGER PRIMARY KEY,
    analyst TEXT NOT NULL,
    query TEXT NOT NULL,
    reason TEXT NOT NULL,
    refused_at TEXT NOT NULL
);
"""
    + RECOVERY_SCHEMA
)


def spent(conn: sqlite3.Connection, year: str, analyst: str) -> Spent:
    """ε spent so far in ``year``, by the node and by ``analyst``."""
    node_total, analyst_total = conn.execute(
        "SELECT COALESCE(SUM(epsilon_micro), 0), "
        "COALESCE(SUM(CASE WHEN analyst = ? THEN epsilon_micro ELSE 0 END), 0) "
        f"FROM {_CHARGES} WHERE academic_year = ?",
        (analyst, year),
    ).fetchone()
    return Spent(year, int(node_total), int(analyst_total))


def charge(
    conn: sqlite3.Connection,
    *,
    years: tuple[str, ...],
    analyst: str,
    cost_micro: int,
    answer_id: int,
    at: str,
) -> None:
    """Record the charge of one answer against every year it read."""
    conn.executemany(
        "INSERT INTO ledger_charge (academic_year, analyst, epsilon_micro, answer_id, charged_at) "
        "VALUES (?, ?, ?, ?, ?)",
        [(year, analyst, cost_micro, answer_id, at) for year in years],
    )


def record_refusal(
    conn: sqlite3.Connection, *, analyst: str, query: str, reason: str, at: str
) -> None:
    """Record a refused query (costs nothing). Runs in its own short transaction."""
    conn.execute(
        "INSERT INTO query_refusal (analyst, query, reason, refused_at) VALUES (?, ?, ?, ?)",
        (analyst, query, reason, at),
    )


def require_approval(
    conn: sqlite3.Connection,
    *,
    request_key: str,
    analyst: str,
    spec: str,
    cost_micro: int,
    at: str,
) -> None:
    """Pass if an operator approved this exact request; else file it as pending and refuse.

    The pending request is committed even though the query is refused, so the
    operator sees it (``fedscreen node approvals``).
    """
    row = conn.execute(
        "SELECT approval_id, status FROM query_approval WHERE request_key = ?", (request_key,)
    ).fetchone()
    if row is not None and row[1] == "approved":
        return
    if row is None:
        approval_id = conn.execute(
            "INSERT INTO query_approval (request_key, analyst, spec, epsilon_micro, status, "
            "requested_at) VALUES (?, ?, ?, ?, 'pending', ?)",
            (request_key, analyst, spec, cost_micro, at),
        ).lastrowid
        state = "pending"
    else:
        approval_id, state = row
    raise QueryRefused(
        f"ε={from_micro(cost_micro):g} needs the operator's approval (request #{approval_id} "
        f"is {state}; the operator runs: fedscreen node approve --home HOME --id {approval_id})"
    )


def decide_approval(conn: sqlite3.Connection, approval_id: int, *, approve: bool, at: str) -> None:
    """Approve or reject a pending request."""
    updated = conn.execute(
        "UPDATE query_approval SET status = ?, decided_at = ? "
        "WHERE approval_id = ? AND status = 'pending'",
        ("approved" if approve else "rejected", at, approval_id),
    ).rowcount
    if not updated:
        raise QueryRefused(f"no pending approval request #{approval_id}")


def budget_table(conn: sqlite3.Connection) -> list[tuple[str, str, int]]:
    """(year, analyst, µε spent) for every year and analyst with charges."""
    return [
        (str(y), str(a), int(m))
        for y, a, m in conn.execute(
            f"SELECT academic_year, analyst, SUM(epsilon_micro) FROM {_CHARGES} "
            "GROUP BY academic_year, analyst ORDER BY academic_year, analyst"
        )
    ]


def ensure_recovery_schema(conn: sqlite3.Connection) -> None:
    """Create the recovery tables in a database made before they existed (else nothing)."""
    for statement in RECOVERY_SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


@dataclass(frozen=True)
class RecoveryRecord:
    """One ``fedscreen node recover``: when, the log sizes, why, and the ε carried forward."""

    at: str
    from_size: int
    to_size: int
    log_index: int
    reason: str
    restored_micro: int


def record_recovery(
    conn: sqlite3.Connection,
    *,
    at: str,
    from_size: int,
    to_size: int,
    log_index: int,
    reason: str,
    restored: Mapping[tuple[str, str], int],
) -> None:
    """Record a recovery and charge again, per (year, analyst), the µε the database forgot."""
    recovery_id = conn.execute(
        "INSERT INTO node_recovery (recovered_at, from_size, to_size, log_index, reason) "
        "VALUES (?, ?, ?, ?, ?)",
        (at, from_size, to_size, log_index, reason),
    ).lastrowid
    conn.executemany(
        "INSERT INTO ledger_restored (academic_year, analyst, epsilon_micro, recovery_id) "
        "VALUES (?, ?, ?, ?)",
        [(y, a, m, recovery_id) for (y, a), m in sorted(restored.items()) if m > 0],
    )


def recoveries(conn: sqlite3.Connection) -> list[RecoveryRecord]:
    """Every recovery of this database, oldest first."""
    return [
        RecoveryRecord(str(at), int(f), int(t), int(i), str(r), int(m))
        for at, f, t, i, r, m in conn.execute(
            "SELECT recovered_at, from_size, to_size, log_index, reason, "
            "(SELECT COALESCE(SUM(epsilon_micro), 0) FROM ledger_restored AS l "
            " WHERE l.recovery_id = n.recovery_id) "
            "FROM node_recovery AS n ORDER BY recovery_id"
        )
    ]
