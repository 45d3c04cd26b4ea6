"""The errors fedscreen raises, one hierarchy so the CLI can catch them all.

::

    FedscreenError                  base; ``str(err)`` is a message a user can act on
    ├── ConfigError                 a home directory, config file or argument is wrong
    ├── IngestError                 an export file was rejected (carries every problem found)
    ├── InstrumentError             an instrument definition file is malformed
    ├── PolicyError                 a policy document is malformed or a merge would loosen it
    ├── QueryRefused                a query is not allowed (shape, policy or budget)
    └── VerificationError           a signature, proof or log failed to verify
"""

from __future__ import annotations

from dataclasses import dataclass


class FedscreenError(Exception):
    """Base class of every error fedscreen raises on purpose."""


class ConfigError(FedscreenError):
    """A home directory, config file or command-line argument is unusable."""


class InstrumentError(FedscreenError):
    """An instrument definition file is malformed."""


class PolicyError(FedscreenError):
    """A policy document is malformed, or combining policies would loosen one."""


class QueryRefused(FedscreenError):
    """A query was refused; the message says which part and why."""


class VerificationError(FedscreenError):
    """A signature, Merkle proof, checkpoint or log failed to verify."""


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
