"""The repeat journal: repeats the C read loop answered, kept where kill -9 cannot reach.

``_answers.c`` answers repeats of remembered decisions without Python and counts them
in memory until ``take()``, once a second. So that an agent killed in between loses
none, it first writes each repeat to this file through a shared memory map: the
page cache outlives the process, and no fsync is paid on the hot path (what a power
loss can take is bounded in the README: the events of the last second).

Layout (little-endian; written by ``_answers.c``, read back here)::

    header (4096 bytes): b"BAOMIRJ1", half_bytes, done_gen, gen,
                         then for each of the two halves: its gen, its used bytes
    half 0, half 1     : records, each 8-byte aligned
        template  u32 1, u32 len, the serialized file_access event (padded to 8)
        file      u32 3, u32 len, u64 offset of its template, u64 dev, u64 ino,
                  i64 ctime_ns, the path (padded to 8) -- a class answer's copy
                  (classes.py): the file it was given for, which its event must name
        repeat    u32 2, u32 pid, u64 offset of its template (or file) in the half,
                  i64 time_ns

Generation ``g`` is written to half ``g % 2``; ``take()`` returns exactly its repeats
and starts ``g + 1`` in the other half. Once the file guard has handed a take's
events to the recorder (which journals them in turn before its own spool commit),
it marks the generation done; at the next start every half whose generation is
above ``done_gen`` is read back (``read_back``) and recorded, then marked done.
A half's ``used`` is written after its records, so a kill in the middle of one
leaves it out: that repeat was not answered yet.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"BAOMIRJ1"
HEADER_BYTES = 4096
HALF_BYTES = 4 * 1024 * 1024  # ~170,000 repeats a second before one falls back to Python
_HEADER = struct.Struct("<8sQQQQQQQ")  # magic, half_bytes, done_gen, gen, (gen, used) x2
_DONE_AT = 16
_TEMPLATE = struct.Struct("<II")  # type, len
_REPEAT = struct.Struct("<IIQq")  # type, pid, template offset, time_ns
_FILE = struct.Struct("<IIQQQq")  # type, path length, template offset, dev, ino, ctime_ns
TEMPLATE, REPEAT, FILE = 1, 2, 3


class RepeatJournalError(Exception):
    """The journal file is not one, or is damaged beyond reading back."""


@dataclass(frozen=True)
class Repeats:
    """The repeats of one answer by one process in one unrecorded generation."""

    event: bytes  # the serialized file_access event the answer was recorded with
    pid: int
    count: int
    first_ns: int
    last_ns: int
    #: (dev, ino, ctime_ns, path) of the file a class answer was given for, else None
    file: tuple[int, int, int, bytes] | None = None


class RepeatJournal:
    """The file, mapped; ``fd`` is handed to ``Answers(journal_fd=...)``."""

    def __init__(self, path: Path, half_bytes: int = HALF_BYTES) -> None:
        """Open ``path``, creating it (0600) when missing; refuse one that is not a
        repeat journal (move it aside to start afresh: its repeats are then lost)."""
        self.path = path
        size = HEADER_BYTES + 2 * half_bytes
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            st = os.fstat(fd)
            if st.st_size == 0:
                os.ftruncate(fd, size)
                os.pwrite(fd, _HEADER.pack(MAGIC, half_bytes, 0, 0, 0, 0, 0, 0), 0)
            self._map = mmap.mmap(fd, 0)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        magic, half, *_ = _HEADER.unpack_from(self._map, 0)
        if magic != MAGIC or HEADER_BYTES + 2 * half != len(self._map) or half % 8:
            self.close()
            raise RepeatJournalError(
                f"{path} is not a repeat journal of this agent (or is damaged); move it "
                "aside to let the agent start a new one (repeats it held are then lost)"
            )
        self.half_bytes = half

    def _header(self) -> tuple[int, int, list[tuple[int, int]]]:
        _, _, done, gen, g0, u0, g1, u1 = _HEADER.unpack_from(self._map, 0)
        return done, gen, [(g0, u0), (g1, u1)]

    def read_back(self) -> list[Repeats]:
        """The repeats of every generation not yet marked done, folded per answer and
        process, oldest generation first."""
        done, _gen, halves = self._header()
        out: list[Repeats] = []
        for index in sorted(range(2), key=lambda i: halves[i][0]):
            gen, used = halves[index]
            if gen > done and used:
                start = HEADER_BYTES + index * self.half_bytes
                out += self._fold(self._map[start : start + min(used, self.half_bytes)])
        return out

    @staticmethod
    def _fold(half: bytes) -> list[Repeats]:
        templates: dict[int, bytes] = {}
        # file record offset -> its template's offset and (dev, ino, ctime_ns, path)
        files: dict[int, tuple[int, tuple[int, int, int, bytes]]] = {}
        counts: dict[tuple[int, int], list[int]] = {}  # (template, pid) -> count, first, last
        at = 0
        while at + _TEMPLATE.size <= len(half):
            kind, length = _TEMPLATE.unpack_from(half, at)
            if kind == TEMPLATE:
                end = at + _TEMPLATE.size + length
                if end > len(half):
                    break  # cannot happen below used; stop rather than read past
                templates[at] = half[at + _TEMPLATE.size : end]
                at += _TEMPLATE.size + (length + 7) // 8 * 8
            elif kind == FILE and at + _FILE.size <= len(half):
                _, length, template, dev, ino, ctime_ns = _FILE.unpack_from(half, at)
                end = at + _FILE.size + length
                if end > len(half) or template not in templates:
                    break
                files[at] = (template, (dev, ino, ctime_ns, half[at + _FILE.size : end]))
                at += _FILE.size + (length + 7) // 8 * 8
            elif kind == REPEAT and at + _REPEAT.size <= len(half):
                _, pid, template, t = _REPEAT.unpack_from(half, at)
                if template in templates or template in files:
                    c = counts.setdefault((template, pid), [0, t, t])
                    c[0] += 1
                    c[2] = t
                at += _REPEAT.size
            else:
                break
        out = []
        for (at, pid), (count, first, last) in counts.items():
            if at in files:
                template, file = files[at]
                out.append(Repeats(templates[template], pid, count, first, last, file))
            else:
                out.append(Repeats(templates[at], pid, count, first, last))
        return out

    def mark_done(self, gen: int) -> None:
        """Generations up to ``gen`` are recorded: never read back again."""
        done, _, _ = self._header()
        if gen > done:
            struct.pack_into("<Q", self._map, _DONE_AT, gen)

    def mark_all_done(self) -> None:
        """Everything written so far is recorded (after ``read_back``)."""
        _, gen, halves = self._header()
        self.mark_done(max(gen, *(g for g, _ in halves)))

    def close(self) -> None:
        """Unmap and close (``Answers`` keeps its own mapping)."""
        self._map.close()
        os.close(self.fd)
