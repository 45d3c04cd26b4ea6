"""The coordinator's core: accept signed queries, combine signed answers, sign releases, log all.

The coordinator is trusted to relay and combine, not for privacy and not for
honesty: it checks an analyst's query early (signature, role, freshness, the
provincial catalogue) only to refuse cheaply — every node checks again. Every
request, every node answer (the node's envelope, verbatim) and every release
goes into the coordinator's transparency log::

    HOME/
      coordinator.toml   config
      coordinator.db     its transparency log (SQLite, WAL, synchronous=FULL)
      signing.key, tls.key, tls.pem, ca.pem, manifest.json   its federation identity
"""

from __future__ import annotations

import functools
import hashlib
import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from fedscreen._util.canonical import canonical_json
from fedscreen._util.sqlite import connect, transaction
from fedscreen.coordinator import scoping
from fedscreen.coordinator.checkpoints import CheckpointBook
from fedscreen.coordinator.partials import SCHEMA as PARTIALS_SCHEMA
from fedscreen.coordinator.queryids import check_query_id
from fedscreen.coordinator.releases import OFFLINE_SCHEMA, StoredRelease, store_release
from fedscreen.coordinator.releases import SCHEMA as RELEASES_SCHEMA
from fedscreen.coordinator.years import configured_year, one_year, pinned_year
from fedscreen.crypto.envelope import RELEASE_V1, Envelope, sign_envelope
from fedscreen.crypto.signing import SignatureMemo
from fedscreen.errors import ConfigError, QueryRefused, VerificationError
from fedscreen.policy import Policy, default_policy_dir, load_policy
from fedscreen.policy import digest as policy_digest
from fedscreen.policy.default import PROVINCE_FILE
from fedscreen.protocol.answer import VerifiedAnswer, bounded, dataset_public, verify_answer
from fedscreen.protocol.memo import BoundedMemo
from fedscreen.protocol.query import SignedQuery, verify_query
from fedscreen.protocol.release import SecureOutcome, release_body
from fedscreen.query.compile import check_secure_release, compile_query
from fedscreen.tlog import memberlog
from fedscreen.tlog.checkpoint import member_origin
from fedscreen.tlog.entries import COORDINATOR_UNSIGNED
from fedscreen.tlog.export import LogExport
from fedscreen.tlog.log import TransparencyLog
from fedscreen.trust.identity import Identity, create_identity, load_identity
from fedscreen.trust.manifest import Manifest, manifest_entry

CONFIG_FILE: Final = "coordinator.toml"
DATABASE_FILE: Final = "coordinator.db"
ROLE: Final = "coordinator"
#: the reason a release states for a missing node when the caller gave none
NO_REASON: Final = "no answer"


@dataclass(frozen=True)
class Checked:
    """A query's answers as the release will use them: verified ones, and why the others
    are missing."""

    #: node id -> (answer envelope, verified answer)
    verified: dict[str, tuple[bytes, VerifiedAnswer]]
    missing: list[str]
    why: dict[str, str]
    academic_year: str | None


@dataclass(frozen=True)
class Release:
    """A signed release and what it was made of."""

    envelope: bytes
    body: dict[str, Any]
    #: node id -> the node's answer envelope, verbatim
    answers: dict[str, bytes]
    missing: tuple[str, ...]


def init_coordinator(home: Path, *, member_id: str, name: str) -> None:
    """Create a coordinator home: config, log database and identity (keys + request)."""
    if (home / CONFIG_FILE).exists():
        raise ConfigError(f"{home} already holds a coordinator; refusing to overwrite")
    home.mkdir(parents=True, exist_ok=True)
    create_identity(home, member_id=member_id, role=ROLE, name=name, level="province")
    conn = connect(home / DATABASE_FILE)
    conn.close()
    (home / CONFIG_FILE).write_text(
        "# fedscreen coordinator\n[coordinator]\n"
        f"id = {json.dumps(member_id)}\n\n[policy]\n"
        '# province = "/etc/fedscreen/province.toml"   # default: the catalogue fedscreen ships\n',
        encoding="utf-8",
    )


