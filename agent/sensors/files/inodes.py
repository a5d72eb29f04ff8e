"""The labelled inodes of a host: which files carry a label, wherever they are now.

Marks on directories see only opens through the protected trees. A labelled file
hard-linked or renamed elsewhere on the same filesystem, or reached through a bind
mount, is the same inode: the file guard marks each labelled inode itself, so every
open of it asks the guard, by whatever path. This set says which inodes those are:

* kept in memory by ``(st_dev, st_ino)`` with the file's identity (filesystem id,
  inode, birth time: ``baomi.labels.file_identity``), so a reused inode number is not
  taken for the file that had it, and with the file's home;
* kept on disk in ``labelled.db`` in the agent's state directory (SQLite), by file
  handle (``name_to_handle_at``), so a labelled file moved out of the trees is found
  and marked again when the agent starts; a handle that no longer resolves is a file
  that is gone, and is forgotten;
* rebuilt at every start by a scan of the protected trees.

A file this set knows as labelled whose label has gone is denied and recorded (a
stripped label never reads as "unclassified").

New entries reach the disk in batches (``persist()``, called about once a second by
the file guard); an entry made less than that before a crash is found again by the
next start's scan while the file is still under a protected root.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from baomi.labels import XATTR_PREFIX, file_identity

from agent.sensors.files.fanotify import (
    AT_EMPTY_PATH,
    DIR_OPEN,
    name_to_handle_at,
    open_by_handle_at,
)

_logger = logging.getLogger(__name__)

DB_FILE = "labelled.db"  # in the agent's state directory
MAX_INODES = 1_000_000  # labelled inodes kept; past it new ones are guarded but not kept
#: SQLite's page cache for the set: it is read through once at start and then written
#: in batches, so a cache buys nothing, and the default 2 MB would stay resident.
CACHE_KIB = 64


_SCHEMA = """
CREATE TABLE IF NOT EXISTS inodes (
    fsid     INTEGER NOT NULL,
    handle   BLOB    NOT NULL,
    identity BLOB    NOT NULL,
    home     TEXT    NOT NULL,
    PRIMARY KEY (fsid, handle)
) WITHOUT ROWID;
"""


def inode_key(dev: int, ino: int) -> int:
    """``(dev, ino)`` as one int, the key of the guard's per-inode tables: ~40 bytes a
    key, where a tuple and its two ints take ~120 (a few hundred KB for 2,000 files)."""
    return dev << 64 | ino


def split_inode_key(key: int) -> tuple[int, int]:
    """``(dev, ino)`` of an :func:`inode_key`."""
    return key >> 64, key & (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Known:
    """One labelled inode: what makes it this file, where it is at home."""

    identity: bytes  # baomi.labels.file_identity
    home: str


@dataclass(frozen=True, slots=True)
class _Row:
    fsid: int
    handle: bytes
    identity: bytes
    home: str


class LabelledInodes:
    """The set of labelled inodes, in memory and in ``<state>/labelled.db``."""

    def __init__(self, db_path: Path | None) -> None:
        self._db_path = db_path
        self._db: sqlite3.Connection | None = None
        self._known: dict[int, Known] = {}  # by inode_key
        self._pending: list[_Row] = []
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------
    def open(self) -> None:
        """Open (or make) the database; without a state directory the set is memory only."""
        if self._db_path is None or self._db is not None:
            return
        self._db = sqlite3.connect(self._db_path, isolation_level=None, check_same_thread=False)
        with contextlib.suppress(OSError):
            self._db_path.chmod(0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Write what is pending and close the database."""
        self.persist()
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- queries -------------------------------------------------------------------------
    def get(self, dev: int, ino: int) -> Known | None:
        """The labelled inode ``(dev, ino)``, if it is one."""
        return self._known.get(inode_key(dev, ino))

    def __len__(self) -> int:
        return len(self._known)

    # -- changes -------------------------------------------------------------------------
    def add(
        self, fd: int, home: str, *, key: tuple[int, int] | None = None, identity: bytes = b""
    ) -> bool:
        """Remember the labelled file open as ``fd`` (any fd, O_PATH too); True if new.

        Call it with the kernel's fd of a permission event, or one the caller opened
        with ``O_PATH`` (which no permission event sees). ``key`` (dev, inode) and
        ``identity`` (``file_identity``) when the caller has them already.
        """
        if key is None:
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino)
        identity = identity or file_identity(fd)
        at = inode_key(*key)
        known = self._known.get(at)
        if known is not None and known.identity == identity and known.home == home:
            if known.home is not home:  # keep the caller's string (a label's home), not a copy
                with self._lock:  # and only if no other writer replaced the entry meanwhile
                    if self._known.get(at) is known:
                        self._known[at] = Known(known.identity, home)
            return False
        with self._lock:
            if len(self._known) >= MAX_INODES and at not in self._known:
                _logger.warning("more than %d labelled inodes: %s is not kept", MAX_INODES, home)
                return True
            self._known[at] = Known(identity, home)
            if self._db_path is not None:
                try:
                    handle = name_to_handle_at("", fd, AT_EMPTY_PATH)
                except OSError as e:
                    _logger.warning("no file handle for %s (%s): not kept on disk", home, e)
                else:
                    fsid = os.fstatvfs(fd).f_fsid & (2**63 - 1)
                    self._pending.append(_Row(fsid, handle, identity, home))
        return True

    def persist(self) -> None:
        """Write the entries added since the last call."""
        with self._lock:
            rows, self._pending = self._pending, []
        if not rows or self._db is None:
            return
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT OR REPLACE INTO inodes VALUES (?, ?, ?, ?)",
                    [(r.fsid, r.handle, r.identity, r.home) for r in rows],
                )
        except sqlite3.Error as e:
            _logger.error("cannot keep %d labelled inodes in %s: %s", len(rows), self._db_path, e)

    # -- start: what is known on disk, and what the trees hold ----------------------------
    def reopen_known(self, mount_fds: dict[int, int]) -> Iterator[tuple[int, str]]:
        """Open (``O_PATH``) every labelled inode kept on disk: yields ``(fd, home)``.

        ``mount_fds`` maps a filesystem id to an fd on that filesystem. The caller
        marks and closes each fd. Entries whose file is gone (or whose inode now
        belongs to another file) are removed.
        """
        if self._db is None:
            return
        gone: list[tuple[int, bytes]] = []
        # Row by row, not all rows at once: those would be short-lived objects laid
        # between the entries kept, holes that keep Python's allocator larger for good.
        rows = self._db.execute("SELECT fsid, handle, identity, home FROM inodes")
        for fsid, handle, identity, home in rows:
            mount_fd = mount_fds.get(fsid)
            if mount_fd is None:
                continue  # a filesystem no protected root is on now: keep the entry
            try:
                fd = open_by_handle_at(mount_fd, handle, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                gone.append((fsid, handle))
                continue
            try:
                if file_identity(fd) != identity:
                    gone.append((fsid, handle))
                    os.close(fd)
                    continue
            except OSError:
                os.close(fd)
                continue
            st = os.fstat(fd)
            self._known[inode_key(st.st_dev, st.st_ino)] = Known(identity, home)
            yield fd, home
        if gone:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany("DELETE FROM inodes WHERE fsid = ? AND handle = ?", gone)


def scan(
    roots: Sequence[str], found: Callable[[int, str], None], on_error: Callable[[str], None]
) -> int:
    """Call ``found(fd, path)`` for every labelled regular file under ``roots``.

    ``fd`` is an ``O_PATH`` descriptor (no permission event), closed after the call.
    Symlinks are not followed. Returns the number of labelled files found.
    """
    count = 0
    for root in roots:
        stack = [root]
        while stack:
            top = stack.pop()
            try:
                entries = list(os.scandir(top))
            except OSError as e:
                on_error(f"{top}: {e.strerror}")
                continue
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    names = os.listxattr(entry.path, follow_symlinks=False)
                except OSError:
                    continue  # gone since the listing, or no xattrs on this filesystem
                if not any(n.startswith(XATTR_PREFIX) for n in names):
                    continue
                try:
                    fd = os.open(entry.path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
                except OSError:
                    continue
                try:
                    if stat.S_ISREG(os.fstat(fd).st_mode):
                        found(fd, entry.path)
                        count += 1
                finally:
                    os.close(fd)
    return count


def mount_fds(roots: Sequence[str]) -> dict[int, int]:
    """An fd (directory) on the filesystem of each root, by filesystem id; caller closes."""
    out: dict[int, int] = {}
    for root in roots:
        try:
            fd = os.open(root, DIR_OPEN)
        except OSError:
            continue
        fsid = os.fstatvfs(fd).f_fsid & (2**63 - 1)
        if fsid in out:
            os.close(fd)
        else:
            out[fsid] = fd
    return out
