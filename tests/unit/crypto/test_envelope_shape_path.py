"""``Envelope.from_json``'s fast path matches the shape of ``to_json``'s text loosely (any
run of non-quote bytes where base64 goes) and decodes the two values as canonical
standard base64; whatever fails that takes the strict parser. These pin that every text
of that shape gets exactly the strict verdict.
"""

from __future__ import annotations

import re

from hypothesis import example, given
from hypothesis import strategies as st

from fedscreen.crypto import envelope as envelope_module
from fedscreen.crypto.envelope import Envelope
from fedscreen.errors import MalformedEnvelope

#: what may stand between the quotes: both alphabets, padding, JSON escapes, a stray
#: backslash before the closing quote, non-ASCII
B64_BOTH = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_="
SLOT = st.lists(
    st.sampled_from([*B64_BOTH, "\\", "\\/", "\\u0041", "\\n", " ", "é", "\\\\"]),
    max_size=16,
).map("".join)


def _text(payload: str, sig: str, payload_type: str = "t", keyid: str = "k") -> bytes:
    return (
        f'{{"payload":"{payload}","payloadType":"{payload_type}",'
        f'"signatures":[{{"keyid":"{keyid}","sig":"{sig}"}}]}}'
    ).encode()


def _verdict(text: bytes | str) -> str:
    try:
        return repr(Envelope.from_json(text))
    except MalformedEnvelope as exc:
        return f"refused: {exc}"


def _strict(text: bytes | str) -> str:
    saved = envelope_module._CANONICAL_ONE_SIGNATURE
    envelope_module._CANONICAL_ONE_SIGNATURE = re.compile(rb"(?!)")
    try:
        return _verdict(text)
    finally:
        envelope_module._CANONICAL_ONE_SIGNATURE = saved


@given(SLOT, SLOT)
@example("QQ==", "QQ==")
@example("QR==", "QQ==")  # non-zero pad bits
@example("QQ", "QQ==")  # padding left off
@example("-_8=", "QQ==")  # the URL-safe alphabet: DSSE verifiers accept it
@example("\\u0051Q==", "QQ==")  # an escape the JSON parser resolves
@example("QQ==\\", "QQ==")  # the closing quote escaped: not the shape at all
@example("", "")
def test_every_text_of_the_shape_gets_the_strict_verdict(payload: str, sig: str) -> None:
    text = _text(payload, sig)
    assert _verdict(text) == _strict(text)
    assert _verdict(text.decode()) == _strict(text.decode())


def test_lookalikes_that_the_strict_parser_accepts_are_accepted() -> None:
    """URL-safe base64 and escaped characters are the strict path's to decode, not errors."""
    assert Envelope.from_json(_text("-_8=", "QQ==")) == Envelope.from_json(_text("+/8=", "QQ=="))
    assert Envelope.from_json(_text("\\u0051Q==", "QQ==")) == Envelope.from_json(
        _text("QQ==", "QQ==")
    )
