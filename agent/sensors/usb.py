"""The USB sensor: every ``usb_device`` decided by the device policy as it arrives.

A pyudev monitor (subsystem ``usb``, device type ``usb_device``) is read in a thread of
its own, and every device already present is evaluated when the sensor starts. Each
device is read from sysfs and udev into a :class:`~baomi.devices.model.UsbDevice`,
decided by the device policy, and enforced the way USBGuard does it:

* ``block``: write ``0`` to ``authorized``; the kernel unbinds every interface driver,
  so a stick mounts nothing and a microphone records nothing;
* ``reject``: write ``1`` to ``remove``; the kernel forgets the device until it is
  plugged in again;
* ``allow``: leave ``authorized`` at ``1`` (write ``1`` when it reads ``0``, as it does
  when the bus defaults new devices to unauthorized).

Every arrival, removal and device present at start becomes a ``device`` event. A device
whose descriptors do not parse is suspicious whatever the rules say and is blocked.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
import select
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, Literal

from baomi.devices import classes as device_classes
from baomi.devices.model import MAX_DEVICE_STRING, UsbDevice, UsbInterface, bounded
from baomi.devices.policy import DeviceDecision, DevicePolicy
from baomi.devices.rules import device_bytes
from baomi.v1 import events_pb2

from agent.errors import AgentError
from agent.sensors.base import EventSink, Health

_logger = logging.getLogger(__name__)

DESCRIPTORS_MAX_BYTES = 18 + 8 * 65_535  # device descriptor + 8 configurations (USB_MAXCONFIG)
STRING_MAX_BYTES = 4 * MAX_DEVICE_STRING + 4  # read of a string attribute: UTF-8 is <= 4 B/char
ATTRIBUTE_MAX_BYTES = 64  # read of a short attribute (ids, authorized, connect_type)
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024  # netlink buffer: a hub of devices arriving at once
USB_STRING_MAX_CHARS = 126  # a USB string descriptor holds at most 126 UTF-16 code units
UDEV_CONTROL = Path("/run/udev/control")  # exists while systemd-udevd runs
RULE_MAX_CHARS = 2000  # of the deciding rule kept in an event (generated rules are longer)

Source = Literal["auto", "udev", "kernel"]

#: Classes whose blocking is a serious finding: recorders, phones, links, BadUSB.
SEVERE_CLASSES: Final = device_classes.RECORDING_OR_PHONE | {device_classes.BADUSB}

_DT_DEVICE, _DT_CONFIG, _DT_INTERFACE = 1, 2, 4
_DEVICE_LEN, _CONFIG_LEN, _INTERFACE_LEN = 18, 9, 9


@dataclass(frozen=True, kw_only=True)
class UsbConfig:
    """Where the device policy is and how the sensor listens."""

    policies: Path  # directory the device policy is loaded from (DevicePolicy.load)
    # Decide and record, but write nothing to sysfs. Weakens enforcement: logged each time.
    unsafe_report_only: bool = False
    # Which netlink messages to read: "udev" (after udev's rules ran; carries the MTP
    # hint), "kernel" (straight from the kernel), or "auto": udev while systemd-udevd
    # runs, else kernel, since without udevd the udev source never says anything.
    source: Source = "auto"
    receive_buffer_bytes: int = RECEIVE_BUFFER_BYTES


# --------------------------------------------------------------------------- descriptors


@dataclass(frozen=True, slots=True)
class Descriptors:
    """What the binary ``descriptors`` attribute says, and what is wrong with it."""

    device_class: int = 0
    vendor_id: str = ""
    product_id: str = ""
    interfaces: tuple[UsbInterface, ...] = ()
    parsed: int = 0  # bytes that formed whole, valid descriptors (USBGuard hashes these)
    problem: str = ""  # "" when every byte is a well-formed descriptor


class _MalformedError(Exception):
    """A descriptor that is not what the USB specification allows."""


def parse_descriptors(data: bytes) -> Descriptors:
    """Parse a device descriptor and its configurations, as sysfs ``descriptors`` holds
    them, without trusting any length: every malformation is reported in ``problem``.

    The kernel copies the 18-byte device descriptor, then each configuration's raw
    descriptors (``wTotalLength`` bytes, a configuration descriptor followed by
    interface, endpoint and class-specific descriptors). Interfaces are listed in order,
    alternate settings included, as USBGuard's ``with-interface`` sees them.
    """
    if len(data) < _DEVICE_LEN:
        return Descriptors(problem=f"descriptors are {len(data)} bytes, shorter than a device's")
    if data[0] != _DEVICE_LEN or data[1] != _DT_DEVICE:
        return Descriptors(
            problem=f"device descriptor has length {data[0]} and type {data[1]}, not 18 and 1"
        )
    vendor, product = struct.unpack_from("<HH", data, 8)
    interfaces: list[UsbInterface] = []
    parsed, configs = _DEVICE_LEN, 0
    problem = ""
    try:
        while parsed < len(data):
            parsed = _parse_configuration(data, parsed, configs, interfaces)
            configs += 1
    except _MalformedError as e:
        problem = str(e)
    else:
        if configs != data[17]:
            problem = f"{configs} configurations present, {data[17]} declared"
    return Descriptors(
        device_class=data[4],
        vendor_id=f"{vendor:04x}",
        product_id=f"{product:04x}",
        interfaces=tuple(interfaces),
        parsed=parsed,
        problem=problem,
    )


def _parse_configuration(
    data: bytes, offset: int, number: int, interfaces: list[UsbInterface]
) -> int:
    """Parse the configuration at ``offset`` into ``interfaces``; the offset after it."""
    if len(data) - offset < _CONFIG_LEN:
        raise _MalformedError(f"{len(data) - offset} stray bytes after configuration {number}")
    length, kind = data[offset], data[offset + 1]
    total = data[offset + 2] | data[offset + 3] << 8
    if kind != _DT_CONFIG or length < _CONFIG_LEN:
        raise _MalformedError(
            f"byte {offset}: expected a configuration, got type {kind} length {length}"
        )
    if total < length or offset + total > len(data):
        raise _MalformedError(
            f"configuration {number} claims {total} bytes, {len(data) - offset} left"
        )
    end, position = offset + total, offset + length
    while position < end:
        if end - position < 2:
            raise _MalformedError(
                f"byte {position}: a descriptor cut short in configuration {number}"
            )
        length, kind = data[position], data[position + 1]
        # A length below 2 would never advance: the classic descriptor-parser hang.
        if length < 2 or position + length > end:
            raise _MalformedError(f"byte {position}: descriptor length {length} does not fit")
        if kind in (_DT_DEVICE, _DT_CONFIG):
            raise _MalformedError(
                f"byte {position}: descriptor of type {kind} inside a configuration"
            )
        if kind == _DT_INTERFACE:
            if length < _INTERFACE_LEN:
                raise _MalformedError(f"byte {position}: interface descriptor of length {length}")
            interfaces.append(UsbInterface(*data[position + 5 : position + 8]))
        position += length
    return end


def _interfaces_property(text: str) -> tuple[UsbInterface, ...]:
    """``ID_USB_INTERFACES`` (``:080650:030101:``); entries that are not 6 hex digits
    are skipped."""
    found = []
    for item in text.split(":"):
        if len(item) == 6:
            try:
                found.append(UsbInterface(int(item[:2], 16), int(item[2:4], 16), int(item[4:], 16)))
            except ValueError:
                continue
    return tuple(found)


def usbguard_hash(device: UsbDevice, raw_descriptors: bytes) -> str:
    """USBGuard's device ``hash``: base64 SHA-256 of name, vendor id, product id and
    serial (their bytes, no separators), then the parsed descriptor bytes."""
    digest = hashlib.sha256()
    for text in (device.name, device.vendor_id, device.product_id, device.serial):
        digest.update(device_bytes(text))
    digest.update(raw_descriptors)
    return base64.b64encode(digest.digest()).decode("ascii")


def hash_string(text: str) -> str:
    """USBGuard's hash of a plain string (a root hub's ``parent-hash`` is that of the
    controller's sysfs path)."""
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode("ascii")


