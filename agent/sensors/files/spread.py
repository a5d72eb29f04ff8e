"""Writes anywhere on the filesystems of the protected trees, by writer: where a copy
of a labelled file made outside the trees is found, to be labelled too (taint.py).

A notification group with ``FAN_REPORT_FID`` marks each such filesystem whole
(``FAN_MARK_FILESYSTEM``) for ``FAN_MODIFY`` and ``FAN_CLOSE_WRITE``. An event carries
the writer's pid and the file's handle, no open file: the handle is opened (read-only
path, ``open_by_handle_at``) only when ``wanted(pid)`` says the writer matters, so the
writes of everyone else cost the agent one queue read and a dictionary lookup, and the
writers nothing. Off by default (``follow_filesystems``): on a host whose protected
trees live on the root filesystem it sees every write on the host.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from agent.sensors.base import Health
from agent.sensors.files.fanotify import (
    CAP_HINT,
    FAN_CLASS_NOTIF,
    FAN_CLOEXEC,
    FAN_CLOSE_WRITE,
    FAN_EVENT_INFO_TYPE_FID,
    FAN_MARK_ADD,
    FAN_MODIFY,
    FAN_NONBLOCK,
    FAN_Q_OVERFLOW,
    FAN_REPORT_FID,
    STOP_TIMEOUT,
    FidRecord,
    abs_roots,
    close_quietly,
    fanotify_init,
    fanotify_mark,
    open_by_handle_at,
    parse_fid_events,
)

_logger = logging.getLogger(__name__)

FAN_MARK_FILESYSTEM = 0x00000100  # <linux/fanotify.h>
READ_BYTES = 64 * 1024  # of events read at once
_MASK = FAN_MODIFY | FAN_CLOSE_WRITE


class FilesystemWrites:
    """Call ``on_write(pid, fd)`` (an ``O_PATH`` fd, closed after the call) for each
    write or close after writing, on the protected trees' filesystems, by a process
    ``wanted(pid)`` is true for."""

    name = "fanotify-spread"

    def __init__(
        self,
        roots: Sequence[Path | str],
        wanted: Callable[[int], bool],
        on_write: Callable[[int, int], None],
    ) -> None:
        self.roots = abs_roots(roots)
        self._wanted = wanted
        self._on_write = on_write
        self._fd = -1
        self._stop_r, self._stop_w = -1, -1
        self._mounts: dict[int, int] = {}  # fsid -> an fd to open handles against
        self._thread: threading.Thread | None = None
        self._health = Health("disabled", "not started")

    def start(self) -> None:
        """Mark the filesystem of every root and start the reader thread."""
        try:
            self._fd = fanotify_init(
                FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_FID,
                os.O_RDONLY | os.O_CLOEXEC,
            )
        except OSError as e:
            why = CAP_HINT if e.errno == errno.EPERM else e.strerror
            self._health = Health("disabled", f"copies outside the trees not labelled: {why}")
            _logger.warning("%s", self._health.detail)
            return
        errors = []
        for root in self.roots:
            try:
                fsid = os.statvfs(root).f_fsid
                if fsid in self._mounts:
                    continue
                fanotify_mark(self._fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, _MASK, path=root)
                self._mounts[fsid] = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as e:
                errors.append(f"{root}: {e.strerror}")
        if errors:
            self._health = Health(
                "degraded", "copies not labelled outside the trees of " + "; ".join(errors)
            )
            _logger.warning("%s", self._health.detail)
        else:
            self._health = Health("ok", f"writes watched on {len(self._mounts)} filesystems")
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._read_loop, name="files-spread", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the reader thread; close the group and every fd."""
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(STOP_TIMEOUT)
            self._thread = None
        for fd in (self._fd, self._stop_r, self._stop_w, *self._mounts.values()):
            if fd >= 0:
                close_quietly(fd)
        self._fd = self._stop_r = self._stop_w = -1
        self._mounts.clear()
        self._health = Health("disabled", "stopped")

    def health(self) -> Health:
        """ok, degraded (a filesystem not watched), disabled or failed."""
        return self._health

    def _read_loop(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        buf = bytearray(READ_BYTES)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._stop_r in ready:
                return
            try:
                n = os.readv(self._fd, [buf])
                events = parse_fid_events(buf, n)
            except BlockingIOError:
                continue
            except OSError as e:
                self._health = Health("failed", f"stopped reading writes: {e}")
                _logger.error("%s", self._health.detail)
                return
            for event in events:
                if event.mask & FAN_Q_OVERFLOW:
                    _logger.warning("writes outside the trees lost (queue overflow)")
                    continue
                self._handle(event.pid, event.record(FAN_EVENT_INFO_TYPE_FID))

    def _handle(self, pid: int, record: FidRecord | None) -> None:
        if record is None or not self._wanted(pid):
            return
        mount = self._mounts.get(record.fsid)
        if mount is None:
            return
        try:
            fd = open_by_handle_at(mount, record.handle, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return  # deleted since
        try:
            self._on_write(pid, fd)
        except Exception:
            _logger.exception("labelling a file written outside the trees failed")
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
