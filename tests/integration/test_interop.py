"""A client written in another language, from protos/ and protos/README.md alone.

``tests/interop/client.mjs`` (Node.js: ``@grpc/grpc-js``, ``protobufjs``,
``@peculiar/x509``; installed by ``make test`` with ``npm ci``) enrols with a token
and a CSR of its own, streams three batches of its own hash chain -- each event
serialized once, hashed over those bytes -- checks every Ack against its chain, and
sends one batch again. The collector must store exactly the client's events with the
client's hashes, and the record must verify.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from collector import audit, pki
from collector.server import create_token
from tests.collector_harness import RunningCollector

CLIENT = Path(__file__).resolve().parents[1] / "interop" / "client.mjs"
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="needs Node.js"),
    pytest.mark.skipif(
        not (CLIENT.parent / "node_modules").is_dir(),
        reason="the interop client's packages are missing: make interop (npm ci)",
    ),
]


def test_a_node_client_enrols_streams_and_its_chain_verifies(collector: RunningCollector) -> None:
    token = create_token(collector.store, "ws-node")
    ca = collector.pki_dir / "ca.pem"
    done = subprocess.run(
        [
            str(NODE),
            str(CLIENT),
            collector.enroll_address,
            collector.address,
            str(ca),
            token,
            "20",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["host_id"] == "ws-node" and report["witness"] == "ok"
    assert report["start"] == 0
    assert [a["up_to_seq"] for a in report["acks"]] == [20, 40, 60, 60]  # the last: a replay
    stored = {r.seq: r.hash.hex() for r in collector.store.chain("ws-node")}
    assert stored == {int(seq): h for seq, h in report["hashes"].items()}
    collector.checkpoint()
    verified = audit.verify(collector.store, pki.load_verify_key(collector.pki_dir / "signing.pub"))
    assert verified.ok, verified.damage
    alerts = [r for r in collector.store.chain("_collector") if r.kind == "tamper"]
    assert alerts == []  # no break, no conflicting replay
