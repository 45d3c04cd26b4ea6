"""What an entry of a member's log is: a DSSE envelope the member signed, or (one kind
of a coordinator's entries) the bare payload.

A coordinator's answer entry holds a node's signed answer; the batch it is logged in
ends in the signed release naming that answer by its digest, and the checkpoint
signed over the batch covers both. A signature of the coordinator's own over each
answer proved nothing more, and cost it about as much as verifying the answer
(issue 11), so answer entries are logged unsigned (``memberlog.append_many``). Plain
functions of bytes: the offline verifier uses them too.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Final

from fedscreen._util.canonical import canonical_json
from fedscreen.crypto.envelope import parse_json
from fedscreen.errors import VerificationError

__all__ = ["COORDINATOR_UNSIGNED", "unsigned_payload"]

#: the kinds of entry a coordinator logs unsigned (older logs have them signed: both verify)
COORDINATOR_UNSIGNED: Final = frozenset({"answer"})
#: how every DSSE envelope ``Envelope.to_json`` writes begins (canonical JSON, sorted keys)
_ENVELOPE_START: Final = b'{"payload":'


def unsigned_payload(entry: bytes, kinds: Collection[str]) -> bytes | None:
    """The payload of an entry logged unsigned (``memberlog.append_many``): the entry
    itself; None if ``entry`` is not one (a DSSE envelope, or no JSON object with a
    ``kind``: the envelope parser judges it). VerificationError if it is a bare entry
    of a kind not in ``kinds`` (those must be signed), or not canonical JSON.
    """
    if entry.startswith(_ENVELOPE_START):
        return None
    try:
        doc = parse_json(entry)
    except ValueError:
        return None
    if not isinstance(doc, dict) or "kind" not in doc or "payloadType" in doc:
        return None
    kind = doc["kind"]
    if not isinstance(kind, str) or kind not in kinds:
        allowed = " and ".join(f"{k!r}" for k in sorted(kinds)) or "no"
        raise VerificationError(
            f"an unsigned entry of kind {str(kind)[:40]!r} (this log has {allowed} "
            "entries unsigned; every other entry is a signed envelope)"
        )
    try:
        canonical = canonical_json(doc)
    except (ValueError, RecursionError):  # 1e400 parses to inf; "\ud800" is no UTF-8
        canonical = b""
    if canonical != entry:
        raise VerificationError("an unsigned entry that is not canonical JSON")
    return entry
