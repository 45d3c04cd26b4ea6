"""Hostile and broken export files: each is rejected at its line, quickly, whole, and
without repeating a student's cells (issue 12)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
import xlsxwriter
from exportrows import SCREENING_KEYS, screening_row, write_csv

from fedscreen.errors import IngestError
from fedscreen.node import ingest, limits, parsing, reader, store
from fedscreen.node.home import NodeConfig
from fedscreen.node.ingest import ingest_file, ingest_paths
from fedscreen.node.limits import MAX_FIELD_CHARS, MAX_LINE_BYTES
from fedscreen.screening import exports

#: identifying cells that must never appear in a message
NAME, ID_NUMBER, PHONE = "欧阳娜娜", "110101200801010011", "13912345678"


def _rows(count: int, **overrides: str) -> list[dict[str, str]]:
    return [
        screening_row(n, name=NAME, id_number=ID_NUMBER, guardian_phone=PHONE, **overrides)
        for n in range(1, count + 1)
    ]


def _reject(config: NodeConfig, path: Path, *, encoding: str | None = None) -> IngestError:
    """Ingest ``path``; it must be rejected, with nothing written."""
    conn = store.connect(config.database)
    try:
        with pytest.raises(IngestError) as caught:
            ingest_file(conn, config, path, encoding=encoding)
        assert not conn.in_transaction
        assert conn.execute("SELECT COUNT(*) FROM screening").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM ingest_batch").fetchone()[0] == 0
    finally:
        conn.close()
    text = str(caught.value)
    for secret in (NAME, ID_NUMBER, PHONE):
        assert secret not in text
    return caught.value


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\r\n")


def test_50_mb_line_without_separators(node_home: NodeConfig, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "s.csv", _rows(3))
    header, first, *_ = _lines(path)
    path.write_bytes(header + b"\r\n" + first + b"\r\n" + b"x" * (50 << 20) + b"\r\n")
    start = time.monotonic()
    error = _reject(node_home, path)
    assert time.monotonic() - start < 20
    assert f"{path}:3: -: line longer than {MAX_LINE_BYTES} bytes" in str(error)


@pytest.mark.parametrize("joiner", [b"", b" ", b"\x00"])
def test_file_whose_line_breaks_were_lost(
    node_home: NodeConfig, tmp_path: Path, joiner: bytes
) -> None:
    path = write_csv(tmp_path / "s.csv", _rows(5000))
    path.write_bytes(joiner.join(_lines(path)))
    error = _reject(node_home, path)
    assert error.total == 1
    assert f"{path}:1: -: line longer than" in str(error)


def test_carriage_returns_alone_are_line_breaks(node_home: NodeConfig, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "s.csv", _rows(5))
    path.write_bytes(path.read_bytes().replace(b"\r\n", b"\r"))
    loaded, rejected = ingest_paths(node_home, [path])
    assert not rejected
    assert loaded[0].rows == 5


@pytest.mark.parametrize(
    ("encoding", "given", "bad"),
    [
        ("utf-8", "utf-8", b"\xff"),
        ("utf-8-sig", "utf-8-sig", b"\xe4\xb8"),
        ("utf-8-sig", None, b"\xed\xa0\x80"),
        ("gb18030", "gb18030", b"\x81\x20"),
    ],
)
def test_undecodable_byte_is_reported_at_its_line(
    node_home: NodeConfig, tmp_path: Path, encoding: str, given: str | None, bad: bytes
) -> None:
    path = write_csv(tmp_path / "s.csv", _rows(300), encoding=encoding, headers="zh")
    lines = _lines(path)
    # line 250 of the file: far beyond any read-ahead block from the lines around it
    lines[249] = lines[249].replace(b"S10-3", b"S10" + bad + b"3")
    path.write_bytes(b"\r\n".join(lines))
    error = _reject(node_home, path, encoding=given)
    assert [p.line for p in error.problems] == [250]
    assert f"not valid {given or encoding}" in error.problems[0].reason


def test_nul_and_control_characters_in_any_field(node_home: NodeConfig, tmp_path: Path) -> None:
    rows = _rows(6)
    rows[1]["class_id"] = "S10\x003"
    rows[3]["risk_factors"] = "academic\x1b"
    rows[4]["name"] = NAME + "\x07"  # an identifying column: named, never quoted
    rows[5]["notes"] = "ok\ttabs are fine"
    path = write_csv(tmp_path / "s.csv", rows, keys=[*SCREENING_KEYS, "notes"])
    error = _reject(node_home, path)
    assert [(p.line, p.column, p.reason) for p in error.problems] == [
        (3, "class_id", "control character U+0000 in the field"),
        (5, "risk_factors", "control character U+001B in the field"),
        (6, "name", "control character U+0007 in the field"),
    ]


def test_line_break_inside_a_quoted_cell_is_rejected(node_home: NodeConfig, tmp_path: Path) -> None:
    rows = _rows(3)
    rows[1]["notes"] = "first\nsecond"
    error = _reject(node_home, write_csv(tmp_path / "s.csv", rows, keys=[*SCREENING_KEYS, "notes"]))
    assert [(p.line, p.column) for p in error.problems] == [(3, "notes")]


@pytest.mark.parametrize(("extra", "reason"), [(b",x", "39 cells"), (b",", "39 cells")])
def test_row_longer_than_the_header(
    node_home: NodeConfig, tmp_path: Path, extra: bytes, reason: str
) -> None:
    path = write_csv(tmp_path / "s.csv", _rows(4))
    lines = _lines(path)
    lines[3] += extra
    path.write_bytes(b"\r\n".join(lines))
    error = _reject(node_home, path)
    assert str(error.problems[0]) == f"{path}:4: -: {reason}, but the header has 38 columns"


def test_shifted_rows_never_quote_identifiers(node_home: NodeConfig, tmp_path: Path) -> None:
    """A missing or an extra cell moves a name or phone number into another column."""
    path = write_csv(tmp_path / "s.csv", _rows(4))
    lines = _lines(path)
    lines[1] = b"1," + lines[1]  # a row number in front
    lines[2] = lines[2].replace(b"G", b"", 1).split(b",", 1)[1]  # the student number lost
    path.write_bytes(b"\r\n".join(lines))
    error = _reject(node_home, path)
    assert [p.line for p in error.problems] == [2, 3]


def test_mislabelled_columns_never_quote_identifiers(node_home: NodeConfig, tmp_path: Path) -> None:
    """The header says class and age where the file holds the name and the phone."""
    keys = list(SCREENING_KEYS)
    a, b, c, d = (keys.index(k) for k in ("name", "class_id", "guardian_phone", "age"))
    keys[a], keys[b], keys[c], keys[d] = keys[b], keys[a], keys[d], keys[c]
    path = write_csv(tmp_path / "s.csv", _rows(2), keys=keys)
    # swap the header names back, so the values sit under the wrong columns
    lines = _lines(path)
    names = lines[0].split(b",")
    names[a], names[b], names[c], names[d] = names[b], names[a], names[d], names[c]
    lines[0] = b",".join(names)
    path.write_bytes(b"\r\n".join(lines))
    error = _reject(node_home, path)
    assert "age" in {p.column for p in error.problems}


def test_header_that_swallowed_a_row_does_not_repeat_it(
    node_home: NodeConfig, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "s.csv", _rows(3))
    data = path.read_bytes()
    path.write_bytes(data.replace(b"\r\n", b",", 1))  # the header's line break lost
    _reject(node_home, path)


def test_oversize_field_names_its_column(node_home: NodeConfig, tmp_path: Path) -> None:
    rows = _rows(3)
    rows[2]["notes"] = "x" * (MAX_FIELD_CHARS + 1)
    error = _reject(node_home, write_csv(tmp_path / "s.csv", rows, keys=[*SCREENING_KEYS, "notes"]))
    assert str(error.problems[0]).endswith(
        f":4: notes: field longer than {MAX_FIELD_CHARS} characters"
    )


def test_unclosed_quote_stops_at_its_line(node_home: NodeConfig, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "s.csv", _rows(3))
    lines = _lines(path)
    lines[2] = b'"' + lines[2]
    path.write_bytes(b"\r\n".join(lines) + b"\r\n" + b"a,b\r\n" * 100_000)
    error = _reject(node_home, path)
    assert error.problems[-1].line == 3
    assert "a quote not closed?" in error.problems[-1].reason


def test_too_many_columns_in_the_header(node_home: NodeConfig, tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text(",".join(["student_no"] + [f"c{i}" for i in range(300)]) + "\n1\n")
    error = _reject(node_home, path)
    assert str(error.problems[0]) == f"{path}:1: -: 301 columns; at most {limits.MAX_COLUMNS}"


def test_too_many_lines(
    node_home: NodeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader, "MAX_ROWS", 10)
    path = write_csv(tmp_path / "s.csv", _rows(8))
    path.write_bytes(path.read_bytes() + b"\r\n" * 1000)  # blank lines count too
    error = _reject(node_home, path)
    assert str(error.problems[-1]).startswith(f"{path}:12: -: more than 10 lines")


def test_exactly_the_limit_loads(
    node_home: NodeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file of exactly ``MAX_ROWS`` rows, ending in a line break, is not too long."""
    monkeypatch.setattr(reader, "MAX_ROWS", 10)
    path = write_csv(tmp_path / "s.csv", _rows(10))
    assert path.read_bytes().endswith(b"\n")
    loaded, rejected = ingest_paths(node_home, [path])
    assert not rejected
    assert loaded[0].rows == 10


