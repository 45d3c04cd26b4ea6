"""Scopes and places (``trust.scope``): who may ask which node, in the manifest, the
signed request and the certificate."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedscreen.errors import ConfigError, VerificationError
from fedscreen.trust import authority, certs, scope
from fedscreen.trust.identity import create_identity, issue_here, load_identity
from fedscreen.trust.manifest import Member, load_manifest


@dataclass(frozen=True)
class Node:
    id: str
    role: str = "node"
    level: str = ""
    scope: str = ""


county_codes = st.from_regex(r"13[0-9]{4}", fullmatch=True)
member_ids = st.from_regex(r"[a-z0-9][a-z0-9_-]{1,20}", fullmatch=True)


@st.composite
def nodes(draw: st.DrawFn) -> Node:
    kind = draw(st.sampled_from(scope.NODE_KINDS))
    county = draw(county_codes)
    node_id = county if kind == "county" else draw(member_ids)
    return Node(node_id, level=kind, scope=scope.node_scope(kind, county))


@given(nodes())
def test_the_province_sees_every_node_and_no_scope_means_province(node: Node) -> None:
    assert scope.scope_contains("province", node)
    assert scope.scope_contains("", node)


@given(nodes(), county_codes)
def test_a_city_sees_exactly_the_nodes_of_its_counties(node: Node, other: str) -> None:
    county = scope.county_of(node)
    for city in {other[:4], (county or other)[:4]}:
        inside = scope.scope_contains(f"city:{city}", node)
        assert inside == (county is not None and county[:4] == city)
    if node.level == "university":
        # a university reports to the province only
        assert county is None
        assert scope.city_of(node) is None


@given(nodes(), county_codes)
def test_a_county_sees_its_own_node_and_its_schools_only(node: Node, other: str) -> None:
    county = scope.county_of(node)
    assert scope.scope_contains(f"county:{other}", node) == (county == other)
    if county is not None:
        assert scope.scope_contains(f"county:{county}", node)


@given(nodes(), member_ids)
def test_a_node_scope_sees_that_one_node(node: Node, other: str) -> None:
    assert scope.scope_contains(f"node:{node.id}", node)
    assert scope.scope_contains(f"node:{other}", node) == (other == node.id)


@given(nodes(), st.text(max_size=30))
def test_a_scope_the_code_cannot_read_grants_nothing(node: Node, text: str) -> None:
    if text in ("", "province") or text.startswith(("city:", "county:", "node:")):
        return
    assert not scope.scope_contains(text, node)
    with pytest.raises(ConfigError):
        scope.check_member_scope(role="analyst", level="", scope=text)


def test_older_manifests_keep_their_meaning() -> None:
    # a node without a place: a six-digit id is a county, anything else the province's
    assert scope.node_place(Node("130102")) == "county:130102"
    assert scope.node_place(Node("10075")) == "province"
    assert scope.scope_contains("city:1301", Node("130102"))
    assert not scope.scope_contains("city:1301", Node("10075"))


@pytest.mark.parametrize(
    ("role", "level", "value"),
    [
        ("analyst", "", "city:13011"),
        ("analyst", "", "county:1301"),
        ("analyst", "", "City:1301"),
        ("analyst", "", "node:"),
        ("node", "university", "county:130102"),
        ("node", "county", "province"),
        ("node", "school", "city:1301"),
        ("node", "hospital", "county:130102"),
        ("coordinator", "", "province"),
        ("auditor", "", "city:1301"),
    ],
)
def test_a_scope_that_does_not_fit_the_member_is_refused(role: str, level: str, value: str) -> None:
    with pytest.raises(ConfigError):
        scope.check_member_scope(role=role, level=level, scope=value)


def test_a_manifest_member_with_an_unfit_scope_does_not_parse() -> None:
    member = Member("ana", "analyst", "Ana", b"\x01" * 32, "ab" * 32, scope="city:1301")
    assert Member.from_json(member.to_json()) == member
    # absent when unset: members issued before scopes serialise as they did
    assert "scope" not in Member("ana", "analyst", "Ana", b"\x01" * 32, "ab" * 32).to_json()
    bad = {**member.to_json(), "scope": "city:99"}
    with pytest.raises(VerificationError, match="scope"):
        Member.from_json(bad)
    with pytest.raises(VerificationError, match="scope"):
        Member.from_json({**member.to_json(), "scope": ["city:1301"]})


def test_the_scope_travels_from_request_to_certificate_and_manifest(tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    authority.init_authority(auth, federation="河北省")
    home = tmp_path / "sjz"
    ident = create_identity(home, member_id="sjz", role="analyst", name="石家庄", scope="city:1301")
    assert load_identity(home).scope == "city:1301"
    issue_here(auth, home)
    manifest = load_manifest(auth / authority.MANIFEST_FILE)
    assert manifest.member("sjz").scope == "city:1301"
    assert certs.cert_scope(certs.load_cert(ident.cert_path.read_bytes())) == "city:1301"


def test_a_request_whose_scope_was_edited_is_refused(tmp_path: Path) -> None:
    ident = create_identity(
        tmp_path / "sjz", member_id="sjz", role="analyst", name="石家庄", scope="city:1301"
    )
    request = json.loads(ident.request_path.read_text())
    assert certs.verify_request(request).scope == "city:1301"
    # widened after signing: the readable field no longer matches the signed claims
    with pytest.raises(VerificationError, match="differ from the claims"):
        certs.verify_request({**request, "scope": "province"})
    # dropped: the signed claims still name it
    with pytest.raises(VerificationError, match="differ from the claims"):
        certs.verify_request({k: v for k, v in request.items() if k != "scope"})
    with pytest.raises(VerificationError, match="exactly the fields"):
        certs.verify_request({**request, "scopes": "province"})


def test_pki_scope_signs_a_new_version_and_refuses_a_bad_one(tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    authority.init_authority(auth, federation="河北省")
    create_identity(tmp_path / "ana", member_id="ana", role="analyst", name="Ana")
    issue_here(auth, tmp_path / "ana")
    before = load_manifest(auth / authority.MANIFEST_FILE)
    after = authority.set_scope(auth, "ana", "county:130102")
    assert after.version == before.version + 1
    assert after.previous_sha256 == before.digest
    assert after.member("ana").scope == "county:130102"
    assert after.member("ana").signing_key == before.member("ana").signing_key
    with pytest.raises(ConfigError):
        authority.set_scope(auth, "ana", "county:13")
    with pytest.raises(ConfigError, match="not an active member"):
        authority.set_scope(auth, "nobody", "province")
    assert load_manifest(auth / authority.MANIFEST_FILE).version == after.version


def test_reissuing_keeps_the_scope_and_kind_the_manifest_gives(tmp_path: Path) -> None:
    """A rekey or renewal (``pki issue --replace``) from a request claiming another scope
    or place keeps the authority's: only ``pki scope`` changes it."""
    auth = tmp_path / "auth"
    authority.init_authority(auth, federation="河北省")
    create_identity(tmp_path / "a1", member_id="sjz", role="analyst", name="石家庄",
                    scope="city:1301")  # fmt: skip
    issue_here(auth, tmp_path / "a1")
    create_identity(tmp_path / "s1", member_id="130202-s01", role="node", name="school",
                    level="school", scope="county:130202")  # fmt: skip
    issue_here(auth, tmp_path / "s1")
    wider = create_identity(tmp_path / "a2", member_id="sjz", role="analyst", name="石家庄")
    cert_pem, member = authority.issue(auth, wider.request_path, replace=True)
    assert member.scope == "city:1301"
    assert certs.cert_scope(certs.load_cert(cert_pem)) == "city:1301"
    moved = create_identity(tmp_path / "s2", member_id="130202-s01", role="node", name="school")
    _, node = authority.issue(auth, moved.request_path, replace=True)
    assert (node.level, node.scope) == ("school", "county:130202")
    authority.set_scope(auth, "sjz", "county:130104")
    again = create_identity(tmp_path / "a3", member_id="sjz", role="analyst", name="石家庄",
                            scope="province")  # fmt: skip
    _, member = authority.issue(auth, again.request_path, replace=True)
    assert member.scope == "county:130104"


