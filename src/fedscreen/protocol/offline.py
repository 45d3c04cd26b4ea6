"""The two files that carry queries to an offline node and its answers back.

Some nodes have no network path to the coordinator at all (a county's internal
network, one machine in a counselling centre). For them the coordinator queues
their queries, and an officer carries two files by hand:

**The outbox** (``fedscreen coordinator outbox``): a DSSE envelope (JSON) signed by
the coordinator, payload type :data:`OUTBOX_V1`, whose payload is::

    {"format": 1, "coordinator": ID, "node": ID, "made_at_ms": INT,
     "manifest": MANIFEST-FILE-TEXT,          # the manifest in force (authority-signed)
     "coordinator_checkpoint": NOTE,          # the coordinator log's newest checkpoint
     "coordinator_proofs": [{"from_size": INT, "proof": [BASE64, ...]}, ...],
                                              # consistency to it from each checkpoint
                                              # the node may hold
     "known_log_size": INT,                   # the node's log size the coordinator verified
     "queries": [{"query_id": ID, "query_envelope": ANALYST-SIGNED-QUERY-TEXT,
                  "academic_year": "2024-2025" | "", "queued_at_ms": INT}, ...]}

**The answer file** (``fedscreen node answer-file``): a DSSE envelope signed by the
node, payload type :data:`ANSWERS_V1`::

    {"format": 1, "node": ID, "coordinator": ID, "made_at_ms": INT,
     "outbox_sha256": HEX,                    # the outbox this answers (file_digest)
     "coordinator_log_size": INT,             # the coordinator checkpoint the node now holds
     "answers": [{"query_id": ID, "envelope": NODE-SIGNED-ANSWER-TEXT,
                  "proof": [BASE64, ...]}, ...],  # node log consistency from known_log_size
     "refusals": [{"query_id": ID, "reason": "<code>: <detail>"}, ...],
     "statement": BUDGET-STATEMENT-TEXT | "",
     "checkpoint": NOTE,                      # the node log's checkpoint after it all
     "log_proofs": [{"from_size": INT, "proof": [BASE64, ...]}, ...]}
                                              # consistency to it from the sizes the
                                              # coordinator may hold (known_log_size and
                                              # the node's earlier answer files)

Each query and answer inside is the same signed object the network carries, so
every check holds across the trip: the node verifies each analyst's signature,
role and scope against its own manifest, and signs each answer bound to its query.
Parsing here is strict (every field's type, bounded sizes): a file that is not
exactly this shape is refused whole with a reason, before anything is answered.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from fedscreen._util.canonical import canonical_json
from fedscreen.crypto.envelope import Envelope, parse_json, sign_envelope, verify_envelope
from fedscreen.crypto.signing import SigningKey
from fedscreen.errors import MalformedEnvelope, VerificationError
from fedscreen.tlog.checkpoint import note_size

__all__ = [
    "ANSWERS_V1",
    "FORMAT",
    "MAX_FILE_BYTES",
    "MAX_PROOFS",
    "MAX_QUERIES",
    "OUTBOX_V1",
    "AnswerFile",
    "CarriedAnswer",
    "CarriedQuery",
    "Outbox",
    "file_digest",
    "read_answer_file",
    "read_outbox",
    "sign_answer_file",
    "sign_outbox",
    "unverified_payload",
]

OUTBOX_V1: Final = "application/vnd.fedscreen.outbox.v1+json"
ANSWERS_V1: Final = "application/vnd.fedscreen.answers.v1+json"
FORMAT: Final = 1
#: the largest file either side reads (a year's queries are well under a megabyte)
MAX_FILE_BYTES: Final = 16 << 20
#: most queries (or answers, or refusals) one file carries
MAX_QUERIES: Final = 2000
#: most hashes in one consistency proof (a log of 2⁶⁴ entries needs 128)
_MAX_PROOF: Final = 128
#: most sizes an outbox (or answer file) proves consistency from
MAX_PROOFS: Final = 256
_MAX_ID: Final = 200
_MAX_TEXT: Final = 1 << 20


@dataclass(frozen=True)
class CarriedQuery:
    """One queued query as the outbox carries it."""

    query_id: str
    #: the analyst's signed query envelope, verbatim
    envelope: bytes
    #: the year the coordinator pinned a query without years to ("" none)
    academic_year: str
    queued_at_ms: int


@dataclass(frozen=True)
class Outbox:
    """A verified outbox's content."""

    coordinator: str
    node: str
    made_at_ms: int
    manifest: bytes
    coordinator_checkpoint: str
    known_log_size: int
    queries: tuple[CarriedQuery, ...]
    #: consistency proofs to ``coordinator_checkpoint`` from each checkpoint the node may
    #: hold (the one it acknowledged last, earlier outboxes', its stream's): (size, proof)
    coordinator_proofs: tuple[tuple[int, tuple[bytes, ...]], ...] = ()

    @property
    def checkpoint_size(self) -> int:
        """The size of the coordinator's log at its checkpoint (0: none)."""
        return note_size(self.coordinator_checkpoint)

    def proof_from(self, size: int) -> tuple[bytes, ...] | None:
        """The consistency proof from the coordinator checkpoint of ``size`` the node holds
        to this outbox's (None: the outbox offers none from that size)."""
        return _proof_from(self.coordinator_proofs, size)

    def to_json(self) -> dict[str, Any]:
        """The payload."""
        return {
            "format": FORMAT,
            "coordinator": self.coordinator,
            "node": self.node,
            "made_at_ms": self.made_at_ms,
            "manifest": self.manifest.decode("utf-8"),
            "coordinator_checkpoint": self.coordinator_checkpoint,
            "coordinator_proofs": [
                {"from_size": size, "proof": _b64(proof)} for size, proof in self.coordinator_proofs
            ],
            "known_log_size": self.known_log_size,
            "queries": [
                {
                    "query_id": q.query_id,
                    "query_envelope": q.envelope.decode("utf-8"),
                    "academic_year": q.academic_year,
                    "queued_at_ms": q.queued_at_ms,
                }
                for q in self.queries
            ],
        }