def test_problems_are_capped_and_checking_stops(
    node_home: NodeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parsing, "MAX_PROBLEMS", 300)
    monkeypatch.setattr(ingest, "BLOCK_ROWS", 100)
    path = write_csv(tmp_path / "s.csv", _rows(1))
    path.write_bytes(path.read_bytes() + b"x\r\n" * 200_000)
    start = time.monotonic()
    error = _reject(node_home, path)
    assert time.monotonic() - start < 10
    assert len(error.problems) == node_home.max_problems + 1
    assert "checking stopped here after 300 problems" in error.problems[-1].reason
    assert error.total <= 300 + 100 + 1
    assert f"... and {error.total - len(error.problems)} more problems" in str(error)


def test_dead_end_shown_after_the_first_problems(node_home: NodeConfig, tmp_path: Path) -> None:
    """A limit met after many bad rows is still shown (it is why checking stopped)."""
    path = write_csv(tmp_path / "s.csv", _rows(100, sex="?"))
    path.write_bytes(path.read_bytes() + b"x" * (MAX_LINE_BYTES + 10))
    error = _reject(node_home, path)
    assert error.total == 101
    assert error.problems[-1].line == 102
    assert "line longer than" in error.problems[-1].reason


def test_worker_path_rejects_the_same_way(
    node_home: NodeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "WORKER_MIN_BYTES", 0)
    monkeypatch.setattr(ingest, "BLOCK_ROWS", 7)
    rows = _rows(60)
    rows[20]["class_id"] = "a\x00"
    path = write_csv(tmp_path / "s.csv", rows)
    path.write_bytes(path.read_bytes() + b"y" * (MAX_LINE_BYTES + 1) + b"\r\n")
    error = _reject(node_home, path)
    assert [(p.line, p.column) for p in error.problems] == [(22, "class_id"), (62, "-")]


