"""The auditor's check of one logged release against the request and answers logged with it.

Pure, as ``audit.verify`` (which calls it): the same protocol rules the coordinator
and the analyst apply — each answer bound to the signed query (id, digest, ε), one
academic year for all, the mechanism the shipped catalogue gives the dataset — and
the release must be the combination of exactly those answers.
"""

from __future__ import annotations

import hashlib
from typing import Any

from fedscreen.crypto.envelope import Envelope
from fedscreen.errors import EntryInvalid, VerificationError
from fedscreen.protocol.answer import VerifiedAnswer, dataset_public, verify_answer
from fedscreen.protocol.query import SignedQuery
from fedscreen.protocol.release import check_release, parse_release
from fedscreen.trust.manifest import Manifest


def pair_release(
    index: int,
    body: dict[str, Any],
    candidates: list[SignedQuery],
    run: list[tuple[int, str, bytes]],
    manifest: Manifest,
    origin: str,
) -> tuple[SignedQuery, dict[str, tuple[bytes, VerifiedAnswer]]]:
    """The pending request a release answers, and the answers logged with it, verified:
    each its node's signed answer to the query; the release names exactly those (by
    envelope digest) and is their combination. (A resubmitted id is normally the same
    signed query; of different ones the oldest that fits is used, and the first
    one's failure reported.) Raises EntryInvalid at the entry that fails."""
    failure: EntryInvalid | None = None
    tried: list[SignedQuery] = []
    try:
        release = parse_release(body)
    except VerificationError as exc:
        raise EntryInvalid(f"entry {index}: {exc}", origin=origin, index=index) from None
    for query in candidates:
        if query in tried:
            continue
        tried.append(query)
        verified: dict[str, tuple[bytes, VerifiedAnswer]] = {}
        at = index
        try:
            public = dataset_public(query.spec)
            for entry, node, raw in run:
                at = entry  # the answer a failure is reported at
                answer = verify_answer(
                    Envelope.from_json(raw),
                    manifest=manifest,
                    node_id=node,
                    expected_query=query,
                    public=public,
                    academic_year=release.academic_year,
                )
                verified[node] = (raw, answer)
            at = index
            logged = {n: hashlib.sha256(raw).hexdigest() for n, (raw, _) in verified.items()}
            if release.answer_digests() != logged:
                raise ValueError("the release names other answers than the ones logged with it")
            check_release(
                body,
                query,
                [verified[n][1] for n in sorted(verified)],
                public=public,
                manifest=manifest,
            )
        except (ValueError, KeyError, TypeError, VerificationError) as exc:
            failure = failure or EntryInvalid(f"entry {at}: {exc}", origin=origin, index=at)
            continue
        return query, verified
    # the caller passes at least one candidate; an empty list is still a refusal
    raise failure or EntryInvalid(
        f"entry {index}: a release without a request", origin=origin, index=index
    )
