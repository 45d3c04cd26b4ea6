"""The content check of a second aggregator's log: each partial it gave, each refusal.

Pure, as ``audit.verify`` (which calls it). An entry is a ``partial`` — the query id
and the aggregator's signed partial envelope, verbatim, which must verify under the
aggregator's own key (the one in force at that entry) and be for that query id — or a
``refusal`` with a bounded, printable reason; manifest entries are checked by
``audit.manifests.in_force``. Whether the coordinator's log agrees with it on every
secure release is a cross-log check made elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from fedscreen.crypto.envelope import PARTIAL_V1, Envelope, parse_json, verify_envelope
from fedscreen.errors import EntryInvalid, VerificationError
from fedscreen.trust.manifest import Member

if TYPE_CHECKING:
    from fedscreen.audit.manifests import InForce
    from fedscreen.audit.verify import LogReport

__all__ = ["check_aggregator_entries"]

#: the longest refusal reason an aggregator logs (characters; its store bounds it so)
MAX_REASON_CHARS: Final = 300
_KINDS: Final = frozenset({"partial", "refusal"})


def check_aggregator_entries(
    payloads: list[bytes],
    signer_at: Callable[[int], Member],
    origin: str,
    manifests: InForce,
    report: LogReport,
) -> None:
    """Check every non-manifest entry of an aggregator's log; counts partials (as the
    report's ``answers``) and refusals. Raises EntryInvalid at the first bad entry."""
    for index, payload in enumerate(payloads):
        if index in manifests.switches:
            continue  # a manifest entry: checked by in_force
        owner = signer_at(index)
        try:
            entry = parse_json(payload)
            if not isinstance(entry, dict):
                raise TypeError("an entry is an object")
            if entry.get("index") != index or entry.get("node_id") != owner.id:
                raise ValueError(f"says it is entry {entry.get('index')} of {entry.get('node_id')}")
            kind, query_id = entry.get("kind"), entry.get("query_id")
            if kind not in _KINDS or not isinstance(query_id, str):
                raise ValueError("an aggregator logs partials and refusals, each with a query id")
            if kind == "refusal":
                _check_refusal(entry)
                report.refusals += 1
                continue
            _check_partial(entry, owner, query_id)
            report.answers += 1
        except (ValueError, KeyError, TypeError, VerificationError) as exc:
            raise EntryInvalid(f"entry {index}: {exc}", origin=origin, index=index) from None


def _check_refusal(entry: dict[str, object]) -> None:
    reason = entry.get("reason")
    if set(entry) != {"kind", "query_id", "reason", "index", "node_id"}:
        raise ValueError("a refusal holds its query id and reason only")
    if not isinstance(reason, str) or not reason or len(reason) > MAX_REASON_CHARS:
        raise ValueError(f"a refusal's reason is 1 to {MAX_REASON_CHARS} characters")
    if not reason.isprintable():
        raise ValueError("a refusal's reason is printable text")


def _check_partial(entry: dict[str, object], owner: Member, query_id: str) -> None:
    if set(entry) != {"kind", "query_id", "partial", "index", "node_id"}:
        raise ValueError("a partial entry holds its query id and the signed partial only")
    text = entry.get("partial")
    if not isinstance(text, str):
        raise TypeError("the partial is an envelope's JSON text")
    payload = verify_envelope(
        Envelope.from_json(text.encode("utf-8")),
        expected_payload_type=PARTIAL_V1,
        trusted_keys={owner.key_id: owner.signing_key},
    )
    signed = parse_json(payload)
    if not isinstance(signed, dict) or signed.get("query_id") != query_id:
        raise ValueError("the partial logged is for another query than the entry says")
    body = signed.get("partial")
    if not isinstance(body, dict) or body.get("aggregator") != owner.id:
        raise ValueError("the partial logged names another aggregator")
