"""Shielding-cabinet (手机屏蔽柜) adapters: Modbus/TCP, HTTP JSON, signed manual attestation.

No public protocol exists for these cabinets, so Baomi defines one register map that an
integrator maps the cabinet's I/O module onto (and that ``baomi-cabinet-sim`` speaks).
Holding registers, function 0x03, starting at address 0:

====  ===================  ==============================================
 reg   name                 value
====  ===================  ==============================================
  0    magic                0xBA01 (anything else: not a Baomi map)
  1    doors                number of doors (1-16)
  2    doors_open           bitmap, bit n set: door n+1 is open
  3    power                1 mains present, 0 unpowered
  4    shielding_ok         1 the cabinet's self-test passes, 0 it fails
  5    slots_total          phone slots
  6    slots_occupied       slots with a phone in them (its sensors)
====  ===================  ==============================================

The HTTP adapter GETs a JSON object with the same names: ``doors`` 1-16, ``doors_open``
a list of door numbers each 1..doors and none twice, ``powered`` and ``shielding_ok``
true or false, ``slots_total`` 0-1000 and ``slots_occupied`` 0..slots_total. Whatever
goes wrong (timeout, refused, exception response, short or malformed frame, bad JSON, a
field missing, of another type or out of range -- door 0 or -1 too) yields state
``unknown`` with the reason, never an exception and never a pass.

A manual attestation (``baomi-agent meeting attest`` makes one) is a JSON file holding
the same fields plus ``format`` (``baomi-cabinet-attestation/1``), ``room``,
``meeting``, ``inspector``, ``attested_at`` (ISO 8601 with a time zone) and
``signature``: base64 of an ECDSA P-256 SHA-256 signature, by the inspectors' office
key, over the JSON of every other field with sorted keys, no spaces, UTF-8. It counts
only for its room and meeting, within ``max_age_minutes`` (default 60) after
``attested_at``.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from baomi.meeting.rooms import CabinetConfig
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

_logger = logging.getLogger(__name__)

MAGIC = 0xBA01
REGISTERS = 7  # read in one request
MAX_DOORS = 16  # one bitmap register
MAX_SLOTS = 1000  # phone slots a cabinet may report; more is a broken answer
#: The JSON state's fields (HTTP answer and attestation), each required.
STATE_FIELDS = ("doors", "doors_open", "powered", "shielding_ok", "slots_total", "slots_occupied")
ATTESTATION_FORMAT = "baomi-cabinet-attestation/1"
ATTESTATION_KEYS = frozenset({"format", "room", "meeting", "inspector", "attested_at", "signature"})
ATTESTATION_SKEW_S = 300  # an attestation dated this far ahead of the clock is still taken
HTTP_MAX_BYTES = 65_536  # of a cabinet's JSON answer


@dataclass(frozen=True, slots=True)
class CabinetState:
    """What the cabinet reports, or ``known=False`` with the reason."""

    adapter: str
    known: bool
    reason: str = ""
    doors: int = 0
    doors_open: tuple[int, ...] = ()
    powered: bool = False
    shielding_ok: bool = False
    slots_total: int = 0
    slots_occupied: int = 0
    source: str = field(default="")  # address or file, for the evidence

    def describe(self) -> str:
        """One line of evidence."""
        if not self.known:
            return f"{self.adapter} {self.source}: state unknown: {self.reason}"
        doors = (
            "doors open " + ",".join(map(str, self.doors_open))
            if self.doors_open
            else (f"{self.doors} doors closed")
        )
        return (
            f"{self.adapter} {self.source}: {doors}, "
            f"{'powered' if self.powered else 'UNPOWERED'}, "
            f"shielding {'ok' if self.shielding_ok else 'FAILED'}, "
            f"{self.slots_occupied}/{self.slots_total} slots occupied"
        )


def _unknown(config: CabinetConfig, source: str, reason: str) -> CabinetState:
    _logger.warning("cabinet %s %s: %s", config.adapter, source, reason)
    return CabinetState(config.adapter, False, reason, source=source)


def decode_registers(values: list[int]) -> dict[str, Any]:
    """The register map's fields; ValueError when the values break it."""
    if len(values) < REGISTERS:
        raise ValueError(f"short answer: {len(values)} of {REGISTERS} registers")
    magic, doors, bitmap, power, shielding, total, occupied = values[:REGISTERS]
    if magic != MAGIC:
        raise ValueError(f"register 0 is {magic:#06x}, not the Baomi magic {MAGIC:#06x}")
    if not 1 <= doors <= MAX_DOORS or bitmap >> doors:
        raise ValueError(f"doors {doors} with bitmap {bitmap:#06x} is not a cabinet")
    if power > 1 or shielding > 1 or occupied > total or total > MAX_SLOTS:
        raise ValueError("power/shielding not 0/1 or more slots occupied than exist")
    return {
        "doors": doors,
        "doors_open": tuple(n + 1 for n in range(doors) if bitmap >> n & 1),
        "powered": power == 1,
        "shielding_ok": shielding == 1,
        "slots_total": total,
        "slots_occupied": occupied,
    }


