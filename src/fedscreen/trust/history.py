"""Manifest histories on disk: every version an authority signed, or a member installed.

One signed manifest file per version, named by its version::

    DIR/manifests/00000000.json, 00000001.json, ...

The authority keeps every version it signs (its history is complete); a member's
home keeps each version it installed (possibly with gaps: a member may skip
versions). Either can be handed to an auditor (``fedscreen audit export
--manifests DIR``). Reading verifies every file and the chain between consecutive
versions (:func:`fedscreen.trust.manifest.check_successor`).
"""

from __future__ import annotations

import base64
import binascii
import itertools
from pathlib import Path
from typing import Final

from fedscreen._util.files import write_new_file
from fedscreen.errors import UnknownMember, VerificationError
from fedscreen.trust.certs import read_public_file
from fedscreen.trust.manifest import Manifest, check_successor, parse_manifest

__all__ = [
    "HISTORY_DIR",
    "MAX_MANIFEST_BYTES",
    "held_keys",
    "keep_version",
    "read_history",
    "version_name",
]

HISTORY_DIR: Final = "manifests"
#: in a member's home: the authority key pinned at its first install (base64)
_AUTHORITY_PUB: Final = "authority.pub"
#: a manifest file larger than this (bytes) is refused
MAX_MANIFEST_BYTES: Final = 16 * 1024 * 1024


def version_name(version: int) -> str:
    """The file name of a version in a history directory."""
    return f"{version:08d}.json"


def read_history(
    directory: Path, *, authority_key: bytes, contiguous: bool = True
) -> list[tuple[Manifest, bytes]]:
    """Every version in ``directory`` (oldest first) with its file's bytes, verified.

    Each file must be signed by ``authority_key`` and hold the version its name
    says; consecutive versions must chain. ``contiguous`` (an authority's history)
    also refuses gaps; a member's history may skip versions. Raises
    VerificationError; a missing directory is an empty history.
    """
    if not directory.is_dir():
        return []
    history: list[tuple[Manifest, bytes]] = []
    for path in sorted(directory.glob("*.json")):
        text = read_public_file(path, max_bytes=MAX_MANIFEST_BYTES)
        try:
            manifest = parse_manifest(text, authority_key=authority_key)
        except VerificationError as exc:
            raise VerificationError(f"{path}: {exc}") from None
        if path.name != version_name(manifest.version):
            raise VerificationError(f"{path} holds manifest version {manifest.version}")
        history.append((manifest, text))
    for (previous, _), (manifest, _) in itertools.pairwise(history):
        if contiguous or manifest.version == previous.version + 1:
            check_successor(previous, manifest)
    return history


def keep_version(directory: Path, manifest: Manifest, text: bytes) -> None:
    """Keep ``text`` (the verified file of ``manifest``) as its version in ``directory``.

    A version already kept must be the same signed manifest: the authority never
    signs two (VerificationError otherwise).
    """
    path = directory / version_name(manifest.version)
    if path.is_file():
        kept = parse_manifest(
            read_public_file(path, max_bytes=MAX_MANIFEST_BYTES),
            authority_key=manifest.authority_key,
        )
        if kept.digest != manifest.digest:
            raise VerificationError(
                f"{path} holds another manifest version {manifest.version}: "
                "the authority signed two"
            )
        return
    directory.mkdir(mode=0o755, exist_ok=True)
    write_new_file(path, text, mode=0o644)


def held_keys(home: Path, member_id: str) -> tuple[bytes, ...]:
    """Every signing key ``member_id`` held while active in a version installed in
    ``HOME/manifests/`` (newest version first; empty: no history or no pinned key).

    A member re-keyed in place (``pki issue --replace``) still reads what it signed
    under its former keys: its own checkpoints, its mirror, its coordinator's notes.
    Each version is verified under the authority key the home pinned; raises
    VerificationError if one does not.
    """
    pinned = home / _AUTHORITY_PUB
    if not pinned.is_file():
        return ()
    try:
        authority_key = base64.b64decode(
            read_public_file(pinned, max_bytes=1024).strip(), validate=True
        )
    except binascii.Error:
        raise VerificationError(f"{pinned}: not a base64 Ed25519 public key") from None
    keys: list[bytes] = []
    history = read_history(home / HISTORY_DIR, authority_key=authority_key, contiguous=False)
    for manifest, _ in reversed(history):
        try:
            key = manifest.member(member_id).signing_key
        except UnknownMember:
            continue  # not active in that version: what it signed then is not trusted
        if key not in keys:
            keys.append(key)
    return tuple(keys)
