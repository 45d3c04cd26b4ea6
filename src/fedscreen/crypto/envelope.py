"""DSSE v1 signed envelopes (https://github.com/secure-systems-lab/dsse, protocol.md).

The payload of an :class:`Envelope` is deliberately not public: the only way to
read it is :func:`verify_envelope`, which returns it after checking the payload
type and a signature from a trusted key.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import orjson

from fedscreen._util.canonical import canonical_json
from fedscreen.crypto.signing import SignatureMemo, SigningKey, verify_signature
from fedscreen.errors import MalformedEnvelope, VerificationError

ANSWER_V1 = "application/vnd.fedscreen.answer.v1+json"
QUERY_V1 = "application/vnd.fedscreen.query.v1+json"
RELEASE_V1 = "application/vnd.fedscreen.release.v1+json"
BUDGET_V1 = "application/vnd.fedscreen.budget.v1+json"
LOG_ENTRY_V1 = "application/vnd.fedscreen.log-entry.v1+json"
MANIFEST_V1 = "application/vnd.fedscreen.manifest.v1+json"
PARTIAL_V1 = "application/vnd.fedscreen.partial.v1+json"

# Bounds on what from_json accepts, so a hostile envelope cannot cost unbounded work.
MAX_SIGNATURES = 16

#: The shape of the text ``Envelope.to_json`` writes for one signature: sorted keys, no
#: spaces, a payload type and key id that need no JSON escapes, and two values that
#: ``from_json`` then decodes as canonical standard base64 (the alphabet checked by the
#: strict decoder, not here: ``[^"]`` scans about twice as fast as a class). Text that
#: matches and decodes is canonical JSON with exactly the DSSE fields (a value with no
#: backslash ends at its first quote), so ``from_json`` can skip the JSON parser and the
#: re-serialisation it needs to rule out duplicate keys; audits read millions of such
#: envelopes. Anything else takes the strict general path, which decides.
_CANONICAL_ONE_SIGNATURE = re.compile(
    rb'\{"payload":"([^"]*)","payloadType":"([A-Za-z0-9.+/_-]+)",'
    rb'"signatures":\[\{"keyid":"([A-Za-z0-9._:-]*)","sig":"([^"]*)"\}\]\}'
)


class EnvelopeSignature(NamedTuple):
    """One DSSE signature: the (unauthenticated) key id hint and the raw signature."""

    keyid: str
    sig: bytes


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding (protocol.md, "Signature definition").

    ``PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body``,
    with LEN the ASCII decimal byte length and ``type`` encoded as UTF-8.
    """
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


