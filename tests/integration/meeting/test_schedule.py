"""The room's agent runs the pre-meeting check by itself, once, ahead of each meeting."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from baomi.v1 import events_pb2
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import CertificateBuilder, Name, NameAttribute, random_serial_number
from cryptography.x509.oid import NameOID

from agent.meeting.check import verify_meeting_check
from agent.sensors.meeting import MeetingScheduleConfig, MeetingScheduler
from tests.integration.meeting.helpers import Room, cabinet_sim

START = datetime.fromisoformat("2026-12-01T09:00:00+08:00")  # meeting m1 in helpers.Room


def _key_and_cert() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = Name([NameAttribute(NameOID.COMMON_NAME, "room-r1")])
    cert = (
        CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(random_serial_number())
        .not_valid_before(START - timedelta(days=1))
        .not_valid_after(START + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem, cert.public_bytes(serialization.Encoding.PEM)


def _config(room: Room, key_pem: bytes, **more: Any) -> MeetingScheduleConfig:
    return MeetingScheduleConfig(
        room="r1",
        rooms=room.dir / "rooms.toml",
        meetings=room.dir / "meetings.toml",
        subjects=room.dir / "subjects.toml",
        key_pem=key_pem,
        sweep=room.dir / "sweep.csv",
        **more,
    )


@pytest.fixture
def room(tmp_path: Path) -> Iterator[Room]:
    room = Room(tmp_path, start=START.isoformat()).write()
    with cabinet_sim("--slots", "2") as port:
        room.modbus(port)
        room.write()
        yield room


def test_check_runs_once_within_the_lead_time_and_is_signed(room: Room) -> None:
    key_pem, cert_pem = _key_and_cert()
    events: list[events_pb2.Event] = []
    scheduler = MeetingScheduler(_config(room, key_pem, lead=timedelta(minutes=30)), events.append)
    assert scheduler.run_due(START - timedelta(minutes=31)) == []  # too early
    assert scheduler.run_due(START - timedelta(minutes=29)) == ["m1"]
    assert scheduler.run_due(START - timedelta(minutes=28)) == []  # once per start time
    assert scheduler.run_due(START + timedelta(minutes=1)) == []  # started: too late
    (event,) = events
    check = event.meeting_check
    assert (check.room, check.meeting, check.phase, check.inspector) == (
        "r1",
        "m1",
        "check",
        "scheduled",
    )
    assert check.cleared and event.severity == events_pb2.SEVERITY_INFO
    assert verify_meeting_check(check, cert_pem)


def test_a_lead_longer_than_the_meetings_window_waits_for_the_window(room: Room) -> None:
    """--meeting-lead-min 180 against the default 120-minute window: the check runs when
    the window opens, not before it (where C0 would fail it)."""
    key_pem, _ = _key_and_cert()
    events: list[events_pb2.Event] = []
    scheduler = MeetingScheduler(_config(room, key_pem, lead=timedelta(minutes=180)), events.append)
    assert scheduler.run_due(START - timedelta(minutes=150)) == []  # inside lead, before window
    assert scheduler.run_due(START - timedelta(minutes=119)) == ["m1"]
    (event,) = events
    assert event.meeting_check.cleared
    c0 = next(i for i in event.meeting_check.items if i.id == "C0")
    assert c0.result == "pass"


def test_moved_meeting_is_checked_again_and_a_failure_is_high(room: Room) -> None:
    key_pem, _ = _key_and_cert()
    events: list[events_pb2.Event] = []
    scheduler = MeetingScheduler(_config(room, key_pem), events.append)
    assert scheduler.run_due(START - timedelta(minutes=10)) == ["m1"]
    room.jammer_expires = "2020-01-01"
    text = (room.dir / "meetings.toml").read_text().replace("09:00:00", "10:00:00")
    room.write()
    (room.dir / "meetings.toml").write_text(text)
    assert scheduler.run_due(START + timedelta(minutes=50)) == ["m1"]
    assert not events[-1].meeting_check.cleared
    assert events[-1].severity == events_pb2.SEVERITY_HIGH


def test_the_collectors_schedule_takes_precedence(room: Room, tmp_path: Path) -> None:
    """meetings.toml and subjects.toml of the bundle the agent keeps replace the local
    ones: the secrecy office schedules meetings at the collector."""
    key_pem, _ = _key_and_cert()
    events: list[events_pb2.Event] = []
    bundle = tmp_path / "state" / "policy"
    scheduler = MeetingScheduler(_config(room, key_pem, bundle=bundle), events.append)
    # No bundle yet: the local schedule.
    assert scheduler.run_due(START - timedelta(minutes=10)) == ["m1"]
    bundle.mkdir(parents=True)
    pushed = (room.dir / "meetings.toml").read_text().replace("[meetings.m1]", "[meetings.m2]")
    pushed = pushed.replace("2026-12-01T09:00:00", "2026-12-02T09:00:00")
    (bundle / "meetings.toml").write_text(pushed)
    (bundle / "subjects.toml").write_text((room.dir / "subjects.toml").read_text())
    (room.dir / "subjects.toml").write_text("not a register")  # the local one is not read
    assert scheduler.run_due(START + timedelta(days=1, minutes=-10)) == ["m2"]
    assert [e.meeting_check.meeting for e in events] == ["m1", "m2"]
    assert events[-1].meeting_check.cleared