# --------------------------------------------------------------------------- sysfs


def _read(path: str, limit: int) -> bytes | None:
    """At most ``limit`` bytes of a sysfs file, None when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks, left = [], limit
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_text(path: str, limit: int = ATTRIBUTE_MAX_BYTES) -> str | None:
    raw = _read(path, limit)
    if raw is None:
        return None
    # Undecodable bytes survive as surrogates: the rules compare the bytes a device sent.
    # Trailing CR/LF go, as udev drops them (USBGuard hashes udev's value).
    return raw.decode("utf-8", "surrogateescape").rstrip("\r\n")


def _hex4(*candidates: str | None) -> str:
    """The first candidate that is four hex digits, lowercased; "" when none is."""
    for candidate in candidates:
        value = (candidate or "").strip().lower()
        if len(value) == 4 and all(c in "0123456789abcdef" for c in value):
            return value
    return ""


def _write(path: str, value: bytes) -> None:
    # O_WRONLY without O_CREAT: a missing attribute is an error, never a new file.
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value)
    finally:
        os.close(fd)


def _utf8(text: str, limit: int = MAX_DEVICE_STRING) -> str:
    """``text`` verbatim where it is valid UTF-8 (events must be), each undecodable byte
    as ``\\xNN``, at most ``limit`` characters. Not escaped otherwise: whoever displays
    it must escape it."""
    return bounded(device_bytes(text).decode("utf-8", "backslashreplace"), limit)


@dataclass(frozen=True, slots=True)
class Observed:
    """A device as read from udev and sysfs, with what makes it suspicious."""

    device: UsbDevice
    problem: str = ""  # non-empty: block whatever the rules say
    authorized: str = ""  # the ``authorized`` attribute as read ("" when unreadable)
    controller: bool = False  # a root hub (USBGuard's "controller")


def _interface_strings(sys_path: str, port: str) -> list[str]:
    """The ``interface`` strings of the device's interfaces (``1-1:1.0/interface``)."""
    try:
        names = [p.name for p in Path(sys_path).iterdir() if p.name.startswith(f"{port}:")]
    except OSError:
        return []
    strings = []
    for name in sorted(names)[:32]:  # 32 interfaces is USB's maximum per configuration
        text = _read_text(f"{sys_path}/{name}/interface", STRING_MAX_BYTES)
        if text:
            strings.append(text)
    return strings


