"""Stream the rows of an export file (CSV in UTF-8/UTF-8-BOM/GB18030, or XLSX).

Rows come out as lists of strings with their line number (the header is line 1),
one at a time, so a file of a million rows is never held in memory — nor a line of
unbounded length: every read is bounded by the limits in ``limits``, and every
problem, at any byte of any file, is a ``ReadError`` naming its line.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import posixpath
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, NoReturn

import python_calamine

from fedscreen.errors import Problem
from fedscreen.node.limits import (
    MAX_COLUMNS,
    MAX_FIELD_CHARS,
    MAX_LINE_BYTES,
    MAX_ROWS,
    MAX_XLSX_BYTES,
    MAX_XLSX_CELLS,
)

ENCODINGS: Final = ("utf-8", "utf-8-sig", "gb18030")
#: bytes sniffed to choose between UTF-8 and GB18030
SNIFF_BYTES: Final = 1 << 20
CSV_SUFFIXES: Final = (".csv", ".txt")
XLSX_SUFFIXES: Final = (".xlsx",)


class ReadError(Exception):
    """The file cannot be read as a table at all (encoding, format); carries the problem."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


@dataclass
class Table:
    """An open export file: its header and a one-pass iterator of (line, cells)."""

    path: Path
    header: list[str]
    rows: Iterator[tuple[int, list[str]]]
    encoding: str
    #: share of the file read so far (0..1), for progress displays
    fraction: Callable[[], float]
    #: release the file (safe to call twice, also before ``rows`` is exhausted)
    close: Callable[[], None]


def detect_encoding(path: Path) -> str:
    """UTF-8 with BOM, UTF-8, or else GB18030 (the superset of GBK that Chinese Excel writes)."""
    with path.open("rb") as handle:
        head = handle.read(SNIFF_BYTES)
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    try:
        # a multi-byte character may be cut at the end of the sample: decode incrementally
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return "gb18030"
    return "utf-8"


def open_table(path: Path, *, encoding: str | None = None) -> Table:
    """Open a CSV or XLSX export for streaming."""
    suffix = path.suffix.lower()
    if suffix in XLSX_SUFFIXES:
        return _open_xlsx(path)
    if suffix in CSV_SUFFIXES:
        return _open_csv(path, encoding or detect_encoding(path))
    raise ReadError(
        Problem(str(path), 0, "-", f"unsupported file type {suffix!r} (use .csv or .xlsx)")
    )


class _Lines:
    """The decoded physical lines of a CSV file, for ``csv.reader``, one at a time.

    A line ends at ``\\n``, ``\\r\\n`` or ``\\r`` (these bytes never occur inside a UTF-8 or
    GB18030 character, so lines are cut before decoding). Each line is decoded on its
    own, so a decoding error names its line; none is longer than ``MAX_LINE_BYTES``
    (the longest read is twice that), and neither is a record spanning lines.
    """

    def __init__(self, path: str, raw: BinaryIO, encoding: str) -> None:
        self.path, self.raw, self.encoding = path, raw, encoding
        #: physical lines handed out so far (the line number of the last one)
        self.line = 0
        #: bytes of the record being read (reset by the row loop)
        self.record = 0

    def __iter__(self) -> Iterator[str]:
        raw, limit = self.raw, MAX_LINE_BYTES
        carry = b""
        while True:
            chunk = raw.readline(limit + 2)
            eof = not chunk
            data = carry + chunk if carry else chunk
            carry = b""
            if not data:
                return
            parts = data.splitlines(keepends=True) if b"\r" in data else [data]
            last = parts[-1]
            if not eof and not last.endswith(b"\n"):
                # cut by the read limit (or a "\r" that a "\n" may follow): read on
                carry = parts.pop()
            for part in parts:
                yield self._decode(part)
            if len(carry) > limit + 1:
                self._too_long(self.line + 1)

    def _decode(self, part: bytes) -> str:
        self.line += 1
        size = len(part) - (2 if part.endswith(b"\r\n") else 1 if part[-1:] in b"\r\n" else 0)
        if size > MAX_LINE_BYTES:
            self._too_long(self.line)
        self.record += len(part)
        if self.record > MAX_LINE_BYTES + 2:
            raise ReadError(
                Problem(self.path, self.line, "-",
                        f"a row longer than {MAX_LINE_BYTES} bytes (a quote not closed?)")
            )  # fmt: skip
        codec = self.encoding
        if codec == "utf-8-sig" and self.line > 1:
            codec = "utf-8"
        try:
            return part.decode(codec)
        except UnicodeDecodeError as exc:
            raise ReadError(
                Problem(self.path, self.line, "-",
                        f"not valid {self.encoding}: {exc.reason} at byte {exc.start + 1}")
            ) from None  # fmt: skip

    def _too_long(self, line: int) -> NoReturn:
        raise ReadError(
            Problem(self.path, line, "-",
                    f"line longer than {MAX_LINE_BYTES} bytes (were the line breaks lost?); "
                    "reading stopped here")
        )  # fmt: skip


