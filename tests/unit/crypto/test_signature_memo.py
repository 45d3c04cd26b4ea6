"""SignatureMemo: a signature checked twice costs one verification, and a bad one is never kept."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedscreen.crypto import signing
from fedscreen.crypto.signing import SignatureMemo, SigningKey
from fedscreen.errors import VerificationError

KEY = SigningKey.generate()
OTHER = SigningKey.generate()


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Count the real verifications the memo makes (they still run)."""
    calls: list[bytes] = []
    real = signing.verify_signature

    def counted(public_key: bytes, message: bytes, signature: bytes) -> None:
        calls.append(message)
        real(public_key, message, signature)

    monkeypatch.setattr(signing, "verify_signature", counted)
    return calls


def test_a_verified_signature_is_checked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting(monkeypatch)
    memo = SignatureMemo()
    sig = KEY.sign(b"answer")
    memo.verify(KEY.public_key, b"answer", sig)
    memo.verify(KEY.public_key, b"answer", sig)
    assert calls == [b"answer"]


def test_a_bad_signature_is_refused_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting(monkeypatch)
    memo = SignatureMemo()
    sig = KEY.sign(b"answer")
    for _ in range(2):
        with pytest.raises(VerificationError):
            memo.verify(KEY.public_key, b"answer!", sig)
        with pytest.raises(VerificationError):
            memo.verify(OTHER.public_key, b"answer", sig)
    assert len(calls) == 4


def test_the_memo_forgets_the_oldest_past_its_size(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting(monkeypatch)
    memo = SignatureMemo(size=2)
    signed = [(m, KEY.sign(m)) for m in (b"a", b"b", b"c")]
    for message, sig in [*signed, signed[0]]:
        memo.verify(KEY.public_key, message, sig)
    assert calls == [b"a", b"b", b"c", b"a"]


@given(st.binary(max_size=64), st.binary(max_size=64))
def test_a_remembered_signature_never_vouches_for_another_message(
    first: bytes, second: bytes
) -> None:
    memo = SignatureMemo()
    sig = KEY.sign(first)
    memo.verify(KEY.public_key, first, sig)
    if second != first:
        with pytest.raises(VerificationError):
            memo.verify(KEY.public_key, second, sig)
