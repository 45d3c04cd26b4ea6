"""What a query costs: ε from the ε or the target accuracy asked, within the per-query cap.

The node charges exactly this; an analyst planning a report computes it with the
same function, so the plan's cost is the node's.
"""

from __future__ import annotations

from fedscreen.errors import QueryRefused
from fedscreen.policy import Policy
from fedscreen.query import mechanisms
from fedscreen.query.compile import Plan

__all__ = ["request_epsilon"]


def request_epsilon(
    plan: Plan, policy: Policy, *, epsilon: float | None, accuracy: float | None
) -> float:
    """The ε a query spends, from its ε or target accuracy; refuses a missing, invalid or
    too expensive one (above the policy's per-query cap). Public datasets cost nothing.
    """
    if plan.dataset.public:
        return 0.0
    if (epsilon is None) == (accuracy is None):
        raise QueryRefused("give exactly one of epsilon or accuracy")
    kind = plan.spec.measure.kind
    if epsilon is not None:
        if not 0 < epsilon < float("inf"):
            raise QueryRefused("epsilon must be a positive number")
    else:
        assert accuracy is not None
        if kind == "quantile":
            raise QueryRefused("give epsilon, not accuracy, for a quantile")
        if not 0 < accuracy < float("inf"):
            raise QueryRefused("accuracy must be a positive number")
        # each noisy component (the count; a sum's numerator) is within ±accuracy at 95%;
        # mean and rate split ε evenly between two components, so each half must suffice
        # for the more sensitive one
        epsilon = mechanisms.epsilon_for_accuracy(accuracy=accuracy, sensitivity=plan.sensitivity)
        if kind in ("mean", "rate"):
            epsilon *= 2
    cap = policy.limits.max_epsilon_per_query
    if epsilon > cap:
        raise QueryRefused(
            f"this query would cost ε={epsilon:.4g}, above the per-query cap {cap:g}"
        )
    return epsilon
