"""Ed25519 keys and verification, checked against Wycheproof."""

from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path
from typing import Any

import pytest

from fedscreen.crypto.signing import SigningKey, public_key_id, verify_signature
from fedscreen.errors import ConfigError, VerificationError

# Copied unchanged from C2SP/wycheproof; source, commit and licence in tests/vectors/README.md.
WYCHEPROOF = Path(__file__).resolve().parents[2] / "vectors" / "wycheproof" / "ed25519_test.json"
# The file at the recorded commit holds 151 cases; fewer means it was truncated or replaced.
MIN_WYCHEPROOF_CASES = 151


def _load_wycheproof() -> dict[str, Any]:
    """The vector file; if it is missing, the calling test fails (never skips)."""
    if not WYCHEPROOF.is_file():
        pytest.fail(
            f"Wycheproof Ed25519 vectors missing: {WYCHEPROOF} (see tests/vectors/README.md)",
            pytrace=False,
        )
    doc: dict[str, Any] = json.loads(WYCHEPROOF.read_text(encoding="utf-8"))
    return doc


def _wycheproof_cases() -> list[Any]:
    # A missing file still yields one case, which fails: never a skip, never an empty set.
    if not WYCHEPROOF.is_file():
        return [pytest.param(None, id="vectors-missing")]
    doc = json.loads(WYCHEPROOF.read_text(encoding="utf-8"))
    cases = []
    for group in doc["testGroups"]:
        public_key = bytes.fromhex(group["publicKey"]["pk"])
        for test in group["tests"]:
            cases.append(pytest.param((public_key, test), id=f"tc{test['tcId']}"))
    return cases or [pytest.param(None, id="vectors-empty")]


def test_wycheproof_vectors_are_complete() -> None:
    doc = _load_wycheproof()
    assert doc["algorithm"] == "EDDSA"
    count = sum(len(group["tests"]) for group in doc["testGroups"])
    assert count == doc["numberOfTests"]
    assert count >= MIN_WYCHEPROOF_CASES


@pytest.mark.parametrize("case", _wycheproof_cases())
def test_wycheproof(case: tuple[bytes, dict[str, Any]] | None) -> None:
    if case is None:
        _load_wycheproof()
        pytest.fail(f"no test cases in {WYCHEPROOF}", pytrace=False)
    public_key, test = case
    message, signature = bytes.fromhex(test["msg"]), bytes.fromhex(test["sig"])
    assert test["result"] in ("valid", "invalid")
    if test["result"] == "valid":
        verify_signature(public_key, message, signature)
    else:
        with pytest.raises(VerificationError):
            verify_signature(public_key, message, signature)


def test_sign_and_verify() -> None:
    key = SigningKey.generate()
    sig = key.sign(b"message")
    verify_signature(key.public_key, b"message", sig)
    with pytest.raises(VerificationError):
        verify_signature(key.public_key, b"messagf", sig)
    with pytest.raises(VerificationError):
        verify_signature(SigningKey.generate().public_key, b"message", sig)


def test_wrong_lengths_are_rejected() -> None:
    key = SigningKey.generate()
    sig = key.sign(b"m")
    with pytest.raises(VerificationError):
        verify_signature(key.public_key[:31], b"m", sig)
    with pytest.raises(VerificationError):
        verify_signature(key.public_key + b"\0", b"m", sig)
    with pytest.raises(VerificationError):
        verify_signature(key.public_key, b"m", sig[:63])
    with pytest.raises(VerificationError):
        verify_signature(key.public_key, b"m", sig + b"\0")


def test_non_canonical_s_is_rejected() -> None:
    group_order = 2**252 + 27742317777372353535851937790883648493
    key = SigningKey.generate()
    sig = key.sign(b"m")
    s = int.from_bytes(sig[32:], "little") + group_order
    malleated = sig[:32] + s.to_bytes(32, "little")
    with pytest.raises(VerificationError):
        verify_signature(key.public_key, b"m", malleated)


def test_key_id() -> None:
    key = SigningKey(bytes(range(32)))
    assert len(key.key_id) == 16
    assert key.key_id == public_key_id(key.public_key)
    assert int(key.key_id, 16) >= 0


def test_repr_hides_private_key() -> None:
    seed = bytes(range(32))
    key = SigningKey(seed)
    text = repr(key) + str(key)
    assert key.key_id in text
    assert seed.hex() not in text
    assert key.public_key.hex() not in text
    with pytest.raises(TypeError):
        pickle.dumps(key)


def test_save_and_load(tmp_path: Path) -> None:
    key = SigningKey.generate()
    path = tmp_path / "node.key"
    key.save(path)
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = SigningKey.load(path)
    assert loaded.public_key == key.public_key
    assert loaded.sign(b"x") == key.sign(b"x")


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    path.write_bytes(b"precious")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        SigningKey.generate().save(path)
    assert path.read_bytes() == b"precious"


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_load_refuses_readable_key(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    SigningKey.generate().save(path)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        SigningKey.load(path)
    assert SigningKey.load(path, check_permissions=False).public_key


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage\n", b"fedscreen-ed25519-private-key-v1\nAAAA\n", b"x" * 10000],
)
def test_load_rejects_bad_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "node.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError):
        SigningKey.load(path)


def test_bad_seed_length() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        SigningKey(b"short")
