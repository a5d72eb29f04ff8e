"""The register of 涉密专用U盘: the only USB sticks a secret host may accept.

``policies/usb-registry.toml`` lists each registered stick as a ``[[stick]]`` table::

    [[stick]]
    label = "BM-U-2026-001"        # the number on the stick's label (unique)
    owner = "wang"                 # the person it is issued to
    level = "机密"                 # highest level it may carry: 绝密, 机密 or 秘密
    serial = "4C530001230815117313"
    id = "0781:5581"               # vendor:product
    hash = "..."                   # optional: USBGuard descriptor hash, pins the model
    status = "active"              # active, lost or retired
    registered = 2026-01-15

A stick is accepted only while ``active`` and only if its serial and id (and hash, when
given) are exactly the registered ones. Serial numbers of cheap sticks are not unique
and can be forged by anyone who reprograms the controller, so the hash is recommended:
it binds the stick to its exact descriptors. A lost or retired stick is refused with its
label in the reason, so the finding names the stick.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Final, Literal

from baomi.devices.model import UsbDevice
from baomi.devices.rules import device_bytes
from baomi.errors import ConfigError

Status = Literal["active", "lost", "retired"]
STATUSES: Final[tuple[Status, ...]] = ("active", "lost", "retired")
LEVELS: Final[Mapping[str, int]] = {"绝密": 3, "机密": 2, "秘密": 1}

MAX_REGISTRY_BYTES = 4 << 20  # bytes of usb-registry.toml; thousands of sticks fit in 1 MiB
_USB_ID_RE = re.compile(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{4}")
_LABEL_RE = re.compile(r"[\w.:/#-]{1,64}")
_KEYS: Final = frozenset(
    {"label", "owner", "level", "serial", "id", "hash", "status", "registered"}
)  # fmt: skip
_REQUIRED: Final = ("label", "owner", "level", "serial", "id", "status", "registered")
_HEADER_RE = re.compile(r"^\s*\[\[\s*stick\s*\]\]\s*(#.*)?$")
_TOML_LINE_RE = re.compile(r"at line (\d+)")


class RegistryError(ConfigError):
    """The stick register cannot be read or holds a bad entry."""

    def __init__(self, file: str, line: int, reason: str) -> None:
        super().__init__(f"{file}:{line}: {reason}")
        self.file = file
        self.line = line
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RegisteredStick:
    """One registered stick (one ``[[stick]]`` table)."""

    label: str
    owner: str
    level: int  # 3 绝密, 2 机密, 1 秘密: the highest level it may carry
    serial: str
    vendor_id: str  # lowercase hex
    product_id: str
    descriptor_hash: str  # "" when not pinned
    status: Status
    registered: date
    line: int  # of the [[stick]] header, for messages

    @property
    def usb_id(self) -> str:
        """``vvvv:pppp``."""
        return f"{self.vendor_id}:{self.product_id}"

    def identifies(self, device: UsbDevice) -> bool:
        """Whether ``device`` claims this stick's id and serial (the hash is not checked)."""
        return device.usb_id.lower() == self.usb_id and device_bytes(device.serial) == device_bytes(
            self.serial
        )


@dataclass(frozen=True, slots=True)
class StickVerdict:
    """Whether a device is an active registered stick, which entry it claims, and why."""

    allowed: bool
    stick: RegisteredStick | None
    reason: str


