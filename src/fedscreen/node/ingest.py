"""Load export files into a node: all or nothing per file, idempotent, correctable.

One file is one SQLite transaction. Rows are validated and inserted as they
stream in; at the first problem inserting stops (validation goes on, to report
every problem) and at the end the transaction is rolled back, so nothing of a
bad file is ever visible — also after a crash, since SQLite discards an
uncommitted transaction on recovery.

A file whose SHA-256 digest was loaded before changes nothing. A new export for
a school and academic year replaces that school's earlier rows for the year in
the same transaction, and the load records which batches it replaced.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from fedscreen.errors import IngestError, Problem
from fedscreen.node import store
from fedscreen.node.home import NodeConfig
from fedscreen.node.parsing import (
    BLOCK_ROWS,
    WORKERS,
    Block,
    Collected,
    WorkerArgs,
    collect,
    parse_blocks,
    parse_in_workers,
    rows_checked,
)
from fedscreen.node.reader import CSV_SUFFIXES, XLSX_SUFFIXES, ReadError, Table, open_table
from fedscreen.node.validate import HeaderError, Holder, SchoolParser, ScreeningParser
from fedscreen.screening import exports

#: files at least this large are parsed in a worker process while this one inserts
WORKER_MIN_BYTES: Final = 8 << 20
#: the bounded flag is recomputed for at most this many keys per statement batch
HASH_BLOCK: Final = 1 << 20

ProgressFn = Callable[[str, int, float], None]

#: Test-only observation point, ``None`` in production (nothing in fedscreen sets it):
#: called with "inserted" after each chunk of rows, "committing" just before COMMIT and
#: "committed" just after, so a crash test started in a process of its own knows on
#: which side of the commit its kill landed.
UNSAFE_TEST_STAGE_HOOK: Callable[[str], None] | None = None


def _stage(name: str) -> None:
    if UNSAFE_TEST_STAGE_HOOK is not None:
        UNSAFE_TEST_STAGE_HOOK(name)


@dataclass(frozen=True)
class LoadResult:
    """What loading one file did."""

    path: str
    kind: str
    #: "loaded" or "unchanged" (the same file was loaded before)
    status: str
    batch_id: int
    rows: int
    academic_year: str
    schools: tuple[str, ...]
    replaced: tuple[int, ...]


def file_digest(path: Path) -> str:
    """SHA-256 of the file's bytes, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given, and the CSV/XLSX files inside directories (sorted)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                sorted(
                    p for p in path.iterdir() if p.suffix.lower() in CSV_SUFFIXES + XLSX_SUFFIXES
                )
            )
        else:
            files.append(path)
    return files


def ingest_file(
    conn: sqlite3.Connection,
    config: NodeConfig,
    path: Path,
    *,
    encoding: str | None = None,
    progress: ProgressFn | None = None,
) -> LoadResult:
    """Load one export file; raises IngestError (and writes nothing) if any row is bad."""
    name = str(path)
    if not path.is_file():
        # a device, FIFO or directory is never an export (and /dev/zero never ends)
        reason = "not a regular file" if path.exists() else "no such file"
        raise IngestError(name, [Problem(name, 0, "-", reason)], 1)
    digest = file_digest(path)
    try:
        table = open_table(path, encoding=encoding)
    except ReadError as exc:
        raise IngestError(name, [exc.problem], 1) from None
    try:
        return _ingest_table(conn, config, table, name, digest, progress)
    finally:
        table.close()