def read_device(udev_device: Any) -> Observed:
    """Build a :class:`UsbDevice` from a pyudev ``usb_device``.

    Strings are read from sysfs byte for byte (udev's ``ID_*`` copies are sanitised) and
    bounded; interfaces come from the binary descriptors, with ``ID_USB_INTERFACES``
    added when udev saw one the descriptors lack.
    """
    sys_path = str(udev_device.sys_path)
    port = str(udev_device.sys_name)
    properties = {str(k): str(v) for k, v in udev_device.properties.items()}
    problems: list[str] = []

    raw = _read(f"{sys_path}/descriptors", DESCRIPTORS_MAX_BYTES + 1)
    if raw is None:
        parsed = Descriptors()
        problems.append("no descriptors attribute")
    elif len(raw) > DESCRIPTORS_MAX_BYTES:
        parsed = Descriptors()
        problems.append(f"descriptors longer than {DESCRIPTORS_MAX_BYTES} bytes")
    else:
        parsed = parse_descriptors(raw)
        if parsed.problem:
            problems.append(f"malformed descriptors: {parsed.problem}")

    def string(name: str, fallback: str = "") -> str:
        text = _read_text(f"{sys_path}/{name}", STRING_MAX_BYTES)
        if text is None:
            return fallback
        if len(text) > USB_STRING_MAX_CHARS:
            problems.append(f"{name} string of {len(text)}+ characters, more than USB allows")
        return bounded(text)

    vendor_id = _hex4(
        _read_text(f"{sys_path}/idVendor"), properties.get("ID_VENDOR_ID"), parsed.vendor_id
    )
    product_id = _hex4(
        _read_text(f"{sys_path}/idProduct"), properties.get("ID_MODEL_ID"), parsed.product_id
    )
    if not vendor_id or not product_id:
        problems.append("no vendor or product id")
    interfaces = list(parsed.interfaces)
    for interface in _interfaces_property(properties.get("ID_USB_INTERFACES", "")):
        if interface not in interfaces:
            interfaces.append(interface)
    if not interfaces:
        problems.append("no interfaces declared")
    device_class = parsed.device_class
    if raw is None:
        class_text = _read_text(f"{sys_path}/bDeviceClass") or ""
        device_class = int(class_text, 16) if _is_hex(class_text) else 0
    strings = _interface_strings(sys_path, port)
    device = UsbDevice(
        sys_path=sys_path,
        port=port,
        vendor_id=vendor_id or "0000",
        product_id=product_id or "0000",
        serial=string("serial", bounded(properties.get("ID_SERIAL_SHORT", ""))),
        name=string("product"),
        manufacturer=string("manufacturer"),
        interfaces=tuple(interfaces),
        device_class=device_class,
        connect_type=bounded(_read_text(f"{sys_path}/port/connect_type") or ""),
        mtp=properties.get("ID_MTP_DEVICE") == "1" or any(s.strip() == "MTP" for s in strings),
    )
    descriptor_hash = usbguard_hash(device, raw[: parsed.parsed]) if raw is not None else ""
    parent_hash = _parent_hash(udev_device)
    return Observed(
        device=replace(device, descriptor_hash=descriptor_hash, parent_hash=parent_hash),
        problem="; ".join(problems),
        authorized=_read_text(f"{sys_path}/authorized") or "",
        # USBGuard's test: a port named usbN whose first interface is a hub's (09:00:*).
        controller=port.startswith("usb")
        and [(i.cls, i.subclass) for i in interfaces[:1]] == [(9, 0)],
    )


