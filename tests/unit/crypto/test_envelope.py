"""DSSE v1 envelopes."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from fedscreen.crypto.envelope import (
    ANSWER_V1,
    LOG_ENTRY_V1,
    MANIFEST_V1,
    QUERY_V1,
    RELEASE_V1,
    Envelope,
    pae,
    sign_envelope,
    verify_envelope,
)
from fedscreen.crypto.signing import SigningKey
from fedscreen.errors import MalformedEnvelope, VerificationError

KEY = SigningKey(hashlib.sha256(b"envelope test key").digest())
OTHER = SigningKey(hashlib.sha256(b"another key").digest())
TRUSTED = {KEY.key_id: KEY.public_key}
PAYLOAD = b'{"answer": "xyzzy"}'


def _signed() -> Envelope:
    return sign_envelope(payload_type=ANSWER_V1, payload=PAYLOAD, key=KEY)


def test_pae_vector() -> None:
    # From the DSSE specification (protocol.md).
    assert (
        pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_counts_bytes_not_characters() -> None:
    assert pae("t\u00e9", b"") == b"DSSEv1 3 t\xc3\xa9 0 "


def test_payload_types_are_distinct() -> None:
    assert len({ANSWER_V1, QUERY_V1, RELEASE_V1, LOG_ENTRY_V1, MANIFEST_V1}) == 5


def test_round_trip() -> None:
    env = _signed()
    text = env.to_json()
    doc = json.loads(text)
    assert doc["payloadType"] == ANSWER_V1
    assert base64.b64decode(doc["payload"]) == PAYLOAD
    assert doc["signatures"][0]["keyid"] == KEY.key_id
    parsed = Envelope.from_json(text)
    assert parsed == env
    assert Envelope.from_json(text.encode()) == env
    got = verify_envelope(parsed, expected_payload_type=ANSWER_V1, trusted_keys=TRUSTED)
    assert got == PAYLOAD


def test_no_unverified_payload_accessor() -> None:
    env = _signed()
    assert not hasattr(env, "payload")
    assert "xyzzy" not in repr(env)


def test_payload_changed_after_signing() -> None:
    doc = json.loads(_signed().to_json())
    doc["payload"] = base64.b64encode(b'{"answer": "plugh"}').decode()
    env = Envelope.from_json(json.dumps(doc))
    with pytest.raises(VerificationError):
        verify_envelope(env, expected_payload_type=ANSWER_V1, trusted_keys=TRUSTED)


def test_payload_type_changed_after_signing() -> None:
    doc = json.loads(_signed().to_json())
    doc["payloadType"] = QUERY_V1
    env = Envelope.from_json(json.dumps(doc))
    with pytest.raises(VerificationError):
        verify_envelope(env, expected_payload_type=QUERY_V1, trusted_keys=TRUSTED)


def test_wrong_payload_type() -> None:
    with pytest.raises(VerificationError, match="payload type"):
        verify_envelope(_signed(), expected_payload_type=QUERY_V1, trusted_keys=TRUSTED)


def test_wrong_key() -> None:
    env = _signed()
    with pytest.raises(VerificationError, match="no signature from a trusted key"):
        verify_envelope(
            env, expected_payload_type=ANSWER_V1, trusted_keys={OTHER.key_id: OTHER.public_key}
        )
    # The key id is only a hint: the trusted key under that id must verify.
    with pytest.raises(VerificationError, match="does not verify"):
        verify_envelope(
            env, expected_payload_type=ANSWER_V1, trusted_keys={KEY.key_id: OTHER.public_key}
        )
    with pytest.raises(VerificationError):
        verify_envelope(env, expected_payload_type=ANSWER_V1, trusted_keys={})


def test_flipped_signature_bit() -> None:
    doc = json.loads(_signed().to_json())
    sig = bytearray(base64.b64decode(doc["signatures"][0]["sig"]))
    sig[7] ^= 0x80
    doc["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    env = Envelope.from_json(json.dumps(doc))
    with pytest.raises(VerificationError):
        verify_envelope(env, expected_payload_type=ANSWER_V1, trusted_keys=TRUSTED)


def test_untrusted_extra_signature_is_ignored() -> None:
    env = _signed()
    extra = sign_envelope(payload_type=ANSWER_V1, payload=PAYLOAD, key=OTHER).signatures
    both = Envelope.from_json(Envelope(env.payload_type, PAYLOAD, extra + env.signatures).to_json())
    assert verify_envelope(both, expected_payload_type=ANSWER_V1, trusted_keys=TRUSTED) == PAYLOAD


def _mutated(**changes: object) -> str:
    doc = json.loads(_signed().to_json())
    for key, value in changes.items():
        if value is None:
            del doc[key]
        else:
            doc[key] = value
    return json.dumps(doc)


SIG = json.loads(_signed().to_json())["signatures"][0]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("not json", id="not-json"),
        pytest.param("[]", id="not-object"),
        pytest.param(b"\xff", id="invalid-utf8"),
        pytest.param(_mutated(payload=None), id="no-payload"),
        pytest.param(_mutated(extra="x"), id="unknown-field"),
        pytest.param(_mutated(payloadType=""), id="empty-type"),
        pytest.param(_mutated(payloadType=5), id="type-not-string"),
        pytest.param(_mutated(payload="not base64!"), id="payload-not-base64"),
        pytest.param(_mutated(payload="eyJh"[:-1]), id="payload-bad-padding"),
        pytest.param(_mutated(payload="QR=="), id="payload-non-canonical"),
        # URL-safe base64 is accepted (DSSE requires it), but not mixed with standard
        pytest.param(_mutated(payload="-/8="), id="payload-mixed-alphabets"),
        pytest.param(_mutated(signatures=[]), id="no-signatures"),
        pytest.param(_mutated(signatures={}), id="signatures-not-list"),
        pytest.param(_mutated(signatures=[{"sig": SIG["sig"]}]), id="no-keyid"),
        pytest.param(_mutated(signatures=[{**SIG, "x": 1}]), id="signature-extra-field"),
        pytest.param(_mutated(signatures=[{**SIG, "keyid": 1}]), id="keyid-not-string"),
        pytest.param(_mutated(signatures=[SIG] * 17), id="too-many-signatures"),
        pytest.param(_signed().to_json()[:-1] + ',"payload":"AA=="}', id="duplicate-key"),
        pytest.param(_mutated(payload=float("nan")), id="nan"),
    ],
)
def test_malformed_json(text: str | bytes) -> None:
    with pytest.raises(MalformedEnvelope):
        Envelope.from_json(text)
    assert issubclass(MalformedEnvelope, VerificationError)