def _ingest_table(
    conn: sqlite3.Connection,
    config: NodeConfig,
    table: Table,
    name: str,
    digest: str,
    progress: ProgressFn | None,
) -> LoadResult:
    path = table.path
    try:
        parser: ScreeningParser | SchoolParser
        aliases = exports.header_aliases(exports.SCREENING_COLUMNS + exports.SCHOOL_COLUMNS)
        keys = {aliases.get(h) or aliases.get(h.lower()) for h in table.header}
        if exports.SCREENING_MARKER in keys:
            kind = "screening"
            parser = ScreeningParser(
                path=name,
                header=table.header,
                county_code=config.county_code,
                secret=config.secret(),
                holder=_holder(config),
            )
        elif exports.SCHOOL_MARKER in keys:
            kind = "school"
            parser = SchoolParser(
                path=name,
                header=table.header,
                county_code=config.county_code,
                holder=_holder(config),
            )
        else:
            reason = (
                "neither a screening export (学籍号/student_no) "
                "nor a school table (专职心理教师/ft_teachers)"
            )
            raise IngestError(name, [Problem(name, 1, "-", reason)], 1)
    except HeaderError as exc:
        raise IngestError(name, exc.problems[: config.max_problems], len(exc.problems)) from None

    conn.execute("BEGIN IMMEDIATE")
    try:
        previous = conn.execute(
            "SELECT batch_id, rows, academic_year, schools FROM ingest_batch WHERE digest = ?",
            (digest,),
        ).fetchone()
        if previous is not None:
            conn.execute("ROLLBACK")
            return LoadResult(
                name,
                kind,
                "unchanged",
                previous[0],
                previous[1],
                previous[2],
                tuple(json.loads(previous[3])),
                (),
            )
        now = datetime.now(UTC).isoformat(timespec="seconds")
        batch_id = conn.execute(
            "INSERT INTO ingest_batch (kind, file_name, digest, rows, academic_year, loaded_at) "
            "VALUES (?, ?, ?, 0, '', ?)",
            (kind, path.name, digest, now),
        ).lastrowid
        assert batch_id is not None
        if isinstance(parser, ScreeningParser):
            result = _load_screenings(conn, config, table, parser, batch_id, name, progress)
        else:
            result = _load_schools(conn, config, table.rows, parser, batch_id, name)
        conn.execute(
            "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'data_version'"
        )
        _stage("committing")
        conn.execute("COMMIT")
        _stage("committed")
        return result
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _holder(config: NodeConfig) -> Holder:
    """Whose rows this node accepts: any school of its county, or its one school."""
    return Holder(kind=config.kind, school_id=config.school_id)


def _fail(
    name: str, problems: list[Problem], config: NodeConfig, fatal: Problem | None = None
) -> IngestError:
    """The first problems, and why checking stopped early (always shown) if it did."""
    shown = problems[: config.max_problems] + ([fatal] if fatal else [])
    return IngestError(name, shown, len(problems) + (fatal is not None))


def _one_year(
    years: dict[str, int], name: str, problems: list[Problem], *, stopped: bool = False
) -> str:
    if len(years) > 1:
        (first, _), *others = sorted(years.items(), key=lambda kv: kv[1])
        for year, line in others:
            problems.append(
                Problem(
                    name,
                    line,
                    "academic_year",
                    f"{year} differs from {first}: one academic year per file",
                )
            )
    if not years and not problems and not stopped:
        problems.append(Problem(name, 2, "-", "no data rows"))
    return next(iter(years), "")


