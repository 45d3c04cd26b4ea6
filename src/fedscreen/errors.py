"""The errors fedscreen raises: one hierarchy, so the command line can catch them all.

``str(err)`` is a message a user can act on, never student-level data;
``err.exit_code`` is what ``fedscreen`` exits with when the error ends a command.

::

    FedscreenError                  base; exit 1
    ├── ConfigError                 a home directory, config file or argument is wrong
    ├── IngestError                 an export file was rejected (carries every problem found)
    ├── InstrumentError             an instrument definition file is malformed
    ├── PolicyError                 a policy document is malformed or a merge would loosen it
    ├── QueryRefused                a query is not allowed (shape, policy or budget)
    ├── PlanRefused                 a report plan would overspend or be refused; exit 3
    ├── RpcFailed                   a gRPC call failed (``fedscreen.rpc.transport``: carries
    │                               the gRPC status, so it lives at the edge)
    ├── TreeRangeError              a Merkle root or proof asked beyond the tree (also ValueError)
    ├── AuditFailure                offline verification failed; exit 4 unless a subclass says
    │   ├── EntryInvalid            an entry's signature, format or content is wrong; exit 2
    │   ├── HistoryInconsistent     a log contradicts a signed checkpoint; exit 3
    │   └── BundleUntrusted         the bundle cannot be trusted at all; exit 4
    └── VerificationError           a signature, proof or log failed to verify
        ├── MalformedEnvelope       not a well-formed DSSE envelope
        ├── MalformedNote           not a well-formed C2SP signed note or checkpoint
        ├── UnknownKey              no signature in a note is from a trusted key
        ├── BadSignature            a signature from a trusted key does not verify
        ├── UnknownMember           an id, key or role the manifest does not vouch for
        ├── RoleNotPermitted        a member called a method its role may not use
        ├── LogIntegrityError       a stored log lacks rows it must have (altered database)
        └── BundleError             an audit bundle file is unreadable or malformed

``tests/unit/test_errors.py`` checks that this tree lists every subclass there is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final

#: exit codes of ``audit verify`` and ``report verify`` (and ``report plan|run``: 3)
VALID: Final = 0
ENTRY_INVALID: Final = 2
HISTORY_INCONSISTENT: Final = 3
UNAFFORDABLE: Final = 3
UNTRUSTED: Final = 4


class FedscreenError(Exception):
    """Base class of every error fedscreen raises on purpose."""

    #: what ``fedscreen`` exits with when this error ends a command
    exit_code: ClassVar[int] = 1


class ConfigError(FedscreenError):
    """A home directory, config file or command-line argument is unusable."""


class InstrumentError(FedscreenError):
    """An instrument definition file is malformed."""


class PolicyError(FedscreenError):
    """A policy document is malformed, or combining policies would loosen one."""


class QueryRefused(FedscreenError):
    """A query was refused; the message says which part and why."""


class PlanRefused(FedscreenError):
    """The plan would overspend a node's budget or be refused by a node."""

    exit_code = UNAFFORDABLE


class TreeRangeError(FedscreenError, ValueError):
    """A root or proof was asked for at an index or size the tree cannot serve."""


class VerificationError(FedscreenError):
    """A signature, Merkle proof, checkpoint or log failed to verify."""


class MalformedEnvelope(VerificationError):
    """An envelope's JSON is not a well-formed DSSE envelope."""


class MalformedNote(VerificationError):
    """The note or its checkpoint body does not follow the C2SP format."""


class UnknownKey(VerificationError):
    """No signature in the note is from a trusted key for its origin."""


class BadSignature(VerificationError):
    """A signature from a trusted key does not verify."""


class UnknownMember(VerificationError):
    """A member id, key or role that the manifest does not vouch for."""


class RoleNotPermitted(VerificationError):
    """An authenticated member called a method its role may not use."""


class LogIntegrityError(VerificationError):
    """The stored log is missing rows it must have: the database was altered."""


class BundleError(VerificationError):
    """The bundle file itself is unreadable or malformed."""


class AuditFailure(FedscreenError):
    """Verification failed; ``exit_code`` says how, ``index`` names the first bad entry."""

    exit_code = UNTRUSTED

    def __init__(
        self,
        message: str,
        *,
        origin: str = "",
        index: int | None = None,
        evidence: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.origin = origin
        self.index = index
        self.evidence = evidence


class EntryInvalid(AuditFailure):
    """An entry's signature, format or content is wrong (exit 2)."""

    exit_code = ENTRY_INVALID


class HistoryInconsistent(AuditFailure):
    """The log's history contradicts a signed checkpoint (exit 3)."""

    exit_code = HISTORY_INCONSISTENT


class BundleUntrusted(AuditFailure):
    """The bundle cannot be trusted at all: manifest, keys or notes (exit 4)."""

    exit_code = UNTRUSTED


@dataclass(frozen=True)
class Problem:
    """One problem in one cell of an input file."""

    file: str
    line: int
    column: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.column}: {self.reason}"


class IngestError(FedscreenError):
    """An export file was rejected; nothing of it was written.

    ``problems`` holds the first problems found (at most ``shown``) and
    ``total`` counts all of them.
    """

    def __init__(self, path: str, problems: list[Problem], total: int) -> None:
        self.path = path
        self.problems = problems
        self.total = total
        lines = [str(p) for p in problems]
        if total > len(problems):
            lines.append(f"... and {total - len(problems)} more problems")
        lines.append(f"{path}: rejected ({total} problems); nothing of this file was loaded")
        super().__init__("\n".join(lines))
