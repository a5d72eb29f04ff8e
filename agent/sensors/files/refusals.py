"""Refused writes and deletions under the protected roots, recorded through kernel audit.

Writes, truncation, deletion, renames, links, creation and changes of mode, owner,
times or extended attributes under the roots are refused by the kernel's DAC (kept by
``dac.py``) before fanotify sees anything. To record those attempts the agent installs
Linux audit rules, one set per root and syscall ABI, all with the key ``baomi-refusals``::

    -a always,exit -F arch=b64 -S open   -F a1&0x243 -F exit=-EACCES -F dir=ROOT -k baomi-refusals
    -a always,exit -F arch=b64 -S openat -F a2&0x243 -F exit=-EACCES -F dir=ROOT -k baomi-refusals
    -a always,exit -F arch=b64 -S creat,openat2,truncate,unlink,...  -F exit=-EACCES ...
    -a always,exit -F arch=b64 -S creat,unlink,...                   -F exit=-EPERM  ...

(0x243 is O_WRONLY|O_RDWR|O_CREAT|O_TRUNC: an open for reading refused with EPERM is
fanotify's answer, already recorded by the guard, as is a truncate refused with EPERM;
the same again for ``arch=b32`` when the kernel runs 32-bit programs). ``dir=ROOT``
matches when any path the syscall looked up lies in the tree. Rules for the roots left
by a killed agent are deleted before they are added, and they are deleted at stop. If
kernel auditing is off the agent turns it on (``auditctl -e 1``, logged) and off again
at stop when no rule is left. Every 30 seconds it checks that its rules are still there
and auditing is on (``auditctl -D`` or an auditd restart loading only its own rules
would end the record silently): if not, it puts them back and records a HIGH
``audit_rules`` tamper event.

Records are read without becoming the audit daemon: a ``NETLINK_AUDIT`` socket in the
multicast group ``AUDIT_NLGRP_READLOG`` (CAP_AUDIT_READ); a running ``auditd`` keeps
logging as before. Without auditd the kernel also prints each record to its log
(rate-limited). Each refused syscall becomes one ``file_access`` event, DENY and MEDIUM,
with the person, process, path and the syscall and errno in the reason; repeats of the
same (pid, path, syscall) are folded each period into one event with a count.

Not recorded: syscalls on an open fd (fchmod, fchown, fsetxattr, fremovexattr, ftruncate:
the kernel resolves no path, so ``dir=`` cannot match); refusals through a hard link or
bind mount outside the trees (the path looked up is not in them); root's writes, which
DAC does not refuse; records the kernel or this socket dropped under a flood (a HIGH
``audit_lost`` tamper event says so). A relative name whose directory fd is gone is
recorded as given.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from baomi.labels import effective_level, policy_path, read_label
from baomi.v1 import events_pb2

from agent.decision.engine import Engine
from agent.sensors.base import EventSink, Health

_logger = logging.getLogger(__name__)

AUDIT_KEY = "baomi-refusals"
NETLINK_AUDIT = 9  # linux/netlink.h
AUDIT_NLGRP_READLOG = 1  # linux/audit.h: read-only multicast of every record
RECEIVE_BUFFER = 8 << 20  # bytes of socket buffer: a burst of records waits here
PENDING_EVENTS = 1024  # audit events still missing their EOE record, at most
FOLDS_KEPT = 65_536  # (pid, path, syscall) counted between flushes, at most
AUDITCTL_SECONDS = 10.0  # timeout of one auditctl run
POLL_SECONDS = 0.25  # how often the reader looks at the stop flag

SYSCALL, PATH, CWD, EOE, PROCTITLE = 1300, 1302, 1307, 1320, 1327  # record types
_ARCH_64BIT = 0x80000000  # linux/audit.h __AUDIT_ARCH_64BIT
_AT_FDCWD = 0xFFFFFF9C  # -100, as the low 32 bits of a register
_WRITE_INTENT = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC
#: Newer than auditd 3.0.9's tables; numbers shared by every architecture since 424.
_NEW_SYSCALLS = {452: "fchmodat2", 463: "setxattrat", 466: "removexattrat"}

_OPENS = ("open", "openat", "openat2", "creat")
_DELETES = ("unlink", "unlinkat", "rmdir", "rename", "renameat", "renameat2", "link", "linkat")
_CREATES = ("mkdir", "mkdirat", "mknod", "mknodat", "symlink", "symlinkat")
_MODES = ("chmod", "fchmodat", "fchmodat2", "chown", "chown32", "lchown", "lchown32", "fchownat")
_XATTRS = ("setxattr", "lsetxattr", "removexattr", "lremovexattr", "setxattrat", "removexattrat")
_TIMES = ("utime", "utimes", "utimensat", "utimensat_time64", "futimesat")
_TRUNCATES = ("truncate", "truncate64")
#: Ruled on without a flag test (open and openat have rules of their own).
_OTHERS = (
    "creat", "openat2", *_TRUNCATES, *_DELETES, *_CREATES, *_MODES, *_XATTRS, *_TIMES,
)  # fmt: skip
_AUDITED = frozenset(("open", "openat", *_OTHERS))  # the syscalls the rules name
#: Refused with EPERM only by the file guard's own answer (which it records).
_FANOTIFY_EPERM = ("openat2", *_TRUNCATES)
#: Which arguments are directory fds a relative name is looked up from.
_DIRFD_ARGS = {"symlinkat": (1,), "renameat": (0, 2), "renameat2": (0, 2), "linkat": (0, 2)}
_AT_CALLS = (
    "openat", "openat2", "unlinkat", "mkdirat", "mknodat", "fchmodat", "fchmodat2", "fchownat",
    "utimensat", "futimesat", "setxattrat", "removexattrat",
)  # fmt: skip
_DIRFD_ARGS |= dict.fromkeys(_AT_CALLS, (0,))

_HEADER = re.compile(r"audit\((\d+)\.(\d+):(\d+)\): ?")
_FIELD = re.compile(r'([a-z0-9_]+)=("[^"]*"|\S*)')
_HEX = re.compile(r"(?:[0-9A-F]{2})+")
#: Fields the kernel writes with audit_log_untrustedstring: quoted when plain, else hex.
_UNTRUSTED = frozenset({"name", "exe", "comm", "cwd", "key", "proctitle"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class AuditUnavailableError(OSError):
    """Kernel audit cannot be used to record refusals here; the message says why."""


def clean(text: str) -> str:
    """``text`` with control characters written as ``\\xNN``: never raw in an event."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def decode_value(name: str, raw: str) -> str:
    """A field's value as the kernel meant it: unquoted, or decoded from hex when the
    kernel hex-encoded an untrusted string (it does so when the string has a space, a
    quote or a control character). Undecodable bytes become U+FFFD."""
    if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
        return raw[1:-1]
    if raw == "(null)":
        return ""
    if name in _UNTRUSTED and _HEX.fullmatch(raw):
        data = bytes.fromhex(raw)
        if name == "proctitle":
            data = data.rstrip(b"\0").replace(b"\0", b" ")
        return data.decode("utf-8", "replace")
    return raw