def _load_screenings(
    conn: sqlite3.Connection,
    config: NodeConfig,
    table: Table,
    parser: ScreeningParser,
    batch_id: int,
    name: str,
    progress: ProgressFn | None,
) -> LoadResult:
    columns = parser.columns
    insert = (
        f"INSERT INTO screening ({', '.join(columns)}, bounded) "
        f"VALUES ({', '.join('?' * len(columns))}, 1)"
    )
    collected = Collected(name)
    large = table.path.stat().st_size >= WORKER_MIN_BYTES
    read = [0.0]  # the workers' latest progress (share of the file read)
    blocks: Generator[Block]
    if large:
        table.close()  # the workers read the file themselves
        args = WorkerArgs(
            table.path,
            table.encoding,
            name,
            config.county_code,
            config.secret(),
            batch_id,
            stripe=0,
            stripes=WORKERS,
            block_rows=BLOCK_ROWS,
            holder=_holder(config),
        )
        blocks = parse_in_workers(args, progress=lambda f: read.__setitem__(0, f))
    else:
        blocks = parse_blocks(table.rows, parser, batch_id, block_rows=BLOCK_ROWS)
    key_at, year_at = columns.index("student_key"), columns.index("academic_year")
    try:
        for chunk in collect(blocks, name, key_at, year_at, columns.index("school_id"), collected):
            conn.executemany(insert, chunk)
            _stage("inserted")
            if progress is not None:
                progress(name, collected.count, read[0] if large else table.fraction())
    finally:
        blocks.close()  # collect may stop early: stop (and reap) the workers now
    problems = collected.problems
    before = len(problems)
    fatal = collected.fatal
    year = _one_year(collected.years, name, problems, stopped=fatal is not None)
    if problems or fatal is not None:
        total = collected.total_problems + len(problems) - before
        shown = problems[: config.max_problems] + ([fatal] if fatal else [])
        raise IngestError(name, shown, total)
    if progress is not None:
        progress(name, collected.count, 1.0)
    schools = list(collected.schools)
    replaced, orphaned = _replace_earlier(conn, "screening", batch_id, year, schools)
    _reconcile_bounded(conn, batch_id, year, orphaned)
    return _record(
        conn, name, "screening", batch_id, collected.count, year, tuple(schools), replaced
    )


def _load_schools(
    conn: sqlite3.Connection,
    config: NodeConfig,
    rows: Iterator[tuple[int, list[str]]],
    parser: SchoolParser,
    batch_id: int,
    name: str,
) -> LoadResult:
    problems: list[Problem] = []
    fatal: list[Problem] = []
    years: dict[str, int] = {}
    seen: dict[tuple[str, str], int] = {}
    schools: dict[str, dict[str, Any]] = {}
    grades: list[dict[str, Any]] = []
    for line, row in rows_checked(rows, parser, problems, fatal):
        years.setdefault(row["academic_year"], line)
        first = seen.setdefault((row["school_id"], row["grade"]), line)
        if first != line:
            problems.append(Problem(name, line, "grade", f"same school and grade as line {first}"))
            continue
        schools.setdefault(row["school_id"], row)
        grades.append(row)
    year = _one_year(years, name, problems, stopped=bool(fatal))
    if problems or fatal:
        raise _fail(name, problems, config, fatal[0] if fatal else None)
    replaced, _ = _replace_earlier(conn, "school_grade", batch_id, year, list(schools))
    conn.execute(
        "DELETE FROM school WHERE academic_year = ? AND school_id IN "
        f"({', '.join('?' * len(schools))})",
        (year, *schools),
    )
    school_cols = (
        "academic_year",
        "school_id",
        "school_name",
        "county_code",
        "school_type",
        "location",
        "ft_teachers",
        "pt_teachers",
        "counselling_room",
    )
    conn.executemany(
        f"INSERT INTO school ({', '.join(school_cols)}, batch_id) VALUES ({', '.join('?' * 10)})",
        [(*(s[c] for c in school_cols), batch_id) for s in schools.values()],
    )
    grade_cols = (
        "academic_year",
        "school_id",
        "grade",
        "grade_band",
        "enrolled_male",
        "enrolled_female",
        "eligible",
    )
    conn.executemany(
        f"INSERT INTO school_grade ({', '.join(grade_cols)}, batch_id) "
        f"VALUES ({', '.join('?' * 8)})",
        [(*(g[c] for c in grade_cols), batch_id) for g in grades],
    )
    return _record(conn, name, "school", batch_id, len(grades), year, tuple(schools), replaced)


