"""Loading exports: encodings, header languages, XLSX, idempotence, replacement, bounding."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import xlsxwriter
from exportrows import SCREENING_KEYS, school_row, screening_row, write_csv

from fedscreen.node import ingest, store
from fedscreen.node.home import NodeConfig
from fedscreen.node.ingest import ingest_file, ingest_paths
from fedscreen.screening import exports


def _db(config: NodeConfig) -> sqlite3.Connection:
    return store.connect(config.database)


def _scalar(config: NodeConfig, sql: str) -> object:
    conn = _db(config)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("encoding", "headers"),
    [("utf-8", "en"), ("utf-8-sig", "zh"), ("gb18030", "zh"), ("gb18030", "en"), ("utf-8", "zh")],
)
def test_encodings_and_header_languages(
    node_home: NodeConfig, tmp_path: Path, encoding: str, headers: str
) -> None:
    rows = [
        screening_row(
            n,
            risk_factors="学业;家庭变故",
            warning_level="黄",
            warning_status="在册",
            sex="女",
            grade="高一",
        )
        for n in range(1, 21)
    ]
    path = write_csv(tmp_path / "s.csv", rows, encoding=encoding, headers=headers)
    loaded, rejected = ingest_paths(node_home, [path])
    assert not rejected, rejected
    assert loaded[0].rows == 20
    conn = _db(node_home)
    try:
        row = conn.execute(
            "SELECT sex, grade, grade_band, warning_level, "
            "risk_academic, risk_family, risk_bullying "
            "FROM screenings LIMIT 1"
        ).fetchone()
    finally:
        conn.close()
    assert row == ("F", "S10", "senior", "yellow", 1, 1, 0)


def test_explicit_wrong_encoding_is_a_clear_error(node_home: NodeConfig, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "g.csv", [screening_row(1)], encoding="gb18030", headers="zh")
    loaded, rejected = ingest_paths(node_home, [path], encoding="utf-8")
    assert not loaded
    assert "not valid utf-8" in str(rejected[0])


def test_xlsx_with_numbers_and_text(node_home: NodeConfig, tmp_path: Path) -> None:
    path = tmp_path / "s.xlsx"
    book = xlsxwriter.Workbook(str(path))
    sheet = book.add_worksheet()
    columns = {c.key: c.zh for c in exports.SCREENING_COLUMNS}
    sheet.write_row(0, 0, [columns[k] for k in SCREENING_KEYS])
    for r in range(1, 4):
        row = screening_row(r)
        for c, key in enumerate(SCREENING_KEYS):
            value = row[key]
            # Excel stores ages and totals as numbers; item strings must stay text
            if key in ("age", "phq9_total", "followups_done") and value:
                sheet.write_number(r, c, int(value))
            else:
                sheet.write_string(r, c, value)
    book.close()
    loaded, rejected = ingest_paths(node_home, [path])
    assert not rejected, rejected
    assert loaded[0].rows == 3


def test_xlsx_that_lost_leading_zeros_explains_why(node_home: NodeConfig, tmp_path: Path) -> None:
    path = tmp_path / "z.xlsx"
    book = xlsxwriter.Workbook(str(path))
    sheet = book.add_worksheet()
    sheet.write_row(0, 0, SCREENING_KEYS)
    row = screening_row(1)
    for c, key in enumerate(SCREENING_KEYS):
        if key == "phq9_items":
            sheet.write_number(1, c, int(row[key]))  # "012100120" -> 12100120
        else:
            sheet.write_string(1, c, row[key])
    book.close()
    _, rejected = ingest_paths(node_home, [path])
    assert "z.xlsx:2: phq9_items: 9 answers expected, got 8 (a spreadsheet may have dropped" in str(
        rejected[0]
    )


def test_same_file_twice_changes_nothing(node_home: NodeConfig, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "s.csv", [screening_row(n) for n in range(1, 11)])
    first, _ = ingest_paths(node_home, [path])
    version = _scalar(node_home, "SELECT value FROM meta WHERE key = 'data_version'")
    again, _ = ingest_paths(node_home, [path])
    assert first[0].status == "loaded"
    assert again[0].status == "unchanged"
    assert again[0].batch_id == first[0].batch_id
    assert _scalar(node_home, "SELECT COUNT(*) FROM screening") == 10
    assert _scalar(node_home, "SELECT COUNT(*) FROM ingest_batch") == 1
    assert _scalar(node_home, "SELECT value FROM meta WHERE key = 'data_version'") == version


def test_newer_export_replaces_the_school_year(node_home: NodeConfig, tmp_path: Path) -> None:
    old = write_csv(tmp_path / "v1.csv", [screening_row(n) for n in range(1, 11)])
    other_school = write_csv(
        tmp_path / "other.csv",
        [screening_row(n, school_id="1301020002") for n in range(100, 105)],
    )
    new = write_csv(tmp_path / "v2.csv", [screening_row(n) for n in range(1, 8)])
    ingest_paths(node_home, [old, other_school])
    loaded, rejected = ingest_paths(node_home, [new])
    assert not rejected
    assert loaded[0].replaced == (1,)
    assert _scalar(node_home, "SELECT COUNT(*) FROM screenings WHERE school_id = '1301020001'") == 7
    assert _scalar(node_home, "SELECT COUNT(*) FROM screenings WHERE school_id = '1301020002'") == 5
    assert _scalar(node_home, "SELECT replaced_by FROM ingest_batch WHERE batch_id = 1") == 3
    assert _scalar(node_home, "SELECT value FROM meta WHERE key = 'data_version'") == "3"


def test_rejected_replacement_keeps_the_old_rows(node_home: NodeConfig, tmp_path: Path) -> None:
    old = write_csv(tmp_path / "v1.csv", [screening_row(n) for n in range(1, 11)])
    bad = write_csv(tmp_path / "v2.csv", [screening_row(1), screening_row(2, sex="?")])
    ingest_paths(node_home, [old])
    _, rejected = ingest_paths(node_home, [bad])
    assert rejected
    assert _scalar(node_home, "SELECT COUNT(*) FROM screenings") == 10
    assert _scalar(node_home, "SELECT COUNT(*) FROM ingest_batch") == 1


def test_transferred_student_counts_once_with_the_latest_screening(
    node_home: NodeConfig, tmp_path: Path
) -> None:
    first = write_csv(tmp_path / "a.csv", [screening_row(1, screening_date="2024-09-20")])
    second = write_csv(
        tmp_path / "b.csv",
        [
            screening_row(
                1,
                school_id="1301020002",
                screening_date="2024-11-02",
                phq9_items="333333333",
                phq9_total="27",
            )
        ],
    )
    ingest_paths(node_home, [first, second])
    assert _scalar(node_home, "SELECT COUNT(*) FROM screening") == 2
    assert _scalar(node_home, "SELECT COUNT(*) FROM screenings") == 1
    assert _scalar(node_home, "SELECT phq9_band FROM screenings") == "severe"
    # correcting the later school's export to "absent" hands the bound back to the screening
    corrected = write_csv(
        tmp_path / "b2.csv",
        [
            screening_row(
                1,
                school_id="1301020002",
                participation="absent",
                screening_date="",
                mode="",
                phq9_items="",
                phq9_total="",
                gad7_items="",
                gad7_total="",
                mht_items="",
                mht_total="",
            )
        ],
    )
    ingest_paths(node_home, [corrected])
    assert _scalar(node_home, "SELECT COUNT(*) FROM screenings") == 1
    assert _scalar(node_home, "SELECT school_id FROM screenings") == "1301020001"


def test_school_table_load_and_replace(node_home: NodeConfig, tmp_path: Path) -> None:
    v1 = write_csv(tmp_path / "sch1.csv", [school_row(grade=g) for g in ("S10", "S11", "S12")])
    v2 = write_csv(
        tmp_path / "sch2.csv",
        [school_row(grade="S10", ft_teachers="2", pt_teachers="0", counselling_room="否")],
    )
    loaded, _ = ingest_paths(node_home, [v1])
    assert (loaded[0].kind, loaded[0].rows) == ("school", 3)
    loaded, _ = ingest_paths(node_home, [v2])
    assert loaded[0].replaced == (1,)
    assert _scalar(node_home, "SELECT COUNT(*) FROM school_grade") == 1
    assert _scalar(node_home, "SELECT ft_teachers || '/' || counselling_room FROM school") == "2/0"


def test_directory_loads_each_file_on_its_own(node_home: NodeConfig, tmp_path: Path) -> None:
    folder = tmp_path / "exports"
    folder.mkdir()
    write_csv(folder / "a.csv", [screening_row(1)])
    write_csv(
        folder / "b.csv", [screening_row(2, school_id="1301020002"), screening_row(3, sex="")]
    )
    write_csv(folder / "c.csv", [school_row()])
    (folder / "readme.pdf").write_bytes(b"%PDF")
    loaded, rejected = ingest_paths(node_home, [folder])
    assert [Path(r.path).name for r in loaded] == ["a.csv", "c.csv"]
    assert [Path(e.path).name for e in rejected] == ["b.csv"]


def test_unknown_kind_and_missing_file(node_home: NodeConfig, tmp_path: Path) -> None:
    odd = tmp_path / "odd.csv"
    odd.write_text("foo,bar\n1,2\n", encoding="utf-8")
    _, rejected = ingest_paths(node_home, [odd, tmp_path / "nope.csv", tmp_path / "x.docx"])
    messages = [str(e) for e in rejected]
    assert "neither a screening export" in messages[0]
    assert "no such file" in messages[1]
    assert "no such file" in messages[2]


def test_empty_file(node_home: NodeConfig, tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    header_only = write_csv(tmp_path / "h.csv", [screening_row(1)])
    header_only.write_text(
        header_only.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8"
    )
    _, rejected = ingest_paths(node_home, [empty, header_only])
    assert "empty file" in str(rejected[0])
    assert "no data rows" in str(rejected[1])


def test_ingest_file_keeps_the_connection_usable_after_rejection(
    node_home: NodeConfig, tmp_path: Path
) -> None:
    bad = write_csv(tmp_path / "bad.csv", [screening_row(1, sex="?")])
    good = write_csv(tmp_path / "good.csv", [screening_row(1)])
    conn = _db(node_home)
    try:
        with pytest.raises(Exception, match="rejected"):
            ingest_file(conn, node_home, bad)
        assert not conn.in_transaction
        assert ingest_file(conn, node_home, good).rows == 1
    finally:
        conn.close()


def test_large_file_path_parses_in_a_worker_process(
    node_home: NodeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker-process path (used for large files) loads and rejects exactly as in-process."""
    monkeypatch.setattr(ingest, "WORKER_MIN_BYTES", 0)
    monkeypatch.setattr(ingest, "BLOCK_ROWS", 7)  # many blocks, taken in turn from 2 workers
    good = write_csv(tmp_path / "good.csv", [screening_row(n) for n in range(1, 301)])
    rows = [screening_row(n) for n in range(1, 301)]
    rows[10] = screening_row(11, sex="?")
    rows[200] = screening_row(1)  # duplicate of line 2
    bad = write_csv(tmp_path / "bad.csv", rows)
    loaded, rejected = ingest_paths(node_home, [bad, good])
    assert [r.rows for r in loaded] == [300]
    messages = [str(p) for p in rejected[0].problems]
    assert any("bad.csv:12: sex:" in m for m in messages)
    assert any("bad.csv:202: student_no: same student as line 2" in m for m in messages)
    assert _scalar(node_home, "SELECT COUNT(*) FROM screening") == 300
