"""Rollback detection on a real node home: the saved checkpoint against the database's log.

Real SQLite files, the node's real Ed25519 key, real log entries; a "backup" is
SQLite's online backup of ``node.db`` and a "restore" copies it back over the
live database, as an operator's tools would.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from exportrows import varied_rows, write_csv
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rekeying import rekey_in_place

from fedscreen._util.sqlite import transaction
from fedscreen.crypto.envelope import LOG_ENTRY_V1, Envelope, verify_envelope
from fedscreen.crypto.signing import public_key_id
from fedscreen.errors import ConfigError, VerificationError
from fedscreen.node import ledger, store
from fedscreen.node.engine import QueryRequest, answer_query
from fedscreen.node.home import NodeConfig, export_log, init_home
from fedscreen.node.ingest import ingest_paths
from fedscreen.node.rollback import (
    CHECKPOINT_FILE,
    SPENT_FILE,
    CheckpointGuard,
    diagnose,
    guarded,
    recover,
    sync_checkpoint,
)
from fedscreen.node.spent import read_mirror
from fedscreen.node.statement import statement_body
from fedscreen.tlog import memberlog
from fedscreen.tlog.checkpoint import Checkpoint, member_origin, parse_and_verify_note
from fedscreen.tlog.log import TransparencyLog
from fedscreen.trust import authority
from fedscreen.trust.identity import issue_here

YEAR = "2024-2025"
AT = "2026-12-06T21:00:00+00:00"
RECOVER_HINT = "fedscreen node recover --home HOME --reason TEXT"


def _append(config: NodeConfig, conn: sqlite3.Connection, n: int = 1, *, tag: str = "") -> None:
    """Append ``n`` real, signed entries to the node's log, each in its own transaction."""
    for _ in range(n):
        with transaction(conn):
            memberlog.append(
                conn,
                member_id=config.node_id,
                key=config.signing_key(),
                payload={"kind": "refusal", "at": AT, "epsilon": 0, "reason": f"test {tag}"},
            )


def _backup(conn: sqlite3.Connection, path: Path) -> None:
    target = sqlite3.connect(path)
    try:
        conn.backup(target)
    finally:
        target.close()


def _restore(path: Path, conn: sqlite3.Connection) -> None:
    source = sqlite3.connect(path)
    try:
        source.backup(conn)
    finally:
        source.close()


def _size(conn: sqlite3.Connection) -> int:
    return TransparencyLog(conn, name="node").size()


@pytest.fixture
def conn(node_home: NodeConfig) -> Iterator[sqlite3.Connection]:
    connection = store.connect(node_home.database)
    try:
        yield connection
    finally:
        connection.close()


def _saved_size(config: NodeConfig) -> int:
    text = (config.home / CHECKPOINT_FILE).read_text(encoding="utf-8")
    return Checkpoint.from_body(text.split("\n\n")[0] + "\n").size


# --- detection ---------------------------------------------------------------------------


def test_a_fresh_home_without_a_file_is_fine_and_saves_after_each_commit(
    node_home: NodeConfig, conn: sqlite3.Connection
) -> None:
    guard = CheckpointGuard.open(node_home, conn)
    assert guard.saved is None
    assert not (node_home.home / CHECKPOINT_FILE).exists()  # nothing logged yet
    _append(node_home, conn, 3)
    guard.advance(conn)
    assert _saved_size(node_home) == 3
    # the file is the database's own latest note, byte for byte
    (note,) = conn.execute("SELECT note FROM log_checkpoint WHERE size = 3").fetchone()
    assert (node_home.home / CHECKPOINT_FILE).read_text(encoding="utf-8") == note
    assert (node_home.home / CHECKPOINT_FILE).stat().st_mode & 0o077 == 0


def test_a_file_behind_the_database_is_fine(
    node_home: NodeConfig, conn: sqlite3.Connection
) -> None:
    _append(node_home, conn, 2)
    sync_checkpoint(node_home)
    # a crash between the commit and the write: the file stays behind
    _append(node_home, conn, 5)
    assert _saved_size(node_home) == 2
    sync_checkpoint(node_home)
    assert _saved_size(node_home) == 7
    assert diagnose(node_home) is None


