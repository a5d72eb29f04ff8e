"""The store interface every backend implements, and the rows it speaks in.

Events are append-only: a backend offers no way to change or remove one, and its schema
refuses UPDATE and DELETE on the events table with a trigger.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class EventRow:
    """One stored event: indexed columns beside the canonical bytes they came from."""

    host_id: str
    seq: int
    kind: str
    severity: int
    event_time_us: int  # agent's clock, microseconds since the epoch
    received_us: int  # collector's clock when the batch arrived
    hash: bytes  # SHA-256 of body
    body: bytes  # canonical serialization of the Event (baomi.chain)


@dataclass(frozen=True, slots=True)
class TokenRow:
    """A single-use enrolment token, stored only as its SHA-256."""

    token_hash: bytes
    host_id: str
    expires_us: int
    used_us: int | None


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    """A signed statement of every chain head at one moment."""

    id: int
    created_us: int
    body: bytes  # canonical JSON, see collector.checkpoint
    signature: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class EventQuery:
    """Filters for reading the record; ``None`` means any."""

    host_id: str | None = None
    kind: str | None = None
    since_us: int | None = None
    until_us: int | None = None
    limit: int | None = 1000


class Store(Protocol):
    """What the collector needs from a database."""

    def close(self) -> None:
        """Release connections."""

    # -- events --------------------------------------------------------------------
    def append(self, rows: Sequence[EventRow]) -> int:
        """Insert ``rows`` in one transaction, skipping (host_id, seq) already stored.

        Returns how many were new. Durable when it returns.
        """

    def heads(self) -> dict[str, tuple[int, bytes]]:
        """Every host's highest stored seq and that event's hash."""

    def head(self, host_id: str) -> tuple[int, bytes] | None:
        """One host's highest stored seq and its hash, or None before its first event."""

    def hashes(self, host_id: str, first_seq: int, last_seq: int) -> dict[int, bytes]:
        """Stored hashes of ``host_id`` for seqs in [first_seq, last_seq]."""

    def chain(self, host_id: str) -> Iterator[EventRow]:
        """Every stored event of ``host_id`` in seq order (streamed, not loaded at once)."""

    def query(self, q: EventQuery) -> list[EventRow]:
        """Events matching ``q``, newest first."""

    def count(self) -> int:
        """How many events are stored."""

    # -- hosts and enrolment ---------------------------------------------------------
    def add_token(self, token: TokenRow) -> None:
        """Store a new enrolment token."""

    def use_token(self, token_hash: bytes, now_us: int) -> str | None:
        """Mark the token used and return its host, or None if unknown, used or expired."""

    def add_host(self, host_id: str, cert_sha256: bytes, now_us: int) -> None:
        """Record (or re-record) an enrolled host and its certificate fingerprint."""

    def host_certificates(self, host_id: str) -> list[bytes]:
        """SHA-256 fingerprints of every certificate issued to ``host_id``, oldest first."""

    def hosts(self) -> list[str]:
        """Every host that has enrolled or has stored events."""

    # -- checkpoints ---------------------------------------------------------------
    def add_checkpoint(self, created_us: int, body: bytes, signature: bytes) -> int:
        """Store a signed checkpoint and return its id."""

    def checkpoints(self) -> list[CheckpointRow]:
        """Every checkpoint, oldest first."""
