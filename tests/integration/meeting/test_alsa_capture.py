"""C1 also judges sound cards that capture but are not on USB (onboard codecs, PCI and
HDMI capture cards), read from the kernel's ALSA lists.

This machine has no sound hardware, so the kernel's files are written into a fake
/proc and /sys with the layout and text the kernel gives (an HDA codec with a
microphone, an HDMI output without capture, a USB audio interface).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from baomi.meeting.rooms import RoomsError, load_rooms

from agent.meeting.alsa import capture_cards
from agent.meeting.check import Inputs, run_check
from tests.integration.meeting.helpers import Room

CARDS = """\
 0 [PCH            ]: HDA-Intel - HDA Intel PCH
                      HDA Intel PCH at 0xf7f10000 irq 32
 1 [NVidia         ]: HDA-Intel - HDA NVidia
                      HDA NVidia at 0xf7080000 irq 17
 2 [CODEC          ]: USB-Audio - USB Audio CODEC
                      Burr-Brown from TI USB Audio CODEC at usb-0000:00:14.0-1, full speed
"""
PCM = """\
00-00: ALC257 Analog : ALC257 Analog : playback 1 : capture 1
00-02: ALC257 Alt Analog : ALC257 Alt Analog : capture 1
01-03: HDMI 0 : HDMI 0 : playback 1
02-00: USB Audio : USB Audio : playback 1 : capture 1
"""


def _machine(root: Path) -> tuple[Path, Path]:
    proc, sys = root / "proc", root / "sys"
    (proc / "asound").mkdir(parents=True)
    (proc / "asound" / "cards").write_text(CARDS)
    (proc / "asound" / "pcm").write_text(PCM)
    devices = {
        0: sys / "devices/pci0000:00/0000:00:1f.3",
        1: sys / "devices/pci0000:00/0000:01:00.1",
        2: sys / "devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0",
    }
    for number, device in devices.items():
        device.mkdir(parents=True)
        card = sys / "class" / "sound" / f"card{number}"
        card.mkdir(parents=True)
        (card / "device").symlink_to(device)
    return proc, sys


def test_capture_cards_are_read_with_where_they_sit(tmp_path: Path) -> None:
    proc, sys = _machine(tmp_path)
    cards = capture_cards(proc, sys)
    assert [(c.number, c.id, c.on_usb) for c in cards] == [(0, "PCH", False), (2, "CODEC", True)]
    assert cards[0].describe() == (
        "ALSA card 0 PCH (HDA-Intel, HDA Intel PCH): "
        "capture 00-00 ALC257 Analog, 00-02 ALC257 Alt Analog"
    )
    assert capture_cards(tmp_path / "no-proc", sys) == []  # no ALSA at all


@pytest.fixture
def room(tmp_path: Path) -> Room:
    return Room(tmp_path / "room").write()


def _c1(room: Room, proc: Path, sys: Path) -> tuple[str, str]:
    rooms = load_rooms(room.dir / "rooms.toml")
    items = run_check(
        Inputs(
            room=rooms["r1"],
            meeting=None,
            subjects=None,
            sweep=None,
            sysfs=sys,
            proc=proc,
            usb_devices=list,
        )
    )
    c1 = next(i for i in items if i.id == "C1")
    return c1.result, c1.evidence


def test_an_onboard_microphone_input_fails_c1_unless_the_room_lists_it(
    room: Room, tmp_path: Path
) -> None:
    proc, sys = _machine(tmp_path / "machine")
    result, evidence = _c1(room, proc, sys)
    assert result == "fail"
    assert "ALSA card 0 PCH (HDA-Intel, HDA Intel PCH): capture 00-00" in evidence
    assert "CODEC" not in evidence  # on USB: judged by its USB descriptors
    assert "NVidia" not in evidence  # HDMI playback only
    room.extra = '[[rooms.r1.pa]]\nalsa = "PCH"\nname = "line input of the PA mixer"\n'
    room.write()
    assert _c1(room, proc, sys) == (
        "pass",
        "0 USB devices, 1 other capture cards, no unapproved capture device",
    )


def test_unreadable_alsa_lists_leave_c1_unknown(room: Room, tmp_path: Path) -> None:
    proc, sys = _machine(tmp_path / "machine")
    (proc / "asound" / "cards").unlink()
    (proc / "asound" / "cards").mkdir()  # reading it fails with EISDIR
    result, evidence = _c1(room, proc, sys)
    assert result == "unknown" and "cannot list ALSA capture cards" in evidence


def test_a_bad_card_id_in_the_inventory_is_refused(room: Room) -> None:
    room.extra = '[[rooms.r1.pa]]\nalsa = "P C H"\n'
    room.write()
    with pytest.raises(RoomsError, match="is not an ALSA card id"):
        load_rooms(room.dir / "rooms.toml")
