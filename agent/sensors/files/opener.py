"""Who opens a file: the program a process runs, by identity, and whether it is its own.

The guard is given the path ``readlink /proc/PID/exe`` shows, which a bind mount in a
user namespace sets to anything. :meth:`Openers.lookup` looks at the process instead:

* its **program**, ``os.stat("/proc/PID/exe")`` (the kernel's link to the inode it ran),
  is an approved application only when inode and content match one of the policy
  (:class:`baomi.policy.apps.ApprovedApps`);
* an approved program is **tainted**, and counts as unapproved, when someone else's code
  may run in it or its exe link cannot be trusted: a user namespace other than the
  agent's (where ``prctl(PR_SET_MM_MAP)`` may point the link at any file), an ``LD_*``
  (or other code-loading) variable in its environment, a
  non-empty ``/etc/ld.so.preload`` in its root, code mapped from a file that is not
  root's or is writable by others (a preloaded library, a library bind-mounted over a
  system one), or a tracer (``TracerPid`` of any of its threads);
* whether it is an **interpreter** or the dynamic loader (by the name it was run by or
  by the inode of one of the host's), whose reads run what they read.

The engine is given the listed path of the approved program, or
``(unapproved: PATH; REASON)``, which no person's list can contain; the reason then
appears in the verdict's reason.

Cost: a process whose program is no approved one costs one ``stat`` (~5 us) and a
name lookup; nothing of it is cached, nothing more matters. For an approved program,
its environment, preload and mapped-code taint are cached per process and exec (pid,
start time, the address of its environment block -- new at every exec -- and the inode
of its program): an environment changed later cannot change what the loader did at
exec, and a library the loader mapped is there at the first guarded open. Looked up at
every decision of an approved program: ``/proc/PID/stat`` (the cache key), its content
only when its inode changed since the policy loaded (then hashed once per version,
which may take longer than the decision deadline for a large program), and its tracers
(``/proc/PID/status``, and each thread's when it has more than one), since a tracer may
attach at any time: ~35 us in all for one thread, ~20 us more per further thread.
Nothing here opens a file under the protected roots.
"""

from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass

from baomi.policy.apps import (
    ApprovedApps,
    ContentHashes,
    Interpreters,
    is_loader_name,
)

PROCESSES_KEPT = 4096  # processes remembered (a few hundred bytes each)
ENVIRON_BYTES = 4 * 1024 * 1024  # of /proc/PID/environ read; a larger one is a taint
MAPS_BYTES = 16 * 1024 * 1024  # of /proc/PID/maps read; a larger one is a taint
#: Environment variables besides every ``LD_*`` that make a program load other code:
#: glibc's (iconv modules, tunables) and the toolkits' module paths.
CODE_LOADING_VARIABLES = frozenset({
    b"GCONV_PATH", b"GLIBC_TUNABLES", b"GTK_MODULES", b"GTK3_MODULES", b"GTK_PATH",
    b"GIO_EXTRA_MODULES", b"QT_PLUGIN_PATH", b"QT_QPA_PLATFORM_PLUGIN_PATH",
    b"GST_PLUGIN_PATH", b"GST_PLUGIN_SYSTEM_PATH",
})  # fmt: skip
_STAT_START, _STAT_ENV_START, _STAT_ENV_END = 22, 50, 51  # proc(5) field numbers


@dataclass(frozen=True, slots=True)
class Opener:
    """The opening process as the policy sees it."""

    exe: str  # an approved program's listed path, or "(unapproved: PATH[; REASON])"
    interpreter: str  # the interpreter or loader it runs ("" when none): it runs reads
    program: tuple[int, int] | None = None  # (dev, inode) it runs; None: not looked up


def unapproved(shown: str, reason: str = "") -> str:
    """The ``exe`` given to the engine for a process not running an approved program."""
    return f"(unapproved: {shown or '?'}; {reason})" if reason else f"(unapproved: {shown or '?'})"


