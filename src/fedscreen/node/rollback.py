"""A node that refuses to run on a rolled-back database, and ``fedscreen node recover``.

The node keeps its last signed checkpoint outside its database, in
``HOME/checkpoint.note`` (the C2SP signed note exactly as the log signed it, so
``fedscreen audit verify --trusted-checkpoint HOME/checkpoint.note`` reads it
too). :class:`CheckpointGuard` moves it forward *after* each commit that adds
to the log — a crash between the commit and the write leaves the file behind
the database, which is harmless; a file *ahead* of the database means the
database went back. ``node serve``, ``node query`` and ``node ingest`` open the
guard first, and it refuses a database whose log is smaller than the saved
tree, has another root at its size, or cannot prove consistency with it
(RFC 9162 §2.1.4), until the operator runs ``fedscreen node recover``.

**The privacy ledger.** A restored database has also forgotten the ε spent after
its backup, and the checkpoint tells only sizes. So beside the checkpoint the
node mirrors what its ledger had spent, per year and analyst, at the checkpoint's
log size (:mod:`fedscreen.node.spent`), written just before the checkpoint every
time it moves. ``recover`` charges the difference between that mirror and the
restored ledger again, as *restored* charges (``ledger_restored``): budgets are
never given back, which is what a privacy officer expects; analysts may lose ε
the restored answers no longer show, and that errs on the safe side. The
rollback entry in the log states both checkpoints, the reason and the ε
restored, so an auditor can add the restored ε to the charges it sums. A mirror
that is missing, or of a log smaller than the saved checkpoint (put back with
the database), cannot say what was forgotten: ``recover`` refuses unless the
operator passes ``--accept-lost-budget``, which the entry states. A missing
checkpoint file is taken as a fresh start and re-baselined from the database,
unless the mirror shows a longer log or more ε spent than the ledger.

**Limits.** The files sit in the node's home: restoring the whole home (files
included), or deleting both files, is not caught here; the coordinator, which
keeps each node's last checkpoint too, quarantines the node at its next answer.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from fedscreen._util.files import replace_file
from fedscreen._util.sqlite import transaction
from fedscreen.errors import ConfigError, LogIntegrityError, TreeRangeError, VerificationError
from fedscreen.node import ledger, store
from fedscreen.node.home import NodeConfig
from fedscreen.node.spent import SPENT_FILE, Mirror, Spending, forgotten, read_mirror, write_mirror
from fedscreen.protocol.budget import from_micro
from fedscreen.tlog import memberlog, merkle
from fedscreen.tlog.checkpoint import Checkpoint, member_origin, parse_and_verify_note
from fedscreen.tlog.log import TransparencyLog
from fedscreen.trust.history import held_keys

__all__ = [
    "CHECKPOINT_FILE",
    "SPENT_FILE",
    "CheckpointGuard",
    "Recovered",
    "behind",
    "check_not_behind",
    "diagnose",
    "guarded",
    "recover",
    "sync_checkpoint",
]

#: in the node's home: the last checkpoint the node signed and committed
CHECKPOINT_FILE: Final = "checkpoint.note"
#: longest reason an operator may give for a recovery (characters); it is signed into the log
MAX_REASON_CHARS: Final = 500
_LOCK_FILE: Final = ".checkpoint.lock"
_ROLE: Final = "node"


def behind(
    saved: Checkpoint, *, size: int, root: bytes | None, proof: Sequence[bytes] | None
) -> str | None:
    """Why a log of ``size`` (``root``) is behind ``saved``, or None if it is not.

    ``proof`` is the log's RFC 9162 consistency proof from ``saved.size`` to
    ``size`` (None: the log could not produce one). Pure: no I/O.
    """
    if size < saved.size:
        return f"its log has {_entries(size)}, the saved checkpoint {saved.size}"
    if saved.size == 0:
        return None
    if proof is None or root is None:
        return (
            f"its log ({_entries(size)}) cannot prove it extends the saved checkpoint "
            f"({_entries(saved.size)})"
        )
    try:
        merkle.verify_consistency(
            size1=saved.size, size2=size, root1=saved.root, root2=root, proof=proof
        )
    except VerificationError:
        if size == saved.size:
            return f"its log has {_entries(size)}, as the saved checkpoint, but another root"
        return (
            f"its log ({_entries(size)}) does not extend the saved checkpoint "
            f"({_entries(saved.size)}): another history"
        )
    return None


def _entries(n: int) -> str:
    return f"{n} entry" if n == 1 else f"{n} entries"


def check_not_behind(
    saved: Checkpoint, *, size: int, root: bytes | None, proof: Sequence[bytes] | None
) -> None:
    """Raise ConfigError (telling the operator to recover) if the log is behind ``saved``."""
    reason = behind(saved, size=size, root=root, proof=proof)
    if reason is not None:
        raise ConfigError(
            f"the node's database is behind its saved checkpoint ({reason}): it was restored "
            "or rolled back, and ε spent since may be forgotten. The node refuses to run; "
            "the operator records the rollback with: "
            "fedscreen node recover --home HOME --reason TEXT"
        )


@dataclass(frozen=True)
class _State:
    """The database's log and ledger, read in one snapshot."""

    size: int
    root: bytes | None
    #: the latest checkpoint the log signed, and its note (None: the log is empty)
    head: Checkpoint | None
    note: str | None
    spent: Spending