@dataclass(frozen=True)
class CarriedAnswer:
    """One signed answer as the answer file carries it."""

    query_id: str
    #: the node's signed answer envelope, verbatim
    envelope: bytes
    #: the node log's consistency proof from the outbox's ``known_log_size``
    proof: tuple[bytes, ...]


@dataclass(frozen=True)
class AnswerFile:
    """A verified answer file's content."""

    node: str
    coordinator: str
    made_at_ms: int
    outbox_sha256: str
    coordinator_log_size: int
    answers: tuple[CarriedAnswer, ...]
    #: (query id, the node's refusal reason)
    refusals: tuple[tuple[str, str], ...]
    statement: bytes
    #: the node log's signed checkpoint after every answer and refusal of the file
    checkpoint: str = ""
    #: consistency proofs to ``checkpoint`` from sizes the coordinator may hold: (size, proof)
    log_proofs: tuple[tuple[int, tuple[bytes, ...]], ...] = ()

    def log_proof_from(self, size: int) -> tuple[bytes, ...] | None:
        """The node log's consistency proof from ``size`` to :attr:`checkpoint` (None: none
        offered)."""
        return _proof_from(self.log_proofs, size)

    def to_json(self) -> dict[str, Any]:
        """The payload."""
        return {
            "format": FORMAT,
            "node": self.node,
            "coordinator": self.coordinator,
            "made_at_ms": self.made_at_ms,
            "outbox_sha256": self.outbox_sha256,
            "coordinator_log_size": self.coordinator_log_size,
            "answers": [
                {
                    "query_id": a.query_id,
                    "envelope": a.envelope.decode("utf-8"),
                    "proof": _b64(a.proof),
                }
                for a in self.answers
            ],
            "refusals": [{"query_id": q, "reason": r} for q, r in self.refusals],
            "statement": self.statement.decode("utf-8"),
            "checkpoint": self.checkpoint,
            "log_proofs": [
                {"from_size": size, "proof": _b64(proof)} for size, proof in self.log_proofs
            ],
        }


def sign_outbox(outbox: Outbox, key: SigningKey) -> bytes:
    """The outbox file's bytes: the coordinator-signed envelope."""
    return _sign(OUTBOX_V1, outbox.to_json(), key)


def sign_answer_file(answers: AnswerFile, key: SigningKey) -> bytes:
    """The answer file's bytes: the node-signed envelope."""
    return _sign(ANSWERS_V1, answers.to_json(), key)


