"""The change path: writes, creations, renames, deletions and attribute changes."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.sensors.base import Health
from agent.sensors.files.fanotify import (
    CAP_HINT,
    FAN_ATTRIB,
    FAN_CLOSE_WRITE,
    FAN_CREATE,
    FAN_DELETE,
    FAN_EVENT_INFO_TYPE_DFID_NAME,
    FAN_EVENT_INFO_TYPE_NEW_DFID_NAME,
    FAN_EVENT_INFO_TYPE_OLD_DFID_NAME,
    FAN_EVENT_ON_CHILD,
    FAN_MODIFY,
    FAN_ONDIR,
    FAN_RENAME,
    FidEvent,
    abs_roots,
    proc_uid,
)
from agent.sensors.files.trees import OnOverflow, TreeWatcher

_logger = logging.getLogger(__name__)

DIRTY_MAX = 10_000  # files with a reported, unclosed write that ChangeWatcher remembers


@dataclass(frozen=True, slots=True)
class Change:
    """One change under a watched root."""

    kind: str  # write, create, rename, delete, mkdir, attrib
    path: str  # "" for a rename out of the watched trees
    old_path: str = ""  # renames only; "" for a rename into the trees
    pid: int = -1  # -1 when unknown (found by a listing rather than an event)
    uid: int = -1  # euid of pid if it still runs, else -1


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
        on_written: Callable[[str, int], None] | None = None,
    ) -> None:
        self.roots = abs_roots(roots)
        self._on_change = on_change
        # (path, pid) at every close after a write: who finished writing what
        self._on_written = on_written
        self._own_pid = os.getpid()  # its own attribute changes (labels it writes) are not news
        self._on_overflow = on_overflow
        self._on_error = on_error
        self._tree: TreeWatcher | None = None
        self._dirty: set[str] = set()  # written files whose close we have not seen
        self._health = Health("disabled", "not started")

    def start(self) -> None:
        """Create the group, mark the trees and start the reader thread."""
        if self._tree is not None:
            return
        self._own_pid = os.getpid()
        tree = TreeWatcher(
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
                f"file change watcher disabled: {CAP_HINT}"
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
                detail += f"; {CAP_HINT}"
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

    def _convert(self, event: FidEvent) -> None:
        tree = self._tree
        if tree is None:
            return
        mask, pid = event.mask, event.pid
        uid = proc_uid(pid)
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
                if len(self._dirty) >= DIRTY_MAX:
                    self._dirty.clear()  # worst case: a long write is reported again
                self._dirty.add(path)
        elif mask & FAN_CLOSE_WRITE:
            self._dirty.discard(path)
        if mask & FAN_CLOSE_WRITE and self._on_written is not None:
            try:
                self._on_written(path, pid)
            except Exception:
                _logger.exception("file written handler failed")
        if mask & FAN_ATTRIB and pid != self._own_pid:
            self._emit(Change("attrib", path, "", pid, uid))
        if mask & FAN_DELETE:
            self._dirty.discard(path)
            # (A merged mkdir + rmdir may also be rmdir + mkdir: forget only what is gone.)
            if mask & FAN_ONDIR and not Path(path).is_dir():
                tree.forget_dir(path)
            self._emit(Change("delete", path, "", pid, uid))
