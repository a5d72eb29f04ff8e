"""The export path: opens, writes and closes in the places the policy's ``export``
rules name, answered and reported so that a tainted process (taint.py) writing there
is decided as an ``export``.

The places are the mounts at or below the fixed part of each ``export`` rule's glob
(``/media/**`` -> every filesystem mounted under ``/media``): removable media and other
filesystems where no derived label is kept. Each such mount is marked for
``FAN_OPEN_PERM``, ``FAN_MODIFY`` and ``FAN_CLOSE_WRITE`` in a group of its own; the
mounts are looked up again at every ``refresh()`` (a stick mounted later is marked
then). A directory on the same filesystem as its parent mount is not a place: marking
the root filesystem would ask about every open on the host. Nor is a mount in the
protected trees: what is written there gets a derived label instead.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import select
import threading
from collections.abc import Callable, Iterable

from agent.sensors.base import Health
from agent.sensors.files.fanotify import (
    _METADATA,
    CAP_HINT,
    EVENT_F_FLAGS,
    FAN_ALLOW,
    FAN_CLASS_CONTENT,
    FAN_CLOEXEC,
    FAN_CLOSE_WRITE,
    FAN_DENY,
    FAN_MARK_ADD,
    FAN_MARK_FLUSH,
    FAN_MARK_MOUNT,
    FAN_MODIFY,
    FAN_NOFD,
    FAN_NONBLOCK,
    FAN_OPEN_PERM,
    FAN_Q_OVERFLOW,
    RESPONSE,
    STOP_TIMEOUT,
    close_quietly,
    fanotify_init,
    fanotify_mark,
    under_roots,
)

_logger = logging.getLogger(__name__)

READ_BYTES = 64 * 1024  # of events read at once
# The writer is the process that writes, not always the one that opened or closes: a
# shell opens ``> DST`` and its child ``cat`` writes (FAN_MODIFY names the writer).
_MASK = FAN_OPEN_PERM | FAN_MODIFY | FAN_CLOSE_WRITE
_GLOB_CHARS = frozenset("*?[{")
_OCTAL_RE = re.compile(r"\\([0-7]{3})")

#: Answers one event: (pid, event fd, mask) -> allow. Must be quick: the opener waits.
Decide = Callable[[int, int, int], bool]


def fixed_part(glob: str) -> str:
    """The directory a path glob cannot leave: its parts before the first wildcard."""
    parts = []
    for part in glob.split("/")[1:]:
        if not part or _GLOB_CHARS & set(part):
            break
        parts.append(part)
    return "/" + "/".join(parts)


def mounts_under(places: Iterable[str], mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """The mount points at or below any of ``places`` (absolute directories)."""
    wanted = [p.rstrip("/") or "/" for p in places]
    found = []
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:  # noqa: PTH123
            lines = f.read().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) < 5:
            continue
        point = _OCTAL_RE.sub(lambda m: chr(int(m[1], 8)), fields[4])  # \040 is a space
        if any(point == p or point.startswith(p.rstrip("/") + "/") for p in wanted):
            found.append(point)
    return sorted(set(found))


class ExportGuard:
    """Answer opens in the export places with ``decide`` and report writes and closes
    after a write to it too (the answer is then ignored)."""

    name = "fanotify-export"

    def __init__(self, decide: Decide, guarded: Iterable[str] = ()) -> None:
        self._decide = decide
        # The protected trees are no export place: data written there is labelled.
        self._guarded = tuple(guarded)
        self._fd = -1
        self._stop_r, self._stop_w = -1, -1
        self._places: tuple[str, ...] = ()
        self._marked: set[str] = set()
        self._thread: threading.Thread | None = None
        self._health = Health("ok", "no export places named by the policy")

    def watch(self, places: Iterable[str]) -> None:
        """Watch the mounts under ``places`` (from now on, and at every refresh)."""
        places = tuple(sorted(set(places)))
        if places == self._places:
            return
        self._places = places
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                fanotify_mark(self._fd, FAN_MARK_FLUSH | FAN_MARK_MOUNT, 0)
            self._marked.clear()
        self.refresh()

    def refresh(self) -> None:
        """Mark mounts that appeared under the places since the last look."""
        if not self._places:
            return
        if self._fd < 0 and not self._open():
            return
        errors = []
        for point in mounts_under(self._places):
            if point in self._marked or under_roots(point, self._guarded):
                continue
            try:
                fanotify_mark(self._fd, FAN_MARK_ADD | FAN_MARK_MOUNT, _MASK, path=point)
            except OSError as e:
                errors.append(f"{point}: {e.strerror}")
                continue
            _logger.info("export place %s watched", point)
            self._marked.add(point)
        if errors:
            self._health = Health("degraded", "export places not watched: " + "; ".join(errors))
        else:
            watched = ", ".join(sorted(self._marked)) or "none mounted"
            self._health = Health("ok", f"export places watched: {watched}")

    def _open(self) -> bool:
        try:
            self._fd = fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK, EVENT_F_FLAGS)
        except OSError as e:
            why = CAP_HINT if e.errno == errno.EPERM else e.strerror
            self._health = Health("disabled", f"exports not decided: {why}")
            _logger.warning("exports not decided: fanotify_init failed: %s", why)
            return False
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._read_loop, name="files-export", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        """End the reader thread and close the group (its marks go with it)."""
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(STOP_TIMEOUT)
            self._thread = None
        for fd in (self._fd, self._stop_r, self._stop_w):
            if fd >= 0:
                close_quietly(fd)
        self._fd = self._stop_r = self._stop_w = -1
        self._marked.clear()

    def health(self) -> Health:
        """ok (watching, or nothing to watch), degraded or disabled."""
        return self._health

    def _read_loop(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._stop_r in ready:
                return
            try:
                buf = os.read(self._fd, READ_BYTES)
            except BlockingIOError:
                continue
            except OSError as e:
                _logger.error("export guard stopped reading: %s", e)
                self._health = Health("failed", f"export guard stopped reading: {e}")
                return
            self._handle(buf)

    def _handle(self, buf: bytes) -> None:
        offset = 0
        while offset + _METADATA.size <= len(buf):
            event_len, _vers, _res, _mlen, mask, fd, pid = _METADATA.unpack_from(buf, offset)
            offset += event_len
            if mask & FAN_Q_OVERFLOW or fd == FAN_NOFD:
                _logger.warning("export guard: events lost (queue overflow)")
                continue
            try:
                try:
                    allow = self._decide(pid, fd, mask)
                except Exception:
                    # Only tainted processes are ever refused: a failure refuses this one.
                    _logger.exception("export decision failed; denied")
                    allow = False
                if mask & FAN_OPEN_PERM:
                    answer = FAN_ALLOW if allow else FAN_DENY
                    with contextlib.suppress(OSError):  # the opener is gone: nobody waits
                        os.write(self._fd, RESPONSE.pack(fd, answer))
            finally:
                os.close(fd)
