"""The HTTP JSON and signed manual-attestation cabinet adapters, and the Modbus timeout."""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.meeting.cabinet import attestation_bytes, read_cabinet
from agent.meeting.rooms import CabinetConfig

GOOD = {
    "doors": 2,
    "doors_open": [],
    "powered": True,
    "shielding_ok": True,
    "slots_total": 10,
    "slots_occupied": 3,
}


@pytest.fixture
def http_cabinet() -> Iterator[tuple[str, dict[str, bytes]]]:
    """A cabinet's HTTP endpoint serving ``answer["body"]``; yields (url, answer)."""
    answer = {"body": json.dumps(GOOD).encode()}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(answer["body"])

        def log_message(self, *_args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/state", answer
    finally:
        server.shutdown()
        server.server_close()


def test_http_state(http_cabinet: tuple[str, dict[str, bytes]]) -> None:
    url, _ = http_cabinet
    state = read_cabinet(CabinetConfig("http", url=url))
    assert state.known
    assert state.describe() == (
        f"http {url}: 2 doors closed, powered, shielding ok, 3/10 slots occupied"
    )


def test_http_bad_json_is_unknown(http_cabinet: tuple[str, dict[str, bytes]]) -> None:
    url, answer = http_cabinet
    answer["body"] = b'{"doors": 2, "doors_open": "none"}'
    state = read_cabinet(CabinetConfig("http", url=url))
    assert not state.known
    assert "doors_open must be a list of door numbers" in state.reason


def test_modbus_silent_peer_times_out_as_unknown() -> None:
    """A peer that accepts and never answers: unknown within the timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        state = read_cabinet(CabinetConfig("modbus", host="127.0.0.1", port=port, timeout=0.5))
    assert not state.known
    assert state.describe().startswith(f"modbus 127.0.0.1:{port} unit 1: state unknown")


def _attest(tmp_path: Path, data: dict[str, object], key: ec.EllipticCurvePrivateKey) -> Path:
    signature = key.sign(attestation_bytes(data), ec.ECDSA(hashes.SHA256()))
    path = tmp_path / "attestation.json"
    path.write_text(json.dumps({**data, "signature": base64.b64encode(signature).decode()}))
    return path


@pytest.fixture
def office_key(tmp_path: Path) -> tuple[ec.EllipticCurvePrivateKey, Path]:
    """The inspectors' office key and its public PEM file."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "office.pub.pem"
    pem.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key, pem


def test_signed_manual_attestation(
    tmp_path: Path, office_key: tuple[ec.EllipticCurvePrivateKey, Path]
) -> None:
    key, pem = office_key
    path = _attest(tmp_path, {**GOOD, "inspector": "zhou", "doors_open": [1]}, key)
    state = read_cabinet(CabinetConfig("manual", attestation=path, key=pem))
    assert state.known and state.doors_open == (1,)


def test_altered_manual_attestation_is_unknown(
    tmp_path: Path, office_key: tuple[ec.EllipticCurvePrivateKey, Path]
) -> None:
    key, pem = office_key
    path = _attest(tmp_path, {**GOOD, "inspector": "zhou", "doors_open": [1]}, key)
    path.write_text(path.read_text().replace('"doors_open": [1]', '"doors_open": []'))
    state = read_cabinet(CabinetConfig("manual", attestation=path, key=pem))
    assert not state.known
    assert state.reason == "the attestation's signature does not verify"