def parse_fields(body: str) -> dict[str, str]:
    """The ``name=value`` fields of one record body (after its ``audit(...):`` header)."""
    return {m.group(1): decode_value(m.group(1), m.group(2)) for m in _FIELD.finditer(body)}


@dataclass(frozen=True, slots=True)
class Refusal:
    """One refused syscall, from the records of one audit event."""

    time_ns: int
    syscall: str
    errno: int
    flags: int | None  # open flags (open, openat), else None
    pid: int
    uid: int  # effective uid: the one DAC checked
    auid: int  # login uid, -1 when unset
    executable: str
    cmdline: str
    path: str  # absolute when it could be made so
    nametype: str  # of the path's record: NORMAL, DELETE, CREATE, PARENT


@dataclass(slots=True)
class _Pending:
    time_ns: int
    syscall: dict[str, str] = field(default_factory=dict)
    cwd: str = ""
    paths: list[dict[str, str]] = field(default_factory=list)
    proctitle: str = ""


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


class Assembler:
    """Puts the records of each audit event together (by serial) and gives a Refusal at
    its EOE when the event is a failed syscall matched by a rule with ``key``.

    ``syscalls`` maps (abi, number) to a name; ``resolve_dirfd(pid, fd)`` gives the
    directory a process's fd names, or None.
    """

    def __init__(
        self,
        roots: Sequence[str],
        syscalls: dict[tuple[str, int], str],
        *,
        key: str = AUDIT_KEY,
        resolve_dirfd: Callable[[int, int], str | None] | None = None,
    ) -> None:
        self._roots = list(roots)
        self._syscalls = syscalls
        self._key = key
        self._resolve_dirfd = resolve_dirfd or _proc_dirfd
        self._pending: dict[int, _Pending] = {}

    def feed(self, rtype: int, text: str) -> Refusal | None:
        """Take one record (its netlink type and text); a Refusal when an event ends."""
        header = _HEADER.match(text)
        if header is None:
            return None
        serial = int(header.group(3))
        if rtype == EOE:
            pending = self._pending.pop(serial, None)
            return self._refusal(pending) if pending is not None else None
        if rtype not in {SYSCALL, PATH, CWD, PROCTITLE}:
            return None
        pending = self._pending.get(serial)
        if pending is None:
            if len(self._pending) >= PENDING_EVENTS:  # EOE lost: forget the oldest
                del self._pending[next(iter(self._pending))]
            seconds, millis = int(header.group(1)), int(header.group(2))
            pending = self._pending[serial] = _Pending(seconds * 10**9 + millis * 10**6)
        fields = parse_fields(text[header.end() :])
        if rtype == SYSCALL:
            pending.syscall = fields
        elif rtype == PATH:
            pending.paths.append(fields)
        elif rtype == CWD:
            pending.cwd = fields.get("cwd", "")
        else:
            pending.proctitle = fields.get("proctitle", "")
        return None

    def _refusal(self, p: _Pending) -> Refusal | None:
        s = p.syscall
        if s.get("key") != self._key or s.get("success") != "no":
            return None
        try:
            number, code = int(s["syscall"]), -int(s["exit"])
            abi = "b64" if int(s.get("arch", "0"), 16) & _ARCH_64BIT else "b32"
            pid, uid = int(s["pid"]), int(s.get("euid", s["uid"]))
            auid = int(s.get("auid", "-1"))
            args = [int(s.get(f"a{i}", "0"), 16) for i in range(4)]
        except (KeyError, ValueError):
            return None
        name = self._syscalls.get((abi, number), f"syscall {number}")
        flags = {"open": args[1], "openat": args[2]}.get(name)
        path, nametype = self._path(p, name, pid, args)
        return Refusal(
            time_ns=p.time_ns,
            syscall=name,
            errno=code,
            flags=flags,
            pid=pid,
            uid=uid,
            auid=-1 if auid == 0xFFFFFFFF else auid,
            executable=clean(s.get("exe", "")),
            cmdline=clean(p.proctitle),
            path=clean(path),
            nametype=nametype,
        )

    def _path(self, p: _Pending, syscall: str, pid: int, args: list[int]) -> tuple[str, str]:
        """The path the refusal is about: the file itself (NORMAL, DELETE, CREATE item)
        in a root if there is one, else the directory (PARENT item) in a root."""
        bases = [
            p.cwd if args[i] & 0xFFFFFFFF == _AT_FDCWD else self._resolve_dirfd(pid, args[i])
            for i in _DIRFD_ARGS.get(syscall, ())
        ] or [p.cwd]
        found: list[tuple[str, str]] = []
        for item in p.paths:
            name, nametype = item.get("name", ""), item.get("nametype", "")
            if not name or nametype == "UNKNOWN":  # UNKNOWN: a symlink's target text
                continue
            found.append((_absolute(name, item.get("inode"), bases), nametype))
        files = [(path, t) for path, t in found if t != "PARENT"]
        for path, nametype in files:
            if _under(path, self._roots):
                return path, nametype
        for path, nametype in files:
            # Relative to a directory fd closed before it could be read: as given, not
            # the kernel's name of the parent (written from the cwd: maybe wrong).
            if not path.startswith("/"):
                return path, nametype
        for path, nametype in found:
            if _under(path, self._roots):
                return path, nametype
        return found[0] if found else ("", "")