def read_modbus(config: CabinetConfig) -> CabinetState:
    """Read the register map over Modbus/TCP."""
    from pymodbus.client import ModbusTcpClient  # noqa: PLC0415 (only this adapter needs it)
    from pymodbus.exceptions import ModbusException  # noqa: PLC0415

    source = f"{config.host}:{config.port} unit {config.unit}"
    client = ModbusTcpClient(config.host, port=config.port, timeout=config.timeout, retries=0)
    try:
        if not client.connect():  # type: ignore[no-untyped-call]
            return _unknown(config, source, f"no connection (refused, or {config.timeout:g} s)")
        answer = client.read_holding_registers(0, count=REGISTERS, device_id=config.unit)
        if answer.isError():
            return _unknown(config, source, f"exception response: {answer}")
        fields = decode_registers(list(answer.registers))
    except (ModbusException, OSError, ValueError, IndexError, TypeError) as e:
        # pymodbus raises ModbusIOException on timeouts and short frames; ValueError is
        # ours (registers that break the map). Either way the state is not known.
        return _unknown(config, source, f"{type(e).__name__}: {e}")
    finally:
        client.close()  # type: ignore[no-untyped-call]
    return CabinetState("modbus", True, source=source, **fields)


def read_http(config: CabinetConfig) -> CabinetState:
    """GET the cabinet's JSON state."""
    try:
        body = _fetch(config.url, config.timeout)
        return CabinetState("http", True, source=config.url, **_fields(json.loads(body)))
    except (OSError, ValueError, TypeError, urllib.error.URLError) as e:
        return _unknown(config, config.url, f"{type(e).__name__}: {e}")


