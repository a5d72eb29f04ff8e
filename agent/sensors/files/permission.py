"""The permission path: every open under the protected roots answered with a decision.

``PermissionGuard`` holds a permission group (``FAN_CLASS_PRE_CONTENT``) with
``FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM`` marks on every directory under the protected
roots (kept marked by a ``TreeWatcher``). Every open of a file (or directory) in them
blocks in the kernel until the guard answers allow or deny; ``decide(Access)`` gives the
answer, within a deadline. Labelled files (``mark_file``) are also marked
``FAN_PRE_ACCESS`` where the kernel and filesystem have pre-content events (Linux
6.14, ext4/xfs/btrfs): their writes and truncations are asked too, as ``write``
(``writers.py`` tells a write from a read through a read-only descriptor, which is
allowed without asking: the open was decided). Elsewhere writes rest on the file
modes and ACLs the DAC keeper holds, and health says so (``degraded``).

Its read loop is in C (``_answers.c``): repeats of an answer ``decide()`` asked it to
``repeat()`` are answered there without the GIL, and counted.

Latency: a repeat answered in C costs three system calls more than the kernel round
trip (~2.4 us against ~8.5 us; ``make bench``). Everything else -- the first open of
a file by a process, the agent's own opens -- runs in Python threads, which wait for
the GIL like any other: one CPU-bound Python thread elsewhere in the same process makes
such an open wait up to ``sys.getswitchinterval()`` (5 ms by default). Run the guard in
a process that does nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from agent.errors import ConfigError
from agent.sensors.base import Health
from agent.sensors.files._answers import Answers, respond
from agent.sensors.files.fanotify import (
    AT_FDCWD,
    CAP_HINT,
    EVENT_F_FLAGS,
    FAN_ALLOW,
    FAN_CLASS_PRE_CONTENT,
    FAN_CLOEXEC,
    FAN_CREATE,
    FAN_DENY,
    FAN_EVENT_ON_CHILD,
    FAN_MARK_ADD,
    FAN_MARK_FLUSH,
    FAN_ONDIR,
    FAN_OPEN_EXEC_PERM,
    FAN_OPEN_PERM,
    FAN_PRE_ACCESS,
    FAN_RENAME,
    FAN_UNLIMITED_MARKS,
    FAN_UNLIMITED_QUEUE,
    STOP_TIMEOUT,
    abs_roots,
    close_quietly,
    fanotify_init,
    fanotify_mark,
    fd_path,
    pre_content_problem,
)
from agent.sensors.files.guardian import (
    Gap,
    GapProgress,
    GapRecords,
    GuardianError,
    GuardianLink,
)
from agent.sensors.files.trees import OnOverflow, TreeWatcher
from agent.sensors.files.writers import may_write

_logger = logging.getLogger(__name__)

DEFAULT_DEADLINE = 0.050  # seconds a decision may take before the open is denied
DEFAULT_MAX_STUCK = 4  # decisions past their deadline still running before decide() is skipped
ANSWERS_KEPT = 65_536  # remembered answers (repeats answered in C) between take()s
SWITCH_INTERVAL = 0.0002  # seconds: the interpreter's GIL switch interval while a guard runs


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
    action: str  # "read" (FAN_OPEN_PERM), "execute" (FAN_OPEN_EXEC_PERM), "write" (FAN_PRE_ACCESS)
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
            path = fd_path(self.fd)
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


#: The kind of answer the C table keeps for each action (_answers.c: KIND_*).
_KINDS = {"read": 0, "execute": 1, "write": 2}
#: A row of take_repeats(): token, pid, count, first_ns, last_ns, classed file or None.
Repeat = tuple[object, int, int, int, int, tuple[int, int, int, bytes] | None]
#: The same for a pre-content read through a read-only descriptor (allowed, silent).
_ACCESS = _KINDS["write"]

OnError = Callable[[Access | None, BaseException], None]
OnTamper = Callable[[str, str], None]  # (kind, detail)


class _SwitchInterval:
    """The interpreter's GIL switch interval: SWITCH_INTERVAL while any guard runs.

    A decision in Python runs on a reader thread and lets go of the GIL at each of its
    ~20 system calls; getting it back waits up to the switch interval (5 ms by default)
    whenever another thread -- the fold recording a busy second's repeats, the
    recorder -- holds it. Under load that added up past the deadline, and legitimate
    opens were denied. Restored when the last guard stops: the process may go on with
    other work (the benchmark does), which the short interval only slows.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._guards = 0
        self._before = 0.0

    def lower(self) -> None:
        with self._lock:
            if self._guards == 0:
                self._before = sys.getswitchinterval()
                sys.setswitchinterval(min(self._before, SWITCH_INTERVAL))
            self._guards += 1

    def restore(self) -> None:
        with self._lock:
            self._guards -= 1
            if self._guards == 0:
                sys.setswitchinterval(self._before)