def _state(
    conn: sqlite3.Connection, config: NodeConfig, saved: Checkpoint | None
) -> tuple[_State, list[bytes] | None]:
    """Read the log and ledger in one read transaction, with a proof from ``saved``."""
    conn.execute(memberlog.CHECKPOINT_SCHEMA)
    ledger.ensure_recovery_schema(conn)
    with transaction(conn, immediate=False):
        log = TransparencyLog(conn, name=_ROLE)
        size = log.size()
        proof: list[bytes] | None = None
        root: bytes | None = None
        try:
            root = log.root(size) if size else None
            if saved is not None and 0 < saved.size <= size:
                proof = log.consistency_proof(saved.size, size)
        except (LogIntegrityError, TreeRangeError):
            proof = None  # an altered database: behind() says it cannot prove anything
        row = conn.execute(
            "SELECT note FROM log_checkpoint WHERE log = ? ORDER BY size DESC LIMIT 1", (_ROLE,)
        ).fetchone()
        spent = {(y, a): m for y, a, m in ledger.budget_table(conn)}
    note = None if row is None else str(row[0])
    head = None if note is None else _verify_note(config, note, what="the database's checkpoint")
    return _State(size, root, head, note, spent), proof


def _verify_note(config: NodeConfig, note: str, *, what: str, file: bool = False) -> Checkpoint:
    """``note`` verified under the node's key, or a key it held before a re-key in place."""
    origin = member_origin(_ROLE, config.node_id)
    current = config.signing_key().public_key
    try:
        checkpoint = parse_and_verify_note(note, verifiers={origin: current})
    except VerificationError as exc:
        error = exc
        # signed before `pki issue --replace`: the node's own history, still its to trust
        for former in held_keys(config.home, config.node_id):
            if former == current:
                continue
            try:
                checkpoint = parse_and_verify_note(note, verifiers={origin: former})
                break
            except VerificationError:
                continue
        else:
            hint = (
                "; put back the node's own file, or move it aside to start the check afresh "
                "from the database"
                if file
                else ""
            )
            raise VerificationError(
                f"{what} does not verify with node {config.node_id}'s key, nor any key it "
                f"held in an installed manifest ({error}): it was altered or is not this "
                f"node's{hint}"
            ) from None
    if checkpoint.origin != origin:
        raise VerificationError(f"{what} is for {checkpoint.origin}, not {origin}")
    return checkpoint


