"""Any file is loaded or rejected with an IngestError — nothing else — in bounded time and
memory, and a rejection writes nothing and never repeats an identifying cell."""

from __future__ import annotations

import itertools
import time
import tracemalloc
from pathlib import Path

import xlsxwriter
from exportrows import SCREENING_KEYS, screening_row, write_csv
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedscreen.errors import IngestError
from fedscreen.node import store
from fedscreen.node.home import NodeConfig
from fedscreen.node.ingest import LoadResult, ingest_file

NAME, ID_NUMBER, PHONE = "欧阳娜娜", "110101200801010011", "13912345678"
SECRETS = (NAME, ID_NUMBER, PHONE)
#: generous for files of a few kilobytes; what matters is that nothing grows with the input
MAX_SECONDS = 10.0
MAX_TRACED_BYTES = 64 << 20
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_names = itertools.count()


def _ingest(config: NodeConfig, path: Path, encoding: str | None = None) -> None:
    """Ingest ``path``: a load, or an IngestError that wrote nothing and quotes no secret."""
    conn = store.connect(config.database)
    try:
        before = conn.execute("SELECT COUNT(*) FROM ingest_batch").fetchone()[0]
        tracemalloc.start()
        start = time.monotonic()
        outcome: LoadResult | IngestError
        try:
            outcome = ingest_file(conn, config, path, encoding=encoding)
        except IngestError as exc:
            outcome = exc
        finally:
            elapsed = time.monotonic() - start
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        if isinstance(outcome, IngestError):
            text = str(outcome)
            assert not [s for s in SECRETS if s in text], text
            assert outcome.total >= len(outcome.problems) > 0
            assert conn.execute("SELECT COUNT(*) FROM ingest_batch").fetchone()[0] == before
        else:
            assert isinstance(outcome, LoadResult)
        assert elapsed < MAX_SECONDS
        assert peak < MAX_TRACED_BYTES
        assert not conn.in_transaction
    finally:
        conn.close()


def _valid_csv(tmp_path: Path, encoding: str, headers: str) -> bytes:
    rows = [
        screening_row(n, name=NAME, id_number=ID_NUMBER, guardian_phone=PHONE) for n in range(1, 6)
    ]
    path = write_csv(tmp_path / "valid.csv", rows, encoding=encoding, headers=headers)
    return path.read_bytes()


@SETTINGS
@given(content=st.binary(max_size=4096), suffix=st.sampled_from([".csv", ".xlsx"]))
def test_arbitrary_bytes(
    node_home: NodeConfig, tmp_path: Path, content: bytes, suffix: str
) -> None:
    path = tmp_path / f"f{next(_names)}{suffix}"
    path.write_bytes(content)
    _ingest(node_home, path)


@SETTINGS
@given(
    data=st.data(),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "gb18030"]),
    headers=st.sampled_from(["en", "zh"]),
    given_encoding=st.sampled_from([None, "utf-8", "gb18030"]),
)
def test_near_valid_csv(
    node_home: NodeConfig,
    tmp_path: Path,
    data: st.DataObject,
    encoding: str,
    headers: str,
    given_encoding: str | None,
) -> None:
    """A valid export, then a few edits: bytes inserted, deleted or replaced anywhere."""
    content = bytearray(_valid_csv(tmp_path, encoding, headers))
    for _ in range(data.draw(st.integers(0, 4))):
        at = data.draw(st.integers(0, len(content)))
        edit = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        junk = data.draw(
            st.one_of(
                st.binary(min_size=1, max_size=8),
                st.sampled_from([b",", b'"', b"\r", b"\n", b"\x00", b"\xff", b"\x81\x20"]),
            )
        )
        if edit == "insert":
            content[at:at] = junk
        elif edit == "delete":
            del content[at : at + len(junk)]
        else:
            content[at : at + len(junk)] = junk
    path = tmp_path / f"n{next(_names)}.csv"
    path.write_bytes(bytes(content))
    _ingest(node_home, path, encoding=given_encoding)


_cell_text = st.one_of(
    st.text(max_size=20),
    st.sampled_from([NAME, ID_NUMBER, PHONE, "", "\x00", "高四", "=1+1", "9" * 30]),
)


@SETTINGS
@given(
    edits=st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, len(SCREENING_KEYS) + 2), _cell_text),
        max_size=6,
    ),
    numbers=st.lists(st.tuples(st.integers(1, 5), st.integers(0, 40), st.floats()), max_size=3),
)
def test_near_valid_xlsx(
    node_home: NodeConfig,
    tmp_path: Path,
    edits: list[tuple[int, int, str]],
    numbers: list[tuple[int, int, float]],
) -> None:
    """A valid workbook with cells overwritten (text, numbers, cells beyond the header)."""
    path = tmp_path / f"x{next(_names)}.xlsx"
    book = xlsxwriter.Workbook(str(path), {"strings_to_numbers": False})
    sheet = book.add_worksheet()
    sheet.write_row(0, 0, SCREENING_KEYS)
    cells = {}
    for r in range(1, 6):
        row = screening_row(r, name=NAME, id_number=ID_NUMBER, guardian_phone=PHONE)
        for c, key in enumerate(SCREENING_KEYS):
            cells[r, c] = row[key]
    for r, c, text in edits:
        cells[r, c] = text
    for (r, c), value in cells.items():
        sheet.write_string(r, c, value)
    for r, c, number in numbers:
        if number == number and abs(number) != float("inf"):
            sheet.write_number(r, c, number)
    book.close()
    _ingest(node_home, path)