def _is_hex(text: str) -> bool:
    return bool(text) and all(c in "0123456789abcdefABCDEF" for c in text.strip())


def _parent_hash(udev_device: Any) -> str:
    """USBGuard's ``parent-hash``: the parent hub's device hash, or for a root hub the
    hash of the controller's sysfs path."""
    try:
        parent = udev_device.parent
    except (OSError, ValueError):  # pyudev raises on odd sysfs trees
        parent = None
    if parent is None:
        return ""
    if parent.device_type != "usb_device":
        return hash_string(str(parent.sys_path))
    raw = _read(f"{parent.sys_path}/descriptors", DESCRIPTORS_MAX_BYTES)
    if raw is None:
        return ""
    parsed = parse_descriptors(raw)

    def text(name: str) -> str:
        return bounded(_read_text(f"{parent.sys_path}/{name}", STRING_MAX_BYTES) or "")

    hub = UsbDevice(
        sys_path=str(parent.sys_path),
        port=str(parent.sys_name),
        vendor_id=_hex4(_read_text(f"{parent.sys_path}/idVendor"), parsed.vendor_id) or "0000",
        product_id=_hex4(_read_text(f"{parent.sys_path}/idProduct"), parsed.product_id) or "0000",
        serial=text("serial"),
        name=text("product"),
    )
    return usbguard_hash(hub, raw[: parsed.parsed])


def list_devices() -> list[Observed]:
    """Every ``usb_device`` present now, read as the sensor reads it."""
    import pyudev  # noqa: PLC0415 (without libudev only the USB commands fail)

    context = pyudev.Context()
    return [read_device(d) for d in context.list_devices(subsystem="usb", DEVTYPE="usb_device")]


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class Outcome:
    """What was decided about one device and what enforcing it did."""

    observed: Observed
    decision: DeviceDecision
    note: str = ""  # enforcement result when it is not the plain decision


def decide(policy: DevicePolicy | None, observed: Observed) -> DeviceDecision:
    """The policy's decision, made stricter for a suspicious device.

    Without a policy every device is blocked: an empty policy is an error, never
    "allow all".
    """
    device = observed.device
    if policy is None:
        decision = DeviceDecision(
            "block", "baomi:no-policy", "no device policy loaded", device_classes.classify(device)
        )
    else:
        decision = policy.evaluate(device, mtp=device.mtp)
    if not observed.problem:
        return decision
    if decision.target == "allow":
        # Descriptors the kernel would not have produced: whatever the device claims to
        # be (even a registered stick), it is not what it claims.
        return replace(
            decision,
            target="block",
            rule="baomi:suspicious",
            reason=f"suspicious device: {observed.problem}",
        )
    # Blocked anyway; the suspicion is evidence for whoever reads the event.
    return replace(decision, reason=f"{decision.reason}; suspicious device: {observed.problem}")


