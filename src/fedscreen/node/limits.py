"""The limits on an export file, and the checks every row passes before its fields are read.

Any input, however broken, is rejected with ``file:line: column: reason`` in bounded
time and memory, and never makes a message repeat what a student's cells hold:

* a physical line (CSV) or a record (quoted line breaks included) is at most
  ``MAX_LINE_BYTES``; the first longer one rejects the file and reading stops there,
  so a file whose line breaks were lost costs one line's worth of memory;
* a field is at most ``MAX_FIELD_CHARS``, a header at most ``MAX_COLUMNS`` cells,
  a file at most ``MAX_ROWS`` lines after the header (blank ones included) and an
  XLSX workbook at most ``MAX_XLSX_BYTES`` once unzipped and ``MAX_XLSX_CELLS`` in its
  first sheet's extent (checked in the sheet's XML before the sheet is loaded);
* a row has exactly as many cells as the header, and no field holds a control
  character (NUL and the C0 set except tab; so also no line break inside a cell);
* after ``MAX_PROBLEMS`` problems checking stops (the file is rejected anyway).

A cell's content appears in a message only if it looks like a code or a number
(``shown``): identifying columns are never quoted, and a malformed row can put a
name or a phone number in any column.
"""

from __future__ import annotations

import re
from typing import Final

from fedscreen.errors import Problem

#: bytes of one physical CSV line without its line break; also of one record
MAX_LINE_BYTES: Final = 1 << 20
#: characters of one field (cell), after decoding
MAX_FIELD_CHARS: Final = 1 << 16
#: cells of the header row
MAX_COLUMNS: Final = 256
#: lines (CSV) or rows (XLSX) after the header, blank ones included
MAX_ROWS: Final = 1_000_000
#: bytes of an XLSX workbook's parts once unzipped (the reader holds the sheet in memory)
MAX_XLSX_BYTES: Final = 128 << 20
#: cells of the first sheet's extent (last row × last column its cells name): the reader
#: fills every cell up to there, so one far cell (XFD1048576) would cost gigabytes;
#: 4 million cells is 90,000 rows of a 45-column export, more than MAX_XLSX_BYTES holds
MAX_XLSX_CELLS: Final = 4_000_000
#: problems counted before checking stops; the first ``max_problems`` (config) are shown
MAX_PROBLEMS: Final = 10_000
#: rows of a school table (one per school and grade)
MAX_SCHOOL_ROWS: Final = 100_000

#: NUL and the C0 control characters except tab (line breaks inside a cell included)
CONTROL: Final = re.compile("[\x00-\x08\x0a-\x1f]")
#: what a quoted value may look like: a code, a number, a date
_SHOWABLE: Final = re.compile(r"[0-9A-Za-z./:+-]{1,12}")
#: a number this long may be a phone, ID or student number; a word this long, a name
_IDENTIFYING: Final = re.compile(r"[0-9]{5}|[A-Za-z]{4}")
#: the shape of a Chinese personal name (two to four characters, maybe a middle dot)
_PERSONAL_NAME: Final = re.compile(r"[\u3400-\u9fff·]{2,5}")


def shown(value: str) -> str:
    """``value`` quoted for a message if it looks like a code, a number or a date; else
    only its length. Names (in any script), phone, ID and student numbers never pass."""
    if _SHOWABLE.fullmatch(value) and not _IDENTIFYING.search(value):
        return repr(value)
    return f"a value of {len(value)} characters"


def column_name(header: list[str], index: int) -> str:
    """A header cell as a column name in messages, or ``#n`` when it is empty, long, or
    shaped like a personal name or a long number (a header line that swallowed a data
    row, when a line break was lost, must not repeat a student's cells)."""
    name = header[index] if index < len(header) else ""
    if (
        not name
        or len(name) > 40
        or CONTROL.search(name)
        or _PERSONAL_NAME.fullmatch(name)
        or re.search(r"[0-9]{5}", name)
    ):
        return f"#{index + 1}"
    return name


def column_names(header: list[str], index: dict[str, int]) -> list[str]:
    """For each header cell, its column key if it is a known column, else ``column_name``."""
    keys = {i: key for key, i in index.items()}
    return [keys.get(i) or column_name(header, i) for i in range(len(header))]


def check_cells(
    path: str, line: int, cells: list[str], names: list[str], problems: list[Problem]
) -> bool:
    """Shape and characters of one row; ``False`` (and problems) if its fields must not
    be read: the wrong number of cells (a shifted row), a control character or an
    oversize field. No cell's content enters a message here."""
    if len(cells) != len(names):
        problems.append(
            Problem(path, line, "-", f"{len(cells)} cells, but the header has {len(names)} columns")
        )
        return False
    ok = True
    joined = "\t".join(cells)
    if CONTROL.search(joined) or len(joined) > MAX_FIELD_CHARS:
        for i, cell in enumerate(cells):
            if len(cell) > MAX_FIELD_CHARS:
                reason = f"field longer than {MAX_FIELD_CHARS} characters"
            elif (found := CONTROL.search(cell)) is not None:
                reason = f"control character U+{ord(found[0]):04X} in the field"
            else:
                continue
            problems.append(Problem(path, line, names[i], reason))
            ok = False
    return ok
