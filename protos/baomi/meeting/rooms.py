"""Meeting rooms (``policies/rooms.toml``) and meetings (``policies/meetings.toml``).

A room lists what is approved in it: the wired PA devices (USB ``vid:pid`` and serial),
the software allowed to hold capture devices, the shielding-cabinet adapter, the jammer's
approval record, the thresholds calibrated on site and the baseline sweep. A meeting
names its room, level, start, attendees (login names of ``subjects.toml``), approved
recordings and the documents issued. See the shipped files for the layout.

Every error names the file, the line and the reason: these files are edited by hand by
the secrecy office, and "invalid config" alone sends nobody to the right place.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from baomi.errors import ConfigError
from baomi.tomllines import TomlLines, error_line

ADAPTERS = ("modbus", "http", "manual")
LEVELS: Mapping[str, int] = {"绝密": 3, "机密": 2, "秘密": 1}
DEFAULT_TIMEOUT = 2.0  # seconds a cabinet adapter may take before the item is unknown
DEFAULT_MARGIN_DB = 10.0  # dB above baseline that counts as a carrier / a working jammer
DEFAULT_RSSI_DBM = -70.0  # BLE advertisers weaker than this are outside the room
DEFAULT_ATTESTATION_AGE_S = 3600.0  # a manual cabinet attestation counts this long
MAX_ATTESTATION_AGE_MIN = 24 * 60  # longest max_age_minutes a room may set
#: When a pre-meeting check may clear a meeting: from this long before its start ...
DEFAULT_CHECK_BEFORE = timedelta(hours=2)
#: ... to this long after it (0: a check after the start clears nothing).
DEFAULT_CHECK_AFTER = timedelta(0)
MAX_CHECK_WINDOW_MIN = 24 * 60  # longest check_before_minutes / check_after_minutes
#: Items that need hardware most rooms lack (BT adapter plus reference beacon); a room
#: makes them mandatory by listing them in ``mandatory_extra``.
OPTIONAL_BY_DEFAULT = ("C8", "C9")
MEETING_KEYS = frozenset(
    {"room", "level", "start", "attendees", "recordings", "materials"}
    | {"check_before_minutes", "check_after_minutes"}
)
_USB_ID_RE = re.compile(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{4}")
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class RoomsError(ConfigError):
    """A rooms or meetings file that cannot be used: file, line and reason."""

    def __init__(self, file: str | Path, line: int, reason: str) -> None:
        self.file, self.line, self.reason = str(file), line, reason
        super().__init__(f"{file}:{line}: {reason}")


@dataclass(frozen=True, slots=True)
class PaDevice:
    """An approved wired-PA device: a USB one by id (and serial), or a sound card not on
    USB by its ALSA card id."""

    usb_id: str  # vvvv:pppp, lowercase; "" for an ALSA card
    serial: str  # "" matches any serial (a device without one)
    name: str = ""
    alsa: str = ""  # ALSA card id ("PCH") of an approved capture card not on USB


@dataclass(frozen=True, slots=True)
class CabinetConfig:
    """How to reach the shielding cabinet (手机屏蔽柜)."""

    adapter: str  # modbus, http or manual
    host: str = ""
    port: int = 0
    unit: int = 1
    url: str = ""
    attestation: Path | None = None  # manual: the signed attestation file
    key: Path | None = None  # manual: PEM public key of the inspectors' office
    timeout: float = DEFAULT_TIMEOUT
    max_age: float = DEFAULT_ATTESTATION_AGE_S  # manual: seconds an attestation counts


@dataclass(frozen=True, slots=True)
class JammerApproval:
    """The jammer's approval record (型号核准 and radio licence)."""

    type_approval: str
    licence: str
    expires: date