_SWITCH_INTERVAL = _SwitchInterval()


class PermissionGuard:
    """Answer every open under ``roots`` with ``decide(access)``, within ``deadline``.

    Design choices (see also the module docstring and ``trees``):

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
      (and forgets the answers when asked to, or when their process is gone). An
      answer ``decide()`` calls plain is shared by every vouched process of the same
      euid and executable (``repeat()``). Every other event comes back to Python with the
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
    * **With a guardian** (``guardian_dir``, the agent's state directory) the group
      fails closed instead: a guardian process (``guardian``) holds it too, adopted
      at ``start()`` (marks intact; ``on_gap(records, progress)`` gets what it
      journalled while no agent ran, once per gap; it records the gap's events
      durably, skipping the ``progress.recorded`` first ones (an agent killed while
      recording the gap recorded those) and calling ``progress.one_more()`` after
      each. The guardian is told each gap ``on_gap`` returned for is on record: until
      then every adopt hands it over again) or spawned for a new group.
      ``stop()`` then keeps the marks, decides what was read and hands the group
      over (``hold``); a ``kill -9`` of the agent makes the guardian answer by
      itself (labelled files denied). A guardian that dies is reported
      (``on_tamper("guardian_died", ...)``) and started again.
    * **Reader failure fails open, loudly.** If reading the group fails, the fd is
      closed (the kernel then allows every open, rather than every open hanging)
      and health turns ``failed``. With a guardian, the guardian answers instead.

    ``decide`` must not open files under the roots (it would wait for its own
    answer until the deadline); it gets the fd in ``Access`` instead. What it returns
    allows the open when truthy. ``before(access, result)``, when given, is called
    once the answer is settled (not timed out) and just before it is written: making
    the record, so that what the opener is answered is on record first (the recorder
    journals it at once); what it raises denies the open and is reported to
    ``on_error``. Timeouts and errors are likewise recorded (``on_timeout``,
    ``on_error``) before their DENY is written. ``after(access, result)``, when given,
    is called with that result once the answer is written and before the event fd is
    closed, on the same thread: the work an answer need not wait for (keeping the
    answer for repeats). It runs outside the deadline (the opener has its answer); it
    must not block, and what it raises is reported to ``on_error``.
    """

    name = "fanotify-guard"

    def __init__(
        self,
        roots: Sequence[Path | str],
        decide: Callable[[Access], object],
        *,
        before: Callable[[Access, object], None] | None = None,
        after: Callable[[Access, object], None] | None = None,
        deadline: float = DEFAULT_DEADLINE,
        on_timeout: Callable[[Access], None] | None = None,
        on_overflow: OnOverflow | None = None,
        on_error: OnError | None = None,
        max_stuck: int = DEFAULT_MAX_STUCK,
        guardian_dir: Path | None = None,
        on_gap: Callable[[GapRecords, GapProgress], None] | None = None,
        on_tamper: OnTamper | None = None,
        pre_content: bool = True,
        journal_fd: int = -1,
    ) -> None:
        if deadline <= 0:
            raise ConfigError(f"deadline must be positive seconds, not {deadline!r}")
        self.roots = abs_roots(roots)
        self._decide = decide
        self._before = before
        self._after = after
        #: The repeat journal's fd for the read loop in C (repeats.py); -1: none. Read
        #: at start().
        self.journal_fd = journal_fd
        self._said_untracked = False  # the warning that no connector tracks execs
        self._deadline = deadline
        self._on_timeout = on_timeout
        self._on_overflow = on_overflow
        self._on_error = on_error
        self._max_stuck = max_stuck
        self._own_pid = os.getpid()
        self._health = Health("disabled", "not started")
        self._fan_fd = -1
        self._wake_memfd = -1
        self._tree: TreeWatcher | None = None
        self._answers: Answers | None = None  # the read loop, answering repeats in C
        self._classes = b""  # what set_classes() gave, for a read loop started later
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
        self._guardian_dir = guardian_dir
        self._on_gap = on_gap
        self._on_tamper = on_tamper
        self._guardian: GuardianLink | None = None
        self._guardian_lock = threading.Lock()  # stop() and a failing reader hand over once
        self._guardian_problem = ""
        self._orphan_gap: GapRecords = []  # the journal of a guardian that died holding
        # Writes decided through pre-content events: asked for (pre_content), in effect
        # (probed at start), and why not when asked for but not in effect.
        self._pre_content_wanted = pre_content
        self._pre_content = False
        self._pre_content_problem = "" if pre_content else "turned off (--no-pre-content)"
        self._dac_only_files = 0  # labelled files on a filesystem without pre-content

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Create the groups, start the threads, then mark every directory under the roots.

        Marking happens here, synchronously, so that when ``start()`` returns every
        existing directory is guarded. Without CAP_SYS_ADMIN it logs one line and
        returns with health ``disabled``.
        """
        if self._running:
            return
        adopted = self._adopt_guardian() if self._guardian_dir is not None else None
        if adopted is None and not self._new_group():
            return
        gaps = adopted if adopted is not None else [Gap("", self._orphan_gap, GapProgress())]
        self._orphan_gap = []
        tree = TreeWatcher(
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
            self._hand_over()
            close_quietly(self._fan_fd)
            self._fan_fd = -1
            detail = f"file guard failed: cannot create its directory watch group: {e}"
            _logger.error("%s", detail)
            self._health = Health("failed", detail)
            return
        self._own_pid = os.getpid()  # here, not in __init__: the agent may have forked since
        self._answers = self._new_answers()
        _SWITCH_INTERVAL.lower()
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
        self._probe_pre_content()
        if tree.marked_dirs and (err := tree.check_handles(tree.roots[0])) is not None:
            self._tree_warning = f"new directories are not followed: {err}"
            _logger.error("file guard: %s", self._tree_warning)
        self._health = self._current_health()
        for gap in gaps:
            if not gap.records or self._report_gap(gap):
                gap.progress.finish()
        if adopted is not None and self._guardian is not None:
            self._guardian.confirm()

    def _new_answers(self) -> Answers:
        """The C read loop, journalling its repeats when a journal is given, with the
        file classes set so far."""
        answers = None
        if self.journal_fd >= 0:
            try:
                answers = Answers(self._fan_fd, self._own_pid, ANSWERS_KEPT, self.journal_fd)
            except (ValueError, OSError) as e:
                _logger.error("file guard: repeats not journalled: %s", e)
                self._call_tamper("repeat_journal", f"repeats are not journalled: {e}")
        if answers is None:
            answers = Answers(self._fan_fd, self._own_pid, ANSWERS_KEPT)
        if not answers.tracks_execs() and not self._said_untracked:
            self._said_untracked = True
            _logger.warning(
                "file guard: the kernel's proc connector is not available (CONFIG_PROC_EVENTS,"
                " CAP_NET_ADMIN): each answer reads the process's executable again, and a"
                " tracer attached to a process after its first read of a file is not seen by"
                " the answers given in C (they hold until it execs or the policy changes)"
            )
        if self._classes:
            answers.set_classes(self._classes)
        return answers

    def journal_generation(self) -> int:
        """The repeat journal's generation the next ``take_repeats()`` returns (0: no
        journal)."""
        answers = self._answers
        return answers.journal_gen() if answers is not None else 0

    def _new_group(self) -> bool:
        """Create the permission group (and its guardian, if configured)."""
        try:
            self._fan_fd = fanotify_init(
                FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC | FAN_UNLIMITED_QUEUE | FAN_UNLIMITED_MARKS,
                EVENT_F_FLAGS,
            )
        except OSError as e:
            if e.errno == errno.EPERM:
                detail = f"file guard disabled: {CAP_HINT}"
            else:
                detail = (
                    "file guard disabled: this kernel has no fanotify permission events "
                    f"({e.strerror}); it needs CONFIG_FANOTIFY_ACCESS_PERMISSIONS"
                )
            _logger.warning("%s", detail)
            self._health = Health("disabled", detail)
            return False
        if self._guardian is not None:
            try:
                self._guardian.spawn(self._fan_fd)
            except (GuardianError, OSError) as e:
                self._guardian_problem = f"no guardian: {e}"
                _logger.error("file guard: %s", self._guardian_problem)
                self._guardian = None
        return True

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
            if self._guardian is None:
                # No new open waits from here on; what is queued is still decided.
                with contextlib.suppress(OSError):
                    fanotify_mark(self._fan_fd, FAN_MARK_FLUSH, 0, AT_FDCWD, None)
            self._wake_readers()
            self._decide_queued()
        self._wd_exit = True
        self._wd_wake.set()
        if self._watchdog is not None:
            self._watchdog.join(STOP_TIMEOUT)
            self._watchdog = None
        self._hand_over()
        fan, self._fan_fd = self._fan_fd, -1
        if fan >= 0:
            close_quietly(fan)
        close_quietly(self._wake_memfd)
        self._wake_memfd = -1
        if self._answers is not None:
            self._answers.close()  # its counts stay for take_repeats()
        self._running = False
        _SWITCH_INTERVAL.restore()
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
        if not self._drained.wait(STOP_TIMEOUT):
            _logger.error("file guard reader did not drain within %.0f s; closing", STOP_TIMEOUT)
        poker.join(STOP_TIMEOUT)

    # -- the guardian ------------------------------------------------------------------------
    def _adopt_guardian(self) -> list[Gap] | None:
        """Take the group over from a running guardian: the gaps it answered that are
        not on record yet; None when no guardian runs (the link is kept, to spawn one)."""
        assert self._guardian_dir is not None  # noqa: S101 - only called with one
        self._guardian_problem = ""
        link = GuardianLink(self._guardian_dir, self._guardian_died)
        try:
            adopted = link.adopt()
        except GuardianError as e:
            self._guardian_problem = f"no guardian: {e}"
            _logger.error("file guard: %s", self._guardian_problem)
            return None
        self._guardian = link
        if adopted is None:
            self._orphan_gap = link.unfinished  # reported once the trees are guarded
            return None
        self._fan_fd, gaps = adopted
        _logger.info("file guard adopted the group of guardian %d", link.pid)
        return gaps

    @property
    def guardian_pid(self) -> int:
        """The pid of the guardian holding the group with this guard (0: none)."""
        guardian = self._guardian
        return guardian.pid if guardian is not None else 0

    def _hand_over(self) -> None:
        """Let the guardian answer the group from now on (this agent stops reading)."""
        with self._guardian_lock:
            link, self._guardian = self._guardian, None
        if link is not None:
            link.hold()

    def _decide_queued(self) -> None:
        """Decide the events the C loop read past stop()'s wake-up: the marks stay (the
        guardian answers what comes next), so real events may follow it."""
        answers = self._answers
        if answers is None or self._guardian is None:
            return
        try:
            while (event := answers.next_queued()) is not None:
                self._handle(*event)
        except OSError as e:
            _logger.error("file guard cannot decide what it read before stopping: %s", e)

    def _guardian_died(self, detail: str) -> None:
        self._call_tamper("guardian_died", detail)

    def _report_gap(self, gap: Gap) -> bool:
        """Hand one gap to ``on_gap``; True once it has recorded it."""
        if self._on_gap is None:
            count = len(gap.records)
            _logger.warning("file guard: %d records of a guarded gap not reported", count)
            return True  # nobody to report to: handing it over again would not change that
        try:
            self._on_gap(gap.records, gap.progress)
        except Exception:
            _logger.exception("file guard on_gap failed")
            return False
        return True

    def _call_tamper(self, kind: str, detail: str) -> None:
        if self._on_tamper is None:
            _logger.error("file guard tamper %s: %s", kind, detail)
            return
        try:
            self._on_tamper(kind, detail)
        except Exception:
            _logger.exception("file guard on_tamper failed")

    # -- labelled files wherever they are --------------------------------------------------
    def mark_file(self, fd: int) -> bool:
        """Guard the file open as ``fd`` (any fd, ``O_PATH`` too) by whatever path it is
        reached: an inode mark, so hard links and renames out of the trees and bind
        mounts still ask. False (and an error reported) when it cannot be marked."""
        failure = "cannot guard a labelled file"
        if self._pre_content:
            # A filesystem without pre-content events (the file moved to tmpfs, say)
            # refuses FAN_PRE_ACCESS: such a file's writes rest on DAC alone.
            no_pre_content = (errno.EOPNOTSUPP, errno.EINVAL)
            marked = self._mark_inode(fd, self._file_mask | FAN_PRE_ACCESS, failure, no_pre_content)
            if marked is not None:
                return marked
            self._dac_only_files += 1
        return bool(self._mark_inode(fd, self._file_mask, failure))

    _file_mask = FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM

    def _probe_pre_content(self) -> None:
        """Whether writes can be decided (in a throw-away group: the guard's own
        directory marks carry FAN_ONDIR, which the kernel will not combine with
        FAN_PRE_ACCESS)."""
        if not self._pre_content_wanted or not self._running:
            return
        self._pre_content_problem = pre_content_problem(self.roots)
        self._pre_content = not self._pre_content_problem
        if self._pre_content_problem:
            _logger.warning(
                "file guard: writes rest on file modes and ACLs alone: %s",
                self._pre_content_problem,
            )

    @property
    def decides_writes(self) -> bool:
        """Writes and truncations of labelled files are asked (pre-content events)."""
        return self._pre_content

    def mark_exec(self, fd: int) -> bool:
        """Be asked whenever the program open as ``fd`` is run (``FAN_OPEN_EXEC_PERM``
        on its inode): an exec ends every answer the guard keeps for the process, so a
        program run again in the same process (with other libraries preloaded, say)
        is decided afresh. False (and an error reported) when it cannot be marked."""
        return bool(self._mark_inode(fd, FAN_OPEN_EXEC_PERM, "cannot watch a program"))

    def _mark_inode(
        self, fd: int, mask: int, failure: str, unreported: tuple[int, ...] = ()
    ) -> bool | None:
        """Mark the inode open as ``fd``: True, or False with the error reported -- or
        None, unreported, when the kernel refused it with an errno in ``unreported``."""
        if not self._running or self._failed:
            return False
        try:
            # Through /proc: fanotify_mark() takes no O_PATH fd as the object itself.
            fanotify_mark(self._fan_fd, FAN_MARK_ADD, mask, AT_FDCWD, f"/proc/self/fd/{fd}")
        except OSError as e:
            if e.errno in unreported:
                return None
            self._report_error(None, OSError(e.errno, f"{failure}: {e.strerror}"))
            return False
        return True

    # -- repeats ---------------------------------------------------------------------------
    def repeat(
        self, access: Access, allow: bool, token: object, *, plain: bool = False, cls: int = 0
    ) -> bool:
        """Give ``allow`` to every repeat of ``access`` without calling ``decide()``.

        A repeat is an open by the same process, with the same euid and executable,
        of the same file version (dev, inode, ctime: a label change makes a new
        version) for the same action; it is answered in C and counted against
        ``token`` until ``take_repeats()``. ``plain``: the answer depended on nothing
        of the process but its euid and executable, and the process is vouched for
        (its executable is the file its path names, nothing injected into it): the
        answer is then also given, in C, to the first open of this file version by any
        vouched process with the same euid and executable (counted under its own pid).
        ``cls`` (a plain open of a classed file, ``set_classes``): the answer is also
        given, in C, to such a process's first open of every file of that class.
        Call it from ``decide()``. False when the answer cannot be kept (table full,
        guard stopped): repeats are then decided afresh.
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
            _KINDS[access.action],
            allow,
            token,
            plain,
            cls if plain and access.action == "read" else 0,
        )

    def set_classes(self, entries: bytes, *, replace: bool = True) -> None:
        """The class of each labelled file version (packed ``classes.ENTRY`` records);
        with ``replace``, no other file is in a class any more. Kept for a read loop
        started later."""
        with self._lock:
            self._classes = entries if replace else self._classes + entries
            answers = self._answers
        if answers is not None:
            answers.set_classes(entries, replace)

    def take_repeats(self, *, forget: bool = False) -> list[Repeat]:
        """(token, pid, count, first_ns, last_ns, file) of the repeats answered since the
        last call, one per process and answer; counts start again from zero. ``file``:
        (dev, ino, ctime_ns, path) of the file a class answer was given for, else None.

        Answers of processes that have exited are forgotten; with ``forget`` every
        answer is, and the next open of each is decided afresh: pass it when what
        decisions depend on changes (policy, subjects, the day). Works after ``stop()``
        too, for the repeats counted before it.
        """
        answers = self._answers
        if answers is None:
            return []
        # Reads through read-only descriptors were recorded when the file was opened.
        return [row for row in answers.take(forget) if row[0] is not None]

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
        guardian = self._guardian
        problem = guardian.problem if guardian is not None else self._guardian_problem
        if problem and self._guardian_dir is not None:
            problems.append(f"{problem}: a crash of the agent would leave files unguarded")
        if tree is not None and tree.failed:
            problems.append(f"new directories are not followed: {tree.failed}")
        if tree is not None and tree.unfollowed:
            problems.append(f"new entries of {tree.unfollowed} directories are not followed")
        if not self._pre_content:
            why = self._pre_content_problem
            problems.append(f"writes rest on file modes and ACLs alone: {why}")
        elif self._dac_only_files:
            problems.append(
                f"writes of {self._dac_only_files} labelled files rest on file modes and ACLs "
                "alone: their filesystem has no pre-content events"
            )
        answers = self._answers
        if answers is not None and not answers.tracks_execs():
            problems.append(
                "no proc connector: a tracer attached to a process after the guard answered"
                " it is not seen by the answers kept for that process"
            )
        if problems:
            return Health("degraded", "; ".join(problems))
        marked = tree.marked_dirs if tree is not None else 0
        return Health(
            "ok", f"guarding {marked} directories under {len(self.roots)} roots, writes included"
        )

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

    def _handle(  # noqa: PLR0911, PLR0917 - one event's fields, as Answers.next() gives them
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
        if mask & FAN_PRE_ACCESS:
            if not may_write(pid, dev, ino):
                return self._allow_reading(fd, pid, uid, exe, dev, ino, ctime_ns)
            action = "write"
        else:
            action = "execute" if mask & FAN_OPEN_EXEC_PERM else "read"
        access = Access(pid, uid, exe, fd, dev, ino, ctime_ns, action)
        if self._stuck >= self._max_stuck:
            _ = access.path
            self._call_timeout(access)  # recorded before it is answered
            self._answer(fd, FAN_DENY)
            return True
        started = time.monotonic()
        mine = (access, started)
        self._inflight = mine
        if self._wd_parked:
            self._wd_wake.set()
        error: Exception | None = None
        result: object = False
        try:
            result = self._decide(access)
            allowed = bool(result)
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
            if error is None:
                self._call_timeout(access)
            else:
                self._report_error(access, error)
            self._answer(fd, FAN_DENY)
            return True
        try:
            # What is answered is recorded first (the recorder journals it at once).
            if error is None and self._before is not None:
                error = self._call_before(access, result)
                allowed = allowed and error is None  # an access not recorded is denied
            if error is not None:
                _ = access.path
                self._report_error(access, error)
            # Holding the GIL (respond()): no other thread takes it between the answer
            # and the reader's return to the C loop, which answers the opener's next
            # events meanwhile.
            respond(self._fan_fd, fd, FAN_ALLOW if allowed else FAN_DENY, close=False)
            if error is None and self._after is not None:
                self._call_after(access, result)
        finally:
            os.close(fd)
        return True

    def _allow_reading(  # noqa: PLR0917 - the fields of one event
        self, fd: int, pid: int, uid: int, exe: str, dev: int, ino: int, ctime_ns: int
    ) -> bool:
        """A pre-content read through a read-only descriptor: the open was decided and
        recorded; allowed, and so are its repeats (in C) until the process opens the
        file again. Not recorded again."""
        try:
            self._respond(fd, FAN_ALLOW)
            answers = self._answers
            if answers is not None and self._running:
                answers.remember(pid, uid, exe, dev, ino, ctime_ns, _ACCESS, True, None)
        finally:
            os.close(fd)
        return True

    def _call_before(self, access: Access, result: object) -> Exception | None:
        before = self._before
        assert before is not None  # noqa: S101 - checked by the caller
        try:
            before(access, result)
        except Exception as e:
            _logger.exception("file guard: recording the answer failed")
            return e
        return None

    def _call_after(self, access: Access, result: object) -> None:
        after = self._after
        assert after is not None  # noqa: S101 - checked by the caller
        try:
            after(access, result)
        except Exception as e:  # the answer stands; the failure is reported
            _logger.exception("file guard: after-answer work failed")
            self._report_error(None, e)

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
        respond(self._fan_fd, fd, response)  # and closes fd, whatever the answer did

    def _respond(self, fd: int, response: int) -> None:
        # ENOENT (no such pending event: answered already) is no error there.
        respond(self._fan_fd, fd, response, close=False)

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
                self._call_timeout(access)  # recorded before it is answered
                self._respond(access.fd, FAN_DENY)
            self._start_reader()

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
        self._hand_over()  # a guardian fails closed: its answers, not an open door
        fan, self._fan_fd = self._fan_fd, -1
        if fan >= 0:
            close_quietly(fan)
