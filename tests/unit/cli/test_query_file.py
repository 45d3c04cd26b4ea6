"""`fedscreen node query` and `fedscreen query` read the SQL from --file F or stdin (issue 12).

Exactly one of the argument and --file; a file is read as UTF-8 and never further
than the query length limit; unreadable files and invalid UTF-8 are ConfigErrors.
Real node home, real engine.
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from exportrows import varied_rows, write_csv

from fedscreen.cli.main import main
from fedscreen.cli.sqltext import CHUNK_BYTES, read_bounded
from fedscreen.errors import ConfigError
from fedscreen.node.home import init_home
from fedscreen.node.ingest import ingest_paths
from fedscreen.query.sqlparse import MAX_SQL_CHARS

YEAR = "2024-2025"
SQL = f"SELECT sex, COUNT(*) FROM screenings WHERE academic_year = '{YEAR}' GROUP BY sex"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("cli-query")
    config = init_home(base / "node", node_id="130102", name="长安区")
    _, rejected = ingest_paths(config, [write_csv(base / "s.csv", varied_rows(300))])
    assert not rejected, rejected
    return config.home


@pytest.fixture
def home(template: Path, tmp_path: Path) -> Path:
    shutil.copytree(template, tmp_path / "node")
    return tmp_path / "node"


def node_query(home: Path, *source: str) -> int:
    return main(
        ["node", "query", "--home", str(home), "--analyst", "alice", "--epsilon", "0.01",
         "--format", "json", *source]
    )  # fmt: skip


def refusals(home: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(home / "node.db")
    try:
        return conn.execute("SELECT query, reason FROM query_refusal").fetchall()
    finally:
        conn.close()


def test_the_sql_from_a_file(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "q.sql"
    path.write_bytes(b"\xef\xbb\xbf" + SQL.encode() + b"\n")  # a BOM, as Windows editors write
    assert node_query(home, "--file", str(path)) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["query"]["group_by"] == ["sex"]
    assert body["epsilon"] == 0.01


def test_the_sql_from_stdin(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(SQL.encode())))
    assert node_query(home, "--file", "-") == 0
    assert json.loads(capsys.readouterr().out)["query"]["group_by"] == ["sex"]


def test_a_deep_query_in_a_file_is_a_recorded_refusal(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sql = "SELECT COUNT(*) FROM screenings WHERE " + "(" * 50 + "sex = 'F'" + ")" * 50
    (tmp_path / "q.sql").write_text(sql)
    assert node_query(home, "--file", str(tmp_path / "q.sql")) == 1
    err = capsys.readouterr().err
    assert "nested deeper than 16 levels" in err
    assert "Traceback" not in err
    assert refusals(home) == [(sql, err.strip().removeprefix("error: "))]


def test_a_file_over_the_limit_is_read_no_further_and_refused(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "big.sql"
    path.write_text(SQL + " " + "-" * 5_000_000)
    assert node_query(home, "--file", str(path)) == 1
    assert f"query longer than {MAX_SQL_CHARS} characters" in capsys.readouterr().err
    ((query, _),) = refusals(home)
    assert len(query) == MAX_SQL_CHARS + 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"SELECT \xff FROM screenings", "is not valid UTF-8 (byte 7)"),
        (b"SELECT '\xed\xa0\x80' FROM screenings", "is not valid UTF-8"),  # an encoded surrogate
        (None, "cannot read the query file"),
    ],
    ids=["invalid-byte", "surrogate", "missing"],
)
def test_unreadable_query_files_are_config_errors(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None,
    message: str,
) -> None:  # fmt: skip
    path = tmp_path / "q.sql"
    if content is not None:
        path.write_bytes(content)
    for argv in (
        ["node", "query", "--home", str(home), "--analyst", "a", "--epsilon", "0.1"],
        ["query", "--home", str(tmp_path / "nohome"), "--coordinator", "127.0.0.1:1",
         "--epsilon", "0.1"],
    ):  # fmt: skip
        assert main([*argv, "--file", str(path)]) == ConfigError.exit_code
        err = capsys.readouterr().err
        assert message in err
        assert "Traceback" not in err
    assert refusals(home) == []


@pytest.mark.parametrize("command", ["node", "analyst"])
def test_exactly_one_of_the_argument_and_file(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = (
        ["node", "query", "--home", str(tmp_path), "--analyst", "a", "--epsilon", "0.1"]
        if command == "node"
        else ["query", "--home", str(tmp_path), "--coordinator", "h:1", "--epsilon", "0.1"]
    )
    for extra in ([], [SQL, "--file", "q.sql"]):
        with pytest.raises(SystemExit) as exited:
            main([*base, *extra])
        assert exited.value.code == 2
        assert "SQL" in capsys.readouterr().err


class Endless(io.RawIOBase):
    """A stream that never ends (``yes | fedscreen ...``), counting what is read from it."""

    def __init__(self, byte: bytes) -> None:
        self.byte = byte
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        buffer[:] = self.byte * len(buffer)
        self.read_bytes += len(buffer)
        return len(buffer)


@pytest.mark.parametrize("byte", [b"a", "学".encode()[:1], "😀".encode()])
def test_reading_is_bounded(byte: bytes) -> None:
    stream = Endless(byte)
    try:
        text = read_bounded(stream, name="stdin")  # type: ignore[arg-type]
    except ConfigError:
        assert byte == "学".encode()[:1]  # a lead byte repeated is not UTF-8
    else:
        assert len(text) == MAX_SQL_CHARS + 1
    assert stream.read_bytes <= 4 * (MAX_SQL_CHARS + 1) + 2 * CHUNK_BYTES


def test_an_endless_pipe_into_the_command(tmp_path: Path) -> None:
    """A real pipe that never ends: the command reads a few kilobytes, refuses, exits."""
    home = tmp_path / "node"
    init_home(home, node_id="130102", name="长安区")
    with subprocess.Popen(
        [sys.executable, "-c", "import sys\nwhile True: sys.stdout.write('x' * 65536)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as producer:
        try:
            done = subprocess.run(
                [sys.executable, "-m", "fedscreen.cli.main", "node", "query", "--home", str(home),
                 "--analyst", "a", "--epsilon", "0.1", "--file", "-"],
                stdin=producer.stdout,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )  # fmt: skip
        finally:
            producer.kill()
    assert done.returncode == 1, done.stderr
    assert f"query longer than {MAX_SQL_CHARS} characters" in done.stderr


def test_closed_stdin_is_a_clear_error(home: Path) -> None:
    """``--file -`` with standard input closed (``<&-``): a message, not a traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "fedscreen.cli.main", "node", "query", "--home", str(home),
         "--analyst", "alice", "--epsilon", "0.01", "--file", "-"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        # close fd 0 in the child: Python then starts with sys.stdin = None
        preexec_fn=lambda: __import__("os").close(0),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == "error: --file -: standard input is closed"


def test_an_epsilon_just_below_one_micro_epsilon_is_named_exactly(home: Path) -> None:
    assert node_query(home, "--epsilon", "9.999999999999997e-07", SQL) == 1
    assert refusals(home)[-1][1].startswith("policy: epsilon 9.999999999999997e-07 is below 1e-06")