def _fetch(url: str, timeout: float) -> bytes:
    """The body at ``url``, bounded; ValueError when longer."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (scheme checked in rooms.py)
        body: bytes = response.read(HTTP_MAX_BYTES + 1)
    if len(body) > HTTP_MAX_BYTES:
        raise ValueError(f"answer longer than {HTTP_MAX_BYTES} bytes")
    return body


def _integer(data: dict[str, Any], key: str, low: int, high: int) -> int:
    value = data.get(key)
    # bool is an int in Python: true must not read as door 1 or one slot.
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{key} must be a whole number {low}-{high}, not {value!r}")
    return value


def _flag(data: dict[str, Any], key: str) -> bool:
    value = data.get(key)
    if not isinstance(value, bool):
        raise TypeError(f"{key} must be true or false, not {value!r}")
    return value


def _fields(data: Any) -> dict[str, Any]:
    """Check a JSON state object (HTTP or attestation): every field present, of its type
    and in range; ValueError or TypeError naming the first that is not. A door number
    outside 1..doors (0, -1, 17) or given twice is an error, never "no door open"."""
    if not isinstance(data, dict):
        raise TypeError("not a JSON object")
    missing = [k for k in STATE_FIELDS if k not in data]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} (required: {', '.join(STATE_FIELDS)})")
    doors = _integer(data, "doors", 1, MAX_DOORS)
    doors_open = data["doors_open"]
    if not isinstance(doors_open, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in doors_open
    ):
        raise TypeError("doors_open must be a list of door numbers")
    wrong = [d for d in doors_open if not 1 <= d <= doors]
    if wrong:
        raise ValueError(f"doors_open names door {wrong[0]}; doors are numbered 1-{doors}")
    if len(set(doors_open)) != len(doors_open):
        raise ValueError("doors_open names a door twice")
    total = _integer(data, "slots_total", 0, MAX_SLOTS)
    occupied = _integer(data, "slots_occupied", 0, total)
    return {
        "doors": doors,
        "doors_open": tuple(sorted(doors_open)),
        "powered": _flag(data, "powered"),
        "shielding_ok": _flag(data, "shielding_ok"),
        "slots_total": total,
        "slots_occupied": occupied,
    }


def attestation_bytes(data: dict[str, Any]) -> bytes:
    """What a manual attestation's signature covers: its JSON without ``signature``."""
    body = {k: v for k, v in data.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def make_attestation(
    key_pem: bytes,
    *,
    room: str,
    meeting: str,
    inspector: str,
    attested_at: datetime,
    state: dict[str, Any],
) -> dict[str, Any]:
    """A signed attestation of ``state`` (the fields of ``STATE_FIELDS``), bound to the
    room, the meeting and the time the inspector looked."""
    if attested_at.tzinfo is None:
        raise ValueError("the attestation time needs a time zone")
    if not inspector:
        raise ValueError("the attestation must name the inspector")
    key = load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError("the inspectors' key is not an EC private key")
    checked = _fields(state)
    data: dict[str, Any] = {
        "format": ATTESTATION_FORMAT,
        "room": room,
        "meeting": meeting,
        "inspector": inspector,
        "attested_at": attested_at.isoformat(timespec="seconds"),
        **checked,
        "doors_open": list(checked["doors_open"]),
    }
    signature = key.sign(attestation_bytes(data), ec.ECDSA(hashes.SHA256()))
    data["signature"] = base64.b64encode(signature).decode()
    return data


def read_manual(
    config: CabinetConfig, *, room: str, meeting: str, now: datetime | None = None
) -> CabinetState:
    """A manual attestation: the cabinet state as the inspector saw it, ECDSA-signed and
    bound to this room, this meeting and a recent time."""
    path = config.attestation or Path()
    source = str(path)
    try:
        data = _verified(config, path)
        _bound(data, config, room=room, meeting=meeting, now=now or datetime.now(UTC))
        seen = f"{source} (by {data['inspector']} at {data['attested_at']})"
        return CabinetState("manual", True, source=seen, **_fields(data))
    except InvalidSignature:
        return _unknown(config, source, "the attestation's signature does not verify")
    except (OSError, ValueError, TypeError) as e:
        return _unknown(config, source, f"{type(e).__name__}: {e}")


def _bound(
    data: dict[str, Any], config: CabinetConfig, *, room: str, meeting: str, now: datetime
) -> None:
    """ValueError unless the attestation is for ``room`` and ``meeting`` and was made
    within ``config.max_age`` before ``now``: a signed attestation of another room, an
    earlier meeting or last year clears nothing."""
    unknown = set(data) - set(STATE_FIELDS) - ATTESTATION_KEYS
    if unknown:
        raise ValueError(f"unknown field {sorted(unknown)[0]!r} in the attestation")
    if data.get("format") != ATTESTATION_FORMAT:
        raise ValueError(f"format is {data.get('format')!r}, not {ATTESTATION_FORMAT!r}")
    if data.get("room") != room:
        raise ValueError(f"the attestation is for room {data.get('room')!r}, not {room!r}")
    if not isinstance(data.get("inspector"), str) or not data["inspector"]:
        raise ValueError("the attestation names no inspector")
    if not meeting:
        raise ValueError("a manual attestation is bound to a meeting; give --meeting")
    if data.get("meeting") != meeting:
        raise ValueError(f"the attestation is for meeting {data.get('meeting')!r}, not {meeting!r}")
    try:
        when = datetime.fromisoformat(str(data.get("attested_at")))
    except ValueError as e:
        raise ValueError("attested_at must be an ISO 8601 date-time with a time zone") from e
    if when.tzinfo is None:
        raise ValueError("attested_at must carry a time zone (+08:00)")
    age = (now - when).total_seconds()
    if age < -ATTESTATION_SKEW_S:
        raise ValueError(f"attested_at {when.isoformat()} is in the future")
    if age > config.max_age:
        raise ValueError(
            f"the attestation is stale: made {age / 60:.0f} min ago at {when.isoformat()}, "
            f"at most {config.max_age / 60:.0f} min are accepted; attest again"
        )


def _verified(config: CabinetConfig, path: Path) -> dict[str, Any]:
    """The attestation's JSON once its signature verifies with the configured key."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise TypeError("not a JSON object")
    if config.key is None:
        raise ValueError("no key to verify the attestation with")
    key = load_pem_public_key(config.key.read_bytes())
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise TypeError("the attestation key is not an EC key")
    key.verify(
        base64.b64decode(str(data.get("signature", ""))),
        attestation_bytes(data),
        ec.ECDSA(hashes.SHA256()),
    )
    return data


def read_cabinet(
    config: CabinetConfig, *, room: str = "", meeting: str = "", now: datetime | None = None
) -> CabinetState:
    """The cabinet's state through the configured adapter; a manual attestation must be
    for ``room`` and ``meeting`` and recent at ``now`` (default: the clock)."""
    if config.adapter == "modbus":
        return read_modbus(config)
    if config.adapter == "http":
        return read_http(config)
    return read_manual(config, room=room, meeting=meeting, now=now)
