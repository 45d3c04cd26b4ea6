"""Ed25519 signing keys and signature verification (RFC 8032), via PyNaCl/libsodium.

The private key never leaves this module except as the file written by
:meth:`SigningKey.save`; ``repr`` shows only the public key id.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
import threading
from pathlib import Path
from typing import NoReturn

import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.signing
import nacl.utils

from fedscreen._util.files import write_new_file
from fedscreen.errors import ConfigError, VerificationError

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
SEED_SIZE = 32

# RFC 8032 §5.1: L, the order of the prime-order subgroup of edwards25519.
_GROUP_ORDER = 2**252 + 27742317777372353535851937790883648493

# Private key file: this header line, then the base64 seed, then a newline.
_FILE_HEADER = b"fedscreen-ed25519-private-key-v1\n"
_MAX_FILE_SIZE = 4096


def public_key_id(public_key: bytes) -> str:
    """Return the stable key id: first 16 hex digits of SHA-256(raw 32-byte public key)."""
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes")
    return hashlib.sha256(public_key).hexdigest()[:16]


class SigningKey:
    """An Ed25519 private key; its ``repr`` shows only the key id."""

    __slots__ = ("_key",)

    def __init__(self, seed: bytes) -> None:
        """Wrap a 32-byte RFC 8032 private key (the seed)."""
        if not isinstance(seed, bytes) or len(seed) != SEED_SIZE:
            raise ValueError(f"an Ed25519 private key seed is {SEED_SIZE} bytes")
        self._key = nacl.signing.SigningKey(seed)

    @classmethod
    def generate(cls) -> SigningKey:
        """Make a new key from libsodium's CSPRNG."""
        return cls(nacl.utils.random(SEED_SIZE))

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, check_permissions: bool = True) -> SigningKey:
        """Read a key written by :meth:`save`.

        With ``check_permissions`` (the default) a file that group or others
        may access is refused, as ssh does.
        """
        p = Path(path)
        try:
            with p.open("rb") as f:
                mode = os.fstat(f.fileno()).st_mode
                data = f.read(_MAX_FILE_SIZE + 1)
        except OSError as e:
            raise ConfigError(f"{p}: cannot read private key: {e.strerror}") from None
        if check_permissions and os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"{p}: private key is accessible by group or others "
                f"(mode {stat.S_IMODE(mode):o}); run chmod 600 on it"
            )
        seed = _decode_key_file(data)
        if seed is None:
            raise ConfigError(f"{p}: not a fedscreen Ed25519 private key file")
        return cls(seed)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key to a new file with mode 0600; an existing file is never replaced."""
        p = Path(path)
        data = _FILE_HEADER + base64.b64encode(self._key.encode()) + b"\n"
        write_new_file(p, data, mode=0o600, what="key")

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte public key."""
        return bytes(self._key.verify_key)

    @property
    def key_id(self) -> str:
        """See :func:`public_key_id`."""
        return public_key_id(self.public_key)

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte detached Ed25519 signature of ``message``."""
        return bytes(self._key.sign(message).signature)

    def open_sealed(self, box: bytes) -> bytes:
        """Decrypt a sealed box made by :func:`seal_to` for this key's public key.

        Raises VerificationError if the box was not made for this key or was altered.
        """
        private = self._key.to_curve25519_private_key()
        try:
            return bytes(nacl.public.SealedBox(private).decrypt(box))
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            raise VerificationError("a sealed box does not open with this key") from None

    def __repr__(self) -> str:
        return f"<SigningKey key_id={self.key_id}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("SigningKey cannot be pickled; use save()")


def check_public_key(public_key: bytes) -> None:
    """Refuse an Ed25519 public key that is not a canonical point of prime order.

    libsodium verifies signatures under keys with a low-order component (42 of CCTV's
    edge cases); other verifiers reject them, so a signer and an auditor could
    disagree. Admitting only prime-order keys (``crypto_core_ed25519_is_valid_point``:
    canonical, on the curve, in the main subgroup, not of small order) closes that.
    """
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_SIZE:
        raise VerificationError(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes")
    if not nacl.bindings.crypto_core_ed25519_is_valid_point(public_key):
        raise VerificationError(
            "the Ed25519 public key is not a point of prime order (a low-order or "
            "non-canonical key); make a new key with fedscreen identity init"
        )


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Check an Ed25519 signature (RFC 8032 §5.1.7); raise VerificationError if it is bad."""
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_SIZE:
        raise VerificationError(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes")
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
        raise VerificationError(f"an Ed25519 signature is {SIGNATURE_SIZE} bytes")
    # RFC 8032 §5.1.7 step 1: S must satisfy 0 <= S < L. libsodium already rejects a
    # non-canonical S (all Wycheproof cases pass without this line); the explicit check
    # keeps signatures non-malleable even with a libsodium built in compatibility mode.
    # L > 2^252, so an S whose top byte (little-endian) is below 0x10 is canonical; the
    # full comparison runs only for S >= 2^252 (about 2^-127 of honest signatures).
    if signature[63] >= 0x10 and int.from_bytes(signature[32:], "little") >= _GROUP_ORDER:
        raise VerificationError("Ed25519 signature has a non-canonical S")
    try:
        # the binding itself: VerifyKey would re-check the key's type and size per call
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.BadSignatureError, ValueError):
        raise VerificationError("Ed25519 signature does not verify") from None


