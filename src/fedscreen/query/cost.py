"""What a query costs: ε from the ε or the target accuracy asked, within the per-query cap.

The node charges exactly this; an analyst planning a report computes it with the
same function, so the plan's cost is the node's.

What an ε or accuracy may be: ε at least ``MIN_EPSILON`` (1 µε, the resolution
of the ledger, which charges whole µε rounded up — a smaller ε would be charged
more than it states) and at most the policy's per-query cap; and no noise scale
above ``mechanisms.MAX_SCALE`` (10^12), so a release never saturates or prints an
interval that means nothing. The node draws the noise with the ε it charges (this
ε rounded up to whole µε), so the ε an answer states, its scale and its charge agree.
"""

from __future__ import annotations

import math
from typing import Final

from fedscreen.errors import QueryRefused
from fedscreen.policy import Policy
from fedscreen.query import mechanisms
from fedscreen.query.compile import Plan

__all__ = ["MIN_EPSILON", "request_epsilon"]

#: smallest ε a query may spend: 1 µε, the ledger's resolution (1 / protocol.budget.MICRO;
#: query cannot import protocol, a test pins the two together)
MIN_EPSILON: Final = 1e-6


def request_epsilon(
    plan: Plan, policy: Policy, *, epsilon: float | None, accuracy: float | None
) -> float:
    """The ε a query spends, from its ε or target accuracy; refuses a missing, invalid or
    too expensive one (above the policy's per-query cap), one below ``MIN_EPSILON`` and
    one whose noise scale would exceed ``mechanisms.MAX_SCALE``. Public datasets cost
    nothing. Never raises anything but QueryRefused.
    """
    if plan.dataset.public:
        return 0.0
    if (epsilon is None) == (accuracy is None):
        raise QueryRefused("give exactly one of epsilon or accuracy")
    kind = plan.spec.measure.kind
    if epsilon is not None:
        if not 0 < epsilon < math.inf:
            raise QueryRefused("epsilon must be a positive number")
        # repr, not :g — 9.999999999999997e-07 must not print as 1e-06
        asked = f"epsilon {epsilon!r}"
    else:
        assert accuracy is not None
        if kind == "quantile":
            raise QueryRefused("give epsilon, not accuracy, for a quantile")
        if not 0 < accuracy < math.inf:
            raise QueryRefused("accuracy must be a positive number")
        # each noisy component (the count; a sum's numerator) is within ±accuracy at 95%;
        # mean and rate split ε evenly between two components, so each half must suffice
        # for the more sensitive one
        epsilon = mechanisms.epsilon_for_accuracy(accuracy=accuracy, sensitivity=plan.sensitivity)
        if kind in ("mean", "rate"):
            epsilon *= 2
        asked = f"accuracy ±{accuracy:g} needs epsilon {epsilon:.4g}, which"
    if epsilon < MIN_EPSILON:
        raise QueryRefused(
            f"{asked} is below {MIN_EPSILON:g} (1 µε), the smallest ε the ledger charges"
        )
    cap = policy.limits.max_epsilon_per_query
    if epsilon > cap:
        raise QueryRefused(
            f"this query would cost ε={epsilon:.4g}, above the per-query cap {cap:g}"
        )
    scale = _largest_scale(plan, epsilon)
    if not scale <= mechanisms.MAX_SCALE:
        raise QueryRefused(
            f"epsilon {epsilon:.4g} would need noise of scale {scale:.4g} for this query, "
            f"above the largest a release may use ({mechanisms.MAX_SCALE:.0e})"
        )
    return epsilon


def _largest_scale(plan: Plan, epsilon: float) -> float:
    """The largest noise scale the node draws with at ``epsilon`` (or a larger one)."""
    kind = plan.spec.measure.kind
    if kind == "quantile":
        assert plan.spec.measure.q is not None  # the compiler checked it
        return mechanisms.quantile_scale(q=plan.spec.measure.q, epsilon=epsilon)
    # mean and rate give each of their two noisy parts half of ε
    share = epsilon / 2 if kind in ("mean", "rate") else epsilon
    return max(plan.sensitivity, 1) / share
