"""C2SP signed notes against the known answers of golang.org/x/mod/sumdb/note.

The vectors (tests/vectors/signed-note/) are note_test.go transcribed as data. Ed25519
is deterministic, so fedscreen's signer must reproduce the Go signer's note byte for
byte. fedscreen has no parser for "name+hash+base64" verifier keys (its verifiers are
raw Ed25519 keys by name), so the vkey strings are decoded here and the checks on bad
vkeys are the ones that map onto fedscreen's API.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from fedscreen.crypto.signing import SigningKey, verify_signature
from fedscreen.errors import BadSignature, MalformedNote, UnknownKey, VerificationError
from fedscreen.tlog.checkpoint import (
    MAX_SIGNATURES,
    note_key_id,
    parse_and_verify_note,
    sign_note,
    verify_note,
)

# Transcribed from golang.org/x/mod; source, commit and licence in tests/vectors/README.md.
NOTE_VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "signed-note" / "note_vectors.json"
MIN_OPEN_CASES = 12  # the file at the recorded commit

# The error fedscreen must raise for each documented reason a note is rejected.
ERROR_FOR_WHY: dict[str, type[VerificationError]] = {
    "no verifiable signatures": UnknownKey,
    "too many signatures (limit 100)": MalformedNote,
    "invalid signature for a known key": BadSignature,
    "malformed": MalformedNote,
    "malformed (not UTF-8)": MalformedNote,
}

ED25519 = 0x01  # signed-note signature type


def _load() -> dict[str, Any]:
    """The vector file; if it is missing, the calling test fails (never skips)."""
    if not NOTE_VECTORS.is_file():
        pytest.fail(
            f"signed-note vectors missing: {NOTE_VECTORS} (see tests/vectors/README.md)",
            pytrace=False,
        )
    doc: dict[str, Any] = json.loads(NOTE_VECTORS.read_text(encoding="utf-8"))
    return doc


def _case_params() -> list[Any]:
    if not NOTE_VECTORS.is_file():
        return [pytest.param(None, id="vectors-missing")]
    cases = json.loads(NOTE_VECTORS.read_text(encoding="utf-8"))["open_cases"]
    return [pytest.param(c, id=c["id"]) for c in cases] or [pytest.param(None, id="vectors-empty")]


def _decode_vkey(vkey: str) -> tuple[str, bytes, bytes]:
    """Split a Go verifier key "<name>+<hex hash>+<base64(type || key)>"."""
    name, key_hash, key = vkey.split("+", 2)
    return name, bytes.fromhex(key_hash), base64.b64decode(key, validate=True)


def _decode_skey(skey: str) -> tuple[str, bytes, bytes]:
    """Split a Go signer key "PRIVATE+KEY+<name>+<hex hash>+<base64(type || seed)>"."""
    assert skey.startswith("PRIVATE+KEY+")
    return _decode_vkey(skey.removeprefix("PRIVATE+KEY+"))


def _public_keys(doc: dict[str, Any]) -> dict[str, bytes]:
    keys = {}
    for name, entry in doc["keys"].items():
        _, _, raw = _decode_vkey(entry["vkey"])
        keys[name] = raw[1:]
    return keys


def _note_of(case: dict[str, Any]) -> str | bytes:
    return case["note"] if "note" in case else bytes.fromhex(case["note_hex"])


def test_note_vectors_are_complete() -> None:
    doc = _load()
    cases = doc["open_cases"]
    assert len(cases) >= MIN_OPEN_CASES
    assert len({c["id"] for c in cases}) == len(cases)
    assert {c["expect"] for c in cases} == {"accept", "reject"}
    assert "skey" in doc["keys"]["PeterNeumann"]
    assert len(doc["bad_vkeys"]) >= 2


def test_key_hashes() -> None:
    """signed-note key ID: SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    doc = _load()
    for name, entry in doc["keys"].items():
        vkey_name, vkey_hash, raw = _decode_vkey(entry["vkey"])
        assert vkey_name == name
        assert raw[0] == ED25519
        assert len(raw) == 1 + 32
        assert vkey_hash == bytes.fromhex(entry["key_hash"])
        assert note_key_id(name, raw[1:]) == vkey_hash


def test_private_key_matches_verifier_key() -> None:
    doc = _load()
    entry = doc["keys"]["PeterNeumann"]
    name, key_hash, raw = _decode_skey(entry["skey"])
    assert name == "PeterNeumann"
    assert key_hash == bytes.fromhex(entry["key_hash"])
    assert raw[0] == ED25519
    key = SigningKey(raw[1:])
    assert key.public_key == _public_keys(doc)["PeterNeumann"]
    assert note_key_id(name, key.public_key) == key_hash


def test_signed_note_byte_for_byte() -> None:
    doc = _load()
    _, _, raw = _decode_skey(doc["keys"]["PeterNeumann"]["skey"])
    note = sign_note(doc["text"], name="PeterNeumann", key=SigningKey(raw[1:]))
    assert note == doc["signed_note"]
    assert note.encode("utf-8") == doc["signed_note"].encode("utf-8")
    assert note == doc["text"] + "\n" + doc["signatures"]["PeterNeumann"]


