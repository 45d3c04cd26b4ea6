"""Privacy budgets in µε, and signed budget statements: what each node has spent.

ε is counted in integer micro-units (1 µε = 10⁻⁶ ε), rounded *up* when charged, so
sums are exact and never record less than was spent; :func:`check_budget` is the
one rule, run by the node before it charges and by analysts planning a report.
A node's statement is built and signed by ``fedscreen.node.statement``.


A node sums its privacy ledger into a statement and signs it as a DSSE envelope
(``BUDGET_V1``) with its own key, as it signs its answers::

    {"version": 1, "node_id": "130102", "issued_at_ms": 1767225600000,
     "policy_digest": "sha256:…",
     "limits": {"epsilon_per_node_per_year": 6.0, "max_epsilon_per_query": 0.5,
                "approval_above_epsilon": 0.3, "analyst_share": 0.4,
                "analyst_shares": {"hebei-monitoring-centre": 0.6},
                "publication_threshold": 20, "max_groups": 200},
     "spent": {"2024-2025": {"node_micro": 900000,
                             "analysts": {"alice": 300000, "hebei-monitoring-centre": 600000}}},
     "unit": "micro-epsilon"}

``limits`` are the node's merged policy limits, in ε (``analyst_shares`` are the
per-analyst overrides of the default ``analyst_share``); ``spent`` holds, for
every academic year with a charge, the integer micro-ε (``unit``, 10⁻⁶ ε) the
node spent in total and per analyst. The node sends a fresh statement up its
stream when the coordinator welcomes it and after every answer or refusal; the
coordinator keeps the newest per node and hands them to analysts
(``Analyst.Budgets``), who verify each against their own manifest
(:func:`verify_statement`, ``fedscreen.analyst.budgets.fetch_budgets``). The coordinator is trusted
for nothing here: it can withhold or delay a statement (its age shows), never
alter one.

:meth:`BudgetStatement.remaining` is the node's own rule: the same limits
(:meth:`fedscreen.policy.Limits.analyst_budget`) and the same integer
arithmetic as :func:`check_budget`, so a cost of at most
``remaining_micro`` passes the node's budget check, and one micro-ε more does not
(as of the statement's issue time).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from fedscreen.crypto.envelope import BUDGET_V1, Envelope, parse_json, verify_envelope
from fedscreen.errors import QueryRefused, VerificationError
from fedscreen.policy import Limits
from fedscreen.trust.manifest import Manifest, show_id
from fedscreen.trust.scope import scope_contains

__all__ = [
    "BUDGET_V1",
    "MICRO",
    "STATEMENT_VERSION",
    "UNIT",
    "BudgetStatement",
    "Budgets",
    "Spent",
    "check_budget",
    "from_micro",
    "to_micro",
    "verify_budgets",
    "verify_statement",
]

MICRO: Final = 1_000_000

STATEMENT_VERSION: Final = 1
#: the unit of the integers under "spent"
UNIT: Final = "micro-epsilon"
#: most years and analysts a statement may list (count); a real ledger holds a few of each
MAX_ENTRIES: Final = 10_000
#: the largest ε a statement may state (limits): far beyond any budget, exact in µε
MAX_STATED_EPSILON: Final = 1e9
#: the largest µε a statement may count (a SQLite integer; from_micro stays a finite float)
MAX_MICRO: Final = 2**63 - 1


# ---------------------------------------------------------------- µε arithmetic


def to_micro(epsilon: float) -> int:
    """ε in micro-units, rounded up (never undercharge); any positive ε costs at least 1 µε."""
    if epsilon <= 0:
        return 0
    # the tiny slack absorbs float noise (0.3 * 10^6 = 300000.00000000006) without
    # ever rounding a positive charge down to nothing
    return max(1, math.ceil(epsilon * MICRO - 1e-6))


def from_micro(micro: int) -> float:
    """Micro-units back to ε."""
    return micro / MICRO


@dataclass(frozen=True)
class Spent:
    """ε spent in one academic year: by the node in total and by one analyst."""

    year: str
    node_micro: int
    analyst_micro: int


def check_budget(
    spent: Spent,
    *,
    cost_micro: int,
    node_budget_micro: int,
    analyst_budget_micro: int,
    analyst: str,
) -> None:
    """Refuse a charge that would take the node or the analyst over the year's budget."""
    node_left = node_budget_micro - spent.node_micro
    analyst_left = analyst_budget_micro - spent.analyst_micro
    if cost_micro > node_left:
        raise QueryRefused(
            f"budget: the node has ε={from_micro(max(node_left, 0)):g} left for {spent.year}; "
            f"this query costs ε={from_micro(cost_micro):g}"
        )
    if cost_micro > analyst_left:
        raise QueryRefused(
            f"budget: analyst {analyst} has ε={from_micro(max(analyst_left, 0)):g} left for "
            f"{spent.year}; this query costs ε={from_micro(cost_micro):g}"
        )


# ---------------------------------------------------------------- the statement