def test_a_shrunk_log_is_refused_naming_both_sizes(
    node_home: NodeConfig, conn: sqlite3.Connection, tmp_path: Path
) -> None:
    _append(node_home, conn, 3)
    _backup(conn, tmp_path / "backup.db")
    _append(node_home, conn, 4)
    sync_checkpoint(node_home)
    _restore(tmp_path / "backup.db", conn)
    with pytest.raises(ConfigError) as refused:
        CheckpointGuard.open(node_home, conn)
    message = str(refused.value)
    assert "its log has 3 entries, the saved checkpoint 7" in message
    assert RECOVER_HINT in message
    assert _saved_size(node_home) == 7  # the evidence is kept
    assert diagnose(node_home) == message


@pytest.mark.parametrize(
    ("appended", "message"),
    [
        (1, "has 3 entries, as the saved checkpoint, but another"),  # same size, other root
        (4, r"\(6 entries\) does not extend the saved checkpoint"),  # longer, other history
    ],
)
def test_another_history_after_a_restore_is_refused(
    node_home: NodeConfig, conn: sqlite3.Connection, tmp_path: Path, appended: int, message: str
) -> None:
    _append(node_home, conn, 2)
    _backup(conn, tmp_path / "backup.db")
    _append(node_home, conn, 1, tag="original")
    sync_checkpoint(node_home)
    _restore(tmp_path / "backup.db", conn)
    _append(node_home, conn, appended, tag="another history")
    with pytest.raises(ConfigError, match=message):
        CheckpointGuard.open(node_home, conn)


def test_a_tampered_file_is_refused_with_its_own_message(
    node_home: NodeConfig, conn: sqlite3.Connection
) -> None:
    _append(node_home, conn, 2)
    sync_checkpoint(node_home)
    path = node_home.home / CHECKPOINT_FILE
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    lines[1] = "1"  # claim a smaller tree: the signature no longer covers the text
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(VerificationError, match="does not verify with node 130102's key"):
        CheckpointGuard.open(node_home, conn)
    other = init_home(node_home.home.parent / "other", node_id="130102", name="x")
    other_conn = store.connect(other.database)
    try:
        _append(other, other_conn, 1)
    finally:
        other_conn.close()
    sync_checkpoint(other)
    # a well-signed note, but by another node's key
    path.write_bytes((other.home / CHECKPOINT_FILE).read_bytes())
    with pytest.raises(VerificationError, match="altered or is not this node's"):
        CheckpointGuard.open(node_home, conn)


def test_a_tampered_spending_mirror_is_refused(
    node_home: NodeConfig, conn: sqlite3.Connection
) -> None:
    _append(node_home, conn, 1)
    sync_checkpoint(node_home)
    (node_home.home / SPENT_FILE).write_text('{"payload": "e30=", "payloadType": "x"}')
    with pytest.raises(VerificationError, match=f"{SPENT_FILE} does not verify"):
        sync_checkpoint(node_home)


def test_the_guard_refuses_a_database_that_went_back_while_it_ran(
    node_home: NodeConfig, conn: sqlite3.Connection, tmp_path: Path
) -> None:
    guard = CheckpointGuard.open(node_home, conn)
    _append(node_home, conn, 1)
    _backup(conn, tmp_path / "backup.db")
    _append(node_home, conn, 2)
    guard.advance(conn)
    _restore(tmp_path / "backup.db", conn)
    with pytest.raises(ConfigError, match="its log has 1 entry, the saved checkpoint 3"):
        guard.advance(conn)
    assert _saved_size(node_home) == 3


# --- recovery and the ledger -------------------------------------------------------------


@pytest.fixture
def loaded(node_home: NodeConfig, tmp_path: Path) -> NodeConfig:
    _, rejected = ingest_paths(node_home, [write_csv(tmp_path / "a.csv", varied_rows(200))])
    assert not rejected, rejected
    return node_home


#: three different questions (an identical one would be answered from the store, free)
GRADES = ("P4", "P5", "P6")


def _ask(config: NodeConfig, conn: sqlite3.Connection, n: int) -> None:
    request = QueryRequest(
        analyst="alice",
        spec=None,
        epsilon=0.1,
        text=f"SELECT COUNT(*) FROM screenings WHERE academic_year = '{YEAR}' "
        f"AND grade = '{GRADES[n - 1]}'",
    )
    answer_query(config, config.policy(), request, conn=conn)


