"""Which nodes a query goes to (``coordinator.scoping``): those it names, else the active
nodes inside its analyst's scope; a named node outside the scope refuses the query."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fedscreen.analyst.query import make_query
from fedscreen.coordinator import scoping
from fedscreen.errors import ConfigError, QueryRefused
from fedscreen.protocol.query import SignedQuery, issue_query, new_query_id
from fedscreen.query.sqlparse import parse_sql
from fedscreen.trust import authority
from fedscreen.trust.identity import create_identity, issue_here, load_identity, update_manifest
from fedscreen.trust.manifest import Manifest, load_manifest

SQL = "SELECT COUNT(*) FROM screenings WHERE academic_year = '2024-2025'"
#: id -> (kind, place)
NODES = {
    "130104": ("county", "county:130104"),
    "130104-s01": ("school", "county:130104"),
    "130105": ("county", "county:130105"),
    "130202": ("county", "county:130202"),
    "10075": ("university", "province"),
}
ANALYSTS = {
    "prov": "",
    "sjz": "city:1301",
    "changan": "county:130104",
    "hbu": "node:10075",
    "xiong": "county:133101",
}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    root = tmp_path_factory.mktemp("scoping")
    auth = root / "auth"
    authority.init_authority(auth, federation="test")
    for node, (kind, place) in NODES.items():
        create_identity(root / node, member_id=node, role="node", name=node, level=kind,
                        scope=place)  # fmt: skip
        issue_here(auth, root / node)
    for analyst, scope in ANALYSTS.items():
        create_identity(root / analyst, member_id=analyst, role="analyst", name=analyst,
                        scope=scope)  # fmt: skip
        issue_here(auth, root / analyst)
    authority.revoke(auth, "130105")
    text = authority.manifest_text(auth)
    for analyst in ANALYSTS:
        update_manifest(root / analyst, text)
    return root, load_manifest(auth / authority.MANIFEST_FILE)


@pytest.mark.parametrize(
    ("analyst", "expected"),
    [
        ("prov", ("130104", "130104-s01", "130202", "10075")),
        ("sjz", ("130104", "130104-s01")),  # 130105 is revoked
        ("changan", ("130104", "130104-s01")),  # the county node and its school
        ("hbu", ("10075",)),
    ],
)
def test_an_unnamed_query_goes_to_the_active_nodes_of_the_scope(
    fed: tuple[Path, Manifest], analyst: str, expected: tuple[str, ...]
) -> None:
    root, manifest = fed
    query, _ = make_query(root / analyst, SQL, epsilon=0.1, accuracy=None)
    scoping.check_scope(manifest, query)
    assert sorted(scoping.targets(manifest, query)) == sorted(expected)


def test_a_named_node_outside_the_scope_refuses_the_whole_query(
    fed: tuple[Path, Manifest],
) -> None:
    root, manifest = fed
    query, _ = make_query(root / "sjz", SQL, epsilon=0.1, accuracy=None,
                          nodes=("130104", "10075", "130202"))  # fmt: skip
    with pytest.raises(QueryRefused, match=r"city:1301.*'10075', '130202'"):
        scoping.check_scope(manifest, query)
    inside, _ = make_query(root / "sjz", SQL, epsilon=0.1, accuracy=None,
                           nodes=("130104-s01", "130104"))  # fmt: skip
    scoping.check_scope(manifest, inside)
    assert scoping.targets(manifest, inside) == ("130104-s01", "130104")


def test_a_node_named_twice_is_refused_before_anything_is_asked(
    fed: tuple[Path, Manifest],
) -> None:
    """A release names each node once, so a list with repeats could never verify: the
    analyst's tool refuses to sign one, and the coordinator refuses one signed anyway."""
    root, manifest = fed
    with pytest.raises(ConfigError, match="130104 more than once"):
        make_query(root / "sjz", SQL, epsilon=0.1, accuracy=None, nodes=("130104", "130104"))
    identity = load_identity(root / "sjz")
    query = SignedQuery(
        query_id=new_query_id(), analyst="sjz", issued_at_ms=int(time.time() * 1000),
        spec=parse_sql(SQL), epsilon=0.1, accuracy=None, nodes=("130104", "130104"),
    )  # fmt: skip
    signed, _ = issue_query(query, key=identity.signing_key())
    with pytest.raises(QueryRefused, match="'130104' more than once"):
        scoping.check_scope(manifest, signed)


def test_a_scope_without_an_active_node_is_refused(fed: tuple[Path, Manifest]) -> None:
    root, manifest = fed
    query, _ = make_query(root / "xiong", SQL, epsilon=0.1, accuracy=None)
    with pytest.raises(QueryRefused, match="no active node"):
        scoping.check_scope(manifest, query)


def test_a_refusal_names_a_few_nodes_then_counts() -> None:
    ids = [f"1301{i:02d}" for i in range(25)]
    text = scoping.named(ids)
    assert text.count("'1301") == scoping.MAX_NAMED_NODES
    assert text.endswith(f"and {25 - scoping.MAX_NAMED_NODES} more")


def test_school_nodes_do_not_count_toward_a_secure_release(fed: tuple[Path, Manifest]) -> None:
    root, manifest = fed
    query, _ = make_query(root / "changan", SQL, epsilon=0.1, accuracy=None, secure=True)
    assert scoping.targets(manifest, query) == ("130104", "130104-s01")
    assert scoping.secure_targets(manifest, query) == ("130104",)