@dataclass(frozen=True)
class Envelope:
    """A DSSE envelope. Read the payload only through :func:`verify_envelope`."""

    payload_type: str
    _payload: bytes = field(repr=False)
    signatures: tuple[EnvelopeSignature, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.payload_type, str) or not isinstance(self._payload, bytes):
            raise TypeError("Envelope needs a str payload_type and a bytes payload")
        if not all(isinstance(s, EnvelopeSignature) for s in self.signatures):
            raise TypeError("Envelope signatures must be EnvelopeSignature tuples")

    @classmethod
    def _checked(
        cls, payload_type: str, payload: bytes, signatures: tuple[EnvelopeSignature, ...]
    ) -> Envelope:
        """An Envelope of values whose types the caller has established (``from_json``'s
        fast path): ``__post_init__``'s checks skipped, the audit's hottest allocation."""
        envelope = object.__new__(cls)
        object.__setattr__(envelope, "payload_type", payload_type)
        object.__setattr__(envelope, "_payload", payload)
        object.__setattr__(envelope, "signatures", signatures)
        return envelope

    def unverified_payload(self) -> bytes:
        """The payload *before* any signature is checked: only to learn who should have
        signed it (or which manifest to check it with), never to act on."""
        return self._payload

    def to_json(self) -> str:
        """Serialise per DSSE's JSON envelope (standard base64 for payload and sigs)."""
        doc = {
            "payload": _b64encode(self._payload),
            "payloadType": self.payload_type,
            "signatures": [{"keyid": s.keyid, "sig": _b64encode(s.sig)} for s in self.signatures],
        }
        return canonical_json(doc).decode("utf-8")

    @classmethod
    def from_json(cls, data: str | bytes) -> Envelope:
        """Parse a DSSE JSON envelope strictly; raise MalformedEnvelope if anything is off.

        Exactly the fields ``payload``, ``payloadType`` and ``signatures`` (each
        signature exactly ``keyid`` and ``sig``), no duplicate keys, canonical
        standard base64 (DSSE also allows URL-safe; fedscreen only writes standard).
        """
        parts = _canonical_parts(data)
        if parts is not None:
            payload_type, payload, ((keyid, sig),) = parts
            return cls._checked(payload_type, payload, (EnvelopeSignature(keyid, sig),))
        try:
            doc = json.loads(data, parse_constant=_no_constant)
            # Fast path: text that is exactly the canonical serialisation (what to_json
            # writes) cannot hold a duplicate key; anything else is parsed again with
            # the duplicate-rejecting hook. Audits verify millions of our own envelopes.
            if not isinstance(doc, dict) or not _is_canonical(doc, data):
                doc = json.loads(
                    data, object_pairs_hook=_no_duplicates, parse_constant=_no_constant
                )
        except (ValueError, RecursionError, TypeError) as e:
            raise MalformedEnvelope(f"envelope is not valid JSON: {e}") from None
        fields = _exact_object(doc, {"payload", "payloadType", "signatures"}, "envelope")
        payload_type = fields["payloadType"]
        if not isinstance(payload_type, str) or not payload_type:
            raise MalformedEnvelope("envelope payloadType must be a non-empty string")
        payload = _b64decode(fields["payload"], "payload")
        sigs = fields["signatures"]
        if not isinstance(sigs, list) or not sigs:
            raise MalformedEnvelope("envelope signatures must be a non-empty list")
        if len(sigs) > MAX_SIGNATURES:
            raise MalformedEnvelope(f"envelope has more than {MAX_SIGNATURES} signatures")
        parsed = []
        for raw in sigs:
            sig_fields = _exact_object(raw, {"keyid", "sig"}, "signature")
            keyid = sig_fields["keyid"]
            if not isinstance(keyid, str):
                raise MalformedEnvelope("signature keyid must be a string")
            parsed.append(EnvelopeSignature(keyid, _b64decode(sig_fields["sig"], "sig")))
        return cls(payload_type, payload, tuple(parsed))


def sign_envelope(*, payload_type: str, payload: bytes, key: SigningKey) -> Envelope:
    """Sign ``payload`` as ``payload_type`` (DSSE protocol.md, "Protocol" step Sign)."""
    if not payload_type:
        raise ValueError("payload_type must be non-empty")
    sig = key.sign(pae(payload_type, payload))
    return Envelope(payload_type, payload, (EnvelopeSignature(key.key_id, sig),))


def verify_envelope(
    envelope: Envelope,
    *,
    expected_payload_type: str,
    trusted_keys: Mapping[str, bytes],
    memo: SignatureMemo | None = None,
) -> bytes:
    """Return the payload once the type matches and a trusted key's signature verifies.

    ``trusted_keys`` maps key id to raw Ed25519 public key. Signatures whose key id
    is not trusted are ignored (DSSE: keyid is only a hint); a signature under a
    trusted key id that fails to verify rejects the whole envelope.
    """
    return _verify(
        envelope.payload_type,
        envelope._payload,
        envelope.signatures,
        expected_payload_type,
        trusted_keys,
        memo,
    )


