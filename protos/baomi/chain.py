"""The per-host hash chain shared by agent and collector.

An event's hash is SHA-256 over its deterministic protobuf serialization (prev_hash
included, so each hash commits to the whole history before it). The first event of a
host carries ``GENESIS``. Both sides must use exactly these functions: a record stored
today has to verify with the same rule years from now.
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
    """SHA-256 of an event already in canonical form (as the store keeps it)."""
    return hashlib.sha256(canonical).digest()