def severity(decision: DeviceDecision, note: str = "") -> events_pb2.Severity:
    """INFO for an allowed device; HIGH for a blocked or rejected recorder, phone,
    network link or BadUSB device, and for a decision that could not be enforced;
    MEDIUM for any other block."""
    if note:
        return (
            events_pb2.SEVERITY_HIGH if decision.target != "allow" else events_pb2.SEVERITY_MEDIUM
        )
    if decision.target == "allow":
        return events_pb2.SEVERITY_INFO
    if not SEVERE_CLASSES.isdisjoint(decision.classes):
        return events_pb2.SEVERITY_HIGH
    return events_pb2.SEVERITY_MEDIUM


def device_event(action: str, outcome: Outcome) -> events_pb2.Event:
    """The ``device`` event of an outcome: the deciding rule, and the reason with any
    enforcement failure appended."""
    device, decision = outcome.observed.device, outcome.decision
    reason = f"{decision.reason}; {outcome.note}" if outcome.note else decision.reason
    return events_pb2.Event(
        severity=(
            events_pb2.SEVERITY_INFO if action == "remove" else severity(decision, outcome.note)
        ),
        device=events_pb2.Device(
            action=action,
            device_class=",".join(sorted(decision.classes)),
            vendor_id=device.vendor_id,
            product_id=device.product_id,
            serial=_utf8(device.serial),
            name=_utf8(device.name),
            descriptor_hash=device.descriptor_hash,
            port=_utf8(device.port),
            interfaces=" ".join(str(i) for i in device.interfaces),
            decision=(
                events_pb2.DECISION_ALLOW
                if decision.target == "allow"
                else events_pb2.DECISION_DENY
            ),
            rule=_utf8(decision.rule, RULE_MAX_CHARS),
            reason=_utf8(reason, RULE_MAX_CHARS),
        ),
    )


# --------------------------------------------------------------------------- the sensor