def _read_saved(config: NodeConfig) -> tuple[Checkpoint, str] | None:
    """The saved checkpoint and its note, verified; None if there is none."""
    path = config.home / CHECKPOINT_FILE
    try:
        note = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc})") from None
    return _verify_note(config, note, what=str(path), file=True), note


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """One writer of the saved files at a time (``node serve`` and ``node query`` may both run).

    Each writer reads the database inside the lock, so the files only move forward.
    """
    fd = os.open(home / _LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _check_mirror_not_ahead(config: NodeConfig, mirror: Mirror, state: _State) -> None:
    """Raise ConfigError if the mirror is ahead of a database whose checkpoint file is gone."""
    lost = forgotten(mirror.spent, state.spent)
    if lost or mirror.log_size > state.size:
        raise ConfigError(
            f"{config.home / CHECKPOINT_FILE} is missing, but {SPENT_FILE} shows a log of "
            f"{mirror.log_size} entries (the database has {state.size}) and "
            f"{from_micro(sum(lost.values())):g} ε more spent than the ledger: the database "
            "was restored and its checkpoint removed. Put back checkpoint.note, then run "
            "fedscreen node recover --home HOME --reason TEXT"
        )


class CheckpointGuard:
    """The node's saved checkpoint: checked against its database, moved forward after commits."""

    def __init__(self, config: NodeConfig, saved: Checkpoint | None):
        self._config = config
        self._saved = saved

    @classmethod
    def open(cls, config: NodeConfig, conn: sqlite3.Connection) -> CheckpointGuard:
        """Check the database against the saved checkpoint; raise if it is behind.

        A missing file (a fresh home) is fine: the database's checkpoint becomes the
        baseline — unless the spending mirror shows more spent than the ledger or a
        longer log (the database went back and the checkpoint was removed: ε would be
        given back). A file that does not verify with the node's key is refused.
        """
        found = _read_saved(config)
        mirror = read_mirror(config)
        saved = None if found is None else found[0]
        state, proof = _state(conn, config, saved)
        if saved is not None:
            check_not_behind(saved, size=state.size, root=state.root, proof=proof)
        elif mirror is not None:
            _check_mirror_not_ahead(config, mirror, state)
        guard = cls(config, saved)
        guard.advance(conn)
        return guard

    @property
    def saved(self) -> Checkpoint | None:
        """The checkpoint last saved (or found) by this guard."""
        return self._saved

    def advance(self, conn: sqlite3.Connection) -> None:
        """Save the database's newest checkpoint (and spending) if it is ahead of the file.

        Call after a commit, never before. Raises ConfigError if the database went
        behind the saved checkpoint while the node ran.
        """
        config = self._config
        if conn.in_transaction:
            return  # the caller's work did not commit (it failed): nothing new to save
        with _locked(config.home):
            state, proof = _state(conn, config, self._saved)
            if self._saved is not None:
                check_not_behind(self._saved, size=state.size, root=state.root, proof=proof)
            head = state.head
            if head is None or state.note is None:
                return
            if self._saved is not None and head.size <= self._saved.size:
                return
            # the spending first, at the same size: a crash between the two writes leaves
            # the checkpoint behind, never the spending behind the checkpoint
            write_mirror(config, state.spent, head.size)
            replace_file(config.home / CHECKPOINT_FILE, state.note.encode("utf-8"), mode=0o600)
            self._saved = head


@dataclass(frozen=True)
class Recovered:
    """What ``recover`` recorded."""

    from_size: int
    to_size: int
    #: index of the rollback entry in the node's log
    log_index: int
    #: µε charged again per (year, analyst): spent after the backup, forgotten by it
    restored: Spending
    #: False: the spending mirror was missing or behind (accepted): ε may be lost
    mirrored: bool


def _check_reason(reason: str) -> str:
    reason = reason.strip()
    if not reason:
        raise ConfigError("--reason: say why the database was restored (it is logged)")
    if len(reason) > MAX_REASON_CHARS:
        raise ConfigError(f"--reason: at most {MAX_REASON_CHARS} characters, not {len(reason)}")
    if not reason.isprintable():
        raise ConfigError("--reason: printable text on one line, please")
    return reason


def recover(
    config: NodeConfig, *, reason: str, at: str, accept_lost_budget: bool = False
) -> Recovered:
    """Record that the database was rolled back, carry forgotten ε forward, re-baseline.

    Refuses (ConfigError) when the database is not behind the saved checkpoint:
    there is nothing to recover from; and when the spending mirror is missing or
    behind the saved checkpoint (put back with the database, say): it cannot tell
    what ε the backup forgot, and ε is never given back silently. Only
    ``accept_lost_budget`` (``--accept-lost-budget``, stated in the rollback entry)
    goes on then, charging again what the mirror at hand shows. One transaction
    logs the rollback entry and the restored charges; then the saved files move to
    the database's new head.
    """
    reason = _check_reason(reason)
    found = _read_saved(config)
    if found is None:
        raise ConfigError(
            f"{config.home / CHECKPOINT_FILE} does not exist: there is no saved checkpoint, "
            "so nothing to recover from (node serve and node query run as they are)"
        )
    saved, saved_note = found
    mirror = read_mirror(config)
    lost = None
    if mirror is None:
        lost = f"{SPENT_FILE} is missing"
    elif mirror.log_size < saved.size:
        lost = (
            f"{SPENT_FILE} is of a log of {mirror.log_size} entries, behind the saved {saved.size}"
        )
    conn = store.connect(config.database)
    try:
        with _locked(config.home):
            state, proof = _state(conn, config, saved)
            why = behind(saved, size=state.size, root=state.root, proof=proof)
            if why is None:
                raise ConfigError(
                    "the database is not behind its saved checkpoint: nothing to recover"
                )
            if lost is not None and not accept_lost_budget:
                raise ConfigError(
                    f"{lost}: it cannot tell what ε was spent after the backup, so recovering "
                    f"could give ε back. Put back the node's own {SPENT_FILE} (never an older "
                    "copy), or accept that loss with --accept-lost-budget (it is logged)"
                )
            key = config.signing_key()
            with transaction(conn):
                # read again under the write lock: nothing may be charged in between
                now_spent = {(y, a): m for y, a, m in ledger.budget_table(conn)}
                restored = forgotten({} if mirror is None else mirror.spent, now_spent)
                appended = memberlog.append(
                    conn,
                    member_id=config.node_id,
                    key=key,
                    payload=_rollback_entry(
                        at=at,
                        saved_note=saved_note,
                        db_note=state.note,
                        reason=reason,
                        why=why,
                        restored=restored,
                        lost=lost,
                    ),
                )
                ledger.record_recovery(
                    conn,
                    at=at,
                    from_size=saved.size,
                    to_size=state.size,
                    log_index=appended.index,
                    reason=reason,
                    restored=restored,
                )
            # the new baseline: the rollback entry's checkpoint, and the ledger with it
            after, _ = _state(conn, config, None)
            write_mirror(config, after.spent, appended.size)
            replace_file(config.home / CHECKPOINT_FILE, appended.note.encode("utf-8"), mode=0o600)
    finally:
        conn.close()
    return Recovered(saved.size, state.size, appended.index, restored, lost is None)


def _rollback_entry(
    *,
    at: str,
    saved_note: str,
    db_note: str | None,
    reason: str,
    why: str,
    restored: Spending,
    lost: str | None,
) -> dict[str, Any]:
    nested: dict[str, dict[str, float]] = {}
    for (year, analyst), micro in sorted(restored.items()):
        nested.setdefault(year, {})[analyst] = from_micro(micro)
    if lost is None:
        budget = "ε spent after the backup is charged again as 'restored' (never given back)"
    else:  # the operator said so: --accept-lost-budget
        budget = f"{lost}: ε spent after the backup may no longer be counted (accepted)"
    return {
        "kind": "rollback",
        "at": at,
        "from_checkpoint": saved_note,
        "to_checkpoint": db_note,
        "reason": reason,
        "detected": why,
        # nothing is spent by the entry itself; "restored" is ε charged again
        "epsilon": 0,
        "restored": nested,
        "budget": budget,
        "accepted_lost_budget": lost is not None,
    }


def sync_checkpoint(config: NodeConfig) -> None:
    """Check the database against the saved checkpoint (raise if it is behind), save a newer one.

    See :meth:`CheckpointGuard.open`.
    """
    conn = store.connect(config.database)
    try:
        CheckpointGuard.open(config, conn)
    finally:
        conn.close()


@contextlib.contextmanager
def guarded(config: NodeConfig) -> Iterator[sqlite3.Connection]:
    """A connection to the node's database, checked first and its checkpoint saved after.

    The checkpoint is saved even when the block raises: a refusal is logged too.
    """
    conn = store.connect(config.database)
    try:
        guard = CheckpointGuard.open(config, conn)
        try:
            yield conn
        finally:
            guard.advance(conn)
    finally:
        conn.close()


def diagnose(config: NodeConfig) -> str | None:
    """Why the node refuses to run on its database (behind, or a bad saved file); None if not.

    Reads only: for ``fedscreen node status``.
    """
    try:
        found = _read_saved(config)
        if found is None:
            return None
        conn = store.connect(config.database)
        try:
            state, proof = _state(conn, config, found[0])
        finally:
            conn.close()
        check_not_behind(found[0], size=state.size, root=state.root, proof=proof)
    except (ConfigError, VerificationError) as exc:
        return str(exc)
    return None
