"""Write a synthetic county as export files: CSV (UTF-8 or GB 18030) or XLSX.

Rows are streamed from the generator straight into the file, so the size of a
county is bounded by disk, not memory. With Chinese headers, coded values are
written as their Chinese labels too (男/女, 是/否, 高一 …), as a school's own
spreadsheet would have them; the column and vocabulary definitions are the
ones the node's ingest reads (``fedscreen.screening.exports``).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import xlsxwriter

from fedscreen.errors import ConfigError
from fedscreen.screening import exports
from fedscreen.synth.generator import County, Row

__all__ = [
    "ENCODINGS",
    "FORMATS",
    "HEADERS",
    "XLSX_MAX_ROWS",
    "ExportSummary",
    "WrittenFile",
    "write_export",
    "write_table",
]

FORMATS: Final = ("csv", "xlsx")
ENCODINGS: Final = ("utf-8", "gb18030")
HEADERS: Final = ("en", "zh")
#: data rows one XLSX sheet can hold (Excel's 1,048,576 rows, less the header)
XLSX_MAX_ROWS: Final = 1_048_575

#: the vocabulary of each coded column; a column not listed holds free values
_VOCABULARIES: Final[dict[str, dict[str, str]]] = {
    "school_type": exports.SCHOOL_TYPES,
    "location": exports.LOCATIONS,
    "grade": exports.GRADES,
    "sex": exports.SEXES,
    "boarding": exports.YES_NO,
    "left_behind": exports.YES_NO,
    "single_parent": exports.YES_NO,
    "economic_hardship": exports.YES_NO,
    "participation": exports.PARTICIPATION,
    "mode": exports.MODES,
    "consent": exports.YES_NO,
    "risk_factors": exports.RISK_FACTORS,
    "warning_level": exports.WARNING_LEVELS,
    "warning_status": exports.WARNING_STATUSES,
    "referred": exports.YES_NO,
    "referral_visited": exports.YES_NO,
    "plan_status": exports.PLAN_STATUSES,
    "counselling_room": exports.YES_NO,
}
#: columns holding several codes joined by ";"
_MULTI_VALUED: Final = frozenset({"risk_factors"})
#: columns holding digit strings whose leading zeros matter
_TEXT_COLUMNS: Final = frozenset(f"{code}_items" for code in exports.INSTRUMENTS)


@dataclass(frozen=True)
class WrittenFile:
    """One file written, and how many data rows (not counting the header) it holds."""

    path: Path
    rows: int


@dataclass(frozen=True)
class ExportSummary:
    """What ``write_export`` wrote: the screening file(s) and the school table."""

    screenings: tuple[WrittenFile, ...]
    schools: WrittenFile

    @property
    def screening_rows(self) -> int:
        """Screening rows over all screening files."""
        return sum(f.rows for f in self.screenings)


def write_export(
    county: County,
    out_dir: Path | str,
    *,
    fmt: str = "csv",
    encoding: str = "utf-8",
    headers: str = "en",
    per_school: bool = False,
) -> ExportSummary:
    """Write ``screenings.<ext>`` (or one ``screenings_<school_id>.<ext>`` per school) and
    ``schools.<ext>`` into ``out_dir``, creating it if needed.

    Raises ``ConfigError`` for an unknown format, encoding or header language, for XLSX with
    an encoding other than UTF-8 (an XLSX file is always UTF-8 inside), and for an XLSX file
    that would exceed one sheet's rows.
    """
    _check_options(fmt, encoding, headers)
    largest = (
        max((s.students for s in county.schools), default=0) if per_school else county.students
    )
    if fmt == "xlsx" and largest > XLSX_MAX_ROWS:
        raise ConfigError(
            f"{largest:,} rows do not fit one XLSX sheet ({XLSX_MAX_ROWS:,} at most): "
            "use --format csv or --per-school"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    options = {"fmt": fmt, "encoding": encoding, "headers": headers}
    screening_files: list[WrittenFile] = []
    if per_school:
        for school in county.schools:
            path = out / f"screenings_{school.school_id}.{fmt}"
            rows = write_table(
                path, exports.SCREENING_COLUMNS, county.screenings(school), **options
            )
            screening_files.append(WrittenFile(path, rows))
    else:
        path = out / f"screenings.{fmt}"
        rows = write_table(path, exports.SCREENING_COLUMNS, county.screenings(), **options)
        screening_files.append(WrittenFile(path, rows))
    path = out / f"schools.{fmt}"
    rows = write_table(path, exports.SCHOOL_COLUMNS, county.school_table(), **options)
    return ExportSummary(tuple(screening_files), WrittenFile(path, rows))


def write_table(
    path: Path,
    columns: tuple[exports.Column, ...],
    rows: Iterable[Row],
    *,
    fmt: str = "csv",
    encoding: str = "utf-8",
    headers: str = "en",
) -> int:
    """Write one table (header, then ``rows`` in ``columns`` order); returns the data rows."""
    _check_options(fmt, encoding, headers)
    header = [c.zh if headers == "zh" else c.key for c in columns]
    counted = _Counted(rows)
    data: Iterable[Row | list[str | int]] = counted
    if headers == "zh":
        data = map(_translator(columns), counted)
    if fmt == "csv":
        # newline="" lets the csv module write its own \r\n line ends (RFC 4180)
        with path.open("w", encoding=encoding, newline="", buffering=1 << 20) as stream:
            writer = csv.writer(stream)
            writer.writerow(header)
            writer.writerows(data)
    else:
        _write_xlsx(path, columns, header, data)
    return counted.count


def _check_options(fmt: str, encoding: str, headers: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if encoding not in ENCODINGS:
        raise ConfigError(f"unknown encoding {encoding!r} (choose from {', '.join(ENCODINGS)})")
    if headers not in HEADERS:
        raise ConfigError(f"unknown header language {headers!r} (choose from {', '.join(HEADERS)})")
    if fmt == "xlsx" and encoding != "utf-8":
        raise ConfigError(
            f"--encoding {encoding} applies to CSV only: XLSX files are always UTF-8 inside"
        )


def _write_xlsx(
    path: Path,
    columns: tuple[exports.Column, ...],
    header: list[str],
    rows: Iterable[Row | list[str | int]],
) -> None:
    # constant_memory flushes each row as it is written: memory stays flat for any size
    workbook = xlsxwriter.Workbook(str(path), {"constant_memory": True})
    try:
        sheet = workbook.add_worksheet(
            "screenings" if columns is exports.SCREENING_COLUMNS else "schools"
        )
        text = workbook.add_format({"num_format": "@"})
        for index, column in enumerate(columns):
            if column.key in _TEXT_COLUMNS:
                # answers are written as strings (leading zeros kept); the text format also
                # keeps them text if someone retypes a cell in Excel
                sheet.set_column(index, index, 14, text)
        sheet.write_row(0, 0, header)
        # typed writes, empty cells skipped: the generic write() tests every string for
        # formulas and URLs, which costs more than generating the row
        write_string, write_number = sheet.write_string, sheet.write_number
        for number, row in enumerate(rows, start=1):
            for col, value in enumerate(row):
                if isinstance(value, int):
                    write_number(number, col, value)
                elif value:
                    write_string(number, col, value)
    finally:
        workbook.close()


class _Counted(Iterator[Row]):
    """Pass rows through, counting them (the writers consume iterators in C)."""

    def __init__(self, rows: Iterable[Row]) -> None:
        self._rows = iter(rows)
        self.count = 0

    def __next__(self) -> Row:
        row = next(self._rows)
        self.count += 1
        return row


def _translator(columns: tuple[exports.Column, ...]) -> Callable[[Row], list[str | int]]:
    """A function turning a row of English codes into one of Chinese labels."""
    single = [
        (i, _VOCABULARIES[c.key])
        for i, c in enumerate(columns)
        if c.key in _VOCABULARIES and c.key not in _MULTI_VALUED
    ]
    multi = [(i, _VOCABULARIES[c.key]) for i, c in enumerate(columns) if c.key in _MULTI_VALUED]

    def translate(row: Row) -> list[str | int]:
        out = list(row)
        for i, vocabulary in single:
            value = out[i]
            if value != "":
                out[i] = vocabulary[str(value)]
        for i, vocabulary in multi:
            value = out[i]
            if value != "":
                out[i] = ";".join(vocabulary[code] for code in str(value).split(";"))
        return out

    return translate
