"""fanotify bindings: the kernel edge of the secret-file guard.

A thin ctypes binding of ``fanotify_init(2)``, ``fanotify_mark(2)``,
``name_to_handle_at(2)`` and ``open_by_handle_at(2)`` (there is no well-kept Python
fanotify library), the decoding of events of FID-reporting groups, and the small
helpers the readers share. The readers built on it live beside it:

``trees.TreeWatcher``           keeps every directory under the protected roots marked
``permission.PermissionGuard``  answers every open with a decision (C read loop)
``changes.ChangeWatcher``       reports writes, creations, renames, deletions, attributes
``export.ExportGuard``          answers opens in the places export rules name
``spread.FilesystemWrites``     reports writes anywhere on the protected trees' filesystems

fanotify needs ``CAP_SYS_ADMIN``: without it a reader logs one line and says
``disabled`` in its health, so the agent keeps its other sensors.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import ConfigError

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
FAN_PRE_ACCESS = 0x00100000  # Linux 6.14: before a read, write or truncate of an open file
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
RESPONSE = struct.Struct("=iI")

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
STOP_TIMEOUT = 5.0  # seconds stop() waits for a reader thread to finish
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000

# Directories are opened without following a final symlink: a symlink in a protected
# tree points outside it, and its target is not ours to mark.
DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
EVENT_F_FLAGS = os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC


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
    fan_fd: int, flags: int, mask: int, dirfd: int = AT_FDCWD, path: str | None = None
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


def name_to_handle_at(path: str, dirfd: int = AT_FDCWD, flags: int = 0) -> bytes:
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


def fd_path(fd: int) -> str:
    """The path the kernel gives for an open fd ("" when it cannot)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")  # noqa: PTH115 - hot path: no Path object
    except OSError:
        return ""


def proc_uid(pid: int) -> int:
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


def close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


@dataclass(frozen=True, slots=True)
class FidRecord:
    """One fid info record: a directory handle (+ name) on filesystem ``fsid``."""

    info_type: int
    fsid: int
    handle: bytes  # struct file_handle, as open_by_handle_at() takes it
    name: str


@dataclass(frozen=True, slots=True)
class FidEvent:
    mask: int
    pid: int
    records: tuple[FidRecord, ...]

    def record(self, *types: int) -> FidRecord | None:
        """The first record of one of ``types``."""
        for r in self.records:
            if r.info_type in types:
                return r
        return None


def parse_fid_events(buf: bytes | bytearray | memoryview, n: int) -> list[FidEvent]:
    """Decode ``n`` bytes read from a FID-reporting group, closing any event fd."""
    events: list[FidEvent] = []
    off = 0
    while off + _METADATA.size <= n:
        event_len, vers, _, meta_len, mask, fd, pid = _METADATA.unpack_from(buf, off)
        if vers != FANOTIFY_METADATA_VERSION:
            raise OSError(errno.EPROTO, f"fanotify metadata version {vers}, expected 3")
        if event_len < _METADATA.size or off + event_len > n:
            raise OSError(errno.EPROTO, f"fanotify event length {event_len} out of range")
        if fd >= 0:  # FID groups report FAN_NOFD, but never leak one if they do not
            close_quietly(fd)
        records: list[FidRecord] = []
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
                records.append(FidRecord(info_type, fsid, bytes(buf[rec + 12 : h_end]), name))
            rec += rec_len
        events.append(FidEvent(mask, pid, tuple(records)))
        off += event_len
    return events


def abs_roots(roots: Iterable[Path | str]) -> list[str]:
    out = [os.path.realpath(os.fspath(r)) for r in roots]
    if not out:
        raise ConfigError("no protected roots given; name at least one directory to guard")
    return out


def under_roots(path: str, roots: Iterable[str]) -> bool:
    """Whether absolute ``path`` is one of ``roots`` (``abs_roots``) or below one."""
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def pre_content_problem(paths: Iterable[str]) -> str:
    """Why writes under ``paths`` cannot be decided through pre-content events ("" when
    they can): a ``FAN_PRE_ACCESS`` mark on each, in a throw-away group, is refused
    with EINVAL by kernels before 6.14 and with EOPNOTSUPP by filesystems without
    pre-content events. Needs CAP_SYS_ADMIN, like any permission group."""
    try:
        probe = fanotify_init(FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC, EVENT_F_FLAGS)
    except OSError as e:
        return f"cannot make a pre-content group: {e.strerror}"
    try:
        for path in paths:
            try:
                fanotify_mark(probe, FAN_MARK_ADD, FAN_PRE_ACCESS, AT_FDCWD, path)
            except OSError as e:
                if e.errno == errno.EINVAL:
                    return "this kernel has no pre-content fanotify events (Linux 6.14 has)"
                if e.errno == errno.EOPNOTSUPP:
                    return (
                        f"the filesystem of {path} has no pre-content events "
                        "(ext4, xfs and btrfs have)"
                    )
                return f"{path}: {e.strerror}"
    finally:
        os.close(probe)
    return ""


CAP_HINT = (
    "fanotify needs CAP_SYS_ADMIN; run the agent as root (or grant it CAP_SYS_ADMIN) "
    "to enable it; the other sensors keep running"
)
