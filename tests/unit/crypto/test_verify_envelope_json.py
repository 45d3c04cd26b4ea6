"""``verify_envelope_json`` is ``verify_envelope(Envelope.from_json(...))`` in one step: the
same payload, or the same error with the same message, for every text."""

from __future__ import annotations

import base64
import hashlib
import json

from hypothesis import example, given
from hypothesis import strategies as st

from fedscreen.crypto.envelope import (
    ANSWER_V1,
    LOG_ENTRY_V1,
    Envelope,
    EnvelopeSignature,
    pae,
    verify_envelope,
    verify_envelope_json,
)
from fedscreen.crypto.signing import SigningKey
from fedscreen.errors import VerificationError

KEYS = [SigningKey(hashlib.sha256(b"verify json key %d" % i).digest()) for i in range(3)]


def _outcome(verify: object, text: bytes | str, trusted: dict[str, bytes]) -> str:
    try:
        if verify is verify_envelope_json:
            payload = verify_envelope_json(
                text, expected_payload_type=LOG_ENTRY_V1, trusted_keys=trusted
            )
        else:
            payload = verify_envelope(
                Envelope.from_json(text), expected_payload_type=LOG_ENTRY_V1, trusted_keys=trusted
            )
    except VerificationError as exc:
        return f"{type(exc).__name__}: {exc}"
    return f"payload {payload!r}"


def _same(text: bytes | str, trusted: dict[str, bytes]) -> None:
    assert _outcome(verify_envelope_json, text, trusted) == _outcome(None, text, trusted)


@st.composite
def envelopes(draw: st.DrawFn) -> Envelope:
    payload_type = draw(st.sampled_from([LOG_ENTRY_V1, ANSWER_V1]))
    payload = draw(st.binary(max_size=60))
    signatures = []
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        key = draw(st.sampled_from(KEYS))
        sig = key.sign(pae(payload_type, payload))
        if draw(st.booleans()):  # tampered, cut short, or a stranger's key id
            sig = draw(st.sampled_from([sig[:-1] + bytes([sig[-1] ^ 1]), sig[:40], sig]))
        keyid = draw(st.sampled_from([key.key_id, "stranger", ""]))
        signatures.append(EnvelopeSignature(keyid, sig))
    return Envelope(payload_type, payload, tuple(signatures))


trusted_sets = st.sets(st.sampled_from(range(len(KEYS)))).map(
    lambda ids: {KEYS[i].key_id: KEYS[i].public_key for i in ids}
)


@given(envelopes(), trusted_sets)
def test_the_text_to_json_writes_gets_the_same_outcome(
    envelope: Envelope, trusted: dict[str, bytes]
) -> None:
    text = envelope.to_json()
    _same(text, trusted)
    _same(text.encode(), trusted)


@given(envelopes(), trusted_sets, st.sampled_from(["spaces", "url-safe", "duplicate", "cut"]))
def test_other_spellings_get_the_same_outcome(
    envelope: Envelope, trusted: dict[str, bytes], how: str
) -> None:
    doc = json.loads(envelope.to_json())
    if how == "spaces":
        text = json.dumps(doc)
    elif how == "url-safe":
        doc["payload"] = doc["payload"].replace("+", "-").replace("/", "_")
        text = json.dumps(doc, separators=(",", ":"), sort_keys=True)
    elif how == "duplicate":
        text = envelope.to_json().replace('{"payload":', '{"payload":"","payload":', 1)
    else:
        text = envelope.to_json()[:-2]
    _same(text, trusted)


@given(st.binary(max_size=200))
@example(b"")
@example(b"{}")
def test_arbitrary_bytes_get_the_same_outcome(text: bytes) -> None:
    _same(text, {KEYS[0].key_id: KEYS[0].public_key})


def test_a_good_entry_verifies() -> None:
    payload = b'{"kind":"answer"}'
    sig = KEYS[0].sign(pae(LOG_ENTRY_V1, payload))
    text = (
        f'{{"payload":"{base64.b64encode(payload).decode()}","payloadType":"{LOG_ENTRY_V1}",'
        f'"signatures":[{{"keyid":"{KEYS[0].key_id}","sig":"{base64.b64encode(sig).decode()}"}}]}}'
    )
    assert (
        verify_envelope_json(
            text,
            expected_payload_type=LOG_ENTRY_V1,
            trusted_keys={KEYS[0].key_id: KEYS[0].public_key},
        )
        == payload
    )
