"""Issue 12: the parsers of untrusted bytes serve or refuse, never crash, in bounded time.

Each property feeds a parser random and structured hostile input (``fuzzkit``: deep
nesting, NaN/Infinity literals, huge numbers, duplicate keys, invalid UTF-8, lone
surrogates, mutations of a valid document) and requires either a result or a
``VerificationError`` (``ConfigError`` for a request file, ``BundleError`` for a bundle).
Keys, manifests, requests and files are real.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from fuzzkit import (
    FUZZ,
    FUZZ_SLOW,
    any_text,
    deep,
    json_like_bytes,
    json_like_text,
    json_values,
    mutated,
    served_or_refused,
)
from hypothesis import example, given
from hypothesis import strategies as st

from fedscreen.audit.bundle import read_bundle
from fedscreen.crypto.envelope import QUERY_V1, Envelope, sign_envelope, verify_envelope
from fedscreen.crypto.signing import SigningKey
from fedscreen.errors import BundleError, ConfigError, VerificationError
from fedscreen.tlog.checkpoint import (
    Checkpoint,
    parse_and_verify_note,
    sign_checkpoint,
    verify_note,
)
from fedscreen.trust.certs import read_request, verify_request
from fedscreen.trust.identity import create_identity
from fedscreen.trust.manifest import Manifest, Member, parse_manifest, sign_manifest

KEY = SigningKey(bytes(range(32)))
OTHER = SigningKey(bytes(range(1, 33)))
ORIGIN = "fedscreen.node/130102"
CHECKPOINT_NOTE = sign_checkpoint(Checkpoint(ORIGIN, 7, bytes(32)), key=KEY)
ENVELOPE = sign_envelope(payload_type=QUERY_V1, payload=b'{"a":1}', key=KEY).to_json()
MANIFEST = Manifest(
    federation="fuzz",
    version=1,
    issued_at="2025-01-01T00:00:00Z",
    authority_key=KEY.public_key,
    members=(Member("130102", "node", "长安区", OTHER.public_key, "00" * 32),),
)
MANIFEST_TEXT = sign_manifest(MANIFEST, key=KEY)


# ---------------------------------------------------------------- DSSE envelopes


def _envelope(data: str | bytes) -> None:
    envelope = Envelope.from_json(data)
    verify_envelope(
        envelope, expected_payload_type=QUERY_V1, trusted_keys={KEY.key_id: KEY.public_key}
    )


@FUZZ
@given(st.one_of(json_like_text(), json_like_bytes(), mutated(ENVELOPE.encode())))
@example(ENVELOPE)
@example(deep("[", "]"))
def test_envelope_parser_serves_or_refuses(data: str | bytes) -> None:
    served_or_refused(lambda: _envelope(data), VerificationError)


@FUZZ
@given(
    payload=json_values,
    payload_type=any_text,
    keyid=any_text,
    sig=st.one_of(st.binary(max_size=80), any_text, json_values),
    extra=st.dictionaries(any_text, json_values, max_size=2),
)
def test_envelope_fields_of_any_type(
    payload: Any, payload_type: Any, keyid: Any, sig: Any, extra: dict[str, Any]
) -> None:
    """Right keys, wrong everything else: the envelope's own fields as any JSON value."""
    doc = {
        "payload": base64.b64encode(json.dumps(payload).encode()).decode()
        if isinstance(payload, str)
        else payload,
        "payloadType": payload_type,
        "signatures": [
            {
                "keyid": keyid,
                "sig": base64.b64encode(sig).decode() if isinstance(sig, bytes) else sig,
            }
        ],
        **extra,
    }
    served_or_refused(lambda: _envelope(json.dumps(doc, allow_nan=True)), VerificationError)


# ---------------------------------------------------------------- signed notes, checkpoints


def _note(note: str | bytes) -> None:
    verify_note(note, verifiers={ORIGIN: KEY.public_key})
    parse_and_verify_note(note, verifiers={ORIGIN: KEY.public_key})


note_texts = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=200),
    st.lists(
        st.one_of(any_text, st.sampled_from(CHECKPOINT_NOTE.split("\n")), st.just("")),
        max_size=8,
    ).map("\n".join),
    st.sampled_from(
        [
            CHECKPOINT_NOTE.replace("\n7\n", "\n" + "9" * 5000 + "\n"),
            CHECKPOINT_NOTE.replace("\n7\n", "\n18446744073709551616\n"),
            CHECKPOINT_NOTE.replace("\n7\n", "\n07\n"),
            CHECKPOINT_NOTE.replace(ORIGIN, ORIGIN + "\ud800"),
            CHECKPOINT_NOTE + "\u2014 \ud800 AAAA\n",
            CHECKPOINT_NOTE + ("\u2014 x AAAAAAAA\n" * 200),
            CHECKPOINT_NOTE.replace("\n\n", "\n\n\n"),
            "\n" * 100_000,
            "a\n\n" + "\u2014 " * 100_000 + "\n",
        ]
    ),
)


