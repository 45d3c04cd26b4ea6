"""``verify_signature``'s S < L check (RFC 8032 §5.1.7 step 1), which looks at S's top byte
first and compares the whole number only when that byte could put S at L or above."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fedscreen.crypto.signing import SigningKey, verify_signature
from fedscreen.errors import VerificationError

L = 2**252 + 27742317777372353535851937790883648493
KEY = SigningKey(hashlib.sha256(b"s bound test key").digest())
SIG = KEY.sign(b"m")


def _verdict(s: int) -> str:
    try:
        verify_signature(KEY.public_key, b"m", SIG[:32] + s.to_bytes(32, "little"))
    except VerificationError as exc:
        return str(exc)
    return "valid"


@given(st.integers(min_value=0, max_value=2**256 - 1))
@example(L - 1)
@example(L)
@example(L + 1)
@example(2**252 - 1)
@example(2**252)
@example(2**253)
@example(2**256 - 1)
@example(int.from_bytes(SIG[32:], "little") + L)  # the malleated twin of a valid signature
def test_s_of_l_or_more_is_refused_before_the_curve_is_consulted(s: int) -> None:
    verdict = _verdict(s)
    if s >= L:
        assert verdict == "Ed25519 signature has a non-canonical S"
    else:
        assert verdict in ("valid", "Ed25519 signature does not verify")


def test_the_honest_s_verifies() -> None:
    assert _verdict(int.from_bytes(SIG[32:], "little")) == "valid"


@pytest.mark.parametrize("top", [0x0F, 0x10])
def test_s_just_under_l_with_top_byte_0x10_is_not_refused_as_non_canonical(top: int) -> None:
    """S in [2^252, L) has top byte 0x10 and is canonical: the shortcut must not refuse it."""
    s = L - 1 if top == 0x10 else 2**252 - 1
    assert s.to_bytes(32, "little")[31] == top
    assert _verdict(s) == "Ed25519 signature does not verify"
