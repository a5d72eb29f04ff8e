"""The export file of an offline host: round trip, signature, and the chain check that
names the seq a changed, removed or reordered event breaks it at."""

from __future__ import annotations

import base64
import json
from dataclasses import replace

import pytest
from baomi import chain, exportfile
from baomi.v1 import events_pb2
from cryptography.hazmat.primitives.asymmetric import ec

HOST = "ws-01"


def _bodies(count: int, start: int = 1, prev: bytes = chain.GENESIS) -> list[bytes]:
    out = []
    for seq in range(start, start + count):
        event = events_pb2.Event(host_id=HOST, seq=seq, prev_hash=prev)
        event.time.FromSeconds(1_800_000_000 + seq)
        event.tamper.kind = f"test-{seq}"
        body = chain.canonical_bytes(event)
        out.append(body)
        prev = chain.bytes_hash(body)
    return out


def _export(
    bodies: list[bytes], first: int = 1, prev: bytes = chain.GENESIS
) -> exportfile.ExportFile:
    return exportfile.ExportFile(
        host_id=HOST,
        first_seq=first,
        last_seq=first + len(bodies) - 1,
        prev_hash=prev,
        head_hash=chain.bytes_hash(bodies[-1]),
        created="2027-01-01T00:00:00+00:00",
        certificate="-----BEGIN CERTIFICATE-----\n...\n",
        bodies=bodies,
    )


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_round_trip_keeps_every_byte_and_the_signature(key: ec.EllipticCurvePrivateKey) -> None:
    export = _export(_bodies(5)).signed(key)
    back = exportfile.loads(export.dumps())
    assert back == export
    assert back.signature_ok(key.public_key())
    assert exportfile.chain_problem(back) is None
    # The events travel as an EventBatch, the bytes the gRPC stream carries.
    doc = json.loads(export.dumps())
    assert chain.batch_events(base64.b64decode(doc["events"])) == export.bodies


def test_an_export_continuing_a_chain_checks_against_its_start() -> None:
    earlier = _bodies(3)
    later = _bodies(2, start=4, prev=chain.bytes_hash(earlier[-1]))
    assert exportfile.chain_problem(_export(later, 4, chain.bytes_hash(earlier[-1]))) is None
    assert exportfile.chain_problem(_export(later, 4, chain.GENESIS)) == (
        4,
        "seq 4: prev_hash is not the export's start",
    )


def test_the_signature_covers_every_field(key: ec.EllipticCurvePrivateKey) -> None:
    export = _export(_bodies(3)).signed(key)
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    assert not export.signature_ok(other)
    for change in (
        {"bodies": [*export.bodies[:2], _bodies(3)[2][:-1] + b"\x01"]},
        {"created": "2027-01-02T00:00:00+00:00"},
        {"host_id": "ws-02"},
        {"certificate": "another"},
        {"last_seq": 4},
    ):
        assert not replace(export, **change).signature_ok(key.public_key()), change  # type: ignore[arg-type]


def _changed(body: bytes) -> bytes:
    event = events_pb2.Event.FromString(body)
    event.tamper.detail = "rewritten"
    return chain.canonical_bytes(event)


@pytest.mark.parametrize(
    ("what", "bodies", "seq", "said"),
    [
        ("changed", lambda b: [b[0], _changed(b[1]), *b[2:]], 2, "seq 2 was changed"),
        ("last changed", lambda b: [*b[:-1], _changed(b[-1])], 5, "seq 5 was changed"),
        ("removed", lambda b: [b[0], *b[2:]], 2, "seq 2 is missing"),
        ("reordered", lambda b: [b[0], b[2], b[1], *b[3:]], 2, "seq 2 is out of order"),
        ("doubled", lambda b: [*b[:3], b[2], *b[3:]], 3, "seq 3 comes twice"),
        ("cut", lambda b: b[:3], 4, "seq 4..5 are missing"),
        ("unparsable", lambda b: [b[0], b"\xff\xff", *b[2:]], 2, "does not parse"),
    ],
)
def test_chain_problem_names_the_seq(what: str, bodies: object, seq: int, said: str) -> None:
    export = _export(_bodies(5))
    tampered = replace(export, bodies=bodies(export.bodies))  # type: ignore[operator]
    problem = exportfile.chain_problem(tampered)
    assert problem is not None, what
    assert problem[0] == seq and said in problem[1], (what, problem)


def test_an_event_of_another_host_is_named() -> None:
    bodies = _bodies(2)
    foreign = events_pb2.Event.FromString(bodies[1])
    foreign.host_id = "ws-02"
    problem = exportfile.chain_problem(_export([bodies[0], chain.canonical_bytes(foreign)]))
    assert problem == (2, "seq 2: the event names host 'ws-02'")


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        (b"\x00\x01", "not JSON"),
        (b'{"format": "something-else/1"}', "format is not 'baomi-export/1'"),
        (b'{"format": "baomi-export/1"}', "host_id is missing"),
    ],
)
def test_what_is_not_an_export_is_said(raw: bytes, said: str) -> None:
    with pytest.raises(exportfile.ExportFormatError, match=said):
        exportfile.loads(raw)


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("events", "not base64!", "damaged"),
        ("prev_hash", "zz", "damaged"),
        ("first_seq", 0, "not a range of events"),
        ("last_seq", True, "last_seq is missing or not a int"),
    ],
)
def test_a_damaged_export_is_said(field: str, value: object, said: str) -> None:
    doc = json.loads(_export(_bodies(2)).dumps())
    doc[field] = value
    with pytest.raises(exportfile.ExportFormatError, match=said):
        exportfile.loads(json.dumps(doc).encode())