class Openers:
    """The opening process of each decision, cached per process (see the module doc)."""

    def __init__(
        self,
        apps: ApprovedApps,
        *,
        hashes: ContentHashes,
        interpreters: Interpreters,
        kept: int = PROCESSES_KEPT,
    ) -> None:
        self._apps = apps
        self._hashes = hashes
        self._interpreters = interpreters
        self._kept = kept
        self._known: dict[tuple[int, ...], str] = {}  # process and exec -> taint
        self._lock = threading.Lock()
        self._userns = _namespace("self", "user")

    @property
    def apps(self) -> ApprovedApps:
        """The approved programs these openers are judged against."""
        return self._apps

    def lookup(self, pid: int, shown: str) -> Opener:  # noqa: PLR0911 - one per way to fail
        """The process ``pid`` (whose exe link reads ``shown``) as the policy sees it."""
        try:
            st = os.stat(f"/proc/{pid}/exe")  # noqa: PTH116 - the decision path: no Path
        except OSError:
            return Opener(unapproved(shown, "its program cannot be looked up"), "?")
        interpreter = self._interpreters.name_of(shown, st) or ""
        program = (st.st_dev, st.st_ino)
        if interpreter and is_loader_name(interpreter):
            return Opener(
                unapproved(shown, "the dynamic loader run directly"), interpreter, program
            )
        if program not in self._apps.by_inode:
            return Opener(unapproved(shown), interpreter, program)  # nothing else to look at
        taint = self._taint(pid, st)
        if taint:
            return Opener(unapproved(shown, taint), interpreter, program)
        app, why = self._apps.identify(st, self._hashes)
        if app is None:
            return Opener(unapproved(shown, why), interpreter, program)
        tracer = _tracer(pid)
        if tracer:
            who = f"pid {tracer}" if tracer > 0 else "an unknown tracer (status unreadable)"
            return Opener(unapproved(shown, f"traced by {who}"), interpreter, program)
        return Opener(app.path, interpreter, program)

    def _taint(self, pid: int, st: os.stat_result) -> str:
        """Why code other than the approved program's may run in ``pid`` ("": none);
        remembered for the process and its exec (see the module docstring)."""
        try:
            ident = _stat_fields(pid)
        except (OSError, ValueError, IndexError):
            return "its process cannot be looked up"
        key = (pid, *ident, st.st_dev, st.st_ino)
        taint = self._known.get(key)
        if taint is None:
            taint = (
                self._userns_taint(pid)
                or _environment_taint(pid)
                or _preload_taint(pid)
                or _mapped_code_taint(pid, st)
            )
            try:
                same = _stat_fields(pid) == ident
            except (OSError, ValueError, IndexError):
                same = False
            if not same:  # it ran another program while looked at
                return "it changed program while checked"
            with self._lock:
                if len(self._known) >= self._kept:
                    self._known.clear()  # bounded; a process forgotten is looked at again
                self._known[key] = taint
        return taint

    def _userns_taint(self, pid: int) -> str:
        # In a user namespace of its own a process holds CAP_CHECKPOINT_RESTORE there,
        # enough to point its exe link at any file (prctl PR_SET_MM_MAP with exe_fd).
        try:
            userns = _namespace(str(pid), "user")
        except OSError as e:
            return f"its user namespace cannot be checked ({e.strerror})"
        if userns != self._userns:
            return "it runs in another user namespace, where its exe link can be reset"
        return ""


def _namespace(pid: str, kind: str) -> tuple[int, int]:
    st = os.stat(f"/proc/{pid}/ns/{kind}")  # noqa: PTH116 - the decision path
    return (st.st_dev, st.st_ino)