def _spent(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    return {(y, a): m for y, a, m in ledger.budget_table(conn)}


def test_recover_logs_the_rollback_and_never_gives_budget_back(
    loaded: NodeConfig, tmp_path: Path
) -> None:
    with guarded(loaded) as conn:
        _ask(loaded, conn, 1)
        _backup(conn, tmp_path / "backup.db")
    with guarded(loaded) as conn:
        _ask(loaded, conn, 2)
        _ask(loaded, conn, 3)
        before = _spent(conn)
    saved_note = (loaded.home / CHECKPOINT_FILE).read_text(encoding="utf-8")
    conn = store.connect(loaded.database)
    try:
        _restore(tmp_path / "backup.db", conn)
    finally:
        conn.close()
    assert before == {(YEAR, "alice"): 300_000}
    with pytest.raises(ConfigError, match="its log has 1 entry, the saved checkpoint 3"):
        sync_checkpoint(loaded)

    done = recover(loaded, reason="restored from the Monday backup", at=AT)
    assert (done.from_size, done.to_size, done.log_index) == (3, 1, 1)
    assert done.mirrored
    assert done.restored == {(YEAR, "alice"): 200_000}

    conn = store.connect(loaded.database)
    try:
        assert _spent(conn) == before  # the two forgotten answers are charged again
        assert ledger.spent(conn, YEAR, "alice").node_micro == 300_000
        body = statement_body(conn, loaded.policy(), loaded.node_id, now_ms=1)
        assert body["spent"][YEAR]["node_micro"] == 300_000
        assert body["recoveries"] == [
            {"at": AT, "from_size": 3, "to_size": 1, "log_index": 1, "restored_micro": 200_000}
        ]
        (record,) = ledger.recoveries(conn)
        assert record.reason == "restored from the Monday backup"
    finally:
        conn.close()

    # the entry is signed like every other and says what happened
    log = export_log(loaded.home)
    key = loaded.signing_key()
    entry = verify_envelope(
        Envelope.from_json(log.entries[1]),
        expected_payload_type=LOG_ENTRY_V1,
        trusted_keys={key.key_id: key.public_key},
    )
    payload = json.loads(entry)
    assert payload["kind"] == "rollback"
    assert payload["from_checkpoint"] == saved_note
    assert payload["to_checkpoint"] == log.checkpoints[0]
    assert payload["reason"] == "restored from the Monday backup"
    assert payload["restored"] == {YEAR: {"alice": 0.2}}
    assert payload["epsilon"] == 0
    # re-baselined: the node runs again, and a second recover has nothing to do
    assert _saved_size(loaded) == 2
    sync_checkpoint(loaded)
    with pytest.raises(ConfigError, match="not behind its saved checkpoint: nothing to recover"):
        recover(loaded, reason="again", at=AT)


def test_recover_without_a_mirror_refuses_unless_the_loss_is_accepted(
    node_home: NodeConfig, conn: sqlite3.Connection, tmp_path: Path
) -> None:
    _append(node_home, conn, 1)
    _backup(conn, tmp_path / "backup.db")
    _append(node_home, conn, 1)
    sync_checkpoint(node_home)
    (node_home.home / SPENT_FILE).unlink()
    _restore(tmp_path / "backup.db", conn)
    with pytest.raises(ConfigError, match=r"spent\.json is missing.*--accept-lost-budget"):
        recover(node_home, reason="restored", at=AT)
    assert _size(conn) == 1  # nothing written
    assert _saved_size(node_home) == 2
    done = recover(node_home, reason="restored", at=AT, accept_lost_budget=True)
    assert not done.mirrored
    assert done.restored == {}
    payload = json.loads(Envelope.from_json(export_log(node_home.home).entries[-1])._payload)
    assert payload["accepted_lost_budget"] is True
    assert "no longer be counted" in payload["budget"]


def _mirror_size(config: NodeConfig) -> int:
    envelope = json.loads((config.home / SPENT_FILE).read_text(encoding="utf-8"))
    return int(json.loads(Envelope.from_json(json.dumps(envelope).encode())._payload)["log_size"])


def test_the_mirror_always_names_the_checkpoints_size(
    node_home: NodeConfig, conn: sqlite3.Connection
) -> None:
    """Entries that charge nothing (refusals) move the checkpoint: the mirror moves with it."""
    guard = CheckpointGuard.open(node_home, conn)
    for size in (1, 3):
        _append(node_home, conn, size - _size(conn))
        guard.advance(conn)
        assert _saved_size(node_home) == _mirror_size(node_home) == size


def test_recover_refuses_a_mirror_put_back_with_the_database(
    loaded: NodeConfig, tmp_path: Path
) -> None:
    """The database and spent.json from one backup, checkpoint.note kept: the old mirror
    would say nothing was forgotten, and the ε spent after the backup would be given back."""
    with guarded(loaded) as conn:
        _ask(loaded, conn, 1)
        _backup(conn, tmp_path / "backup.db")
    old_mirror = (loaded.home / SPENT_FILE).read_bytes()
    with guarded(loaded) as conn:
        _ask(loaded, conn, 2)
        _ask(loaded, conn, 3)
        before = _spent(conn)
    conn = store.connect(loaded.database)
    try:
        _restore(tmp_path / "backup.db", conn)
        (loaded.home / SPENT_FILE).write_bytes(old_mirror)
        with pytest.raises(ConfigError, match=r"behind the saved 3.*--accept-lost-budget"):
            recover(loaded, reason="disk restore", at=AT)
        assert _size(conn) == 1
        assert _spent(conn) != before
        done = recover(loaded, reason="disk restore", at=AT, accept_lost_budget=True)
        assert not done.mirrored
        assert done.restored == {}
    finally:
        conn.close()


def test_a_missing_checkpoint_with_a_mirror_ahead_of_the_ledger_is_refused(
    loaded: NodeConfig, tmp_path: Path
) -> None:
    """The database restored and checkpoint.note deleted: spent.json still shows the ε."""
    with guarded(loaded) as conn:
        _ask(loaded, conn, 1)
        _backup(conn, tmp_path / "backup.db")
    with guarded(loaded) as conn:
        _ask(loaded, conn, 2)
    mirror = (loaded.home / SPENT_FILE).read_bytes()
    conn = store.connect(loaded.database)
    try:
        _restore(tmp_path / "backup.db", conn)
    finally:
        conn.close()
    (loaded.home / CHECKPOINT_FILE).unlink()
    with pytest.raises(ConfigError, match=r"checkpoint\.note is missing.*0\.1 ε more spent"):
        sync_checkpoint(loaded)
    with pytest.raises(ConfigError, match=r"checkpoint\.note is missing"), guarded(loaded):
        pass
    assert (loaded.home / SPENT_FILE).read_bytes() == mirror  # not overwritten
    assert not (loaded.home / CHECKPOINT_FILE).exists()


@pytest.mark.parametrize(
    ("reason", "problem"),
    [("  ", "say why"), ("x" * 501, "at most 500"), ("two\nlines", "one line")],
)
def test_recover_refuses_a_bad_reason_and_writes_nothing(
    node_home: NodeConfig, conn: sqlite3.Connection, tmp_path: Path, reason: str, problem: str
) -> None:
    _append(node_home, conn, 2)
    _backup(conn, tmp_path / "backup.db")
    _append(node_home, conn, 1)
    sync_checkpoint(node_home)
    _restore(tmp_path / "backup.db", conn)
    with pytest.raises(ConfigError, match=problem):
        recover(node_home, reason=reason, at=AT)
    assert _size(conn) == 2
    assert _saved_size(node_home) == 3


def test_recover_on_a_fresh_home_has_nothing_to_recover(node_home: NodeConfig) -> None:
    with pytest.raises(ConfigError, match="no saved checkpoint"):
        recover(node_home, reason="why not", at=AT)


# --- property: any sequence of appends, backups and restores -----------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 3)),
        st.tuples(st.just("backup"), st.integers(0, 1)),
        st.tuples(st.just("restore"), st.integers(0, 1)),
    ),
    max_size=12,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=OPS)
