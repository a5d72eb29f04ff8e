"""The HTTP JSON and signed manual-attestation cabinet adapters, and the Modbus timeout:
every field checked, an attestation bound to its room, meeting and time."""

from __future__ import annotations

import base64
import json
import socket
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from baomi.meeting.rooms import CabinetConfig
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.meeting.cabinet import (
    ATTESTATION_FORMAT,
    CabinetState,
    attestation_bytes,
    make_attestation,
    read_cabinet,
)
from agent.meeting.check import check_cabinet
from tests.integration.meeting.helpers import GOOD


def test_http_state(http_cabinet: tuple[str, dict[str, bytes]]) -> None:
    url, _ = http_cabinet
    state = read_cabinet(CabinetConfig("http", url=url))
    assert state.known
    assert state.describe() == (
        f"http {url}: 2 doors closed, powered, shielding ok, 3/10 slots occupied"
    )


def test_http_bad_json_is_unknown(http_cabinet: tuple[str, dict[str, bytes]]) -> None:
    url, answer = http_cabinet
    answer["body"] = json.dumps({**GOOD, "doors_open": "none"}).encode()
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


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("doors_open", [0], "doors_open names door 0; doors are numbered 1-2"),
        ("doors_open", [-1], "doors_open names door -1; doors are numbered 1-2"),
        ("doors_open", [3], "doors_open names door 3; doors are numbered 1-2"),
        ("doors_open", [1, 1], "doors_open names a door twice"),
        ("doors_open", [True], "doors_open must be a list of door numbers"),
        ("doors", 0, "doors must be a whole number 1-16, not 0"),
        ("doors", True, "doors must be a whole number 1-16, not True"),
        ("powered", 1, "powered must be true or false, not 1"),
        ("shielding_ok", "yes", "shielding_ok must be true or false, not 'yes'"),
        ("slots_total", -1, "slots_total must be a whole number 0-1000, not -1"),
        ("slots_occupied", 11, "slots_occupied must be a whole number 0-10, not 11"),
        ("slots_occupied", None, "slots_occupied must be a whole number 0-10, not None"),
    ],
)
def test_http_field_out_of_range_is_unknown(
    http_cabinet: tuple[str, dict[str, bytes]], field: str, value: object, reason: str
) -> None:
    """Door 0 or -1 once read as "no door open" (C7 pass); every field is checked now."""
    url, answer = http_cabinet
    answer["body"] = json.dumps({**GOOD, field: value}).encode()
    state = read_cabinet(CabinetConfig("http", url=url))
    assert not state.known
    assert state.reason.endswith(reason)
    assert check_cabinet(state).result == "unknown"


def test_http_missing_field_is_unknown(http_cabinet: tuple[str, dict[str, bytes]]) -> None:
    url, answer = http_cabinet
    answer["body"] = json.dumps({k: v for k, v in GOOD.items() if k != "powered"}).encode()
    state = read_cabinet(CabinetConfig("http", url=url))
    assert not state.known and "missing powered" in state.reason


NOW = datetime(2026, 12, 1, 8, 40, tzinfo=timezone(timedelta(hours=8)))
BOUND = {
    "format": ATTESTATION_FORMAT,
    "room": "r1",
    "meeting": "m1",
    "inspector": "zhou",
    "attested_at": NOW.isoformat(),
}


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


def _read(path: Path, pem: Path, now: datetime = NOW, meeting: str = "m1") -> CabinetState:
    config = CabinetConfig("manual", attestation=path, key=pem)
    return read_cabinet(config, room="r1", meeting=meeting, now=now)


def test_signed_manual_attestation(
    tmp_path: Path, office_key: tuple[ec.EllipticCurvePrivateKey, Path]
) -> None:
    key, pem = office_key
    path = _attest(tmp_path, {**GOOD, **BOUND, "doors_open": [1]}, key)
    state = _read(path, pem, NOW + timedelta(minutes=10))
    assert state.known and state.doors_open == (1,)


def test_altered_manual_attestation_is_unknown(
    tmp_path: Path, office_key: tuple[ec.EllipticCurvePrivateKey, Path]
) -> None:
    key, pem = office_key
    path = _attest(tmp_path, {**GOOD, **BOUND, "doors_open": [1]}, key)
    path.write_text(path.read_text().replace('"doors_open": [1]', '"doors_open": []'))
    state = _read(path, pem)
    assert not state.known
    assert state.reason == "the attestation's signature does not verify"


@pytest.mark.parametrize(
    ("change", "now", "meeting", "reason"),
    [
        ({"room": "r2"}, NOW, "m1", "the attestation is for room 'r2', not 'r1'"),
        ({"meeting": "m0"}, NOW, "m1", "the attestation is for meeting 'm0', not 'm1'"),
        ({}, NOW, "", "a manual attestation is bound to a meeting; give --meeting"),
        (
            {"attested_at": "2020-06-01T09:00:00+08:00"},
            NOW,
            "m1",
            "the attestation is stale: made 3418540 min ago at 2020-06-01T09:00:00+08:00, "
            "at most 60 min are accepted; attest again",
        ),
        ({}, NOW + timedelta(minutes=61), "m1", "the attestation is stale: made 61 min ago"),
        ({}, NOW - timedelta(minutes=10), "m1", "is in the future"),
        ({"attested_at": "2026-12-01T08:40:00"}, NOW, "m1", "must carry a time zone"),
        ({"format": None}, NOW, "m1", "format is None, not 'baomi-cabinet-attestation/1'"),
        ({"note": "all fine"}, NOW, "m1", "unknown field 'note' in the attestation"),
        ({"inspector": ""}, NOW, "m1", "the attestation names no inspector"),
    ],
)
def test_foreign_or_stale_attestation_is_unknown(
    tmp_path: Path,
    office_key: tuple[ec.EllipticCurvePrivateKey, Path],
    change: dict[str, object],
    now: datetime,
    meeting: str,
    reason: str,
) -> None:
    """A correctly signed attestation of another room, another meeting or another day
    clears nothing: C7 stays unknown, with why."""
    key, pem = office_key
    path = _attest(tmp_path, {**GOOD, **BOUND, **change}, key)
    state = _read(path, pem, now, meeting)
    assert not state.known
    assert reason in state.reason
    assert check_cabinet(state).result == "unknown"


def test_make_attestation_reads_back(
    tmp_path: Path, office_key: tuple[ec.EllipticCurvePrivateKey, Path]
) -> None:
    key, pem = office_key
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    data = make_attestation(
        key_pem, room="r1", meeting="m1", inspector="zhou", attested_at=NOW, state=GOOD
    )
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data))
    state = _read(path, pem)
    assert state.known and state.slots_occupied == 3
    with pytest.raises(ValueError, match="doors_open names door 0"):
        make_attestation(
            key_pem,
            room="r1",
            meeting="m1",
            inspector="zhou",
            attested_at=NOW,
            state={**GOOD, "doors_open": [0]},
        )
