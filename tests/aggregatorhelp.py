"""Secure queries and real node answers for the second aggregator's tests.

Built on ``securefed``'s homes: the analyst signs a secure count, each county node
answers it through its own request path (``node.requests.handle_query``), and the
answers are handed on as the coordinator relays them: (node id, envelope bytes).
"""

from __future__ import annotations

import time
from dataclasses import replace

from securefed import ANALYST, YEAR, SecureHomes

from fedscreen.node import store
from fedscreen.node.requests import handle_query
from fedscreen.protocol.query import SignedQuery, issue_query, new_query_id
from fedscreen.query.sqlparse import parse_sql
from fedscreen.rpc.serde import AggregationWork
from fedscreen.trust.identity import load_identity

SQL = f"SELECT sex, COUNT(*) FROM screenings WHERE academic_year = '{YEAR}' GROUP BY sex"
EPSILON = 0.5
#: four counties: a partial needs three (the catalogue's min_nodes), so two overlap
FOUR = ("130104", "130105", "130107", "130108")


def secure_query(
    homes: SecureHomes, *, sql: str = SQL, epsilon: float = EPSILON, secure: bool = True
) -> tuple[SignedQuery, bytes]:
    """A query signed by the analyst now; (the query, its envelope bytes)."""
    identity = load_identity(homes.analyst)
    spec = replace(parse_sql(sql), secure=secure)
    now = int(time.time() * 1000)
    unsigned = SignedQuery(new_query_id(), ANALYST, now, spec, epsilon, None, ())
    signed, envelope = issue_query(unsigned, key=identity.signing_key())
    return signed, envelope.to_json().encode()


def node_answers(
    homes: SecureHomes, query: SignedQuery, envelope: bytes
) -> list[tuple[str, bytes]]:
    """Each node's signed answer to the query, as its agent would send it."""
    answers = []
    for node, config in sorted(homes.nodes.items()):
        manifest = load_identity(config.home).manifest()
        conn = store.connect(config.database)
        try:
            raw = handle_query(
                config, config.policy(), manifest, envelope, conn=conn, now_ms=query.issued_at_ms
            )
        finally:
            conn.close()
        answers.append((node, raw))
    return answers


def work(
    query: SignedQuery,
    envelope: bytes,
    answers: list[tuple[str, bytes]],
    *,
    deadline_ms: int = 0,
    query_id: str | None = None,
) -> AggregationWork:
    """The AggregationRequest the coordinator would send for these answers."""
    return AggregationWork(
        query_id=query.query_id if query_id is None else query_id,
        query_envelope=envelope,
        answers=tuple(answers),
        academic_year="",
        deadline_unix_ms=deadline_ms,
    )
