"""fanotify, the kernel edge of the secret-file guard.

A thin ctypes binding of ``fanotify_init(2)``, ``fanotify_mark(2)`` and
``open_by_handle_at(2)`` (there is no well-kept Python fanotify library), and the
readers built on it:

``PermissionGuard``
    A permission group (``FAN_CLASS_CONTENT``) with ``FAN_OPEN_PERM |
    FAN_OPEN_EXEC_PERM`` marks on every directory under the protected roots. Every
    open of a file (or directory) in them blocks in the kernel until the guard answers
    allow or deny; ``decide(Access)`` gives the answer, within a deadline. Its read
    loop is in C (``_answers.c``): repeats of an answer ``decide()`` asked it to
    ``repeat()`` are answered there without the GIL, and counted.
``ChangeWatcher``
    A notification group (``FAN_REPORT_DFID_NAME``) on the same trees that reports
    writes, creations, renames and deletions as ``Change`` records.

Both follow directories created (or moved in) after they start: a notification group
sees ``FAN_CREATE | FAN_ONDIR`` / ``FAN_RENAME | FAN_ONDIR``, marks the new directory,
then lists it, so anything made inside it before the mark is found by the listing and
anything made after by the mark. The window between ``mkdir`` and that mark is
unguarded (about 0.3-1.3 ms here, mostly thread wake-up); see ``PermissionGuard``.

Every reader runs in its own thread and every handle is closed on ``stop()``.
fanotify needs ``CAP_SYS_ADMIN``: without it ``start()`` logs one line and
``health()`` says ``disabled``, so the agent keeps its other sensors.

Latency: a repeat answered in C costs three system calls more than the kernel round
trip (~2.4 us against ~8.5 us; ``make bench``). Everything else -- the first open of
a file by a process, the agent's own opens, the change watcher -- runs in Python
threads, which wait for the GIL like any other: one CPU-bound Python thread elsewhere
in the same process makes such an open wait up to ``sys.getswitchinterval()`` (5 ms
by default). Run the guard in a process that does nothing else.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import select
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from agent.errors import ConfigError
from agent.sensors.base import Health
from agent.sensors.files._answers import Answers

_logger = logging.getLogger(__name__)

# --- <linux/fanotify.h> -----------------------------------------------------------
# Events (the mask of fanotify_mark and of fanotify_event_metadata).
FAN_ACCESS = 0x00000001
FAN_MODIFY = 0x00000002
FAN_ATTRIB = 0x00000004
FAN_CLOSE_WRITE = 0x00000008
FAN_CLOSE_NOWRITE = 0x00000010
FAN_OPEN = 0x00000020
FAN_MOVED_FROM = 0x00000040
FAN_MOVED_TO = 0x00000080
FAN_CREATE = 0x00000100
FAN_DELETE = 0x00000200
FAN_DELETE_SELF = 0x00000400
FAN_MOVE_SELF = 0x00000800
FAN_OPEN_EXEC = 0x00001000
FAN_Q_OVERFLOW = 0x00004000
FAN_FS_ERROR = 0x00008000
FAN_OPEN_PERM = 0x00010000
FAN_ACCESS_PERM = 0x00020000
FAN_OPEN_EXEC_PERM = 0x00040000
FAN_EVENT_ON_CHILD = 0x08000000
FAN_RENAME = 0x10000000
FAN_ONDIR = 0x40000000

# fanotify_init() flags.
FAN_CLOEXEC = 0x00000001
FAN_NONBLOCK = 0x00000002
FAN_CLASS_NOTIF = 0x00000000
FAN_CLASS_CONTENT = 0x00000004
FAN_CLASS_PRE_CONTENT = 0x00000008
FAN_UNLIMITED_QUEUE = 0x00000010
FAN_UNLIMITED_MARKS = 0x00000020
FAN_REPORT_PIDFD = 0x00000080
FAN_REPORT_TID = 0x00000100
FAN_REPORT_FID = 0x00000200
FAN_REPORT_DIR_FID = 0x00000400
FAN_REPORT_NAME = 0x00000800
FAN_REPORT_DFID_NAME = FAN_REPORT_DIR_FID | FAN_REPORT_NAME

# fanotify_mark() flags.
FAN_MARK_ADD = 0x00000001
FAN_MARK_REMOVE = 0x00000002
FAN_MARK_DONT_FOLLOW = 0x00000004
FAN_MARK_ONLYDIR = 0x00000008
FAN_MARK_MOUNT = 0x00000010
FAN_MARK_FLUSH = 0x00000080
FAN_MARK_INODE = 0x00000000

FANOTIFY_METADATA_VERSION = 3

# Info record types that follow the metadata of FID-reporting groups.
FAN_EVENT_INFO_TYPE_FID = 1
FAN_EVENT_INFO_TYPE_DFID_NAME = 2
FAN_EVENT_INFO_TYPE_DFID = 3
FAN_EVENT_INFO_TYPE_OLD_DFID_NAME = 10
FAN_EVENT_INFO_TYPE_NEW_DFID_NAME = 12

# struct fanotify_response.response
FAN_ALLOW = 0x01
FAN_DENY = 0x02
FAN_NOFD = -1

# struct fanotify_event_metadata { __u32 event_len; __u8 vers; __u8 reserved;
#   __u16 metadata_len; __aligned_u64 mask; __s32 fd; __s32 pid; }  -- 24 bytes
_METADATA = struct.Struct("=IBBHQii")
# struct fanotify_event_info_header { __u8 info_type; __u8 pad; __u16 len; }
_INFO_HEADER = struct.Struct("=BBH")
# __kernel_fsid_t { int val[2]; } right after the header of a fid record
_FSID = struct.Struct("=ii")
# struct file_handle { unsigned int handle_bytes; int handle_type; unsigned char f_handle[]; }
_FILE_HANDLE = struct.Struct("=Ii")
# struct fanotify_response { __s32 fd; __u32 response; }
_RESPONSE = struct.Struct("=iI")

_FID_RECORD_TYPES = frozenset(
    {
        FAN_EVENT_INFO_TYPE_FID,
        FAN_EVENT_INFO_TYPE_DFID_NAME,
        FAN_EVENT_INFO_TYPE_DFID,
        FAN_EVENT_INFO_TYPE_OLD_DFID_NAME,
        FAN_EVENT_INFO_TYPE_NEW_DFID_NAME,
    }
)
_NAMED_RECORD_TYPES = frozenset(
    {
        FAN_EVENT_INFO_TYPE_DFID_NAME,
        FAN_EVENT_INFO_TYPE_OLD_DFID_NAME,
        FAN_EVENT_INFO_TYPE_NEW_DFID_NAME,
    }
)

# --- limits -------------------------------------------------------------------------
DEFAULT_DEADLINE = 0.050  # seconds a decision may take before the open is denied
DEFAULT_MAX_STUCK = 4  # decisions past their deadline still running before decide() is skipped
_NOTIF_READ_BYTES = 64 * 1024  # one read() of a FID group; records are ~50-300 bytes
_STOP_TIMEOUT = 5.0  # seconds stop() waits for a reader thread to finish
_DIRTY_MAX = 10_000  # files with a reported, unclosed write that ChangeWatcher remembers
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
ANSWERS_KEPT = 65_536  # remembered answers (repeats answered in C) between take()s

# Directories are opened without following a final symlink: a symlink in a protected
# tree points outside it, and its target is not ours to mark.
_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_EVENT_F_FLAGS = os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC


# --- libc binding ---------------------------------------------------------------------
class _Libc:
    """The libc calls fanotify needs (and file handles), bound once with C signatures."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(None, use_errno=True)
        self.fanotify_init = lib.fanotify_init
        self.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
        self.fanotify_init.restype = ctypes.c_int
        self.fanotify_mark = lib.fanotify_mark
        self.fanotify_mark.argtypes = [
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint64,
            ctypes.c_int,
            ctypes.c_char_p,
        ]
        self.fanotify_mark.restype = ctypes.c_int
        self.open_by_handle_at = lib.open_by_handle_at
        self.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.open_by_handle_at.restype = ctypes.c_int
        self.name_to_handle_at = lib.name_to_handle_at
        self.name_to_handle_at.argtypes = [
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.POINTER(ctypes.c_int),
            ctypes.c_int,
        ]
        self.name_to_handle_at.restype = ctypes.c_int