def _absolute(name: str, inode: str | None, bases: Sequence[str | None]) -> str:
    """``name`` made absolute from the first base directory that gives the inode the
    record names (any base when it names none); as given when no base is known."""
    if name.startswith("/"):
        return os.path.normpath(name)
    known = [b for b in bases if b]
    for base in known:
        candidate = os.path.normpath(f"{base}/{name}")
        if inode is None:
            return candidate
        try:
            if os.lstat(candidate).st_ino == int(inode):
                return candidate
        except (OSError, ValueError):
            continue
    if known and inode is not None:  # gone since (or never there): the likeliest base
        return os.path.normpath(f"{known[0]}/{name}")
    return name


def _proc_dirfd(pid: int, fd: int) -> str | None:
    try:
        target = os.readlink(f"/proc/{pid}/fd/{fd}")  # noqa: PTH115 - a str is wanted
    except OSError:
        return None
    return target if target.startswith("/") else None


# -- describing a refusal -------------------------------------------------------------------
_OPEN_FLAGS = [
    (os.O_CREAT, "O_CREAT"),
    (os.O_EXCL, "O_EXCL"),
    (os.O_TRUNC, "O_TRUNC"),
    (os.O_APPEND, "O_APPEND"),
]


def open_flags(flags: int) -> str:
    """``O_WRONLY|O_CREAT|O_APPEND``: the access mode and the flags that write."""
    mode = {os.O_WRONLY: "O_WRONLY", os.O_RDWR: "O_RDWR"}.get(flags & os.O_ACCMODE, "O_RDONLY")
    return "|".join([mode, *(text for bit, text in _OPEN_FLAGS if flags & bit)])


