"""Events and USB devices for the targets and their seeds: made here, or read from real
recordings in ``../shared/testdata`` when that folder is present (never copied here)."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from typing import Any

from baomi import chain
from baomi.devices.model import UsbDevice
from baomi.v1 import events_pb2

from agent.sensors.usb import parse_descriptors, usbguard_hash

REPO = Path(__file__).resolve().parents[1]
POLICIES = REPO / "policies"
#: Real-world test data of other projects: USBGuard's rule corpus, umockdev recordings.
TESTDATA = REPO.parent / "shared" / "testdata"

HOST = "ws-fuzz-01"  # the host id of every sample event and of the ingest target's stream
T0 = 1_764_201_600  # 2025-11-27T00:00:00Z, seconds: when the sample events happen


def _stamp(seconds: int) -> Any:  # Any: a google.protobuf.Timestamp
    from google.protobuf.timestamp_pb2 import Timestamp  # noqa: PLC0415 - one use

    return Timestamp(seconds=seconds, nanos=500_000)


def _kinds(host: str) -> list[dict[str, Any]]:
    """One realistic payload of each kind of the ``Event.kind`` oneof."""
    return [
        {
            "file_access": events_pb2.FileAccess(
                path="/srv/secret/plan.docx",
                action="read",
                uid=1001,
                user="wang",
                pid=4242,
                executable="/usr/bin/wps",
                level=events_pb2.LEVEL_SECRET,
                label_id="JM-2026-001",
                decision=events_pb2.DECISION_DENY,
                reason="outside the label's scope",
                rule="p, role:analyst, /srv/secret/**, read, allow",
                cmdline="wps /srv/secret/plan.docx",
                label_until="2030-12-31",
                label_scope=["dept:finance", "user:li"],
                count=3,
                first=_stamp(T0),
                last=_stamp(T0 + 5),
                home="/srv/secret/plan.docx",
            )
        },
        {
            "file_change": events_pb2.FileChange(
                path="/srv/secret/b.xlsx",
                change="rename",
                old_path="/srv/secret/a.xlsx",
                uid=1002,
                pid=77,
                level=events_pb2.LEVEL_CONFIDENTIAL,
                label_id="MM-9",
                home="/srv/secret/a.xlsx",
                detail="",
            )
        },
        {
            "device": events_pb2.Device(
                action="add",
                device_class="storage",
                vendor_id="0781",
                product_id="5581",
                serial="4C530001",
                name="Ultra \\xff",
                descriptor_hash="aGFzaA==",
                port="1-1.2",
                interfaces="08:06:50",
                decision=events_pb2.DECISION_DENY,
                rule="baomi:storage",
                reason="unregistered storage",
            )
        },
        {
            "network": events_pb2.Network(
                action="link_up",
                interface="wlan0",
                link_kind="wireless",
                address="192.168.1.7/24",
                gateway="192.168.1.1",
                violation=True,
                reason="wireless link on a secret host",
                enforced=True,
            )
        },
        {
            "process": events_pb2.Process(
                pid=31337,
                name="obs",
                executable="/usr/bin/obs",
                cmdline="obs --startrecording",
                uid=1001,
                reason="holds a capture device",
                started=_stamp(T0 - 60),
                devices=["/dev/video0", "/dev/snd/pcmC0D0c"],
            )
        },
        {
            "meeting_check": events_pb2.MeetingCheck(
                room="r301",
                meeting="m-2026-12-01",
                phase="check",
                cleared=False,
                items=[
                    events_pb2.CheckItem(id="C1", title="PA", result="pass", mandatory=True),
                    events_pb2.CheckItem(id="C5", title="jammer", result="fail", evidence="-3 dB"),
                ],
                inspector="zhang",
                signature=b"\x01" * 64,
            )
        },
        {
            "agent_status": events_pb2.AgentStatus(
                version="0.1.0",
                policy_version="0123456789abcdef",
                sensors=[events_pb2.SensorHealth(name="files", state="degraded", detail="6.1")],
                spool_events=12,
                spool_bytes=4096,
                state="running",
                heartbeat_seconds=60,
            )
        },
        {"policy_applied": events_pb2.PolicyApplied(version="0123456789abcdef", ok=True)},
        {
            "tamper": events_pb2.Tamper(
                kind="chain_break",
                detail="seq gap: 3 then 5",
                gap_start=_stamp(T0 - 10),
                gap_end=_stamp(T0),
                subject_host=host,
                subject_seq=5,
            )
        },
        {
            "console_action": events_pb2.ConsoleAction(
                actor="sue", role="secadmin", action="view_event", target=f"{host}/1", ok=True
            )
        },
    ]


def sample_events(host: str = HOST) -> list[events_pb2.Event]:
    """One correctly chained event of each kind for ``host``, seq 1 upwards."""
    out: list[events_pb2.Event] = []
    head = chain.GENESIS
    for seq, kind in enumerate(_kinds(host), 1):
        severity = events_pb2.SEVERITY_HIGH if seq % 3 == 0 else events_pb2.SEVERITY_INFO
        ev = events_pb2.Event(host_id=host, seq=seq, prev_hash=head, severity=severity, **kind)
        ev.time.FromSeconds(T0 + seq)
        head = chain.event_hash(ev)
        out.append(ev)
    return out


# --------------------------------------------------------------------------- USB devices


def _descriptors(vendor: int, product: int, interfaces: list[tuple[int, int, int]]) -> bytes:
    """A device descriptor and one configuration with ``interfaces``, as sysfs has them."""
    body = b"".join(
        bytes([9, 4, n, 0, 1, cls, sub, proto, 0]) + bytes([7, 5, 0x81, 2, 0, 2, 0])
        for n, (cls, sub, proto) in enumerate(interfaces)
    )
    total = 9 + len(body)
    config = bytes([9, 2, total & 0xFF, total >> 8, len(interfaces), 1, 0, 0x80, 50])
    device = bytes([18, 1, 0, 2, 0, 0, 0, 64])
    device += vendor.to_bytes(2, "little") + product.to_bytes(2, "little")
    device += bytes([0, 1, 1, 2, 3, 1])
    return device + config + body


def _device(
    port: str, vendor: int, product: int, *, serial: str, name: str, raw: bytes
) -> tuple[UsbDevice, bytes]:
    parsed = parse_descriptors(raw)
    device = UsbDevice(
        sys_path=f"/sys/devices/pci0000:00/0000:00:14.0/usb1/{port}",
        port=port,
        vendor_id=f"{vendor:04x}",
        product_id=f"{product:04x}",
        serial=serial,
        name=name,
        interfaces=parsed.interfaces,
        device_class=parsed.device_class,
        connect_type="hotplug",
    )
    return replace(device, descriptor_hash=usbguard_hash(device, raw[: parsed.parsed])), raw


#: Made here: a stick, a keyboard and a BadUSB stick, for when no recording is present.
_MADE = (
    ("1-1", 0x0781, 0x5581, "4C530001", "Ultra", [(8, 6, 0x50)]),
    ("1-2", 0x05F3, 0x0007, "", "Keyboard", [(3, 1, 1)]),
    ("1-3", 0x1234, 0x5678, "\udcff\udc80", "Evil \udcfe", [(3, 1, 1), (8, 6, 0x50)]),
)


def recordings() -> list[Path]:
    """The umockdev recordings in ``../shared/testdata`` (none when it is absent)."""
    return sorted(TESTDATA.glob("*/*.umockdev")) if TESTDATA.is_dir() else []


def _recorded(path: Path) -> list[tuple[UsbDevice, bytes]]:
    """The ``usb_device`` entries of one umockdev recording, as the USB sensor reads them."""
    found = []
    for block in path.read_text(encoding="utf-8", errors="surrogateescape").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            tag, _, rest = line.partition(": ")
            if tag == "P":
                fields["P"] = rest
            elif tag in ("E", "A", "H"):
                key, _, value = rest.partition("=")
                fields[f"{tag}:{key}"] = value
        if fields.get("E:DEVTYPE") != "usb_device" or "H:descriptors" not in fields:
            continue
        try:
            raw = bytes.fromhex(fields["H:descriptors"])
            vendor = int(fields.get("A:idVendor", "0"), 16)
            product = int(fields.get("A:idProduct", "0"), 16)
        except ValueError:
            continue
        port = fields.get("P", "").rsplit("/", 1)[-1]
        serial, name = fields.get("A:serial", ""), fields.get("A:product", "")
        found.append(_device(port, vendor, product, serial=serial, name=name, raw=raw))
    return found


@functools.cache
def usb_devices() -> tuple[tuple[UsbDevice, bytes], ...]:
    """Devices (with their raw descriptors) to evaluate rules against: the recorded ones
    and a few made here."""
    made = [
        _device(
            port, vendor, product, serial=serial, name=name, raw=_descriptors(vendor, product, i)
        )
        for port, vendor, product, serial, name, i in _MADE
    ]
    recorded = [d for path in recordings() for d in _recorded(path)]
    return (*recorded, *made)
