"""Sound cards that can capture (C1), as the kernel's ALSA lists them.

USB audio interfaces are judged by their USB descriptors (``check_devices``); this adds
the capture cards USB does not show: onboard codecs with a microphone or line input,
PCI(e) and HDMI capture cards. ``/proc/asound/pcm`` says which PCM devices capture,
``/proc/asound/cards`` names each card, and ``/sys/class/sound/cardN/device`` says
whether the card sits on USB (then it was judged already).

Card ids and names come from drivers, but a USB card's come from its descriptors, so
everything read here is bounded and only ever printed as evidence.
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from pathlib import Path

MAX_TEXT = 64  # characters kept of a card's or PCM's name
_CARD_LINE = re.compile(r"^\s*(\d+)\s+\[([^\]]*)\]:\s*(\S+)\s+-\s+(.*)$")
_PCM_LINE = re.compile(r"^(\d+)-(\d+):\s*(.*)$")


@dataclass(frozen=True, slots=True)
class CaptureCard:
    """An ALSA card with at least one capture PCM."""

    number: int
    id: str  # the card id ("PCH"): what a room's inventory names
    driver: str
    name: str
    pcms: tuple[str, ...]  # "00-00 ALC257 Analog", one per capture PCM
    on_usb: bool

    def describe(self) -> str:
        """One line of evidence."""
        pcms = ", ".join(self.pcms)
        return f"ALSA card {self.number} {self.id} ({self.driver}, {self.name}): capture {pcms}"


def _bounded(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text.strip())[:MAX_TEXT]


def capture_cards(proc: Path = Path("/proc"), sysfs: Path = Path("/sys")) -> list[CaptureCard]:
    """Every ALSA card with a capture PCM; [] when the kernel has no sound support.

    OSError when /proc/asound is there but cannot be read (the check is then unknown).
    """
    asound = proc / "asound"
    try:
        pcm_text = (asound / "pcm").read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return []  # no ALSA: nothing can capture through it
        raise
    captures: dict[int, list[str]] = {}
    for line in pcm_text.splitlines():
        m = _PCM_LINE.match(line)
        if m is None:
            continue
        fields = [f.strip() for f in m.group(3).split(" : ")]
        if any(f.startswith("capture") for f in fields):
            name = fields[1] if len(fields) > 1 else fields[0]
            captures.setdefault(int(m.group(1)), []).append(
                f"{m.group(1)}-{m.group(2)} {_bounded(name)}"
            )
    names: dict[int, tuple[str, str, str]] = {}
    for line in (asound / "cards").read_text(encoding="utf-8", errors="replace").splitlines():
        m = _CARD_LINE.match(line)
        if m is not None:
            names[int(m.group(1))] = (
                _bounded(m.group(2)),
                _bounded(m.group(3)),
                _bounded(m.group(4)),
            )
    cards = []
    for number, pcms in sorted(captures.items()):
        card_id, driver, name = names.get(number, (f"card{number}", "?", "?"))
        device = sysfs / "class" / "sound" / f"card{number}" / "device"
        try:
            on_usb = "/usb" in str(device.resolve(strict=True))
        except OSError:
            on_usb = False  # not shown in sysfs: judge it here rather than not at all
        cards.append(CaptureCard(number, card_id, driver, name, tuple(pcms), on_usb))
    return cards
