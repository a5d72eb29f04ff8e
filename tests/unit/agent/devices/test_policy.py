"""The device policy of a secret host: Baomi's defaults, explicit rules, generated rules."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from baomi.devices.model import UsbDevice
from baomi.devices.policy import DEVICES_RULES, USB_REGISTRY, DevicePolicy, generate_rules
from baomi.devices.registry import RegistryError
from baomi.devices.rules import RuleError, RuleSet

from . import fakes
from .fakes import usb
from .test_registry import REGISTER

REPO = Path(__file__).parents[4]


def _policy(tmp_path: Path, rules: str | None = None, register: str = REGISTER) -> DevicePolicy:
    if rules is not None:
        (tmp_path / DEVICES_RULES).write_text(rules, encoding="utf-8")
    (tmp_path / USB_REGISTRY).write_text(register, encoding="utf-8")
    return DevicePolicy.load(tmp_path)


@pytest.fixture
def defaults(tmp_path: Path) -> DevicePolicy:
    """The register above and no devices.rules: Baomi's defaults alone."""
    return _policy(tmp_path)


LOST_STICK = usb("08:06:50", usb_id="090c:1000", serial="AA00000000012345")


@pytest.mark.parametrize(
    ("device", "target", "rule", "words"),
    [
        (fakes.STICK, "allow", "baomi:registered-stick", "BM-U-2026-001"),
        (dataclasses.replace(fakes.STICK, serial="OTHER"), "block", "baomi:storage", "not in"),
        (dataclasses.replace(fakes.STICK, descriptor_hash="x="), "block", "baomi:storage", "hash"),
        (LOST_STICK, "block", "baomi:storage", "BM-U-2024-017"),
        (
            dataclasses.replace(
                fakes.STICK, interfaces=(*fakes.STICK.interfaces, *fakes.USB_MIC.interfaces[:2])
            ),
            "block",
            "baomi:storage",
            "more than storage",
        ),
        (fakes.WEBCAM, "block", "baomi:recording-or-phone", "video"),
        (fakes.USB_MIC, "block", "baomi:recording-or-phone", "audio"),
        (fakes.WIRELESS_MIC_RX, "block", "baomi:recording-or-phone", "wireless_mic"),
        (fakes.DJI_MIC_RX, "block", "baomi:recording-or-phone", "wireless_mic"),
        (fakes.HEADSET, "block", "baomi:recording-or-phone", "audio"),
        (fakes.CAMERA, "block", "baomi:recording-or-phone", "camera"),
        (fakes.ANDROID_MTP, "block", "baomi:recording-or-phone", "phone"),
        (fakes.ANDROID_PTP_MTP_FLAG, "block", "baomi:recording-or-phone", "phone"),
        (fakes.IPHONE, "block", "baomi:recording-or-phone", "phone"),
        (fakes.RNDIS_TETHER, "block", "baomi:recording-or-phone", "tethering"),
        (fakes.BLUETOOTH, "block", "baomi:recording-or-phone", "bluetooth"),
        (fakes.BADUSB_STICK_KEYBOARD, "reject", "baomi:badusb", "BadUSB"),
        (fakes.BADUSB_NET_KEYBOARD, "reject", "baomi:badusb", "BadUSB"),
        (
            dataclasses.replace(
                fakes.STICK, interfaces=(*fakes.STICK.interfaces, *fakes.KEYBOARD.interfaces)
            ),
            "reject",
            "baomi:badusb",
            "BadUSB",
        ),  # a registered stick's identity does not save a stick that is a keyboard
        (fakes.LOGITECH_UNIFYING, "block", "baomi:wireless-input", "wireless"),
        (fakes.KEYBOARD, "allow", "baomi:input", "keyboard"),
        (fakes.MOUSE, "allow", "baomi:input", "mouse"),
        (usb("03:00:00", usb_id="1050:0407"), "allow", "baomi:input", "input"),
        (fakes.HUB, "allow", "baomi:hub", "hub"),
        (fakes.PRINTER, "block", "baomi:other", "07:01:02"),
        (usb("ff:ff:ff", usb_id="0bda:8179"), "block", "baomi:other", "ff:ff:ff"),
        (usb("09:00:00", "ff:ff:ff"), "block", "baomi:other", "09:00:00 ff:ff:ff"),
        (usb("03:01:01", "ff:00:00"), "block", "baomi:other", "03:01:01 ff:00:00"),
        (usb("09:00:01", "09:00:02"), "allow", "baomi:hub", "hub"),
        (usb(usb_id="0781:5581"), "block", "baomi:no-interfaces", "no interface"),
    ],
)
def test_defaults(
    defaults: DevicePolicy, device: UsbDevice, target: str, rule: str, words: str
) -> None:
    decision = defaults.evaluate(device)
    assert (decision.target, decision.rule) == (target, rule), decision
    assert words in decision.reason


