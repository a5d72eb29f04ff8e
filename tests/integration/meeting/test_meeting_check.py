"""``baomi-agent meeting check`` and ``sweep`` as a subprocess, against the cabinet
simulator, fake capture devices, recorder processes and ``rtl_power`` sweeps.

USB devices (wireless-mic receiver, webcam) are in ``tests/integration/usb/
test_meeting_devices.py``, which runs under umockdev.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from baomi.clitext import fit
from baomi.display import escape
from baomi.v1 import events_pb2

from agent.core import AgentConfig
from agent.identity import enroll, load_identity
from agent.meeting.check import verify_meeting_check
from collector.server import create_token
from tests.cells import ZH, C, cell_at, locale_env
from tests.collector_harness import RunningCollector
from tests.integration.meeting.helpers import Room, cabinet_sim, run_cli
from tests.integration.test_agent import FAST, AgentThread, host_events, wait_for

MANDATORY = [f"C{n}" for n in (0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12)]
CHILD_TIMEOUT = 60  # seconds a recorder stand-in lives at most


@pytest.fixture
def room(tmp_path: Path) -> Room:
    """A room that clears once its cabinet points at a healthy simulator."""
    return Room(tmp_path).write()


@pytest.fixture
def good_cabinet(room: Room) -> Iterator[int]:
    """A powered, closed cabinet holding two phones (the two attendees')."""
    with cabinet_sim("--slots", "2") as port:
        room.modbus(port)
        room.write()
        yield port


def test_all_clear_room_exits_0(room: Room, good_cabinet: int) -> None:
    result = run_cli(*room.check_args())
    assert result.code == 0, result.out + result.err
    items = result.items
    assert all(items[i]["result"] == "pass" for i in MANDATORY), items
    assert items["C8"]["result"] == "unknown" and not items["C8"]["mandatory"]
    assert items["C8"]["evidence"] == "no Bluetooth adapter"
    assert "4 doors closed, powered, shielding ok, 2/20 slots occupied" in result.item("C7")[1]
    assert "930-960 MHz +20.0 dB" in result.item("C5")[1]
    assert "no carrier ≥10 dB above baseline in 470-790 MHz" in result.item("C10")[1]
    assert "valid until 2099-12-31" in result.item("C6")[1]
    assert "2 attendees cleared for 机密; 2 phones deposited for 2" in result.item("C12")[1]


def test_table_output_says_cleared(room: Room, good_cabinet: int) -> None:
    args = [a for a in room.check_args() if a != "--json"]
    result = run_cli(*args)
    assert result.code == 0
    assert (
        "CLEARED (optional C8, C9 not measured) (* mandatory); not signed or sent (no --record)"
        in result.out
    )
    assert result.out.splitlines()[1].split()[:3] == ["ID", "RESULT", "M"]


def _untimed(out: str) -> dict[str, object]:
    """A ``--json`` result without C0's evidence, which says when the check ran."""
    doc = json.loads(out)
    for item in doc["items"]:
        if item["id"] == "C0":
            item["evidence"] = ""
    return dict(doc)


def test_table_speaks_the_locales_language_json_does_not(room: Room, good_cabinet: int) -> None:
    table = [a for a in room.check_args() if a != "--json"]
    zh, c = run_cli(*table, env=locale_env(ZH)), run_cli(*table, env=locale_env(C))
    assert zh.code == c.code == 0, zh.err + c.err
    zh_lines, c_lines = zh.out.splitlines(), c.out.splitlines()
    assert zh_lines[0].startswith("会议室 ") and zh_lines[0].endswith("，会议 m1")  # noqa: RUF001
    assert zh_lines[1].split() == ["编号", "结果", "必", "检查项", "证据"]
    c1 = next(line for line in zh_lines if line.startswith("C1 "))
    assert c1.split()[1:4] == ["通过", "*", "无未经批准的音视频采集设备"]
    c8 = next(line for line in zh_lines if line.startswith("C8 "))
    assert c8.split()[1:3] == ["无法判定", "屏蔽柜确实屏蔽（BLE信标）"]  # noqa: RUF001
    assert zh_lines[-1] == (
        "准予召开（选查项 C8、C9 未测量）（* 为必查项）；未签名，未发送（未加 --record）"  # noqa: RUF001
    )
    assert c_lines[0] == zh_lines[0].replace("会议室 ", "room ").replace("，会议 ", ", meeting ")  # noqa: RUF001
    assert c_lines[1].split() == ["ID", "RESULT", "M", "ITEM", "EVIDENCE"]
    assert c_lines[-1].startswith("CLEARED (optional C8, C9 not measured) (* mandatory); ")
    assert not any(word in c.out for word in ("通过", "准予", "无法判定", "检查项"))
    # Every row's evidence starts at the header's evidence cell, in both languages.
    json_zh = run_cli(*room.check_args(), env=locale_env(ZH))
    json_c = run_cli(*room.check_args(), env=locale_env(C))
    assert _untimed(json_zh.out) == _untimed(json_c.out)
    items = json.loads(json_c.out)["items"]
    for lines, word in ((zh_lines, "证据"), (c_lines, "EVIDENCE")):
        rows = lines[2:-1]
        assert [row.split()[0] for row in rows] == [i["id"] for i in items]
        starts = {cell_at(lines[1], word)}
        for row, item in zip(rows, items, strict=True):
            starts.add(cell_at(row, fit(escape(item["evidence"]), 100)[:16]))
        assert len(starts) == 1, (starts, lines)


def test_recorder_process_fails_c3(room: Room, good_cabinet: int, tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "arecord").symlink_to(sys.executable)  # the kernel names it after the link
    code = (
        f"import signal, sys, time; signal.alarm({CHILD_TIMEOUT}); "
        f"f = open({str(room.dev / 'snd' / 'pcmC0D0c')!r}, 'rb'); print('ok', flush=True); "
        "sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [str(bindir / "arecord"), "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ok"
        result = run_cli(*room.check_args())
    finally:
        proc.kill()
        proc.wait(10)
    assert result.code == 1
    verdict, evidence = result.item("C3")
    assert verdict == "fail"
    assert f"pid {proc.pid} arecord" in evidence
    assert "recording program arecord" in evidence
    assert "holds capture device" in evidence and "pcmC0D0c" in evidence
    assert result.item("C11")[0] == "fail"
    assert "recording without approval" in result.item("C11")[1]


def test_approved_recording_is_allowed(room: Room, good_cabinet: int, tmp_path: Path) -> None:
    """A recorder the meeting approves passes C3 and C11."""
    room.recordings = ["arecord"]
    room.write()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "arecord").symlink_to(sys.executable)
    proc = subprocess.Popen(
        [
            str(bindir / "arecord"),
            "-c",
            f"import signal, sys; signal.alarm({CHILD_TIMEOUT}); "
            "print('ok', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ok"
        result = run_cli(*room.check_args())
    finally:
        proc.kill()
        proc.wait(10)
    assert result.item("C3") == ("pass", "no recording process (1 allowed)")
    assert result.item("C11")[0] == "pass"
    assert result.code == 0


def test_cabinet_door_open_fails_c7(room: Room) -> None:
    with cabinet_sim("--slots", "2", "--door-open", "2") as port:
        room.modbus(port)
        room.write()
        result = run_cli(*room.check_args())
    assert result.code == 1
    verdict, evidence = result.item("C7")
    assert verdict == "fail"
    assert f"modbus 127.0.0.1:{port} unit 1: doors open 2, powered" in evidence


def test_cabinet_unpowered_fails_c7(room: Room) -> None:
    with cabinet_sim("--slots", "2", "--unpowered") as port:
        room.modbus(port)
        room.write()
        result = run_cli(*room.check_args())
    assert result.code == 1
    assert result.item("C7")[0] == "fail"
    assert "UNPOWERED, shielding FAILED" in result.item("C7")[1]


def test_cabinet_unreachable_is_unknown_not_cleared(room: Room) -> None:
    result = run_cli(*room.check_args())  # the room's cabinet is 127.0.0.1:1: nobody
    assert result.code == 1
    verdict, evidence = result.item("C7")
    assert verdict == "unknown"
    assert "state unknown: no connection" in evidence
    assert result.item("C12") == (
        "unknown",
        "2 attendees cleared; phones deposited unknown (cabinet state unknown)",
    )


def test_cabinet_malformed_frames_are_unknown(room: Room) -> None:
    with cabinet_sim("--malformed") as port:
        room.modbus(port)
        room.write()
        result = run_cli(*room.check_args())
    assert result.code == 1, result.err
    verdict, evidence = result.item("C7")
    assert verdict == "unknown"
    assert "state unknown" in evidence
    assert "Traceback" not in result.err


def test_jammer_approval_expired_fails_c6(room: Room, good_cabinet: int) -> None:
    room.jammer_expires = "2020-01-31"
    room.write()
    result = run_cli(*room.check_args())
    assert result.code == 1
    assert result.item("C6") == (
        "fail",
        "type approval CMIIT ID: 2024DP0001, licence 京-2025-0042 expired on 2020-01-31",
    )


def test_attendee_below_meeting_level_fails_c12(room: Room) -> None:
    room.level = "绝密"
    room.attendees = ["zhang", "wang"]  # wang is 重要: cleared for 机密, not 绝密
    with cabinet_sim("--slots", "2") as port:
        room.modbus(port)
        room.write()
        result = run_cli(*room.check_args())
    assert result.code == 1
    assert result.item("C12") == ("fail", "wang clearance 重要 below the meeting's 绝密")


def test_unregistered_attendee_fails_c12(room: Room, good_cabinet: int) -> None:
    room.attendees = ["zhang", "nobody"]
    room.write()
    result = run_cli(*room.check_args())
    assert result.item("C12") == ("fail", "nobody is not in the register")
    assert result.code == 1


def test_fewer_phones_than_attendees_fails_c12(room: Room) -> None:
    with cabinet_sim("--slots", "1") as port:
        room.modbus(port)
        room.write()
        result = run_cli(*room.check_args())
    assert result.code == 1
    assert result.item("C7")[0] == "pass"
    assert result.item("C12") == ("fail", "only 1 phones deposited for 2 attendees")


def test_new_carrier_in_uhf_fails_c10(room: Room, good_cabinet: int) -> None:
    room.sweep({640.0: 25.0})  # a wireless mic at 640 MHz, 25 dB over the floor
    result = run_cli(*room.check_args())
    assert result.code == 1
    assert result.item("C10") == ("fail", "new carrier above baseline: 640.000 MHz +25.0 dB")


def test_uhf_raised_only_by_the_jammer_is_not_a_carrier(room: Room, good_cabinet: int) -> None:
    """The check compares against the baseline with the margin; a carrier under it passes."""
    room.sweep({640.0: 5.0}, raise_db=0.0)
    room.extra = ""
    room.write()
    result = run_cli(*room.check_args())
    assert result.item("C10")[0] == "pass"
    assert result.item("C5") == ("fail", "jammer band not raised by 10 dB: 930-960 MHz +0.0 dB")
    assert result.code == 1


def test_without_a_sweep_c5_c10_are_unknown(room: Room, good_cabinet: int) -> None:
    args = room.check_args()
    i = args.index("--sweep")
    result = run_cli(*args[:i], *args[i + 2 :])
    assert result.code == 1
    assert result.item("C5") == ("unknown", "no SDR sweep given (--sweep rtl_power.csv)")
    assert result.item("C10")[0] == "unknown"


# --------------------------------------------------------------------------- bad input


def _rewrite(room: Room, old: str, new: str) -> Path:
    path = room.dir / "rooms.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return path


def test_unknown_adapter_is_refused_with_line(room: Room) -> None:
    path = _rewrite(room, 'adapter = "modbus"', 'adapter = "zigbee"')
    line = next(n for n, t in enumerate(path.read_text().splitlines(), 1) if "zigbee" in t)
    result = run_cli(*room.check_args())
    assert result.code == 2
    assert f"{path}:{line}: cabinet: unknown adapter 'zigbee'" in result.err


def test_bad_address_is_refused_with_line(room: Room) -> None:
    path = _rewrite(room, 'address = "127.0.0.1:1"', 'address = "127.0.0.1:99999"')
    line = next(n for n, t in enumerate(path.read_text().splitlines(), 1) if "99999" in t)
    result = run_cli(*room.check_args())
    assert result.code == 2
    assert f"{path}:{line}: cabinet: bad address: port 99999 is outside 1-65535" in result.err


def test_malformed_baseline_is_refused_with_line(room: Room) -> None:
    baseline = room.dir / "baseline.csv"
    lines = baseline.read_text().splitlines()
    lines[2] = "2026-12-01, 08:30:00, 490000000, 500000000, 1000000.00, 64, -62.5, loud"
    baseline.write_text("\n".join(lines) + "\n")
    result = run_cli(*room.check_args())
    assert result.code == 2
    assert f"{baseline}:3: room r1: baseline: not a number" in result.err


def test_malformed_sweep_is_bad_input(room: Room) -> None:
    (room.dir / "sweep.csv").write_text("date, time\n")
    result = run_cli(*room.check_args())
    assert result.code == 2
    assert "sweep.csv:1: 2 columns; rtl_power rows have at least 7" in result.err


# --------------------------------------------------------------------------- sweep, signing


def test_sweep_with_missing_document_fails(room: Room) -> None:
    result = run_cli(
        "meeting", "sweep", "--meeting", "m1", "--inspector", "zhou", "--returned", "JM-101",
        "--room-checked", "--json", "--meetings", str(room.dir / "meetings.toml"),
    )  # fmt: skip
    assert result.code == 1
    items = [(i["id"], i["result"], i["evidence"]) for i in _json_items(result.out)]
    assert items == [
        ("C13", "fail", "documents missing: JM-102"),
        ("C13", "pass", "room and seats checked"),
    ]


def _json_items(out: str) -> list[dict[str, object]]:
    items: list[dict[str, object]] = json.loads(out)["items"]
    return items


@pytest.fixture
def agent_state(collector: RunningCollector, tmp_path: Path) -> Path:
    """An agent state directory enrolled with the collector as ``room-pc``."""
    token = create_token(collector.store, "room-pc")
    state = tmp_path / "agent"
    ca = (collector.pki_dir / "ca.pem").read_bytes()
    enroll(state, collector.address, token, ca, collector.enroll_address)
    return state


def test_signed_results_reach_the_collector_and_verify(
    room: Room, good_cabinet: int, collector: RunningCollector, agent_state: Path
) -> None:
    check = run_cli("--state-dir", str(agent_state), *room.check_args("--record"))
    assert check.code == 0, check.err
    assert "signed by room-pc, spooled as event" in check.out
    sweep = run_cli(
        "--state-dir", str(agent_state), "meeting", "sweep", "--meeting", "m1", "--inspector",
        "zhou", "--returned", "JM-101", "--meetings", str(room.dir / "meetings.toml"), "--record",
    )  # fmt: skip
    assert sweep.code == 1

    running = AgentThread(AgentConfig(state_dir=agent_state, heartbeat_seconds=0.2, stream=FAST))
    try:
        wait_for(
            lambda: (
                sum(e.HasField("meeting_check") for e in host_events(collector.store, "room-pc"))
                == 2  # the check and the sweep
            )
        )
    finally:
        running.stop()
    stored = [e for e in host_events(collector.store, "room-pc") if e.HasField("meeting_check")]
    cert = load_identity(agent_state).cert_pem
    first, second = stored
    assert first.meeting_check.phase == "check" and first.meeting_check.cleared
    assert first.severity == events_pb2.SEVERITY_INFO
    assert [i.id for i in first.meeting_check.items] == [f"C{n}" for n in range(13)]
    assert verify_meeting_check(first.meeting_check, cert)
    assert second.meeting_check.phase == "sweep" and not second.meeting_check.cleared
    assert second.meeting_check.inspector == "zhou"
    assert second.severity == events_pb2.SEVERITY_HIGH
    assert second.meeting_check.items[0].evidence == "documents missing: JM-102"
    assert verify_meeting_check(second.meeting_check, cert)
    # A changed result no longer verifies.
    tampered = events_pb2.MeetingCheck()
    tampered.CopyFrom(first.meeting_check)
    tampered.items[6].result = "fail"
    assert not verify_meeting_check(tampered, cert)
