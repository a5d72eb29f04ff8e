"""Attacks on the pre-meeting check that once cleared a meeting, each now NOT CLEARED
with the reason: a cabinet naming door 0 or -1, an attestation of another meeting or
another day, a check outside the meeting's window. ``meeting attest`` round trip."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.integration.meeting.helpers import GOOD, Room, cabinet_sim, run_cli


@pytest.fixture
def room(tmp_path: Path) -> Room:
    return Room(tmp_path).write()


def _table(room: Room) -> str:
    """A table-output run: its last line is the verdict."""
    result = run_cli(*[a for a in room.check_args() if a != "--json"])
    assert result.code == 1, result.out + result.err
    return result.out.splitlines()[-1]


@pytest.mark.parametrize("door", [0, -1])
def test_http_cabinet_naming_door_0_or_minus_1_is_not_cleared(
    room: Room, http_cabinet: tuple[str, dict[str, bytes]], door: int
) -> None:
    """Door 0 and -1 once made no bit of the bitmap: all doors closed, C7 pass."""
    url, answer = http_cabinet
    answer["body"] = json.dumps({**GOOD, "doors_open": [door]}).encode()
    room.cabinet = f'adapter = "http"\nurl = "{url}"'
    room.write()
    result = run_cli(*room.check_args())
    assert result.code == 1
    verdict, evidence = result.item("C7")
    assert verdict == "unknown"
    assert f"doors_open names door {door}; doors are numbered 1-2" in evidence
    assert _table(room).startswith("NOT CLEARED: C7 unknown, C12 unknown")


# --------------------------------------------------------------------------- the window


def test_yesterdays_meeting_is_not_cleared(room: Room) -> None:
    room.start = (datetime.now(UTC) - timedelta(days=1)).isoformat("T", "seconds")
    with cabinet_sim("--slots", "2") as port:
        room.modbus(port)
        room.write()
        result = run_cli(*room.check_args())
        verdict_line = _table(room)
    assert result.code == 1
    verdict, evidence = result.item("C0")
    assert verdict == "fail" and ", after the window " in evidence
    assert all(
        i["result"] == "pass" for k, i in result.items.items() if i["mandatory"] and k != "C0"
    )
    assert verdict_line.startswith("NOT CLEARED: C0 fail (optional C8, C9 not measured)")


def test_a_check_too_early_is_not_cleared_unless_the_window_is_widened(room: Room) -> None:
    room.start = (datetime.now(UTC) + timedelta(hours=3)).isoformat("T", "seconds")
    with cabinet_sim("--slots", "2") as port:
        room.modbus(port)
        room.write()
        early = run_cli(*room.check_args())
        room.meeting_extra = "check_before_minutes = 240"
        room.write()
        widened = run_cli(*room.check_args())
    assert early.code == 1
    assert early.item("C0")[0] == "fail" and ", before the window " in early.item("C0")[1]
    assert widened.code == 0, widened.out
    assert widened.item("C0")[0] == "pass"


def test_a_meeting_without_a_start_is_not_cleared(room: Room) -> None:
    with cabinet_sim("--slots", "2") as port:
        room.modbus(port)
        room.write()
        path = room.dir / "meetings.toml"
        path.write_text("\n".join(x for x in path.read_text().splitlines() if "start" not in x))
        result = run_cli(*room.check_args())
    assert result.code == 1
    assert result.item("C0") == ("unknown", "meeting m1 has no start time")


# --------------------------------------------------------------------------- attestations


@pytest.fixture
def office(tmp_path: Path) -> tuple[Path, Path]:
    """The inspectors' office key pair: (private PEM, public PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = tmp_path / "office.pem", tmp_path / "office.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def _attest(room: Room, private: Path, *extra: str, meetings: Path | None = None) -> None:
    result = run_cli(
        "meeting", "attest", "--room", "r1", "--meeting", "m1",
        "--meetings", str(meetings or room.dir / "meetings.toml"), "--key", str(private),
        "--inspector", "zhou", "--doors", "4", "--slots-total", "20", "--slots-occupied", "2",
        "--out", str(room.dir / "attestation.json"), *extra,
    )  # fmt: skip
    assert result.code == 0, result.err
    assert "attested cabinet of room r1 for meeting m1" in result.out


def _manual(room: Room, public: Path) -> None:
    room.cabinet = f'adapter = "manual"\nattestation = "attestation.json"\nkey = "{public}"'
    room.write()


def test_attest_then_check_clears(room: Room, office: tuple[Path, Path]) -> None:
    private, public = office
    _manual(room, public)
    _attest(room, private)
    result = run_cli(*room.check_args())
    assert result.code == 0, result.out + result.err
    verdict, evidence = result.item("C7")
    assert verdict == "pass"
    when = json.loads((room.dir / "attestation.json").read_text())["attested_at"]
    assert evidence.endswith(
        f"attestation.json (by zhou at {when}): 4 doors closed, powered, shielding ok, "
        "2/20 slots occupied"
    )


def test_attested_open_door_fails_c7(room: Room, office: tuple[Path, Path]) -> None:
    private, public = office
    _manual(room, public)
    _attest(room, private, "--door-open", "3")
    result = run_cli(*room.check_args())
    assert result.code == 1
    assert result.item("C7")[0] == "fail" and "doors open 3" in result.item("C7")[1]


def test_a_2020_attestation_does_not_clear_today(room: Room, office: tuple[Path, Path]) -> None:
    private, public = office
    _manual(room, public)
    _attest(room, private, "--at", "2020-06-01T09:00:00+08:00")
    result = run_cli(*room.check_args())
    assert result.code == 1
    verdict, evidence = result.item("C7")
    assert verdict == "unknown"
    assert "the attestation is stale: made " in evidence and "attest again" in evidence


def test_another_meetings_attestation_does_not_clear(room: Room, office: tuple[Path, Path]) -> None:
    """An attestation signed for meeting m1 of another schedule is renamed m0 here."""
    private, public = office
    _manual(room, public)
    _attest(room, private)
    path = room.dir / "meetings.toml"
    path.write_text(path.read_text().replace("[meetings.m1]", "[meetings.m0]"))
    result = run_cli(*[a if a != "m1" else "m0" for a in room.check_args()])
    assert result.code == 1
    assert result.item("C7")[0] == "unknown"
    assert "the attestation is for meeting 'm1', not 'm0'" in result.item("C7")[1]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--door-open", "0"], "cannot attest: doors_open names door 0; doors are numbered 1-4"),
        (["--doors", "17"], "cannot attest: doors must be a whole number 1-16, not 17"),
        (["--at", "2026-12-01T09:00:00"], "needs a time zone (+08:00)"),
    ],
)
def test_attest_refuses_what_no_cabinet_is(
    room: Room, office: tuple[Path, Path], extra: list[str], message: str
) -> None:
    private, _ = office
    result = run_cli(
        "meeting", "attest", "--room", "r1", "--meeting", "m1",
        "--meetings", str(room.dir / "meetings.toml"), "--key", str(private),
        "--inspector", "zhou", "--doors", "4", "--slots-total", "20", "--slots-occupied", "2",
        "--out", str(room.dir / "attestation.json"), *extra,
    )  # fmt: skip
    assert result.code == 2
    assert message in result.err
    assert not (room.dir / "attestation.json").exists()
