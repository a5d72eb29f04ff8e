"""USB devices across hosts, and approving a registered stick (涉密专用U盘).

Approval turns one observed device into policy: an ``active`` entry in
``usb-registry.toml`` (the agent's register, :mod:`baomi.devices.registry`) with the
stick's label number, owner, level, serial, id and descriptor hash. The agent's default
rules then allow it, and only while it declares mass storage and nothing else; an
explicit ``allow`` in ``devices.rules`` is deliberately not written, since it would be
taken before the BadUSB ``reject`` rules. The device's strings come from the device, so
they are written with full TOML escaping: a hostile serial cannot add an entry or key.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from baomi.v1 import events_pb2

from collector.console.errors import ConsoleError
from collector.store.base import ConsoleQuery, Store

RULES_FILE = "devices.rules"
REGISTRY_FILE = "usb-registry.toml"
LEVELS = ("秘密", "机密", "绝密")
DEVICE_EVENTS = 5000  # newest device events the devices page groups
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")
_LABEL = re.compile(r"[\w./-]{1,40}")  # letters (CJK too), digits, '.', '/', '_', '-'

_DECISION: dict[int, str] = {events_pb2.DECISION_ALLOW: "allow", events_pb2.DECISION_DENY: "block"}


@dataclass
class DeviceSeen:
    """One device (by id, serial and descriptor hash) as the hosts reported it."""

    vendor_id: str
    product_id: str
    serial: str
    descriptor_hash: str
    name: str
    device_class: str
    interfaces: str  # "08:06:50 ..." as the agent reported them
    decision: str  # the newest decision an agent reported: allow, block or ""
    last_us: int
    event: tuple[str, int]  # (host, seq) of the newest event, what approval refers to
    hosts: set[str] = field(default_factory=set)
    count: int = 0


def inventory(store: Store) -> list[DeviceSeen]:
    """Devices seen arriving on any host, newest first."""
    seen: dict[tuple[str, str, str, str], DeviceSeen] = {}
    for row in store.console_events(ConsoleQuery(kind="device", limit=DEVICE_EVENTS)):
        d = events_pb2.Event.FromString(row.body).device
        if d.action != "add":
            continue
        key = (d.vendor_id, d.product_id, d.serial, d.descriptor_hash)
        item = seen.get(key)
        if item is None:
            item = seen[key] = DeviceSeen(
                vendor_id=d.vendor_id,
                product_id=d.product_id,
                serial=d.serial,
                descriptor_hash=d.descriptor_hash,
                name=d.name,
                device_class=d.device_class,
                interfaces=d.interfaces,
                decision=_DECISION.get(d.decision, ""),
                last_us=row.event_time_us,
                event=(row.host_id, row.seq),
            )
        item.hosts.add(row.host_id)
        item.count += 1
    return list(seen.values())


def _toml_string(text: str) -> str:
    """A TOML basic string: quote, backslash and every control character escaped."""
    out = ['"']
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def _check_stick(device: events_pb2.Device) -> None:
    """Refuse what the register cannot hold or the agent would never accept."""
    if not (_HEX4.fullmatch(device.vendor_id) and _HEX4.fullmatch(device.product_id)):
        raise ConsoleError("the device's vendor or product id is not four hex digits")
    if not device.serial:
        raise ConsoleError(
            "the device reports no serial number, so it cannot be told apart from any "
            "other device of its model; it cannot be registered"
        )
    if device.device_class and device.device_class != "storage":
        raise ConsoleError(
            "only a stick that declares mass storage and nothing else can be registered; "
            f"this device declares {device.device_class[:80]!r}"
        )


def approve(
    files: dict[str, bytes],
    device: events_pb2.Device,
    *,
    label: str,
    owner: str,
    level: str,
    actor: str,
    seen_on: str,
    when: dt.datetime,
) -> dict[str, bytes]:
    """A copy of ``files`` with the stick added to the register as ``active``."""
    for what, value in (("label number", label), ("owner", owner)):
        if not _LABEL.fullmatch(value):
            raise ConsoleError(
                f"the {what} may hold 1-40 letters, digits, '.', '/', '_' or '-' (no spaces)"
            )
    if level not in LEVELS:
        raise ConsoleError(f"the level must be one of {', '.join(LEVELS)}")
    _check_stick(device)
    usb_id = f"{device.vendor_id.lower()}:{device.product_id.lower()}"
    # Every value written unquoted (actor, host, time, date) is from a fixed alphabet;
    # everything else goes through _toml_string.
    lines = [
        "",
        f"# approved in the console by {actor} at {when.isoformat(timespec='seconds')} "
        f"(seen on {seen_on})",
        "[[stick]]",
        f"label = {_toml_string(label)}",
        f"owner = {_toml_string(owner)}",
        f"level = {_toml_string(level)}",
        f"serial = {_toml_string(device.serial)}",
        f"id = {_toml_string(usb_id)}",
    ]
    if device.descriptor_hash:
        lines.append(f"hash = {_toml_string(device.descriptor_hash)}")
    lines += ['status = "active"', f"registered = {when.date().isoformat()}", ""]
    registry = files.get(REGISTRY_FILE, b"").decode("utf-8").rstrip("\n")
    out = dict(files)
    out[REGISTRY_FILE] = (registry + "\n" + "\n".join(lines)).lstrip("\n").encode("utf-8")
    return out


def decide_now(files: dict[str, bytes], d: DeviceSeen) -> str:
    """What the policy in force decides for this device (allow, block, reject), by the
    agent's own device policy; "" when that cannot be said."""
    # Imported here: the agent's device code is only needed on this page.
    from baomi.devices.model import UsbDevice, UsbInterface  # noqa: PLC0415
    from baomi.devices.policy import DevicePolicy  # noqa: PLC0415
    from baomi.devices.registry import StickRegistry  # noqa: PLC0415
    from baomi.devices.rules import RuleSet  # noqa: PLC0415
    from baomi.errors import ConfigError  # noqa: PLC0415

    try:
        interfaces = tuple(
            UsbInterface(*(int(part, 16) for part in text.split(":")))
            for text in d.interfaces.split()
        )
        policy = DevicePolicy(
            RuleSet.parse(files.get(RULES_FILE, b"").decode("utf-8"), path=RULES_FILE),
            StickRegistry.parse(files.get(REGISTRY_FILE, b"").decode("utf-8"), path=REGISTRY_FILE),
        )
    except (ValueError, TypeError, ConfigError):
        return ""
    device = UsbDevice(
        sys_path="",
        port="",
        vendor_id=d.vendor_id.lower(),
        product_id=d.product_id.lower(),
        serial=d.serial,
        name=d.name,
        interfaces=interfaces,
        descriptor_hash=d.descriptor_hash,
    )
    return str(policy.evaluate(device).target)
