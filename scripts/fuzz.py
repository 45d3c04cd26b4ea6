"""Long fuzz runs over the parsers of untrusted bytes (issue 12), beyond CI's budget.

    python scripts/fuzz.py --target envelope --seconds 600
    python scripts/fuzz.py --target all --seconds 60          # each target in turn
    python scripts/fuzz.py --list

With atheris installed (``pip install atheris``: coverage-guided, libFuzzer) that is
the engine; without it, or with ``--engine hypothesis``, hypothesis generates random
and mutated inputs for the same time. Either way a target gets bytes and must return
or raise the error its parser documents (``VerificationError`` and kin); any other
exception, or an input slower than ``--timeout`` seconds, is a finding, written to
``tests/data/fuzz/<target>/`` (``crash-…``/``timeout-…``, the exact bytes).
``tests/unit/fuzz/test_fuzz_regressions.py`` replays every file there on every test
run, so a finding stays a regression test once it is fixed.

The targets are defined here, once; CI's bounded properties are in ``tests/unit/fuzz``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fedscreen.audit.bundle import read_bundle
from fedscreen.crypto.envelope import (
    ANSWER_V1,
    BUDGET_V1,
    MANIFEST_V1,
    QUERY_V1,
    Envelope,
    sign_envelope,
    verify_envelope,
)
from fedscreen.crypto.signing import SigningKey
from fedscreen.errors import BundleError, ConfigError, QueryRefused, VerificationError
from fedscreen.protocol.answer import answer_payload, verify_answer
from fedscreen.protocol.budget import verify_statement
from fedscreen.protocol.query import SignedQuery, verify_query
from fedscreen.query.spec import Comparison, Measure, QuerySpec
from fedscreen.tlog.checkpoint import Checkpoint, parse_and_verify_note, sign_checkpoint
from fedscreen.trust.certs import read_request, verify_request
from fedscreen.trust.manifest import Manifest, Member, parse_manifest, sign_manifest

ROOT = Path(__file__).resolve().parents[1]
FINDINGS = ROOT / "tests" / "data" / "fuzz"

AUTHORITY = SigningKey(bytes([1] * 32))
ANALYST = SigningKey(bytes([2] * 32))
NODE = SigningKey(bytes([3] * 32))
NOW_MS = 1_767_225_600_000
ORIGIN = "fedscreen.node/130102"
MANIFEST = Manifest(
    federation="fuzz",
    version=1,
    issued_at="2026-01-01T00:00:00Z",
    authority_key=AUTHORITY.public_key,
    members=(
        Member("alice", "analyst", "Alice", ANALYST.public_key, "00" * 32),
        Member("130102", "node", "长安区", NODE.public_key, "11" * 32),
    ),
)
MANIFEST_TEXT = sign_manifest(MANIFEST, key=AUTHORITY)
SPEC = QuerySpec("screenings", Measure("count"), ("sex",), Comparison("phq9_total", ">=", (10,)))
QUERY = SignedQuery("ab" * 16, "alice", NOW_MS, SPEC, 0.3, None, ("130102",), digest="cd" * 32)
NOTE = sign_checkpoint(Checkpoint(ORIGIN, 5, bytes(32)), key=NODE)
ANSWER = answer_payload(
    {"node_id": "130102", "analyst": "alice", "epsilon": 0.3,
     "query": {**SPEC.to_json(), "years": ["2024-2025"]},
     "mechanism": "discrete_laplace", "scale": 3.3,
     "cells": [{"group": ["M"], "value": 120, "lower": 110.0, "upper": 130.0}]},
    2, NOTE, 0.3, query_id=QUERY.query_id, query_sha256=QUERY.digest,
)  # fmt: skip
STATEMENT = json.dumps(
    {"version": 1, "node_id": "130102", "issued_at_ms": NOW_MS, "policy_digest": "sha256:0",
     "limits": {"epsilon_per_node_per_year": 6.0, "max_epsilon_per_query": 0.5,
                "approval_above_epsilon": 0.3, "analyst_share": 0.4, "analyst_shares": {},
                "publication_threshold": 20, "max_groups": 200},
     "spent": {"2024-2025": {"node_micro": 1, "analysts": {"alice": 1}}},
     "unit": "micro-epsilon"}
).encode()  # fmt: skip


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogatepass") if _utf8ish(data) else data.decode("latin-1")


def _utf8ish(data: bytes) -> bool:
    try:
        data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return False
    return True


def envelope(data: bytes) -> None:
    for form in (data, _text(data)):
        try:
            parsed = Envelope.from_json(form)
            verify_envelope(parsed, expected_payload_type=QUERY_V1,
                            trusted_keys={ANALYST.key_id: ANALYST.public_key})  # fmt: skip
        except VerificationError:
            pass


def note(data: bytes) -> None:
    for form in (data, _text(data)):
        with contextlib.suppress(VerificationError):
            parse_and_verify_note(form, verifiers={ORIGIN: NODE.public_key})
    with contextlib.suppress(VerificationError):
        Checkpoint.from_body(_text(data))


def manifest(data: bytes) -> None:
    for form in (data, _text(data)):
        for pinned in (None, AUTHORITY.public_key):
            with contextlib.suppress(VerificationError):
                parse_manifest(form, authority_key=pinned)


def manifest_body(data: bytes) -> None:
    """A manifest file whose envelope is well signed over the fuzzed body."""
    signed = sign_envelope(payload_type=MANIFEST_V1, payload=data, key=AUTHORITY)
    text = json.dumps({"authority_key": base64.b64encode(AUTHORITY.public_key).decode(),
                       "envelope": json.loads(signed.to_json())})  # fmt: skip
    with contextlib.suppress(VerificationError):
        parse_manifest(text)


def request(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "request.json"
        path.write_bytes(data)
        with contextlib.suppress(ConfigError, VerificationError):
            verify_request(read_request(path))


def bundle(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bundle.json"
        path.write_bytes(data)
        with contextlib.suppress(BundleError):
            read_bundle(path)


def query(data: bytes) -> None:
    signed = sign_envelope(payload_type=QUERY_V1, payload=data, key=ANALYST)
    with contextlib.suppress(VerificationError, QueryRefused):
        verify_query(signed, manifest=MANIFEST, now_ms=NOW_MS)


def answer(data: bytes) -> None:
    signed = sign_envelope(payload_type=ANSWER_V1, payload=data, key=NODE)
    with contextlib.suppress(VerificationError):
        verify_answer(
            signed, manifest=MANIFEST, node_id="130102", expected_query=QUERY, public=False
        )


def statement(data: bytes) -> None:
    signed = sign_envelope(payload_type=BUDGET_V1, payload=data, key=NODE)
    try:
        verified = verify_statement(signed.to_json().encode(), manifest=MANIFEST, node_id="130102")
    except VerificationError:
        return
    for year in (*verified.years, "2030-2031"):
        verified.remaining(year, "alice")


#: name -> (target, seed inputs)
TARGETS: dict[str, tuple[Callable[[bytes], None], list[bytes]]] = {
    "envelope": (
        envelope,
        [sign_envelope(payload_type=QUERY_V1, payload=b"{}", key=ANALYST).to_json().encode()],
    ),
    "note": (note, [NOTE.encode()]),
    "manifest": (manifest, [MANIFEST_TEXT.encode()]),
    "manifest-body": (manifest_body, [MANIFEST.payload()]),
    "request": (request, [b'{"format": "fedscreen-cert-request/1"}']),
    "bundle": (
        bundle,
        [
            b'{"format": "fedscreen-audit-bundle/1", "manifest": null, "logs": '
            b'[{"member_id": "a", "origin": "b", "entries": ["AA=="], '
            b'"checkpoints": []}]}'
        ],
    ),
    "query": (query, [json.dumps(QUERY.to_json()).encode()]),
    "answer": (answer, [ANSWER]),
    "statement": (statement, [STATEMENT]),
}


def replay(name: str, path: Path) -> None:
    """Run one stored input through its target (what the regression test does)."""
    TARGETS[name][0](path.read_bytes())


# ---------------------------------------------------------------- engines


def run_atheris(name: str, seconds: int, timeout: int, out: Path) -> int:
    import atheris  # only here: the script loads without it

    target, seeds = TARGETS[name]
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as corpus:
        for seed in seeds:
            (Path(corpus) / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
        atheris.instrument_all()
        argv = [sys.argv[0], corpus, f"-max_total_time={seconds}", f"-timeout={timeout}",
                f"-artifact_prefix={out}/", "-rss_limit_mb=2048"]  # fmt: skip
        atheris.Setup(argv, target)
        atheris.Fuzz()  # exits the process: non-zero on a finding
    return 0


def run_hypothesis(name: str, seconds: int, timeout: int, out: Path) -> int:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    target, seeds = TARGETS[name]
    failing: list[bytes] = []

    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(0, max(len(data) - 1, 0)))
            how = draw(st.sampled_from(["flip", "cut", "insert", "repeat"]))
            if how == "flip" and data:
                data[at] ^= 1 << draw(st.integers(0, 7))
            elif how == "cut":
                del data[at : at + draw(st.integers(1, 64))]
            elif how == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=16))
            else:
                data[at:at] = data[at : at + draw(st.integers(1, 32))] * draw(st.integers(1, 400))
        return bytes(data)

    @settings(max_examples=5000, deadline=timeout * 1000, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(st.one_of(mutated(), st.binary(max_size=4096)))
    def fuzz(data: bytes) -> None:
        try:
            target(data)
        except BaseException:
            failing.append(data)
            raise

    end = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < end:
        rounds += 1
        try:
            fuzz()
        except Exception as exc:  # a finding: keep the (shrunk) input, the last one tried
            found = failing[-1]
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"crash-{hashlib.sha1(found).hexdigest()}"
            path.write_bytes(found)
            print(f"{name}: {type(exc).__name__}: {exc}\n  input written to {path}")
            return 1
    print(f"{name}: no finding in {seconds} s ({rounds} rounds of 5000 inputs, hypothesis)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=[*TARGETS, "all"], default="all")
    parser.add_argument("--seconds", type=int, default=60, help="per target (default: 60)")
    parser.add_argument("--timeout", type=int, default=5, help="per input, seconds (default: 5)")
    parser.add_argument("--engine", choices=["auto", "atheris", "hypothesis"], default="auto")
    parser.add_argument("--out", type=Path, default=FINDINGS, help="findings go to OUT/<target>/")
    parser.add_argument("--list", action="store_true", help="list the targets")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(TARGETS))
        return 0
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if importlib.util.find_spec("atheris") else "hypothesis"
    if args.target == "all":  # one process per target: atheris' Fuzz() never returns
        status = 0
        for name in TARGETS:
            status |= subprocess.call(
                [sys.executable, __file__, "--target", name, "--seconds", str(args.seconds),
                 "--timeout", str(args.timeout), "--engine", engine, "--out", str(args.out)]
            )  # fmt: skip
        return status
    run = run_atheris if engine == "atheris" else run_hypothesis
    print(f"fuzzing {args.target} for {args.seconds} s with {engine}", flush=True)
    return run(args.target, args.seconds, args.timeout, args.out / args.target)


if __name__ == "__main__":
    sys.exit(main())