@dataclass(frozen=True)
class BudgetStatement:
    """A node's verified budget statement (see the module docstring for ``body``)."""

    node_id: str
    issued_at_ms: int
    policy_digest: str
    epsilon_per_node_per_year: float
    max_epsilon_per_query: float
    approval_above_epsilon: float | None
    #: the statement as the node signed it (parsed JSON); compared, not hashed
    body: dict[str, Any] = field(repr=False, hash=False)

    @classmethod
    def from_body(cls, body: Any) -> BudgetStatement:
        """Check a statement body's shape and build the statement; raises VerificationError.

        Parses only: the signature is :func:`verify_statement`'s job.
        """
        try:
            return cls._parse(body)
        except (KeyError, TypeError, ValueError) as exc:
            raise VerificationError(f"malformed budget statement: {exc}") from None

    @classmethod
    def _parse(cls, body: Any) -> BudgetStatement:
        if not isinstance(body, dict):
            raise TypeError("the statement is not a JSON object")
        if body["version"] != STATEMENT_VERSION:
            raise ValueError(f"version {body['version']!r} is not {STATEMENT_VERSION}")
        if body["unit"] != UNIT:
            raise ValueError(f"unit {body['unit']!r} is not {UNIT!r}")
        node_id, digest = body["node_id"], body["policy_digest"]
        if not isinstance(node_id, str) or not isinstance(digest, str):
            raise TypeError("node_id and policy_digest must be strings")
        issued = body["issued_at_ms"]
        if not isinstance(issued, int) or isinstance(issued, bool) or issued < 0:
            raise ValueError("issued_at_ms must be a non-negative integer")
        limits = body["limits"]
        if not isinstance(limits, dict):
            raise TypeError("limits must be an object")
        shares = _mapping(limits["analyst_shares"], "limits.analyst_shares")
        for analyst, share in shares.items():
            _epsilon(share, f"limits.analyst_shares.{analyst}")
        _epsilon(limits["analyst_share"], "limits.analyst_share")
        for name in ("publication_threshold", "max_groups"):
            value = limits[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"limits.{name} must be a non-negative integer")
        approval = limits["approval_above_epsilon"]
        for year, entry in _mapping(body["spent"], "spent").items():
            if not isinstance(entry, dict):
                raise TypeError(f"spent.{year} must be an object")
            analysts = _mapping(entry["analysts"], f"spent.{year}.analysts")
            total = sum(_micro(m, f"spent.{year}.analysts.{a}") for a, m in analysts.items())
            # the node's total is the sum of its analysts' charges, exactly (integers)
            if _micro(entry["node_micro"], f"spent.{year}.node_micro") != total:
                raise ValueError(f"spent.{year}: node_micro is not the sum of the analysts'")
        return cls(
            node_id=node_id,
            issued_at_ms=issued,
            policy_digest=digest,
            epsilon_per_node_per_year=_epsilon(
                limits["epsilon_per_node_per_year"], "limits.epsilon_per_node_per_year"
            ),
            max_epsilon_per_query=_epsilon(
                limits["max_epsilon_per_query"], "limits.max_epsilon_per_query"
            ),
            approval_above_epsilon=(
                None if approval is None else _epsilon(approval, "limits.approval_above_epsilon")
            ),
            body=body,
        )

    @property
    def limits(self) -> Limits:
        """The node's policy limits, as stated."""
        stated = self.body["limits"]
        return Limits(
            max_epsilon_per_query=self.max_epsilon_per_query,
            epsilon_per_node_per_year=self.epsilon_per_node_per_year,
            analyst_share=float(stated["analyst_share"]),
            publication_threshold=int(stated["publication_threshold"]),
            max_groups=int(stated["max_groups"]),
            analysts={a: float(s) for a, s in stated["analyst_shares"].items()},
            approval_above_epsilon=self.approval_above_epsilon,
        )

    @property
    def years(self) -> tuple[str, ...]:
        """The academic years with charges, sorted."""
        return tuple(sorted(self.body["spent"]))

    def analyst_budget(self, analyst: str) -> float:
        """The ε ``analyst`` may spend per year at this node (its share of the yearly budget)."""
        return self.limits.analyst_budget(analyst)

    def spent_micro(self, year: str, analyst: str | None = None) -> int:
        """µε spent in ``year``: by the node in total, or by ``analyst``; 0 if nothing."""
        entry = self.body["spent"].get(year)
        if entry is None:
            return 0
        if analyst is None:
            return int(entry["node_micro"])
        return int(entry["analysts"].get(analyst, 0))

    def spent(self, year: str, analyst: str | None = None) -> float:
        """ε spent in ``year``: by the node in total, or by ``analyst``."""
        return from_micro(self.spent_micro(year, analyst))

    def remaining_micro(self, year: str, analyst: str) -> int:
        """The largest cost (µε) in ``year`` the node's budget check lets ``analyst`` spend.

        min(node budget − node spent, analyst budget − analyst spent), never negative,
        from exactly the integers :func:`check_budget` compares.
        """
        limits = self.limits
        node_left = to_micro(limits.epsilon_per_node_per_year) - self.spent_micro(year)
        analyst_left = to_micro(limits.analyst_budget(analyst)) - self.spent_micro(year, analyst)
        return max(0, min(node_left, analyst_left))

    def remaining(self, year: str, analyst: str) -> float:
        """ε ``analyst`` has left at this node in ``year`` (see :meth:`remaining_micro`)."""
        return from_micro(self.remaining_micro(year, analyst))

    def check_budget(self, year: str, analyst: str, *, epsilon: float) -> None:
        """Raise QueryRefused, as the node would, if ``epsilon`` is over what is left.

        The node's own check (:func:`check_budget`) on the
        stated figures; the per-query cap and approval threshold are separate.
        """
        limits = self.limits
        check_budget(
            Spent(year, self.spent_micro(year), self.spent_micro(year, analyst)),
            cost_micro=to_micro(epsilon),
            node_budget_micro=to_micro(limits.epsilon_per_node_per_year),
            analyst_budget_micro=to_micro(limits.analyst_budget(analyst)),
            analyst=analyst,
        )


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be an object")
    if len(value) > MAX_ENTRIES:
        raise ValueError(f"{what} has more than {MAX_ENTRIES} entries")
    return value