def _replace_earlier(
    conn: sqlite3.Connection, table: str, batch_id: int, year: str, schools: list[str]
) -> tuple[tuple[int, ...], set[bytes]]:
    """Delete earlier rows of these schools and year; returns the batches touched and, for
    screenings, the student keys whose bounded row was deleted."""
    replaced: set[int] = set()
    orphaned: set[bytes] = set()
    returning = "batch_id, student_key, bounded" if table == "screening" else "batch_id, NULL, 0"
    for school in schools:
        for old_batch, key, bounded in conn.execute(
            f"DELETE FROM {table} WHERE academic_year = ? AND school_id = ? AND batch_id <> ? "
            f"RETURNING {returning}",
            (year, school, batch_id),
        ):
            replaced.add(old_batch)
            if bounded:
                orphaned.add(key)
    for old_batch in replaced:
        left = conn.execute(
            f"SELECT EXISTS (SELECT 1 FROM {table} WHERE batch_id = ?)", (old_batch,)
        ).fetchone()[0]
        if not left:
            conn.execute(
                "UPDATE ingest_batch SET replaced_by = ? WHERE batch_id = ?", (batch_id, old_batch)
            )
    return tuple(sorted(replaced)), orphaned


def _reconcile_bounded(
    conn: sqlite3.Connection, batch_id: int, year: str, orphaned: set[bytes]
) -> None:
    """Keep exactly one bounded row per student and year (see ``store``).

    New rows were inserted as bounded. Only students who also have rows in other
    batches of the year, or whose bounded row was just replaced, need ranking;
    on a first load of a year there are none, and nothing is scanned.
    """
    affected = set(orphaned)
    others = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM screening WHERE academic_year = ? AND batch_id <> ?)",
        (year, batch_id),
    ).fetchone()[0]
    if others:
        affected.update(
            key
            for (key,) in conn.execute(
                "SELECT DISTINCT n.student_key FROM screening AS n JOIN screening AS o "
                "ON o.academic_year = n.academic_year AND o.student_key = n.student_key "
                "AND o.batch_id <> n.batch_id WHERE n.batch_id = ?",
                (batch_id,),
            )
        )
    if not affected:
        return
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS affected_key (student_key BLOB PRIMARY KEY)")
    conn.execute("DELETE FROM affected_key")
    conn.executemany("INSERT INTO affected_key VALUES (?)", ((k,) for k in affected))
    conn.execute(
        "UPDATE screening SET bounded = 0 WHERE academic_year = ? "
        "AND student_key IN (SELECT student_key FROM affected_key)",
        (year,),
    )
    # the latest screening wins: screened beats absent/refused, then date, then later load
    conn.execute(
        "UPDATE screening SET bounded = 1 WHERE id IN ("
        " SELECT id FROM (SELECT s.id, ROW_NUMBER() OVER ("
        "   PARTITION BY s.student_key"
        "   ORDER BY s.screened DESC, s.screening_date DESC, s.batch_id DESC) AS rank"
        "  FROM screening AS s JOIN affected_key AS a ON a.student_key = s.student_key"
        "  WHERE s.academic_year = ?) WHERE rank = 1)",
        (year,),
    )
    conn.execute("DELETE FROM affected_key")


def _record(
    conn: sqlite3.Connection,
    name: str,
    kind: str,
    batch_id: int,
    rows: int,
    year: str,
    schools: tuple[str, ...],
    replaced: tuple[int, ...],
) -> LoadResult:
    conn.execute(
        "UPDATE ingest_batch SET rows = ?, academic_year = ?, schools = ?, replaced = ? "
        "WHERE batch_id = ?",
        (rows, year, json.dumps(list(schools)), json.dumps(list(replaced)), batch_id),
    )
    return LoadResult(name, kind, "loaded", batch_id, rows, year, schools, replaced)


def ingest_paths(
    config: NodeConfig,
    paths: Iterable[Path],
    *,
    encoding: str | None = None,
    progress: ProgressFn | None = None,
) -> tuple[list[LoadResult], list[IngestError]]:
    """Load files one by one (each all-or-nothing); returns what loaded and what was rejected."""
    loaded: list[LoadResult] = []
    rejected: list[IngestError] = []
    conn = store.connect(config.database)
    try:
        for path in expand_paths(paths):
            try:
                loaded.append(ingest_file(conn, config, path, encoding=encoding, progress=progress))
            except IngestError as exc:
                rejected.append(exc)
    finally:
        conn.close()
    return loaded, rejected