def test_the_guard_refuses_exactly_the_databases_that_went_back(
    node_home: NodeConfig, tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]]
) -> None:
    work = tmp_path_factory.mktemp("ops")
    config = init_home(work / "node", node_id=node_home.node_id, name="x")
    backups: dict[int, list[bytes]] = {}
    conn = store.connect(config.database)
    try:
        saved: list[bytes] = []  # the log the saved checkpoint covers, as the model sees it
        for op, arg in ops:
            log = TransparencyLog(conn, name="node")
            current = [log.entry(i) for i in range(log.size())]
            went_back = current[: len(saved)] != saved
            assert (diagnose(config) is not None) == went_back
            if went_back:
                with pytest.raises(ConfigError, match="behind its saved checkpoint"):
                    sync_checkpoint(config)
                recover(config, reason="restored", at=AT)
                saved = [log.entry(i) for i in range(log.size())]
                current = saved
            if op == "append":
                _append(config, conn, arg, tag=str(len(current)))
                sync_checkpoint(config)
                saved = [log.entry(i) for i in range(log.size())]
            elif op == "backup":
                _backup(conn, work / f"{arg}.db")
                backups[arg] = current
            elif arg in backups:
                _restore(work / f"{arg}.db", conn)
    finally:
        conn.close()


# --- re-keyed in place (pki issue --replace) ----------------------------------------------


