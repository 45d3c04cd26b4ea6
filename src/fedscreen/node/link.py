"""What a node holds about the federation while it serves: the manifest, the coordinator's log.

**The manifest in force.** A revocation must reach a running node at once. The
coordinator pushes each newer manifest down the node's stream (and sends its own
in every Welcome), and an operator may install one in the home
(``fedscreen identity update-manifest``); the node checks the file's stat before
every query. Either way :class:`ManifestKeeper` verifies it against the authority
key the node pinned at its first install, accepts only a *newer* version, and
installs it atomically in ``HOME/manifest.json`` (as ``update-manifest`` does),
so the next query is checked against it.

**The coordinator's log.** The node keeps the newest coordinator checkpoint it
verified in ``HOME/coordinator.checkpoint`` and sends its size in each Hello; the
Welcome must carry the coordinator's newest checkpoint and a consistency proof
from that size (:class:`CoordinatorLog`). A coordinator whose log shrank or
forked is not worked with.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from fedscreen._util.files import replace_file
from fedscreen.crypto.envelope import ANSWER_V1, Envelope, parse_json, verify_envelope
from fedscreen.crypto.signing import SigningKey
from fedscreen.errors import ConfigError, MalformedNote, UnknownMember, VerificationError
from fedscreen.protocol.consistency import check_extends
from fedscreen.tlog.checkpoint import Checkpoint, member_origin, note_size, parse_and_verify_note
from fedscreen.tlog.log import TransparencyLog
from fedscreen.trust.history import held_keys
from fedscreen.trust.identity import MANIFEST_FILE, update_manifest
from fedscreen.trust.manifest import Manifest, parse_manifest

__all__ = [
    "COORDINATOR_CHECKPOINT_FILE",
    "MAX_PUSHED_MANIFEST_BYTES",
    "Adopted",
    "CoordinatorLog",
    "ManifestKeeper",
    "answer_proof",
    "check_membership",
]

_log = logging.getLogger(__name__)

#: the newest coordinator checkpoint the node verified (a C2SP signed note, verbatim)
COORDINATOR_CHECKPOINT_FILE: Final = "coordinator.checkpoint"
#: a pushed manifest larger than this (bytes) is refused unread
MAX_PUSHED_MANIFEST_BYTES: Final = 1 << 20
#: a saved coordinator checkpoint larger than this (bytes) is not a checkpoint
_MAX_NOTE_BYTES: Final = 64 << 10


def check_membership(manifest: Manifest, *, node_id: str, coordinator_id: str) -> None:
    """Raise UnknownMember unless ``node_id`` is an active node and ``coordinator_id``
    the active coordinator in ``manifest`` (a node neither answers nor pays ε otherwise).
    """
    try:
        manifest.member(node_id, role="node")
    except UnknownMember as exc:
        raise UnknownMember(f"this node is no longer in manifest version "
                            f"{manifest.version}: {exc}") from None  # fmt: skip
    try:
        manifest.member(coordinator_id, role="coordinator")
    except UnknownMember as exc:
        raise UnknownMember(f"the coordinator is no longer in manifest version "
                            f"{manifest.version}: {exc}") from None  # fmt: skip


@dataclass(frozen=True)
class Adopted:
    """A newer manifest the node now uses, and its file as installed (verbatim)."""

    manifest: Manifest
    text: bytes


class ManifestKeeper:
    """The manifest in force at a node; see the module docstring.

    Not thread-safe: the node's query worker owns it (on its one thread).
    """

    def __init__(self, home: Path, manifest: Manifest) -> None:
        self.home = home
        #: the manifest queries are checked against
        self.current = manifest
        self._path = home / MANIFEST_FILE
        self._stamp = self._file_stamp()
        #: the file of the manifest in force, verbatim (None: the file changed meanwhile)
        self._text: bytes | None = None
        #: a second, different manifest with the version in force, if one was seen
        self.conflict = ""
        try:
            text = self._path.read_bytes()
            if parse_manifest(text, authority_key=manifest.authority_key) == manifest:
                self._text = text
        except (OSError, ValueError, VerificationError):
            pass  # check_file() looks again before the first query

    def in_force(self) -> Adopted | None:
        """The manifest in force and its file, for the node's log (None if not at hand)."""
        return None if self._text is None else Adopted(self.current, self._text)

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def check_file(self) -> Adopted | None:
        """A newer manifest installed in the home since the last look (one stat call), if any.

        A file that does not verify, or is not newer, is logged and ignored: the
        manifest in force stays.
        """
        stamp = self._file_stamp()
        if stamp == self._stamp or stamp is None:
            return None
        self._stamp = stamp
        try:
            text = self._path.read_bytes()
            # the pinned authority key: the one the manifest in force verified under
            manifest = parse_manifest(text, authority_key=self.current.authority_key)
        except (OSError, ValueError, VerificationError) as exc:
            _log.error("the manifest file in %s does not verify; still using version %d: %s",
                       self.home, self.current.version, exc)  # fmt: skip
            return None
        try:
            self._same_version(manifest, "installed in the home")
        except VerificationError:
            return None  # logged; the manifest in force stays
        return self._newer(manifest, text, "installed in the home")

    def offer(self, text: bytes) -> Adopted | None:
        """Verify a manifest the coordinator sent; install and use it if it is newer.

        Raises VerificationError if it does not verify under the pinned authority key
        (or names another CA); an older or equal version is ignored (None).
        """
        if len(text) > MAX_PUSHED_MANIFEST_BYTES:
            raise VerificationError(f"a pushed manifest is over {MAX_PUSHED_MANIFEST_BYTES} bytes")
        manifest = parse_manifest(text, authority_key=self.current.authority_key)
        self._same_version(manifest, "sent by the coordinator")
        if manifest.version <= self.current.version:
            if manifest.version < self.current.version:
                _log.warning("the coordinator sent manifest version %d; version %d is in force",
                             manifest.version, self.current.version)  # fmt: skip
            return None
        # update_manifest checks it again (CA, not older than the file) and replaces the
        # file atomically: a crash leaves the old or the new manifest, never half of one
        installed = update_manifest(self.home, text)
        self._stamp = self._file_stamp()
        return self._newer(installed, text, "sent by the coordinator")

    def _same_version(self, manifest: Manifest, how: str) -> None:
        """Raise VerificationError (logged at error level, kept in ``conflict``) if
        ``manifest`` has the version in force but other content: the authority signed
        two manifests with one version, a fork the province must investigate."""
        if manifest.version != self.current.version or manifest == self.current:
            return
        self.conflict = (
            f"a manifest {how} is version {manifest.version} too, but differs from the "
            "one in force: the authority signed two manifests with one version"
        )
        _log.error("MANIFEST CONFLICT in %s: %s; still using the one in force",
                   self.home, self.conflict)  # fmt: skip
        raise VerificationError(self.conflict)

    def _newer(self, manifest: Manifest, text: bytes, how: str) -> Adopted | None:
        if manifest.version <= self.current.version:
            return None
        _log.info("manifest version %d %s is now in force (was %d)",
                  manifest.version, how, self.current.version)  # fmt: skip
        self.current, self._text = manifest, text
        return Adopted(manifest, text)


