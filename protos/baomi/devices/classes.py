"""What a USB device is, read from the interface classes it declares.

Interface triples (class/subclass/protocol, as in ``ID_USB_INTERFACES``) are chosen by
whoever built the device, so a class says what a device *claims* to be. That is enough to
keep recorders and phones off a secret host: a device that hides its microphone cannot
record through the host either, since the host drives only the interfaces it declares.
A device that claims incompatible things at once is itself the finding (``badusb``).

Classes (strings, so that events and reports carry them as they are):

=================  ==================================================================
``storage``        08: mass storage (U盘, card readers, disks)
``audio``          01: microphones, headsets, sound cards; 10: audio/video devices
``video``          0e: webcams, capture cards; 10: audio/video devices
``camera``         06/01/01 PTP still image, unless the device is a phone
``phone``          a PTP device flagged MTP (udev ``ID_MTP_DEVICE``, or an interface
                   string "MTP"), an Apple device with PTP or usbmux (ff/fe/02), an
                   Android debug/fastboot interface, an Android Open Accessory id
``mtp``            ff/ff/00 (the MTP interface of Android phones) or the MTP flag
``adb``            ff/42/01 Android debug bridge, ff/42/03 fastboot
``tethering``      every USB network function, since each one is an outbound link on a
                   secret host: RNDIS (e0/01/03, 02/02/ff, ef/04/01), CDC ECM 02/06,
                   EEM 02/0c, NCM 02/0d, MBIM 02/0e (cellular modems), Apple ff/fd/01
``bluetooth``      e0/01/01 Bluetooth radio
``hid``            03: any human interface device
``hid_keyboard``   03/01/01 boot keyboard
``hid_mouse``      03/01/02 boot mouse
``hub``            09
``wireless_mic``   an audio device that is a wireless-microphone receiver (see below)
``wireless_hid``   a wireless keyboard/mouse receiver (涉密计算机不得使用无线键盘、鼠标)
``badusb``         HID together with storage or with a network function: a keyboard
                   that is also a stick (Rubber Ducky) or a network card (P4wnP1, Bash
                   Bunny) types commands or reroutes traffic; a real keyboard is neither
=================  ==================================================================

A headset (audio + HID volume buttons) or a webcam with a snapshot button (video + HID)
is *not* ``badusb``: it is an ordinary recording device and is blocked as one.

**Wireless microphones.** Receivers of wireless lapel microphones (RØDE Wireless GO/PRO/
ME, DJI Mic, Hollyland Lark, ...) are plain USB audio devices. No product ids of these
receivers could be verified from a reliable source when this table was written, so the
table is by vendor (RØDE 19f7 and DJI 2ca3 from the USB ID repository) together with the
product string, plus product-string patterns for makers whose vendor id is unknown. Being
audio devices they are blocked either way; the class raises the finding's weight in
reports and in the meeting-room check. Add exact ids to ``WIRELESS_MIC_IDS`` as they are
confirmed on real hardware.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final

from baomi.devices.model import UsbDevice, UsbInterface

STORAGE: Final = "storage"
AUDIO: Final = "audio"
VIDEO: Final = "video"
CAMERA: Final = "camera"
PHONE: Final = "phone"
MTP: Final = "mtp"
ADB: Final = "adb"
TETHERING: Final = "tethering"
BLUETOOTH: Final = "bluetooth"
HID: Final = "hid"
HID_KEYBOARD: Final = "hid_keyboard"
HID_MOUSE: Final = "hid_mouse"
HUB: Final = "hub"
WIRELESS_MIC: Final = "wireless_mic"
WIRELESS_HID: Final = "wireless_hid"
BADUSB: Final = "badusb"

#: Classes that record sound or pictures, or are (part of) a phone or an outbound link.
RECORDING_OR_PHONE: Final = frozenset(
    {AUDIO, VIDEO, CAMERA, PHONE, MTP, ADB, TETHERING, BLUETOOTH, WIRELESS_MIC}
)
#: Classes of input devices; the policy keeps them working so no one is locked out.
HID_CLASSES: Final = frozenset({HID, HID_KEYBOARD, HID_MOUSE})

APPLE_VENDOR: Final = "05ac"

#: Exact ``vvvv:pppp`` of wireless-microphone receivers, confirmed on real hardware.
WIRELESS_MIC_IDS: Final[Mapping[str, str]] = {}
#: Vendors whose USB audio devices include wireless-microphone receivers (usb.ids).
WIRELESS_MIC_VENDORS: Final[Mapping[str, str]] = {"19f7": "RØDE", "2ca3": "DJI"}
# The receiver's product string at one of those vendors ("Wireless GO II RX", "DJI MIC").
_VENDOR_RECEIVER_RE = re.compile(r"wireless|\brx\b|receiver|\bmic\b", re.IGNORECASE)
# Receivers of any maker, by product string alone.
_ANY_RECEIVER_RE = re.compile(
    r"wireless\s*(go|pro|me|mic|microphone|lav)|\blark\b|\bdji\s*mic\b"
    r"|\b(mic|microphone)\b.*\b(rx|receiver)\b|\b(rx|receiver)\b.*\b(mic|microphone)\b",
    re.IGNORECASE,
)

#: Wireless keyboard/mouse receivers (Logitech, ids from the USB ID repository).
WIRELESS_HID_IDS: Final[Mapping[str, str]] = {
    "046d:c526": "Logitech Nano Receiver",
    "046d:c52b": "Logitech Unifying Receiver",
    "046d:c52e": "Logitech MK260 Wireless Combo Receiver",
    "046d:c52f": "Logitech Nano Receiver",
    "046d:c532": "Logitech Unifying Receiver",
    "046d:c534": "Logitech Nano Receiver",
    "046d:c539": "Logitech Lightspeed Receiver",
    "046d:c548": "Logitech Bolt Receiver",
}

#: Android Open Accessory mode (18d1:2d00..2d05): a phone driving the host as accessory.
ANDROID_ACCESSORY_IDS: Final = frozenset(f"18d1:2d0{n}" for n in range(6))

# (class, subclass or None, protocol or None) -> class name; looked up most specific first.
_INTERFACE_CLASSES: Final[Mapping[tuple[int, int | None, int | None], str]] = {
    (0x01, None, None): AUDIO,
    (0x03, None, None): HID,
    (0x03, 0x01, 0x01): HID_KEYBOARD,
    (0x03, 0x01, 0x02): HID_MOUSE,
    (0x08, None, None): STORAGE,
    (0x09, None, None): HUB,
    (0x0E, None, None): VIDEO,
    (0xE0, 0x01, 0x01): BLUETOOTH,
    (0xE0, 0x01, 0x03): TETHERING,  # RNDIS
    (0x02, 0x02, 0xFF): TETHERING,  # RNDIS as Android phones declare it
    (0xEF, 0x04, 0x01): TETHERING,  # RNDIS over Ethernet (misc class)
    (0x02, 0x06, None): TETHERING,  # CDC ECM
    (0x02, 0x0C, None): TETHERING,  # CDC EEM
    (0x02, 0x0D, None): TETHERING,  # CDC NCM
    (0x02, 0x0E, None): TETHERING,  # MBIM: a cellular modem
    (0xFF, 0xFD, 0x01): TETHERING,  # Apple personal hotspot (ipheth)
    (0xFF, 0xFF, 0x00): MTP,
    (0xFF, 0x42, 0x01): ADB,
    (0xFF, 0x42, 0x03): ADB,  # fastboot
}
_STILL_IMAGE: Final = 0x06
_AUDIO_VIDEO: Final = 0x10  # USB Audio/Video Device class: both at once
_APPLE_USBMUX: Final = UsbInterface(0xFF, 0xFE, 0x02)


def _interface_classes(interface: UsbInterface) -> set[str]:
    found = set()
    for key in (
        (interface.cls, interface.subclass, interface.protocol),
        (interface.cls, interface.subclass, None),
        (interface.cls, None, None),
    ):
        name = _INTERFACE_CLASSES.get(key)
        if name is not None:
            found.add(name)
    if interface.cls == _AUDIO_VIDEO:
        found |= {AUDIO, VIDEO}
    return found


def _is_wireless_mic(device: UsbDevice) -> bool:
    """Audio device that is a wireless-microphone receiver (see the module docstring)."""
    if device.usb_id.lower() in WIRELESS_MIC_IDS:
        return True
    if device.vendor_id.lower() in WIRELESS_MIC_VENDORS and _VENDOR_RECEIVER_RE.search(device.name):
        return True
    return _ANY_RECEIVER_RE.search(device.name) is not None


def classify(device: UsbDevice, *, mtp: bool = False) -> frozenset[str]:
    """The classes of ``device``; ``mtp`` (or ``device.mtp``) says udev saw an MTP device.

    A device without known interfaces has no class: callers must treat that as
    "unknown", never as "harmless".
    """
    classes: set[str] = set()
    for interface in device.interfaces:
        classes |= _interface_classes(interface)
    still_image = any(i.cls == _STILL_IMAGE for i in device.interfaces)
    usb_id = device.usb_id.lower()
    apple = device.vendor_id.lower() == APPLE_VENDOR

    mtp = mtp or device.mtp
    if mtp:
        classes.add(MTP)
    if (
        mtp
        or ADB in classes
        or _APPLE_USBMUX in device.interfaces
        or (apple and still_image)
        or usb_id in ANDROID_ACCESSORY_IDS
    ):
        classes.add(PHONE)
    elif still_image:
        classes.add(CAMERA)

    if AUDIO in classes and _is_wireless_mic(device):
        classes.add(WIRELESS_MIC)
    if usb_id in WIRELESS_HID_IDS:
        classes.add(WIRELESS_HID)
    if HID in classes and (STORAGE in classes or TETHERING in classes):
        classes.add(BADUSB)
    return frozenset(classes)


def is_recording_or_phone(classes: Iterable[str]) -> bool:
    """Whether any of ``classes`` records sound or pictures or belongs to a phone or link."""
    return not RECORDING_OR_PHONE.isdisjoint(classes)