def _sign(payload_type: str, payload: Mapping[str, Any], key: SigningKey) -> bytes:
    envelope = sign_envelope(payload_type=payload_type, payload=canonical_json(payload), key=key)
    return envelope.to_json().encode("utf-8") + b"\n"


def file_digest(data: bytes) -> str:
    """SHA-256 (hex) of an outbox file as the coordinator wrote it: the envelope in
    canonical form and a newline (what :func:`sign_outbox` writes). A copy that changed
    only JSON whitespace or the line ending (carried as text) has the same digest, so the
    coordinator still recognises the outbox an answer file names. VerificationError if
    ``data`` is not an outbox envelope."""
    envelope, _ = unverified_payload(data, OUTBOX_V1)
    canonical = envelope.to_json().encode("utf-8") + b"\n"
    return hashlib.sha256(canonical).hexdigest()


def unverified_payload(data: bytes, payload_type: str) -> tuple[Envelope, Mapping[str, Any]]:
    """The envelope of a file and its payload *before* its signature is checked (to learn
    who should have signed it, or the manifest to check it with). VerificationError if
    the file is not such an envelope."""
    if len(data) > MAX_FILE_BYTES:
        raise VerificationError(f"the file is over {MAX_FILE_BYTES >> 20} MiB")
    try:
        envelope = Envelope.from_json(data)
    except (MalformedEnvelope, VerificationError, ValueError, RecursionError) as exc:
        raise VerificationError(f"not a signed fedscreen file: {_short(exc)}") from None
    if envelope.payload_type != payload_type:
        raise VerificationError(
            f"the file holds {_short(envelope.payload_type)!r}, not {payload_type!r}"
        )
    try:
        payload = parse_json(envelope.unverified_payload())
    except ValueError as exc:
        raise VerificationError(f"the signed payload is not JSON: {_short(exc)}") from None
    if not isinstance(payload, dict):
        raise VerificationError("the signed payload is not an object")
    # exactly the integer: JSON's true and 1.0 compare equal to 1 in Python
    if type(payload.get("format")) is not int or payload["format"] != FORMAT:
        raise VerificationError(f"unknown file format {_short(payload.get('format'))!r}")
    return envelope, payload


def read_outbox(data: bytes, *, coordinator_keys: Mapping[str, bytes]) -> Outbox:
    """An outbox file verified under one of ``coordinator_keys`` (key id -> key) and parsed;
    VerificationError if it is tampered, truncated or not an outbox."""
    envelope, _ = unverified_payload(data, OUTBOX_V1)
    payload = _verified(envelope, OUTBOX_V1, coordinator_keys, "the coordinator's")
    try:
        queries = tuple(_carried_query(q) for q in _items(payload["queries"], "queries"))
        return Outbox(
            coordinator=_id(payload["coordinator"], "coordinator"),
            node=_id(payload["node"], "node"),
            made_at_ms=_count(payload["made_at_ms"], "made_at_ms"),
            manifest=_text(payload["manifest"], "manifest").encode("utf-8"),
            coordinator_checkpoint=_text(payload["coordinator_checkpoint"], "checkpoint"),
            known_log_size=_count(payload["known_log_size"], "known_log_size"),
            queries=queries,
            coordinator_proofs=_proofs(payload["coordinator_proofs"]),
        )
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise VerificationError(f"malformed outbox: {_short(exc)}") from None


def read_answer_file(data: bytes, *, node_key: bytes, key_id: str) -> AnswerFile:
    """An answer file verified under the node's key and parsed; VerificationError if it is
    tampered, truncated or not an answer file."""
    envelope, _ = unverified_payload(data, ANSWERS_V1)
    payload = _verified(envelope, ANSWERS_V1, {key_id: node_key}, "the node's")
    try:
        answers = tuple(
            CarriedAnswer(
                query_id=_id(a["query_id"], "query_id"),
                envelope=_text(a["envelope"], "envelope").encode("utf-8"),
                proof=_proof(a["proof"]),
            )
            for a in _items(payload["answers"], "answers")
        )
        refusals = tuple(
            (_id(r["query_id"], "query_id"), _text(r["reason"], "reason"))
            for r in _items(payload["refusals"], "refusals")
        )
        return AnswerFile(
            node=_id(payload["node"], "node"),
            coordinator=_id(payload["coordinator"], "coordinator"),
            made_at_ms=_count(payload["made_at_ms"], "made_at_ms"),
            outbox_sha256=_sha256_hex(payload["outbox_sha256"]),
            coordinator_log_size=_count(payload["coordinator_log_size"], "coordinator_log_size"),
            answers=answers,
            refusals=refusals,
            statement=_text(payload["statement"], "statement").encode("utf-8"),
            checkpoint=_text(payload["checkpoint"], "checkpoint", limit=4096),
            log_proofs=_proofs(payload["log_proofs"]),
        )
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise VerificationError(f"malformed answer file: {_short(exc)}") from None


