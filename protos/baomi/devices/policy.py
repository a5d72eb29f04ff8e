"""The USB decision of a secret host: explicit USBGuard rules first, then Baomi's defaults.

``DevicePolicy.load(policies_dir)`` reads two optional files:

``devices.rules``        rules in USBGuard's language (an imported ``rules.conf`` is
                         honoured as it is); the first rule that decides wins
``usb-registry.toml``    the register of 涉密专用U盘 (:mod:`baomi.devices.registry`)

A device no explicit rule decides meets the defaults, in this order, each named in the
decision's ``rule`` as ``baomi:NAME``:

1. ``baomi:no-interfaces`` block: the device declares no interface, so its descriptors
   were not read and nothing about it is known (checked before the explicit rules too,
   since USBGuard's set operators treat an empty interface list as matching).
2. ``baomi:badusb`` reject: HID together with storage or a network function. Reject
   (detach) rather than block: the device lies about what it is, and keeping it
   attached only gives it another chance; the event keeps its identity for the report.
3. ``baomi:wireless-input`` block: a wireless keyboard/mouse receiver
   (涉密计算机不得使用无线键盘、无线鼠标).
4. ``baomi:registered-stick`` allow: an active registered stick whose serial, id and
   (when registered) hash match and which declares storage and nothing else.
5. ``baomi:storage`` block: every other storage device, with the register's reason
   (unregistered, lost, retired, hash differs).
6. ``baomi:recording-or-phone`` block: audio, video, camera, phone, MTP, ADB,
   tethering, Bluetooth, wireless microphone.
7. ``baomi:input`` allow: keyboards, mice and other devices whose every interface is
   HID, so that no one is locked out of the host. A keyboard with an extra
   vendor-specific interface falls to 9; allow it by a pinned rule in devices.rules.
8. ``baomi:hub`` allow: devices whose every interface is a hub (the devices behind them
   are decided one by one).
9. ``baomi:other`` block: anything else.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from baomi.devices.classes import (
    BADUSB,
    RECORDING_OR_PHONE,
    STORAGE,
    WIRELESS_HID,
    classify,
)
from baomi.devices.model import UsbDevice
from baomi.devices.registry import StickRegistry
from baomi.devices.rules import (
    Decision,
    DeviceDecision,
    RuleError,
    RuleSet,
    device_bytes,
    quote,
    rule_for_device,
)

_logger = logging.getLogger(__name__)

DEVICES_RULES: Final = "devices.rules"
USB_REGISTRY: Final = "usb-registry.toml"
MAX_RULES_BYTES = 16 << 20  # bytes of devices.rules; a generated policy of 1000 devices is ~1 MiB
_HEX4_RE = re.compile(r"[0-9a-fA-F]{4}")
HID_INTERFACE: Final = 0x03
HUB_INTERFACE: Final = 0x09

__all__ = ["DeviceDecision", "DevicePolicy", "generate_rules"]


@dataclass(frozen=True, slots=True)
class DevicePolicy:
    """Explicit rules plus the stick register; :meth:`evaluate` decides one device."""

    rules: RuleSet
    registry: StickRegistry

    @classmethod
    def load(cls, policies_dir: Path) -> DevicePolicy:
        """Read ``devices.rules`` and ``usb-registry.toml`` from ``policies_dir``.

        Either may be absent (no explicit rules; no registered stick). A file that is
        present but wrong raises :class:`~agent.errors.ConfigError` naming file and line.
        """
        rules_path = policies_dir / DEVICES_RULES
        try:
            raw = rules_path.read_bytes()
        except FileNotFoundError:
            _logger.info("%s not found: Baomi's default device rules only", rules_path)
            rules = RuleSet(str(rules_path), ())
        except OSError as e:
            raise RuleError(str(rules_path), 0, f"cannot read: {e.strerror}") from e
        else:
            if len(raw) > MAX_RULES_BYTES:
                raise RuleError(str(rules_path), 0, f"{len(raw)} bytes; at most {MAX_RULES_BYTES}")
            # Rules are byte strings in USBGuard; surrogateescape keeps every byte.
            rules = RuleSet.parse(raw.decode("utf-8", "surrogateescape"), path=str(rules_path))
        return cls(rules, StickRegistry.load(policies_dir / USB_REGISTRY))

    def evaluate(self, device: UsbDevice, *, mtp: bool = False) -> DeviceDecision:
        """The decision for ``device`` with the rule or default that made it and why.

        ``mtp`` is the udev hint that the device is an MTP device (``ID_MTP_DEVICE``).
        """
        classes = classify(device, mtp=mtp)
        target, rule, reason = self._decide(device, classes)
        return DeviceDecision(target, rule, reason, classes)

    def _decide(  # noqa: PLR0911 (one return per default, in the documented order)
        self, device: UsbDevice, classes: frozenset[str]
    ) -> tuple[Decision, str, str]:
        if not device.interfaces:
            return (
                "block",
                "baomi:no-interfaces",
                "the device declares no interface (descriptors not read): nothing is known "
                "about it",
            )
        found = self.rules.first_match(device)
        if found is not None:
            return found.target, str(found.entry.rule), self.rules.describe(found)
        if BADUSB in classes:
            return (
                "reject",
                "baomi:badusb",
                f"HID together with storage or a network function (BadUSB): {_interfaces(device)}",
            )
        if WIRELESS_HID in classes:
            return (
                "block",
                "baomi:wireless-input",
                "wireless keyboard/mouse receiver: wireless input devices may not be used "
                "on a secret computer; use a wired keyboard and mouse",
            )
        if STORAGE in classes:
            verdict = self.registry.check(device)
            if verdict.allowed and classes == {STORAGE}:
                return "allow", "baomi:registered-stick", verdict.reason
            if verdict.allowed:
                extra = ", ".join(sorted(classes - {STORAGE}))
                return (
                    "block",
                    "baomi:storage",
                    f"{verdict.reason} declares more than storage ({extra})",
                )
            return (
                "block",
                "baomi:storage",
                f"{verdict.reason}; only registered sticks (涉密专用U盘) may be used",
            )
        recording = classes & RECORDING_OR_PHONE
        if recording:
            return (
                "block",
                "baomi:recording-or-phone",
                f"{', '.join(sorted(recording))}: recording devices, phones and network "
                "links may not touch a secret computer",
            )
        # By interface, not by class: an interface no class names (a vendor-specific
        # one, say) must not ride along with a keyboard or a hub.
        if all(i.cls == HID_INTERFACE for i in device.interfaces):
            return "allow", "baomi:input", "keyboard, mouse or other input device"
        if all(i.cls == HUB_INTERFACE for i in device.interfaces):
            return "allow", "baomi:hub", "USB hub"
        return (
            "block",
            "baomi:other",
            f"no rule allows a device with interfaces {_interfaces(device)}",
        )


def _interfaces(device: UsbDevice) -> str:
    return " ".join(str(i) for i in device.interfaces) or "(none)"


def generate_rules(devices: Iterable[UsbDevice]) -> str:
    """USBGuard ``allow`` rules pinning the given devices, as ``usbguard generate-policy``.

    Each rule names id, serial, name, hash, parent-hash, via-port, the interfaces and the
    connect type, with every device string escaped, so the text re-parses to rules that
    match exactly these devices. A device that cannot be pinned (an id that is not hex,
    or neither interfaces nor hash) is written as a comment instead: review the output
    before installing it as ``devices.rules``.
    """
    lines = ["# Generated by Baomi from the devices present; review before use."]
    for device in devices:
        hex_id = _HEX4_RE.fullmatch(device.vendor_id) and _HEX4_RE.fullmatch(device.product_id)
        if not hex_id or not (device.interfaces or device.descriptor_hash):
            what = quote(device_bytes(f"{device.vendor_id}:{device.product_id}"))
            port = quote(device_bytes(device.port))
            lines.append(f"# not pinned: device {what} at {port} has no hex id or nothing to pin")
            continue
        lines.append(str(rule_for_device(device)))
    return "\n".join(lines) + "\n"
