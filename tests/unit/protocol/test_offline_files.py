"""The outbox and answer files (``protocol.offline``): round trips, and strict refusal.

Whatever bytes an officer carries back, the readers either return a verified file
or raise VerificationError with a short message: never another exception, never a
hang, and never a changed file taken as the signed one.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedscreen._util.canonical import canonical_json
from fedscreen.crypto.envelope import QUERY_V1, Envelope, sign_envelope
from fedscreen.crypto.signing import SigningKey
from fedscreen.errors import VerificationError
from fedscreen.protocol.offline import (
    ANSWERS_V1,
    MAX_FILE_BYTES,
    MAX_QUERIES,
    OUTBOX_V1,
    AnswerFile,
    CarriedAnswer,
    CarriedQuery,
    Outbox,
    file_digest,
    read_answer_file,
    read_outbox,
    sign_answer_file,
    sign_outbox,
    unverified_payload,
)

COORDINATOR = SigningKey(bytes(range(32)))
NODE = SigningKey(bytes(range(1, 33)))
OTHER = SigningKey(bytes(range(2, 34)))
#: the longest message a refusal may carry (they quote at most 160 characters of input)
MAX_MESSAGE = 600
HASH = bytes(range(32))

OUTBOX = Outbox(
    coordinator="coordinator",
    node="130203",
    made_at_ms=1_733_558_400_000,
    manifest=b'{"authority_key": "...", "envelope": {}}',
    coordinator_checkpoint="fedscreen.coordinator/coordinator\n3\nAAAA\n\n— sig\n",
    coordinator_proofs=((2, (HASH, HASH[::-1])),),
    known_log_size=7,
    queries=(
        CarriedQuery("q-1", b'{"payload":"e30=","payloadType":"x","signatures":[]}', "", 5),
        CarriedQuery("q-2", "查询 envelope".encode(), "2024-2025", 6),
    ),
)
ANSWERS = AnswerFile(
    node="130203",
    coordinator="coordinator",
    made_at_ms=1_733_558_500_000,
    outbox_sha256=hashlib.sha256(b"outbox").hexdigest(),
    coordinator_log_size=3,
    answers=(CarriedAnswer("q-1", b'{"signed":"answer"}', (HASH,)),),
    refusals=(("q-2", "stale: the query is 31 days old"),),
    statement=b'{"budget":"statement"}',
)

OUTBOX_FILE = sign_outbox(OUTBOX, COORDINATOR)
ANSWER_FILE = sign_answer_file(ANSWERS, NODE)


def read_o(data: bytes) -> Outbox:
    return read_outbox(data, coordinator_keys={COORDINATOR.key_id: COORDINATOR.public_key})


def read_a(data: bytes) -> AnswerFile:
    return read_answer_file(data, node_key=NODE.public_key, key_id=NODE.key_id)


def read_u(data: bytes) -> object:
    return unverified_payload(data, OUTBOX_V1)


READERS: list[Callable[[bytes], object]] = [read_o, read_a, read_u]


def refused(reader: Callable[[bytes], object], data: bytes, match: str | None = None) -> str:
    """The refusal's message (bounded, printable); fails on any other outcome."""
    with pytest.raises(VerificationError, match=match) as caught:
        reader(data)
    message = str(caught.value)
    assert len(message) <= MAX_MESSAGE, message
    return message


def signed(payload: Any, payload_type: str, key: SigningKey) -> bytes:
    """``payload`` as a genuinely signed file of ``payload_type`` (the signer's bytes)."""
    raw = payload if isinstance(payload, bytes) else canonical_json(payload)
    envelope = sign_envelope(payload_type=payload_type, payload=raw, key=key)
    return envelope.to_json().encode() + b"\n"


def same_envelope(a: bytes, b: bytes) -> bool:
    """Whether two texts are the same DSSE envelope (type, payload and signatures)."""
    x, y = Envelope.from_json(a), Envelope.from_json(b)
    return (x.payload_type, x.unverified_payload(), x.signatures) == (
        y.payload_type,
        y.unverified_payload(),
        y.signatures,
    )


