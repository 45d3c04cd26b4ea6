"""The node's spending mirror, ``HOME/spent.json``: what its ledger had spent at a checkpoint.

Beside ``HOME/checkpoint.note`` (:mod:`fedscreen.node.rollback`) the node keeps, per
academic year and analyst, the µε its ledger had spent, signed by the node (DSSE),
together with the size of the log that checkpoint names. Both are written after
every commit that moves the checkpoint, the mirror first, so the mirror's size is
never behind the checkpoint's unless someone put back an older mirror or removed
it: then it cannot say what a restored database forgot, and ``node recover`` will
not pretend it can.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from fedscreen._util.canonical import canonical_json
from fedscreen._util.files import replace_file
from fedscreen.crypto.envelope import Envelope, sign_envelope, verify_envelope
from fedscreen.crypto.signing import public_key_id
from fedscreen.errors import ConfigError, VerificationError
from fedscreen.node.home import NodeConfig
from fedscreen.trust.history import held_keys

__all__ = [
    "SPENT_FILE",
    "SPENT_V1",
    "Mirror",
    "Spending",
    "forgotten",
    "read_mirror",
    "write_mirror",
]

#: in the node's home: the ledger's spending per year and analyst at that checkpoint
SPENT_FILE: Final = "spent.json"
#: payload type of the spending mirror (node-private: it never leaves the home)
SPENT_V1: Final = "application/vnd.fedscreen.node-spent.v1+json"

#: (academic year, analyst) -> µε spent
Spending = dict[tuple[str, str], int]


@dataclass(frozen=True)
class Mirror:
    """The spending mirror as read back, verified."""

    spent: Spending
    #: the size of the node's log whose ledger this is (0 in a file that did not say)
    log_size: int


def forgotten(
    mirror: Mapping[tuple[str, str], int], ledger: Mapping[tuple[str, str], int]
) -> Spending:
    """µε per (year, analyst) the mirror shows spent beyond ``ledger`` (empty: none)."""
    return {
        item: micro - ledger.get(item, 0)
        for item, micro in mirror.items()
        if micro > ledger.get(item, 0)
    }


def read_mirror(config: NodeConfig) -> Mirror | None:
    """The mirror, verified with the node's key (or one it held before a re-key in place,
    see :func:`fedscreen.trust.history.held_keys`); None if there is none."""
    path = config.home / SPENT_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: unreadable ({exc})") from None
    key = config.signing_key()
    try:
        envelope = Envelope.from_json(data)
        try:
            payload = verify_envelope(
                envelope, expected_payload_type=SPENT_V1, trusted_keys={key.key_id: key.public_key}
            )
        except VerificationError:
            # signed before `pki issue --replace`: rewritten under the new key at the next save
            former = held_keys(config.home, config.node_id)
            payload = verify_envelope(
                envelope,
                expected_payload_type=SPENT_V1,
                trusted_keys={public_key_id(k): k for k in (key.public_key, *former)},
            )
        doc = json.loads(payload)
        if doc["node_id"] != config.node_id:
            raise ValueError("another node's")
        size = doc.get("log_size", 0)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError("a log size that is not a whole number")
        spent: Spending = {}
        for year, analysts in doc["spent"].items():
            for analyst, micro in analysts.items():
                if not isinstance(micro, int) or isinstance(micro, bool) or micro < 0:
                    raise ValueError("a spending that is not a whole µε")
                spent[str(year), str(analyst)] = micro
    except (VerificationError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise VerificationError(
            f"{path} does not verify with node {config.node_id}'s key ({exc}): it was altered "
            "or is not this node's; put back the node's own file"
        ) from None
    return Mirror(spent, size)


def write_mirror(config: NodeConfig, spent: Mapping[tuple[str, str], int], size: int) -> None:
    """Sign and save the ledger's spending at log size ``size`` (atomically, mode 0600)."""
    nested: dict[str, dict[str, int]] = {}
    for (year, analyst), micro in sorted(spent.items()):
        nested.setdefault(year, {})[analyst] = micro
    body = canonical_json({"node_id": config.node_id, "log_size": size, "spent": nested})
    envelope = sign_envelope(payload_type=SPENT_V1, payload=body, key=config.signing_key())
    replace_file(config.home / SPENT_FILE, envelope.to_json().encode("utf-8"), mode=0o600)
