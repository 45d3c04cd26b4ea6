"""An offline node whose home is restored from a backup between two answer files, and an
inbox that stops part way: in process, real homes, signatures and SQLite.

The whole home goes back (database, saved checkpoint, the sizes it exported): the node
cannot tell, so the coordinator must, from the checkpoint it holds — whichever order
the two answer files arrive in. A file that proves nothing from it is not used; the
next outbox asks for that proof, and the forked log fails it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from offlinefed import OFFLINE, ask, make_fed, trip

from fedscreen.coordinator import inbox
from fedscreen.coordinator.core import Coordinator
from fedscreen.coordinator.inbox import import_answers
from fedscreen.coordinator.releases import newest_release


@pytest.mark.parametrize("first_imported_before_outbox_b", [True, False])
def test_a_node_home_restored_from_a_backup_is_quarantined(
    tmp_path: Path, first_imported_before_outbox_b: bool
) -> None:
    fed = make_fed(tmp_path)
    home = fed.nodes[OFFLINE].home
    core = Coordinator.open(fed.coordinator)
    try:
        ask(fed, core, epsilon=0.2)  # a first round trip: the coordinator holds a baseline
        import_answers(core, trip(fed, core, "first.json").read_bytes())
        ask(fed, core, epsilon=0.3)
        backup = tmp_path / "backup"
        shutil.copytree(home, backup)
        a = trip(fed, core, "a.json")
        if first_imported_before_outbox_b:
            assert import_answers(core, a.read_bytes()).released
        ask(fed, core, epsilon=0.4)
        shutil.rmtree(home)
        shutil.copytree(backup, home)  # database, checkpoint.note, spent.json, offline.json
        b = trip(fed, core, "b.json")
        if not first_imported_before_outbox_b:
            assert import_answers(core, a.read_bytes()).released
        size = core.log.size()
        done = import_answers(core, b.read_bytes())
        assert done.released == []
        if first_imported_before_outbox_b:
            # outbox B asked for a proof from where file A ended: the forked log fails it
            assert done.quarantined
        else:
            # the restored home forgot where its file A ended: file B proves nothing from
            # there, so none of it is used (and it is no evidence yet: a node may lose that
            # note honestly); its queries stay queued
            assert "does not prove" in done.problem
            assert not done.quarantined
            assert core.log.size() == size
            # the next outbox asks for a proof from where file A ended: the fork fails it
            done = import_answers(core, trip(fed, core, "c.json").read_bytes())
        core.book.refresh()
        assert core.book.quarantined(OFFLINE) is not None
        assert done.quarantined
        assert done.released == []
        # the evidence (both signed checkpoints) is in the coordinator's log
        assert core.log.size() == size + 1
    finally:
        core.close()


def test_an_inbox_stopped_part_way_completes_when_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped after its first release version (as by a kill: what was committed stays),
    the same file imported again releases the rest, and the node is not taken for one
    whose log went back by the checkpoints the first run kept."""
    fed = make_fed(tmp_path)
    core = Coordinator.open(fed.coordinator)
    try:
        ids = [ask(fed, core)[0] for _ in range(3)]
        path = trip(fed, core, "a.json")
        settle = inbox._settle
        calls = []

        def stop_at_second(*args: object, **kwargs: object) -> None:
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt  # the process ends here
            settle(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(inbox, "_settle", stop_at_second)
        with pytest.raises(KeyboardInterrupt):
            import_answers(core, path.read_bytes())
        monkeypatch.setattr(inbox, "_settle", settle)
        again = import_answers(core, path.read_bytes())
        core.book.refresh()
        assert core.book.quarantined(OFFLINE) is None, again.unchanged
        versions = {q: newest_release(core.conn, q).release_version for q in ids}  # type: ignore[union-attr]
        assert versions == dict.fromkeys(ids, 2)
        # and the next file proves from the checkpoint this one closed with
        ask(fed, core)
        nxt = import_answers(core, trip(fed, core, "b.json").read_bytes())
        assert len(nxt.released) == 1, nxt.unchanged
    finally:
        core.close()


def test_an_import_racing_another_for_the_same_version_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two imports that both make "the next version" of one release: the second one's
    version is refused by the store (a release is superseded once), rolled back with its
    log entries, and its query stays unsettled for the file imported again."""
    fed = make_fed(tmp_path)
    core = Coordinator.open(fed.coordinator)
    try:
        query_id = ask(fed, core)[0]
        first = newest_release(core.conn, query_id)
        path = trip(fed, core, "a.json")
        assert import_answers(core, path.read_bytes()).released == [(query_id, 2)]
        # as seen by an import that read the release before the other one wrote version 2
        core.conn.execute("UPDATE offline_queue SET settled_ms = NULL, outcome = NULL")
        core.conn.execute("DELETE FROM offline_inbox")
        core.conn.commit()
        monkeypatch.setattr(inbox, "newest_release", lambda *_a, **_k: first)
        size = core.log.size()
        done = import_answers(core, path.read_bytes())
        assert done.unchanged == [(query_id, inbox.RACED)]
        assert core.log.size() == size
        waiting = core.conn.execute("SELECT count(*) FROM offline_queue WHERE settled_ms IS NULL")
        assert waiting.fetchone()[0] == 1
    finally:
        core.close()
