"""The USB sensor against a umockdev testbed: real libudev events, sysfs writes asserted.

Each test adds devices from real recordings (``../shared/testdata``) or from
``tests/assets/usb``, lets the sensor's pyudev monitor receive the ``add``, and reads
back what the sensor wrote to the testbed's ``authorized`` and ``remove`` files.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator

import pytest
from baomi.devices.classes import BADUSB, STORAGE
from baomi.devices.model import MAX_DEVICE_STRING
from baomi.v1 import events_pb2

from agent.sensors.usb import UsbConfig, UsbSensor
from tests.integration.usb.conftest import Events, Policies, Testbed, asset, shared

pytestmark = pytest.mark.umockdev

ROOT = "/sys/devices/pci0000:00/0000:00:14.0/usb3"
SONY_PHONE = "/sys/devices/pci0000:00/0000:00:1a.0/usb1/1-1/1-1.5/1-1.5.2/1-1.5.2.4"
KEYBOARD = "/sys/devices/pci0000:00/0000:00:1a.0/usb1/1-1/1-1.5/1-1.5.4/1-1.5.4.2"
DENY, ALLOW = events_pb2.DECISION_DENY, events_pb2.DECISION_ALLOW

SensorFactory = Callable[..., UsbSensor]


@pytest.fixture
def make_sensor(testbed: Testbed, events: Events, policies: Policies) -> Iterator[SensorFactory]:
    """Start a USB sensor on the testbed (after the devices a test added first)."""
    started: list[UsbSensor] = []

    def make(**settings: object) -> UsbSensor:
        config = UsbConfig(policies=policies.path, **settings)  # type: ignore[arg-type]
        sensor = UsbSensor(config, events, on_device_event=events.notify)
        sensor.start()
        started.append(sensor)
        return sensor

    yield make
    for sensor in started:
        sensor.stop()


def _added(testbed: Testbed, events: Events, name: str) -> tuple[str, events_pb2.Event]:
    """Add one asset and wait for the sensor's event about it."""
    (sys_path,) = testbed.add_file(asset(name))
    return sys_path, events.device(sys_path.rsplit("/", 1)[1])


# --------------------------------------------------------------------------- sticks


def test_registered_stick_is_allowed(
    testbed: Testbed, events: Events, make_sensor: SensorFactory
) -> None:
    sensor = make_sensor()
    path, event = _added(testbed, events, "stick-registered.umockdev")
    assert event.device.decision == ALLOW
    assert event.device.rule.startswith("baomi:registered-stick")
    assert "BM-U-TEST-001" in event.device.reason
    assert event.severity == events_pb2.SEVERITY_INFO
    assert testbed.attribute(path, "authorized") == "1"
    assert event.device.vendor_id == "0781" and event.device.product_id == "5567"
    assert event.device.serial == "4C530001230101111111"
    assert event.device.name == "Cruzer Blade"
    assert event.device.interfaces == "08:06:50"
    assert event.device.device_class == STORAGE
    assert sensor.health().state == "ok"


def test_unregistered_stick_is_blocked(
    testbed: Testbed, events: Events, make_sensor: SensorFactory
) -> None:
    make_sensor()
    path, event = _added(testbed, events, "stick-unregistered.umockdev")
    assert event.device.decision == DENY
    assert event.device.rule.startswith("baomi:storage")
    assert "not in the register" in event.device.reason
    assert event.severity == events_pb2.SEVERITY_MEDIUM
    assert testbed.attribute(path, "authorized") == "0"


def test_stick_with_registered_serial_but_other_descriptors_is_blocked(
    testbed: Testbed, events: Events, make_sensor: SensorFactory, policies: Policies
) -> None:
    """A copy of the registered stick's id and serial with a different descriptor hash."""
    make_sensor()
    text = asset("stick-registered.umockdev").read_text()
    # Same identity strings, another bcdDevice: a different controller, a different hash.
    text = text.replace("8107675500010102", "8107675500020102")
    assert "8107675500020102" in text
    testbed.add_text(text)
    event = events.device("3-1")
    assert event.device.decision == DENY
    assert "descriptor hash differs" in event.device.reason
    assert testbed.attribute(f"{ROOT}/3-1", "authorized") == "0"


# --------------------------------------------------------------------------- recorders, phones


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("webcam.umockdev", {"video"}),
        ("microphone.umockdev", {"audio"}),
        ("wireless-mic.umockdev", {"audio", "wireless_mic"}),
        ("iphone.umockdev", {"phone"}),
        ("rndis-tether.umockdev", {"tethering"}),
    ],
)
def test_recording_devices_and_phones_are_blocked(
    testbed: Testbed,
    events: Events,
    make_sensor: SensorFactory,
    name: str,
    expected: set[str],
) -> None:
    make_sensor()
    path, event = _added(testbed, events, name)
    assert event.device.decision == DENY
    assert expected <= set(event.device.device_class.split(","))
    assert event.device.rule.startswith("baomi:recording-or-phone")
    assert event.severity == events_pb2.SEVERITY_HIGH
    assert testbed.attribute(path, "authorized") == "0"
    assert testbed.attribute(path, "remove") == ""  # blocked, not rejected