def _open_csv(path: Path, encoding: str) -> Table:
    if encoding not in ENCODINGS:
        raise ReadError(Problem(str(path), 0, "-", f"unsupported encoding {encoding!r}"))
    raw = path.open("rb")
    lines = _Lines(str(path), raw, encoding)
    reader = csv.reader(lines)
    try:
        header = _next_record(str(path), lines, reader)
        if header is None:
            raise ReadError(Problem(str(path), 1, "-", "empty file (no header)"))
        if len(header) > MAX_COLUMNS:
            raise ReadError(
                Problem(str(path), 1, "-", f"{len(header)} columns; at most {MAX_COLUMNS}")
            )
    except BaseException:
        raw.close()
        raise
    if header and header[0].startswith("\ufeff"):
        header[0] = header[0][1:]
    size = max(path.stat().st_size, 1)
    return Table(
        path,
        [h.strip() for h in header],
        _csv_rows(str(path), raw, lines, reader),
        encoding,
        lambda: 0.0 if raw.closed else min(raw.tell() / size, 1.0),
        raw.close,
    )


def _next_record(path: str, lines: _Lines, reader: Iterator[list[str]]) -> list[str] | None:
    """The next record, or ``None`` at the end; every problem is a ``ReadError``."""
    start = lines.line + 1
    lines.record = 0
    try:
        return next(reader)
    except StopIteration:
        return None
    except csv.Error as exc:
        reason = f"malformed CSV: {exc}"
        if "field limit" in str(exc):
            reason = f"field longer than {MAX_FIELD_CHARS} characters (a quote not closed?)"
        raise ReadError(Problem(path, start, "-", reason)) from None


def _csv_rows(
    path: str, raw: BinaryIO, lines: _Lines, reader: Iterator[list[str]]
) -> Iterator[tuple[int, list[str]]]:
    try:
        while True:
            line = lines.line + 1
            row = _next_record(path, lines, reader)
            if row is None:
                return
            # checked once a record is there: a file of exactly MAX_ROWS rows loads
            if line > MAX_ROWS + 1:
                raise ReadError(
                    Problem(path, line, "-",
                            f"more than {MAX_ROWS} lines after the header; split the export")
                )  # fmt: skip
            yield line, row
    finally:
        raw.close()


def _unzipped_size(path: Path) -> int:
    """Bytes of the workbook's parts once unzipped, counted by unzipping (a declared size
    may lie); stops counting past the limit."""
    total = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            with archive.open(info) as part:
                while block := part.read(1 << 20):
                    total += len(block)
                    if total > MAX_XLSX_BYTES:
                        return total
    return total


#: the first <sheet> of xl/workbook.xml, and a relationship's id and target
_FIRST_SHEET: Final = re.compile(rb"<(?:\w+:)?sheet\b[^>]*?\br:id=\"([^\"]+)\"")
_RELATIONSHIP: Final = re.compile(rb"<(?:\w+:)?Relationship\b[^>]*>")
_ATTRIBUTE: Final = re.compile(rb"\b(Id|Target)=\"([^\"]*)\"")
#: a row's or a cell's position in sheet XML: <row r="12"…>, <c r="AB12"…>
_POSITION: Final = re.compile(rb"<(?:\w+:)?(?:row|c)\b[^>]*?\br=\"([A-Z]{0,3})([0-9]{1,9})\"")