@FUZZ
@given(st.one_of(note_texts, json_like_bytes(), mutated(CHECKPOINT_NOTE.encode())))
@example(CHECKPOINT_NOTE)
@example(CHECKPOINT_NOTE.encode())
def test_note_parsers_serve_or_refuse(note: str | bytes) -> None:
    served_or_refused(lambda: _note(note), VerificationError)


@FUZZ
@given(st.text(st.characters(exclude_categories=()), max_size=120))
def test_checkpoint_body_parser_serves_or_refuses(text: str) -> None:
    served_or_refused(lambda: Checkpoint.from_body(text), VerificationError)


def test_the_valid_note_is_served() -> None:
    assert parse_and_verify_note(CHECKPOINT_NOTE, verifiers={ORIGIN: KEY.public_key}).size == 7


# ---------------------------------------------------------------- manifests


def _signed_manifest(body: Any, *, key: SigningKey = KEY) -> str:
    """A manifest file whose envelope is well signed over ``body`` (any JSON)."""
    payload = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
    envelope = sign_envelope(
        payload_type="application/vnd.fedscreen.manifest.v1+json", payload=payload, key=key
    )
    outer = {
        "authority_key": base64.b64encode(key.public_key).decode(),
        "envelope": json.loads(envelope.to_json()),
    }
    return json.dumps(outer)


member_like = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "role": st.one_of(st.sampled_from(["node", "analyst", "auditor"]), json_values),
        "name": json_values,
        "signing_key": st.one_of(st.just(base64.b64encode(OTHER.public_key).decode()), json_values),
        "tls_sha256": json_values,
        "level": json_values,
        "revoked": json_values,
    },
)
manifest_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"format": st.one_of(st.just("fedscreen-manifest/1"), json_values)},
        optional={
            "federation": json_values,
            "version": st.one_of(
                st.sampled_from([1, 1.5, float("inf"), float("nan"), "7", "1e999", True, 10**400]),
                json_values,
            ),
            "issued_at": json_values,
            "members": st.one_of(
                st.lists(st.one_of(member_like, json_values), max_size=3), json_values
            ),
            "ca_sha256": json_values,
        },
    ),
)


@FUZZ
@given(
    st.one_of(json_like_text(), json_like_bytes(), mutated(MANIFEST_TEXT.encode())), st.booleans()
)
@example(deep('{"envelope":', "}"), True)
def test_manifest_file_serves_or_refuses(text: str | bytes, pinned: bool) -> None:
    key = KEY.public_key if pinned else None
    served_or_refused(lambda: parse_manifest(text, authority_key=key), VerificationError)


@FUZZ
@given(manifest_bodies, st.booleans(), st.booleans())
@example(
    {
        "format": "fedscreen-manifest/1",
        "federation": "f",
        "version": float("inf"),
        "issued_at": "",
        "members": [],
    },
    False,
    True,
)
@example([1], False, False)
def test_well_signed_malformed_manifest_is_refused(body: Any, pinned: bool, as_bytes: bool) -> None:
    """Without a pinned key the file's own key is trusted, so anyone can sign any body."""
    text: str | bytes = _signed_manifest(body)
    if as_bytes:
        text = text.encode()
    key = KEY.public_key if pinned else None
    served_or_refused(lambda: parse_manifest(text, authority_key=key), VerificationError)


def test_the_valid_manifest_is_served() -> None:
    assert parse_manifest(MANIFEST_TEXT, authority_key=KEY.public_key) == MANIFEST


# ---------------------------------------------------------------- certificate requests


@pytest.fixture(scope="module")
def request_doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("member")
    identity = create_identity(home / "m", member_id="130102", role="node", name="长安区")
    return read_request(identity.request_path)


@FUZZ_SLOW
@given(
    field=st.sampled_from(
        ["format", "id", "role", "name", "level", "signing_key", "csr", "proof", "extra"]
    ),
    value=st.one_of(json_values, any_text),
)
def test_request_with_any_field_value_is_refused(
    request_doc: dict[str, Any], field: str, value: Any
) -> None:
    doc = dict(request_doc)
    doc[field] = value
    served_or_refused(lambda: verify_request(doc), VerificationError)


