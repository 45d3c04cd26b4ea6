"""Regenerate a finished report from later versions of its releases (``report run
--include-late``).

A node that answers by file (an offline node) answers after the report ran; the
coordinator then publishes a later version of that query's release with the late
answer (``release_version`` n + 1, ``supersedes``: the SHA-256 of version n). For each
query of the report, ``include_late`` fetches the newest version
(``analyst.query.fetch_if_kept``: this analyst's own signed query, the id asked, the
release and every answer verified; none, for a release made before the coordinator
kept its releases) and accepts it in place of the stored release only
if (``check_later``):

* it answers the very same signed query (the query envelope, byte for byte): the same
  analyst, question, ε and nodes named;
* it asked the same nodes, for the same academic year, from the same coordinator;
* its version is newer than the stored one; a version n + 1 must supersede exactly the
  stored version n (the SHA-256 of its envelope). A version further on (several late
  answers arrived) cannot show its chain to the stored one without the versions between,
  which the coordinator does not hand out: it is accepted on the checks above and the next;
* every answer the stored version used is still used, byte for byte (a later version
  only adds answers: no figure of a node is swapped), and its population share counts
  the same eligible students targeted, and no fewer answered.

The same version again must be the same release, byte for byte; an older one is refused.

A release of the same signed query that is not on the stored release's chain of versions
leaves the stored release in place, with a line saying why, and the other queries go on
(``kept_because``): an analyst's client may resubmit the very same signed query (a
retry), which the coordinator releases as a new version 1 of its own chain, and Fetch
returns the newest release. So an older version, another release of the stored version,
or a version n + 1 that does not supersede the stored version n is kept aside, not
refused. A later version of a chain further on than n + 1 cannot be told from one of the
stored chain: it is checked as above (and refused if it drops a stored answer).
Each accepted release replaces ``releases/<name>.json`` atomically, then the report is
computed again from all releases and its files are replaced (report.json last) and
verified. Nothing is charged: fetching asks no node anything.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedscreen._util.files import replace_file
from fedscreen.analyst.query import FetchedRelease, fetch_if_kept
from fedscreen.errors import ConfigError, VerificationError
from fedscreen.policy import Policy
from fedscreen.protocol.release import parse_release
from fedscreen.protocol.versioning import later_population
from fedscreen.report.files import (
    PLAN_FILE,
    RELEASES_DIR,
    REPORT_FILE,
    SUPERSEDED_DIR,
    QueryRun,
    verify_run,
    write_report,
)
from fedscreen.report.plan import ReportPlan
from fedscreen.report.verify import check_report, read_inputs, verify_report
from fedscreen.trust.identity import load_identity

__all__ = ["Late", "check_later", "include_late", "kept_because"]


@dataclass(frozen=True)
class Late:
    """One query's release before and after ``include_late``."""

    name: str
    before: int
    #: the version now used (``before``: no later version)
    after: int
    answered: int
    targeted: int
    #: why the coordinator's newest release was not taken ("": it was, or none is later)
    kept: str = ""

    def describe(self) -> str:
        """ "version 1 → 2 (now 3/3 nodes)", "no later version (…)", or "kept version 2:
        (why)"."""
        nodes = f"{self.answered}/{self.targeted} nodes"
        if self.kept:
            return f"kept version {self.before}: {self.kept}"
        if self.after == self.before:
            return f"no later version (version {self.before}, {nodes})"
        return f"version {self.before} → {self.after} (now {nodes})"


def include_late(
    home: Path,
    coordinator: str,
    plan: ReportPlan,
    out: Path,
    *,
    policy: Policy,
    coordinator_id: str | None = None,
    say: Callable[[str], None] = print,
) -> list[Late]:
    """Replace each release in ``out`` by its newest version where it is a later one, and
    write the report again from them; returns what became of each query's release.

    ConfigError if ``out`` holds no finished report of ``plan`` by this analyst;
    VerificationError if a release the coordinator returns fails a check (nothing is
    replaced then: every release is checked before any file is written). The report is
    rewritten when a release was replaced, or when its files no longer match its releases
    (a regeneration interrupted between the release files and the report files).
    """
    identity = load_identity(home)
    manifest = identity.manifest()
    if not (out / REPORT_FILE).exists():
        raise ConfigError(f"{out} holds no finished report: run the plan without --include-late")
    if (out / PLAN_FILE).read_bytes() != plan.source:
        raise ConfigError(f"{out} holds the report of another plan than {plan.path}")
    inputs = read_inputs(out, manifest=manifest, policy=policy)
    if inputs.analyst != identity.member_id:
        raise ConfigError(
            f"{out} is {inputs.analyst}'s report; only its analyst can fetch its releases"
        )
    try:
        check_report(out, inputs, manifest=manifest, policy=policy)
        stale = False
    except VerificationError as exc:
        say(f"  the report's files do not match its releases ({exc}): they are written again")
        stale = True
    runs = dict(inputs.runs)
    outcome = []
    kept: dict[str, str] = {}
    # every release is fetched and checked before any file is replaced: a refused one
    # leaves the directory as it was
    for name, run in inputs.runs.items():
        query_id = str(run.released.body["query_id"])
        fetched = asyncio.run(
            fetch_if_kept(home, coordinator, query_id, coordinator_id=coordinator_id)
        )
        if fetched is None:
            # released before the coordinator kept its releases: no later version either
            say(f"  {name}: the coordinator keeps no version of this release; kept as it is")
        elif (why := kept_because(run, fetched)) is not None:
            kept[name] = why  # another chain (a resubmission's): the stored release stays
        elif check_later(run, fetched):
            runs[name] = verify_run(
                plan.asked[name], fetched.query_envelope, fetched.release_envelope,
                fetched.answers, manifest=manifest, where=f"the newest release of {name}",
            )  # fmt: skip
        body = runs[name].released.body
        late = Late(name, _version(run), _version(runs[name]), len(body["answered"]),
                    len(body["targeted"]), kept.get(name, ""))  # fmt: skip
        if fetched is not None:
            say(f"  {name}: {late.describe()}")
        outcome.append(late)
    for late in outcome:
        if late.after != late.before:
            replace_file(
                out / RELEASES_DIR / f"{late.name}.json",
                json.dumps(runs[late.name].to_json(), ensure_ascii=False, indent=1).encode(),
            )
    if stale or any(late.after != late.before for late in outcome):
        model = inputs.build(manifest, runs=runs)
        _keep_superseded(out)
        write_report(out, inputs.plan, model, province=inputs.province, replace=True)
        verify_report(out, manifest=manifest, policy=policy)
    return outcome


