"""Device classes from interface triples: one row per class the policy relies on."""

from __future__ import annotations

import pytest
from baomi.devices.classes import (
    RECORDING_OR_PHONE,
    classify,
    is_recording_or_phone,
)
from baomi.devices.model import UsbDevice

from . import fakes
from .fakes import usb


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        (fakes.STICK, {"storage"}),
        (usb("08:06:50", "08:02:50"), {"storage"}),
        (fakes.USB_MIC, {"audio", "hid"}),
        (usb("01:01:00", "01:02:00"), {"audio"}),
        (fakes.WEBCAM, {"video", "audio"}),
        (usb("0e:01:00", "0e:02:00"), {"video"}),
        (usb("10:01:00"), {"audio", "video"}),  # USB Audio/Video Device class
        (fakes.CAMERA, {"camera"}),
        (fakes.ANDROID_PTP_MTP_FLAG, {"phone", "mtp"}),
        (fakes.ANDROID_MTP, {"phone", "mtp", "adb"}),
        (usb("ff:ff:00"), {"mtp"}),
        (usb("ff:42:01"), {"adb", "phone"}),
        (usb("ff:42:03"), {"adb", "phone"}),  # fastboot
        (fakes.IPHONE, {"phone", "tethering"}),
        (usb("06:01:01", "ff:fe:02", usb_id="05ac:12a8"), {"phone"}),
        (usb("06:01:01", usb_id="05ac:12ab"), {"phone"}),  # Apple + PTP, usbmux hidden
        (usb("ff:fe:02", usb_id="05ac:12a8"), {"phone"}),  # usbmux alone
        (usb("ff:00:00", usb_id="18d1:2d01"), {"phone"}),  # Android Open Accessory
        (fakes.RNDIS_TETHER, {"tethering"}),
        (usb("02:02:ff", "0a:00:00"), {"tethering"}),  # RNDIS the Android way
        (usb("ef:04:01", "0a:00:00"), {"tethering"}),
        (usb("02:06:00", "0a:00:00"), {"tethering"}),  # CDC ECM
        (usb("02:0d:00", "0a:00:01"), {"tethering"}),  # NCM
        (usb("02:0c:07"), {"tethering"}),  # EEM
        (usb("02:0e:00", "0a:00:02"), {"tethering"}),  # MBIM cellular modem
        (usb("02:02:01", "0a:00:00"), set()),  # a serial port (CDC ACM) is no link
        (fakes.BLUETOOTH, {"bluetooth"}),
        (fakes.KEYBOARD, {"hid", "hid_keyboard"}),
        (fakes.MOUSE, {"hid", "hid_mouse"}),
        (usb("03:00:00"), {"hid"}),
        (fakes.HUB, {"hub"}),
        (fakes.BADUSB_STICK_KEYBOARD, {"storage", "hid", "hid_keyboard", "badusb"}),
        (fakes.BADUSB_NET_KEYBOARD, {"tethering", "hid", "hid_keyboard", "badusb"}),
        (usb("03:00:00", "e0:01:03", "0a:00:00"), {"hid", "tethering", "badusb"}),
        (fakes.HEADSET, {"audio", "hid"}),  # volume buttons: not BadUSB
        (fakes.WIRELESS_MIC_RX, {"audio", "hid", "wireless_mic"}),
        (fakes.DJI_MIC_RX, {"audio", "wireless_mic"}),
        (
            usb("01:01:00", "01:02:00", usb_id="3333:0001", name="LARK M2"),
            {"audio", "wireless_mic"},
        ),
        (
            usb("01:01:00", usb_id="3333:0002", name="Wireless Microphone RX"),
            {"audio", "wireless_mic"},
        ),
        (usb("01:01:00", usb_id="19f7:0011", name="NT-USB Mini"), {"audio"}),  # wired RØDE
        (usb("03:00:00", usb_id="19f7:0040", name="Wireless GO II RX"), {"hid"}),  # no audio
        (fakes.LOGITECH_UNIFYING, {"hid", "hid_keyboard", "hid_mouse", "wireless_hid"}),
        (fakes.PRINTER, set()),
        (usb("ff:ff:ff"), set()),
        (usb(), set()),
    ],
)
def test_classify(device: UsbDevice, expected: set[str]) -> None:
    assert classify(device) == expected


def test_mtp_hint_turns_a_camera_into_a_phone() -> None:
    ptp = usb("06:01:01", usb_id="2717:ff48")
    assert classify(ptp) == {"camera"}
    assert classify(ptp, mtp=True) == {"phone", "mtp"}


def test_every_recording_class_is_recording() -> None:
    for name in RECORDING_OR_PHONE:
        assert is_recording_or_phone([name])
    assert is_recording_or_phone(classify(fakes.WEBCAM))
    assert is_recording_or_phone(classify(fakes.IPHONE))
    assert not is_recording_or_phone(classify(fakes.KEYBOARD))
    assert not is_recording_or_phone(classify(fakes.STICK))
    assert not is_recording_or_phone(classify(fakes.HUB))
    assert not is_recording_or_phone([])
