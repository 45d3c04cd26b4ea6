"""C2SP checkpoints (https://c2sp.org/tlog-checkpoint) as C2SP signed notes
(https://c2sp.org/signed-note), with Ed25519 signatures only.

Parsing is strict: fedscreen writes exactly the three mandatory body lines and
no extension lines, and accepts nothing else. Errors are :class:`MalformedNote`,
:class:`UnknownKey` or :class:`BadSignature`, so an auditor can map them to
distinct exit codes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from fedscreen.crypto.signing import (
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    SignatureMemo,
    SigningKey,
    verify_signature,
)
from fedscreen.errors import BadSignature, MalformedNote, UnknownKey, VerificationError
from fedscreen.tlog.merkle import HASH_SIZE

# signed-note "Signature types": 0x01 is Ed25519.
SIG_TYPE_ED25519 = 0x01

# signed-note "Format": verifiers must accept at least 16 signatures; cap work beyond that.
MAX_SIGNATURES = 100
MAX_NOTE_BYTES = 1 << 20

_SIG_PREFIX = "\u2014 "  # em dash, space
_SIZE_RE = re.compile(r"0|[1-9][0-9]*")
_CONTROL_RE = re.compile(r"[\x00-\x09\x0b-\x1f]")
_MAX_SIZE = 2**64 - 1  # sizes are uint64 in RFC 9162 and every log implementation
#: The exact shape of the checkpoint notes fedscreen writes (``sign_checkpoint``): the
#: three body lines (a root of 32 bytes: 44 base64 symbols), a blank line and one
#: signature line under the origin's own name (a 4-byte key id and a 64-byte signature:
#: 92 symbols). A note of this shape is ASCII with no control character, its key name
#: has no space or '+', and both base64 values are canonical (the symbol before "=" has
#: its unused low 2 bits zero), so :func:`parse_and_verify_note` can skip the strict
#: parser, which is twice its cost to a coordinator checking an answer's note; anything
#: else (or a size beyond uint64) takes the strict parser, which decides.
_FEDSCREEN_NOTE = re.compile(
    r"([A-Za-z0-9._/:-]+)\n(0|[1-9][0-9]{0,19})\n([A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=)\n"
    r"\n\u2014 \1 ([A-Za-z0-9+/]{90}[AEIMQUYcgkosw048]=)\n"
)


def member_origin(role: str, member_id: str) -> str:
    """The checkpoint origin line of a federation member's log, e.g. "fedscreen.node/130102"."""
    return f"fedscreen.{role}/{member_id}"


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: origin, tree size and RFC 9162 root hash (tlog-checkpoint §Note text)."""

    origin: str
    size: int
    root: bytes

    def __post_init__(self) -> None:
        _check_key_name(self.origin, "origin")
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise TypeError("checkpoint size must be an int")
        if not 0 <= self.size <= _MAX_SIZE:
            raise ValueError(f"checkpoint size {self.size} is out of range")
        if not isinstance(self.root, bytes) or len(self.root) != HASH_SIZE:
            raise ValueError(f"checkpoint root must be {HASH_SIZE} bytes")

    @classmethod
    def _checked(cls, origin: str, size: int, root: bytes) -> Checkpoint:
        """A Checkpoint of values the caller has established (a note of fedscreen's own
        shape, :data:`_FEDSCREEN_NOTE`): ``__post_init__``'s checks skipped."""
        checkpoint = object.__new__(cls)
        object.__setattr__(checkpoint, "origin", origin)
        object.__setattr__(checkpoint, "size", size)
        object.__setattr__(checkpoint, "root", root)
        return checkpoint

    def body(self) -> str:
        """The note text: origin, size, base64 root, each ending in a newline."""
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode('ascii')}\n"

    @classmethod
    def from_body(cls, text: str) -> Checkpoint:
        """Parse note text strictly (exactly three lines); raise MalformedNote otherwise."""
        if not text.endswith("\n"):
            raise MalformedNote("checkpoint text must end with a newline")
        lines = text[:-1].split("\n")
        # tlog-checkpoint allows extension lines; fedscreen never writes them and,
        # as they are not auditable, refuses them.
        if len(lines) != 3:
            raise MalformedNote(f"checkpoint text must have 3 lines, not {len(lines)}")
        origin, size_text, root_text = lines
        if not _SIZE_RE.fullmatch(size_text):
            raise MalformedNote("checkpoint size is not a decimal without leading zeroes")
        root = _b64decode(root_text, "checkpoint root hash")
        try:
            return cls(origin, int(size_text), root)
        except (TypeError, ValueError) as e:
            raise MalformedNote(f"bad checkpoint: {e}") from None


