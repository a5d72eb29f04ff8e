"""What each process has read: the highest label, so that what it writes can carry it.

A process *has read* a labelled file when the guard allowed it to open one (level 1 or
more on the day) for reading or running. From then until it exits, the process is
*tainted* with the highest such label (its level, period and scope, and the source's
label id and home). A child inherits its parent's taint as it stood when the child was
started (fork copies the parent's memory; exec keeps its descriptors): a process with
no entry of its own is looked up through its parent chain in ``/proc`` -- a parent
tainted only after the child started does not taint it.

A process is known by its pid *and* its start time (``/proc/PID/stat``), so a reused
pid is not confused with the process that read. Entries are bounded (``MAX_TAINTED``)
and swept: a process gone at two sweeps in a row is forgotten (one sweep's grace, so
that the change events it caused, which arrive after it may have exited, still find
it).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

from baomi.labels import Label

_logger = logging.getLogger(__name__)

MAX_TAINTED = 65_536  # processes remembered as tainted (~300 bytes each)
MAX_ANCESTORS = 64  # parents looked at for an inherited taint
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
GONE = -1  # the start time of a process that had exited when its read was learnt

#: ``/proc/PID/syscall`` numbers of x86-64 open calls and where their flags are.
_OPEN_FLAGS_ARG = {2: 1, 257: 2}  # open(path, flags, mode), openat(dirfd, path, flags)
_CREAT = 85  # creat(path, mode): always for writing
_OPENAT2 = 437  # openat2(dirfd, path, how, size): flags in user memory
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


@dataclass(frozen=True, slots=True)
class Taint:
    """The highest label a process has read, where it came from, and since when."""

    label: Label  # the source's label (its home, too)
    source: str  # the path the source was opened by
    since: int  # clock ticks since boot (as /proc/PID/stat's start time)


def start_time(pid: int) -> tuple[int, int] | None:
    """(start time in clock ticks since boot, parent pid) of ``pid``; None when gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:  # noqa: PTH123 - hot path
            raw = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields follow the last ")".
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return int(fields[19]), int(fields[1])
    except (IndexError, ValueError):
        return None


def now_ticks() -> int:
    """Now, in clock ticks since boot (the clock of process start times)."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * _CLOCK_TICKS)


def opens_for_writing(pid: int) -> bool | None:
    """Whether ``pid``, blocked in an open the guard is asked about, opens for writing.

    Read from the system call it is in (``/proc/PID/syscall``: number and arguments);
    None when that cannot be told (gone, not in an open call, ``openat2`` whose flags
    are in its memory) -- callers take that for writing when it matters.
    """
    try:
        with open(f"/proc/{pid}/syscall", "rb") as f:  # noqa: PTH123 - hot path
            parts = f.read().split()
        number = int(parts[0])
    except (OSError, IndexError, ValueError):
        return None
    if number == _CREAT:
        return True
    where = _OPEN_FLAGS_ARG.get(number)
    if where is None:
        return None  # openat2, or not an open: cannot tell
    try:
        flags = int(parts[1 + where], 16)
    except (IndexError, ValueError):
        return None
    return bool(flags & _WRITE_FLAGS)


class Taints:
    """Per process (pid and start time), the highest label it has read."""

    def __init__(self, limit: int = MAX_TAINTED) -> None:
        self._limit = limit
        self._by_pid: dict[int, tuple[int, Taint]] = {}  # pid -> (its start time, taint)
        self._gone: set[int] = set()  # pids found gone at the last sweep
        # pids found untainted since the last taint or sweep: a writer's every write
        # event is looked up, its parent chain once
        self._clean: set[int] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._by_pid)

    def read(self, pid: int, label: Label, source: str) -> None:
        """``pid`` was allowed to read a file labelled ``label`` (valid, level >= 1).

        A process gone already (its read reported late, by a fold) is kept too, with no
        start time: the writes it made before it exited may not have been looked at."""
        started = start_time(pid)
        start = started[0] if started is not None else GONE
        with self._lock:
            known = self._by_pid.get(pid)
            if known is not None and known[0] == start and known[1].label.level >= label.level:
                return
            if known is None and len(self._by_pid) >= self._limit:
                self._evict()
            self._by_pid[pid] = (start, Taint(label, source, now_ticks()))
            self._clean.clear()  # its children are tainted now

    def of(self, pid: int) -> Taint | None:
        """The taint of ``pid``: its own, else the nearest tainted ancestor's (as it was
        when the child started). A pid that is gone keeps its own entry until swept: its
        writes are reported after it exited."""
        if pid in self._clean:
            return None
        started = start_time(pid)
        with self._lock:
            known = self._by_pid.get(pid)
        if known is not None and (started is None or started[0] == known[0]):
            return known[1]
        if started is None:
            return None
        inherited = self._from_ancestors(started)
        if inherited is not None:
            self.inherit(pid, started[0], inherited)
            return inherited
        with self._lock:
            if len(self._clean) < self._limit:
                self._clean.add(pid)
        return None

    def _from_ancestors(self, started: tuple[int, int]) -> Taint | None:
        """The taint of the nearest tainted ancestor of a process (start time, parent)
        that it had before that process (or the one between them) started."""
        child_start, parent = started
        for _ in range(MAX_ANCESTORS):
            up = start_time(parent) if parent > 1 else None
            if up is None:
                return None
            with self._lock:
                known = self._by_pid.get(parent)
            if known is not None and known[0] == up[0] and known[1].since <= child_start:
                return known[1]
            child_start, parent = up
        return None

    def inherit(self, pid: int, started: int, taint: Taint) -> None:
        """Remember ``pid``'s inherited taint: it may write after its parent is gone."""
        with self._lock:
            if len(self._by_pid) >= self._limit and pid not in self._by_pid:
                self._evict()
            self._by_pid[pid] = (started, taint)

    def sweep(self) -> None:
        """Forget processes found gone (or replaced by a reused pid) twice in a row."""
        with self._lock:
            pids = list(self._by_pid.items())
        gone = set()
        for pid, (started, _taint) in pids:
            now = start_time(pid)
            if now is None or now[0] != started:
                gone.add(pid)
        with self._lock:
            for pid in gone & self._gone:
                self._by_pid.pop(pid, None)
            self._gone = gone
            self._clean.clear()  # a pid may have been reused

    def _evict(self) -> None:
        """Full (under the lock): drop the oldest entry. A long-lived tainted process
        forgotten this way writes unlabelled files: logged, since it weakens labels."""
        pid = next(iter(self._by_pid))
        del self._by_pid[pid]
        _logger.warning(
            "taint of pid %d forgotten: more than %d tainted processes", pid, self._limit
        )
