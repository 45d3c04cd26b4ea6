"""A dishonest node's words reach the coordinator's log lines and releases only in fixed
forms (finding A7 (b)(c) of issue 11's attack round).

The same federation as ``test_federation.py`` (its builder and helpers, reused); one
county's process is replaced by a client holding that county's real identity that
speaks the node protocol over the real mutual-TLS stream and refuses the query with
a forged query id (a fake log line, terminal escapes) and a reason outside the
refusal vocabulary.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

from test_federation import NODES, _query, _submit, run, running_federation

from fedscreen.rpc import transport
from fedscreen.trust.identity import load_identity
from fedscreen.v1 import federation_pb2 as pb
from fedscreen.v1 import federation_pb2_grpc as pb_grpc

FORGED_ID = "x\n2026-12-06 21:00:00 CRITICAL coordinator: all nodes quarantined\x1b[2J\x07"
FORGED_REASON = "\x1b[31mpwned\x1b[0m\nCRITICAL coordinator: the province's key leaked\x07"
#: the bound of every wait for a message on the stream (s)
STREAM_WAIT_S = 20.0


def test_a_node_s_forged_query_id_and_reason_are_never_written_raw(tmp_path: Path) -> None:
    with running_federation(tmp_path) as fed:
        liar = NODES[0]
        fed.kill_node(liar)
        identity = load_identity(fed.node_home(liar))
        coordinator_id = fed.manifest.coordinator()
        _, envelope = _query(fed)
        before = fed.coordinator_log.read_bytes()

        async def scenario() -> dict[str, object]:
            async with transport.channel(identity, fed.address, peer_id=coordinator_id) as ch:
                call = pb_grpc.NodeLinkStub(ch).Connect()
                hello = pb.Hello(node_id=liar, node_time_unix_ms=int(time.time() * 1000))
                await call.write(pb.NodeMessage(hello=hello))
                first = await asyncio.wait_for(call.read(), STREAM_WAIT_S)
                assert first.WhichOneof("kind") == "welcome"
                submitting = asyncio.create_task(_submit(fed, envelope))
                while True:
                    message = await asyncio.wait_for(call.read(), STREAM_WAIT_S)
                    if message.WhichOneof("kind") == "query":
                        break
                query_id = message.query.query_id
                for forged_id, reason in ((FORGED_ID, "budget: x"), (query_id, FORGED_REASON)):
                    refusal = pb.Refusal(query_id=forged_id, reason=reason)
                    await call.write(pb.NodeMessage(refusal=refusal))
                submitted = await submitting
                await call.done_writing()
                call.cancel()
            payload = json.loads(submitted.release_envelope)["payload"]
            body: dict[str, object] = json.loads(base64.b64decode(payload))
            return body

        body = run(scenario)
        reasons = body["missing_reasons"]
        assert isinstance(reasons, dict)
        assert reasons[liar] == "refused: (reason not understood)"
        written = fed.coordinator_log.read_bytes()[len(before) :]
        assert b"(invalid id)" in written
        for raw in (b"\x1b", b"\x07", b"all nodes quarantined", b"key leaked", b"pwned"):
            assert raw not in written
