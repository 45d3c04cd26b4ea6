"""Stream the rows of an export file (CSV in UTF-8/UTF-8-BOM/GB18030, or XLSX).

Rows come out as lists of strings with their line number (the header is line 1),
one at a time, so a file of a million rows is never held in memory.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, TextIO

import python_calamine

from fedscreen.errors import Problem

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


def _open_csv(path: Path, encoding: str) -> Table:
    if encoding not in ENCODINGS:
        raise ReadError(Problem(str(path), 0, "-", f"unsupported encoding {encoding!r}"))
    # newline="" lets the csv module handle quoted line breaks itself
    handle = path.open("r", encoding=encoding, newline="", errors="strict")
    reader = csv.reader(handle)
    try:
        header = next(reader)
    except StopIteration:
        handle.close()
        raise ReadError(Problem(str(path), 1, "-", "empty file (no header)")) from None
    except UnicodeDecodeError as exc:
        handle.close()
        raise ReadError(Problem(str(path), 1, "-", f"not valid {encoding}: {exc.reason}")) from None
    if header and header[0].startswith("\ufeff"):
        header[0] = header[0][1:]
    size = max(path.stat().st_size, 1)
    raw: BinaryIO = handle.buffer  # type: ignore[assignment]
    return Table(
        path,
        [h.strip() for h in header],
        _csv_rows(path, handle, reader, encoding),
        encoding,
        # the binary buffer's offset runs ahead of the parser by one read-ahead block only
        lambda: 0.0 if handle.closed else min(raw.tell() / size, 1.0),
        handle.close,
    )


def _csv_rows(
    path: Path, handle: TextIO, reader: Iterator[list[str]], encoding: str
) -> Iterator[tuple[int, list[str]]]:
    line = 1
    try:
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError as exc:
                raise ReadError(
                    Problem(str(path), line + 1, "-", f"not valid {encoding}: {exc.reason}")
                ) from None
            except csv.Error as exc:
                raise ReadError(
                    Problem(str(path), line + 1, "-", f"malformed CSV: {exc}")
                ) from None
            line = reader.line_num  # type: ignore[attr-defined]
            yield line, row
    finally:
        handle.close()


def _open_xlsx(path: Path) -> Table:
    try:
        workbook = python_calamine.CalamineWorkbook.from_path(str(path))
        sheet = workbook.get_sheet_by_index(0)
        rows = sheet.iter_rows()
        header = [_cell(c).strip() for c in next(rows)]
    except StopIteration:
        raise ReadError(Problem(str(path), 1, "-", "empty workbook (no header)")) from None
    except Exception as exc:  # calamine raises several unrelated types for broken files
        raise ReadError(
            Problem(str(path), 0, "-", f"not a readable .xlsx workbook: {exc}")
        ) from None

    height = max(int(getattr(sheet, "height", 0) or 0), 1)
    done = [0]

    def cells() -> Iterator[tuple[int, list[str]]]:
        for line, row in enumerate(rows, start=2):
            done[0] = line
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
