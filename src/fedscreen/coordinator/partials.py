"""The coordinator as the first of a secure query's two aggregators.

It opens its own share of each node's answer, sums them, adds its one OpenDP draw
per cell and signs that partial (``protocol.secure.aggregate``), under the rule
every honest aggregator keeps: each node's answer body is summed into **one**
partial only. The same answers again (a resubmitted question, answered from the
nodes' stores) get the same stored partial, its noise drawn once; answers of which
one was already summed with others are refused, since fresh noise over a re-summed
answer would let differences or averages spend a county's ε twice. The partial is
stored before it is used, and leaves only inside the signed release, which the
coordinator's log holds.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Final

from fedscreen._util.canonical import canonical_json
from fedscreen._util.sqlite import transaction
from fedscreen.crypto.signing import SigningKey
from fedscreen.errors import QueryRefused
from fedscreen.policy import Policy
from fedscreen.protocol.answer import VerifiedAnswer
from fedscreen.protocol.query import SignedQuery
from fedscreen.protocol.secure import (
    aggregate,
    answer_digest,
    partial_key,
    sign_partial,
)
from fedscreen.query.compile import check_secure_release

SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS secure_partial ("
    " key TEXT PRIMARY KEY, body TEXT NOT NULL, created_ms INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS secure_summed ("
    " answer_sha256 TEXT PRIMARY KEY, key TEXT NOT NULL REFERENCES secure_partial (key));"
)


def own_partial(
    conn: sqlite3.Connection,
    query: SignedQuery,
    answers: Sequence[VerifiedAnswer],
    *,
    member_id: str,
    key: SigningKey,
    policy: Policy,
    academic_year: str | None,
    now_ms: int,
) -> bytes:
    """The coordinator's (``member_id``, ``key``) signed partial over ``answers`` (verified
    secure answers to ``query``), as envelope JSON bytes, stored in ``conn`` (the
    coordinator's database); QueryRefused if it may not make one."""
    check_secure_release(policy, nodes=len(answers))
    nodes = {a.node_id: answer_digest(a) for a in answers}
    epsilon = answers[0].answer.epsilon if answers else 0.0
    stored = partial_key(query.spec, epsilon, nodes)
    with transaction(conn):
        row = conn.execute("SELECT body FROM secure_partial WHERE key = ?", (stored,)).fetchone()
        if row is not None:
            body = json.loads(row[0])
        else:
            marks = ",".join("?" * len(nodes))
            used = conn.execute(
                f"SELECT answer_sha256 FROM secure_summed WHERE answer_sha256 IN ({marks})",
                tuple(nodes.values()),
            ).fetchone()
            if used is not None:
                node = next(n for n, d in nodes.items() if d == used[0])
                raise QueryRefused(
                    f"node {node}'s answer was already summed into another secure partial: "
                    "ask again at another ε for a new one"
                )
            body = aggregate(
                query,
                answers,
                me=member_id,
                key=key,
                academic_year=academic_year,
                min_nodes=policy.secure.min_nodes,
            )
            conn.execute(
                "INSERT INTO secure_partial (key, body, created_ms) VALUES (?, ?, ?)",
                (stored, canonical_json(body).decode(), now_ms),
            )
            conn.executemany(
                "INSERT INTO secure_summed (answer_sha256, key) VALUES (?, ?)",
                [(digest, stored) for digest in nodes.values()],
            )
    # it leaves only inside the release, which the log holds
    envelope = sign_partial(body, key, query_id=query.query_id, query_sha256=query.digest)
    return envelope.to_json().encode("utf-8")
