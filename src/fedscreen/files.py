"""Writing files that must never be half-written, replaced by accident, or too readable."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from fedscreen.errors import ConfigError


def write_new_file(path: Path, data: bytes, *, mode: int, what: str = "file") -> None:
    """Create ``path`` with ``mode`` and write ``data`` durably; never replaces anything.

    O_EXCL makes creation fail if anything (even a dangling symlink) is at the path,
    and the file never exists with wider permissions than ``mode``; a failed write
    leaves no partial file behind.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise ConfigError(f"{path}: already exists; refusing to overwrite a {what}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create {what}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a new directory entry durable; best effort where unsupported."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