@pytest.mark.parametrize(
    ("member_id", "role", "value"),
    [
        ("sjz", "analyst", ""),  # an unset shell variable must not widen to the province
        ("coordinator", "coordinator", ""),
        ("sjz", "analyst", "city:１３０１"),  # full-width digits
        ("130202", "node", "county:130104"),  # 唐山's county node placed in 石家庄
    ],
)
def test_pki_scope_refuses_what_would_mislead(
    tmp_path: Path, member_id: str, role: str, value: str
) -> None:
    auth = tmp_path / "auth"
    authority.init_authority(auth, federation="河北省")
    create_identity(tmp_path / "m", member_id=member_id, role=role, name="m")
    issue_here(auth, tmp_path / "m")
    version = load_manifest(auth / authority.MANIFEST_FILE).version
    with pytest.raises(ConfigError):
        authority.set_scope(auth, member_id, value)
    assert load_manifest(auth / authority.MANIFEST_FILE).version == version


def test_a_county_node_named_by_its_code_is_placed_at_that_county(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="placed at county:130202"):
        create_identity(tmp_path / "n", member_id="130202", role="node", name="路南区",
                        level="county", scope="county:130104")  # fmt: skip
    for digits in ("１３０１０４", "١٣٠١٠٤"):
        with pytest.raises(ConfigError):
            scope.check_member_scope(role="node", level="school", scope=f"county:{digits}")