def action_and_why(r: Refusal) -> tuple[str, str]:
    """The policy action a refusal attempted, and why DAC refused it."""
    creating = r.nametype in {"CREATE", "PARENT"}
    if r.syscall in _DELETES:
        if r.syscall.startswith("link") and r.errno == errno.EPERM:
            why = "a file one may not write cannot be hard-linked (fs.protected_hardlinks)"
        else:
            why = "no delete right on the directory"
        return "delete", why
    if r.syscall in _CREATES or (r.syscall in _OPENS and creating):
        return "write", "no right to create entries in this directory (delete right on it)"
    if r.syscall in _MODES:
        return "write", "only the owner (root) may change its mode or owner"
    if r.syscall in _XATTRS:
        return "write", "no right to change its extended attributes"
    if r.syscall in _TIMES:
        return "write", "no right to change its times"
    return "write", "no write right on this file"


def reason(r: Refusal) -> str:
    """``refused by file permissions: openat(O_WRONLY|O_APPEND) EACCES -- ...``."""
    call = f"{r.syscall}({open_flags(r.flags)})" if r.flags is not None else r.syscall
    name = errno.errorcode.get(r.errno, str(r.errno))
    _, why = action_and_why(r)
    text = f"refused by file permissions: {call} {name} — {why} (DAC kept by the agent)"
    if not r.path.startswith("/"):
        text += "; the path is relative to a directory the process had open"
    return text


