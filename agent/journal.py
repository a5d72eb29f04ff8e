"""The event journal: every event the agent records, kept before anything is answered.

The spool commits in batches (one fsync per 20 ms, ``recorder``), so an event only
queued in memory would die with a ``kill -9`` of the agent; for a file access the
opener already has its answer by then. ``Recorder.record()`` therefore first writes
the serialized event here, a ring in a shared memory map: the page cache outlives
the process, and nothing is synced on the answer's path. Each spool commit stores
how far into the ring it reaches (``Spool.append(..., journal=...)``, in the same
transaction), so at the next start exactly the events beyond that mark are appended
to the spool (``recover``), none twice. A power loss takes the page cache with it:
what it can lose is bounded by the batch the recorder had not committed yet (the
README says so).

Layout (little-endian)::

    header (4096 bytes): b"BAOMIEJ1", ring_bytes, epoch (8 random bytes)
    ring: records at offset HEADER_BYTES + (position % ring_bytes), 16-byte aligned,
          each u32 length, u32 crc32(body), u64 position, then the body;
          length SKIP: the rest of the ring up to its end is unused (a record never wraps)

A record is valid only at the position its header names and with its checksum, so
neither a record torn by the kill nor one left from an earlier lap is read back.
The epoch ties the ring to one spool: a mark from another ring (a re-enrolled host,
a replaced file) recovers nothing and starts the ring afresh.
"""

from __future__ import annotations

import mmap
import os
import secrets
import struct
import threading
import time
import zlib
from pathlib import Path

MAGIC = b"BAOMIEJ1"
HEADER_BYTES = 4096
RING_BYTES = 16 * 1024 * 1024  # ~40,000 events ahead of the spool before record() waits
RELEASE_BYTES = 1024 * 1024  # drained records whose pages leave the resident set at once
IDLE_RELEASE_BYTES = 64 * 1024  # ... or fewer, once the spool has taken every record
SKIP = 0xFFFFFFFF
ALIGN = 16
_HEADER = struct.Struct("<8sQ8s")  # magic, ring_bytes, epoch
_RECORD = struct.Struct("<IIQ")  # length, crc32, position


class JournalError(Exception):
    """The journal cannot take an event, or its file is not a journal."""


def _padded(length: int) -> int:
    return (_RECORD.size + length + ALIGN - 1) // ALIGN * ALIGN


