"""Writing synthetic exports: bytes, encodings, Chinese labels, XLSX, per-school files, CLI."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import pytest
from python_calamine import load_workbook

from fedscreen.cli import synth as synth_cli
from fedscreen.errors import ConfigError
from fedscreen.screening import exports
from fedscreen.synth import generate, write_export
from fedscreen.synth import writer as synth_writer

SCREENING_KEYS = [c.key for c in exports.SCREENING_COLUMNS]
ZH_TO_KEY = exports.header_aliases(exports.SCREENING_COLUMNS)
#: the vocabulary of each coded screening column (for reading Chinese labels back)
VOCABULARIES = {
    "school_type": exports.SCHOOL_TYPES,
    "location": exports.LOCATIONS,
    "grade": exports.GRADES,
    "sex": exports.SEXES,
    "participation": exports.PARTICIPATION,
    "mode": exports.MODES,
    "warning_level": exports.WARNING_LEVELS,
    "warning_status": exports.WARNING_STATUSES,
    "plan_status": exports.PLAN_STATUSES,
    **dict.fromkeys(
        ("boarding", "left_behind", "single_parent", "economic_hardship", "consent", "referred",
         "referral_visited"),
        exports.YES_NO,
    ),
}  # fmt: skip


def read_csv(path: Path, encoding: str = "utf-8") -> list[list[str]]:
    with path.open(encoding=encoding, newline="") as f:
        return list(csv.reader(f))


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="fedscreen")
    synth_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["synth", *argv])
    code: int = args.func(args)
    return code


def test_same_arguments_same_bytes(tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert run_cli("--students", "800", "--seed", "5", "--out", str(tmp_path / name)) == 0
    for file in ("screenings.csv", "schools.csv"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
    run_cli("--students", "800", "--seed", "6", "--out", str(tmp_path / "c"))
    assert (tmp_path / "a/screenings.csv").read_bytes() != (
        tmp_path / "c/screenings.csv"
    ).read_bytes()


def test_cli_prints_one_summary_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("--students", "300", "--out", str(tmp_path), "--profile", "rural") == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "300 screening rows (screenings.csv)" in out
    assert len(read_csv(tmp_path / "screenings.csv")) == 301


def test_zh_headers_and_gb18030_round_trip(tmp_path: Path) -> None:
    county = generate("130102", 1200, "2024-2025", 8)
    write_export(county, tmp_path / "en")
    write_export(county, tmp_path / "zh", encoding="gb18030", headers="zh")
    raw = (tmp_path / "zh/screenings.csv").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")  # really GB 18030, not UTF-8
    en = read_csv(tmp_path / "en/screenings.csv")
    zh = read_csv(tmp_path / "zh/screenings.csv", encoding="gb18030")
    assert zh[0] == [c.zh for c in exports.SCREENING_COLUMNS]
    assert [ZH_TO_KEY[h] for h in zh[0]] == en[0] == SCREENING_KEYS
    labels = {key: exports.value_aliases(vocab) for key, vocab in VOCABULARIES.items()}
    risk = exports.value_aliases(exports.RISK_FACTORS)
    seen_labels = set()
    for en_row, zh_row in zip(en[1:], zh[1:], strict=True):
        for key, en_value, zh_value in zip(SCREENING_KEYS, en_row, zh_row, strict=True):
            if key in labels and zh_value:
                assert zh_value in VOCABULARIES[key].values()  # a label, not a code
                seen_labels.add(zh_value)
                assert labels[key][zh_value] == en_value
            elif key == "risk_factors" and zh_value:
                assert ";".join(risk[x] for x in zh_value.split(";")) == en_value
            else:
                assert zh_value == en_value
    assert {"男", "女", "是", "否", "已筛查"} <= seen_labels
    schools = read_csv(tmp_path / "zh/schools.csv", encoding="gb18030")
    assert schools[0] == [c.zh for c in exports.SCHOOL_COLUMNS]
    assert {row[4] for row in schools[1:]} <= set(exports.SCHOOL_TYPES.values())


def test_xlsx_is_readable_and_keeps_leading_zeros(tmp_path: Path) -> None:
    county = generate("130102", 600, "2024-2025", 9)
    write_export(county, tmp_path / "csv")
    summary = write_export(county, tmp_path / "xlsx", fmt="xlsx")
    assert summary.screening_rows == 600
    sheet = load_workbook(str(tmp_path / "xlsx/screenings.xlsx")).get_sheet_by_index(0).to_python()
    expected = read_csv(tmp_path / "csv/screenings.csv")
    assert sheet[0] == expected[0]
    items = [i for i, key in enumerate(SCREENING_KEYS) if key.endswith("_items")]
    with_zero = 0
    for got, want in zip(sheet[1:], expected[1:], strict=True):
        for i in items:
            assert got[i] == want[i]  # text, digits and leading zeros intact
            with_zero += want[i].startswith("0")
        assert got[0] == want[0]  # student number: a string, not a number
        assert got[SCREENING_KEYS.index("age")] == float(want[SCREENING_KEYS.index("age")])
    assert with_zero > 100
    schools = load_workbook(str(tmp_path / "xlsx/schools.xlsx")).get_sheet_by_index(0).to_python()
    assert len(schools) == len(read_csv(tmp_path / "csv/schools.csv"))


def test_xlsx_refuses_gb18030(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CSV only"):
        run_cli("--out", str(tmp_path), "--format", "xlsx", "--encoding", "gb18030")
    assert not (tmp_path / "screenings.xlsx").exists()


def test_xlsx_refuses_more_rows_than_a_sheet_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(synth_writer, "XLSX_MAX_ROWS", 100)
    county = generate("130102", 150, "2024-2025", 1)
    with pytest.raises(ConfigError, match="--per-school"):
        write_export(county, tmp_path, fmt="xlsx")
    write_export(county, tmp_path, fmt="xlsx", per_school=True)  # every school fits


def test_per_school_files_hold_their_school_only(tmp_path: Path) -> None:
    county = generate("130102", 1500, "2024-2025", 10)
    write_export(county, tmp_path / "one")
    summary = write_export(county, tmp_path / "each", per_school=True)
    files = sorted((tmp_path / "each").glob("screenings_*.csv"))
    assert len(files) == len(county.schools) == len(summary.screenings)
    rows: list[list[str]] = []
    for school, path in zip(county.schools, files, strict=True):
        assert path.name == f"screenings_{school.school_id}.csv"
        table = read_csv(path)
        assert table[0] == SCREENING_KEYS
        assert {row[SCREENING_KEYS.index("school_id")] for row in table[1:]} <= {school.school_id}
        assert len(table) - 1 == school.students
        rows += table[1:]
    # splitting by school changes nothing in the rows themselves
    assert rows == read_csv(tmp_path / "one/screenings.csv")[1:]
    assert (tmp_path / "each/schools.csv").read_bytes() == (
        tmp_path / "one/schools.csv"
    ).read_bytes()
