"""``report run --include-late`` after an analyst's client resubmitted a report query
(issue 16, review finding F7).

The coordinator releases a resubmission of the very same signed query as a new version 1
of its own chain, and Fetch returns the newest release: an older version than the one
the report stored, then another version of the same number, then a version that does
not supersede the stored one. None of them may fail the report: the stored release is
kept (the printed line says why) and the other queries still take their later versions.
A version that claims to supersede the stored one and drops an answer is still refused.

The same real federation as ``test_fetch_release`` (coordinator server and two node
agents over mutual TLS on 127.0.0.1; the third node's late answers made in process and
published by the coordinator's core, as ``coordinator inbox`` does).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from reportplans import count_plan
from test_fetch_release import LATE, Fed, _homes, _running, late_version, make_plan_query

from fedscreen.analyst.query import fetch_verified
from fedscreen.cli.main import main
from fedscreen.errors import VerificationError
from fedscreen.report.files import verify_run
from fedscreen.report.late import check_later, kept_because
from fedscreen.rpc.client import submit
from fedscreen.trust.identity import load_identity


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    federation = _homes(tmp_path_factory.mktemp("resubmit"))
    with _running(federation) as address:
        federation.address = address
        yield federation


def _stored(out: Path, name: str) -> dict[str, str]:
    doc: dict[str, str] = json.loads((out / "releases" / f"{name}.json").read_text("utf-8"))
    return doc


def _query_id(out: Path, name: str) -> str:
    model = json.loads((out / "report.json").read_text(encoding="utf-8"))
    return str(model["releases"][name])


def _resubmit(fed: Fed, out: Path, name: str) -> None:
    """The analyst's client sends the stored signed query again (a retry)."""
    envelope = _stored(out, name)["query_envelope"].encode("utf-8")
    submitted = asyncio.run(submit(fed.alice, fed.address, envelope, deadline_ms=5_000))
    assert submitted.missing == (LATE,)


def test_include_late_keeps_the_stored_release_after_a_resubmission(
    fed: Fed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    run = ["report", "run", str(count_plan(tmp_path / "plan.toml", [0.1, 0.1])),
           "--home", str(fed.alice), "--coordinator", fed.address, "--out", str(out)]  # fmt: skip
    verify = ["report", "verify", str(out), "--manifest", str(fed.auth / "manifest.json")]
    assert main(run) == 0
    q0, q1 = _query_id(out, "q0"), _query_id(out, "q1")
    late_version(fed, q0)
    assert main([*run, "--include-late"]) == 0
    assert "q0: version 1 → 2 (now 3/3 nodes)" in capsys.readouterr().out
    version2 = _stored(out, "q0")
    # a retry of q0's signed query: the coordinator's newest release is a new version 1
    _resubmit(fed, out, "q0")
    assert main([*run, "--include-late"]) == 0
    said = capsys.readouterr().out
    assert (
        "q0: kept version 2: the coordinator's newest release of this query is a "
        "resubmission's version 1\n" in said
    )
    assert "no release has a later version" in said
    assert _stored(out, "q0") == version2
    # the resubmission's chain gets its version 2 (another release of the stored number);
    # q1 gets a genuine later version, taken in the same run
    late_version(fed, q0)
    late_version(fed, q1)
    assert main([*run, "--include-late"]) == 0
    said = capsys.readouterr().out
    assert "q0: kept version 2: " in said
    assert "resubmission's version 2, another release than the stored one" in said
    assert "q1: version 1 → 2 (now 3/3 nodes)" in said
    assert "1 of 2 releases replaced by a later version" in said
    assert _stored(out, "q0") == version2
    assert main(verify) == 0
    assert "VALID" in capsys.readouterr().out


def test_a_version_not_superseding_the_stored_one_is_kept_aside_one_that_does_is_checked(
    fed: Fed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    run = ["report", "run", str(count_plan(tmp_path / "plan.toml", [0.1])),
           "--home", str(fed.alice), "--coordinator", fed.address, "--out", str(out)]  # fmt: skip
    assert main(run) == 0
    query_id = _query_id(out, "q0")
    manifest = load_identity(fed.alice).manifest()
    first = asyncio.run(fetch_verified(fed.alice, fed.address, query_id))
    stored = verify_run(make_plan_query(first), first.query_envelope, first.release_envelope,
                        first.answers, manifest=manifest, where="q0")  # fmt: skip
    # a resubmission's version 1, then its version 2: it supersedes that version 1, not
    # the stored one
    _resubmit(fed, out, "q0")
    late_version(fed, query_id)
    assert main([*run, "--include-late"]) == 0
    assert (
        "q0: kept version 1: the coordinator's newest release of this query is a "
        "resubmission's version 2, which does not supersede the stored one"
        in capsys.readouterr().out
    )
    later = asyncio.run(fetch_verified(fed.alice, fed.address, query_id))
    assert kept_because(stored, later) is not None
    # the same version 2 claiming to supersede the stored one: judged by check_later,
    # which refuses it for dropping the stored answers (the resubmission's are others)
    digest = hashlib.sha256(stored.release_envelope).hexdigest()
    claimed = replace(
        later,
        verified=replace(
            later.verified, release=replace(later.verified.release, supersedes=digest)
        ),
    )
    assert kept_because(stored, claimed) is None
    with pytest.raises(VerificationError, match="does not keep"):
        check_later(stored, claimed)
    # another analyst's release is never kept aside either
    assert kept_because(stored, replace(later, query_envelope=b"{}")) is None
