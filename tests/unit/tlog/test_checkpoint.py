"""C2SP checkpoints in signed-note format."""

from __future__ import annotations

import base64
import hashlib

import pytest

from fedscreen.crypto.signing import SigningKey
from fedscreen.errors import BadSignature, MalformedNote, UnknownKey
from fedscreen.tlog.checkpoint import (
    MAX_SIGNATURES,
    Checkpoint,
    note_key_id,
    parse_and_verify_note,
    sign_checkpoint,
    sign_note,
)

ORIGIN = "fedscreen.example/node-a"
KEY = SigningKey(hashlib.sha256(b"checkpoint test key").digest())
OTHER = SigningKey(hashlib.sha256(b"another key").digest())
CHECKPOINT = Checkpoint(ORIGIN, 12345, hashlib.sha256(b"root").digest())
VERIFIERS = {ORIGIN: KEY.public_key}


def _note() -> str:
    return sign_checkpoint(CHECKPOINT, key=KEY)


def test_round_trip() -> None:
    note = _note()
    assert note.startswith(f"{ORIGIN}\n12345\n")
    assert "\n\n\u2014 " + ORIGIN + " " in note
    assert parse_and_verify_note(note, verifiers=VERIFIERS) == CHECKPOINT
    assert parse_and_verify_note(note.encode(), verifiers=VERIFIERS) == CHECKPOINT


def test_empty_tree_checkpoint() -> None:
    cp = Checkpoint(ORIGIN, 0, hashlib.sha256(b"").digest())
    assert parse_and_verify_note(sign_checkpoint(cp, key=KEY), verifiers=VERIFIERS) == cp


# golang.org/x/mod/sumdb/note's known answers (signing byte for byte, key hash,
# open cases) are in test_note_vectors.py, read from tests/vectors/signed-note/.


def test_unknown_keys() -> None:
    note = _note()
    with pytest.raises(UnknownKey):
        parse_and_verify_note(note, verifiers={})
    # Same name, different key: the key id differs, so the signature is ignored.
    with pytest.raises(UnknownKey):
        parse_and_verify_note(note, verifiers={ORIGIN: OTHER.public_key})
    # Right key under another name.
    with pytest.raises(UnknownKey):
        parse_and_verify_note(note, verifiers={"elsewhere.example/log": KEY.public_key})


def test_checkpoint_must_be_signed_under_its_origin() -> None:
    note = sign_note(CHECKPOINT.body(), name="witness.example", key=KEY)
    with pytest.raises(UnknownKey):
        parse_and_verify_note(note, verifiers={"witness.example": KEY.public_key})


def test_extra_signatures() -> None:
    note = _note()
    witness_line = sign_note(CHECKPOINT.body(), name="witness.example", key=OTHER).split("\n\n")[1]
    cosigned = note + witness_line
    # Unknown witness signatures are ignored.
    assert parse_and_verify_note(cosigned, verifiers=VERIFIERS) == CHECKPOINT
    both = {**VERIFIERS, "witness.example": OTHER.public_key}
    assert parse_and_verify_note(cosigned, verifiers=both) == CHECKPOINT
    # A known key's failing signature rejects the whole note.
    sig = base64.b64decode(witness_line.split(" ")[2])
    forged = sig[:4] + bytes(64)
    bad_line = f"\u2014 witness.example {base64.b64encode(forged).decode()}\n"
    with pytest.raises(BadSignature):
        parse_and_verify_note(note + bad_line, verifiers=both)


def test_flipped_bytes() -> None:
    note = _note()
    # Body changed: still signed by a known key, but the signature fails.
    with pytest.raises(BadSignature):
        parse_and_verify_note(note.replace("\n12345\n", "\n12346\n"), verifiers=VERIFIERS)
    text, sig_line = note.split("\n\n")
    raw = bytearray(base64.b64decode(sig_line.split(" ")[2]))
    for position, error in ((10, BadSignature), (1, UnknownKey)):
        changed = bytearray(raw)
        changed[position] ^= 0x01
        line = f"\u2014 {ORIGIN} {base64.b64encode(bytes(changed)).decode()}\n"
        with pytest.raises(error):
            parse_and_verify_note(f"{text}\n\n{line}", verifiers=VERIFIERS)


