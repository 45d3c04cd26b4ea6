"""``unsigned_payload``: which log entries are bare payloads, for any bytes at all."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fedscreen._util.canonical import canonical_json
from fedscreen.crypto.envelope import LOG_ENTRY_V1, sign_envelope
from fedscreen.crypto.signing import SigningKey
from fedscreen.errors import VerificationError
from fedscreen.tlog.entries import COORDINATOR_UNSIGNED, unsigned_payload

KEY = SigningKey(bytes(range(32)))
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["kind", "payload", "payloadType", "x"]), children, max_size=3
        )
    ),
    max_leaves=8,
)


@given(st.binary(max_size=200) | _json.map(lambda v: json.dumps(v).encode()))
@example(b'{"kind":"answer"}')
@example(b'{"kind": "answer"}')
@example(b'{"kind":"release"}')
@example(b'{"kind":["answer"]}')
@example(b'{"kind":"answer","payloadType":"x"}')
@example(b'{"payload":"e30=","payloadType":"t","signatures":[]}')
@example(b"\xff")
@example(b'{"kind":"answer","x":1e400}')  # parses to infinity, which JSON cannot write
@example(b'{"kind":"answer","x":"\\ud800"}')  # a lone surrogate: no UTF-8 for it
def test_any_bytes_are_a_bare_entry_an_envelope_candidate_or_refused(raw: bytes) -> None:
    try:
        result = unsigned_payload(raw, COORDINATOR_UNSIGNED)
    except VerificationError:
        return  # a bare entry that may not be (another kind, or not canonical)
    if result is not None:
        assert result is raw
        doc = json.loads(raw)
        assert doc["kind"] in COORDINATOR_UNSIGNED
        assert "payloadType" not in doc
        assert canonical_json(doc) == raw


@given(st.dictionaries(st.sampled_from(["envelope", "index", "node", "query_id"]), st.text()))
def test_a_canonical_answer_payload_is_its_own_payload(fields: dict[str, str]) -> None:
    raw = canonical_json({**fields, "kind": "answer"})
    assert unsigned_payload(raw, COORDINATOR_UNSIGNED) == raw
    with pytest.raises(VerificationError, match="unsigned entry of kind 'answer'"):
        unsigned_payload(raw, frozenset())  # a log that may hold no unsigned entry
    signed = sign_envelope(payload_type=LOG_ENTRY_V1, payload=raw, key=KEY).to_json().encode()
    assert unsigned_payload(signed, COORDINATOR_UNSIGNED) is None  # the envelope's to verify