@dataclass(frozen=True, slots=True)
class Room:
    """One classified meeting room."""

    name: str
    pa: tuple[PaDevice, ...]
    allowed_software: tuple[str, ...]
    cabinet: CabinetConfig | None
    jammer: JammerApproval | None
    margin_db: float
    rssi_dbm: float
    baseline: Path | None  # rtl_power CSV taken with the jammer off and the room empty
    jammer_bands: tuple[tuple[float, float], ...]  # MHz the jammer must raise
    capture_devices: tuple[str, ...]  # globs; empty: the process sensor's defaults
    mandatory: frozenset[str]
    line: int


@dataclass(frozen=True, slots=True)
class Meeting:
    """One classified meeting (涉密会议)."""

    id: str
    room: str
    level: int  # 3 绝密, 2 机密, 1 秘密
    start: datetime | None
    attendees: tuple[str, ...]
    recordings: tuple[str, ...]  # approved recorder programs or USB ids
    materials: tuple[str, ...]  # document numbers issued
    line: int
    check_before: timedelta = DEFAULT_CHECK_BEFORE  # a check clears it from start - this
    check_after: timedelta = DEFAULT_CHECK_AFTER  # to start + this


def _read_toml(path: Path) -> tuple[dict[str, Any], TomlLines]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RoomsError(path, 0, f"cannot read: {e}") from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RoomsError(path, error_line(e), str(e)) from e
    return data, TomlLines(text)