def verify_envelope_json(
    data: str | bytes,
    *,
    expected_payload_type: str,
    trusted_keys: Mapping[str, bytes],
    memo: SignatureMemo | None = None,
) -> bytes:
    """``verify_envelope(Envelope.from_json(data), ...)``: the same checks, errors and result.

    Text as ``to_json`` writes it is verified without building the Envelope (audits
    verify every entry of every log this way); anything else goes through both steps.
    """
    parts = _canonical_parts(data)
    if parts is None:
        return verify_envelope(
            Envelope.from_json(data),
            expected_payload_type=expected_payload_type,
            trusted_keys=trusted_keys,
            memo=memo,
        )
    return _verify(*parts, expected_payload_type, trusted_keys, memo)


def _verify(
    payload_type: str,
    payload: bytes,
    signatures: Iterable[tuple[str, bytes]],
    expected_payload_type: str,
    trusted_keys: Mapping[str, bytes],
    memo: SignatureMemo | None,
) -> bytes:
    """:func:`verify_envelope` of an envelope's parts (key id and signature pairs)."""
    if payload_type != expected_payload_type:
        raise VerificationError(
            f"envelope payload type is {payload_type!r}, expected {expected_payload_type!r}"
        )
    # DSSE protocol.md "Verify": signatures are over PAE(payloadType, payload).
    message = pae(payload_type, payload)
    verified = False
    for keyid, sig in signatures:
        public_key = trusted_keys.get(keyid)
        if public_key is None:
            continue
        try:
            (memo.verify if memo is not None else verify_signature)(public_key, message, sig)
        except VerificationError:
            raise VerificationError(f"envelope signature by key {keyid} does not verify") from None
        verified = True
    if not verified:
        raise VerificationError("envelope has no signature from a trusted key")
    return payload


def _canonical_parts(data: str | bytes) -> tuple[str, bytes, tuple[tuple[str, bytes]]] | None:
    """Payload type, payload and its one (key id, signature) of text of the shape
    ``to_json`` writes whose values are canonical standard base64; else None (the strict
    parser decides)."""
    fast = _CANONICAL_ONE_SIGNATURE.fullmatch(
        data if isinstance(data, bytes) else data.encode("utf-8", "replace")
    )
    if fast is None:
        return None
    try:
        payload = _b64decode_standard(fast[1], "payload")
        sig = _b64decode_standard(fast[4], "sig")
    except MalformedEnvelope:
        return None  # not base64 as to_json writes it (escapes, URL-safe): strict path
    return fast[2].decode("ascii"), payload, ((fast[3].decode("ascii"), sig),)


def parse_json(data: str | bytes) -> Any:
    """Parse untrusted JSON (a verified payload, a file); raise ValueError for anything else.

    Plain :func:`json.loads` accepts ``NaN`` and ``Infinity`` (RFC 8259 §6 has neither)
    and raises RecursionError, not ValueError, on deep nesting: here both are ValueError,
    as are invalid UTF-8 and integers past Python's digit limit, so a caller's
    ``except ValueError`` covers every way bytes fail to be JSON. A name repeated in
    one object is refused too.
    """
    doc = _parse_compact(data)
    return _parse_json_strict(data) if doc is _NOT_COMPACT else doc


#: what :func:`_parse_compact` returns for text it leaves to the strict parser
_NOT_COMPACT: Final = object()


def _parse_compact(data: str | bytes) -> Any:
    """``data`` parsed by orjson if it is exactly what orjson writes for the result (the
    form canonical_json gives every signed payload); else :data:`_NOT_COMPACT`.

    Text equal to a serialisation of its own value names each key once (a repeated
    name would be lost, so the bytes would differ) and holds nothing outside RFC 8259:
    it means one thing, the value both parsers give. orjson writes nothing nested 255
    deep or more, so deep text is always the strict parser's (whose limit depends on
    the caller's stack). Audits parse every payload they verify; this is two to three
    times as fast as the strict parser.
    """
    if isinstance(data, bytes):
        raw = data
    elif isinstance(data, str):
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: the strict parser decides
            return _NOT_COMPACT
    else:
        return _NOT_COMPACT
    try:
        doc = orjson.loads(raw)
        # no OPT_SORT_KEYS: key order is kept, so canonical and merely compact text match
        return doc if orjson.dumps(doc) == raw else _NOT_COMPACT
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return _NOT_COMPACT


