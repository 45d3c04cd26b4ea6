"""rpc.serde: a FetchResponse carries a stored release, its query and answers verbatim."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fedscreen.rpc import serde
from fedscreen.v1 import federation_pb2 as pb

NODE_IDS = st.text(alphabet="0123456789", min_size=1, max_size=12)


@settings(max_examples=200, deadline=None, database=None)
@given(
    query=st.binary(max_size=300),
    release=st.binary(max_size=300),
    answers=st.dictionaries(NODE_IDS, st.binary(max_size=100), max_size=6),
    missing=st.lists(NODE_IDS, max_size=4),
    version=st.integers(1, 2**32 - 1),
)
def test_fetch_round_trips_byte_for_byte(
    query: bytes, release: bytes, answers: dict[str, bytes], missing: list[str], version: int
) -> None:
    response = serde.fetch_response(
        query_envelope=query, release_envelope=release, answers=answers, missing=missing,
        release_version=version,
    )  # fmt: skip
    # over the wire and back
    fetched = serde.fetched(pb.FetchResponse.FromString(response.SerializeToString()))
    assert fetched == serde.Fetched(query, release, answers, tuple(missing), version)
    # answers go out in node order, whatever order they were held in
    assert [a.node_id for a in response.answers] == sorted(answers)