_libc_instance: _Libc | None = None


def _libc() -> _Libc:
    global _libc_instance  # noqa: PLW0603 -- bound lazily so importing never touches libc
    if _libc_instance is None:
        _libc_instance = _Libc()
    return _libc_instance


def _os_error(path: str | None = None) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, os.strerror(err), path)


def fanotify_init(flags: int, event_f_flags: int) -> int:
    """``fanotify_init(2)``: a new fanotify group; returns its fd or raises OSError."""
    fd: int = _libc().fanotify_init(flags, event_f_flags)
    if fd < 0:
        raise _os_error()
    return fd


def fanotify_mark(
    fan_fd: int, flags: int, mask: int, dirfd: int = _AT_FDCWD, path: str | None = None
) -> None:
    """``fanotify_mark(2)``; with ``path=None`` the object marked is ``dirfd`` itself."""
    raw = None if path is None else os.fsencode(path)
    if _libc().fanotify_mark(fan_fd, flags, mask, dirfd, raw) < 0:
        raise _os_error(path)


def open_by_handle_at(mount_fd: int, handle: bytes, flags: int) -> int:
    """``open_by_handle_at(2)``; ``handle`` is a whole ``struct file_handle``."""
    fd: int = _libc().open_by_handle_at(mount_fd, handle, flags)
    if fd < 0:
        raise _os_error()
    return fd


MAX_HANDLE_SZ = 128  # <linux/exportfs.h>: the largest struct file_handle payload


def name_to_handle_at(path: str, dirfd: int = _AT_FDCWD, flags: int = 0) -> bytes:
    """``name_to_handle_at(2)`` (symlinks not followed): a whole ``struct file_handle``.

    ``path=""`` with ``flags=AT_EMPTY_PATH`` gives the handle of ``dirfd`` itself.
    """
    buf = ctypes.create_string_buffer(_FILE_HANDLE.size + MAX_HANDLE_SZ)
    _FILE_HANDLE.pack_into(buf, 0, MAX_HANDLE_SZ, 0)
    mount_id = ctypes.c_int()
    raw = os.fsencode(path)
    if _libc().name_to_handle_at(dirfd, raw, buf, ctypes.byref(mount_id), flags) < 0:
        raise _os_error(path)
    handle_bytes, _ = _FILE_HANDLE.unpack_from(buf, 0)
    return buf.raw[: _FILE_HANDLE.size + handle_bytes]