def note_size(note: str) -> int:
    """The tree size a signed checkpoint note states, read without its signatures (they
    are checked where the note is trusted); 0 for no note. MalformedNote if it is none."""
    if not note:
        return 0
    end = note.find("\n\n")
    if end < 0:
        raise MalformedNote("a checkpoint note without its signature lines")
    return Checkpoint.from_body(note[: end + 1]).size


@dataclass(frozen=True)
class VerifiedNote:
    """A note's text and the names of the trusted keys whose signatures verified."""

    text: str
    signers: frozenset[str]


def note_key_id(name: str, public_key: bytes) -> bytes:
    """signed-note "Ed25519 signatures": SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes")
    data = name.encode("utf-8") + b"\n" + bytes([SIG_TYPE_ED25519]) + public_key
    return hashlib.sha256(data).digest()[:4]


def sign_note(text: str, *, name: str, key: SigningKey) -> str:
    """Return the signed note: text, blank line, one signature line (signed-note §Format)."""
    _check_key_name(name, "key name")
    try:
        _check_text(text)
    except MalformedNote as e:
        raise ValueError(str(e)) from None
    sig = note_key_id(name, key.public_key) + key.sign(text.encode("utf-8"))
    return f"{text}\n{_SIG_PREFIX}{name} {base64.b64encode(sig).decode('ascii')}\n"


def sign_checkpoint(checkpoint: Checkpoint, *, key: SigningKey) -> str:
    """Sign a checkpoint under its origin as key name (tlog-checkpoint §Signatures)."""
    return sign_note(checkpoint.body(), name=checkpoint.origin, key=key)


def verify_note(
    note: str | bytes, *, verifiers: Mapping[str, bytes], memo: SignatureMemo | None = None
) -> VerifiedNote:
    """Verify a signed note against trusted ``verifiers`` (key name -> Ed25519 public key).

    Follows signed-note §Signatures: signatures from unknown keys (name and key
    id not both matching) are ignored; any failing signature from a known key
    raises BadSignature; no verified signature raises UnknownKey.
    """
    text, sig_lines = _split_note(note)
    return VerifiedNote(text, _signers(text, sig_lines, verifiers, memo))


def _signers(
    text: str,
    sig_lines: list[tuple[str, bytes, bytes]],
    verifiers: Mapping[str, bytes],
    memo: SignatureMemo | None,
) -> frozenset[str]:
    """The names of the trusted keys whose signatures verify (:func:`verify_note`'s rules)."""
    message = text.encode("utf-8")
    signers: set[str] = set()
    for name, key_id, sig in sig_lines:
        public_key = verifiers.get(name)
        if public_key is None or note_key_id(name, public_key) != key_id:
            continue
        if len(sig) != SIGNATURE_SIZE:
            raise BadSignature(f"signature by {name} has the wrong length")
        try:
            (memo.verify if memo is not None else verify_signature)(public_key, message, sig)
        except VerificationError:
            raise BadSignature(f"signature by {name} does not verify") from None
        signers.add(name)
    if not signers:
        raise UnknownKey("note has no signature from a trusted key")
    return frozenset(signers)


def parse_and_verify_note(
    note_text: str | bytes, *, verifiers: Mapping[str, bytes], memo: SignatureMemo | None = None
) -> Checkpoint:
    """Verify a signed checkpoint and return it.

    The checkpoint must carry a valid signature from the verifier named after
    its origin; other trusted signatures (say, witnesses) are checked too.
    """
    fast = _fedscreen_note(note_text)
    if fast is not None:
        text, origin, key_id, sig, checkpoint = fast
        # its one signature is the origin's own: once it verifies, the origin signed
        _signers(text, [(origin, key_id, sig)], verifiers, memo)
        return checkpoint
    verified = verify_note(note_text, verifiers=verifiers, memo=memo)
    checkpoint = Checkpoint.from_body(verified.text)
    if checkpoint.origin not in verified.signers:
        raise UnknownKey(f"checkpoint is not signed by a trusted key for {checkpoint.origin!r}")
    return checkpoint


def _fedscreen_note(note: str | bytes) -> tuple[str, str, bytes, bytes, Checkpoint] | None:
    """Text, key name, key id, signature and checkpoint of a note of the shape fedscreen
    writes (:data:`_FEDSCREEN_NOTE`), as the strict parser gives them; else None."""
    if not isinstance(note, str) or len(note) > MAX_NOTE_BYTES:
        return None
    fast = _FEDSCREEN_NOTE.fullmatch(note)
    if fast is None or int(fast[2]) > _MAX_SIZE:
        return None
    origin, size, root, sig_text = fast.groups()
    raw = binascii.a2b_base64(sig_text)
    checkpoint = Checkpoint._checked(origin, int(size), binascii.a2b_base64(root))
    return note[: fast.end(3) + 1], origin, raw[:4], raw[4:], checkpoint


def _split_note(note: str | bytes) -> tuple[str, list[tuple[str, bytes, bytes]]]:
    """Split per signed-note §Format into text and (name, key id, signature) triples."""
    if isinstance(note, str):
        if len(note) > MAX_NOTE_BYTES:
            raise MalformedNote("note is too large")
        try:
            # signed-note §Format: a note is UTF-8; a str with a lone surrogate is not
            note = note.encode("utf-8")
        except UnicodeEncodeError:
            raise MalformedNote("note is not valid UTF-8 (a lone surrogate)") from None
    if not isinstance(note, bytes):
        raise MalformedNote("a note is text")
    if len(note) > MAX_NOTE_BYTES:
        raise MalformedNote("note is too large")
    try:
        note = note.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedNote("note is not valid UTF-8") from None
    _check_text(note)
    # The text is separated from the signatures by the last blank line.
    cut = note.rfind("\n\n")
    if cut < 0:
        raise MalformedNote("note has no blank line before its signatures")
    text, block = note[: cut + 1], note[cut + 2 :]
    if not block:
        raise MalformedNote("note has no signature lines")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedNote(f"note has more than {MAX_SIGNATURES} signatures")
    sigs = []
    for line in lines:
        if not line.startswith(_SIG_PREFIX):
            raise MalformedNote("signature line does not start with an em dash and a space")
        parts = line[len(_SIG_PREFIX) :].split(" ")
        if len(parts) != 2:
            raise MalformedNote("signature line is not '— <name> <base64>'")
        name, sig_text = parts
        try:
            _check_key_name(name, "key name")
        except ValueError as e:
            raise MalformedNote(str(e)) from None
        raw = _b64decode(sig_text, "signature")
        if len(raw) < 5:  # 4-byte key ID and at least one signature byte
            raise MalformedNote("signature is too short")
        sigs.append((name, raw[:4], raw[4:]))
    return text, sigs


def _check_text(text: str) -> None:
    """signed-note §Format: text ends in a newline and has no control characters but newline."""
    if not text.endswith("\n"):
        raise MalformedNote("note must end with a newline")
    if _CONTROL_RE.search(text):
        raise MalformedNote("note contains a control character")


def _check_key_name(name: str, what: str) -> None:
    """signed-note §Format: key names are non-empty, without Unicode spaces or '+'."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} must be a non-empty string")
    if "+" in name or any(map(str.isspace, name)) or _CONTROL_RE.search(name):
        raise ValueError(f"{what} {name!r} contains a space, '+' or control character")


def _b64decode(value: str, what: str) -> bytes:
    """Decode canonical standard base64 (RFC 4648 §4), rejecting anything else."""
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise MalformedNote(f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != value:
        raise MalformedNote(f"{what} is not canonical base64")
    return raw