def test_android_mtp_phone_recording_is_blocked(
    testbed: Testbed, events: Events, make_sensor: SensorFactory
) -> None:
    """The real Sony Xperia recording: its hubs are allowed, the MTP phone is blocked."""
    make_sensor()
    paths = testbed.add_file(shared("umockdev/sony-xperia-mini-pro.umockdev"))
    assert SONY_PHONE in paths
    event = events.device("1-1.5.2.4")
    assert event.device.decision == DENY
    assert {"phone", "mtp"} <= set(event.device.device_class.split(","))
    assert event.device.serial == "0123456789ABCDEF"
    assert event.severity == events_pb2.SEVERITY_HIGH
    assert testbed.attribute(SONY_PHONE, "authorized") == "0"
    for hub in ("usb1", "1-1", "1-1.5", "1-1.5.2"):
        assert events.device(hub).device.decision == ALLOW
    assert testbed.attribute(SONY_PHONE.rsplit("/", 1)[0], "authorized") == "1"


def test_ptp_camera_recording_is_blocked(
    testbed: Testbed, events: Events, make_sensor: SensorFactory
) -> None:
    make_sensor()
    testbed.add_file(shared("umockdev/canon-powershot-sx200.umockdev"))
    event = events.device("1-1.5.2.3")
    assert event.device.decision == DENY
    assert "camera" in event.device.device_class.split(",")
    path = "/sys/devices/pci0000:00/0000:00:1a.0/usb1/1-1/1-1.5/1-1.5.2/1-1.5.2.3"
    assert testbed.attribute(path, "authorized") == "0"


def test_badusb_combo_is_rejected(
    testbed: Testbed, events: Events, make_sensor: SensorFactory
) -> None:
    """A stick that is also a keyboard: deauthorized and removed, even with the
    registered stick's id and serial."""
    make_sensor()
    path, event = _added(testbed, events, "badusb.umockdev")
    assert event.device.decision == DENY
    assert BADUSB in event.device.device_class.split(",")
    assert event.severity == events_pb2.SEVERITY_HIGH
    assert testbed.attribute(path, "authorized") == "0"
    assert testbed.attribute(path, "remove") == "1"


# --------------------------------------------------------------------------- input devices


def test_keyboard_recording_is_allowed(
    testbed: Testbed, events: Events, make_sensor: SensorFactory
) -> None:
    make_sensor()
    testbed.add_file(shared("umockdev/usbkbd.umockdev"))
    event = events.device("1-1.5.4.2")
    assert event.device.decision == ALLOW
    assert event.device.rule.startswith("baomi:input")
    assert event.severity == events_pb2.SEVERITY_INFO
    assert testbed.attribute(KEYBOARD, "authorized") == "1"


# --------------------------------------------------------------------------- start, remove


def test_device_present_before_start_is_evaluated(
    testbed: Testbed, events: Events, make_sensor: SensorFactory
) -> None:
    testbed.add_file(asset("stick-unregistered.umockdev"))
    testbed.add_file(asset("stick-registered.umockdev"))
    make_sensor()
    blocked = events.device("3-2", "present")
    assert blocked.device.decision == DENY
    assert testbed.attribute(f"{ROOT}/3-2", "authorized") == "0"
    assert events.device("3-1", "present").device.decision == ALLOW
    assert testbed.attribute(f"{ROOT}/3-1", "authorized") == "1"


def test_remove_event(testbed: Testbed, events: Events, make_sensor: SensorFactory) -> None:
    make_sensor()
    path, added = _added(testbed, events, "webcam.umockdev")
    testbed.uevent(path, "remove")
    removed = events.device("3-4", "remove")
    assert removed.severity == events_pb2.SEVERITY_INFO
    for field in ("vendor_id", "product_id", "serial", "name", "descriptor_hash", "decision"):
        assert getattr(removed.device, field) == getattr(added.device, field)
    assert events.notified >= 2  # on_device_event after the add and after the remove