def _xlsx(path: Path, rows: list[dict[str, str]], *, top: int = 0) -> Path:
    book = xlsxwriter.Workbook(str(path))
    sheet = book.add_worksheet()
    columns = {c.key: c.zh for c in exports.SCREENING_COLUMNS}
    sheet.write_row(top, 0, [columns[k] for k in SCREENING_KEYS])
    for r, row in enumerate(rows, start=top + 1):
        sheet.write_row(r, 0, [row[k] for k in SCREENING_KEYS])
    book.close()
    return path


def test_xlsx_lines_are_the_sheet_rows(node_home: NodeConfig, tmp_path: Path) -> None:
    rows = _rows(5)
    rows[3]["sex"] = "?"
    rows[1]["class_id"] = "S10\x003"
    path = _xlsx(tmp_path / "s.xlsx", rows, top=2)  # two empty rows above the header
    error = _reject(node_home, path)
    assert [(p.line, p.column) for p in error.problems] == [(5, "class_id"), (7, "sex")]


def test_xlsx_too_large_unzipped(
    node_home: NodeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader, "MAX_XLSX_BYTES", 20_000)
    error = _reject(node_home, _xlsx(tmp_path / "s.xlsx", _rows(50)))
    assert "workbook larger than" in str(error)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04broken", b"\x00" * 1000])