def _fd_path(fd: int) -> str:
    """The path the kernel gives for an open fd ("" when it cannot)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")  # noqa: PTH115 - hot path: no Path object
    except OSError:
        return ""


def _proc_uid(pid: int) -> int:
    """Effective uid of ``pid``, or -1 when it is gone.

    The owner of the ``/proc/<pid>`` directory itself is the task's euid even when the
    task is not dumpable (``task_dump_owner()`` exempts exactly that directory, for
    ``ps``); the files inside it turn root-owned then. One stat costs ~1.8 us against
    ~14 us for reading and parsing ``/proc/<pid>/status``.
    """
    try:
        return os.stat(f"/proc/{pid}").st_uid  # noqa: PTH116 - hot path: no Path object
    except OSError:
        return -1


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


# --- what the readers hand out --------------------------------------------------------
@dataclass(frozen=True, slots=True, init=False)
class Access:
    """One open waiting for a decision.

    ``fd`` is the kernel's fd for the file being opened; it is valid only while
    ``decide()`` runs (read labels with ``os.getxattr(fd, ...)``, never reopen the path:
    an open under a protected root from inside ``decide()`` waits for the guard
    itself). ``ctime_ns`` changes whenever the file's xattrs (labels) change, so it
    belongs in any cache key.
    """

    pid: int  # thread-group id of the opener
    uid: int  # its effective uid; -1 if it vanished
    executable: str  # readlink /proc/<pid>/exe; "" if gone
    fd: int
    dev: int
    ino: int
    ctime_ns: int
    action: str  # "read" (FAN_OPEN_PERM) or "execute" (FAN_OPEN_EXEC_PERM)
    #: The path when the creator already knows it (test doubles); otherwise ``path``
    #: resolves it from ``fd`` on first use.
    known_path: str | None = field(default=None, repr=False, compare=False)

    def __init__(  # noqa: PLR0917 - the hot path; positional calls are the cheapest
        self,
        pid: int,
        uid: int,
        executable: str,
        fd: int,
        dev: int,
        ino: int,
        ctime_ns: int,
        action: str,
        known_path: str | None = None,
    ) -> None:
        # Written out because the generated frozen __init__ calls object.__setattr__
        # per field: 0.70 us against 0.39 us here, on a path that costs ~14 us in all.
        _set_pid(self, pid)
        _set_uid(self, uid)
        _set_executable(self, executable)
        _set_fd(self, fd)
        _set_dev(self, dev)
        _set_ino(self, ino)
        _set_ctime_ns(self, ctime_ns)
        _set_action(self, action)
        _set_known_path(self, known_path)

    @property
    def path(self) -> str:
        """The opened file's path (readlink of ``/proc/self/fd/<fd>``), resolved lazily.

        Lazily because the warm path (a cached decision keyed by ids) does not need it
        and the readlink costs 3.6 us per open, a quarter of the guard's whole cost.
        """
        path = self.known_path
        if path is None:
            path = _fd_path(self.fd)
            _set_known_path(self, path)  # a cache, not a change of value
        return path


# The slot descriptors of Access: they store a field without going through the frozen
# __setattr__ (which refuses).
(
    _set_pid,
    _set_uid,
    _set_executable,
    _set_fd,
    _set_dev,
    _set_ino,
    _set_ctime_ns,
    _set_action,
    _set_known_path,
) = (Access.__dict__[f.name].__set__ for f in fields(Access))


@dataclass(frozen=True, slots=True)
class Change:
    """One change under a watched root."""

    kind: str  # write, create, rename, delete, mkdir, attrib
    path: str  # "" for a rename out of the watched trees
    old_path: str = ""  # renames only; "" for a rename into the trees
    pid: int = -1  # -1 when unknown (found by a listing rather than an event)
    uid: int = -1  # euid of pid if it still runs, else -1


@dataclass(frozen=True, slots=True)
class _Record:
    """One fid info record: a directory handle (+ name) on filesystem ``fsid``."""

    info_type: int
    fsid: int
    handle: bytes  # struct file_handle, as open_by_handle_at() takes it
    name: str


@dataclass(frozen=True, slots=True)
class _FidEvent:
    mask: int
    pid: int
    records: tuple[_Record, ...]

    def record(self, *types: int) -> _Record | None:
        """The first record of one of ``types``."""
        for r in self.records:
            if r.info_type in types:
                return r
        return None


def _parse_fid_events(buf: bytes | bytearray | memoryview, n: int) -> list[_FidEvent]:
    """Decode ``n`` bytes read from a FID-reporting group, closing any event fd."""
    events: list[_FidEvent] = []
    off = 0
    while off + _METADATA.size <= n:
        event_len, vers, _, meta_len, mask, fd, pid = _METADATA.unpack_from(buf, off)
        if vers != FANOTIFY_METADATA_VERSION:
            raise OSError(errno.EPROTO, f"fanotify metadata version {vers}, expected 3")
        if event_len < _METADATA.size or off + event_len > n:
            raise OSError(errno.EPROTO, f"fanotify event length {event_len} out of range")
        if fd >= 0:  # FID groups report FAN_NOFD, but never leak one if they do not
            _close_quietly(fd)
        records: list[_Record] = []
        rec, end = off + meta_len, off + event_len
        while rec + _INFO_HEADER.size <= end:
            info_type, _, rec_len = _INFO_HEADER.unpack_from(buf, rec)
            if rec_len < _INFO_HEADER.size or rec + rec_len > end:
                break
            if info_type in _FID_RECORD_TYPES:
                lo, hi = _FSID.unpack_from(buf, rec + 4)
                # glibc's statvfs() folds the two ints the same way into f_fsid.
                fsid = (lo & 0xFFFFFFFF) | ((hi & 0xFFFFFFFF) << 32)
                handle_bytes, _ = _FILE_HANDLE.unpack_from(buf, rec + 12)
                h_end = rec + 12 + _FILE_HANDLE.size + handle_bytes
                name = ""
                if info_type in _NAMED_RECORD_TYPES:
                    raw = bytes(buf[h_end : rec + rec_len]).split(b"\0", 1)[0]
                    name = os.fsdecode(raw)
                records.append(_Record(info_type, fsid, bytes(buf[rec + 12 : h_end]), name))
            rec += rec_len
        events.append(_FidEvent(mask, pid, tuple(records)))
        off += event_len
    return events


# --- directory trees --------------------------------------------------------------------
OnError = Callable[[Access | None, BaseException], None]
OnOverflow = Callable[[], None]


class _TreeWatcher:
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
        on_event: Callable[[_FidEvent], None] | None = None,
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
            _EVENT_F_FLAGS,
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
            self._thread.join(_STOP_TIMEOUT)
            if self._thread.is_alive():
                _logger.error(
                    "fanotify %s reader did not stop within %.0f s", self.name, _STOP_TIMEOUT
                )
            self._thread = None
        for fd in [self.fan_fd, self._wake_fd, *self._mount_fds.values()]:
            if fd >= 0:
                _close_quietly(fd)
        self.fan_fd = self._wake_fd = -1
        self._mount_fds.clear()
        self._fsids.clear()
        self._paths.clear()
        self._keys.clear()

    # -- marking
    def add_root(self, root: str) -> None:
        """Mark ``root`` and everything below it; OSError when the root itself fails."""
        fd = os.open(root, _DIR_OPEN)
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
                OSError(e.errno, f"{e.strerror}: new entries are not followed", _fd_path(fd))
            )
            return
        if self.remember_paths:
            try:
                handle = name_to_handle_at("", fd, _AT_EMPTY_PATH)
            except OSError:
                return
            self._remember((fsid, handle), _fd_path(fd))

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
            top_path = _fd_path(top_fd) if found is not None else ""
            stack.append((top_fd, top_path, self._subdirs(top_fd, top_path, found)))
            while stack:
                fd, path, names = stack[-1]
                if not names:
                    os.close(fd)
                    stack.pop()
                    continue
                name = names.pop()
                try:
                    child = os.open(name, _DIR_OPEN, dir_fd=fd)
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
                _close_quietly(fd)

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

    def add_child(self, record: _Record) -> list[tuple[str, bool]]:
        """Follow directory ``record.name``, new in the directory of ``record``.

        Returns what was in it already (path, is_dir): made before it was marked.
        """
        found: list[tuple[str, bool]] = []
        parent = self._open_dir(record, os.O_PATH)
        if parent < 0:
            return found
        try:
            child = os.open(record.name, _DIR_OPEN, dir_fd=parent)
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
            mount_fd = os.open(root, _DIR_OPEN)
        except OSError as e:
            return e
        try:
            os.close(open_by_handle_at(mount_fd, handle, os.O_PATH | os.O_CLOEXEC))
        except OSError as e:
            return e
        finally:
            os.close(mount_fd)
        return None

    def _open_dir(self, record: _Record, flags: int) -> int:
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

    def dir_path(self, record: _Record) -> str:
        """The current path of the directory of ``record``.

        A directory removed before its events are read no longer resolves; then the
        path remembered when it was marked is used ("" if there is none).
        """
        key = (record.fsid, record.handle)
        fd = self._open_dir(record, os.O_PATH)
        if fd < 0:
            return self._paths.get(key, "")
        try:
            path = _fd_path(fd)
        finally:
            os.close(fd)
        if self.remember_paths and path:
            self._remember(key, path)
        return path

    def path_of(self, record: _Record | None) -> str:
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
        buf = bytearray(_NOTIF_READ_BYTES)
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
            for event in _parse_fid_events(buf, n):
                self._dispatch(event)

    def _dispatch(self, event: _FidEvent) -> None:
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


def _abs_roots(roots: Iterable[Path | str]) -> list[str]:
    out = [os.path.realpath(os.fspath(r)) for r in roots]
    if not out:
        raise ConfigError("no protected roots given; name at least one directory to guard")
    return out


_CAP_HINT = (
    "fanotify needs CAP_SYS_ADMIN; run the agent as root (or grant it CAP_SYS_ADMIN) "
    "to enable it; the other sensors keep running"
)


# --- the permission guard -------------------------------------------------------------------
class PermissionGuard:
    """Answer every open under ``roots`` with ``decide(access)``, within ``deadline``.

    Design choices (see also the module docstring):

    * **Unlimited queue.** The group uses ``FAN_UNLIMITED_QUEUE``: when a bounded
      queue overflows the kernel drops the *permission* event and lets the open
      through (``fanotify_handle_event()`` frees it and returns 0), which would fail
      open. A permission event blocks its opener, so the queue is bounded anyway by
      the number of tasks waiting on it. ``FAN_UNLIMITED_MARKS`` because every
      directory of a protected tree carries a mark.
    * **Repeats in C, the rest on the reader thread.** An access that repeats one
      ``decide()`` passed to ``repeat()`` (same process, euid, executable, file
      version and action; all looked up again for every event) is answered by the C
      read loop, which never takes the GIL; ``take_repeats()`` hands over the counts
      and forgets the answers. Every other event comes back to Python with the
      opener and the file already looked up. ``decide()`` runs inline, with no thread
      hand-off; a watchdog thread answers DENY when a decision passes the deadline,
      calls ``on_timeout(access)``, and starts a fresh reader, so a slow decision
      never holds up the opens behind it. The late result is discarded (a result
      that arrives after the deadline is treated the same way even if the watchdog
      had no chance to run). When ``max_stuck`` such decisions are still running,
      ``decide()`` is not called at all: every open is denied and ``on_timeout``
      called, until they return (health ``degraded``); repeats of answers already
      given are still answered from C.
    * **Errors deny.** ``decide()`` raising denies the open and calls ``on_error``.
      The agent's own opens (its own pid) are allowed without asking ``decide()``.
    * **New directories** are marked by a notification group of our own
      (``FAN_CREATE | FAN_RENAME | FAN_ONDIR``) before they are listed; if that
      group overflows, the trees are listed and marked again and ``on_overflow``
      is called. Opens in a directory made less than a mark's round trip ago
      (about a millisecond) are not guarded; a file moved into such a directory
      and opened at once slips through, so labelled files should live in
      directories that exist when the guard starts.
    * **What marks cannot see**: a hard link to a protected file from outside the
      trees (marks are on directories, not files), and fds opened before
      ``start()``. Directories themselves are asked too (``FAN_ONDIR``: listing
      one opens it); an exec asks twice, ``execute`` then ``read``, both with the
      executable that is about to be replaced.
    * **stop()** removes the marks first (``FAN_MARK_FLUSH``), so no new open waits;
      events already queued are still decided by ``decide()``; then the fd is
      closed. Nothing is answered by default: closing a fanotify fd would make the
      kernel allow anything still pending, which is why the queue is drained first.
      Opens after ``stop()`` are not guarded, which is what stopping means.
    * **Reader failure fails open, loudly.** If reading the group fails, the fd is
      closed (the kernel then allows every open, rather than every open hanging)
      and health turns ``failed``.

    ``decide`` must not open files under the roots (it would wait for its own
    answer until the deadline); it gets the fd in ``Access`` instead.
    """

    name = "fanotify-guard"

    def __init__(
        self,
        roots: Sequence[Path | str],
        decide: Callable[[Access], bool],
        *,
        deadline: float = DEFAULT_DEADLINE,
        on_timeout: Callable[[Access], None] | None = None,
        on_overflow: OnOverflow | None = None,
        on_error: OnError | None = None,
        max_stuck: int = DEFAULT_MAX_STUCK,
    ) -> None:
        if deadline <= 0:
            raise ConfigError(f"deadline must be positive seconds, not {deadline!r}")
        self.roots = _abs_roots(roots)
        self._decide = decide
        self._deadline = deadline
        self._on_timeout = on_timeout
        self._on_overflow = on_overflow
        self._on_error = on_error
        self._max_stuck = max_stuck
        self._own_pid = os.getpid()
        self._health = Health("disabled", "not started")
        self._fan_fd = -1
        self._wake_memfd = -1
        self._tree: _TreeWatcher | None = None
        self._answers: Answers | None = None  # the read loop, answering repeats in C
        self._lock = threading.Lock()  # who answers an in-flight event: reader or watchdog
        self._inflight: tuple[Access, float] | None = None  # (access, monotonic start)
        self._handled = 0  # events decided so far; the watchdog parks when it stops moving
        self._stuck = 0  # readers abandoned in a decide() past its deadline
        self._readers = 0
        self._wd_parked = False
        self._wd_wake = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._stopping = False
        self._drained = threading.Event()  # a reader consumed the stop() wake-up
        self._drained_flag = False  # the same, as a plain attribute for the reader loop
        self._failed = ""
        self._root_errors: list[str] = []
        self._tree_warning = ""
        self._running = False
        self._wd_exit = False
        self._stop_lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Create the groups, start the threads, then mark every directory under the roots.

        Marking happens here, synchronously, so that when ``start()`` returns every
        existing directory is guarded. Without CAP_SYS_ADMIN it logs one line and
        returns with health ``disabled``.
        """
        if self._running:
            return
        try:
            self._fan_fd = fanotify_init(
                FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_UNLIMITED_QUEUE | FAN_UNLIMITED_MARKS,
                _EVENT_F_FLAGS,
            )
        except OSError as e:
            if e.errno == errno.EPERM:
                detail = f"file guard disabled: {_CAP_HINT}"
            else:
                detail = (
                    "file guard disabled: this kernel has no fanotify permission events "
                    f"({e.strerror}); it needs CONFIG_FANOTIFY_ACCESS_PERMISSIONS"
                )
            _logger.warning("%s", detail)
            self._health = Health("disabled", detail)
            return
        tree = _TreeWatcher(
            "guard-dirs",
            self.roots,
            FAN_CREATE | FAN_RENAME | FAN_ONDIR | FAN_EVENT_ON_CHILD,
            extra_marks=[(self._fan_fd, self._perm_mask)],
            on_overflow=self._on_overflow,
            on_error=lambda e: self._report_error(None, e),
        )
        try:
            tree.open()
        except OSError as e:
            _close_quietly(self._fan_fd)
            self._fan_fd = -1
            detail = f"file guard failed: cannot create its directory watch group: {e}"
            _logger.error("%s", detail)
            self._health = Health("failed", detail)
            return
        self._own_pid = os.getpid()  # here, not in __init__: the agent may have forked since
        self._answers = Answers(self._fan_fd, self._own_pid, ANSWERS_KEPT)
        self._running = True
        self._tree = tree
        self._stopping = self._wd_exit = False
        self._failed = self._tree_warning = ""
        self._root_errors = []
        self._drained.clear()
        self._drained_flag = False
        self._wake_memfd = os.memfd_create("baomi-guard-wake", os.MFD_CLOEXEC)
        self._start_reader()  # before marking: listing the trees opens directories
        self._watchdog = threading.Thread(
            target=self._watch, name="fanotify-guard-watchdog", daemon=True
        )
        self._watchdog.start()
        tree.start_thread()
        for root in self.roots:
            try:
                tree.add_root(root)
            except OSError as e:
                msg = f"{root}: {e.strerror or e}"
                self._root_errors.append(msg)
                _logger.error("file guard cannot guard %s", msg)
        if tree.marked_dirs and (err := tree.check_handles(tree.roots[0])) is not None:
            self._tree_warning = f"new directories are not followed: {err}"
            _logger.error("file guard: %s", self._tree_warning)
        self._health = self._current_health()

    _perm_mask = FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM | FAN_EVENT_ON_CHILD | FAN_ONDIR

    def stop(self) -> None:
        """Stop guarding: unmark, decide what is already queued, end threads, close fds.

        Must not be called from ``decide()``. Readers abandoned in a ``decide()`` that
        never returned keep their one event fd until it does.
        """
        if threading.current_thread().name.startswith("fanotify-guard-reader"):
            raise RuntimeError(
                "PermissionGuard.stop() called from decide(); it would wait for itself"
            )
        with self._stop_lock:
            self._stop_locked()

    def _stop_locked(self) -> None:
        if not self._running:
            return
        self._stopping = True
        if self._tree is not None:
            self._tree.stop()  # no directory is marked from here on
            self._tree = None
        if not self._failed:
            # No new open waits from here on; what is queued is still decided.
            with contextlib.suppress(OSError):
                fanotify_mark(self._fan_fd, FAN_MARK_FLUSH, 0, _AT_FDCWD, None)
            self._wake_readers()
        self._wd_exit = True
        self._wd_wake.set()
        if self._watchdog is not None:
            self._watchdog.join(_STOP_TIMEOUT)
            self._watchdog = None
        fan, self._fan_fd = self._fan_fd, -1
        if fan >= 0:
            _close_quietly(fan)
        _close_quietly(self._wake_memfd)
        self._wake_memfd = -1
        if self._answers is not None:
            self._answers.close()  # its counts stay for take_repeats()
        self._running = False
        self._health = Health("disabled", "stopped")

    def _wake_readers(self) -> None:
        """Queue one event behind everything pending and wait for a reader to reach it.

        A blocking read() cannot be interrupted from Python and closing the fd under
        it would not wake it, so the guard marks a memfd of its own and opens it: the
        event lands after every real one (the queue is FIFO), and the reader that
        answers it knows the queue is drained.
        """
        try:
            fanotify_mark(self._fan_fd, FAN_MARK_ADD, FAN_OPEN_PERM, self._wake_memfd, None)
        except OSError as e:
            _logger.error("file guard cannot wake its reader to stop: %s", e)
            return

        def poke() -> None:
            with contextlib.suppress(OSError):
                os.close(os.open(f"/proc/self/fd/{self._wake_memfd}", os.O_RDONLY | os.O_CLOEXEC))

        # In a thread of its own so that a reader that died cannot hang stop().
        poker = threading.Thread(target=poke, name="fanotify-guard-stop", daemon=True)
        poker.start()
        if not self._drained.wait(_STOP_TIMEOUT):
            _logger.error("file guard reader did not drain within %.0f s; closing", _STOP_TIMEOUT)
        poker.join(_STOP_TIMEOUT)

    # -- repeats ---------------------------------------------------------------------------
    def repeat(self, access: Access, allow: bool, token: object) -> bool:
        """Give ``allow`` to every repeat of ``access`` without calling ``decide()``.

        A repeat is an open by the same process, with the same euid and executable,
        of the same file version (dev, inode, ctime: a label change makes a new
        version) for the same action; it is answered in C and counted against
        ``token`` until ``take_repeats()``. Call it from ``decide()``. False when the
        answer cannot be kept (table full, guard stopped): repeats are then decided
        afresh.
        """
        answers = self._answers
        if answers is None or not self._running:
            return False
        return answers.remember(
            access.pid,
            access.uid,
            access.executable,
            access.dev,
            access.ino,
            access.ctime_ns,
            access.action == "execute",
            allow,
            token,
        )

    def take_repeats(self) -> list[tuple[object, int, int, int]]:
        """(token, count, first_ns, last_ns) of the repeats answered since the last call.

        Every remembered answer is forgotten: the next open of each is decided
        afresh. Call it when what decisions depend on changes (policy, subjects) and
        periodically, so that no answer outlives the period the caller reports in.
        Works after ``stop()`` too, for the repeats counted before it.
        """
        answers = self._answers
        return [] if answers is None else answers.take()

    def health(self) -> Health:
        """ok, degraded (decisions stuck past the deadline), disabled or failed."""
        if self._running:
            self._health = self._current_health()
        return self._health

    def _current_health(self) -> Health:
        if self._failed:
            return Health("failed", self._failed)
        if self._root_errors:
            return Health("failed", "not guarded: " + "; ".join(self._root_errors))
        tree = self._tree
        problems = []
        if self._stuck:
            problems.append(f"{self._stuck} decisions still running past the deadline")
        if self._tree_warning:
            problems.append(self._tree_warning)
        if tree is not None and tree.failed:
            problems.append(f"new directories are not followed: {tree.failed}")
        if tree is not None and tree.unfollowed:
            problems.append(f"new entries of {tree.unfollowed} directories are not followed")
        if problems:
            return Health("degraded", "; ".join(problems))
        marked = tree.marked_dirs if tree is not None else 0
        return Health("ok", f"guarding {marked} directories under {len(self.roots)} roots")

    # -- the reader ------------------------------------------------------------------------
    def _start_reader(self) -> None:
        self._readers += 1
        t = threading.Thread(
            target=self._serve, name=f"fanotify-guard-reader-{self._readers}", daemon=True
        )
        t.start()

    def _serve(self) -> None:
        """Read permission events and answer each; returns when drained or replaced.

        ``Answers.next()`` (C, without the GIL) answers repeats of remembered
        decisions itself and returns only the events that need ``decide()``.
        """
        answers = self._answers
        assert answers is not None  # noqa: S101 - start() made it before any reader
        handle = self._handle
        try:
            while not self._drained_flag:
                if not handle(*answers.next()):
                    return  # the watchdog answered for us and started another reader
        except Exception as e:  # noqa: BLE001 - any failure ends the reader: fail loudly
            if self._stopping and isinstance(e, OSError) and e.errno == errno.EBADF:
                return
            self._fail(f"file guard reader failed: {e}")

    def _handle(  # noqa: PLR0917 - the fields of one event, as Answers.next() gives them
        self,
        fd: int,
        pid: int,
        mask: int,
        uid: int,
        exe: str,
        dev: int,
        ino: int,
        ctime_ns: int,
        stat_errno: int,
    ) -> bool:
        """Decide one event; False when this reader was replaced and must end.

        The opener's uid and executable and the file's identity come looked up
        (``Answers.next()``); here: ``decide()``, one write, one close, on the reader
        thread (no hand-off).
        """
        if pid == self._own_pid:
            return self._handle_own(fd)
        if stat_errno:
            self._answer(fd, FAN_DENY)
            self._report_error(None, OSError(stat_errno, os.strerror(stat_errno)))
            return True
        # Callbacks other than decide() get an Access whose path is already resolved:
        # the fd is closed by the time they might read it.
        action = "execute" if mask & FAN_OPEN_EXEC_PERM else "read"
        access = Access(pid, uid, exe, fd, dev, ino, ctime_ns, action)
        if self._stuck >= self._max_stuck:
            _ = access.path
            self._answer(fd, FAN_DENY)
            self._call_timeout(access)
            return True
        started = time.monotonic()
        mine = (access, started)
        self._inflight = mine
        if self._wd_parked:
            self._wd_wake.set()
        error: Exception | None = None
        try:
            allowed = self._decide(access)
        except Exception as e:  # noqa: BLE001 - whatever decide() raises, the open is denied
            allowed, error = False, e
        with self._lock:
            taken = self._inflight is not mine
            if not taken:
                self._inflight = None
        self._handled += 1
        if taken:
            os.close(fd)  # the watchdog has answered DENY; the fd was left for us
            with self._lock:
                self._stuck -= 1
            return False
        if time.monotonic() - started > self._deadline:
            # Late, and the watchdog had no chance to run (GIL held): same as a timeout.
            _ = access.path
            self._answer(fd, FAN_DENY)
            if error is None:
                self._call_timeout(access)
            else:
                self._report_error(access, error)
            return True
        if error is not None:
            _ = access.path
        try:
            os.write(self._fan_fd, _RESPONSE.pack(fd, FAN_ALLOW if allowed else FAN_DENY))
        finally:
            os.close(fd)
        if error is not None:
            self._report_error(access, error)
        return True

    def _handle_own(self, fd: int) -> bool:
        """The agent's own opens (listing new directories, stop()'s wake-up): allowed."""
        try:
            self._respond(fd, FAN_ALLOW)
            if self._stopping and self._is_wake(fd):
                self._drained_flag = True
                self._drained.set()
        finally:
            os.close(fd)
        return True

    def _answer(self, fd: int, response: int) -> None:
        try:
            self._respond(fd, response)
        finally:
            os.close(fd)

    def _respond(self, fd: int, response: int) -> None:
        try:
            os.write(self._fan_fd, _RESPONSE.pack(fd, response))
        except OSError as e:
            # ENOENT: no such pending event (already answered); nothing to undo.
            if e.errno != errno.ENOENT:
                raise

    def _is_wake(self, fd: int) -> bool:
        try:
            a, b = os.fstat(fd), os.fstat(self._wake_memfd)
        except OSError:
            return False
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

    # -- the deadline watchdog -------------------------------------------------------------
    def _watch(self) -> None:
        """Deny any decision older than the deadline; park while nothing happens."""
        deadline = self._deadline
        last_handled = -1
        while not self._wd_exit:
            snap = self._inflight
            if snap is None:
                if self._handled == last_handled and not self._stopping:
                    # Quiet for a whole deadline: sleep until a reader has work. The
                    # reader sets _inflight, then reads _wd_parked; we set _wd_parked,
                    # then read _inflight, so one of us always sees the other (stop()
                    # likewise sets _wd_exit before it sets the event).
                    self._wd_wake.clear()
                    self._wd_parked = True
                    if self._inflight is None and not self._wd_exit:
                        self._wd_wake.wait()
                    self._wd_parked = False
                else:
                    last_handled = self._handled
                    self._wd_wake.wait(deadline)
                    self._wd_wake.clear()
                continue
            access, started = snap
            remaining = started + deadline - time.monotonic()
            if remaining > 0:
                time.sleep(remaining)
                continue
            with self._lock:
                if self._inflight is not snap:
                    continue  # answered meanwhile
                self._inflight = None
                self._stuck += 1
                _ = access.path  # the abandoned reader closes the fd only after this lock
                self._respond(access.fd, FAN_DENY)
            self._start_reader()
            self._call_timeout(access)

    # -- callbacks -------------------------------------------------------------------------
    def _call_timeout(self, access: Access) -> None:
        if self._on_timeout is None:
            _logger.warning("file guard denied %s: no decision within the deadline", access)
            return
        try:
            self._on_timeout(access)
        except Exception:
            _logger.exception("file guard on_timeout failed")

    def _report_error(self, access: Access | None, error: BaseException) -> None:
        if self._on_error is None:
            _logger.error("file guard error (open denied): %s", error)
            return
        try:
            self._on_error(access, error)
        except Exception:
            _logger.exception("file guard on_error failed")

    def _fail(self, detail: str) -> None:
        """The reader cannot go on: close the group so opens are allowed, not hung."""
        _logger.error("%s; closing the fanotify group, files are NOT guarded", detail)
        self._failed = detail
        self._health = Health("failed", detail)
        self._drained_flag = True
        self._drained.set()
        fan, self._fan_fd = self._fan_fd, -1
        if fan >= 0:
            _close_quietly(fan)


