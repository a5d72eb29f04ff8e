"""Directory trees under fanotify marks, followed as they grow.

A notification group sees ``FAN_CREATE | FAN_ONDIR`` / ``FAN_RENAME | FAN_ONDIR``, marks
the new directory (in its own group and in the permission group it serves), then lists
it, so anything made inside it before the mark is found by the listing and anything
made after by the mark. The window between ``mkdir`` and that mark is unguarded (about
0.3-1.3 ms here, mostly thread wake-up); see ``permission.PermissionGuard``.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
from collections.abc import Callable, Sequence

from agent.sensors.files.fanotify import (
    AT_EMPTY_PATH,
    DIR_OPEN,
    EVENT_F_FLAGS,
    FAN_CLASS_NOTIF,
    FAN_CLOEXEC,
    FAN_CREATE,
    FAN_EVENT_INFO_TYPE_DFID_NAME,
    FAN_EVENT_INFO_TYPE_NEW_DFID_NAME,
    FAN_MARK_ADD,
    FAN_MARK_ONLYDIR,
    FAN_NONBLOCK,
    FAN_ONDIR,
    FAN_Q_OVERFLOW,
    FAN_RENAME,
    FAN_REPORT_DFID_NAME,
    STOP_TIMEOUT,
    FidEvent,
    FidRecord,
    close_quietly,
    fanotify_init,
    fanotify_mark,
    fd_path,
    name_to_handle_at,
    open_by_handle_at,
    parse_fid_events,
)

_logger = logging.getLogger(__name__)

NOTIF_READ_BYTES = 64 * 1024  # one read() of a FID group; records are ~50-300 bytes
OnOverflow = Callable[[], None]


class TreeWatcher:
    """A FID notification group that keeps every directory under ``roots`` marked.

    It marks each directory in its own group and in ``extra_marks`` (the permission
    group of a ``PermissionGuard``), following directories created or moved in later.
    Order matters: a directory is marked first and listed second, so a subdirectory
    made meanwhile is either in the listing or reported by the new mark.
    """

    def __init__(
        self,
        name: str,
        roots: Sequence[str],
        mask: int,
        *,
        extra_marks: Sequence[tuple[int, int]] = (),
        on_event: Callable[[FidEvent], None] | None = None,
        on_found: Callable[[str, bool], None] | None = None,
        on_overflow: OnOverflow | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        remember_paths: bool = False,
    ) -> None:
        self.name = name
        self.roots = list(roots)
        self.mask = mask
        self.extra_marks = list(extra_marks)
        self.on_event = on_event
        self.on_found = on_found  # entries found by listing a *new* directory
        self.on_overflow = on_overflow
        self.on_error = on_error
        self.fan_fd = -1
        self.marked_dirs = 0  # since start or the last relisting
        self.unfollowed = 0  # directories the notification group could not mark
        self.failed = ""  # why the reader thread ended early
        self.remember_paths = remember_paths
        self._mount_fds: dict[int, int] = {}  # fsid -> an fd on that filesystem
        self._fsids: dict[int, int] = {}  # st_dev -> fsid
        # (fsid, handle) <-> path of every marked directory, for events read after
        # their directory was removed (its handle no longer resolves then).
        self._paths: dict[tuple[int, bytes], str] = {}
        self._keys: dict[str, tuple[int, bytes]] = {}
        self._wake_fd = -1
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- lifecycle
    def open(self) -> None:
        """Create the group (OSError on failure: EPERM without CAP_SYS_ADMIN)."""
        # A bounded queue: notification events can overflow, and then FAN_Q_OVERFLOW
        # tells us to relist the trees rather than the kernel growing without limit.
        self.fan_fd = fanotify_init(
            FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_DFID_NAME,
            EVENT_F_FLAGS,
        )
        try:
            self._wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        except OSError:
            os.close(self.fan_fd)
            self.fan_fd = -1
            raise

    def start_thread(self) -> None:
        """Begin reading events."""
        self._thread = threading.Thread(target=self._run, name=f"fanotify-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Read what is queued, end the thread and close every fd."""
        self._stopping = True
        if self._thread is not None:
            os.eventfd_write(self._wake_fd, 1)
            self._thread.join(STOP_TIMEOUT)
            if self._thread.is_alive():
                _logger.error(
                    "fanotify %s reader did not stop within %.0f s", self.name, STOP_TIMEOUT
                )
            self._thread = None
        for fd in [self.fan_fd, self._wake_fd, *self._mount_fds.values()]:
            if fd >= 0:
                close_quietly(fd)
        self.fan_fd = self._wake_fd = -1
        self._mount_fds.clear()
        self._fsids.clear()
        self._paths.clear()
        self._keys.clear()

    # -- marking
    def add_root(self, root: str) -> None:
        """Mark ``root`` and everything below it; OSError when the root itself fails."""
        fd = os.open(root, DIR_OPEN)
        try:
            self._mark_fd(fd)
        except BaseException:
            os.close(fd)
            raise
        self._walk(fd, None)  # what is there at start is not a change

    def rescan(self) -> None:
        """Mark every directory again (marks are idempotent), after events were lost."""
        self.marked_dirs = self.unfollowed = 0
        for root in self.roots:
            try:
                self.add_root(root)
            except OSError as e:
                self._error(e)

    def _mark_fd(self, fd: int) -> None:
        """Mark the directory open as ``fd`` in every group."""
        dev = os.fstat(fd).st_dev
        fsid = self._fsids.get(dev)
        if fsid is None:
            fsid = self._fsids[dev] = os.fstatvfs(fd).f_fsid
            if fsid not in self._mount_fds:
                # open_by_handle_at() wants a real (not O_PATH) fd on the filesystem.
                self._mount_fds[fsid] = os.dup(fd)
        # Both marks go on before the directory is listed (by the caller), so anything
        # made in it from here on is reported. The permission mark first: a directory
        # whose filesystem cannot report file ids is still guarded, only not followed.
        for fan_fd, mask in self.extra_marks:
            fanotify_mark(fan_fd, FAN_MARK_ADD | FAN_MARK_ONLYDIR, mask, fd, None)
        self.marked_dirs += 1
        try:
            fanotify_mark(self.fan_fd, FAN_MARK_ADD | FAN_MARK_ONLYDIR, self.mask, fd, None)
        except OSError as e:
            self.unfollowed += 1
            self._error(
                OSError(e.errno, f"{e.strerror}: new entries are not followed", fd_path(fd))
            )
            return
        if self.remember_paths:
            try:
                handle = name_to_handle_at("", fd, AT_EMPTY_PATH)
            except OSError:
                return
            self._remember((fsid, handle), fd_path(fd))

    def _remember(self, key: tuple[int, bytes], path: str) -> None:
        old = self._paths.get(key)
        if old == path:
            return
        if old is not None:
            self._keys.pop(old, None)
        self._paths[key] = path
        self._keys[path] = key

    def forget_dir(self, path: str) -> None:
        """A directory was removed: drop what was remembered about it."""
        key = self._keys.pop(path, None)
        if key is not None:
            self._paths.pop(key, None)

    def moved_dir(self, old: str, new: str) -> None:
        """A directory was renamed: rewrite the remembered paths at and below it."""
        prefix = old + "/"
        moved = [p for p in self._keys if p == old or p.startswith(prefix)]
        for p in moved:
            key = self._keys.pop(p)
            if new:
                self._remember(key, new + p[len(old) :])
            else:
                self._paths.pop(key, None)  # out of the trees

    def _walk(self, top_fd: int, found: list[tuple[str, bool]] | None) -> None:
        """List ``top_fd`` (marked already; closed here) and mark every directory below.

        Depth-first with one open fd per level, so a wide directory does not run the
        process out of fds. Every entry seen is appended to ``found`` (path, is_dir).
        """
        stack: list[tuple[int, str, list[str]]] = []
        try:
            top_path = fd_path(top_fd) if found is not None else ""
            stack.append((top_fd, top_path, self._subdirs(top_fd, top_path, found)))
            while stack:
                fd, path, names = stack[-1]
                if not names:
                    os.close(fd)
                    stack.pop()
                    continue
                name = names.pop()
                try:
                    child = os.open(name, DIR_OPEN, dir_fd=fd)
                except OSError:
                    continue  # gone or replaced by a non-directory since the listing
                try:
                    self._mark_fd(child)
                    child_path = f"{path}/{name}" if found is not None else ""
                    kids = self._subdirs(child, child_path, found)
                except OSError as e:
                    os.close(child)
                    self._error(e)
                    continue
                stack.append((child, child_path, kids))
        finally:
            for fd, *_ in stack:
                close_quietly(fd)

    @staticmethod
    def _subdirs(fd: int, path: str, found: list[tuple[str, bool]] | None) -> list[str]:
        names: list[str] = []
        with os.scandir(fd) as it:
            for entry in it:
                is_dir = entry.is_dir(follow_symlinks=False)
                if is_dir:
                    names.append(entry.name)
                if found is not None:
                    found.append((f"{path}/{entry.name}", is_dir))
        return names

    def add_child(self, record: FidRecord) -> list[tuple[str, bool]]:
        """Follow directory ``record.name``, new in the directory of ``record``.

        Returns what was in it already (path, is_dir): made before it was marked.
        """
        found: list[tuple[str, bool]] = []
        parent = self._open_dir(record, os.O_PATH)
        if parent < 0:
            return found
        try:
            child = os.open(record.name, DIR_OPEN, dir_fd=parent)
        except OSError:
            return found  # removed or renamed again since; its own event follows
        finally:
            os.close(parent)
        try:
            self._mark_fd(child)
        except OSError as e:
            os.close(child)
            self._error(e)
            return found
        self._walk(child, found if self.on_found is not None else None)
        return found

    @staticmethod
    def check_handles(root: str) -> OSError | None:
        """Why a directory handle of ``root`` does not resolve (None: it does).

        Resolving handles needs CAP_DAC_READ_SEARCH and a filesystem that can encode
        them; this finds out before anything is marked.
        """
        try:
            handle = name_to_handle_at(root)
            mount_fd = os.open(root, DIR_OPEN)
        except OSError as e:
            return e
        try:
            os.close(open_by_handle_at(mount_fd, handle, os.O_PATH | os.O_CLOEXEC))
        except OSError as e:
            return e
        finally:
            os.close(mount_fd)
        return None

    def _open_dir(self, record: FidRecord, flags: int) -> int:
        """Open the directory of a fid record; -1 when it is gone or unknown."""
        mount_fd = self._mount_fds.get(record.fsid)
        if mount_fd is None:
            return -1
        try:
            return open_by_handle_at(mount_fd, record.handle, flags | os.O_CLOEXEC)
        except OSError as e:
            if e.errno not in (errno.ESTALE, errno.ENOENT):
                self._error(e)
            return -1

    def dir_path(self, record: FidRecord) -> str:
        """The current path of the directory of ``record``.

        A directory removed before its events are read no longer resolves; then the
        path remembered when it was marked is used ("" if there is none).
        """
        key = (record.fsid, record.handle)
        fd = self._open_dir(record, os.O_PATH)
        if fd < 0:
            return self._paths.get(key, "")
        try:
            path = fd_path(fd)
        finally:
            os.close(fd)
        if self.remember_paths and path:
            self._remember(key, path)
        return path

    def path_of(self, record: FidRecord | None) -> str:
        """``dir/name`` of a named record ("" when the directory is gone)."""
        if record is None:
            return ""
        d = self.dir_path(record)
        if not d:
            return ""
        return d if record.name in ("", ".") else f"{d.rstrip('/')}/{record.name}"

    # -- reading
    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.fan_fd, select.POLLIN)
        poller.register(self._wake_fd, select.POLLIN)
        buf = bytearray(NOTIF_READ_BYTES)
        try:
            while not self._stopping:
                poller.poll()
                self._drain(buf)
            self._drain(buf)  # what happened before stop() is still reported
        except Exception as e:
            _logger.exception("fanotify %s reader failed", self.name)
            self.failed = f"reader failed: {e}"
            self._error(e)

    def _drain(self, buf: bytearray) -> None:
        while True:
            try:
                n = os.readv(self.fan_fd, [buf])
            except BlockingIOError:
                return
            for event in parse_fid_events(buf, n):
                self._dispatch(event)

    def _dispatch(self, event: FidEvent) -> None:
        if event.mask & FAN_Q_OVERFLOW:
            _logger.warning("fanotify %s queue overflowed; listing the trees again", self.name)
            self._call(self.on_overflow)
            self.rescan()
            return
        found: list[tuple[str, bool]] = []
        if event.mask & FAN_ONDIR:
            # Follow a new directory before reporting anything, to keep the window short.
            new = None
            if event.mask & FAN_CREATE:
                new = event.record(FAN_EVENT_INFO_TYPE_DFID_NAME)
            elif event.mask & FAN_RENAME:
                new = event.record(FAN_EVENT_INFO_TYPE_NEW_DFID_NAME)
            if new is not None:
                try:
                    found = self.add_child(new)
                except OSError as e:
                    self._error(e)
        try:
            if self.on_event is not None:
                self.on_event(event)
            if self.on_found is not None:
                for path, is_dir in found:
                    self.on_found(path, is_dir)
        except Exception as e:
            _logger.exception("fanotify %s event handler failed", self.name)
            self._error(e)

    def _call(self, cb: OnOverflow | None) -> None:
        if cb is None:
            return
        try:
            cb()
        except Exception:
            _logger.exception("fanotify %s callback failed", self.name)

    def _error(self, e: BaseException) -> None:
        if self.on_error is None:
            _logger.error("fanotify %s: %s", self.name, e)
            return
        try:
            self.on_error(e)
        except Exception:
            _logger.exception("fanotify %s error callback failed", self.name)
