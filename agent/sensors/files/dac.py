"""The DAC keeper: the owner, mode and POSIX ACL of everything under the protected roots.

fanotify decides opens for ``read`` and ``execute``; there is no BPF LSM on these
hosts, so ``write`` and ``delete`` rest on the kernel's discretionary access control,
which the agent owns. Every directory and regular file under the roots is root:root;
files are 0644 (0755 when they had an exec bit), directories 0755; group and other never
get write. On top of that, from the policy:

* a file gets ``user:UID:rw-`` for each listed person allowed ``write`` on it;
* a directory gets ``user:UID:rwx`` for each person allowed ``delete`` on the directory
  itself. Write permission on a directory is what lets a process create, unlink, rename
  and link entries, so only delete holders can; with ``fs.protected_hardlinks=1`` nobody
  else can hard-link a root-owned file they cannot write.

DAC knows uids, not programs: a right granted to a person for one approved program is
granted to every program they run (see :meth:`Engine.holders`).

Anything else found -- other owners, loose mode bits, set-id bits, ACL entries not
computed, default ACLs -- is drift and is put back. A change to a kept file by another
process (chmod, chown, setfacl: by root, or by an owner before the keeper took the file)
is reverted and recorded as a HIGH ``dac_drift`` file change saying what was found and
what was restored. When a tree cannot be brought into that state (EPERM, a read-only
filesystem, no ACL support) the keeper says so loudly: health ``failed`` and an ERROR.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from baomi.labels import Label, policy_path, read_label
from baomi.v1 import events_pb2

from agent.decision.engine import Engine
from agent.sensors.base import EventSink, Health
from agent.sensors.files.fanotify import under_roots
from agent.sensors.files.inodes import inode_key

_logger = logging.getLogger(__name__)

ACCESS_ACL = "system.posix_acl_access"
DEFAULT_ACL = "system.posix_acl_default"
AUDIT_SECONDS = 30.0  # every tree is checked again this often (missed events, dates)
KEPT_MAX = 1_000_000  # inodes whose kept state is remembered (~150 bytes each)

# linux/posix_acl_xattr.h: a version, then (tag u16, perm u16, id u32) little endian
_ACL_VERSION = 2
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_UNDEFINED_ID = 0xFFFFFFFF
_TAG_NAMES = {
    USER_OBJ: "user:", USER: "user:", GROUP_OBJ: "group:", GROUP: "group:",
    MASK: "mask:", OTHER: "other:",
}  # fmt: skip

FILE_GRANT = 0o6  # rw- for write holders
DIR_GRANT = 0o7  # rwx for delete holders

Entry = tuple[int, int, int]  # (tag, perm, id) as the kernel stores it


class DacError(OSError):
    """A tree cannot be brought into the state the policy asks for."""


@dataclass(frozen=True, slots=True)
class Dac:
    """The discretionary access state of one inode, as ``stat`` and the ACL xattrs give it.

    ``acl`` is () when the mode bits are the whole story (no extended ACL); ``mode`` is
    ``S_IMODE`` -- with an ACL its group bits are the ACL mask.
    """

    uid: int
    gid: int
    mode: int
    acl: tuple[Entry, ...] = ()
    default_acl: tuple[Entry, ...] = ()

    def describe(self) -> str:
        """``0:0 0644 user:1002:rw-,mask::rw-``, as an administrator would read it."""
        text = f"{self.uid}:{self.gid} {self.mode:04o}"
        named = [e for e in self.acl if e[0] in (USER, GROUP_OBJ, GROUP, MASK)]
        if named:
            text += " " + ",".join(_entry_text(e) for e in named)
        if self.default_acl:
            text += " default:" + ",".join(_entry_text(e) for e in self.default_acl)
        return text

    def grants(self) -> list[str]:
        """The named ACL entries, e.g. ``["user:1002:rw-"]``."""
        return [_entry_text(e) for e in self.acl if e[0] in (USER, GROUP)]


def _perm_text(perm: int) -> str:
    return "".join(c if perm & bit else "-" for c, bit in (("r", 4), ("w", 2), ("x", 1)))


def _entry_text(entry: Entry) -> str:
    tag, perm, ident = entry
    who = str(ident) if tag in (USER, GROUP) else ""
    return f"{_TAG_NAMES[tag]}{who}:{_perm_text(perm)}"


def encode_acl(entries: Sequence[Entry]) -> bytes:
    """The ``system.posix_acl_*`` xattr value of ``entries`` (already in kernel order)."""
    return _HEADER.pack(_ACL_VERSION) + b"".join(_ENTRY.pack(*e) for e in entries)


def decode_acl(raw: bytes) -> tuple[Entry, ...]:
    """The entries of a ``system.posix_acl_*`` xattr value."""
    (version,) = _HEADER.unpack_from(raw)
    if version != _ACL_VERSION or (len(raw) - _HEADER.size) % _ENTRY.size:
        raise ValueError(f"not a POSIX ACL xattr (version {version}, {len(raw)} bytes)")
    return tuple(_ENTRY.unpack_from(raw, o) for o in range(_HEADER.size, len(raw), _ENTRY.size))


def wanted(*, is_dir: bool, executable: bool, holders: Iterable[int]) -> Dac:
    """The state the keeper gives a directory or a regular file whose right holders
    (delete on a directory, write on a file) are ``holders``; root is never listed."""
    base = 0o755 if is_dir or executable else 0o644
    grant = DIR_GRANT if is_dir else FILE_GRANT
    uids = sorted({u for u in holders if u != 0})
    if not uids:
        return Dac(0, 0, base)
    group = (base >> 3) & 7
    mask = group | grant
    acl = (
        (USER_OBJ, (base >> 6) & 7, _UNDEFINED_ID),
        *((USER, grant, uid) for uid in uids),
        (GROUP_OBJ, group, _UNDEFINED_ID),
        (MASK, mask, _UNDEFINED_ID),
        (OTHER, base & 7, _UNDEFINED_ID),
    )
    return Dac(0, 0, (base & ~0o070) | (mask << 3), acl)


def _get_acl(target: str, name: str) -> tuple[Entry, ...]:
    try:
        return decode_acl(os.getxattr(target, name))
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.EOPNOTSUPP):
            return ()  # no ACL (or none possible): the mode bits are the whole story
        raise
    except (ValueError, struct.error):
        return ((0, 0, 0),)  # unreadable: never equal to a wanted state, so rewritten


def found(target: str, st: os.stat_result) -> Dac:
    """The state of the inode ``target`` (a ``/proc/self/fd/N`` path) stats as ``st``."""
    return Dac(
        st.st_uid,
        st.st_gid,
        stat.S_IMODE(st.st_mode),
        _get_acl(target, ACCESS_ACL),
        _get_acl(target, DEFAULT_ACL) if stat.S_ISDIR(st.st_mode) else (),
    )


def _remove(target: str, name: str) -> None:
    try:
        os.removexattr(target, name)
    except OSError as e:
        if e.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
            raise


def apply(target: str, now: Dac, want: Dac) -> None:
    """Bring the inode at ``target`` from ``now`` to ``want``.

    The order leaves no moment looser than either state: the owner first (so a former
    owner can no longer change anything), then whichever of mode and ACL narrows.
    """
    if (now.uid, now.gid) != (want.uid, want.gid):
        os.chown(target, want.uid, want.gid)
    if now.default_acl:
        _remove(target, DEFAULT_ACL)
    if want.acl:
        os.setxattr(target, ACCESS_ACL, encode_acl(want.acl))
        Path(target).chmod(want.mode)  # clears set-id and sticky bits; the ACL stays
    else:
        Path(target).chmod(want.mode)  # with an ACL still there this narrows its mask first
        _remove(target, ACCESS_ACL)


class DacKeeper:
    """Keeps the owner, mode and ACL of the protected trees as the policy computes them."""

    def __init__(
        self,
        roots: Sequence[Path | str],
        label_key: bytes,
        engine: Callable[[], Engine | None],
        sink: EventSink,
        *,
        audit_seconds: float = AUDIT_SECONDS,
    ) -> None:
        self.roots = [os.path.realpath(os.fspath(r)) for r in roots]
        self._key = label_key
        self._engine = engine  # the engine in force; None: nobody is granted anything
        self._sink = sink
        self._audit_seconds = audit_seconds
        self._lock = threading.Lock()  # one keeper pass at a time
        self._kept: dict[int, Dac] = {}  # inode_key -> state last kept
        # One object per distinct state: a tree's inodes mostly share a handful of them.
        self._states: dict[Dac, Dac] = {}
        self._health = Health("disabled", "not started")
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> int:
        """Take ownership of the trees now, then check them every ``audit_seconds``; the
        number of inodes changed now."""
        changed = self.keep_all(reason="start")
        self._thread = threading.Thread(target=self._audit_loop, name="files-dac", daemon=True)
        self._thread.start()
        return changed

    def stop(self) -> None:
        """End the audit thread."""
        self._stopping.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join()

    def health(self) -> Health:
        """ok, or failed with the one-line reason a tree could not be kept."""
        return self._health

    def policy_changed(self) -> int:
        """Recompute every tree under the policy now in force (once started); the number
        of inodes changed."""
        return self.keep_all(reason="policy") if self._thread is not None else 0

    def _audit_loop(self) -> None:
        while not self._stopping.wait(self._audit_seconds):
            self.keep_all(reason="audit")

    # -- passes ---------------------------------------------------------------------------
    def keep_all(self, *, reason: str) -> int:
        """Bring every tree into its computed state; the number of inodes changed.

        After ``start`` and a policy change the changes are expected (logged); during an
        audit a change to a kept inode is drift and recorded.
        """
        changed = 0
        errors: list[str] = []
        engine = self._engine()
        with self._lock:
            for root in self.roots:
                try:
                    changed += self._keep_tree(root, engine, report=reason == "audit")
                except OSError as e:
                    errors.append(f"{e.filename or root}: {e.strerror or e}")
        if errors:
            self._fail("; ".join(errors))
        else:
            self._health = Health("ok", f"DAC kept on {len(self.roots)} trees")
        if changed and reason != "audit":
            _logger.info("DAC (%s): brought %d inodes into the policy's state", reason, changed)
        return changed

    def changed(self, kind: str, path: str, uid: int, pid: int) -> None:
        """A change the change watcher reported: keep the entry (and what is under a
        directory that appeared); an ``attrib`` change to a kept inode is drift."""
        if kind not in ("create", "mkdir", "rename", "attrib") or not self._inside(path):
            return
        engine = self._engine()
        try:
            with self._lock:
                fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    st = os.fstat(fd)
                    if kind in ("mkdir", "rename") and stat.S_ISDIR(st.st_mode):
                        self._keep_tree(path, engine, report=False)
                    elif kind == "attrib":
                        self._keep(fd, path, st, engine, (uid, pid))
                    else:
                        self._keep(fd, path, st, engine, None, report=False)
                finally:
                    os.close(fd)
        except FileNotFoundError:
            return  # gone since: nothing to keep
        except OSError as e:
            self._fail(f"{path}: {e.strerror or e}")

    def _inside(self, path: str) -> bool:
        return under_roots(path, self.roots)

    def _fail(self, detail: str) -> None:
        line = f"cannot keep the protected trees' owner, mode and ACL: {detail}"
        if self._health.detail != line:
            _logger.error("%s; writes and deletions there are not enforced", line)
        self._health = Health("failed", line[:500])

    def _keep_tree(self, top: str, engine: Engine | None, *, report: bool) -> int:
        """Keep ``top`` and everything under it; symlinks are never followed (fwalk)."""
        changed = 0
        problems: list[OSError] = []
        for dirpath, _dirs, files, dirfd in os.fwalk(top, onerror=problems.append):
            changed += self._keep(dirfd, dirpath, os.fstat(dirfd), engine, None, report=report)
            for name in files:
                try:
                    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
                except FileNotFoundError:
                    continue
                try:
                    path = os.path.join(dirpath, name)  # noqa: PTH118 - a Path interns names
                    changed += self._keep(fd, path, os.fstat(fd), engine, None, report=report)
                except FileNotFoundError:
                    continue  # removed meanwhile
                finally:
                    os.close(fd)
        if problems:
            raise problems[0]
        return changed

    def _keep(
        self,
        fd: int,
        path: str,
        st: os.stat_result,
        engine: Engine | None,
        who: tuple[int, int] | None,
        *,
        report: bool = True,
    ) -> int:
        """Keep one inode; 1 if it had to be changed.

        ``who`` (uid, pid) is the process an ``attrib`` change named: any difference from
        the state last kept (or, for an inode not kept yet, the wanted one) is drift. With
        ``report`` (audits) a difference from the state last kept is drift too; a new
        inode or one whose wanted state changed (a label, a date) is kept quietly.
        """
        is_dir = stat.S_ISDIR(st.st_mode)
        if not is_dir and not stat.S_ISREG(st.st_mode):
            return 0  # symlinks have no mode of their own; devices and fifos are not kept
        target = f"/proc/self/fd/{fd}"
        key = inode_key(st.st_dev, st.st_ino)
        label = read_label(target, self._key)
        now = found(target, st)
        before = self._kept.get(key)
        executable = bool((before or now).mode & 0o111)  # a chmod +x by hand is drift too
        holders: Iterable[int] = ()
        if engine is not None:
            action = "delete" if is_dir else "write"
            holders = engine.holders(path=policy_path(label, path), label=label, action=action)
        want = wanted(is_dir=is_dir, executable=executable, holders=holders)
        if len(self._kept) >= KEPT_MAX:
            self._kept.clear()  # bounded; a forgotten inode is compared with its wanted state
            self._states.clear()
        self._kept[key] = want = self._states.setdefault(want, want)
        if now == want:
            return 0
        try:
            apply(target, now, want)
            after = found(target, os.fstat(fd))
        except OSError as e:
            raise DacError(e.errno, e.strerror, path) from e
        if after != want:
            raise DacError(
                errno.EPERM, f"still {after.describe()} after setting {want.describe()}", path
            )
        if who is not None and now != (before or want):
            self._drifted(path, label, now, want, who)
        elif report and before is not None and now != before:
            self._drifted(path, label, now, want, (-1, -1))
        return 1

    def _drifted(
        self, path: str, label: Label | None, now: Dac, want: Dac, who: tuple[int, int]
    ) -> None:
        detail = f"found {now.describe()}; restored {want.describe()}"
        _logger.warning("DAC drift on %s (uid %d, pid %d): %s", path, who[0], who[1], detail)
        self._sink(
            events_pb2.Event(
                severity=events_pb2.SEVERITY_HIGH,
                file_change=events_pb2.FileChange(
                    path=path,
                    change="dac_drift",
                    uid=max(who[0], 0),
                    pid=max(who[1], 0),
                    home=(label.home or "") if label is not None else "",
                    detail=detail[:500],
                ),
            )
        )
