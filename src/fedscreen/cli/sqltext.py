"""The SQL of ``fedscreen query`` and ``fedscreen node query``: an argument, a file or stdin.

Exactly one of the ``SQL`` argument and ``--file F`` (``-``: standard input). A
file is read as UTF-8 (a leading BOM is dropped), and never further than the
query length limit: at most ``MAX_SQL_CHARS`` + 1 characters are decoded, so a
huge file or an endless pipe costs a few kilobytes of reading, and a text over
the limit is then refused by the parser like any other (at a node: a recorded
refusal).
"""

from __future__ import annotations

import argparse
import codecs
import sys
from pathlib import Path
from typing import BinaryIO, Final

from fedscreen.errors import ConfigError
from fedscreen.query.sqlparse import MAX_SQL_CHARS

#: bytes read at a time from a query file or stdin
CHUNK_BYTES: Final = 4096


def add_sql_arguments(parser: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    """Add the ``SQL`` argument and ``--file``, exactly one of them required; returns their
    group (a command may add another source to it)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("sql", nargs="?", metavar="SQL", help="the query")
    source.add_argument(
        "--file",
        metavar="F",
        help=f"read the query from file F ('-': standard input; UTF-8, at most "
        f"{MAX_SQL_CHARS} characters)",
    )
    return source


def read_sql(args: argparse.Namespace) -> str:
    """The query text from ``args.sql`` or ``args.file``; ConfigError if unreadable."""
    if args.file is None:
        return str(args.sql)
    if args.file == "-":
        if sys.stdin is None:  # started with standard input closed
            raise ConfigError("--file -: standard input is closed")
        return read_bounded(sys.stdin.buffer, name="standard input")
    path = Path(args.file)
    try:
        with path.open("rb") as stream:
            return read_bounded(stream, name=str(path))
    except OSError as exc:
        raise ConfigError(f"cannot read the query file {path}: {exc.strerror or exc}") from None


def read_bounded(stream: BinaryIO, *, name: str, limit: int = MAX_SQL_CHARS) -> str:
    """UTF-8 text from ``stream``, stopping once more than ``limit`` characters are read.

    A text longer than ``limit`` comes back cut at ``limit`` + 1 characters (the
    parser refuses it as too long); invalid UTF-8 raises ConfigError.
    """
    decoder = codecs.getincrementaldecoder("utf-8-sig")("strict")
    parts: list[str] = []
    count = 0
    offset = 0
    while count <= limit:
        try:
            chunk = stream.read(CHUNK_BYTES)
        except OSError as exc:
            raise ConfigError(f"cannot read the query from {name}: {exc}") from None
        try:
            text = decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"the query in {name} is not valid UTF-8 (byte {offset + exc.start})"
            ) from None
        parts.append(text)
        count += len(text)
        offset += len(chunk)
        if not chunk:
            break
    return "".join(parts)[: limit + 1]
