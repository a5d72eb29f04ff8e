"""The answers in flight: each access the file guard has recorded and not yet answered,
by the fd number the kernel delivered its event as, kept where a ``kill -9`` leaves it.

When the agent dies its guardian denies every event it had read and not answered, by
fd number (``_guardian.deny_pending``), and journals the numbers (``pending_denied``).
An access the agent recorded as allowed just before it was killed was then refused:
the record would say ALLOW while the person was denied. The file guard notes each
access here (``hold``) once it is recorded and before its answer is written, and
forgets it (``release``) once the answer is written; the next agent reads what was
left (``read_back``) and, for each number the guardian denied, records what the access
became (``attribute_pending``). What a killed agent left is moved aside
(``keep_left``: ``answering.PID``) until the gap naming its pid is recorded
(``forget_left``): an agent killed in turn while recording that gap would otherwise
take the notes with it.

Why not the event journal: its records carry no fd number, the spool may have taken
the record already (a batch commits 20 ms after the record), and the last record
under a number may be an access answered long ago whose number an open answered in
the C fast path reused since. A note here exists exactly while its answer is not
written, so a number it names that the guardian denied is that access.

Layout: a shared memory map (sparse, 0600), its header b"BAOMIAF1" and the pid of
the agent writing it; then ``SLOTS`` slots of ``SLOT_BYTES``, each u32 length (0:
free), i32 fd, then the event as recorded (serialized). The length is written last
and cleared first, so a slot killed half-written reads as free.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import struct
import threading
from pathlib import Path
from typing import Any

from baomi.v1 import events_pb2

_logger = logging.getLogger(__name__)

ANSWERING_NAME = "answering"  # in the guardian's directory (the agent's state dir)
MAGIC = b"BAOMIAF1"
SLOTS = 64  # accesses answered at once at most: readers, the stop drain, the watchdog
SLOT_BYTES = 8192
_HEADER = struct.Struct("<8sI")  # magic, pid of the agent writing
HEADER_BYTES = 64
_SLOT = struct.Struct("<Ii")  # length, fd
BODY_BYTES = SLOT_BYTES - _SLOT.size
FILE_BYTES = HEADER_BYTES + SLOTS * SLOT_BYTES
NOT_DELIVERED = "answer not delivered: the agent died; denied by the guardian"


class AnswersInFlight:
    """The map. ``hold``/``release`` from any thread."""

    def __init__(self, path: Path) -> None:
        """Open ``path``, creating it when missing; one of another size or kind is
        started afresh (what it held is then not attributed)."""
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)
            if os.fstat(fd).st_size != FILE_BYTES:
                os.ftruncate(fd, 0)
                os.ftruncate(fd, FILE_BYTES)
            self._map = mmap.mmap(fd, FILE_BYTES)
        finally:
            os.close(fd)  # the mapping keeps the file
        self._free = list(range(SLOTS - 1, -1, -1))
        self._lock = threading.Lock()

    def read_back(self) -> tuple[int, dict[int, bytes]]:
        """The pid of the agent that wrote the map and the accesses it left unanswered,
        by fd number ({} from a map of no agent)."""
        return _notes(self._map)

    def start(self, pid: int) -> None:
        """Forget what the map holds; from now on agent ``pid`` writes it."""
        with self._lock:
            for slot in range(SLOTS):
                _SLOT.pack_into(self._map, HEADER_BYTES + slot * SLOT_BYTES, 0, 0)
            _HEADER.pack_into(self._map, 0, MAGIC, pid)
            self._free = list(range(SLOTS - 1, -1, -1))

    def hold(self, fd: int, body: bytes) -> int:
        """Note the access recorded as ``body``, about to be answered as event ``fd``;
        its slot for ``release`` (-1: not noted, no room; a kill before its answer
        leaves it unattributed)."""
        if not body or len(body) > BODY_BYTES:
            return -1
        with self._lock:
            if not self._free:
                _logger.warning("answers in flight: all %d slots in use", SLOTS)
                return -1
            slot = self._free.pop()
        at = HEADER_BYTES + slot * SLOT_BYTES
        self._map[at + _SLOT.size : at + _SLOT.size + len(body)] = body
        _SLOT.pack_into(self._map, at, len(body), fd)
        return slot

    def release(self, slot: int) -> None:
        """The answer of the access in ``slot`` is written."""
        if slot < 0:
            return
        _SLOT.pack_into(self._map, HEADER_BYTES + slot * SLOT_BYTES, 0, 0)
        with self._lock:
            self._free.append(slot)

    def close(self) -> None:
        """Unmap (the file stays: empty after a clean stop)."""
        self._map.close()


def _notes(buf: bytes | mmap.mmap) -> tuple[int, dict[int, bytes]]:
    if len(buf) != FILE_BYTES:
        return 0, {}
    magic, pid = _HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        return 0, {}
    held: dict[int, bytes] = {}
    for slot in range(SLOTS):
        at = HEADER_BYTES + slot * SLOT_BYTES
        length, fd = _SLOT.unpack_from(buf, at)
        if 0 < length <= BODY_BYTES:
            held[fd] = bytes(buf[at + _SLOT.size : at + _SLOT.size + length])
    return pid, held


def keep_left(directory: Path) -> dict[int, dict[int, bytes]]:
    """What killed agents left unanswered, by their pid, then by fd number: the map an
    agent left is moved aside to ``answering.PID``, where it stays until
    ``forget_left``. Call before ``AnswersInFlight`` opens the map afresh."""
    current = directory / ANSWERING_NAME
    with contextlib.suppress(FileNotFoundError):
        pid, notes = _notes(current.read_bytes())
        if notes:
            current.replace(directory / f"{ANSWERING_NAME}.{pid}")
    left: dict[int, dict[int, bytes]] = {}
    for path in directory.glob(f"{ANSWERING_NAME}.*"):
        pid, notes = _notes(path.read_bytes())
        if notes and path.name == f"{ANSWERING_NAME}.{pid}":
            left[pid] = notes
        else:
            path.unlink(missing_ok=True)
    return left


def forget_left(directory: Path, pids: set[int]) -> None:
    """The opens the agents ``pids`` left unanswered are on record."""
    for pid in pids:
        (directory / f"{ANSWERING_NAME}.{pid}").unlink(missing_ok=True)


def attribute_pending(
    records: list[dict[str, Any]], left: dict[int, dict[int, bytes]]
) -> tuple[list[events_pb2.Event], int, int]:
    """What the opens the guardian denied for a dead agent became: (a ``file_access``
    DENY correcting each access it had recorded as allowed, how many of the denied were
    attributed to an access it had recorded, how many were denied in all).

    ``records`` are a gap's (``pending_denied`` names the fd numbers denied and whose
    they were), ``left`` what killed agents left in flight, by pid and fd number
    (``keep_left``). An access recorded as denied needs no correction.
    """
    corrections: list[events_pb2.Event] = []
    attributed = denied = 0
    for record in records:
        if record.get("event") != "pending_denied":
            continue
        denied += int(record.get("count", 0))
        unanswered = left.get(record.get("agent_pid", 0), {})  # {}: its notes are gone
        for fd in record.get("fds", []):
            body = unanswered.get(fd)
            if body is None:
                continue
            try:
                event = events_pb2.Event.FromString(body)
            except Exception:  # noqa: BLE001 - a damaged note is only not attributed
                _logger.warning("answers in flight: an unreadable note for fd %s", fd)
                continue
            attributed += 1
            if event.file_access.decision == events_pb2.DECISION_ALLOW:
                corrections.append(_not_delivered(event, float(record.get("time", 0))))
    return corrections, attributed, denied


def _not_delivered(recorded: events_pb2.Event, when: float) -> events_pb2.Event:
    """The access recorded as ``recorded`` (allowed), as it ended: denied."""
    event = events_pb2.Event()
    event.CopyFrom(recorded)
    event.severity = events_pb2.SEVERITY_MEDIUM
    access = event.file_access
    access.decision = events_pb2.DECISION_DENY
    access.reason = NOT_DELIVERED
    access.rule = ""
    for repeat in ("count", "first", "last"):
        access.ClearField(repeat)
    if when:
        event.time.FromNanoseconds(int(when * 1e9))
    return event