# --- round trips -------------------------------------------------------------------------


def test_the_files_round_trip() -> None:
    assert read_o(OUTBOX_FILE) == OUTBOX
    assert read_a(ANSWER_FILE) == ANSWERS
    envelope, payload = unverified_payload(OUTBOX_FILE, OUTBOX_V1)
    assert envelope.payload_type == OUTBOX_V1
    assert payload == OUTBOX.to_json()
    # the documented shape, field by field
    assert set(payload) == {
        "format", "coordinator", "node", "made_at_ms", "manifest", "coordinator_checkpoint",
        "coordinator_proofs", "known_log_size", "queries",
    }  # fmt: skip
    assert set(unverified_payload(ANSWER_FILE, ANSWERS_V1)[1]) == {
        "format", "node", "coordinator", "made_at_ms", "outbox_sha256",
        "coordinator_log_size", "answers", "refusals", "statement", "checkpoint", "log_proofs",
    }  # fmt: skip
    # signing is deterministic: the same content is the same file
    assert sign_outbox(OUTBOX, COORDINATOR) == OUTBOX_FILE


ids = st.text(st.characters(codec="utf-8", exclude_categories=("C", "Z")), min_size=1, max_size=12)
texts = st.text(st.characters(codec="utf-8"), max_size=40)
counts = st.integers(min_value=0, max_value=2**63 - 1)
proofs = st.lists(st.binary(min_size=32, max_size=32), max_size=4).map(tuple)
blobs = texts.map(lambda t: t.encode("utf-8"))

outboxes = st.builds(
    Outbox,
    coordinator=ids,
    node=ids,
    made_at_ms=counts,
    manifest=blobs,
    coordinator_checkpoint=texts,
    known_log_size=counts,
    coordinator_proofs=st.lists(st.tuples(counts, proofs), max_size=3).map(tuple),
    queries=st.lists(
        st.builds(
            CarriedQuery,
            query_id=ids,
            envelope=blobs,
            academic_year=st.sampled_from(["", "2024-2025"]),
            queued_at_ms=counts,
        ),
        max_size=4,
    ).map(tuple),
)
answer_files = st.builds(
    AnswerFile,
    node=ids,
    coordinator=ids,
    made_at_ms=counts,
    outbox_sha256=st.binary(min_size=32, max_size=32).map(lambda b: b.hex()),
    coordinator_log_size=counts,
    answers=st.lists(
        st.builds(CarriedAnswer, query_id=ids, envelope=blobs, proof=proofs), max_size=4
    ).map(tuple),
    refusals=st.lists(st.tuples(ids, texts), max_size=4).map(tuple),
    statement=blobs,
)


@settings(max_examples=150, deadline=None, database=None)
@given(outboxes)
def test_any_outbox_round_trips(outbox: Outbox) -> None:
    assert read_o(sign_outbox(outbox, COORDINATOR)) == outbox


@settings(max_examples=150, deadline=None, database=None)
@given(answer_files)
def test_any_answer_file_round_trips(answers: AnswerFile) -> None:
    assert read_a(sign_answer_file(answers, NODE)) == answers


# --- arbitrary input ---------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=2000), st.sampled_from(READERS))
def test_arbitrary_bytes_are_refused(data: bytes, reader: Callable[[bytes], object]) -> None:
    refused(reader, data)


@settings(max_examples=300, deadline=None, database=None)
@given(json_values, st.sampled_from(READERS))
def test_arbitrary_json_is_refused(value: Any, reader: Callable[[bytes], object]) -> None:
    refused(reader, json.dumps(value).encode())


