"""Policy documents: the provincial catalogue, county overrides, their merge and digest.

A node enforces ``load_node_policy(province, county)``: the catalogue intersected
with its county's document, which may only tighten it; ``digest`` of that policy
goes into every signed answer; ``for_kind`` keeps only the columns its kind of node
(county, university, school) holds. ``Policy.secure`` says which columns a secure
(secret-shared, two-aggregator) query may use and whether this node answers one.
"""

from __future__ import annotations

from fedscreen.policy.default import county_policy_path, default_policy_dir
from fedscreen.policy.digest import canonical_json, digest
from fedscreen.policy.kinds import answers_secure, for_kind, held, secure_answerers
from fedscreen.policy.load import (
    load_node_policy,
    load_override,
    load_policy,
    parse_override,
    parse_policy,
)
from fedscreen.policy.merge import as_override, check_tightens, loosenings, merge
from fedscreen.policy.model import (
    CATEGORY_MEASURES,
    MIN_SECURE_NODES,
    NODE_KINDS,
    NUMERIC_MEASURES,
    CategoryRule,
    ColumnOverride,
    ColumnRule,
    Dataset,
    DatasetOverride,
    Limits,
    LimitsOverride,
    Measure,
    NumericRule,
    Override,
    Policy,
    Secure,
    SecureOverride,
    Value,
)

__all__ = [
    "CATEGORY_MEASURES",
    "MIN_SECURE_NODES",
    "NODE_KINDS",
    "NUMERIC_MEASURES",
    "CategoryRule",
    "ColumnOverride",
    "ColumnRule",
    "Dataset",
    "DatasetOverride",
    "Limits",
    "LimitsOverride",
    "Measure",
    "NumericRule",
    "Override",
    "Policy",
    "Secure",
    "SecureOverride",
    "Value",
    "answers_secure",
    "as_override",
    "canonical_json",
    "check_tightens",
    "county_policy_path",
    "default_policy_dir",
    "digest",
    "for_kind",
    "held",
    "load_node_policy",
    "load_override",
    "load_policy",
    "loosenings",
    "merge",
    "parse_override",
    "parse_policy",
    "secure_answerers",
]