def test_xlsx_that_is_not_a_workbook(node_home: NodeConfig, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "s.xlsx"
    path.write_bytes(content)
    assert "not a readable .xlsx workbook" in str(_reject(node_home, path))


def test_shown_quotes_codes_and_numbers_only() -> None:
    assert limits.shown("S13") == "'S13'"
    assert limits.shown("2024/10/08") == "'2024/10/08'"
    for value in (NAME, ID_NUMBER, PHONE, "zhangsan", "Li Na", "x" * 13, "高四"):
        assert limits.shown(value) == f"a value of {len(value)} characters"


def test_lock_is_free_after_a_rejection(node_home: NodeConfig, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "s.csv", _rows(2))
    path.write_bytes(path.read_bytes() + b"z" * (MAX_LINE_BYTES + 1))
    ingest_paths(node_home, [path])
    other = sqlite3.connect(node_home.database, timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        other.close()


@pytest.mark.parametrize(
    ("row", "column", "reason"),
    [(1_048_575, 0, "the sheet spans 1048576 rows"),
     (899_999, 3, "the sheet spans 900000 rows"),
     (3, 16_383, "16384 columns; at most 256")],
)  # fmt: skip
def test_xlsx_with_one_far_cell_is_refused_before_it_is_loaded(
    node_home: NodeConfig, tmp_path: Path, row: int, column: int, reason: str
) -> None:
    """A 15 KB workbook with one cell at row 1,048,576 (or column XFD) made the reader
    allocate the whole range: 1.3 GB, or an abort in the XLSX library."""
    path = _xlsx(tmp_path / "s.xlsx", _rows(5))
    book = xlsxwriter.Workbook(str(tmp_path / "far.xlsx"))
    sheet = book.add_worksheet()
    columns = {c.key: c.zh for c in exports.SCREENING_COLUMNS}
    sheet.write_row(0, 0, [columns[k] for k in SCREENING_KEYS])
    sheet.write(row, column, 1)
    book.close()
    assert path.stat().st_size < 100_000
    start = time.monotonic()
    error = _reject(node_home, tmp_path / "far.xlsx")
    assert time.monotonic() - start < 5
    assert reason in str(error)


def test_a_device_is_not_a_regular_file(node_home: NodeConfig) -> None:
    error = _reject(node_home, Path("/dev/zero"))
    assert str(error.problems[0]) == "/dev/zero:0: -: not a regular file"


@pytest.mark.parametrize("age", ["٩", "１３", "1_3", "+-13"])
def test_whole_numbers_are_ascii_digits(node_home: NodeConfig, tmp_path: Path, age: str) -> None:
    path = write_csv(tmp_path / "s.csv", _rows(3, age=age))
    error = _reject(node_home, path)
    assert "is not a whole number" in str(error)