class Coordinator:
    """An open coordinator home."""

    def __init__(self, home: Path, identity: Identity, policy: Policy) -> None:
        self.home = home
        self.identity = identity
        self.member_id = identity.member_id
        self.policy = policy
        # stamp first: a file replaced while it is read is then read again at the next reload
        self._stamp = self._manifest_stamp()
        manifest, text = identity.manifest_file()
        self.manifest: Manifest = manifest
        self.key = identity.signing_key()
        self.origin = member_origin(ROLE, self.member_id)
        self.conn = connect(home / DATABASE_FILE)
        self.conn.execute(memberlog.CHECKPOINT_SCHEMA)
        self.conn.executescript(PARTIALS_SCHEMA)
        self.conn.executescript(RELEASES_SCHEMA)
        self.conn.executescript(OFFLINE_SCHEMA)
        self.log = TransparencyLog(self.conn, name=ROLE)
        #: the nodes' verified checkpoints and quarantines, in the same database
        self.book = CheckpointBook(self.conn)
        #: signatures the quarantine's checks of one query share (an answer that did not
        #: verify whole is checked for its note alone; held notes after a re-read)
        self.signatures = SignatureMemo()
        #: answers verified when screened for rollbacks, used again by the release
        #: (kept only between a query's screening and its release: a few queries' worth)
        self._verified: BoundedMemo[tuple[Any, ...], VerifiedAnswer] = BoundedMemo(1024)
        self._log_manifest(text)

    @classmethod
    def open(cls, home: Path) -> Coordinator:
        """Open a coordinator home whose identity has been issued."""
        try:
            config = tomllib.loads((home / CONFIG_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{home} is not a coordinator home; run coordinator init") from None
        identity = load_identity(home)
        if identity.role != ROLE:
            raise ConfigError(f"{home} holds a {identity.role} identity, not a coordinator")
        province = config.get("policy", {}).get("province")
        path = home / province if province else default_policy_dir() / PROVINCE_FILE
        return cls(home, identity, load_policy(path))

    @property
    def node_ids(self) -> tuple[str, ...]:
        """Active node members of the manifest."""
        return self.manifest.active("node")

    def targets(self, query: SignedQuery) -> tuple[str, ...]:
        """The nodes a query goes to (``coordinator.scoping.targets``)."""
        return scoping.targets(self.manifest, query)

    @property
    def revoked(self) -> bool:
        """True once the manifest in force no longer lists this coordinator as active: it
        then takes no query (``accept`` refuses) and its server ends the nodes' streams."""
        return self.member_id not in self.manifest.active(ROLE)

    def reload_manifest(self) -> None:
        """Pick up a newer manifest installed in the home (a revocation takes effect) and
        log it. An older or equal version is ignored: the manifest never goes back."""
        stamp = self._manifest_stamp()
        if stamp == self._stamp:
            return
        manifest, text = self.identity.manifest_file()
        self._stamp = stamp
        if manifest.version > self.manifest.version:
            self.manifest = manifest
            self._log_manifest(text)

    def _log_manifest(self, text: bytes) -> None:
        """Log the manifest version now in force, unless the log already has it (a restart):
        the auditor checks each later entry against it (``fedscreen.audit.manifests``)."""
        entry = manifest_entry(text, authority_key=self.manifest.authority_key)
        with transaction(self.conn):
            memberlog.append_manifest(
                self.conn, member_id=self.member_id, key=self.key, entry=entry, role=ROLE
            )

    def _manifest_stamp(self) -> tuple[int, int]:
        stat = (self.home / "manifest.json").stat()
        return stat.st_mtime_ns, stat.st_size

    def accept(
        self, query_envelope: bytes, *, now_ms: int, caller: str | None = None
    ) -> SignedQuery:
        """Verify and log an analyst's query; raise QueryRefused/VerificationError early.

        ``caller`` is the member id the transport authenticated; the query must be theirs.
        """
        self.reload_manifest()  # each query sees the newest manifest installed (a stat call)
        if self.revoked:
            raise QueryRefused(
                f"this coordinator is revoked in manifest version {self.manifest.version}"
            )
        envelope = Envelope.from_json(query_envelope)
        query = verify_query(envelope, manifest=self.manifest, now_ms=now_ms)
        if caller is not None and query.analyst != caller:
            raise VerificationError("the query is not signed by the calling analyst")
        try:
            dataset_public(query.spec, self.policy)
        except VerificationError as exc:
            raise QueryRefused(str(exc)) from None
        if query.spec.years:
            # the provincial catalogue: a cheap early refusal (nodes apply their own, stricter)
            compile_query(query.spec, self.policy)
        active = set(self.node_ids)
        unknown = [n for n in query.nodes if n not in active]
        if unknown:
            raise QueryRefused(f"not active nodes of the federation: {scoping.named(unknown)}")
        # before anything is logged or asked; each node checks it again for itself
        scoping.check_scope(self.manifest, query)
        if query.spec.secure:
            # before any node is charged: a release over fewer nodes would have no figure
            # (school nodes answer no secure query: policy.kinds.for_kind)
            check_secure_release(
                self.policy, nodes=len(scoping.secure_targets(self.manifest, query))
            )
        # the id stays its first signed query's: another analyst's query under it would
        # take over its releases and its offline queue rows
        check_query_id(self.conn, query.query_id, query_envelope, queued_at=self.manifest.offline)
        self._append(
            {
                "kind": "request",
                "query_id": query.query_id,
                "envelope": query_envelope.decode("utf-8"),
            }
        )
        return query

    def academic_year_for(self, query: SignedQuery, announced: Mapping[str, str]) -> str | None:
        """The one academic year a query without years is answered for (None if it has
        years): ``coordinator.years.pinned_year`` with coordinator.toml's ``[query]
        academic_year`` and the asked nodes' latest years (``announced``: node -> year)."""
        if query.spec.years:
            return None
        configured = configured_year(self.home / CONFIG_FILE)
        return pinned_year(configured, self.targets(query), announced)

    def release(
        self,
        query: SignedQuery,
        answers: Mapping[str, bytes],
        missing: Sequence[str],
        *,
        eligible: Mapping[str, int] | None = None,
        reasons: Mapping[str, str] | None = None,
        academic_year: str | None = None,
        targeted: Sequence[str] | None = None,
        checked: Checked | None = None,
        secure: SecureOutcome | None = None,
        query_envelope: bytes = b"",
        previous: StoredRelease | None = None,
    ) -> Release:
        """Verify the nodes' answers, combine them, sign and log the release.

        ``reasons`` says why each ``missing`` node has no answer (the release states
        it). ``academic_year``: the year a query without years was pinned to
        (``academic_year_for``); answers for another year are not used. An answer that
        does not verify (a bad signature, another query, a malformed body) makes its
        node missing, with the reason; the release goes on. (The query itself was
        logged by ``accept``.)

        ``targeted``: the nodes the query was pushed to (default: the query's nodes, or
        every active node) — the manifest may change while a query runs, and the
        release must name the nodes actually asked. An answer from a node quarantined
        meanwhile (its answer to another query showed a rollback) is not used: it is
        missing, with the quarantine as its reason.

        ``checked``: the answers as :meth:`check_answers` verified them already (a
        secure query's, whose partials were made from them); ``secure``: its partials.

        The release is also kept in the release store (``coordinator.releases``) with
        ``query_envelope`` (the analyst's signed query, for ``fedscreen query
        --release``). ``previous``: the stored release this one supersedes (a later
        version with late answers, ``coordinator.inbox``); sqlite3.IntegrityError if
        another version superseded it meanwhile (nothing is logged then).
        """
        if query.spec.secure and secure is None:
            raise ValueError("a secure query is released with its partials (or their failure)")
        checked = checked or self.check_answers(
            query, answers, missing, reasons=reasons, academic_year=academic_year
        )
        verified, lost, why = checked.verified, checked.missing, checked.why
        academic_year = checked.academic_year
        public = dataset_public(query.spec, self.policy)
        targeted = list(targeted if targeted is not None else self.targets(query))
        body = release_body(
            coordinator_id=self.member_id,
            query=query,
            answers=verified,
            missing=lost,
            missing_reasons=why,
            targeted=targeted,
            threshold=self.policy.limits.publication_threshold,
            public=public,
            academic_year=academic_year,
            catalogue_digest=policy_digest(self.policy),
            eligible=eligible or {},
            secure=secure,
            previous=None if previous is None else (previous.release_version, previous.digest),
        )
        signed = (
            sign_envelope(payload_type=RELEASE_V1, payload=canonical_json(body), key=self.key)
            .to_json()
            .encode("utf-8")
        )
        # the answers, then the release, in one transaction; one checkpoint covers them all
        logged = [
            {"kind": "answer", "query_id": query.query_id, "node": node_id,
             "envelope": raw.decode("utf-8")}
            for node_id, (raw, _) in sorted(verified.items())
        ]  # fmt: skip
        logged.append(
            {"kind": "release", "query_id": query.query_id, "envelope": signed.decode("utf-8")}
        )
        stored = StoredRelease(
            query_id=query.query_id,
            release_version=1 if previous is None else previous.release_version + 1,
            envelope=signed,
            query_envelope=query_envelope,
            answers={n: raw for n, (raw, _) in verified.items()},
            reasons={n: why.get(n, NO_REASON) for n in lost},
            targeted=tuple(targeted),
            academic_year=academic_year,
            eligible=dict(eligible or {}),
        )
        with transaction(self.conn):
            last = memberlog.append_many(
                self.conn, member_id=self.member_id, key=self.key, payloads=logged, role=ROLE,
                unsigned=COORDINATOR_UNSIGNED,
            )  # fmt: skip
            # the answers were logged in node order just before the release
            first = last.index - len(verified)
            entries = {node: first + i for i, node in enumerate(sorted(verified))}
            store_release(
                self.conn,
                stored,
                supersedes=None if previous is None else previous.digest,
                entries=entries,
            )
        return Release(signed, body, {n: v[0] for n, v in verified.items()}, tuple(sorted(lost)))

    def check_answers(
        self,
        query: SignedQuery,
        answers: Mapping[str, bytes],
        missing: Sequence[str],
        *,
        reasons: Mapping[str, str] | None = None,
        academic_year: str | None = None,
    ) -> Checked:
        """Verify the answers a release will use (see :meth:`release`)."""
        verified: dict[str, tuple[bytes, VerifiedAnswer]] = {}
        self.book.refresh()  # a quarantine or readmission by another process counts
        lost = list(missing)
        why = {n: (reasons or {}).get(n) or NO_REASON for n in missing}
        for node_id, raw in answers.items():
            held = self.book.quarantined(node_id)
            if held is not None:
                self.forget_verdict(node_id, raw, query, academic_year=academic_year)
                lost.append(node_id)
                why[node_id] = f"quarantined: {bounded(held.reason)}"
                continue
            try:
                # the verdict screening kept, taken (so no answer stays in memory after)
                answer = self._verified.take(
                    self._answer_key(node_id, raw, query, academic_year),
                    functools.partial(self._verify, node_id, raw, query, academic_year),
                )
            except VerificationError as exc:
                lost.append(node_id)  # an answer that does not verify counts as no answer
                why[node_id] = f"its answer did not verify: {bounded(str(exc))}"
                continue
            verified[node_id] = (raw, answer)
        if not query.spec.years and academic_year is None:
            academic_year = one_year(verified, lost, why)
        return Checked(verified, lost, why, academic_year)

    def verified_answer(
        self, node_id: str, raw: bytes, query: SignedQuery, *, academic_year: str | None
    ) -> VerifiedAnswer:
        """``verify_answer`` of a node's answer envelope to ``query``, against the manifest in
        force and the catalogue; raises VerificationError. Answers screened for rollbacks
        are verified once, not again when released: a success is kept until the release
        takes it, keyed by everything the verdict depends on (the manifest by its version:
        versions only go forward)."""
        return self._verified.get(
            self._answer_key(node_id, raw, query, academic_year),
            lambda: self._verify(node_id, raw, query, academic_year),
        )

    def _verify(
        self, node_id: str, raw: bytes, query: SignedQuery, academic_year: str | None
    ) -> VerifiedAnswer:
        if not raw.isascii():
            # JSON readers take UTF-16 too, but the log and the release store keep answers
            # as UTF-8 text: one re-encoded answer would fail the whole release
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                raise VerificationError(f"the answer from {node_id} is not UTF-8") from None
        return verify_answer(
            Envelope.from_json(raw),
            manifest=self.manifest,
            node_id=node_id,
            expected_query=query,
            public=dataset_public(query.spec, self.policy),
            academic_year=academic_year,
            catalogue=self.policy,
            # no signature memo: a verdict is kept whole (``_verified``), and a held note
            # is checked again only after the book was re-read (``_forget_old_key``)
        )

    def forget_verdict(
        self, node_id: str, raw: bytes, query: SignedQuery, *, academic_year: str | None
    ) -> None:
        """Drop the verdict :meth:`verified_answer` kept for an answer that will not be
        released (its node was quarantined), so no answer stays in memory after its query."""
        self._verified.forget(self._answer_key(node_id, raw, query, academic_year))

    def _answer_key(
        self, node_id: str, raw: bytes, query: SignedQuery, academic_year: str | None
    ) -> tuple[str, bytes, str, str, str | None, int]:
        # a digest, not the bytes: a kept verdict holds no copy of the answer
        digest = hashlib.sha256(raw).digest()
        return node_id, digest, query.query_id, query.digest, academic_year, self.manifest.version

    def record(self, payload: dict[str, Any]) -> None:
        """Append one event (a manifest version, quarantine evidence, a readmission) to the log.

        ``payload["kind"]`` names the event; the payload holds no student data.
        """
        self._append(payload)

    def _append(self, payload: dict[str, Any]) -> None:
        with transaction(self.conn):
            memberlog.append(
                self.conn, member_id=self.member_id, key=self.key, payload=payload, role=ROLE
            )

    # --- the auditors' view ------------------------------------------------------------

    def checkpoint(self) -> str:
        """The newest signed checkpoint of the coordinator's log ("" if empty)."""
        row = self.conn.execute(
            "SELECT note FROM log_checkpoint WHERE log = ? ORDER BY size DESC LIMIT 1", (ROLE,)
        ).fetchone()
        return str(row[0]) if row else ""

    def entries(self, start: int, end: int) -> list[bytes]:
        """Entries [start, end) of the log."""
        end = min(end, self.log.size())
        return [self.log.entry(i) for i in range(max(start, 0), end)]

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 inclusion proof of entry ``index`` in the tree of ``size``."""
        return self.log.inclusion_proof(index, size)

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        """RFC 9162 consistency proof between two tree sizes."""
        return self.log.consistency_proof(size1, size2)

    def export(self) -> LogExport:
        """Every entry and checkpoint, for an audit bundle."""
        return memberlog.export_log(self.conn, member_id=self.member_id, role=ROLE)

    def close(self) -> None:
        """Close the log database."""
        self.conn.close()


def export_log(home: Path) -> LogExport:
    """The coordinator's log in ``home``, as exported for auditors."""
    coordinator = Coordinator.open(home)
    try:
        return coordinator.export()
    finally:
        coordinator.close()