def test_signed_note_verifies() -> None:
    doc = _load()
    keys = _public_keys(doc)
    verified = verify_note(doc["signed_note"], verifiers={"PeterNeumann": keys["PeterNeumann"]})
    assert verified.text == doc["text"]
    assert verified.signers == {"PeterNeumann"}
    assert verify_note(doc["signed_note"].encode("utf-8"), verifiers=keys) == verified
    # Changed text under a known key's signature.
    with pytest.raises(BadSignature):
        verify_note(
            doc["signed_note"].replace("cryptography", "cryptographY"),
            verifiers={"PeterNeumann": keys["PeterNeumann"]},
        )
    # A valid note, but its text is not a checkpoint.
    with pytest.raises(MalformedNote):
        parse_and_verify_note(doc["signed_note"], verifiers=keys)


def test_signature_lines() -> None:
    """Each vector signature line: em dash, name, base64(key hash || Ed25519 signature)."""
    doc = _load()
    keys = _public_keys(doc)
    assert set(doc["signatures"]) == set(keys)
    for name, line in doc["signatures"].items():
        prefix, sig_text = line.removesuffix("\n").rsplit(" ", 1)
        assert prefix == f"\u2014 {name}"
        raw = base64.b64decode(sig_text, validate=True)
        assert raw[:4] == bytes.fromhex(doc["keys"][name]["key_hash"])
        verify_signature(keys[name], doc["text"].encode("utf-8"), raw[4:])


@pytest.mark.parametrize("case", _case_params())
def test_open_case(case: dict[str, Any] | None) -> None:
    if case is None:
        _load()
        pytest.fail(f"no open cases in {NOTE_VECTORS}", pytrace=False)
    doc = _load()
    keys = _public_keys(doc)
    verifiers = {name: keys[name] for name in case["verifiers"]}
    note = _note_of(case)
    if case["expect"] == "accept":
        verified = verify_note(note, verifiers=verifiers)
        assert verified.text == doc["text"]
        assert verified.signers == set(case["verified"])
        assert not verified.signers & set(case.get("unverified", []))
        # Accepted as a note, refused as a checkpoint: its text is not one.
        with pytest.raises(MalformedNote):
            parse_and_verify_note(note, verifiers=verifiers)
        return
    assert case["expect"] == "reject"
    error = ERROR_FOR_WHY.get(case["why"])
    if error is None:
        pytest.fail(f"case {case['id']}: no expected error for reason {case['why']!r}")
    with pytest.raises(error):
        verify_note(note, verifiers=verifiers)
    with pytest.raises(error):
        parse_and_verify_note(note, verifiers=verifiers)


def test_signature_limit_is_exactly_100() -> None:
    """The 101-signature case is rejected for its count: 100 of the same lines pass."""
    doc = _load()
    case = next(c for c in doc["open_cases"] if c["id"] == "101-signatures")
    text, block = case["note"].split("\n\n")
    lines = block.splitlines(keepends=True)
    assert len(lines) == 101 == MAX_SIGNATURES + 1
    keys = _public_keys(doc)
    hundred = text + "\n\n" + "".join(lines[:MAX_SIGNATURES])
    verified = verify_note(hundred, verifiers={"PeterNeumann": keys["PeterNeumann"]})
    assert verified.signers == {"PeterNeumann"}


def test_space_in_name_with_final_newline() -> None:
    """The vector's space-in-name note also lacks its final newline; with it, the
    name alone must still make the note malformed."""
    doc = _load()
    case = next(c for c in doc["open_cases"] if c["id"] == "space-in-name")
    assert not case["note"].endswith("\n")
    with pytest.raises(MalformedNote):
        verify_note(case["note"] + "\n", verifiers=_public_keys(doc))


def test_bad_verifier_keys() -> None:
    """Bad vkeys, as far as they map: fedscreen's verifiers are raw 32-byte Ed25519 keys."""
    doc = _load()
    good = _public_keys(doc)["PeterNeumann"]
    signed = doc["signed_note"]
    for entry in doc["bad_vkeys"]:
        name, key_hash, raw = _decode_vkey(entry["vkey"])
        # "hash adjusted": the hash matches the bad key, so only the key itself is wrong.
        assert hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4] == key_hash
        if len(raw) != 1 + 32:
            # Wrong key length: fedscreen refuses such a key outright.
            with pytest.raises(ValueError, match="32 bytes"):
                note_key_id(name, raw[1:])
            with pytest.raises(ValueError, match="32 bytes"):
                verify_note(signed, verifiers={name: raw[1:]})
        elif raw[0] != ED25519:
            # Unknown algorithm: fedscreen only computes Ed25519 key hashes, so a
            # signature under the other algorithm's key hash is from no trusted key.
            assert raw[1:] == good
            assert note_key_id(name, raw[1:]) != key_hash
            sig_line = signed.split("\n\n")[1]
            sig = base64.b64decode(sig_line.removesuffix("\n").rsplit(" ", 1)[1])
            forged = f"\u2014 {name} {base64.b64encode(key_hash + sig[4:]).decode()}\n"
            with pytest.raises(UnknownKey):
                verify_note(doc["text"] + "\n" + forged, verifiers={name: good})
        else:
            pytest.fail(f"bad vkey {entry['vkey']!r} is neither wrong-length nor non-Ed25519")
