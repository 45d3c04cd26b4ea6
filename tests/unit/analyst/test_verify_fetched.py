"""analyst.query.verify_fetched: a fetched release is trusted only with the analyst's own
signed query, for the id asked (hypothesis: any bytes from the coordinator are a
VerificationError, never another exception)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from signedanswers import ANALYST, MANIFEST, signed_query

from fedscreen.analyst.query import verify_fetched
from fedscreen.crypto.envelope import QUERY_V1, sign_envelope
from fedscreen.crypto.signing import SigningKey
from fedscreen.errors import VerificationError
from fedscreen.protocol.query import issue_query
from fedscreen.query.sqlparse import parse_sql
from fedscreen.rpc.serde import Fetched

SQL = "SELECT sex, COUNT(*) FROM screenings WHERE academic_year = '2024-2025' GROUP BY sex"
QUERY = signed_query(parse_sql(SQL))
ENVELOPE = issue_query(QUERY, key=ANALYST)[1].to_json().encode("utf-8")


def _fetched(query: bytes = ENVELOPE, release: bytes = b"{}", version: int = 1) -> Fetched:
    return Fetched(query, release, {}, (), version)


def test_the_query_must_be_the_analysts_own_and_the_one_asked() -> None:
    with pytest.raises(VerificationError, match="signed by alice, not by bob"):
        verify_fetched(_fetched(), manifest=MANIFEST, analyst="bob", query_id=QUERY.query_id)
    with pytest.raises(VerificationError, match=f"returned query {QUERY.query_id}, not "):
        verify_fetched(_fetched(), manifest=MANIFEST, analyst="alice", query_id="cd" * 16)
    # an id that is no query id is not echoed
    with pytest.raises(VerificationError, match=r"not \(invalid id\)"):
        verify_fetched(_fetched(), manifest=MANIFEST, analyst="alice", query_id="\x1b[2J")
    # the query is alice's and the id asked: then the release itself must verify
    with pytest.raises(VerificationError, match="envelope must have exactly the fields"):
        verify_fetched(_fetched(), manifest=MANIFEST, analyst="alice", query_id=QUERY.query_id)


def test_a_query_signed_by_a_key_outside_the_manifest_is_refused() -> None:
    forged = issue_query(QUERY, key=SigningKey.generate())[1].to_json().encode("utf-8")
    with pytest.raises(VerificationError):
        verify_fetched(
            _fetched(forged), manifest=MANIFEST, analyst="alice", query_id=QUERY.query_id
        )


def test_a_well_signed_malformed_query_is_a_verification_error() -> None:
    bad = sign_envelope(payload_type=QUERY_V1, payload=b'{"analyst": "alice"}', key=ANALYST)
    with pytest.raises(VerificationError, match="does not verify"):
        verify_fetched(
            _fetched(bad.to_json().encode()), manifest=MANIFEST, analyst="alice",
            query_id=QUERY.query_id,
        )  # fmt: skip


@settings(max_examples=300, deadline=None, database=None)
@given(
    query=st.binary(max_size=200) | st.just(ENVELOPE),
    release=st.binary(max_size=200) | st.text(max_size=200).map(str.encode),
    version=st.integers(0, 2**32 - 1),
)
def test_any_bytes_from_the_coordinator_are_a_verification_error(
    query: bytes, release: bytes, version: int
) -> None:
    with pytest.raises(VerificationError):
        verify_fetched(
            _fetched(query, release, version), manifest=MANIFEST, analyst="alice",
            query_id=QUERY.query_id,
        )  # fmt: skip