def _parse_json_strict(data: str | bytes) -> Any:
    """The general parser :func:`parse_json` falls back to (and is tested against)."""
    try:
        # duplicate names: RFC 8259 §4 leaves them undefined (first or last wins, by
        # parser), so signed bytes holding one do not mean one thing
        return json.loads(data, parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except TypeError as e:  # not str or bytes
        raise ValueError(str(e)) from None


def _is_canonical(doc: dict[str, Any], data: str | bytes) -> bool:
    """Whether ``data`` is exactly the canonical serialisation of ``doc`` (the fast path)."""
    try:
        canonical = canonical_json(doc)
    except ValueError:  # NaN/infinity, lone surrogates: not ours; the strict parse decides
        return False
    return canonical == (data if isinstance(data, bytes) else data.encode("utf-8", "replace"))


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


#: base64 symbols (either alphabet) whose value has its low 4 / low 2 bits zero
_LOW_4_ZERO = frozenset(b"AQgw")
_LOW_2_ZERO = frozenset(b"AEIMQUYcgkosw048")
_URL_SAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")


def _b64decode(value: object, what: str) -> bytes:
    """Decode canonical base64 in the standard (RFC 4648 §4) or the URL-safe (§5) alphabet.

    DSSE requires verifiers to accept both (fedscreen writes only the standard one);
    either way the encoding must be canonical, padding included, so one value has one
    spelling per alphabet. Anything else is MalformedEnvelope.
    """
    if not isinstance(value, str):
        raise MalformedEnvelope(f"{what} must be a base64 string")
    url_safe = "-" in value or "_" in value
    if url_safe and ("+" in value or "/" in value):
        raise MalformedEnvelope(f"{what} mixes the two base64 alphabets")
    try:
        data = value.encode("ascii")
    except UnicodeEncodeError:
        raise MalformedEnvelope(f"{what} is not valid base64") from None
    return _b64decode_standard(data.translate(_URL_SAFE_TO_STANDARD) if url_safe else data, what)


def _b64decode_standard(value: bytes, what: str) -> bytes:
    """:func:`_b64decode` past its alphabet choice: standard-alphabet bytes (``from_json``'s
    fast path calls it directly on the text it matched, with no str round trip)."""
    try:
        raw = binascii.a2b_base64(value, strict_mode=True)  # = b64decode(validate=True)
    except binascii.Error:
        raise MalformedEnvelope(f"{what} is not valid base64") from None
    if len(value) % 4 or not _zero_pad_bits(value):
        raise MalformedEnvelope(f"{what} is not canonical base64")
    return raw


def _zero_pad_bits(value: bytes) -> bool:
    """Whether the bits the padding leaves unused are zero (RFC 4648 §3.5: canonical).

    With one ``=`` the last symbol carries 2 unused bits, with ``==`` 4; the symbols
    whose low bits are zero are the same in both alphabets. (Cheaper than encoding
    the decoded bytes again, which audits would do for every entry.)
    """
    if value.endswith(b"=="):
        return len(value) >= 3 and value[-3] in _LOW_4_ZERO
    if value.endswith(b"="):
        return len(value) >= 2 and value[-2] in _LOW_2_ZERO
    return True


def _exact_object(value: object, keys: set[str], what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedEnvelope(f"{what} must be a JSON object")
    if set(value) != keys:
        raise MalformedEnvelope(f"{what} must have exactly the fields {sorted(keys)}")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # dict() in C, then one length check: every signed payload an audit reads comes here
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")
