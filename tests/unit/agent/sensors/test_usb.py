"""The USB sensor's pure parts: descriptor parsing, the USBGuard hash, decisions, events,
and the udev-unavailable path (the kernel edge itself is tested under umockdev in
``tests/integration/usb``)."""

from __future__ import annotations

import errno
import random
import re
import struct
from pathlib import Path

import pytest
from baomi.devices.model import UsbDevice, UsbInterface
from baomi.devices.policy import DevicePolicy
from baomi.display import escape
from baomi.v1 import events_pb2

from agent.sensors import usb
from agent.sensors.usb import (
    Observed,
    Outcome,
    UsbConfig,
    UsbSensor,
    decide,
    device_event,
    parse_descriptors,
    usbguard_hash,
)

SHARED = Path(__file__).resolve().parents[5] / "shared" / "testdata"


def _hex_attribute(path: Path, device_path: str, name: str) -> bytes:
    """An ``H:`` attribute of one device of a umockdev file."""
    current = None
    for line in path.read_text().splitlines():
        if line.startswith("P: "):
            current = line[3:].strip()
        elif current == device_path and line.startswith(f"H: {name}="):
            return bytes.fromhex(line.split("=", 1)[1])
    raise KeyError(name)


def _descriptors(*interfaces: tuple[int, int, int], configs: int = 1) -> bytes:
    device = struct.pack(
        "<BBHBBBBHHHBBBB", 18, 1, 0x200, 0, 0, 0, 64, 0x1234, 0x5678, 1, 1, 2, 3, configs
    )
    body = b"".join(struct.pack("<9B", 9, 4, n, 0, 0, *i, 0) for n, i in enumerate(interfaces))
    config = struct.pack("<BBHBBBBB", 9, 2, 9 + len(body), len(interfaces), 1, 0, 0x80, 50)
    return device + config + body


# --------------------------------------------------------------------------- descriptors


def test_parse_well_formed() -> None:
    parsed = parse_descriptors(_descriptors((8, 6, 0x50), (3, 1, 1)))
    assert parsed.problem == ""
    assert parsed.vendor_id == "1234" and parsed.product_id == "5678"
    assert parsed.interfaces == (UsbInterface(8, 6, 0x50), UsbInterface(3, 1, 1))
    assert parsed.parsed == 18 + 9 + 18


def test_parse_real_recordings() -> None:
    path = SHARED / "usbguard" / "devices.umockdev"
    if not path.exists():
        pytest.skip(f"{path} not found: real recordings live in ../shared/testdata")
    raw = _hex_attribute(path, "/devices/pci0000:00/0000:00:14.0/usb1/1-8", "descriptors")
    parsed = parse_descriptors(raw)
    assert parsed.problem == ""
    # Every alternate setting, as USBGuard lists them: { 0e:01:00 0e:02:00 0e:02:00 ... }
    assert [str(i) for i in parsed.interfaces] == ["0e:01:00"] + ["0e:02:00"] * 12


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "shorter than a device's"),
        (b"\x12\x01" + b"\x00" * 10, "shorter than a device's"),
        (b"\x09\x02" + b"\x00" * 16, "not 18 and 1"),
        (_descriptors((8, 6, 0x50))[:-3], "claims 18 bytes"),  # wTotalLength past the end
        (_descriptors((8, 6, 0x50)) + b"\x09\x02", "stray bytes"),
        (_descriptors((8, 6, 0x50), configs=2), "1 configurations present, 2 declared"),
        (_descriptors()[:18], "0 configurations present, 1 declared"),
    ],
)
def test_parse_malformed(data: bytes, problem: str) -> None:
    assert problem in parse_descriptors(data).problem


def _config_with(inner: bytes) -> bytes:
    device = _descriptors()[:18]
    return device + struct.pack("<BBHBBBBB", 9, 2, 9 + len(inner), 1, 1, 0, 0x80, 50) + inner


@pytest.mark.parametrize(
    ("inner", "problem"),
    [
        (b"\x00\x21\x00\x00", "descriptor length 0"),  # never advances: the parser hang
        (b"\x01\x21", "descriptor length 1"),
        (b"\x09\x04\x00\x00\x00\x08", "descriptor length 9 does not fit"),
        (b"\x05\x04\x00\x00\x00", "interface descriptor of length 5"),
        (b"\x09\x02\x09\x00\x01\x01\x00\x80\x32", "type 2 inside a configuration"),
        (b"\x12\x01" + b"\x00" * 16, "type 1 inside a configuration"),
        (b"\x07", "cut short"),
    ],
)
def test_parse_malformed_inner(inner: bytes, problem: str) -> None:
    parsed = parse_descriptors(_config_with(inner))
    assert problem in parsed.problem


def test_parse_never_raises_or_hangs_on_garbage() -> None:
    rng = random.Random(4)
    good = _descriptors((8, 6, 0x50), (3, 1, 1), (0xE, 2, 0))
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cut = rng.randint(0, len(data))
        for sample in (bytes(data), bytes(data[:cut]), rng.randbytes(rng.randint(0, 80))):
            parsed = parse_descriptors(sample)
            assert parsed.parsed <= len(sample)
            assert all(isinstance(i, UsbInterface) for i in parsed.interfaces)