class CoordinatorLog:
    """The newest checkpoint of the coordinator's log this node verified; see the module doc."""

    def __init__(self, home: Path, coordinator_id: str) -> None:
        self.home = home
        self.coordinator_id = coordinator_id
        self.path = home / COORDINATOR_CHECKPOINT_FILE
        self.origin = member_origin("coordinator", coordinator_id)

    def held(self, key: bytes) -> Checkpoint | None:
        """The saved checkpoint, verified under the coordinator's ``key`` or a key it held
        in a manifest version the home installed (re-keyed in place); None: none yet."""
        found = self._held(key)
        return None if found is None else found[0]

    def _held(self, key: bytes) -> tuple[Checkpoint, bool] | None:
        """The saved checkpoint and whether it verified under ``key`` itself."""
        try:
            data = self.path.read_bytes()[: _MAX_NOTE_BYTES + 1]
        except FileNotFoundError:
            return None
        try:
            return parse_and_verify_note(data, verifiers={self.origin: key}), True
        except VerificationError as exc:
            error = exc
        # the coordinator re-keyed in place: its former checkpoint keeps protecting the node
        for former in held_keys(self.home, self.coordinator_id):
            try:
                return parse_and_verify_note(data, verifiers={self.origin: former}), False
            except VerificationError:
                continue
        raise ConfigError(
            f"{self.path} is not a checkpoint signed by the coordinator under its key or "
            f"any key it held in an installed manifest ({error}); delete it only if the "
            "coordinator's key changed and its manifest versions were not installed here"
        ) from None

    def known_size(self, key: bytes) -> int:
        """The saved checkpoint's size (0: none), for the Hello."""
        held = self.held(key)
        return 0 if held is None else held.size

    def check(self, note: str, proof: list[bytes], *, key: bytes) -> Checkpoint | None:
        """Verify the Welcome's checkpoint extends the saved one, then save it if newer.

        Raises VerificationError (the reason in one line) if it is not signed by the
        coordinator, or its log shrank, forked or did not prove consistency.
        """
        found = self._held(key)
        held, current = (None, True) if found is None else found
        if not note:
            if held is not None:
                raise VerificationError(
                    f"its log is empty now, but held {held.size} entries (shrank)"
                )
            return None
        try:
            new = parse_and_verify_note(note, verifiers={self.origin: key})
        except MalformedNote as exc:
            raise VerificationError(f"its checkpoint is malformed: {exc}") from None
        if new.origin != self.origin:
            raise VerificationError("its checkpoint is of another log")
        if held is not None:
            check_extends(held, new, proof)
        # one held under a former key is replaced under the current one at once
        if held is None or new.size > held.size or not current:
            replace_file(self.path, note.encode("utf-8"))
        return new


def answer_proof(
    conn: sqlite3.Connection, *, key: SigningKey, answer: bytes, known_size: int
) -> list[bytes]:
    """RFC 9162 consistency proof of the node's log from ``known_size`` (the coordinator's
    ``known_log_size``) to the checkpoint signed into ``answer``, the node's own envelope.

    Empty when ``known_size`` is 0, that size, or beyond it: the coordinator then sees
    equal or shrunk sizes and needs no proof to judge.
    """
    payload = verify_envelope(
        Envelope.from_json(answer),
        expected_payload_type=ANSWER_V1,
        trusted_keys={key.key_id: key.public_key},
    )
    note = parse_json(payload)["checkpoint"]
    size = note_size(note)
    if not 0 < known_size < size:
        return []
    return TransparencyLog(conn, name="node").consistency_proof(known_size, size)