@dataclass(frozen=True, slots=True)
class StickRegistry:
    """The register; :meth:`check` decides about one device."""

    path: str
    sticks: tuple[RegisteredStick, ...] = ()

    @classmethod
    def load(cls, path: Path) -> StickRegistry:
        """The register in ``path``; a missing file is an empty register (no stick allowed)."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls(str(path))
        except OSError as e:
            raise RegistryError(str(path), 0, f"cannot read: {e.strerror}") from e
        if len(raw) > MAX_REGISTRY_BYTES:
            raise RegistryError(
                str(path), 0, f"{len(raw)} bytes; at most {MAX_REGISTRY_BYTES}: split or prune it"
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise RegistryError(str(path), line, "not UTF-8 text; save it as UTF-8") from e
        return cls.parse(text, path=str(path))

    @classmethod
    def parse(cls, text: str, *, path: str = "<registry>") -> StickRegistry:
        """The register in ``text``; the first bad entry raises :class:`RegistryError`."""
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            m = _TOML_LINE_RE.search(str(e))
            raise RegistryError(path, int(m.group(1)) if m else 0, f"not valid TOML: {e}") from e
        unknown = sorted(set(document) - {"stick"})
        if unknown:
            raise RegistryError(
                path, 1, f"unknown top-level key {unknown[0]!r}; entries are [[stick]] tables"
            )
        tables = document.get("stick", [])
        if not isinstance(tables, list):
            raise RegistryError(path, 1, "'stick' must be an array of tables: write [[stick]]")
        headers = [n for n, line in enumerate(text.splitlines(), 1) if _HEADER_RE.match(line)]
        lines = text.splitlines()
        sticks: list[RegisteredStick] = []
        for index, table in enumerate(tables):
            header = headers[index] if index < len(headers) else 0
            sticks.append(_stick(path, header, _entry_lines(lines, header), table))
        _check_unique(path, sticks)
        return cls(path, tuple(sticks))

    def check(self, device: UsbDevice) -> StickVerdict:
        """Whether ``device`` is an active registered stick, and the entry it claims."""
        claimed = [s for s in self.sticks if s.identifies(device)]
        if not claimed:
            return StickVerdict(
                False, None, f"stick {device.usb_id} is not in the register {self.path}"
            )
        active = [s for s in claimed if s.status == "active"]
        for stick in active:
            if stick.descriptor_hash and stick.descriptor_hash != device.descriptor_hash:
                continue
            return StickVerdict(
                True,
                stick,
                f"registered stick {stick.label} ({_level_name(stick.level)}, {stick.owner})",
            )
        if active:
            stick = active[0]
            return StickVerdict(
                False,
                stick,
                f"claims to be registered stick {stick.label} but its descriptor hash "
                "differs from the registered one (a copy or a reprogrammed stick)",
            )
        stick = claimed[0]
        return StickVerdict(
            False,
            stick,
            f"registered stick {stick.label} ({stick.owner}) is {stick.status}: "
            "it may no longer be used",
        )


def _level_name(level: int) -> str:
    return next(name for name, value in LEVELS.items() if value == level)


def _entry_lines(lines: Sequence[str], header: int) -> dict[str, int]:
    """Line of each ``key =`` inside the entry starting at ``header`` (1-based)."""
    found: dict[str, int] = {}
    for number in range(header + 1, len(lines) + 1):
        line = lines[number - 1]
        if line.lstrip().startswith("["):
            break
        key = line.split("=", 1)[0].strip().strip('"')
        if "=" in line and key not in found:
            found[key] = number
    return found


def _stick(path: str, header: int, key_lines: Mapping[str, int], table: object) -> RegisteredStick:
    """One entry, checked; errors name the line of the offending key."""

    def fail(key: str | None, reason: str) -> RegistryError:
        return RegistryError(path, key_lines.get(key, header) if key else header, reason)

    if not isinstance(table, dict):
        raise fail(None, "each stick is a [[stick]] table")
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown key {unknown[0]!r}; known: {', '.join(sorted(_KEYS))}")
    for key in _REQUIRED:
        if key not in table:
            raise fail(None, f"stick has no {key!r}; every stick needs {', '.join(_REQUIRED)}")

    def text(key: str) -> str:
        value = table.get(key, "")
        if not isinstance(value, str):
            raise fail(key, f"{key} must be a quoted string")
        return value

    label, owner, serial = text("label"), text("owner").strip(), text("serial")
    if not _LABEL_RE.fullmatch(label):
        raise fail("label", f"label {label!r} must be 1 to 64 letters, digits or . : / # - _")
    if not owner:
        raise fail("owner", "owner is empty; name the person the stick is issued to")
    if not serial.strip():
        raise fail("serial", "serial is empty; a stick without a serial cannot be registered")
    level = text("level")
    if level not in LEVELS:
        raise fail("level", f"level {level!r} must be one of {', '.join(LEVELS)}")
    usb_id = text("id")
    if not _USB_ID_RE.fullmatch(usb_id):
        raise fail("id", f"id {usb_id!r} must be vendor:product, four hex digits each")
    status = text("status")
    if status not in STATUSES:
        raise fail("status", f"status {status!r} must be one of {', '.join(STATUSES)}")
    registered = table["registered"]
    if not isinstance(registered, date) or isinstance(registered, datetime):
        raise fail("registered", "registered must be a date written YYYY-MM-DD (no quotes)")
    vendor, product = usb_id.lower().split(":")
    return RegisteredStick(
        label=label,
        owner=owner,
        level=LEVELS[level],
        serial=serial,
        vendor_id=vendor,
        product_id=product,
        descriptor_hash=text("hash"),
        status=status,
        registered=registered,
        line=header,
    )


def _check_unique(path: str, sticks: Sequence[RegisteredStick]) -> None:
    labels: dict[str, RegisteredStick] = {}
    active: dict[tuple[str, bytes], RegisteredStick] = {}
    for stick in sticks:
        if stick.label in labels:
            raise RegistryError(
                path,
                stick.line,
                f"label {stick.label} is also used at line {labels[stick.label].line}; "
                "labels are unique",
            )
        labels[stick.label] = stick
        if stick.status != "active":
            continue
        key = (stick.usb_id, device_bytes(stick.serial))
        if key in active:
            raise RegistryError(
                path,
                stick.line,
                f"stick {stick.label} has the id and serial of active stick "
                f"{active[key].label} (line {active[key].line}); retire one of them",
            )
        active[key] = stick