# --- the change watcher ----------------------------------------------------------------------
class ChangeWatcher:
    """Report writes, creations, renames, deletions and attribute changes as ``Change``.

    A notification group with ``FAN_REPORT_DFID_NAME``: each event names the
    directory (by file handle, resolved with ``open_by_handle_at``) and the entry.
    Renames come as one ``FAN_RENAME`` event carrying both the old and the new name,
    so no pairing is needed; a rename out of (into) the trees has ``path``
    (``old_path``) "". A write is reported at the first ``FAN_MODIFY`` of a file and
    not again until it is closed (``FAN_CLOSE_WRITE``), so a large copy is one
    change, not one per write(). On queue overflow ``on_overflow()`` is called, the
    trees are marked again and watching goes on. Entries found while listing a
    directory that just appeared are reported as create/mkdir with pid -1 (they may
    have been made before its mark), so a change may be reported twice, never lost.
    ``attrib`` is a change of a file's metadata (mode, owner, times, extended
    attributes -- labels among them) by a process other than this one.
    """

    name = "fanotify-changes"

    _mask = (
        FAN_MODIFY
        | FAN_CLOSE_WRITE
        | FAN_ATTRIB
        | FAN_CREATE
        | FAN_DELETE
        | FAN_RENAME
        | FAN_ONDIR
        | FAN_EVENT_ON_CHILD
    )

    def __init__(
        self,
        roots: Sequence[Path | str],
        on_change: Callable[[Change], None],
        *,
        on_overflow: OnOverflow | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.roots = _abs_roots(roots)
        self._on_change = on_change
        self._own_pid = os.getpid()  # its own attribute changes (labels it writes) are not news
        self._on_overflow = on_overflow
        self._on_error = on_error
        self._tree: _TreeWatcher | None = None
        self._dirty: set[str] = set()  # written files whose close we have not seen
        self._health = Health("disabled", "not started")

    def start(self) -> None:
        """Create the group, mark the trees and start the reader thread."""
        if self._tree is not None:
            return
        self._own_pid = os.getpid()
        tree = _TreeWatcher(
            "changes",
            self.roots,
            self._mask,
            on_event=self._convert,
            on_found=self._found,
            on_overflow=self._on_overflow,
            on_error=self._on_error,
            remember_paths=True,
        )
        try:
            tree.open()
        except OSError as e:
            detail = (
                f"file change watcher disabled: {_CAP_HINT}"
                if e.errno == errno.EPERM
                else f"file change watcher disabled: fanotify_init failed: {e.strerror}"
            )
            _logger.warning("%s", detail)
            self._health = Health("disabled", detail)
            return
        # Unprivileged processes may create FID notification groups, but only
        # CAP_DAC_READ_SEARCH resolves the handles: find out before marking anything.
        err = None
        for root in self.roots:
            err = tree.check_handles(root)
            if err is None or err.errno not in (errno.ENOENT, errno.ENOTDIR):
                break  # a missing root is reported below, with the others
        if err is not None and err.errno not in (errno.ENOENT, errno.ENOTDIR):
            tree.stop()
            detail = f"file change watcher disabled: cannot resolve file handles ({err.strerror})"
            if err.errno == errno.EPERM:
                detail += f"; {_CAP_HINT}"
            _logger.warning("%s", detail)
            self._health = Health("disabled", detail)
            return
        errors = []
        for root in self.roots:
            try:
                tree.add_root(root)
            except OSError as e:
                errors.append(f"{root}: {e.strerror or e}")
        if tree.marked_dirs == 0:
            tree.stop()
            detail = "file change watcher failed: " + "; ".join(errors)
            _logger.error("%s", detail)
            self._health = Health("failed", detail)
            return
        self._tree = tree
        tree.start_thread()
        self._health = (
            Health("failed", "not watched: " + "; ".join(errors))
            if errors
            else Health("ok", f"watching {tree.marked_dirs} directories")
        )

    def stop(self) -> None:
        """Report what is queued, end the thread, close every fd."""
        if self._tree is not None:
            self._tree.stop()
            self._tree = None
            self._health = Health("disabled", "stopped")

    def health(self) -> Health:
        """ok, degraded (some directories not watched), disabled or failed."""
        tree = self._tree
        if tree is not None and tree.failed:
            return Health("failed", tree.failed)
        if tree is not None and tree.unfollowed and self._health.state == "ok":
            return Health("degraded", f"{tree.unfollowed} directories are not watched")
        return self._health

    def _emit(self, change: Change) -> None:
        try:
            self._on_change(change)
        except Exception:
            _logger.exception("file change handler failed")

    def _found(self, path: str, is_dir: bool) -> None:
        self._emit(Change("mkdir" if is_dir else "create", path))

    def _convert(self, event: _FidEvent) -> None:
        tree = self._tree
        if tree is None:
            return
        mask, pid = event.mask, event.pid
        uid = _proc_uid(pid)
        if mask & FAN_RENAME:
            old = tree.path_of(event.record(FAN_EVENT_INFO_TYPE_OLD_DFID_NAME))
            new = tree.path_of(event.record(FAN_EVENT_INFO_TYPE_NEW_DFID_NAME))
            if old in self._dirty:
                self._dirty.discard(old)
                if new:
                    self._dirty.add(new)
            if mask & FAN_ONDIR and old:
                tree.moved_dir(old, new)
            self._emit(Change("rename", new, old, pid, uid))
            return
        path = tree.path_of(event.record(FAN_EVENT_INFO_TYPE_DFID_NAME))
        if not path:
            return  # the directory is gone already: its own delete is reported
        # A queued event can carry several bits (the kernel merges events on the same
        # name); report them in the order they must have happened.
        if mask & FAN_CREATE:
            self._emit(Change("mkdir" if mask & FAN_ONDIR else "create", path, "", pid, uid))
        if mask & FAN_MODIFY and path not in self._dirty:
            self._emit(Change("write", path, "", pid, uid))
            if not mask & FAN_CLOSE_WRITE:
                if len(self._dirty) >= _DIRTY_MAX:
                    self._dirty.clear()  # worst case: a long write is reported again
                self._dirty.add(path)
        elif mask & FAN_CLOSE_WRITE:
            self._dirty.discard(path)
        if mask & FAN_ATTRIB and pid != self._own_pid:
            self._emit(Change("attrib", path, "", pid, uid))
        if mask & FAN_DELETE:
            self._dirty.discard(path)
            # (A merged mkdir + rmdir may also be rmdir + mkdir: forget only what is gone.)
            if mask & FAN_ONDIR and not Path(path).is_dir():
                tree.forget_dir(path)
            self._emit(Change("delete", path, "", pid, uid))
