"""Does a log's newer signed checkpoint extend the one last verified? (RFC 9162 §2.1.4)

The coordinator asks it of each node's answers, a node of the coordinator's
Welcome: a log that shrank, forked or cannot prove that its older tree is a
prefix of its newer one has been rolled back or rewritten. Pure: checkpoints and
proof hashes in, nothing out, :class:`~fedscreen.errors.VerificationError` with
a one-line reason (no student data: sizes only) when the log does not extend.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedscreen.errors import VerificationError
from fedscreen.tlog.checkpoint import Checkpoint
from fedscreen.tlog.merkle import verify_consistency

__all__ = ["check_extends"]


def check_extends(held: Checkpoint, new: Checkpoint, proof: Sequence[bytes]) -> None:
    """Raise VerificationError unless ``new`` is ``held``'s log, grown or the same.

    ``proof`` is the RFC 9162 consistency proof from ``held.size`` to ``new.size``
    (empty when the sizes are equal). Both checkpoints must already be verified.
    """
    if held.origin != new.origin:
        raise VerificationError(f"the checkpoints are of two logs ({held.origin}, {new.origin})")
    if new.size < held.size:
        raise VerificationError(f"its log shrank from {held.size} to {new.size} entries")
    if new.size == held.size:
        if new.root != held.root:
            raise VerificationError(f"its log forked: two different trees of {new.size} entries")
        return
    if held.size == 0:
        return  # every log extends the empty one (RFC 9162 §2.1.4 needs 0 < size1)
    try:
        verify_consistency(
            size1=held.size, size2=new.size, root1=held.root, root2=new.root, proof=proof
        )
    except VerificationError:
        raise VerificationError(
            f"its log of {new.size} entries does not prove that it extends its checkpoint "
            f"of {held.size} entries (forked or rewritten)"
        ) from None