class EventJournal:
    """The ring, mapped. ``append`` from any thread; ``drained`` from the recorder."""

    def __init__(self, path: Path, ring_bytes: int = RING_BYTES) -> None:
        """Open ``path``, creating it (0600, sparse) when missing. Refuses a file that is
        not a journal: move it aside (what it held is then not recovered)."""
        if ring_bytes % mmap.PAGESIZE or ring_bytes <= 0:
            raise ValueError(f"ring_bytes must be a positive multiple of {mmap.PAGESIZE}")
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            if os.fstat(fd).st_size == 0:
                self._initialise(fd, ring_bytes)
            self._map = mmap.mmap(fd, 0)
        finally:
            os.close(fd)  # the mapping keeps the file
        magic, ring, self.epoch = _HEADER.unpack_from(self._map, 0)
        if magic != MAGIC or ring % mmap.PAGESIZE or HEADER_BYTES + ring != len(self._map):
            self._map.close()
            raise JournalError(
                f"{path} is not an event journal of this agent (or is damaged); move it "
                "aside to let the agent start a new one (events it held are then lost)"
            )
        self.ring_bytes = ring
        self._head = 0  # position of the next record
        self._drained = 0  # records before this position are in the spool
        self._released = 0  # pages before this position left the resident set
        self._space = threading.Condition()

    @staticmethod
    def _initialise(fd: int, ring_bytes: int) -> None:
        os.ftruncate(fd, 0)  # zeroes whatever an earlier ring left
        os.ftruncate(fd, HEADER_BYTES + ring_bytes)
        os.pwrite(fd, _HEADER.pack(MAGIC, ring_bytes, secrets.token_bytes(8)), 0)

    def recover(self, mark: tuple[bytes, int] | None) -> tuple[list[bytes], int]:
        """The bodies recorded after ``mark`` (the spool's (epoch, position)), and the
        position after them, where appending continues. A mark of another ring (or
        none) recovers nothing: the ring starts afresh, under a new epoch."""
        if mark is None or mark[0] != self.epoch:
            with self._space:
                self._reset()
                return [], 0
        bodies: list[bytes] = []
        position = mark[1]
        while (found := self._read(position)) is not None:
            body, position = found
            if body is not None:
                bodies.append(body)
        with self._space:
            self._head = self._drained = self._released = position
        return bodies, position

    def _reset(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            self._map.close()
            self._initialise(fd, self.ring_bytes)
            self._map = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        _, _, self.epoch = _HEADER.unpack_from(self._map, 0)
        self._head = self._drained = self._released = 0

    def _read(self, position: int) -> tuple[bytes | None, int] | None:
        """The record at ``position`` (None for a skip) and the next position; None when
        no valid record is there (the end of what was written)."""
        at = HEADER_BYTES + position % self.ring_bytes
        length, crc, named = _RECORD.unpack_from(self._map, at)
        if named != position:
            return None
        if length == SKIP:
            return None, position + self.ring_bytes - position % self.ring_bytes
        if length == 0 or _padded(length) > self.ring_bytes - position % self.ring_bytes:
            return None
        body = self._map[at + _RECORD.size : at + _RECORD.size + length]
        if zlib.crc32(body) != crc:
            return None
        return body, position + _padded(length)

    def append(self, body: bytes, timeout: float = 1.0) -> int:
        """Write ``body``; the position after it. Waits up to ``timeout`` for the spool
        to take earlier events when the ring is full, then raises JournalError."""
        need = _padded(len(body))
        if not body or need > self.ring_bytes // 4:
            raise JournalError(f"an event of {len(body)} bytes does not fit the journal")
        deadline = time.monotonic() + timeout
        with self._space:
            while True:
                tail_room = self.ring_bytes - self._head % self.ring_bytes
                skip = tail_room if need > tail_room else 0
                if self._head + skip + need - self._drained <= self.ring_bytes:
                    break
                if not self._space.wait(deadline - time.monotonic()):
                    raise JournalError(
                        f"the event journal is full: {self._head - self._drained} bytes "
                        "are not in the spool yet"
                    )
            if skip:
                at = HEADER_BYTES + self._head % self.ring_bytes
                _RECORD.pack_into(self._map, at, SKIP, 0, self._head)
                self._head += skip
            at = HEADER_BYTES + self._head % self.ring_bytes
            self._map[at + _RECORD.size : at + _RECORD.size + len(body)] = body
            _RECORD.pack_into(self._map, at, len(body), zlib.crc32(body), self._head)
            self._head += need
            return self._head

    def drained(self, position: int) -> None:
        """Records before ``position`` are in the spool: their room may be reused."""
        with self._space:
            if position > self._drained:
                self._drained = position
                self._space.notify_all()
            unreleased = self._drained - self._released
            # An idle agent keeps none of the pages of its last burst (one label
            # inventory is ~300 KB); while events flow, pages go a MB at a time.
            if unreleased >= RELEASE_BYTES or (
                self._drained == self._head and unreleased >= IDLE_RELEASE_BYTES
            ):
                self._release()

    def _release(self) -> None:
        """Take the pages of drained records out of the agent's resident set (they stay
        in the page cache and the file): the ring costs memory for its backlog only."""
        start = self._released // mmap.PAGESIZE * mmap.PAGESIZE
        end = self._drained // mmap.PAGESIZE * mmap.PAGESIZE
        while start < end:
            at = start % self.ring_bytes
            length = min(end - start, self.ring_bytes - at)
            self._map.madvise(mmap.MADV_DONTNEED, HEADER_BYTES + at, length)
            start += length
        self._released = end

    @property
    def backlog(self) -> int:
        """Bytes of records not yet in the spool."""
        with self._space:
            return self._head - self._drained

    def close(self) -> None:
        """Unmap (what was written stays in the file)."""
        with self._space:
            self._map.close()