def test_the_policy_and_the_manifest_know_the_same_node_kinds() -> None:
    # trust.scope sits below policy in the layering, so each names the kinds itself
    from fedscreen.policy import NODE_KINDS

    assert scope.NODE_KINDS == NODE_KINDS


def test_a_county_has_one_county_node(tmp_path: Path) -> None:
    """Three county nodes placed in one county would make a three-node secure release one
    county's value: the authority issues one county node per county (the others are
    school nodes, which answer no secure query)."""
    auth = tmp_path / "auth"
    authority.init_authority(auth, federation="河北省")
    create_identity(tmp_path / "a", member_id="130102", role="node", name="长安区",
                    level="county", scope="county:130102")  # fmt: skip
    issue_here(auth, tmp_path / "a")
    twin = create_identity(tmp_path / "b", member_id="cz-b", role="node", name="twin",
                           level="county", scope="county:130102")  # fmt: skip
    with pytest.raises(ConfigError, match="county:130102 already has county node 130102"):
        authority.issue(auth, twin.request_path)
    school = create_identity(tmp_path / "s", member_id="cz-s", role="node", name="school",
                             level="school", scope="county:130102")  # fmt: skip
    authority.issue(auth, school.request_path)
    elsewhere = create_identity(tmp_path / "c", member_id="cz-c", role="node", name="other",
                                level="county", scope="county:130104")  # fmt: skip
    authority.issue(auth, elsewhere.request_path)
    with pytest.raises(ConfigError, match="already has county node 130102"):
        authority.set_scope(auth, "cz-c", "county:130102")
    # a county node revoked frees its county for the next one
    authority.revoke(auth, "130102")
    authority.issue(auth, twin.request_path)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("province", ("province", "")),
        ("city:1301", ("city", "1301")),
        ("county:130102", ("county", "130102")),
        ("node:10094", ("node", "10094")),
        ("city:13015", ("", "")),
        ("county:１３０１０２", ("", "")),
        ("Province", ("", "")),
        ("", ("", "")),
    ],
)
def test_one_reader_of_scopes_and_places(text: str, parsed: tuple[str, str]) -> None:
    assert scope.parse_scope(text) == parsed
    assert scope.place_county(text) == (parsed[1] if parsed[0] == "county" else None)