def seal_to(public_key: bytes, plaintext: bytes) -> bytes:
    """Encrypt ``plaintext`` to a member's Ed25519 public key (libsodium sealed box).

    The box is to the key's X25519 form (``crypto_sign_ed25519_pk_to_curve25519``), so
    the manifest's one key per member also receives secret shares: no second key to
    issue, pin and revoke. Anonymous by design (the sender signs the payload holding
    the box); only the holder of the private key opens it.
    """
    check_public_key(public_key)
    x25519 = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(public_key)
    return bytes(nacl.public.SealedBox(nacl.public.PublicKey(x25519)).encrypt(plaintext))


def random_u64(count: int) -> list[int]:
    """``count`` independent uniform 64-bit integers from libsodium's CSPRNG."""
    raw = nacl.utils.random(8 * count) if count > 0 else b""
    return [int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8)]


class SignatureMemo:
    """Signatures already verified, so a message checked twice costs one verification.

    The coordinator checks a node's answer when it arrives (its checkpoint, for
    rollbacks) and again when it combines it into a release; with a memo the second
    check is a SHA-256 and a lookup. Only signatures that verified are kept, keyed by
    SHA-256 over key, signature and message (fixed-size key and signature first, so the
    key is unambiguous); the oldest are forgotten past ``size``. Thread-safe. Callers
    opt in: an auditor, which sees each signature once, uses none.
    """

    def __init__(self, size: int = 8192) -> None:
        self._size = size
        self._seen: dict[bytes, None] = {}
        self._lock = threading.Lock()

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> None:
        """As :func:`verify_signature`, remembering success."""
        token = hashlib.sha256(b"".join((public_key, signature, message))).digest()
        with self._lock:
            if token in self._seen:
                return
        verify_signature(public_key, message, signature)  # raises: nothing remembered
        with self._lock:
            self._seen[token] = None
            if len(self._seen) > self._size:
                del self._seen[next(iter(self._seen))]


def _decode_key_file(data: bytes) -> bytes | None:
    if len(data) > _MAX_FILE_SIZE or not data.startswith(_FILE_HEADER):
        return None
    body = data[len(_FILE_HEADER) :]
    if not body.endswith(b"\n"):
        return None
    try:
        seed = base64.b64decode(body[:-1], validate=True)
    except binascii.Error:
        return None
    return seed if len(seed) == SEED_SIZE else None
