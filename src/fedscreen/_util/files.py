"""Writing files that must never be half-written, replaced by accident, or too readable."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

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


def replace_file(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Atomically replace (or create) ``path`` with ``data``: write a temporary file, rename."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    write_new_file(tmp, data, mode=mode)
    try:
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"{path}: cannot write: {exc.strerror}") from None
    fsync_dir(path.parent)


def write_ready_file(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` as JSON to ``path`` atomically: a reader sees all of it or nothing."""
    replace_file(path, (json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8"))
