"""What the collector refuses in an event before it reaches the store.

The chain check (ingest.HostChain) says whether an event follows its host's chain;
this says whether its values can be stored and shown: a seq that fits the stores'
signed 64-bit columns, timestamps within ``google.protobuf.Timestamp``'s own range
(years 1 to 9999, so microseconds fit 64 bits too), and enum values the schema
defines (an unknown severity or decision would be stored, then break every listing).
Fields this collector does not know (a newer agent's) are kept as they are.
"""

from __future__ import annotations

from typing import Any

from baomi.v1 import events_pb2
from google.protobuf.message import Message

MAX_SEQ = 2**63 - 1  # INTEGER in SQLite, BIGINT in PostgreSQL
MIN_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
MAX_NANOS = 999_999_999
_TIMESTAMP = "google.protobuf.Timestamp"

_SEVERITIES = frozenset(events_pb2.Severity.values())

# Per message type, the fields worth a look: (name, enum numbers or None, a Timestamp,
# repeated), only for enums, Timestamps and messages that (transitively) hold one. An
# unset message field reads as its default, which is always in range: no HasField.
_Step = tuple[str, frozenset[int] | None, bool, bool]
_plans: dict[str, list[_Step]] = {}


def _plan(descriptor: Any) -> list[_Step]:  # Any: the python and the upb descriptor types
    plan = _plans.get(descriptor.full_name)
    if plan is None:
        _plans[descriptor.full_name] = []  # a message type holding itself ends here
        plan = []
        for f in descriptor.fields:
            if f.enum_type is not None:
                plan.append((f.name, frozenset(f.enum_type.values_by_number), False, f.is_repeated))
            elif f.message_type is not None:
                stamp = f.message_type.full_name == _TIMESTAMP
                if stamp or _plan(f.message_type):
                    plan.append((f.name, None, stamp, f.is_repeated))
        _plans[descriptor.full_name] = plan
    return plan


def _in_range(stamp: Any) -> bool:  # Any: a Timestamp
    seconds: int = stamp.seconds
    nanos: int = stamp.nanos
    return MIN_SECONDS <= seconds <= MAX_SECONDS and 0 <= nanos <= MAX_NANOS


def event_problem(event: Message, kind: str) -> str | None:
    """What in ``event`` (whose oneof ``kind`` is set) cannot be stored or shown, said
    with the field's path; None when every value is in range. The hot path of ingest:
    only the set kind is looked into."""
    ev: Any = event
    if ev.seq > MAX_SEQ:
        return f"seq must be at most {MAX_SEQ}"
    if not _in_range(ev.time):
        return "time is outside years 1 to 9999"
    if ev.severity not in _SEVERITIES:
        return f"severity = {ev.severity} is not a value this collector knows"
    return problem(getattr(ev, kind), kind)


def problem(message: Message, where: str = "") -> str | None:
    """The first value in ``message`` (and the messages in it) it may not hold, said
    with its field path; None when every value is in range."""
    for name, numbers, stamp, repeated in _plan(message.DESCRIPTOR):
        value = getattr(message, name)
        for item in value if repeated else (value,):
            if numbers is not None:
                if item in numbers:
                    continue
                wrong = f"{_path(where, name)} = {item} is not a value this collector knows"
            elif stamp:
                if _in_range(item):
                    continue
                wrong = f"{_path(where, name)} is outside years 1 to 9999"
            elif (wrong := problem(item, _path(where, name))) is None:  # type: ignore[assignment]
                continue
            return wrong
    return None


def _path(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name