# -- the rules --------------------------------------------------------------------------------
def _auditctl(*args: str) -> str:
    """Run auditctl; its output, or AuditUnavailableError with its message."""
    exe = shutil.which("auditctl") or "/sbin/auditctl"
    try:
        done = subprocess.run(  # noqa: S603 - fixed program, arguments built here
            [exe, *args], capture_output=True, text=True, timeout=AUDITCTL_SECONDS, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AuditUnavailableError(f"auditctl cannot run ({e}): install Debian's auditd") from e
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise AuditUnavailableError(f"auditctl {' '.join(args)}: {' / '.join(message)[:300]}")
    return done.stdout


def syscall_table(abi: str) -> dict[int, str]:
    """Syscall numbers to names for ``b64`` or ``b32`` on this machine (ausyscall), of
    the syscalls the rules audit."""
    exe = shutil.which("ausyscall") or "/usr/bin/ausyscall"
    try:
        out = subprocess.run(  # noqa: S603 - fixed program and arguments
            [exe, abi, "--dump"],
            capture_output=True,
            text=True,
            timeout=AUDITCTL_SECONDS,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    table = dict(_NEW_SYSCALLS)
    for line in out.splitlines():
        number, _, name = line.partition("\t")
        if number.isdigit() and name in _AUDITED:  # the rest is never named by a rule
            table[int(number)] = name
    return table


def rules(root: str, abi: str, table: dict[int, str]) -> list[list[str]]:
    """The auditctl arguments (after ``-a``/``-d``) of the rules for one root and ABI."""
    names = {name: number for number, name in table.items()}

    def syscalls(wanted: Sequence[str]) -> list[str]:
        out: list[str] = []
        for name in wanted:
            if name in names:  # auditctl refuses a rule naming a syscall the ABI lacks
                out += ["-S", name if names[name] not in _NEW_SYSCALLS else str(names[name])]
        return out

    common = ["always,exit", "-F", f"arch={abi}"]
    tail = ["-F", f"dir={root}", "-F", f"key={AUDIT_KEY}"]
    wanted = [
        (syscalls(["open"]), ["-F", f"a1&{_WRITE_INTENT:#x}", "-F", "exit=-EACCES"]),
        (syscalls(["openat"]), ["-F", f"a2&{_WRITE_INTENT:#x}", "-F", "exit=-EACCES"]),
        (syscalls(_OTHERS), ["-F", "exit=-EACCES"]),
        # openat2 refused with EPERM is fanotify's answer to a read (its flags are in a
        # struct no rule can test), truncate refused with EPERM its answer to a write
        # (pre-content events): the guard records both.
        (syscalls([n for n in _OTHERS if n not in _FANOTIFY_EPERM]), ["-F", "exit=-EPERM"]),
    ]
    # A rule without -S would match every syscall: never add one.
    return [[*common, *calls, *test, *tail] for calls, test in wanted if calls]


def remove_rules(roots: Sequence[str]) -> int:
    """Delete every rule with the Baomi key on one of ``roots``, whoever added it (a
    killed agent, an older version); the number deleted."""
    removed = 0
    for line in _auditctl("-l", "-k", AUDIT_KEY).splitlines():
        # "-a always,exit -F arch=b64 -S open,creat -F dir=/srv/x y -F key=..." -> argv;
        # split before each option so a directory with spaces stays whole.
        parts = [p.split(" ", 1) for p in re.split(r" (?=-[aFSkC] )", line.strip())]
        argv = [x for part in parts for x in part]
        if len(argv) < 2 or argv[0] != "-a" or not any(f"dir={r}" in argv for r in roots):
            continue
        _auditctl("-d", *argv[1:])
        removed += 1
    return removed


# -- the recorder ------------------------------------------------------------------------------
@dataclass(slots=True)
class _Fold:
    event: events_pb2.Event  # the first refusal's event, as recorded
    count: int = 0  # repeats since, not yet recorded
    first_ns: int = 0
    last_ns: int = 0


class RefusalRecorder:
    """Install the audit rules for ``roots``, read the records, record each refusal."""

    def __init__(
        self,
        roots: Sequence[Path],
        label_key: bytes,
        engine: Callable[[], Engine | None],
        sink: EventSink,
        *,
        fold_seconds: float = 1.0,  # seconds over which identical refusals are counted
        check_seconds: float = 30.0,  # seconds between checks that the rules are in place
    ) -> None:
        self._roots = [str(Path(r).resolve()) for r in roots]
        self._key = label_key
        self._engine = engine
        self._sink = sink
        self._fold_seconds = fold_seconds
        self._folds: dict[tuple[int, str, str], _Fold] = {}
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._enabled_by_us = False
        self._ruled = False  # rules may be on the roots: delete them at stop
        self._installed = 0  # rules added by the last _install()
        self._tables: dict[str, dict[int, str]] = {}
        self._check_seconds = check_seconds
        self._problem = "not started"
        self._lost = 0

    def start(self) -> None:
        """Install the rules and start reading; on failure say why in health (the
        refusals still happen, only their record is missing)."""
        try:
            self._start()
        except (AuditUnavailableError, OSError) as e:
            self._problem = str(e)
            _logger.error("refused writes and deletions are not recorded: %s", e)
            self._close()
            with contextlib.suppress(AuditUnavailableError):
                remove_rules(self._roots)  # those added before the failure
            return
        self._problem = ""

    def _start(self) -> None:
        if self._enabled() == "2":
            raise AuditUnavailableError("audit rules are locked (enabled 2) until reboot")
        # The socket first: no record of a rule just added is missed.
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_AUDIT
        )
        self._sock = sock
        try:
            sock.setsockopt(socket.SOL_SOCKET, 33, RECEIVE_BUFFER)  # SO_RCVBUFFORCE
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        try:
            sock.bind((0, AUDIT_NLGRP_READLOG))
        except OSError as e:
            raise AuditUnavailableError(
                f"cannot read audit records ({e}): needs CAP_AUDIT_READ"
            ) from e
        sock.settimeout(POLL_SECONDS)
        self._tables = {abi: syscall_table(abi) for abi in ("b64", "b32")}
        if not self._tables["b64"]:
            raise AuditUnavailableError("ausyscall gives no syscall table: install auditd")
        stale = self._install()
        if self._enabled() == "0":
            _auditctl("-e", "1")
            self._enabled_by_us = True
            _logger.warning("kernel auditing was off: the agent enabled it (auditctl -e 1)")
        self._assembler = Assembler(
            self._roots,
            {(abi, n): name for abi, table in self._tables.items() for n, name in table.items()},
        )
        self._thread = threading.Thread(target=self._run, name="files-refusals", daemon=True)
        self._thread.start()
        _logger.info(
            "recording refused writes and deletions: %d audit rules (key %s, %d stale replaced)",
            self._installed, AUDIT_KEY, stale,
        )  # fmt: skip

    @staticmethod
    def _enabled() -> str:
        """``auditctl -s``'s enabled: "0" off, "1" on, "2" on and locked."""
        found = re.search(r"^enabled (\d)", _auditctl("-s"), re.MULTILINE)
        return found.group(1) if found else ""

    def _install(self) -> int:
        """Delete the Baomi rules on the roots, then add them; the number deleted."""
        self._ruled = True
        self._installed = 0
        stale = remove_rules(self._roots)
        for abi, table in self._tables.items():
            try:
                for root in self._roots:
                    for rule in rules(root, abi, table):
                        _auditctl("-a", *rule)
                        self._installed += 1
            except AuditUnavailableError as e:
                if abi == "b64":
                    raise
                _logger.warning("no audit rules for 32-bit programs: %s", e)  # no compat ABI
        return stale

    def _check_rules(self) -> None:
        """Put back rules deleted behind the agent's back (``auditctl -D``, an auditd
        restart loading only its own rules) and auditing turned off, and say so."""
        try:
            listed = _auditctl("-l", "-k", AUDIT_KEY).splitlines()
            present = sum(any(f" -F dir={r} -F " in line for r in self._roots) for line in listed)
            enabled = self._enabled()
            if present >= self._installed and enabled != "0":
                return
            self._install()
            if enabled == "0":
                _auditctl("-e", "1")
        except AuditUnavailableError as e:
            self._problem = f"audit rules cannot be put back: {e}"
            _logger.error("refused writes and deletions no longer recorded: %s", e)
            return
        detail = (
            f"{self._installed - present} of the agent's audit rules were deleted"
            f"{' and kernel auditing was turned off' if enabled == '0' else ''}; put back "
            "(refused writes in between are not recorded)"
        )
        _logger.warning("%s", detail)
        self._tamper("audit_rules", detail)

    def _tamper(self, kind: str, detail: str) -> None:
        self._sink(
            events_pb2.Event(
                severity=events_pb2.SEVERITY_HIGH,
                tamper=events_pb2.Tamper(kind=kind, detail=detail),
            )
        )

    def stop(self) -> None:
        """Stop reading, delete the rules, record the repeats still counted."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        self._close()
        if not self._ruled:
            return
        try:
            remove_rules(self._roots)
            if self._enabled_by_us and _auditctl("-l").strip() == "No rules":
                _auditctl("-e", "0")  # as found, unless someone else uses it now
        except AuditUnavailableError as e:
            _logger.error("audit rules of %s not removed: %s", AUDIT_KEY, e)
        self.flush()

    def health(self) -> Health:
        """ok while records are read; degraded (never failed: DAC still refuses) when
        refusals cannot be recorded."""
        if self._problem:
            return Health(
                "degraded", f"refused writes and deletions are not recorded: {self._problem}"
            )
        lost = f" ({self._lost} batches of records lost)" if self._lost else ""
        return Health("ok", f"refused writes and deletions recorded through kernel audit{lost}")

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None  # noqa: S101 - _start() set it
        next_flush = time.monotonic() + self._fold_seconds
        next_check = time.monotonic() + self._check_seconds
        while not self._stopping.is_set():
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                data = b""
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    self._problem = f"audit socket failed: {e}"
                    _logger.error("refused writes and deletions no longer recorded: %s", e)
                    return
                self._lost_records()
                data = b""
            for rtype, text in _messages(data):
                refusal = self._assembler.feed(rtype, text)
                if refusal is not None and refusal.pid != os.getpid():
                    self._refused(refusal)
            if time.monotonic() >= next_flush:
                self.flush()
                next_flush = time.monotonic() + self._fold_seconds
            if time.monotonic() >= next_check:
                self._check_rules()
                next_check = time.monotonic() + self._check_seconds

    def _lost_records(self) -> None:
        self._lost += 1
        _logger.warning("audit records lost: the socket buffer overflowed")
        self._tamper("audit_lost", "audit records were lost: some refused writes are not recorded")

    def _refused(self, r: Refusal) -> None:
        key = (r.pid, r.path, r.syscall)
        fold = self._folds.get(key)
        if fold is not None:
            fold.count += 1
            fold.first_ns = fold.first_ns or r.time_ns
            fold.last_ns = r.time_ns
            return
        if len(self._folds) >= FOLDS_KEPT:
            self.flush()
            self._folds.clear()
        event = self._event(r)
        first = events_pb2.Event()
        first.CopyFrom(event)  # before the recorder fills in the original
        self._folds[key] = _Fold(first)
        self._sink(event)

    def flush(self) -> None:
        """Record each counted repeat as one event; forget what was not repeated."""
        for key, fold in list(self._folds.items()):
            if not fold.count:
                del self._folds[key]
                continue
            event = events_pb2.Event()
            event.CopyFrom(fold.event)
            event.time.FromNanoseconds(fold.last_ns)
            event.file_access.count = fold.count
            event.file_access.first.FromNanoseconds(fold.first_ns)
            event.file_access.last.FromNanoseconds(fold.last_ns)
            fold.count = fold.first_ns = fold.last_ns = 0  # still flooding: keep folding
            self._sink(event)

    def _event(self, r: Refusal) -> events_pb2.Event:
        engine = self._engine()
        person = engine.policyset.subjects.by_uid.get(r.uid) if engine is not None else None
        action, _ = action_and_why(r)
        event = events_pb2.Event(
            severity=events_pb2.SEVERITY_MEDIUM,
            file_access=events_pb2.FileAccess(
                path=r.path,
                action=action,
                uid=max(r.uid, 0),
                user=person.name if person else "",
                pid=r.pid,
                executable=r.executable,
                cmdline=r.cmdline[:256],
                decision=events_pb2.DECISION_DENY,
                reason=reason(r)[:500],
            ),
        )
        event.time.FromNanoseconds(r.time_ns)
        self._label(r.path, event.file_access)
        return event

    def _label(self, path: str, access: events_pb2.FileAccess) -> None:
        """The file's level and home, when it is there and labelled (not followed
        through a symlink: O_PATH opens no file, so fanotify is not asked)."""
        if not path.startswith("/"):
            return
        try:
            fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        try:
            label = read_label(f"/proc/self/fd/{fd}", self._key)
        except OSError:
            return
        finally:
            os.close(fd)
        if label is None:
            return
        access.level = effective_level(label, date.today())  # type: ignore[assignment]
        access.label_id = label.label_id or ""
        access.home = policy_path(label, path)


def _messages(data: bytes) -> list[tuple[int, str]]:
    """(type, text) of each netlink message in one datagram."""
    out: list[tuple[int, str]] = []
    offset = 0
    while offset + 16 <= len(data):
        length = int.from_bytes(data[offset : offset + 4], sys.byteorder)
        rtype = int.from_bytes(data[offset + 4 : offset + 6], sys.byteorder)
        if length < 16 or offset + length > len(data):
            break
        out.append((rtype, data[offset + 16 : offset + length].decode("utf-8", "replace")))
        offset += (length + 3) & ~3
    return out
