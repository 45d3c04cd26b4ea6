"""Real homes of a small federation, in one directory, for in-process tests: the
authority, a coordinator, analysts and county nodes holding synthetic screening rows,
all issued, every home holding the authority's newest manifest."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from exportrows import screening_row, write_csv

from fedscreen.coordinator.core import init_coordinator
from fedscreen.node.home import NodeConfig, init_home
from fedscreen.node.ingest import ingest_paths
from fedscreen.trust import authority
from fedscreen.trust.identity import create_identity, issue_here, update_manifest


@dataclass(frozen=True)
class CountyHomes:
    auth: Path
    coordinator: Path
    #: analyst member id -> its home
    analysts: dict[str, Path]
    nodes: dict[str, NodeConfig]


def county_homes(
    root: Path,
    rows: Mapping[str, int],
    *,
    analysts: Sequence[str] = ("analyst-1",),
    offline: Sequence[str] = (),
) -> CountyHomes:
    """The homes under ``root``: a county node per code in ``rows`` holding that many
    screening rows (one in three male), an analyst home per id in ``analysts``, and the
    nodes named in ``offline`` marked offline in the manifest."""
    auth = root / "auth"
    authority.init_authority(auth, federation="test")
    init_coordinator(root / "coord", member_id="coordinator", name="省平台")
    issue_here(auth, root / "coord")
    homes = {}
    for member in analysts:
        create_identity(root / member, member_id=member, role="analyst", name=member)
        issue_here(auth, root / member)
        homes[member] = root / member
    nodes = {}
    for code, count in rows.items():
        config = init_home(root / code, node_id=code, name=code)
        issue_here(auth, config.home)
        made = [
            screening_row(i, county_code=code, sex="F" if i % 3 else "M")
            for i in range(1, count + 1)
        ]
        ingest_paths(config, [write_csv(root / f"{code}.csv", made)])
        nodes[code] = config
    for code in offline:
        authority.set_offline(auth, code, offline=True)
    text = authority.manifest_text(auth)
    for home in (root / "coord", *homes.values(), *(c.home for c in nodes.values())):
        update_manifest(home, text)
    return CountyHomes(auth, root / "coord", homes, nodes)
