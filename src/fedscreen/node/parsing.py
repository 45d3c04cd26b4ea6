"""Parsing a screening export into row blocks — in this process or in worker processes.

Validation is CPU-bound Python and SQLite's inserts are too, so for a large file
the node parses in child processes while the parent inserts. The file is cut
into blocks of ``BLOCK_ROWS`` input rows; with ``n`` workers, worker ``k`` reads
every row (reading is cheap) but parses only blocks ``k, k + n, …``. The parent
takes the blocks back in file order and does the per-file bookkeeping —
duplicate students, years, schools — so the outcome is the same as parsing in
one process. A child never touches the database. If the parent dies, the
children notice and exit; if a child dies, the parent's transaction is rolled back.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from fedscreen.errors import Problem
from fedscreen.node.reader import ReadError, open_table
from fedscreen.node.validate import ScreeningParser

#: input rows per block: large enough to amortise a pickle or an executemany
BLOCK_ROWS: Final = 10_000
#: problems a block carries (the report shows the first ones of the file anyway)
BLOCK_PROBLEMS: Final = 50
#: worker processes for a large file (the parent inserting is the third process)
WORKERS: Final = 2
#: blocks in flight per worker: bounds memory while parsing runs ahead of inserting
QUEUE_BLOCKS: Final = 4
#: seconds between checks that the other process is still alive
LIVENESS_S: Final = 1.0

Row = tuple[Any, ...]


@dataclass
class Block:
    """Parsed rows of one block, with their line numbers and the block's problems."""

    index: int
    lines: list[int]
    rows: list[Row]
    problems: list[Problem]
    #: problems beyond the first ``BLOCK_PROBLEMS`` kept: counted, not carried
    extra_problems: int = 0


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


def parse_blocks(
    rows: Iterator[tuple[int, list[str]]],
    parser: ScreeningParser,
    batch_id: int,
    *,
    stripe: int = 0,
    stripes: int = 1,
    block_rows: int = BLOCK_ROWS,
) -> Iterator[Block]:
    """Blocks ``stripe, stripe + stripes, …`` of the file, parsed; the others are only read.

    Every block of the stripe is yielded, empty or not, so that blocks from several
    workers can be merged back in file order by taking them in turn.
    """
    block = Block(0, [], [], [])
    parse = parser.parse
    try:
        for position, (line, cells) in enumerate(rows):
            index = position // block_rows
            if index != block.index:
                if block.index % stripes == stripe:
                    yield _trimmed(block)
                block = Block(index, [], [], [])
            if index % stripes != stripe or not any(c.strip() for c in cells):
                continue
            row = parse(line, cells, block.problems, batch_id)
            if row is not None:
                block.lines.append(line)
                block.rows.append(row)
    except ReadError as exc:
        # every worker reads the whole file and meets the error; the block's owner reports it
        if block.index % stripes == stripe:
            block.problems.append(exc.problem)
    if block.index % stripes == stripe:
        yield _trimmed(block)


def _trimmed(block: Block) -> Block:
    if len(block.problems) > BLOCK_PROBLEMS:
        block.extra_problems = len(block.problems) - BLOCK_PROBLEMS
        del block.problems[BLOCK_PROBLEMS:]
    return block


def collect(
    blocks: Iterator[Block], name: str, key_at: int, year_at: int, school_at: int, out: Collected
) -> Iterator[list[Row]]:
    """Per-file bookkeeping over blocks in file order; yields the rows to insert (nothing
    after the first problem, though every row is still checked and counted)."""
    seen: dict[bytes, int] = {}
    problems = out.problems
    for block in blocks:
        problems.extend(block.problems)
        out.total_problems += len(block.problems) + block.extra_problems
        keep: list[Row] = []
        for line, row in zip(block.lines, block.rows, strict=True):
            first = seen.setdefault(row[key_at], line)
            if first != line:
                problems.append(Problem(name, line, "student_no", f"same student as line {first}"))
                out.total_problems += 1
                continue
            out.years.setdefault(row[year_at], line)
            out.schools.setdefault(row[school_at])
            out.count += 1
            keep.append(row)
        if keep and not problems:
            yield keep
    problems.sort(key=lambda p: p.line)


@dataclass(frozen=True)
class WorkerArgs:
    """What a worker needs to parse its blocks of a file on its own (all picklable)."""

    path: Path
    encoding: str | None
    name: str
    county_code: str
    secret: bytes
    batch_id: int
    stripe: int
    stripes: int
    block_rows: int = BLOCK_ROWS


def _watch_parent(parent: int) -> None:
    """Exit as soon as the parent is gone (a kill -9 of the ingest).

    Without this, an orphaned worker could wait forever: blocked on a full queue, or at
    exit, flushing into a pipe whose only reader left is itself.
    """
    while True:
        time.sleep(LIVENESS_S)
        if os.getppid() != parent:
            os._exit(1)


def _worker(args: WorkerArgs, out: multiprocessing.Queue[Any], parent: int) -> None:
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()

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
            for block in parse_blocks(
                table.rows,
                parser,
                args.batch_id,
                stripe=args.stripe,
                stripes=args.stripes,
                block_rows=args.block_rows,
            ):
                send(("block", block, table.fraction()))
        finally:
            table.close()
        send(("done",))
    except BaseException as exc:  # reported to the parent, which rolls back
        send(("error", f"{type(exc).__name__}: {exc}"))


def parse_in_workers(
    args: WorkerArgs, progress: Callable[[float], None] | None = None
) -> Iterator[Block]:
    """Run ``args.stripes`` workers (``args.stripe`` is ignored); yield their blocks in
    file order."""
    context = multiprocessing.get_context("spawn")
    channels: list[multiprocessing.Queue[Any]] = []
    processes = []
    for stripe in range(args.stripes):
        channel: multiprocessing.Queue[Any] = context.Queue(maxsize=QUEUE_BLOCKS)
        mine = WorkerArgs(**{**args.__dict__, "stripe": stripe})
        process = context.Process(target=_worker, args=(mine, channel, os.getpid()), daemon=True)
        process.start()
        channels.append(channel)
        processes.append(process)
    try:
        done = [False] * args.stripes
        turn = 0
        while not all(done):
            if done[turn]:
                turn = (turn + 1) % args.stripes
                continue
            try:
                message = channels[turn].get(timeout=LIVENESS_S)
            except queue.Empty:
                if not processes[turn].is_alive():
                    raise RuntimeError("a parsing worker died") from None
                continue
            if message[0] == "block":
                if progress is not None:
                    progress(message[2])
                yield message[1]
            elif message[0] == "done":
                done[turn] = True
            else:
                raise RuntimeError(f"a parsing worker failed: {message[1]}")
            # blocks alternate between workers in file order
            turn = (turn + 1) % args.stripes
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join(timeout=10)
        for channel in channels:
            channel.close()
