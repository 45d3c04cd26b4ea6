"""A node's answer re-encoded (UTF-16: JSON readers accept it) costs only that node's
answer, never the release: the log and the release store keep answers as UTF-8 text."""

from __future__ import annotations

from pathlib import Path

from countyhomes import county_homes
from localnode import answer_locally

from fedscreen.analyst.query import make_query
from fedscreen.coordinator.core import Coordinator
from fedscreen.crypto.envelope import Envelope

SQL = "SELECT sex, COUNT(*) FROM screenings WHERE academic_year = '2024-2025' GROUP BY sex"
COUNTIES = ("130104", "130105")


def test_an_answer_that_is_not_utf8_makes_its_node_missing(tmp_path: Path) -> None:
    homes = county_homes(tmp_path, dict.fromkeys(COUNTIES, 40))
    query, envelope = make_query(homes.analysts["analyst-1"], SQL, epsilon=0.3, accuracy=None)
    answers = {n: answer_locally(homes.nodes[n], envelope) for n in COUNTIES}
    utf16 = answers[COUNTIES[1]].decode("utf-8").encode("utf-16")
    Envelope.from_json(utf16)  # a well-formed envelope, signature and all
    coordinator = Coordinator.open(homes.coordinator)
    try:
        accepted = coordinator.accept(envelope, now_ms=query.issued_at_ms)
        release = coordinator.release(accepted, {**answers, COUNTIES[1]: utf16}, [])
        assert release.missing == (COUNTIES[1],)
        assert sorted(release.answers) == [COUNTIES[0]]
        assert "not UTF-8" in release.body["missing_reasons"][COUNTIES[1]]
        # the same answer as the node wrote it is used as any other
        again = coordinator.accept(envelope, now_ms=query.issued_at_ms)
        assert coordinator.release(again, answers, []).missing == ()
    finally:
        coordinator.close()