def test_usb_devices_of_a_whole_laptop(
    testbed: Testbed, events: Events, make_sensor: SensorFactory
) -> None:
    """USBGuard's recording of a laptop, present at start: input devices and hubs keep
    working, the integrated camera is blocked, hashes are USBGuard's."""
    testbed.add_file(shared("usbguard/devices.umockdev"))
    make_sensor()
    camera = events.device("1-8", "present")
    assert camera.device.decision == DENY
    assert camera.device.interfaces == " ".join(["0e:01:00"] + ["0e:02:00"] * 12)
    for port in ("usb1", "1-4", "1-4.1", "1-4.1.3", "1-4.2", "1-4.4"):
        assert events.device(port, "present").device.decision == ALLOW, port
    # USBGuard's own use-case test (src/Tests/UseCase/003_cli_devices_umockdev.sh) finds
    # the dock and the trackball by these hashes.
    assert events.device("1-4", "present").device.descriptor_hash == (
        "2y2qS3rcuMr1Ye5knWsbD8CGzPtrs+eiRR/haro7+Ng="
    )
    assert events.device("1-4.2", "present").device.descriptor_hash == (
        "D3deklX12Ir3kJPfUZ5AQNwHeZn1bwtPkQkw6e+8B38="
    )


# --------------------------------------------------------------------------- USBGuard rules


def test_imported_usbguard_rule_allows_webcam_by_id_and_hash(
    testbed: Testbed, events: Events, make_sensor: SensorFactory, policies: Policies
) -> None:
    """An existing rules.conf copied to devices.rules overrides Baomi's default."""
    policies.rules(
        "# /etc/usbguard/rules.conf of this host\n"
        'allow id 046d:0825 hash "eVWBB1xn5qxtw/2xQZcwnLr7NPzOSaShlkQk90suSsE=" '
        "with-interface equals { 0e:01:00 0e:02:00 }\n"
        'allow id 046d:0825 hash "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="\n'
    )
    make_sensor()
    path, event = _added(testbed, events, "webcam.umockdev")
    assert event.device.decision == ALLOW
    assert event.device.rule.startswith('allow id 046d:0825 hash "eVWBB1xn')
    assert "devices.rules:2" in event.device.reason
    assert testbed.attribute(path, "authorized") == "1"
    # Another webcam of the same model (another serial, so another hash) stays blocked.
    testbed.add_text(
        asset("webcam.umockdev").read_text().replace("3-4", "3-11").replace("A1B2C3D4", "FFFF0000")
    )
    other = events.device("3-11")
    assert other.device.decision == DENY
    assert testbed.attribute(f"{ROOT}/3-11", "authorized") == "0"


def test_usbguard_block_rule_overrides_default_allow(
    testbed: Testbed, events: Events, make_sensor: SensorFactory, policies: Policies
) -> None:
    policies.rules("block id 05f3:0007\n")
    make_sensor()
    testbed.add_file(shared("umockdev/usbkbd.umockdev"))
    event = events.device("1-1.5.4.2")
    assert event.device.decision == DENY
    assert event.device.rule.startswith("block id 05f3:0007")
    assert testbed.attribute(KEYBOARD, "authorized") == "0"


def test_new_policy_decides_present_devices_again(
    testbed: Testbed, events: Events, make_sensor: SensorFactory, policies: Policies
) -> None:
    """A policy change re-decides present devices: an allowed webcam is authorized again
    (1 written over the 0 of the earlier block)."""
    sensor = make_sensor()
    path, _ = _added(testbed, events, "webcam.umockdev")
    assert testbed.attribute(path, "authorized") == "0"
    policies.rules('allow id 046d:0825 serial "A1B2C3D4"\n')
    before = len(events)
    sensor.apply_policy(policies.path)
    event = events.device("3-4", "present", since=before)
    assert event.device.decision == ALLOW
    assert testbed.attribute(path, "authorized") == "1"


def test_bad_policy_blocks_everything_and_says_so(
    testbed: Testbed, events: Events, make_sensor: SensorFactory, policies: Policies
) -> None:
    policies.rules("allow id 0781:5567 serial\n")  # an attribute without a value
    sensor = make_sensor()
    assert sensor.health().state == "degraded"
    assert "devices.rules" in sensor.health().detail
    path, event = _added(testbed, events, "stick-registered.umockdev")
    assert event.device.decision == DENY
    assert event.device.rule.startswith("baomi:no-policy")
    assert testbed.attribute(path, "authorized") == "0"


# --------------------------------------------------------------------------- hostile devices


def test_malformed_descriptors_block_and_the_sensor_goes_on(
    testbed: Testbed, events: Events, make_sensor: SensorFactory
) -> None:
    """A keyboard (allowed as input) whose descriptors do not parse is blocked."""
    make_sensor()
    path, event = _added(testbed, events, "malformed.umockdev")
    assert event.device.decision == DENY
    assert event.device.rule.startswith("baomi:suspicious")
    assert "descriptor length 0" in event.device.reason
    assert testbed.attribute(path, "authorized") == "0"
    _, after = _added(testbed, events, "stick-registered.umockdev")
    assert after.device.decision == ALLOW


