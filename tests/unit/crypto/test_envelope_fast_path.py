"""``Envelope.from_json``'s fast path (canonical one-signature text) agrees with the strict path.

The fast path skips the JSON parser for text exactly as ``to_json`` writes it; any
text it accepts must parse to the same envelope the strict parser gives, and any
text it rejects must get the same verdict from the strict parser.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

from hypothesis import given
from hypothesis import strategies as st

from fedscreen.crypto import envelope as envelope_module
from fedscreen.crypto.envelope import Envelope, EnvelopeSignature
from fedscreen.errors import MalformedEnvelope

TYPE_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.+/_-"
B64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def _strict(text: bytes) -> Envelope | str:
    """What the general parser makes of ``text`` (the fast path switched off)."""
    saved = envelope_module._CANONICAL_ONE_SIGNATURE
    envelope_module._CANONICAL_ONE_SIGNATURE = re.compile(rb"(?!)")
    try:
        return Envelope.from_json(text)
    except MalformedEnvelope as exc:
        return f"refused: {exc}"
    finally:
        envelope_module._CANONICAL_ONE_SIGNATURE = saved


def _either(text: bytes) -> Envelope | str:
    try:
        return Envelope.from_json(text)
    except MalformedEnvelope as exc:
        return f"refused: {exc}"


@given(
    payload=st.binary(max_size=200),
    payload_type=st.text(TYPE_CHARS, min_size=1, max_size=40),
    keyid=st.text("abcdef0123456789", max_size=16),
    sig=st.binary(max_size=80),
)
def test_canonical_text_takes_the_fast_path_to_the_same_envelope(
    payload: bytes, payload_type: str, keyid: str, sig: bytes
) -> None:
    envelope = Envelope(payload_type, payload, (EnvelopeSignature(keyid, sig),))
    text = envelope.to_json().encode()
    assert envelope_module._CANONICAL_ONE_SIGNATURE.fullmatch(text)
    assert Envelope.from_json(text) == envelope == _strict(text)


@given(
    payload=st.text(B64_CHARS, max_size=24),
    payload_type=st.text(TYPE_CHARS, min_size=1, max_size=12),
    sig=st.text(B64_CHARS, max_size=24),
)
def test_any_base64_lookalike_gets_the_strict_verdict(
    payload: str, payload_type: str, sig: str
) -> None:
    """Non-canonical base64 (bad padding, stray ``=``) is refused on both paths alike."""
    text = json.dumps(
        {
            "payload": payload,
            "payloadType": payload_type,
            "signatures": [{"keyid": "k", "sig": sig}],
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    assert repr(_either(text)) == repr(_strict(text))


@given(st.binary(max_size=300))
def test_arbitrary_bytes_get_the_strict_verdict(text: bytes) -> None:
    assert repr(_either(text)) == repr(_strict(text))


def test_text_with_spaces_or_two_signatures_takes_the_strict_path() -> None:
    sig = base64.b64encode(b"s" * 64).decode()
    spaced = (
        f'{{"payload": "", "payloadType": "t", "signatures": [{{"keyid": "k", "sig": "{sig}"}}]}}'
    )
    assert envelope_module._CANONICAL_ONE_SIGNATURE.fullmatch(spaced.encode()) is None
    assert Envelope.from_json(spaced) == Envelope("t", b"", (EnvelopeSignature("k", b"s" * 64),))
    duplicated = spaced.replace('"payload": ""', '"payload": "", "payload": "AA=="')
    assert isinstance(_either(duplicated.encode()), str)


@given(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_=", max_size=16))
def test_base64_is_accepted_exactly_when_it_is_canonical(value: str) -> None:
    """The cheap pad-bit check agrees with re-encoding the decoded bytes."""
    url_safe = "-" in value or "_" in value
    try:
        raw = envelope_module._b64decode(value, "x")
    except MalformedEnvelope:
        raw = None
    try:
        altchars = b"-_" if url_safe else None
        decoded = base64.b64decode(value.encode(), altchars=altchars, validate=True)
        again = (base64.urlsafe_b64encode if url_safe else base64.b64encode)(decoded).decode()
        mixed = url_safe and ("+" in value or "/" in value)
        expected = decoded if again == value and not mixed else None
    except binascii.Error:
        expected = None
    assert raw == expected