def _read(path: str, limit: int) -> bytes:
    """All of a /proc file, to its end (a read of ``maps`` gives a page at a time)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # os.*, not open(): half the cost
    try:
        chunks = []
        size = 0
        while chunk := os.read(fd, min(limit + 1 - size, 256 * 1024)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise OSError(errno.EFBIG, f"more than {limit} bytes")
    finally:
        os.close(fd)
    return b"".join(chunks)


def _stat_fields(pid: int) -> tuple[int, int, int]:
    """(start time, environment start, environment end) from ``/proc/PID/stat``."""
    data = _read(f"/proc/{pid}/stat", 4096)
    rest = data[data.rindex(b")") + 2 :].split()  # field 3 onwards; comm may hold ')'
    return (
        int(rest[_STAT_START - 3]),
        int(rest[_STAT_ENV_START - 3]),
        int(rest[_STAT_ENV_END - 3]),
    )


def _environment_taint(pid: int) -> str:
    try:
        environ = _read(f"/proc/{pid}/environ", ENVIRON_BYTES)
    except OSError as e:
        return f"its environment cannot be checked ({e.strerror or e})"
    names = []
    for entry in environ.split(b"\0"):
        name = entry.partition(b"=")[0]
        if name.startswith(b"LD_") or name in CODE_LOADING_VARIABLES:
            names.append(name.decode("ascii", "replace"))
    if names:
        return f"{', '.join(sorted(set(names))[:4])} in its environment"
    return ""


def _preload_taint(pid: int) -> str:
    # Through the process's root: a mount namespace of its own may put a file there.
    try:
        size = os.stat(f"/proc/{pid}/root/etc/ld.so.preload").st_size  # noqa: PTH116
    except FileNotFoundError:
        return ""
    except OSError as e:
        return f"/etc/ld.so.preload cannot be checked ({e.strerror})"
    return "/etc/ld.so.preload is not empty" if size else ""


def _mapped_code_taint(pid: int, exe: os.stat_result) -> str:
    """Code mapped from a file someone other than root could have written."""
    try:
        maps = _read(f"/proc/{pid}/maps", MAPS_BYTES)
    except OSError as e:
        return f"its mapped code cannot be checked ({e.strerror or e})"
    seen: set[tuple[bytes, bytes]] = set()
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 5 or b"x" not in fields[1] or fields[4] == b"0":
            continue  # not executable, or anonymous (a JIT's; [vdso])
        if (fields[3], fields[4]) in seen:
            continue
        seen.add((fields[3], fields[4]))
        name = fields[5].decode("utf-8", "replace").strip() if len(fields) == 6 else "?"
        try:  # through map_files: the mapped inode itself, whatever its path shows
            st = os.stat(f"/proc/{pid}/map_files/{fields[0].decode()}")  # noqa: PTH116
        except OSError as e:
            return f"its mapped code cannot be checked ({name}: {e.strerror})"
        if (st.st_dev, st.st_ino) == (exe.st_dev, exe.st_ino):
            continue  # the program itself, checked by its content
        if st.st_uid != 0 or st.st_mode & 0o022:
            return f"runs code from {name} (owner uid {st.st_uid}, mode {st.st_mode & 0o7777:o})"
    return ""


def _status_field(status: bytes, name: bytes) -> int:
    at = status.index(b"\n" + name + b":")
    return int(status[at + len(name) + 2 : status.index(b"\n", at + 1)])


def _tracer(pid: int) -> int:
    """The pid of a process tracing any thread of ``pid`` (0: none; -1: unknown)."""
    try:
        status = _read(f"/proc/{pid}/status", 64 * 1024)
        tracer = _status_field(status, b"TracerPid")
        if tracer or _status_field(status, b"Threads") == 1:
            return tracer
        # A tracer of any thread controls the whole address space: look at each.
        for tid in os.listdir(f"/proc/{pid}/task"):  # noqa: PTH208 - the decision path
            try:
                status = _read(f"/proc/{pid}/task/{tid}/status", 64 * 1024)
            except FileNotFoundError:
                continue  # that thread ended
            tracer = _status_field(status, b"TracerPid")
            if tracer:
                return tracer
    except (OSError, ValueError):
        return -1
    return 0