class UsbSensor:
    """Sensor ``usb``: decide and enforce every USB device, present and arriving."""

    name = "usb"

    def __init__(
        self,
        config: UsbConfig,
        sink: EventSink,
        *,
        policy_loader: Callable[[Path], DevicePolicy] = DevicePolicy.load,
        on_device_event: Callable[[], object] | None = None,
    ) -> None:
        self._config = config
        self._sink = sink
        self._policy_loader = policy_loader
        self.on_device_event = on_device_event
        self._policy: DevicePolicy | None = None
        self._policy_problem = ""
        # One device decided at a time: the monitor thread and a policy change both
        # enforce, and their writes to one device must not interleave.
        self._lock = threading.RLock()
        self._known: dict[str, Outcome] = {}  # sys_path -> last outcome, for removals
        self._monitor: Any = None
        self._thread: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None
        self._health = Health("disabled", "not started")

    # -- policy --------------------------------------------------------------------------
    def apply_policy(self, directory: Path) -> None:
        """Load the device policy in ``directory``, then decide every present device
        again under it; AgentError keeps the old policy."""
        policy = self._policy_loader(directory)
        with self._lock:
            self._policy = policy
            self._policy_problem = ""
            if self._thread is not None:
                self._sweep("present")
        _logger.info("device policy from %s in force", directory)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Load the policy, open the udev monitor and start the monitor thread."""
        try:
            self._policy = self._policy_loader(self._config.policies)
        except AgentError as e:
            self._policy_problem = f"no device policy ({e}): every USB device is blocked"
            _logger.error("%s", self._policy_problem)
        if self._config.unsafe_report_only:
            _logger.warning("usb: unsafe_report_only: devices are decided but never blocked")
        source = self._config.source
        if source == "auto":
            source = "udev" if UDEV_CONTROL.exists() else "kernel"
        try:
            # Imported here: without libudev this sensor is disabled, nothing else breaks.
            import pyudev  # noqa: PLC0415

            context = pyudev.Context()
            monitor = pyudev.Monitor.from_netlink(context, source=source)
            monitor.filter_by(subsystem="usb", device_type="usb_device")
            try:
                monitor.set_receive_buffer_size(self._config.receive_buffer_bytes)
            except OSError as e:  # needs CAP_NET_ADMIN; the default buffer still works
                _logger.warning("usb: cannot enlarge the udev receive buffer: %s", e)
            monitor.start()
        except (ImportError, OSError) as e:
            self._health = Health("disabled", f"udev is unavailable ({e}); USB is not controlled")
            _logger.error("usb sensor disabled: udev is unavailable (%s)", e)
            return
        self._monitor = monitor
        self._wake = os.pipe()
        self._health = Health("ok", f"listening to {source} events")
        self._thread = threading.Thread(target=self._run, name="usb-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the monitor thread and close the monitor and the wake-up pipe."""
        if self._thread is not None and self._wake is not None:
            os.write(self._wake[1], b"x")
            self._thread.join()
        self._thread = None
        if self._wake is not None:
            for fd in self._wake:
                os.close(fd)
            self._wake = None
        self._monitor = None  # pyudev closes the netlink socket when the monitor goes
        if self._health.state == "ok":
            self._health = Health("disabled", "stopped")

    def health(self) -> Health:
        """ok while listening; degraded without a policy (everything blocked)."""
        if self._health.state == "ok" and self._policy is None:
            return Health("degraded", self._policy_problem or "no device policy loaded")
        return self._health

    # -- the monitor thread --------------------------------------------------------------
    def _run(self) -> None:
        # pyudev's MonitorObserver would die on a netlink overflow (ENOBUFS); this loop
        # answers it by evaluating every present device again, so none goes unseen.
        monitor, wake = self._monitor, self._wake
        if monitor is None or wake is None:
            return
        poller = select.poll()
        poller.register(monitor.fileno(), select.POLLIN)
        poller.register(wake[0], select.POLLIN)
        try:
            with self._lock:
                self._sweep("present", at_start=True)
            while True:
                for fd, _ in poller.poll():
                    if fd == wake[0]:
                        return
                    try:
                        while (udev_device := monitor.poll(timeout=0)) is not None:
                            self._handle(udev_device)
                    except OSError as e:
                        if e.errno != errno.ENOBUFS:
                            raise
                        self._overflowed()
        except Exception as e:  # anything left is the edge itself failing: say so
            self._health = Health("failed", f"udev monitor failed: {e}; USB is not controlled")
            _logger.exception("usb monitor failed; USB devices are not controlled")

    def _overflowed(self) -> None:
        _logger.warning("usb: udev events were lost (receive buffer full); re-evaluating")
        self._sink(
            events_pb2.Event(
                severity=events_pb2.SEVERITY_HIGH,
                tamper=events_pb2.Tamper(
                    kind="usb_overflow",
                    detail="udev events were lost; every present USB device was decided again",
                ),
            )
        )
        with self._lock:
            self._sweep("present")

    def _handle(self, udev_device: Any) -> None:
        """One udev event; an error blocks the device rather than killing the thread."""
        action = str(udev_device.action or "")
        try:
            with self._lock:
                if action == "add":
                    self._evaluate(udev_device, "add")
                elif action == "remove":
                    self._removed(udev_device)
                elif action == "change":
                    self._changed(udev_device)
                else:
                    return
        except Exception as e:  # the thread must survive any one device
            _logger.exception("usb: %s of %s failed", action, udev_device.sys_path)
            if action == "add":
                self._fail_closed(str(udev_device.sys_path), action, e)
            return
        self._notify()

    def _sweep(self, action: str, *, at_start: bool = False) -> None:
        """Decide every present device (at start, after a policy change or an overflow)."""
        import pyudev  # noqa: PLC0415

        context = pyudev.Context()
        for udev_device in context.list_devices(subsystem="usb", DEVTYPE="usb_device"):
            try:
                self._evaluate(udev_device, action, at_start=at_start)
            except Exception as e:  # one bad device must not stop the sweep
                _logger.exception("usb: evaluating %s failed", udev_device.sys_path)
                self._fail_closed(str(udev_device.sys_path), action, e)
        self._notify()

    def _evaluate(self, udev_device: Any, action: str, *, at_start: bool = False) -> None:
        observed = read_device(udev_device)
        decision = decide(self._policy, observed)
        if at_start and observed.controller and decision.target != "allow":
            # As USBGuard's PresentControllerPolicy=keep: deauthorizing a root hub at
            # start would take the keyboard with it before anyone could fix the policy.
            outcome = Outcome(observed, decision, "present controller kept authorized")
        else:
            outcome = Outcome(observed, decision, self._enforce(observed, decision))
        self._known[observed.device.sys_path] = outcome
        self._sink(device_event(action, outcome))

    def _changed(self, udev_device: Any) -> None:
        """Re-enforce a known device whose ``authorized`` no longer says what was decided
        (someone wrote it behind the agent's back)."""
        sys_path = str(udev_device.sys_path)
        known = self._known.get(sys_path)
        if known is None:
            return
        authorized = _read_text(f"{sys_path}/authorized") or ""
        wanted = "1" if known.decision.target == "allow" else "0"
        if known.decision.target == "reject" or authorized == wanted or known.note:
            return
        self._evaluate(udev_device, "change")

    def _removed(self, udev_device: Any) -> None:
        sys_path = str(udev_device.sys_path)
        outcome = self._known.pop(sys_path, None)
        if outcome is None:  # removed before we saw it: what the event itself says
            properties = udev_device.properties
            observed = Observed(
                UsbDevice(
                    sys_path=sys_path,
                    port=str(udev_device.sys_name),
                    vendor_id=_hex4(properties.get("ID_VENDOR_ID")) or "0000",
                    product_id=_hex4(properties.get("ID_MODEL_ID")) or "0000",
                    serial=bounded(str(properties.get("ID_SERIAL_SHORT", ""))),
                    interfaces=_interfaces_property(str(properties.get("ID_USB_INTERFACES", ""))),
                )
            )
            outcome = Outcome(observed, decide(self._policy, observed))
        self._sink(device_event("remove", replace(outcome, note="")))

    def _enforce(self, observed: Observed, decision: DeviceDecision) -> str:
        """Apply ``decision`` in sysfs; "" when done, else what went wrong."""
        sys_path = observed.device.sys_path
        target = decision.target
        if self._config.unsafe_report_only:
            if target == "allow":
                return ""
            _logger.warning("usb: unsafe_report_only: %s left authorized", sys_path)
            return "not enforced: unsafe_report_only"
        writes: list[tuple[str, bytes]]
        if target == "allow":
            writes = [] if observed.authorized == "1" else [("authorized", b"1")]
        elif target == "block":
            writes = [("authorized", b"0")]
        else:
            # USBGuard writes only remove. Deauthorizing first means the device is
            # unusable even where remove is missing (old kernels) or refused.
            writes = [("authorized", b"0"), ("remove", b"1")]
        failures = []
        for attribute, value in writes:
            try:
                _write(f"{sys_path}/{attribute}", value)
            except OSError as e:
                name = errno.errorcode.get(e.errno or 0, str(e.errno))
                _logger.error("usb: cannot write %s to %s/%s: %s", value, sys_path, attribute, e)
                failures.append(f"writing {value.decode()} to {attribute} failed: {name}")
        return f"not enforced: {'; '.join(failures)}" if failures else ""

    def _fail_closed(self, sys_path: str, action: str, error: BaseException) -> None:
        """A device that could not be read or decided is blocked, and the event says so."""
        note = "; not enforced: unsafe_report_only"
        if not self._config.unsafe_report_only:
            try:
                _write(f"{sys_path}/authorized", b"0")
                note = ""
            except OSError as e:
                note = f"; blocking failed: {errno.errorcode.get(e.errno or 0, e.errno)}"
        port = sys_path.rsplit("/", 1)[-1]
        self._sink(
            events_pb2.Event(
                severity=events_pb2.SEVERITY_HIGH,
                device=events_pb2.Device(
                    action=action,
                    port=_utf8(port),
                    decision=events_pb2.DECISION_DENY,
                    reason=f"evaluation failed ({type(error).__name__}){note}",
                ),
            )
        )

    def _notify(self) -> None:
        if self.on_device_event is None:
            return
        try:
            self.on_device_event()
        except Exception:  # another sensor's failure must not stop this one
            _logger.exception("usb: on_device_event callback failed")
