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

The HTTP adapter GETs a JSON object with the same names (``doors_open`` a list of door
numbers). Whatever goes wrong (timeout, refused, exception response, short or malformed
frame, bad JSON) yields state ``unknown`` with the reason, never an exception and never
a pass.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from agent.meeting.rooms import CabinetConfig

_logger = logging.getLogger(__name__)

MAGIC = 0xBA01
REGISTERS = 7  # read in one request
MAX_DOORS = 16  # one bitmap register
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
    if power > 1 or shielding > 1 or occupied > total:
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


def _fields(data: Any) -> dict[str, Any]:
    """Check a JSON state object (HTTP or attestation) against the register map's rules."""
    if not isinstance(data, dict):
        raise TypeError("not a JSON object")
    doors_open = data.get("doors_open")
    if not isinstance(doors_open, list) or not all(isinstance(d, int) for d in doors_open):
        raise TypeError("doors_open must be a list of door numbers")
    values = [data.get(k) for k in ("doors", "powered", "shielding_ok", "slots_total")]
    values.append(data.get("slots_occupied"))
    bitmap = sum(1 << (d - 1) for d in doors_open if d >= 1)
    registers = [
        MAGIC,
        values[0],
        bitmap,
        *(int(v) if isinstance(v, bool) else v for v in values[1:]),
    ]
    if not all(isinstance(v, int) for v in registers):
        raise TypeError("doors, powered, shielding_ok, slots_total, slots_occupied are required")
    return decode_registers(registers)


def attestation_bytes(data: dict[str, Any]) -> bytes:
    """What a manual attestation's signature covers: its JSON without ``signature``."""
    body = {k: v for k, v in data.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def read_manual(config: CabinetConfig) -> CabinetState:
    """A manual attestation: the cabinet state as the inspector saw it, ECDSA-signed."""
    path = config.attestation or Path()
    source = str(path)
    try:
        return CabinetState("manual", True, source=source, **_fields(_verified(config, path)))
    except InvalidSignature:
        return _unknown(config, source, "the attestation's signature does not verify")
    except (OSError, ValueError, TypeError) as e:
        return _unknown(config, source, f"{type(e).__name__}: {e}")


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


def read_cabinet(config: CabinetConfig) -> CabinetState:
    """The cabinet's state through the configured adapter."""
    if config.adapter == "modbus":
        return read_modbus(config)
    if config.adapter == "http":
        return read_http(config)
    return read_manual(config)