def test_decision_carries_the_classes(defaults: DevicePolicy) -> None:
    assert defaults.evaluate(fakes.WIRELESS_MIC_RX).classes == {"audio", "hid", "wireless_mic"}
    assert defaults.evaluate(fakes.STICK).classes == {"storage"}


def test_mtp_hint(defaults: DevicePolicy) -> None:
    ptp = usb("06:01:01", usb_id="2717:ff48")
    assert "camera" in defaults.evaluate(ptp).classes
    decision = defaults.evaluate(ptp, mtp=True)
    assert decision.target == "block"
    assert "phone" in decision.classes


IMPORTED_RULES_CONF = """\
# /etc/usbguard/rules.conf of a host, imported as it is
allow id 1d6b:* with-interface 09:00:*
allow with-interface equals { 08:*:* }
reject with-interface all-of { 08:*:* 03:*:* }
allow id 413c:2113 with-interface equals { 03:01:01 03:00:00 }
block
"""


def test_imported_rules_conf_is_honoured(tmp_path: Path) -> None:
    policy = _policy(tmp_path, IMPORTED_RULES_CONF)
    stranger = dataclasses.replace(fakes.STICK, serial="UNREGISTERED")
    decision = policy.evaluate(stranger)
    # The imported file allows every plain stick; Baomi does not second-guess it.
    assert (decision.target, decision.rule) == ("allow", "allow with-interface 08:*:*")
    assert decision.reason.endswith(f"{DEVICES_RULES}:3 matches")
    assert policy.evaluate(fakes.KEYBOARD).target == "allow"
    # Its final catch-all block decides what the defaults would have allowed.
    decision = policy.evaluate(fakes.MOUSE)
    assert (decision.target, decision.rule) == ("block", "block")
    assert policy.evaluate(fakes.BADUSB_STICK_KEYBOARD).target == "reject"


def test_explicit_rules_come_before_the_defaults(tmp_path: Path) -> None:
    rules = 'block id 413c:*\nallow id 04f9:0042 serial "E73214K2N123456"\n'
    policy = _policy(tmp_path, rules)
    assert policy.evaluate(fakes.KEYBOARD).target == "block"
    assert policy.evaluate(fakes.PRINTER).target == "allow"
    # Devices no rule decides still meet the defaults.
    assert policy.evaluate(fakes.MOUSE).rule == "baomi:input"
    assert policy.evaluate(fakes.STICK).rule == "baomi:registered-stick"
    assert policy.evaluate(fakes.WEBCAM).target == "block"


def test_unknown_conditions_never_allow(tmp_path: Path) -> None:
    policy = _policy(
        tmp_path, "allow if random\nreject with-interface one-of { 0e:*:* } if localtime(09:00)\n"
    )
    assert policy.evaluate(fakes.WEBCAM).target == "reject"
    assert policy.evaluate(fakes.PRINTER).target == "block"  # the allow did not apply


def test_a_device_without_interfaces_is_blocked_before_explicit_rules(tmp_path: Path) -> None:
    policy = _policy(tmp_path, "allow with-interface none-of { 08:*:* }\n")
    assert policy.evaluate(usb()).rule == "baomi:no-interfaces"


def test_load_without_files(tmp_path: Path) -> None:
    policy = DevicePolicy.load(tmp_path)
    assert len(policy.rules) == 0
    assert policy.registry.sticks == ()
    assert policy.evaluate(fakes.STICK).target == "block"
    assert policy.evaluate(fakes.KEYBOARD).target == "allow"


def test_bad_files_name_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(RuleError) as rules_info:
        _policy(tmp_path, "allow\nallow id 0781\n")
    assert rules_info.value.line == 2
    assert rules_info.value.file == str(tmp_path / DEVICES_RULES)
    (tmp_path / DEVICES_RULES).unlink()
    with pytest.raises(RegistryError) as registry_info:
        _policy(tmp_path, register=REGISTER.replace('status = "lost"', 'status = "gone"'))
    assert registry_info.value.line == 27


def test_raw_bytes_in_devices_rules(tmp_path: Path) -> None:
    (tmp_path / DEVICES_RULES).write_bytes(b'allow name "caf\xe9"\n')
    policy = DevicePolicy.load(tmp_path)
    assert policy.evaluate(usb("ff:ff:ff", name="caf\udce9")).target == "allow"