def _like(template: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Payloads near ``template``: each field kept, dropped or replaced by any JSON."""
    keep = st.sampled_from(["keep", "drop", "replace"])
    return st.fixed_dictionaries({k: st.tuples(keep, json_values) for k in template}).map(
        lambda choice: {
            k: (template[k] if how == "keep" else new)
            for k, (how, new) in choice.items()
            if how != "drop"
        }
    )


@settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.one_of(json_values, _like(OUTBOX.to_json())))
def test_a_genuinely_signed_outbox_of_any_shape_is_parsed_or_refused(payload: Any) -> None:
    """The signature is good, so the parser behind it is what decides."""
    data = signed(payload, OUTBOX_V1, COORDINATOR)
    try:
        outbox = read_o(data)
    except VerificationError:
        refused(read_o, data)  # and the refusal is bounded
    else:
        assert outbox.to_json() == payload  # only the documented shape gets through


@settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.one_of(json_values, _like(ANSWERS.to_json())))
def test_a_genuinely_signed_answer_file_of_any_shape_is_parsed_or_refused(payload: Any) -> None:
    data = signed(payload, ANSWERS_V1, NODE)
    try:
        answers = read_a(data)
    except VerificationError:
        refused(read_a, data)  # and the refusal is bounded
    else:
        assert answers.to_json() == payload


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("format", True),
        ("format", 1.0),
        ("format", 2),
        ("format", "1"),
        ("made_at_ms", -1),
        ("made_at_ms", True),
        ("made_at_ms", 2**63),
        ("known_log_size", 1.5),
        ("node", ""),
        ("node", "130\n203"),
        ("node", "x" * 201),
        ("coordinator_proofs", [{"from_size": 2, "proof": ["AAAA"]}]),
        ("coordinator_proofs", [{"from_size": 2, "proof": ["not base64!"]}]),
        (
            "coordinator_proofs",
            [{"from_size": 2, "proof": [base64.b64encode(HASH).decode()] * 129}],
        ),
        ("coordinator_proofs", [{"from_size": -1, "proof": []}]),
        ("coordinator_proofs", [{"from_size": 2, "proof": []}] * 257),
        ("queries", {}),
        ("queries", [1]),
        ("queries", [{"query_id": "q"}]),
        ("queries", [{}] * (MAX_QUERIES + 1)),
        ("manifest", "\ud800"),
    ],
)
def test_a_signed_outbox_with_a_bad_field_is_refused(field: str, value: object) -> None:
    payload = {**OUTBOX.to_json(), field: value}
    # "\ud800" cannot be canonical JSON: write it as JSON's escape
    raw = json.dumps(payload, sort_keys=True).encode()
    message = refused(read_o, signed(raw, OUTBOX_V1, COORDINATOR))
    assert "format" in message or "malformed outbox" in message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("outbox_sha256", "ab"),
        ("outbox_sha256", "A" * 64),
        ("outbox_sha256", "g" * 64),
        ("refusals", [{"query_id": "q"}]),
        ("answers", [{"query_id": "q", "envelope": "{}", "proof": "AAAA"}]),
        ("statement", None),
    ],
)
def test_a_signed_answer_file_with_a_bad_field_is_refused(field: str, value: object) -> None:
    payload = {**ANSWERS.to_json(), field: value}
    refused(read_a, signed(payload, ANSWERS_V1, NODE), "malformed answer file")


# --- changed files -----------------------------------------------------------------------


@settings(max_examples=400, deadline=None, database=None)
@given(st.data())
def test_a_one_byte_change_anywhere_is_refused(data: st.DataObject) -> None:
    reader, original = data.draw(
        st.sampled_from([(read_o, OUTBOX_FILE), (read_a, ANSWER_FILE)]), label="file"
    )
    at = data.draw(st.integers(0, len(original) - 1), label="at")
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != original[at]), label="byte")
    changed = original[:at] + bytes([byte]) + original[at + 1 :]
    try:
        same = same_envelope(changed, original)
    except VerificationError:
        same = False
    # JSON's own slack (whitespace outside the values) leaves the same signed envelope:
    # the same content, not a change. Every other change is refused.
    if same:
        assert reader(changed) == reader(original)
    else:
        refused(reader, changed)


def test_only_the_trailing_newline_is_slack() -> None:
    """The one byte whose change keeps the envelope is the final newline."""
    for at in range(len(OUTBOX_FILE) - 1):
        changed = OUTBOX_FILE[:at] + b" " + OUTBOX_FILE[at + 1 :]
        if changed != OUTBOX_FILE:
            refused(read_o, changed)


@settings(max_examples=200, deadline=None, database=None)
@given(st.data())
def test_a_truncated_file_is_refused(data: st.DataObject) -> None:
    reader, original = data.draw(st.sampled_from([(read_o, OUTBOX_FILE), (read_a, ANSWER_FILE)]))
    # all but the final newline: without it the file is the same envelope
    cut = data.draw(st.integers(0, len(original) - 2))
    refused(reader, original[:cut])


def test_an_over_size_file_is_refused_before_it_is_parsed() -> None:
    big = OUTBOX_FILE + b" " * (MAX_FILE_BYTES + 1 - len(OUTBOX_FILE))
    assert len(big) == MAX_FILE_BYTES + 1
    for reader in READERS:
        refused(reader, big, "over 16 MiB")
    # at the bound it is still read (JSON whitespace)
    assert read_o(big[:-1]) == OUTBOX


def test_a_deeply_nested_file_does_not_crash() -> None:
    for reader in READERS:
        refused(reader, b"[" * 200_000)
        refused(reader, b'{"a":' * 100_000)


@pytest.mark.parametrize(
    ("reader", "data", "match"),
    [
        (read_o, ANSWER_FILE, "not 'application/vnd.fedscreen.outbox.v1"),
        (read_a, OUTBOX_FILE, "not 'application/vnd.fedscreen.answers.v1"),
        (read_o, signed({"format": 1}, QUERY_V1, COORDINATOR), "vnd.fedscreen.query"),
        # the right payload, labelled as another type: the type is signed too
        (
            read_a,
            signed(OUTBOX.to_json(), OUTBOX_V1, NODE),
            "not 'application/vnd.fedscreen.answers",
        ),
    ],
)
def test_the_wrong_payload_type_is_refused(
    reader: Callable[[bytes], object], data: bytes, match: str
) -> None:
    refused(reader, data, match)


def test_a_type_swapped_after_signing_is_refused() -> None:
    envelope = json.loads(ANSWER_FILE)
    envelope["payloadType"] = OUTBOX_V1
    message = refused(read_o, json.dumps(envelope).encode())
    assert "coordinator's key" in message


def test_a_file_signed_by_another_key_is_refused() -> None:
    refused(read_o, sign_outbox(OUTBOX, OTHER), "not signed with the coordinator's key")
    refused(read_a, sign_answer_file(ANSWERS, OTHER), "not signed with the node's key")
    # a signature under the trusted key id that does not verify rejects the file
    forged = json.loads(sign_outbox(OUTBOX, OTHER))
    forged["signatures"][0]["keyid"] = COORDINATOR.key_id
    refused(read_o, json.dumps(forged).encode(), "does not verify")
    # the node's key does not sign an outbox, the coordinator's no answer file
    refused(read_o, sign_outbox(OUTBOX, NODE), "coordinator's key")
    refused(read_a, sign_answer_file(ANSWERS, COORDINATOR), "node's key")


def test_a_hostile_payload_type_is_quoted_bounded_and_printable() -> None:
    hostile = "\x1b[2J" + "x" * 10_000
    data = signed({"format": 1}, hostile, OTHER)
    message = refused(read_u, data, "the file holds")
    assert "\x1b" not in message
    assert len(message) < 400


def test_the_file_digest_is_the_signed_files_whatever_the_carrying_did() -> None:
    """What the coordinator hashed when it wrote the outbox is what the node names, even
    after a copy changed the line ending or JSON whitespace; any other change is not."""
    written = hashlib.sha256(OUTBOX_FILE).hexdigest()
    assert file_digest(OUTBOX_FILE) == written
    body = OUTBOX_FILE.rstrip(b"\n")
    for carried in (
        body,
        body + b"\r\n",
        b"  " + body + b"\n\n",
        json.dumps(json.loads(body), indent=2).encode(),
    ):
        assert read_o(carried) == OUTBOX
        assert file_digest(carried) == written
    assert file_digest(sign_outbox(OUTBOX, OTHER)) != written
    with pytest.raises(VerificationError):
        file_digest(b"not a file")
