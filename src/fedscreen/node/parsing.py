"""Parsing a screening export into row chunks — in this process or in a worker process.

Validation is CPU-bound Python and SQLite's inserts are too, so for a large file
the node parses in a child process while the parent inserts: on two cores the
two halves overlap. The child never touches the database; it only reads the
file and sends validated row chunks (and, at the end, the problems) back. If the
parent dies, the child notices and exits; if the child dies, the parent's
transaction is rolled back.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import queue
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from fedscreen.errors import Problem
from fedscreen.node.reader import ReadError, open_table
from fedscreen.node.validate import ScreeningParser

#: rows per chunk: large enough to amortise a pickle or an executemany, small enough to stream
CHUNK_ROWS: Final = 10_000
#: chunks in flight between the worker and the writer: bounds memory
QUEUE_CHUNKS: Final = 6
#: seconds between checks that the other process is still alive
LIVENESS_S: Final = 1.0

Row = tuple[Any, ...]


@dataclass
class Collected:
    """Per-file facts gathered while parsing: counts, years, schools, problems."""

    name: str
    count: int = 0
    problems: list[Problem] = field(default_factory=list)
    years: dict[str, int] = field(default_factory=dict)
    schools: dict[str, None] = field(default_factory=dict)
    #: problems found in all (``problems`` may hold only the first of them)
    total_problems: int = 0


def rows_checked(
    rows: Iterator[tuple[int, list[str]]],
    parse: Callable[[int, list[str], list[Problem]], Any],
    problems: list[Problem],
) -> Iterator[tuple[int, Any]]:
    """Parsed rows; blank lines are skipped, unreadable input becomes a problem."""
    try:
        for line, cells in rows:
            if not any(c.strip() for c in cells):
                continue
            parsed = parse(line, cells, problems)
            if parsed is not None:
                yield line, parsed
    except ReadError as exc:
        problems.append(exc.problem)


def screening_chunks(
    rows: Iterator[tuple[int, list[str]]], parser: ScreeningParser, batch_id: int, out: Collected
) -> Iterator[list[Row]]:
    """Validated row chunks; after the first problem nothing more is yielded (but all
    rows are still checked, so that every problem is reported)."""
    columns = parser.columns
    key_at, year_at = columns.index("student_key"), columns.index("academic_year")
    school_at = columns.index("school_id")
    seen: dict[bytes, int] = {}
    chunk: list[Row] = []
    problems = out.problems
    parse = functools.partial(parser.parse, batch_id=batch_id)
    for line, row in rows_checked(rows, parse, problems):
        first = seen.setdefault(row[key_at], line)
        if first != line:
            problems.append(Problem(out.name, line, "student_no", f"same student as line {first}"))
            continue
        out.years.setdefault(row[year_at], line)
        out.schools.setdefault(row[school_at])
        out.count += 1
        if problems:
            continue
        chunk.append(row)
        if len(chunk) >= CHUNK_ROWS:
            yield chunk
            chunk = []
    if chunk and not problems:
        yield chunk


@dataclass(frozen=True)
class WorkerArgs:
    """What the worker needs to parse a file on its own (all picklable)."""

    path: Path
    encoding: str | None
    name: str
    county_code: str
    secret: bytes
    batch_id: int
    max_problems: int


def _worker(args: WorkerArgs, out: multiprocessing.Queue[Any], parent: int) -> None:
    def send(message: tuple[Any, ...]) -> None:
        while True:
            try:
                out.put(message, timeout=LIVENESS_S)
                return
            except queue.Full:
                if os.getppid() != parent:  # orphaned: the parent was killed
                    os._exit(1)

    try:
        table = open_table(args.path, encoding=args.encoding)
        try:
            parser = ScreeningParser(
                path=args.name,
                header=table.header,
                county_code=args.county_code,
                secret=args.secret,
            )
            collected = Collected(args.name)
            for chunk in screening_chunks(table.rows, parser, args.batch_id, collected):
                send(("rows", chunk, collected.count, table.fraction()))
        finally:
            table.close()
        shown = collected.problems[: args.max_problems]
        send(
            (
                "done",
                collected.count,
                collected.years,
                list(collected.schools),
                shown,
                len(collected.problems),
            )
        )
    except BaseException as exc:  # reported to the parent, which rolls back
        send(("error", f"{type(exc).__name__}: {exc}"))


def parse_in_worker(args: WorkerArgs) -> Iterator[tuple[list[Row], int, float] | Collected]:
    """Run the parser in a child process; yields (chunk, rows so far, fraction) and, last,
    the ``Collected`` summary (``problems`` holds only the first ``max_problems``)."""
    context = multiprocessing.get_context("spawn")
    channel: multiprocessing.Queue[Any] = context.Queue(maxsize=QUEUE_CHUNKS)
    process = context.Process(target=_worker, args=(args, channel, os.getpid()), daemon=True)
    process.start()
    try:
        while True:
            try:
                message = channel.get(timeout=LIVENESS_S)
            except queue.Empty:
                if not process.is_alive():
                    raise RuntimeError("the parsing worker died") from None
                continue
            if message[0] == "rows":
                yield message[1], message[2], message[3]
            elif message[0] == "done":
                _, count, years, schools, problems, total = message
                yield Collected(args.name, count, problems, years, dict.fromkeys(schools), total)
                return
            else:
                raise RuntimeError(f"the parsing worker failed: {message[1]}")
    finally:
        if process.is_alive():
            process.terminate()
        process.join(timeout=10)
        channel.close()