def test_shipped_policies() -> None:
    policy = DevicePolicy.load(REPO / "policies")
    assert len(policy.rules) > 0
    token = usb("0b:00:00", usb_id="096e:0608", name="SC Reader KP382")
    assert policy.evaluate(token).target == "allow"
    assert policy.evaluate(fakes.PRINTER).target == "allow"
    other_printer = dataclasses.replace(fakes.PRINTER, serial="E00000000000000")
    assert policy.evaluate(other_printer).rule == "baomi:other"
    assert policy.evaluate(fakes.STICK).rule == "baomi:registered-stick"
    assert policy.evaluate(fakes.BADUSB_STICK_KEYBOARD).target == "reject"
    assert policy.evaluate(fakes.IPHONE).target == "block"
    assert policy.evaluate(fakes.KEYBOARD).target == "allow"


# --------------------------------------------------------------------------- generate


def test_generate_rules_pins_every_attribute() -> None:
    text = generate_rules([fakes.STICK, fakes.KEYBOARD])
    lines = text.splitlines()
    assert lines[0].startswith("#")
    assert lines[1] == (
        'allow id 0781:5581 serial "4C530001230815117313" name "Ultra" '
        'hash "Xb1Ck6bZk0VdJQhLw+5W7fJk3Zr1mZ0d8mP1tR2v9sA=" '
        'parent-hash "jEP/6WzviqdJ5VSeTUY8PatCNBKeaREvo2OqdplND/o=" via-port "1-2" '
        'with-interface 08:06:50 with-connect-type "hotplug"'
    )
    assert lines[2] == (
        'allow id 413c:2113 serial "" name "Dell KB216 Wired Keyboard" via-port "1-2" '
        'with-interface { 03:01:01 03:00:00 } with-connect-type "hotplug"'
    )


def test_generated_rules_as_devices_rules(tmp_path: Path) -> None:
    stranger = dataclasses.replace(fakes.STICK, serial="UNREGISTERED", descriptor_hash="")
    (tmp_path / DEVICES_RULES).write_text(generate_rules([stranger]) + "block\n")
    policy = DevicePolicy.load(tmp_path)
    assert policy.evaluate(stranger).target == "allow"
    assert policy.evaluate(dataclasses.replace(stranger, port="1-3")).target == "block"


HOSTILE = [
    'Evil" allow *:* "',
    'x"\nallow\n"',
    "line\rbreak",
    "back\\slash\\",
    "\\x41 is not A",
    '\\" escaped quote',
    "nul\x00byte",
    "# not a comment",
    "{ one-of } if true",
    "tab\tand\x7fdel",
    "中文名称",
    "bad utf-8 \udcff\udcfe\udc80",
    "lone surrogate \ud800 \udfff",
    "\u202egnp.exe",
    "A" * 10_240,
    '"' * 5_000 + "\\" * 5_000,
    "",
]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_generated_rules_survive_hostile_strings(text: str) -> None:
    device = dataclasses.replace(
        fakes.STICK,
        name=text,
        serial=text[::-1],
        descriptor_hash=text[:64],
        parent_hash=text[-64:],
        port="1-2" + text[:8],
        connect_type=text[:16],
    )
    generated = generate_rules([device])
    assert generated.count("\n") == 2  # header and one rule: no line was injected
    assert generated.isascii()
    ruleset = RuleSet.parse(generated, path="generated.rules")
    assert len(ruleset) == 1
    rule = ruleset.rules[0]
    assert rule.applies_to(device) is True
    assert str(rule) == generated.splitlines()[1]
    for field in ("name", "serial"):
        value = getattr(device, field)
        altered = dataclasses.replace(device, **{field: value + "x"})
        assert rule.applies_to(altered) is False
        if value:
            assert rule.applies_to(dataclasses.replace(device, **{field: value[:-1]})) is False
    # The rule pins this device only: the same id with other strings stays out.
    assert rule.applies_to(fakes.STICK) is False


def test_unpinnable_devices_become_comments() -> None:
    odd = dataclasses.replace(fakes.STICK, vendor_id='07"\nallow', product_id="x")
    bare = usb(usb_id="0781:5581")  # no interfaces, no hash
    text = generate_rules([odd, bare])
    assert text.count("\n") == 3
    assert all(line.startswith("#") for line in text.splitlines())
    assert len(RuleSet.parse(text)) == 0