def _verified(
    envelope: Envelope, payload_type: str, keys: Mapping[str, bytes], whose: str
) -> Mapping[str, Any]:
    try:
        payload = verify_envelope(envelope, expected_payload_type=payload_type, trusted_keys=keys)
    except VerificationError as exc:
        raise VerificationError(f"not signed with {whose} key: {_short(exc)}") from None
    try:
        doc = parse_json(payload)
    except ValueError as exc:
        raise VerificationError(f"the signed payload is not JSON: {_short(exc)}") from None
    if not isinstance(doc, dict):
        raise VerificationError("the signed payload is not an object")
    return doc


def _carried_query(item: object) -> CarriedQuery:
    if not isinstance(item, dict):
        raise TypeError("each query is an object")
    return CarriedQuery(
        query_id=_id(item["query_id"], "query_id"),
        envelope=_text(item["query_envelope"], "query_envelope").encode("utf-8"),
        academic_year=_text(item["academic_year"], "academic_year", limit=20),
        queued_at_ms=_count(item["queued_at_ms"], "queued_at_ms"),
    )


def _items(value: object, what: str) -> list[Any]:
    if not isinstance(value, list) or len(value) > MAX_QUERIES:
        raise TypeError(f"{what} must be a list of at most {MAX_QUERIES}")
    if not all(isinstance(v, dict) for v in value):
        raise TypeError(f"each of {what} is an object")
    return value


def _text(value: object, what: str, *, limit: int = _MAX_TEXT) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise TypeError(f"{what} must be a text of at most {limit} characters")
    return value


def _id(value: object, what: str) -> str:
    text = _text(value, what, limit=_MAX_ID)
    if not text or not text.isprintable():
        raise ValueError(f"{what} must be a non-empty printable id")
    return text


def _sha256_hex(value: object) -> str:
    text = _text(value, "outbox_sha256", limit=64)
    if len(text) != 64 or text.strip("0123456789abcdef"):
        raise ValueError("outbox_sha256 must be 64 lowercase hex digits")
    return text


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise TypeError(f"{what} must be a whole number from 0")
    return value


def _proof(value: object) -> tuple[bytes, ...]:
    if not isinstance(value, list) or len(value) > _MAX_PROOF:
        raise TypeError(f"a proof is a list of at most {_MAX_PROOF} hashes")
    hashes = []
    for item in value:
        if not isinstance(item, str):
            raise TypeError("a proof's hashes are base64 texts")
        raw = base64.b64decode(item, validate=True)
        if len(raw) != 32:
            raise ValueError("a proof's hashes are 32 bytes")
        hashes.append(raw)
    return tuple(hashes)


def _proof_from(
    proofs: Sequence[tuple[int, tuple[bytes, ...]]], size: int
) -> tuple[bytes, ...] | None:
    """The proof of ``proofs`` that starts from ``size`` (None: none does)."""
    return next((proof for start, proof in proofs if start == size), None)


def _proofs(value: object) -> tuple[tuple[int, tuple[bytes, ...]], ...]:
    if not isinstance(value, list) or len(value) > MAX_PROOFS:
        raise TypeError(f"a list of proofs is at most {MAX_PROOFS}")
    if not all(isinstance(v, dict) for v in value):
        raise TypeError("each of coordinator_proofs is an object")
    return tuple((_count(v["from_size"], "from_size"), _proof(v["proof"])) for v in value)


def _b64(hashes: Sequence[bytes]) -> list[str]:
    return [base64.b64encode(h).decode("ascii") for h in hashes]


def _short(value: object) -> str:
    """A bounded, printable rendering of untrusted text for an error message."""
    text = str(value)
    text = "".join(c if c.isprintable() else "?" for c in text[:160])
    return text + ("…" if len(str(value)) > 160 else "")
