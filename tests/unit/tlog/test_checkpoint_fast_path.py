"""``parse_and_verify_note`` gives the same checkpoint, or raises the same error, whether
its fast path (notes of the shape fedscreen writes) or the strict parser reads a note."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fedscreen.crypto.signing import SignatureMemo, SigningKey
from fedscreen.errors import FedscreenError, UnknownKey
from fedscreen.tlog.checkpoint import (
    Checkpoint,
    _fedscreen_note,
    parse_and_verify_note,
    sign_checkpoint,
    sign_note,
    verify_note,
)

KEY = SigningKey(hashlib.sha256(b"fast path key").digest())
OTHER = SigningKey(hashlib.sha256(b"fast path other key").digest())
ROOT = base64.b64encode(hashlib.sha256(b"root").digest()).decode()


def _strict(note: str | bytes, verifiers: dict[str, bytes]) -> Checkpoint:
    """The definition: what parse_and_verify_note did before it had a fast path."""
    verified = verify_note(note, verifiers=verifiers)
    checkpoint = Checkpoint.from_body(verified.text)
    if checkpoint.origin not in verified.signers:
        raise UnknownKey(f"checkpoint is not signed by a trusted key for {checkpoint.origin!r}")
    return checkpoint


def _outcome(read: object, note: str | bytes, verifiers: dict[str, bytes]) -> tuple[str, object]:
    try:
        return "ok", read(note, verifiers)  # type: ignore[operator]
    except (FedscreenError, ValueError, TypeError) as exc:
        return type(exc).__name__, str(exc)


def _fast(note: str | bytes, verifiers: dict[str, bytes]) -> Checkpoint:
    return parse_and_verify_note(note, verifiers=verifiers, memo=SignatureMemo())


_names = st.sampled_from(
    ["fedscreen.node/130102", "fedscreen.coordinator/prov", "a", "x:y-z_1", "é/node", "a\u00a0b"]
) | st.text(alphabet="abz09._/:-+ é", min_size=1, max_size=12)
_sizes = st.sampled_from(
    ["0", "1", "12345", "007", "00", "-1", "+1", "1 ", str(2**64 - 1), str(2**64),
     "123456789012345678901", "١"]
) | st.integers(min_value=0, max_value=2**65).map(str)  # fmt: skip
_roots = st.sampled_from(
    [ROOT, ROOT[:-2] + "B=", ROOT[:-1], ROOT + "=", ROOT.replace("=", ""), "A" * 43 + "=",
     "/" * 42 + "w=", "-" * 42 + "w=", "A" * 40 + "AAAA"]
) | st.binary(min_size=30, max_size=34).map(lambda b: base64.b64encode(b).decode())  # fmt: skip
#: edits of the signed note: the signature line's symbols, padding, spacing and extra lines
_edits = st.sampled_from(
    [None, ("=\n", "A\n"), ("=\n", "==\n"), ("\u2014 ", "- "), ("\u2014 ", "\u2014  "),
     ("\n\n", "\n\n\n"), ("\n\n", "\nx\n\n"), ("=\n", "=\n\u2014 a AAAAAAAA\n"), ("=\n", "=")]
)  # fmt: skip


@given(
    name=_names,
    origin=_names,
    size=_sizes,
    root=_roots,
    edit=_edits,
    signer=st.sampled_from([KEY, OTHER]),
    last=st.sampled_from([None, "A", "B", "Q", "w", "/"]),
)
@example(name="n", origin="n", size="1", root=ROOT, edit=None, signer=KEY, last=None)
@example(name="n", origin="n", size="1", root=ROOT, edit=None, signer=OTHER, last=None)
@example(name="n", origin="m", size="1", root=ROOT, edit=None, signer=KEY, last=None)
@example(name="n", origin="n", size="1", root=ROOT, edit=None, signer=KEY, last="B")
@example(name="n", origin="n", size=str(2**64), root=ROOT, edit=None, signer=KEY, last=None)
@example(name="n", origin="n", size="9" * 21, root=ROOT, edit=None, signer=KEY, last=None)
def test_the_fast_path_reads_every_note_as_the_strict_parser(
    name: str,
    origin: str,
    size: str,
    root: str,
    edit: tuple[str, str] | None,
    signer: SigningKey,
    last: str | None,
) -> None:
    try:
        note = sign_note(f"{origin}\n{size}\n{root}\n", name=name, key=signer)
    except ValueError:  # a text or name sign_note refuses: sign the note by hand
        sig = base64.b64encode(b"\0" * 68).decode()
        note = f"{origin}\n{size}\n{root}\n\n\u2014 {name} {sig}\n"
    if last is not None:  # the signature's last symbol: canonical (A, Q, w) or not
        note = note[:-3] + last + note[-2:]
    if edit is not None:
        note = note.replace(*edit)
    for verifiers in ({name: KEY.public_key}, {origin: KEY.public_key}, {}):
        expected = _outcome(_strict, note, verifiers)
        assert _outcome(_fast, note, verifiers) == expected
        assert _outcome(_fast, note.encode("utf-8", "surrogatepass"), verifiers) == expected


@pytest.mark.parametrize(
    "checkpoint",
    [
        Checkpoint("fedscreen.node/130102", 0, hashlib.sha256(b"").digest()),
        Checkpoint("fedscreen.node/130102", 2**64 - 1, b"\xff" * 32),
        Checkpoint("fedscreen.coordinator/province", 12345, hashlib.sha256(b"r").digest()),
    ],
)
def test_fedscreen_notes_take_the_fast_path(checkpoint: Checkpoint) -> None:
    note = sign_checkpoint(checkpoint, key=KEY)
    fast = _fedscreen_note(note)
    assert fast is not None
    text, name, _, _, parsed = fast
    assert (text, name, parsed) == (checkpoint.body(), checkpoint.origin, checkpoint)
    verifiers = {checkpoint.origin: KEY.public_key}
    assert parse_and_verify_note(note, verifiers=verifiers) == _strict(note, verifiers)


def test_other_notes_take_the_strict_path() -> None:
    note = sign_checkpoint(Checkpoint("fedscreen.node/é", 1, b"\0" * 32), key=KEY)  # not ASCII
    assert _fedscreen_note(note) is None
    big = sign_checkpoint(Checkpoint("o", 2**64 - 1, b"\0" * 32), key=KEY)
    assert _fedscreen_note(big.replace("18446744073709551615", "18446744073709551616")) is None
    assert _fedscreen_note(note.encode()) is None  # bytes: the strict parser