def _issued(config: NodeConfig, tmp_path: Path) -> Path:
    """An authority that issued the node (its manifest version kept in HOME/manifests/)."""
    auth = tmp_path / "auth"
    authority.init_authority(auth, federation="test")
    issue_here(auth, config.home)
    return auth


def _verifies_under(note: str, config: NodeConfig, key: bytes) -> bool:
    try:
        parse_and_verify_note(note, verifiers={member_origin("node", config.node_id): key})
    except VerificationError:
        return False
    return True


def test_a_node_rekeyed_in_place_keeps_its_history_and_moves_to_the_new_key(
    node_home: NodeConfig, conn: sqlite3.Connection, tmp_path: Path
) -> None:
    auth = _issued(node_home, tmp_path)
    _append(node_home, conn, 3)
    sync_checkpoint(node_home)
    _backup(conn, tmp_path / "backup.db")
    _append(node_home, conn, 2)
    sync_checkpoint(node_home)
    old = node_home.signing_key().public_key
    new = rekey_in_place(auth, node_home.home, member_id=node_home.node_id, role="node",
                         name="长安区", level="county").public_key  # fmt: skip
    # the files and the database's checkpoint, all signed under the former key, are carried over
    guard = CheckpointGuard.open(node_home, conn)
    assert guard.saved is not None
    assert guard.saved.size == 5
    assert diagnose(node_home) is None
    mirror = read_mirror(node_home)
    assert mirror is not None
    assert mirror.log_size == 5
    # the next commit (signed under the new key) rewrites both files under it
    _append(node_home, conn, 1)
    guard.advance(conn)
    note = (node_home.home / CHECKPOINT_FILE).read_text(encoding="utf-8")
    assert _verifies_under(note, node_home, new)
    assert not _verifies_under(note, node_home, old)
    spent = Envelope.from_json((node_home.home / SPENT_FILE).read_bytes())
    assert [s.keyid for s in spent.signatures] == [public_key_id(new)]
    # and the protection held across the re-key: a backup from before it is still caught
    _restore(tmp_path / "backup.db", conn)
    with pytest.raises(ConfigError, match="behind its saved checkpoint"):
        CheckpointGuard.open(node_home, conn)


def test_a_former_key_counts_only_as_the_installed_manifests_say(
    node_home: NodeConfig, conn: sqlite3.Connection, tmp_path: Path
) -> None:
    auth = _issued(node_home, tmp_path)
    _append(node_home, conn, 2)
    sync_checkpoint(node_home)
    rekey_in_place(auth, node_home.home, member_id=node_home.node_id, role="node",
                   name="长安区", level="county")  # fmt: skip
    shutil.rmtree(node_home.home / "manifests")  # no record that the node held that key
    with pytest.raises(VerificationError, match="nor any key it held"):
        CheckpointGuard.open(node_home, conn)
    (node_home.home / CHECKPOINT_FILE).unlink()
    with pytest.raises(VerificationError, match=f"{SPENT_FILE} does not verify"):
        CheckpointGuard.open(node_home, conn)
    (node_home.home / SPENT_FILE).unlink()
    with pytest.raises(VerificationError, match="the database's checkpoint does not verify"):
        CheckpointGuard.open(node_home, conn)
