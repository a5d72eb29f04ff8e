"""The per-host hash chain shared by agent and collector.

An event's hash is SHA-256 over the bytes of its ``Event`` message exactly as they
travel -- the payload of one ``events`` field (1) of an ``EventBatch`` -- and as they
are stored (prev_hash included, so each hash commits to the whole history before it).
No party re-encodes an event to hash it: the rule does not depend on how any protobuf
library orders or encodes fields, and an event carrying fields a reader does not know
hashes the same for it. The agent makes those bytes once, with the deterministic
serialization (``canonical_bytes``), and sends them as they are (``batch_of``); the
collector hashes and stores what it received (``batch_events``). The first event of a
host carries ``GENESIS``. ``protos/README.md`` states the rule for other implementations.
"""

from __future__ import annotations

import hashlib

from baomi.v1 import events_pb2

GENESIS = bytes(32)
HASH_BYTES = 32

#: The kinds of the ``Event.kind`` oneof, in field order.
KINDS: tuple[str, ...] = tuple(
    f.name for f in events_pb2.Event.DESCRIPTOR.oneofs_by_name["kind"].fields
)


def canonical_bytes(event: events_pb2.Event) -> bytes:
    """The serialization the chain hashes: deterministic, field-number order."""
    return event.SerializeToString(deterministic=True)


def event_hash(event: events_pb2.Event) -> bytes:
    """SHA-256 of the canonical serialization of ``event``."""
    return hashlib.sha256(canonical_bytes(event)).digest()


def bytes_hash(canonical: bytes) -> bytes:
    """SHA-256 of an event's bytes as sent and stored."""
    return hashlib.sha256(canonical).digest()


class BatchError(ValueError):
    """A serialized EventBatch that is not well-formed protobuf."""


_EVENTS_TAG = (1 << 3) | 2  # field 1, length-delimited


def _varint(raw: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(raw) or shift > 63:
            raise BatchError("a varint runs past the end of the batch or past 64 bits")
        byte = raw[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7


def batch_events(raw: bytes) -> list[bytes]:
    """The bytes of each event of a serialized EventBatch, in order, exactly as sent.

    The protobuf wire format read by hand because no library hands out a field's
    bytes: fields other than ``events`` (none exist today) are skipped by wire type.
    """
    events: list[bytes] = []
    at = 0
    while at < len(raw):
        key, at = _varint(raw, at)
        wire = key & 7
        if wire == 0:
            _, at = _varint(raw, at)
        elif wire == 1:
            at += 8
        elif wire == 5:
            at += 4
        elif wire == 2:
            size, at = _varint(raw, at)
            if at + size > len(raw):
                raise BatchError("a field runs past the end of the batch")
            if key == _EVENTS_TAG:
                events.append(raw[at : at + size])
            at += size
        else:
            raise BatchError(f"wire type {wire} is not used by this protocol")
        if at > len(raw):
            raise BatchError("a field runs past the end of the batch")
    return events


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def batch_of(bodies: list[bytes]) -> bytes:
    """A serialized EventBatch holding these events' bytes unchanged."""
    return b"".join(bytes([_EVENTS_TAG]) + _varint_bytes(len(b)) + b for b in bodies)