def _first_sheet_part(archive: zipfile.ZipFile) -> str | None:
    """The zip name of the workbook's first sheet (the one read), or None if not found."""
    try:
        workbook = archive.read("xl/workbook.xml")
        rels = archive.read("xl/_rels/workbook.xml.rels")
    except KeyError:
        return None
    first = _FIRST_SHEET.search(workbook)
    if first is None:
        return None
    for element in _RELATIONSHIP.findall(rels):
        attrs = dict(_ATTRIBUTE.findall(element))
        if attrs.get(b"Id") == first[1] and b"Target" in attrs:
            target = attrs[b"Target"].decode("utf-8", "replace")
            return (
                target.lstrip("/")
                if target.startswith("/")
                else posixpath.normpath(posixpath.join("xl", target))
            )
    return None


def _extent(archive: zipfile.ZipFile, part: str) -> tuple[int, int]:
    """The last row and column that the sheet's rows and cells name, read as a stream."""
    rows = columns = 0
    tail = b""
    with archive.open(part) as stream:
        while block := stream.read(1 << 20):
            data = tail + block
            for match in _POSITION.finditer(data):
                letters, number = match[1], int(match[2])
                rows = max(rows, number)
                column = 0
                for letter in letters:
                    column = column * 26 + letter - 64
                columns = max(columns, column)
            # a tag cut at the block's end is matched again, whole, with the next block
            tail = data[-512:]
    return rows, columns


def _check_extent(path: Path, name: str) -> None:
    """Refuse a sheet whose cells name a far row or column before it is loaded."""
    with zipfile.ZipFile(path) as archive:
        part = _first_sheet_part(archive)
        parts = (
            [part]
            if part in archive.namelist()
            else [
                n
                for n in archive.namelist()
                if n.startswith("xl/worksheets/") and n.endswith(".xml")
            ]
        )
        for sheet in parts:
            rows, columns = _extent(archive, sheet)
            if columns > MAX_COLUMNS:
                raise ReadError(Problem(name, 1, "-", f"{columns} columns; at most {MAX_COLUMNS}"))
            if rows * max(columns, 1) > MAX_XLSX_CELLS:
                raise ReadError(
                    Problem(name, 0, "-",
                            f"the sheet spans {rows} rows × {columns} columns, more than "
                            f"{MAX_XLSX_CELLS} cells; export it as CSV")
                )  # fmt: skip


def _open_xlsx(path: Path) -> Table:
    name = str(path)
    try:
        size = _unzipped_size(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise ReadError(
            Problem(name, 0, "-", f"not a readable .xlsx workbook ({type(exc).__name__})")
        ) from None
    if size > MAX_XLSX_BYTES:
        raise ReadError(
            Problem(name, 0, "-",
                    f"workbook larger than {MAX_XLSX_BYTES >> 20} MiB unzipped; "
                    "export it as CSV")
        )  # fmt: skip
    try:
        _check_extent(path, name)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise ReadError(
            Problem(name, 0, "-", f"not a readable .xlsx workbook ({type(exc).__name__})")
        ) from None
    try:
        workbook = python_calamine.CalamineWorkbook.from_path(name)
        sheet = workbook.get_sheet_by_index(0)
        # rows come from the sheet's first row, so a row's position is its line; the
        # header is the first row that is not empty
        rows = enumerate(sheet.iter_rows(), start=1)
        top, first = next(rows)
        while not any(c not in (None, "") for c in first):
            top, first = next(rows)
    except StopIteration:
        raise ReadError(Problem(name, 1, "-", "empty workbook (no header)")) from None
    except Exception as exc:  # calamine raises several unrelated types for broken files
        raise ReadError(
            Problem(name, 0, "-", f"not a readable .xlsx workbook ({type(exc).__name__})")
        ) from None
    if len(first) > MAX_COLUMNS:
        workbook.close()
        raise ReadError(Problem(name, top, "-", f"{len(first)} columns; at most {MAX_COLUMNS}"))
    header = [_cell(c).strip() for c in first]
    height = max(int(getattr(sheet, "height", 0) or 0), 1)
    done = [0]

    def cells() -> Iterator[tuple[int, list[str]]]:
        for line, row in rows:
            if line > top + MAX_ROWS:
                raise ReadError(
                    Problem(name, line, "-",
                            f"more than {MAX_ROWS} rows after the header; split the export")
                )  # fmt: skip
            done[0] = line - top
            yield line, [_cell(c) for c in row]

    return Table(path, header, cells(), "xlsx", lambda: min(done[0] / height, 1.0), workbook.close)


def _cell(value: object) -> str:
    """Spreadsheet cell -> the text a CSV export would have held."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)
