"""A member logs each manifest version it starts using once, and never an older one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fedscreen._util.sqlite import connect, transaction
from fedscreen.crypto.signing import SigningKey
from fedscreen.tlog import memberlog
from fedscreen.tlog.log import TransparencyLog

KEY = SigningKey.generate()


def _entry(version: int) -> dict[str, object]:
    return {"kind": "manifest", "version": version, "manifest": f"file {version}"}


def _log(conn: sqlite3.Connection, version: int) -> memberlog.Appended | None:
    with transaction(conn):
        return memberlog.append_manifest(
            conn, member_id="130102", key=KEY, entry=_entry(version), role="node"
        )


def test_each_version_is_logged_once_and_never_an_older_one(tmp_path: Path) -> None:
    conn = connect(tmp_path / "node.db")
    assert memberlog.logged_manifest_version(conn) is None
    first = _log(conn, 3)
    assert first is not None
    assert first.index == 0
    assert first.note
    assert _log(conn, 3) is None  # a restart: already logged
    assert _log(conn, 2) is None  # older: never logged after a newer one
    assert memberlog.logged_manifest_version(conn) == 3
    newer = _log(conn, 5)
    assert newer is not None
    assert newer.index == 1
    assert memberlog.logged_manifest_version(conn) == 5
    assert memberlog.logged_manifest_version(conn, role="coordinator") is None
    assert TransparencyLog(conn, name="node").size() == 2
    conn.close()
    # the index survives a reopen (it is written in the entry's transaction)
    again = connect(tmp_path / "node.db")
    assert memberlog.logged_manifest_version(again) == 5
    again.close()


def test_only_manifest_entries_are_accepted(tmp_path: Path) -> None:
    conn = connect(tmp_path / "node.db")
    for bad in ({"kind": "answer", "version": 1}, {"kind": "manifest", "version": True}):
        with pytest.raises(ValueError, match="not a manifest entry"), transaction(conn):
            memberlog.append_manifest(conn, member_id="130102", key=KEY, entry=bad)
    assert TransparencyLog(conn, name="node").size() == 0
    conn.close()