def _epsilon(value: Any, what: str) -> float:
    # bool is an int; JSON true is not a number here
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number")
    # compared before any float conversion: a huge int must not raise OverflowError
    if not 0 <= value <= MAX_STATED_EPSILON:  # refuses NaN and infinity too
        raise ValueError(f"{what} must be a finite number >= 0 and <= {MAX_STATED_EPSILON:g}")
    return float(value)


def _micro(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_MICRO:
        raise ValueError(f"{what} must be a non-negative integer (µε) up to {MAX_MICRO}")
    return value


def verify_statement(envelope_bytes: bytes, *, manifest: Manifest, node_id: str) -> BudgetStatement:
    """Verify a node's signed budget statement; raises VerificationError.

    The signature must be by ``node_id``'s key in ``manifest`` (an active node),
    and the statement must say it is that node's.
    """
    member = manifest.member(node_id, role="node")
    payload = verify_envelope(
        Envelope.from_json(envelope_bytes),
        expected_payload_type=BUDGET_V1,
        trusted_keys={member.key_id: member.signing_key},
    )
    try:
        body = parse_json(payload)
    except ValueError:
        raise VerificationError(f"the budget statement of {node_id} is not JSON") from None
    statement = BudgetStatement.from_body(body)
    if statement.node_id != node_id:
        raise VerificationError(
            f"the budget statement names node {show_id(statement.node_id)}, not {node_id!r}"
        )
    return statement


# ---------------------------------------------------------------- a set of statements


@dataclass(frozen=True)
class Budgets:
    """Every node's verified budget statement, as the coordinator last received it."""

    #: node id -> its statement, verified against the caller's own manifest
    statements: dict[str, BudgetStatement]
    #: nodes with a live session at the coordinator (its word: nothing signs this)
    connected: tuple[str, ...]
    #: active nodes of the caller's manifest with no statement
    missing: tuple[str, ...]
    #: node id -> its statement's envelope, byte for byte (to keep as evidence)
    envelopes: dict[str, bytes] = field(default_factory=dict)


def verify_budgets(
    manifest: Manifest,
    statements: Iterable[tuple[str, bytes]],
    *,
    connected: Iterable[str] = (),
    scope: str = "",
) -> Budgets:
    """Verify ``(node id, envelope)`` pairs against ``manifest``; raises VerificationError.

    A statement that does not verify, or a node listed twice, fails the whole
    collection, naming the node: a coordinator that tampers is not papered over.
    ``scope`` (an analyst's, ``trust.scope``): the nodes expected are those inside it,
    and statements of nodes outside it are left out.
    """
    verified: dict[str, BudgetStatement] = {}
    envelopes: dict[str, bytes] = {}
    members = {m.id: m for m in manifest.members if m.role == "node"}
    for node_id, envelope in statements:
        if scope and node_id in members and not scope_contains(scope, members[node_id]):
            continue  # not the caller's to see: a coordinator that sends it is not believed
        if node_id in verified:
            raise VerificationError(f"node {node_id!r} has two budget statements")
        try:
            verified[node_id] = verify_statement(envelope, manifest=manifest, node_id=node_id)
        except VerificationError as exc:
            raise VerificationError(f"budget statement of node {node_id!r}: {exc}") from None
        envelopes[node_id] = envelope
    active = [
        m.id
        for m in manifest.members
        if m.role == "node" and not m.revoked and scope_contains(scope, m)
    ]
    return Budgets(
        statements=dict(sorted(verified.items())),
        connected=tuple(sorted(set(connected))),
        missing=tuple(sorted(n for n in active if n not in verified)),
        envelopes=dict(sorted(envelopes.items())),
    )