def _keep_superseded(out: Path) -> None:
    """Keep the report being replaced as ``superseded/report-<sha256>.json``: a city
    report compared with it names it by that digest (``report verify`` then says the
    comparison is with an earlier version of this province report)."""
    data = (out / REPORT_FILE).read_bytes()
    kept = out / SUPERSEDED_DIR / f"report-{hashlib.sha256(data).hexdigest()}.json"
    if not kept.exists():
        kept.parent.mkdir(exist_ok=True)
        replace_file(kept, data)


def check_later(stored: QueryRun, fetched: FetchedRelease) -> bool:
    """Whether ``fetched`` (verified on its own) is a later version of ``stored``'s
    release to use instead (False: the same release); VerificationError if it is
    neither (see the module's list of checks)."""
    old, new = stored.released.body, fetched.verified.release
    what = f"the coordinator's newest release of {stored.name}"
    if fetched.query_envelope != stored.query_envelope:
        raise VerificationError(f"{what} answers another signed query than the stored one")
    before = _version(stored)
    if new.release_version == before:
        if fetched.release_envelope != stored.release_envelope:
            raise VerificationError(f"{what} is another release of the stored version {before}")
        return False
    if new.release_version < before:
        raise VerificationError(
            f"{what} is version {new.release_version}, older than the stored version {before}"
        )
    if sorted(new.targeted) != sorted(old["targeted"]):
        raise VerificationError(f"{what} asked other nodes than the stored version")
    if (new.academic_year, new.coordinator) != (old.get("academic_year"), old["coordinator"]):
        raise VerificationError(f"{what} is for another year or from another coordinator")
    if new.release_version == before + 1 and new.supersedes != _digest(stored):
        raise VerificationError(
            f"{what} is version {new.release_version} but does not supersede the stored "
            f"version {before}"
        )
    if not later_population(parse_release(old).population, new.population):
        raise VerificationError(f"{what} states another population than its late answers add")
    kept = new.answer_digests()
    dropped = [n for n, a in _answer_digests(stored).items() if kept.get(n) != a]
    if dropped:
        raise VerificationError(
            f"{what} does not keep {dropped[0]}'s answer of the stored version "
            f"({len(dropped)} node(s))"
        )
    return True


def kept_because(stored: QueryRun, fetched: FetchedRelease) -> str | None:
    """Why ``fetched``, a release of the stored signed query that is not on the stored
    release's chain of versions, leaves the stored release in place (a resubmission of
    the same signed query makes a chain of its own); None: ``check_later`` judges it (the
    same release, a later version, or one to refuse: another query's, or one claiming to
    supersede the stored version)."""
    if fetched.query_envelope != stored.query_envelope:
        return None  # another signed query: refused by check_later
    new, before = fetched.verified.release, _version(stored)
    newest = "the coordinator's newest release of this query is a resubmission's version"
    if new.release_version < before:
        return f"{newest} {new.release_version}"
    if new.release_version == before and fetched.release_envelope != stored.release_envelope:
        return f"{newest} {before}, another release than the stored one"
    if new.release_version == before + 1 and new.supersedes != _digest(stored):
        return f"{newest} {new.release_version}, which does not supersede the stored one"
    return None


def _answer_digests(run: QueryRun) -> dict[str, str]:
    """Node id -> SHA-256 (hex) of each answer a stored release uses."""
    return {n: hashlib.sha256(a).hexdigest() for n, a in run.answers.items()}


def _digest(run: QueryRun) -> str:
    return hashlib.sha256(run.release_envelope).hexdigest()


def _version(run: QueryRun) -> int:
    return int(run.released.body.get("release_version", 1))