def test_attacker_strings_are_stored_bounded(
    testbed: Testbed, events: Events, make_sensor: SensorFactory
) -> None:
    make_sensor()
    path, event = _added(testbed, events, "attacker-strings.umockdev")
    name = event.device.name
    assert len(name) <= MAX_DEVICE_STRING
    assert name.startswith("\x1b[2J\x1b[H\x1b[31mPWNED")  # verbatim: consumers escape
    assert "\\xff\\xfe" in name  # invalid UTF-8 kept visible, the event stays valid
    event.SerializeToString()  # protobuf accepts it
    assert event.device.decision == DENY
    assert "more than USB allows" in event.device.reason
    assert testbed.attribute(path, "authorized") == "0"


# --------------------------------------------------------------------------- sysfs edges


def test_reject_without_remove_attribute_says_so(
    testbed: Testbed, events: Events, make_sensor: SensorFactory
) -> None:
    make_sensor()
    text = asset("badusb.umockdev").read_text().replace("A: remove=\n", "")
    testbed.add_text(text)
    event = events.device("3-8")
    assert "writing 1 to remove failed: ENOENT" in event.device.reason
    assert event.severity == events_pb2.SEVERITY_HIGH
    assert testbed.attribute(f"{ROOT}/3-8", "authorized") == "0"  # still deauthorized


def test_block_without_authorized_attribute_says_so(
    testbed: Testbed, events: Events, make_sensor: SensorFactory
) -> None:
    make_sensor()
    text = asset("microphone.umockdev").read_text().replace("A: authorized=1\n", "")
    testbed.add_text(text)
    event = events.device("3-3")
    assert event.device.decision == DENY
    assert "not enforced: writing 0 to authorized failed: ENOENT" in event.device.reason
    assert event.severity == events_pb2.SEVERITY_HIGH


def test_reauthorized_device_is_blocked_again(
    testbed: Testbed, events: Events, make_sensor: SensorFactory
) -> None:
    """Someone writes 1 to a blocked device's authorized: the change is undone."""
    make_sensor()
    path, _ = _added(testbed, events, "microphone.umockdev")
    assert testbed.attribute(path, "authorized") == "0"
    testbed.set_attribute(path, "authorized", "1")
    testbed.uevent(path, "change")
    event = events.device("3-3", "change")
    assert event.device.decision == DENY
    assert testbed.attribute(path, "authorized") == "0"


def test_report_only_writes_nothing(
    testbed: Testbed, events: Events, make_sensor: SensorFactory
) -> None:
    make_sensor(unsafe_report_only=True)
    path, event = _added(testbed, events, "webcam.umockdev")
    assert event.device.decision == DENY
    assert "not enforced: unsafe_report_only" in event.device.reason
    assert testbed.attribute(path, "authorized") == "1"


@pytest.mark.parametrize("source", ["udev", "kernel"])
def test_both_netlink_sources(
    testbed: Testbed, events: Events, make_sensor: SensorFactory, source: str
) -> None:
    sensor = make_sensor(source=source)
    assert source in sensor.health().detail
    path, event = _added(testbed, events, "stick-unregistered.umockdev")
    assert event.device.decision == DENY
    assert testbed.attribute(path, "authorized") == "0"


def test_stopped_sensor_hears_nothing(
    testbed: Testbed, events: Events, make_sensor: SensorFactory
) -> None:
    sensor = make_sensor()
    sensor.stop()
    assert sensor.health().state == "disabled"
    testbed.add_file(asset("webcam.umockdev"))
    with pytest.raises(AssertionError):
        events.device("3-4", timeout=0.5)


def test_hash_is_base64_sha256(
    testbed: Testbed, events: Events, make_sensor: SensorFactory
) -> None:
    make_sensor()
    _, event = _added(testbed, events, "iphone.umockdev")
    assert len(base64.b64decode(event.device.descriptor_hash)) == 32


class _ExplodingPolicy:
    """A policy whose evaluation fails (a bug, or a resource running out)."""

    def evaluate(self, device: object, *, mtp: bool = False) -> object:
        raise MemoryError("no memory left for this device")


def test_failed_evaluation_blocks_and_the_sensor_goes_on(
    testbed: Testbed, events: Events, policies: Policies
) -> None:
    sensor = UsbSensor(
        UsbConfig(policies=policies.path),
        events,
        policy_loader=lambda _: _ExplodingPolicy(),  # type: ignore[arg-type,return-value]
    )
    sensor.start()
    try:
        path, event = _added(testbed, events, "stick-registered.umockdev")
        assert event.device.decision == DENY
        assert event.device.reason == "evaluation failed (MemoryError)"
        assert event.severity == events_pb2.SEVERITY_HIGH
        assert testbed.attribute(path, "authorized") == "0"
        _, second = _added(testbed, events, "webcam.umockdev")
        assert second.device.decision == DENY
        assert sensor.health().state == "ok"
    finally:
        sensor.stop()
