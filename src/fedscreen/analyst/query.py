"""The analyst's side: sign a query, submit it (``submit``, from the gRPC edge), verify a release.

An analyst's home is a member identity (``fedscreen identity init --role analyst``)
issued by the authority. ``verify_release`` trusts nothing but the manifest and the
provincial catalogue fedscreen ships: the release must be signed by the active
coordinator, every node answer in it must verify against its node's key and be
bound to exactly this signed query (its id, its digest, its ε, the one academic
year the release states), use the mechanism the catalogue gives the dataset, and
the provincial cells must be the combination of those answers.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fedscreen.crypto.envelope import RELEASE_V1, Envelope, parse_json, verify_envelope
from fedscreen.errors import ConfigError, VerificationError
from fedscreen.protocol.answer import bounded, dataset_public, verify_answer
from fedscreen.protocol.query import SignedQuery, issue_query, new_query_id
from fedscreen.protocol.release import ReleaseBody, check_release, parse_release
from fedscreen.query.sqlparse import parse_sql
from fedscreen.rpc.client import Submitted, submit
from fedscreen.trust.identity import load_identity
from fedscreen.trust.manifest import Manifest

__all__ = ["Submitted", "VerifiedRelease", "make_query", "submit", "verify_release"]


def make_query(
    home: Path,
    sql: str,
    *,
    epsilon: float | None,
    accuracy: float | None,
    nodes: Sequence[str] = (),
    secure: bool = False,
) -> tuple[SignedQuery, bytes]:
    """Parse ``sql`` and sign it with the analyst identity in ``home`` (``secure``: released
    only as a province total through the two aggregators; ``protocol.secure``)."""
    identity = load_identity(home)
    if identity.role != "analyst":
        raise ConfigError(f"{home} holds a {identity.role} identity, not an analyst's")
    twice = sorted({n for n in nodes if list(nodes).count(n) > 1})
    if twice:
        raise ConfigError(f"--nodes names {', '.join(twice[:10])} more than once")
    query = SignedQuery(
        query_id=new_query_id(),
        analyst=identity.member_id,
        issued_at_ms=int(time.time() * 1000),
        spec=replace(parse_sql(sql), secure=secure),
        epsilon=epsilon,
        accuracy=accuracy,
        nodes=tuple(nodes),
    )
    signed, envelope = issue_query(query, key=identity.signing_key())
    return signed, envelope.to_json().encode("utf-8")


@dataclass(frozen=True)
class VerifiedRelease:
    """A release whose signature, answers and combination were verified."""

    body: dict[str, Any]
    #: the body's typed form
    release: ReleaseBody
    #: node id -> the node's verified answer body (cells with the noise scale each used)
    node_bodies: dict[str, dict[str, Any]]
    #: node id -> the ε the node charged for this very answer (0 when it came from the
    #: node's store)
    charged: dict[str, float | None]


def verify_release(
    envelope: bytes,
    *,
    manifest: Manifest,
    query: SignedQuery,
    answers: Mapping[str, bytes],
) -> VerifiedRelease:
    """Verify a release of ``query`` (as signed: it carries its digest) and the node
    answers it was made of.

    Whether the data are public comes from the provincial catalogue fedscreen ships.
    Anything wrong — a signature, a shape, a number — is a VerificationError, also
    for a release that is well signed but malformed.
    """
    coordinators = manifest.keys(role="coordinator")
    payload = verify_envelope(
        Envelope.from_json(envelope), expected_payload_type=RELEASE_V1, trusted_keys=coordinators
    )
    try:
        body = parse_json(payload)
    except ValueError as exc:
        raise VerificationError(f"malformed release: {bounded(str(exc))}") from None
    release = parse_release(body)
    if not isinstance(body, dict):  # parse_release refuses these; mypy cannot tell
        raise VerificationError("malformed release: a release body is an object")
    if release.query_id != query.query_id:
        raise VerificationError("the release is for another query")
    listed = release.answer_digests()
    if set(listed) != set(answers):
        raise VerificationError("the release lists other answers than those delivered")
    public = dataset_public(query.spec)
    verified = []
    for node_id in sorted(answers):
        if hashlib.sha256(answers[node_id]).hexdigest() != listed[node_id]:
            raise VerificationError(f"{node_id}'s answer is not the one the release names")
        verified.append(
            verify_answer(
                Envelope.from_json(answers[node_id]),
                manifest=manifest,
                node_id=node_id,
                expected_query=query,
                public=public,
                academic_year=release.academic_year,
            )
        )
    check_release(body, query, verified, public=public, manifest=manifest)
    return VerifiedRelease(
        body,
        release,
        {a.node_id: a.body for a in verified},
        {a.node_id: a.charged for a in verified},
    )