# --------------------------------------------------------------------------- hash


def test_hash_matches_usbguard() -> None:
    """USBGuard's use-case test finds the trackball of devices.umockdev by this hash."""
    path = SHARED / "usbguard" / "devices.umockdev"
    if not path.exists():
        pytest.skip(f"{path} not found: real recordings live in ../shared/testdata")
    raw = _hex_attribute(path, "/devices/pci0000:00/0000:00:14.0/usb1/1-4/1-4.2", "descriptors")
    device = UsbDevice(
        sys_path="/sys/x", port="1-4.2", vendor_id="047d", product_id="2048",
        name="Kensington Eagle Trackball",
    )  # fmt: skip
    parsed = parse_descriptors(raw)
    assert usbguard_hash(device, raw[: parsed.parsed]) == (
        "D3deklX12Ir3kJPfUZ5AQNwHeZn1bwtPkQkw6e+8B38="
    )


# --------------------------------------------------------------------------- decisions, events


def _observed(problem: str = "", **fields: object) -> Observed:
    values: dict[str, object] = {
        "sys_path": "/sys/devices/x/3-1", "port": "3-1", "vendor_id": "05f3",
        "product_id": "0007", "interfaces": (UsbInterface(3, 1, 1),),
    }  # fmt: skip
    values.update(fields)
    return Observed(UsbDevice(**values), problem=problem)  # type: ignore[arg-type]


def test_suspicious_device_is_blocked_even_when_allowed() -> None:
    policy = DevicePolicy.load(Path("/nonexistent"))
    assert decide(policy, _observed()).target == "allow"
    decision = decide(policy, _observed("malformed descriptors: x"))
    assert decision.target == "block"
    assert decision.rule == "baomi:suspicious"


def test_no_policy_blocks() -> None:
    decision = decide(None, _observed())
    assert (decision.target, decision.rule) == ("block", "baomi:no-policy")


@pytest.mark.parametrize(
    ("interfaces", "severity"),
    [
        ((UsbInterface(3, 1, 1),), events_pb2.SEVERITY_INFO),  # keyboard allowed
        ((UsbInterface(8, 6, 0x50),), events_pb2.SEVERITY_MEDIUM),  # stick blocked
        ((UsbInterface(1, 1, 0),), events_pb2.SEVERITY_HIGH),  # microphone
        ((UsbInterface(8, 6, 0x50), UsbInterface(3, 1, 1)), events_pb2.SEVERITY_HIGH),  # BadUSB
    ],
)
def test_severity(interfaces: tuple[UsbInterface, ...], severity: int) -> None:
    policy = DevicePolicy.load(Path("/nonexistent"))
    observed = _observed(interfaces=interfaces)
    event = device_event("add", Outcome(observed, decide(policy, observed)))
    assert event.severity == severity


def test_event_keeps_strings_verbatim_but_valid() -> None:
    name = "\x1b[31mred\udcff\n"  # an escape, and a byte that was not UTF-8
    observed = _observed(name=name, serial="S\x00N")
    event = device_event("add", Outcome(observed, decide(None, observed), "not enforced: x"))
    assert event.device.name == "\x1b[31mred\\xff\n"
    assert event.device.serial == "S\x00N"
    assert event.device.rule == "baomi:no-policy"
    assert event.device.reason == "no device policy loaded; not enforced: x"
    assert event.severity == events_pb2.SEVERITY_HIGH
    event.SerializeToString()


def test_escape_for_terminals() -> None:
    assert (
        escape("\x1b[2J\r\n\x07\x9b\u202e机密 ok\\") == "\\x1b[2J\\r\\n\\x07\\x9b\\u202e机密 ok\\\\"
    )
    assert escape("bad\udcfe") == "bad\\xfe"
    assert re.fullmatch(r"[ -~]*", escape("".join(map(chr, range(0x20)))))


# --------------------------------------------------------------------------- udev missing


def test_udev_unavailable_disables_with_one_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    import pyudev

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPROTONOSUPPORT, "Protocol not supported")

    monkeypatch.setattr(pyudev.Monitor, "from_netlink", refuse)
    sensor = UsbSensor(UsbConfig(policies=tmp_path), lambda event: None)
    sensor.start()
    health = sensor.health()
    assert health.state == "disabled"
    assert "udev is unavailable" in health.detail and "not controlled" in health.detail
    assert [r.message for r in caplog.records if r.levelname == "ERROR"] == [
        "usb sensor disabled: udev is unavailable ([Errno 93] Protocol not supported)"
    ]
    sensor.stop()  # nothing started, nothing to close


def test_source_auto_follows_udevd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(usb, "UDEV_CONTROL", tmp_path / "control")
    # The real host's devices are enumerated here: report only, never write to them.
    sensor = UsbSensor(UsbConfig(policies=tmp_path, unsafe_report_only=True), lambda event: None)
    sensor.start()
    try:
        assert sensor.health().detail == "listening to kernel events"
    finally:
        sensor.stop()