def _strings(value: Any, fail: Any, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise fail(key, f"{key} must be a list of strings")
    return tuple(value)


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` with an IP address or a host name; ValueError saying what is wrong."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"address {text!r} is not HOST:PORT")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is outside 1-65535")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", host):
            raise ValueError(f"host {host!r} is neither an IP address nor a host name") from None
    return host, port


def load_rooms(path: Path) -> dict[str, Room]:
    """Read and check a rooms file; RoomsError (file, line, reason) when wrong."""
    from baomi.meeting.sdr import SweepError, parse_sweep  # noqa: PLC0415 (sdr imports us)

    data, lines = _read_toml(path)
    tables = data.get("rooms")
    if not isinstance(tables, dict) or not tables:
        raise RoomsError(path, 1, "no [rooms.NAME] table: an empty rooms file is an error")
    rooms: dict[str, Room] = {}
    for name, entry in tables.items():
        header = lines.table("rooms", name)

        def fail(key: str | None, reason: str, *, _h: int = header, _n: str = name) -> RoomsError:
            return RoomsError(path, lines.key(_h, key) if key else _h, f"room {_n}: {reason}")

        if not isinstance(entry, dict):
            raise fail(None, "must be a table")
        room = _room(path, name, entry, header=header, fail=fail, lines=lines)
        if room.baseline is not None:
            try:
                parse_sweep(room.baseline)
            except SweepError as e:
                raise RoomsError(e.file, e.line, f"room {name}: baseline: {e.reason}") from e
        rooms[name] = room
    return rooms


def _room(
    path: Path, name: str, entry: dict[str, Any], *, header: int, fail: Any, lines: TomlLines
) -> Room:
    known = {
        "pa", "allowed_software", "cabinet", "jammer", "margin_db", "rssi_dbm", "baseline",
        "jammer_bands", "capture_devices", "mandatory_extra",
    }  # fmt: skip
    for key in entry:
        if key not in known:
            raise fail(key, f"unknown key {key!r} (known: {', '.join(sorted(known))})")
    pa = []
    for item in entry.get("pa", []):
        if isinstance(item, dict) and "alsa" in item and "id" not in item:
            card = item["alsa"]
            if not isinstance(card, str) or not _NAME_RE.fullmatch(card):
                raise fail("alsa", f"PA sound card {card!r} is not an ALSA card id (PCH, ...)")
            pa.append(PaDevice("", "", str(item.get("name", "")), alsa=card))
            continue
        usb_id = str(item.get("id", "")) if isinstance(item, dict) else ""
        if not _USB_ID_RE.fullmatch(usb_id):
            raise fail(
                "id",
                f"PA device id {usb_id!r} is not vvvv:pppp (four hex digits each); "
                "a sound card not on USB is named by alsa = CARD_ID instead",
            )
        pa.append(PaDevice(usb_id.lower(), str(item.get("serial", "")), str(item.get("name", ""))))
    cabinet = None
    if "cabinet" in entry:
        cabinet = _cabinet(path, entry["cabinet"], lines.table("rooms", name, "cabinet"), lines)
    jammer = None
    if "jammer" in entry:
        j = entry["jammer"]
        jheader = lines.table("rooms", name, "jammer")
        if not isinstance(j, dict) or not isinstance(j.get("expires"), date):
            raise RoomsError(
                path, lines.key(jheader, "expires"), f"room {name}: jammer.expires must be a date"
            )
        jammer = JammerApproval(
            str(j.get("type_approval", "")), str(j.get("licence", "")), j["expires"]
        )
    bands = []
    for band in entry.get("jammer_bands", []):
        if (
            not isinstance(band, list)
            or len(band) != 2
            or not all(isinstance(v, int | float) for v in band)
            or band[0] >= band[1]
        ):
            raise fail("jammer_bands", f"jammer band {band!r} is not [low_MHz, high_MHz]")
        bands.append((float(band[0]), float(band[1])))
    numbers = {}
    for key, default in (("margin_db", DEFAULT_MARGIN_DB), ("rssi_dbm", DEFAULT_RSSI_DBM)):
        value = entry.get(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise fail(key, f"{key} must be a number")
        numbers[key] = float(value)
    if numbers["margin_db"] <= 0:
        raise fail("margin_db", "margin_db must be positive")
    baseline = None
    if "baseline" in entry:
        if not isinstance(entry["baseline"], str):
            raise fail("baseline", "baseline must be a file path")
        baseline = (path.parent / entry["baseline"]).resolve()
        if not baseline.is_file():
            raise fail("baseline", f"baseline file {baseline} does not exist")
    extra = _strings(entry.get("mandatory_extra"), fail, "mandatory_extra")
    mandatory = frozenset(f"C{n}" for n in range(1, 13)) - set(OPTIONAL_BY_DEFAULT) | set(extra)
    return Room(
        name=name,
        pa=tuple(pa),
        allowed_software=_strings(entry.get("allowed_software"), fail, "allowed_software"),
        cabinet=cabinet,
        jammer=jammer,
        margin_db=numbers["margin_db"],
        rssi_dbm=numbers["rssi_dbm"],
        baseline=baseline,
        jammer_bands=tuple(bands),
        capture_devices=_strings(entry.get("capture_devices"), fail, "capture_devices"),
        mandatory=mandatory,
        line=header,
    )


def _cabinet(path: Path, entry: Any, header: int, lines: TomlLines) -> CabinetConfig:
    def fail(key: str, reason: str) -> RoomsError:
        return RoomsError(path, lines.key(header, key), f"cabinet: {reason}")

    if not isinstance(entry, dict):
        raise fail("adapter", "must be a table")
    adapter = entry.get("adapter")
    if adapter not in ADAPTERS:
        raise fail("adapter", f"unknown adapter {adapter!r} (known: {', '.join(ADAPTERS)})")
    timeout = entry.get("timeout", DEFAULT_TIMEOUT)
    if not isinstance(timeout, int | float) or not 0 < timeout <= 60:
        raise fail("timeout", "timeout must be 0-60 seconds")
    if adapter == "modbus":
        try:
            host, port = parse_address(str(entry.get("address", "")))
        except ValueError as e:
            raise fail("address", f"bad address: {e}") from e
        unit = entry.get("unit", 1)
        if not isinstance(unit, int) or not 0 <= unit <= 247:
            raise fail("unit", "unit must be a Modbus device id 0-247")
        return CabinetConfig("modbus", host=host, port=port, unit=unit, timeout=float(timeout))
    if adapter == "http":
        url = str(entry.get("url", ""))
        try:
            parts = urlsplit(url)
            good = parts.scheme in ("http", "https") and bool(parts.hostname)
            good = good and (parts.port is None or parts.port > 0)
        except ValueError:  # an unbalanced [ or ], an IPv6 address or port that is not one
            good = False
        if not good:
            raise fail("url", f"bad address: {url!r} is not an http(s) URL")
        return CabinetConfig("http", url=url, timeout=float(timeout))
    attestation = entry.get("attestation")
    key = entry.get("key")
    if not isinstance(attestation, str):
        raise fail("attestation", "a manual cabinet needs attestation = FILE")
    if not isinstance(key, str):
        raise fail("key", "a manual cabinet needs key = PEM public key that signs attestations")
    max_age = entry.get("max_age_minutes", DEFAULT_ATTESTATION_AGE_S / 60)
    if (
        not isinstance(max_age, int | float)
        or isinstance(max_age, bool)
        or not 0 < max_age <= MAX_ATTESTATION_AGE_MIN
    ):
        raise fail(
            "max_age_minutes",
            f"max_age_minutes must be 1-{MAX_ATTESTATION_AGE_MIN}: how long after the "
            "inspector looked an attestation counts",
        )
    return CabinetConfig(
        "manual",
        attestation=(path.parent / attestation).resolve(),
        key=(path.parent / key).resolve(),
        timeout=float(timeout),
        max_age=float(max_age) * 60,
    )


def load_meetings(path: Path) -> dict[str, Meeting]:
    """Read and check a meetings file; RoomsError (file, line, reason) when wrong."""
    data, lines = _read_toml(path)
    tables = data.get("meetings")
    if not isinstance(tables, dict) or not tables:
        raise RoomsError(path, 1, "no [meetings.ID] table")
    meetings = {}
    for mid, entry in tables.items():
        header = lines.table("meetings", mid)

        def fail(key: str | None, reason: str, *, _h: int = header, _m: str = mid) -> RoomsError:
            return RoomsError(path, lines.key(_h, key) if key else _h, f"meeting {_m}: {reason}")

        if not isinstance(entry, dict) or not _NAME_RE.fullmatch(mid):
            raise fail(None, "must be a table named with letters, digits, '.', '_' or '-'")
        for key in entry:
            if key not in MEETING_KEYS:
                raise fail(key, f"unknown key {key!r} (known: {', '.join(sorted(MEETING_KEYS))})")
        level = LEVELS.get(str(entry.get("level", "")))
        if level is None:
            raise fail("level", f"level must be one of {', '.join(LEVELS)}")
        start = entry.get("start")
        if start is not None and (not isinstance(start, datetime) or start.tzinfo is None):
            raise fail(
                "start",
                "start must be a TOML date-time with its offset (2026-12-01T09:00:00+08:00)",
            )
        window = {}
        for key, default in (
            ("check_before_minutes", DEFAULT_CHECK_BEFORE),
            ("check_after_minutes", DEFAULT_CHECK_AFTER),
        ):
            minutes = entry.get(key, default.total_seconds() / 60)
            if (
                not isinstance(minutes, int | float)
                or isinstance(minutes, bool)
                or not 0 <= minutes <= MAX_CHECK_WINDOW_MIN
            ):
                raise fail(key, f"{key} must be 0-{MAX_CHECK_WINDOW_MIN} minutes")
            window[key] = timedelta(minutes=minutes)
        meetings[mid] = Meeting(
            id=mid,
            room=str(entry.get("room", "")),
            level=level,
            start=start,
            attendees=_strings(entry.get("attendees"), fail, "attendees"),
            recordings=_strings(entry.get("recordings"), fail, "recordings"),
            materials=_strings(entry.get("materials"), fail, "materials"),
            line=header,
            check_before=window["check_before_minutes"],
            check_after=window["check_after_minutes"],
        )
        if not meetings[mid].room:
            raise fail("room", "room is required")
    return meetings