@FUZZ_SLOW
@given(data=st.data())
def test_request_with_a_mutated_csr_or_proof_is_refused(
    request_doc: dict[str, Any], data: st.DataObject
) -> None:
    doc = dict(request_doc)
    field = data.draw(st.sampled_from(["csr", "proof", "signing_key"]))
    raw = data.draw(mutated(doc[field].encode()))
    doc[field] = raw.decode("utf-8", "surrogateescape")
    served_or_refused(lambda: verify_request(doc), VerificationError)


@FUZZ
@given(json_values)
def test_request_of_any_shape_is_refused(value: Any) -> None:
    served_or_refused(lambda: verify_request(value), VerificationError)


def test_a_csr_of_another_version_is_refused(request_doc: dict[str, Any]) -> None:
    """A found case: a CSR whose version is 32, not v1 (0), raises cryptography's
    InvalidVersion, which is no ValueError."""
    pem = request_doc["csr"].splitlines()
    body = base64.b64decode("".join(pem[1:-1]))
    at = body.index(b"\x02\x01\x00")  # the version: INTEGER 0
    odd = body[:at] + b"\x02\x01\x20" + body[at + 3 :]
    lines = [base64.b64encode(odd).decode()[i : i + 64] for i in range(0, len(odd) * 2, 64)]
    csr = "\n".join([pem[0], *filter(None, lines), pem[-1]]) + "\n"
    with pytest.raises(VerificationError, match="not a PEM certificate request"):
        verify_request({**request_doc, "csr": csr})


def test_the_valid_request_verifies(request_doc: dict[str, Any]) -> None:
    assert verify_request(request_doc).member_id == "130102"


@FUZZ_SLOW
@given(json_like_bytes())
@example(deep("[", "]").encode())
@example(deep('{"a":', "}").encode())
def test_request_file_reader_serves_or_refuses(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "request.json"
    path.write_bytes(data)

    def read_and_verify() -> None:
        try:
            doc = read_request(path)
        except ConfigError:
            return
        verify_request(doc)

    served_or_refused(read_and_verify, VerificationError)


# ---------------------------------------------------------------- audit bundles


def _bundle_doc(draw_logs: Any) -> dict[str, Any]:
    return {"format": "fedscreen-audit-bundle/1", "manifest": None, "logs": draw_logs}


log_like = st.fixed_dictionaries(
    {},
    optional={
        "member_id": json_values,
        "origin": json_values,
        "entries": st.one_of(st.lists(st.one_of(any_text, json_values), max_size=3), json_values),
        "checkpoints": st.one_of(
            st.lists(st.one_of(any_text, json_values), max_size=3), json_values
        ),
    },
)


@FUZZ_SLOW
@given(
    st.one_of(
        json_like_bytes(),
        st.one_of(log_like, json_values).map(
            lambda log: json.dumps(_bundle_doc([log]), allow_nan=True).encode(
                "utf-8", "surrogatepass"
            )
        ),
        st.sampled_from(
            [
                json.dumps(_bundle_doc([])).replace("[]", deep("[", "]")).encode(),
                b'{"format": "fedscreen-audit-bundle/1", "logs": [], "manifest": '
                + b"9" * 5000
                + b"}",
                b'{"format": "fedscreen-audit-bundle/1", "logs": [], "manifest": 1e999}',
                b'{"format": "fedscreen-audit-bundle/1", "format": "x", "logs": []}',
            ]
        ),
    )
)
def test_bundle_reader_serves_or_refuses(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "bundle.json"
    path.write_bytes(data)
    served_or_refused(lambda: read_bundle(path), BundleError)


def test_a_csr_whose_key_is_off_the_curve_is_refused(request_doc: dict[str, Any]) -> None:
    """Found by the property above: one flipped bit in the EC point (04 -> 84) made
    ``is_signature_valid`` raise ValueError("Invalid key"); one in the curve's OID,
    UnsupportedAlgorithm."""
    for before, after in [("DQgAE", "DQgCE"), ("\nzj0DAQc", "\nzj0DAQd")]:  # point; curve
        doc = dict(request_doc)
        doc["csr"] = doc["csr"].replace(before, after, 1)
        assert doc["csr"] != request_doc["csr"]
        with pytest.raises(VerificationError):
            verify_request(doc)
