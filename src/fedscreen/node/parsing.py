"""Parsing a screening export into row blocks — in this process or in worker processes.

Validation is CPU-bound Python and SQLite's inserts are too, so for a large file
the node parses in child processes while the parent inserts. The file is cut
into blocks of ``BLOCK_ROWS`` input rows; with ``n`` workers, worker ``k`` reads
every row (reading is cheap) but parses only blocks ``k, k + n, …``. The parent
takes the blocks back in file order and does the per-file bookkeeping —
duplicate students, years, schools — so the outcome is the same as parsing in
one process. A child never touches the database. If the parent dies, the
children notice and exit; if a child dies, the parent notices within a second,
raises ``IngestError`` and its transaction is rolled back.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Final

from fedscreen.errors import IngestError, Problem
from fedscreen.node.limits import MAX_PROBLEMS, MAX_SCHOOL_ROWS, check_cells
from fedscreen.node.reader import ReadError, open_table
from fedscreen.node.validate import Holder, SchoolParser, ScreeningParser

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
    #: the last line read into the block
    last_line: int = 0
    #: reading stopped in this block (a limit, an undecodable byte): the file is rejected
    fatal: Problem | None = None


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
    #: why checking stopped early (always shown), if it did
    fatal: Problem | None = None


def _stopped(name: str, line: int) -> Problem:
    return Problem(
        name, line, "-", f"checking stopped here after {MAX_PROBLEMS} problems; fix these first"
    )


def rows_checked(
    rows: Iterator[tuple[int, list[str]]],
    parser: SchoolParser,
    problems: list[Problem],
    fatal: list[Problem],
) -> Iterator[tuple[int, Any]]:
    """Parsed rows; blank lines are skipped, bad rows become problems. Why reading stopped
    early (unreadable input, a limit, too many problems) goes into ``fatal``."""
    name, names, parse = parser.path, parser.names, parser.parse
    kept = 0
    try:
        for line, cells in rows:
            if not any(c.strip() for c in cells):
                continue
            if check_cells(name, line, cells, names, problems):
                parsed = parse(line, cells, problems)
                if parsed is not None:
                    kept += 1
                    if kept > MAX_SCHOOL_ROWS:
                        fatal.append(
                            Problem(name, line, "-", f"more than {MAX_SCHOOL_ROWS} school rows")
                        )
                        return
                    yield line, parsed
            if len(problems) >= MAX_PROBLEMS:
                fatal.append(_stopped(name, line))
                return
    except ReadError as exc:
        fatal.append(exc.problem)


def parse_blocks(
    rows: Iterator[tuple[int, list[str]]],
    parser: ScreeningParser,
    batch_id: int,
    *,
    stripe: int = 0,
    stripes: int = 1,
    block_rows: int = BLOCK_ROWS,
) -> Generator[Block]:
    """Blocks ``stripe, stripe + stripes, …`` of the file, parsed; the others are only read.

    Every block of the stripe is yielded, empty or not, so that blocks from several
    workers can be merged back in file order by taking them in turn. A block carries
    at most ``BLOCK_PROBLEMS`` problems (and counts the rest), so memory stays bounded
    however bad the rows.
    """
    block = Block(0, [], [], [])
    parse, name, names = parser.parse, parser.path, parser.names
    try:
        for position, (line, cells) in enumerate(rows):
            index = position // block_rows
            if index != block.index:
                if block.index % stripes == stripe:
                    yield block
                block = Block(index, [], [], [])
            block.last_line = line
            if index % stripes != stripe or not any(c.strip() for c in cells):
                continue
            problems = block.problems
            if check_cells(name, line, cells, names, problems):
                row = parse(line, cells, problems, batch_id)
                if row is not None:
                    block.lines.append(line)
                    block.rows.append(row)
            if len(problems) > BLOCK_PROBLEMS:
                block.extra_problems += len(problems) - BLOCK_PROBLEMS
                del problems[BLOCK_PROBLEMS:]
    except ReadError as exc:
        # every worker reads the whole file and meets the error; the block's owner reports it
        if block.index % stripes == stripe:
            block.fatal = exc.problem
    if block.index % stripes == stripe:
        yield block


def collect(
    blocks: Iterator[Block], name: str, key_at: int, year_at: int, school_at: int, out: Collected
) -> Iterator[list[Row]]:
    """Per-file bookkeeping over blocks in file order; yields the rows to insert (nothing
    after the first problem, though rows are still checked and counted — until
    ``MAX_PROBLEMS`` or a block that stopped reading)."""
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
        if block.fatal is not None:
            out.fatal = block.fatal
        elif out.total_problems >= MAX_PROBLEMS:
            out.fatal = _stopped(name, block.last_line)
        if out.fatal is not None:
            out.total_problems += 1
            del problems[MAX_PROBLEMS:]
            break
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
    #: whose rows the node accepts (a university's, a school's; default a county's)
    holder: Holder = field(default_factory=Holder)


def _watch_parent(parent: int) -> None:
    """Exit as soon as the parent is gone (a kill -9 of the ingest).

    Without this, an orphaned worker could wait forever: blocked on a full queue, or at
    exit, flushing into a pipe whose only reader left is itself.
    """
    while True:
        time.sleep(LIVENESS_S)
        if os.getppid() != parent:
            os._exit(1)


def _worker(args: WorkerArgs, out: Connection, parent: int) -> None:
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    # a sender thread keeps up to QUEUE_BLOCKS blocks in flight while this one parses on
    outbox: queue.Queue[tuple[Any, ...] | None] = queue.Queue(maxsize=QUEUE_BLOCKS)

    def sender() -> None:
        while (message := outbox.get()) is not None:
            try:
                out.send(message)
            except OSError:  # the parent closed the pipe (it stopped the ingest): done
                os._exit(1)

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    try:
        table = open_table(args.path, encoding=args.encoding)
        try:
            parser = ScreeningParser(
                path=args.name,
                header=table.header,
                county_code=args.county_code,
                secret=args.secret,
                holder=args.holder,
            )
            for block in parse_blocks(
                table.rows,
                parser,
                args.batch_id,
                stripe=args.stripe,
                stripes=args.stripes,
                block_rows=args.block_rows,
            ):
                outbox.put(("block", block, table.fraction()))
        finally:
            table.close()
        outbox.put(("done",))
    except BaseException as exc:  # reported to the parent, which rolls back
        outbox.put(("error", type(exc).__name__))
    outbox.put(None)
    thread.join()


def _died(name: str, process: BaseProcess) -> IngestError:
    process.join(timeout=LIVENESS_S)
    code = process.exitcode
    how = f"was killed by signal {-code}" if code is not None and code < 0 else "exited"
    return IngestError(
        name, [Problem(name, 0, "-", f"a parsing worker {how} (exit code {code}); try again")], 1
    )


def parse_in_workers(
    args: WorkerArgs, progress: Callable[[float], None] | None = None
) -> Generator[Block]:
    """Run ``args.stripes`` workers (``args.stripe`` is ignored); yield their blocks in
    file order.

    Each worker writes to a pipe whose only writing end it holds, so a worker that dies
    — even halfway through a message — is an end of file here, within ``LIVENESS_S``:
    the ingest fails with an ``IngestError`` instead of waiting. The workers are
    stopped and reaped whatever happens.
    """
    context = multiprocessing.get_context("spawn")
    channels: list[Connection] = []
    processes: list[BaseProcess] = []
    try:
        for stripe in range(args.stripes):
            reader, writer = context.Pipe(duplex=False)
            mine = WorkerArgs(**{**args.__dict__, "stripe": stripe})
            process = context.Process(target=_worker, args=(mine, writer, os.getpid()), daemon=True)
            channels.append(reader)
            processes.append(process)
            try:
                process.start()
            finally:
                writer.close()
        done = [False] * args.stripes
        turn = 0
        while not all(done):
            if done[turn]:
                turn = (turn + 1) % args.stripes
                continue
            channel = channels[turn]
            try:
                if not channel.poll(LIVENESS_S):
                    if not processes[turn].is_alive():
                        raise _died(args.name, processes[turn])
                    continue
                message = channel.recv()
            except (EOFError, OSError):
                raise _died(args.name, processes[turn]) from None
            if message[0] == "block":
                if progress is not None:
                    progress(message[2])
                yield message[1]
            elif message[0] == "done":
                done[turn] = True
            else:
                reason = f"a parsing worker failed ({message[1]})"
                raise IngestError(args.name, [Problem(args.name, 0, "-", reason)], 1)
            # blocks alternate between workers in file order
            turn = (turn + 1) % args.stripes
    finally:
        for channel in channels:
            channel.close()
        for worker in processes:
            if worker.pid is None:
                continue
            if worker.is_alive():
                worker.terminate()
            worker.join(timeout=5)
            if worker.is_alive():
                worker.kill()
                worker.join()
