"""``baomi-agent meeting check`` C1/C2/C11 over a umockdev testbed (real libudev and
pyudev, recorded devices), the rest of the room as in tests/integration/meeting."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import main
from agent.meeting.alsa import capture_cards
from tests.integration.meeting.helpers import Room, cabinet_sim
from tests.integration.usb.conftest import Testbed, asset

pytestmark = pytest.mark.umockdev


@pytest.fixture
def room(tmp_path: Path) -> Iterator[Room]:
    """A room that clears when no USB device is present (healthy cabinet, jammer on)."""
    with cabinet_sim("--slots", "2") as port:
        r = Room(tmp_path)
        r.modbus(port)
        yield r.write()


def _check(
    room: Room, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, tuple[str, str]]]:
    code = main(room.check_args())
    out = json.loads(capsys.readouterr().out)
    return code, {i["id"]: (i["result"], i["evidence"]) for i in out["items"]}


def test_no_device_clears(testbed: Testbed, room: Room, capsys: pytest.CaptureFixture[str]) -> None:
    if any(not c.on_usb for c in capture_cards()):
        pytest.skip("this machine has sound cards that capture, and C1 judges them too")
    code, items = _check(room, capsys)
    assert items["C1"] == (
        "pass",
        "0 USB devices, 0 other capture cards, no unapproved capture device",
    )
    assert code == 0, items


def test_wireless_mic_receiver_fails_c1_c2(
    testbed: Testbed, room: Room, capsys: pytest.CaptureFixture[str]
) -> None:
    testbed.add_file(asset("wireless-mic.umockdev"))
    code, items = _check(room, capsys)
    assert code == 1
    result, evidence = items["C1"]
    assert result == "fail"
    assert "not in the room's PA inventory: 19f7:0001 'Wireless GO II RX' serial C3A1B2D4" in (
        evidence
    )
    assert "wireless_mic" in evidence
    result, evidence = items["C2"]
    assert result == "fail"
    assert evidence.startswith("wireless-mic receiver 19f7:0001 'Wireless GO II RX'")
    assert items["C11"][0] == "fail"


def test_wireless_mic_in_the_inventory_still_fails_c2(
    testbed: Testbed, room: Room, capsys: pytest.CaptureFixture[str]
) -> None:
    """PA is wired only: listing a wireless receiver does not make it acceptable."""
    room.pa = ["19f7:0001"]
    room.write()
    testbed.add_file(asset("wireless-mic.umockdev"))
    code, items = _check(room, capsys)
    assert items["C1"][0] == "pass"
    assert items["C2"][0] == "fail"
    assert "wireless-mic receiver 19f7:0001" in items["C2"][1]
    assert code == 1


def test_webcam_fails_c1(testbed: Testbed, room: Room, capsys: pytest.CaptureFixture[str]) -> None:
    testbed.add_file(asset("webcam.umockdev"))
    code, items = _check(room, capsys)
    assert code == 1
    result, evidence = items["C1"]
    assert result == "fail"
    assert "046d:0825 'HD Webcam C270' serial A1B2C3D4 (video)" in evidence
    assert items["C2"][0] == "pass"  # no audio interface: not a PA question
    assert items["C11"] == (
        "fail",
        "recording without approval: 046d:0825 'HD Webcam C270' serial A1B2C3D4 (video)",
    )