def _sig_line() -> str:
    return _note().split("\n\n")[1]


def _resigned(body: str) -> str:
    """A note whose (malformed) body carries a valid signature."""
    sig = note_key_id(ORIGIN, KEY.public_key) + KEY.sign(body.encode())
    return f"{body}\n\u2014 {ORIGIN} {base64.b64encode(sig).decode()}\n"


ROOT_B64 = base64.b64encode(CHECKPOINT.root).decode()


@pytest.mark.parametrize(
    "note",
    [
        pytest.param(_note()[:-1], id="no-trailing-newline"),
        pytest.param(_note().replace("\n\n", "\n"), id="no-blank-line"),
        pytest.param(_note().replace("\u2014", "-"), id="hyphen-not-em-dash"),
        pytest.param(_note().replace("\u2014", "\u2013"), id="en-dash"),
        pytest.param(_note().replace("\u2014 ", "\u2014  "), id="double-space"),
        pytest.param(_note().replace("\n", "\r\n"), id="crlf"),
        pytest.param(_note() + "\n", id="trailing-blank-line"),
        pytest.param(_note().split("\n\n")[0] + "\n\n", id="no-signatures"),
        pytest.param(_note()[:-2] + "\n", id="missing-padding"),
        pytest.param(_note()[:-1] + " \n", id="trailing-space"),
        pytest.param(_note() + "not a signature\n", id="junk-line"),
        pytest.param(_note() + _sig_line() * MAX_SIGNATURES, id="too-many-signatures"),
        pytest.param(f"{ORIGIN}\n1\n{ROOT_B64}\n\n\u2014 {ORIGIN} AAAA\n", id="short-signature"),
        pytest.param(b"\xff" + _note().encode(), id="invalid-utf8"),
        pytest.param(_resigned(f"{ORIGIN}\n05\n{ROOT_B64}\n"), id="size-leading-zero"),
        pytest.param(_resigned(f"{ORIGIN}\n+5\n{ROOT_B64}\n"), id="size-sign"),
        pytest.param(_resigned(f"{ORIGIN}\n\u0665\n{ROOT_B64}\n"), id="size-non-ascii-digit"),
        pytest.param(_resigned(f"{ORIGIN}\n{2**64}\n{ROOT_B64}\n"), id="size-overflow"),
        pytest.param(_resigned(f"{ORIGIN}\n5\n{ROOT_B64[:-4]}\n"), id="root-short"),
        pytest.param(_resigned(f"{ORIGIN}\n5\n{ROOT_B64[:-2]}B=\n"), id="root-non-canonical"),
        pytest.param(_resigned(f"{ORIGIN}\n5\n{ROOT_B64}\nextension\n"), id="extension-line"),
        pytest.param(_resigned(f"{ORIGIN}\n5\n"), id="two-lines"),
        pytest.param(_resigned(f"{ORIGIN}\n5\t\n{ROOT_B64}\n"), id="control-character"),
    ],
)
def test_malformed(note: str | bytes) -> None:
    with pytest.raises(MalformedNote):
        parse_and_verify_note(note, verifiers=VERIFIERS)


def test_checkpoint_constructor_checks() -> None:
    root = CHECKPOINT.root
    for origin in ("", "has space", "has+plus", "line\nbreak"):
        with pytest.raises(ValueError, match="origin"):
            Checkpoint(origin, 1, root)
    with pytest.raises(ValueError, match="out of range"):
        Checkpoint(ORIGIN, -1, root)
    with pytest.raises(ValueError, match="32 bytes"):
        Checkpoint(ORIGIN, 1, root[:31])
