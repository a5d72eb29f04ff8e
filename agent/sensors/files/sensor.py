"""The file-guard sensor: every open under the protected roots decided and recorded.

It joins three parts: the kernel edge (``fanotify``: PermissionGuard answers opens,
ChangeWatcher reports writes, creations, renames and deletions), the labels on files
(``baomi.labels``) and the decision engine (``agent.decision``). Each open becomes a
``file_access`` event with the label, the person, the process and the rule that
decided; each change a ``file_change`` event. The opener's program counts as an
approved application by its identity, not its path (``opener``). A process opening the
same file again gets the same answer from the guard's C read loop, counted; every
``FOLD_SECONDS`` (and whenever the policy changes) the counts become one event per
repeated access and every such answer is forgotten, so the next open is decided afresh.

Labels follow content: a process allowed to read a classified file is tainted
(``taint``); what it writes in the trees (or, with ``follow_filesystems``, anywhere on
their filesystems: ``spread``) gets the label it read, and its writes into the places
the export rules name are decided as ``export`` (``export``).

Without a loaded policy every open under the roots is denied: an empty policy is an
error, never "allow all".
"""

from __future__ import annotations

import functools
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from baomi.labels import (
    LEVEL_NAMES,
    UPDATING_PROBLEM,
    Label,
    derive_label,
    effective_level,
    file_identity,
    inherit_label,
    invalid_label,
    policy_path,
    read_label,
)
from baomi.policy.apps import ApprovedApps, ContentHashes, Interpreters
from baomi.policy.errors import PolicyError
from baomi.policy.policyset import PolicySet
from baomi.v1 import events_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from agent.decision.engine import Engine, Verdict
from agent.errors import AgentError, ConfigError
from agent.sensors.base import EventSink, Health
from agent.sensors.files import answering, classes, inodes
from agent.sensors.files.answering import ANSWERING_NAME, AnswersInFlight, attribute_pending
from agent.sensors.files.changes import Change, ChangeWatcher
from agent.sensors.files.dac import DacKeeper
from agent.sensors.files.export import ExportGuard, fixed_part
from agent.sensors.files.fanotify import FAN_OPEN_PERM, fd_path, proc_uid, under_roots
from agent.sensors.files.guardian import GapProgress
from agent.sensors.files.opener import Opener, Openers, unapproved
from agent.sensors.files.permission import Access, PermissionGuard
from agent.sensors.files.refusals import RefusalRecorder
from agent.sensors.files.repeats import RepeatJournal, RepeatJournalError
from agent.sensors.files.spread import FilesystemWrites
from agent.sensors.files.taint import Taint, Taints, opens_for_writing

_logger = logging.getLogger(__name__)

CMDLINE_BYTES = 256  # of /proc/PID/cmdline kept in an event
LABEL_CACHE = 65_536  # labels remembered by (dev, ino, ctime_ns)
LABELS_READ_AT_START = 16_384  # of them, filled by the scan at start
#: The start's scan hands what it found on (to labelled.db, to the C loop's classes)
#: this often. Kept for the whole scan, a row and a class entry per file are short-lived
#: objects laid between those that stay (labels, homes), and the holes they leave keep
#: Python's allocator ~0.6 MB larger for 2,000 files, for good (measured).
SCAN_BATCH = 256
PENDING_WRITES = 16_384  # files written, looked at again after the next fold (per fold)
EXPORTS_KEPT = 16_384  # (pid, file) whose export was decided at its open
SEVERITY_OF = {
    (True, False): events_pb2.SEVERITY_INFO,  # allowed, label fine
    (False, False): events_pb2.SEVERITY_MEDIUM,  # denied
    (True, True): events_pb2.SEVERITY_HIGH,  # cannot happen: invalid labels deny
    (False, True): events_pb2.SEVERITY_HIGH,  # denied over an invalid label
}
_MISSING = object()
#: Test-only: a decided open whose path contains this is recorded and noted in flight,
#: then its answer waits for good -- the instant a kill test aims at (the guardian
#: denies it; the next agent records that).
PAUSE_ENV = "BAOMI_TEST_PAUSE_BEFORE_ANSWER"
PAUSE_SECONDS = 3600.0


def enforcement(decides_writes: bool) -> str:
    """What enforces what, said in the health line and at start. Opens for read and
    execute reach the guard; writes and truncations of labelled files too where the
    kernel has pre-content events (``decides_writes``). The rest is refused by the
    kernel on the file modes and ACLs the DAC keeper maintains, before any event --
    such refusals are recorded through kernel audit (refusals.py)."""
    writes = (
        "write/truncate: decided per file and process and recorded, and file modes and ACLs; "
        if decides_writes
        else "write/truncate: file modes and ACLs only (NO pre-content events); "
    )
    return (
        f"read/execute: decided per open and recorded; {writes}delete/rename/link: file "
        "modes and ACLs only (refused attempts recorded through kernel audit); "
        "export: opens for writing by processes that read labelled files decided in the "
        "places export rules name, and recorded"
    )


FOLD_SECONDS = 1.0  # repeated identical accesses are counted and recorded this often


def _set_time(stamp: Timestamp, ns: int) -> None:
    """``stamp.FromNanoseconds(ns)`` without its Python-level checks: the fold sets
    three stamps for each answer it records."""
    stamp.seconds, stamp.nanos = divmod(ns, 1_000_000_000)


@dataclass(frozen=True, kw_only=True)
class FileGuardConfig:
    """Where the guard watches and how long a decision may take."""

    roots: tuple[Path, ...]
    label_key: bytes  # labels count only with a seal by this key (baomi.labels)
    inodes_db: Path | None = None  # where the labelled inodes are kept (None: memory only)
    policies: Path | None = None  # a local policy directory, loaded at start
    deadline: float = 0.050  # seconds; past it the open is denied
    #: The state directory a guardian process keeps its socket and journal in, holding
    #: the permission group while the agent is down (None: no guardian, fails open).
    guardian_dir: Path | None = None
    #: Decide writes and truncations of labelled files through pre-content events
    #: where the kernel has them; False leaves them to DAC alone, as on kernels before
    #: 6.14 (the degraded mode, for testing it).
    pre_content: bool = True
    #: Where repeats answered in C are journalled before they are answered, so that a
    #: killed agent loses none (repeats.py); None: kept in memory until recorded.
    repeat_journal: Path | None = None
    #: Label what processes that read labelled files write anywhere on the protected
    #: trees' filesystems, not only in the trees (spread.py). Off by default: a whole
    #: filesystem is watched for writes, the root filesystem too if a tree is on it.
    follow_filesystems: bool = False


def _cmdline(pid: int) -> str:
    try:
        fd = os.open(f"/proc/{pid}/cmdline", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        raw = os.read(fd, CMDLINE_BYTES)
    except OSError:
        return ""
    finally:
        os.close(fd)
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()


@dataclass(slots=True)
class _Decided:
    """What _decide() found, for _answering() and _decided(); true when the open is
    allowed."""

    verdict: Verdict
    engine: Engine | None
    label: Label | None
    identity: bytes  # the file's identity when its label was just read; else b""
    opener: Opener | None  # the process as the policy saw it (None: no policy)
    recorded: bytes = b""  # the access's event as recorded (_answering): for its repeats
    in_flight: int = -1  # its slot in the answers in flight until answered (-1: none)

    def __bool__(self) -> bool:
        return self.verdict.allow


class FileGuard:
    """Sensor ``files``: enforce and record access to labelled files."""

    name = "files"

    def __init__(self, config: FileGuardConfig, sink: EventSink) -> None:
        if not config.roots:
            raise ConfigError("the files sensor needs at least one protected root (--protect DIR)")
        self._config = config
        self._sink = sink
        self._engine: Engine | None = None
        # The approved programs of the engine's policy, by identity (opener.py); paired
        # with the engine they were resolved for.
        self._openers: tuple[Engine, Openers] | None = None
        self._hashes = ContentHashes()  # kept across policies: unchanged programs stay hashed
        self._labels: dict[tuple[int, int, int], Label | None] = {}
        # Labelled files by version and their classes, for the guard's C loop
        # (classes.py); entries classed since the last fold, handed to it then.
        self._classes = classes.FileClasses()
        self._classed: list[tuple[classes.FileVersion, int]] = []
        self._handed = 0  # entries the guard holds (some may be old versions)
        self._last_labels: dict[int, Label] = {}  # inode_key -> the label last seen
        self._declassified: set[tuple[int, int, str]] = set()
        # Per fold period (cleared by flush(), so a reused pid or a replaced program
        # is looked at again within a period): what a process's command line is, and
        # which file an executable path names.
        self._cmdlines: dict[tuple[int, str], str] = {}
        self._programs: dict[str, tuple[int, int] | None] = {}
        self._lock = threading.Lock()
        # A new file in a labelled directory is labelled by whichever comes first: its
        # creating open (the guard) or its FAN_CREATE (the change watcher). Reading and
        # labelling happen under this lock, or one would read the other's half-written
        # label (fail-closed: the open denied).
        self._inherit_lock = threading.Lock()
        #: Changes the change watcher reported in the trees (any kind), counted.
        self.tree_changes = 0
        # Held while an answer is handed to the guard to repeat and while repeats are
        # taken, so no answer of a replaced policy is remembered after the take.
        self._fold_lock = threading.Lock()
        # Held across a whole flush (take, record, mark done), so that no take reuses
        # a half of the repeat journal before the last take's events are recorded. The
        # fold lock is held only around the take: recording thousands of repeats takes
        # tens of ms, and a decision handing its answer over (_decided, on the
        # permission path) waiting for it held up the events behind it past the
        # deadline -- legitimate opens denied.
        self._flush_lock = threading.Lock()
        self._flusher = threading.Thread(target=self._flush_loop, name="files-fold", daemon=True)
        self._stopping = threading.Event()
        self._started = False  # start() has returned: every labelled file is marked
        # (dev, ino) of every approved program (of any policy loaded): runs watched
        self._programs_run: frozenset[tuple[int, int]] = frozenset()
        self._journal: RepeatJournal | None = None
        # The accesses being answered, by fd number (answering.py); those killed agents
        # left unanswered, by their pid; and the pids whose gaps came (and were recorded).
        self._in_flight: AnswersInFlight | None = None
        self._unanswered: dict[int, dict[int, bytes]] = {}
        self._gap_pids: tuple[set[int], set[int]] = (set(), set())
        self._pause_marker = os.environ.get(PAUSE_ENV, "")
        self._guard = PermissionGuard(
            config.roots,
            self._decide,
            before=self._answering,
            after=self._decided,
            deadline=config.deadline,
            on_timeout=self._timed_out,
            on_overflow=self._overflow,
            on_error=self._error,
            guardian_dir=config.guardian_dir,
            on_gap=self._gap_recorded,
            on_tamper=self._tamper,
            pre_content=config.pre_content,
        )
        self._changes = ChangeWatcher(
            config.roots, self._on_change, on_overflow=self._overflow, on_written=self._follow
        )
        # What each process has read (taint.py): what it writes gets that label, and its
        # writes into the places the export rules name are decided as exports.
        self._taints = Taints()
        self._export = ExportGuard(self._export_decision, self._guard.roots)
        self._spread = (
            FilesystemWrites(config.roots, self._known_tainted, self._written_elsewhere)
            if config.follow_filesystems
            else None
        )
        self._exported: dict[tuple[int, int, int], None] = {}
        # Files written since the last fold, by pid: a read answered in C (a shared
        # answer) is learnt at the next fold, and they are looked at again then.
        self._pending: dict[tuple[str, int], None] = {}  # (path, writer's pid)
        self._export_flushed: set[int] = set()  # pids a fold was forced for, this period
        # Writes and deletions are refused by DAC, which the keeper owns (dac.py).
        self._dac = DacKeeper(config.roots, config.label_key, lambda: self._engine, sink)
        self._inodes = inodes.LabelledInodes(config.inodes_db)
        # ... and those refusals are recorded through kernel audit.
        self._refusals = RefusalRecorder(
            config.roots, config.label_key, lambda: self._engine, sink, fold_seconds=FOLD_SECONDS
        )

    # -- policy --------------------------------------------------------------------------
    def apply_policy(self, directory: Path) -> None:
        """Load and enforce the policy in ``directory``; PolicyError keeps the old one."""
        policyset = PolicySet.load(directory)
        interpreters = Interpreters.scan()
        apps = ApprovedApps.resolve(
            policyset.subjects,
            hashes=self._hashes,
            interpreters=interpreters,
            protected=[Path(r) for r in self._guard.roots],
        )
        engine = Engine(policyset)
        openers = Openers(apps, hashes=self._hashes, interpreters=interpreters)
        with self._lock:
            # A new Engine, not a reload in place: the fold table is keyed by the engine
            # that decided, so no answer of the old policy is given after this returns.
            self._openers = (engine, openers)
            self._engine = engine
            self._programs_run = self._programs_run | frozenset(apps.by_inode)
        self._export.watch(fixed_part(r.obj) for r in policyset.rules if r.act == "export")
        self.flush(forget=True)
        # After the forget: the classes are numbered afresh, so no class answer of the
        # old policy (forgotten now) could be given to a file classed under this one.
        with self._fold_lock:
            self._classed.clear()
            entries = self._classes.reclassify(functools.partial(_signature, engine))
            self._set_classes(entries, replace=True)
        self._watch_programs()
        if self._dac.policy_changed():
            self._revalidate_classes()
        _logger.info("file policy %s in force", policyset.version)

    @property
    def policy_version(self) -> str:
        """The version of the policy in force, "" when none is."""
        engine = self._engine
        return engine.version if engine is not None else ""

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Load the local policy if one is configured, then start guarding."""
        if self._config.policies is not None:
            try:
                self.apply_policy(self._config.policies)
            except PolicyError as e:
                _logger.error("%s; every open under the protected roots is denied", e)
        self._open_repeat_journal()
        self._open_answers_in_flight()
        self._guard.start()
        self._forget_unanswered()
        self._watch_programs()
        self._guard_labelled_inodes()
        self._changes.start()
        # After the change watcher: nothing made meanwhile is missed.
        if self._dac.start():
            self._revalidate_classes()  # the keeper's chmods changed ctimes
        self._refusals.start()  # after the keeper: its own chmods are not refusals
        if self._spread is not None:
            self._spread.start()
        self._flusher.start()
        self._started = True
        _logger.info("file guard: %s", enforcement(self._guard.decides_writes))

    def stop(self) -> None:
        """Stop both fanotify groups, then record the repeats still counted."""
        self._guard.stop()
        self._changes.stop()
        self._dac.stop()
        self._refusals.stop()
        self._export.stop()
        if self._spread is not None:
            self._spread.stop()
        self._stopping.set()
        if self._flusher.is_alive():
            self._flusher.join()
        self.flush()
        self._inodes.close()
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._in_flight is not None:
            self._in_flight.close()
            self._in_flight = None

    def _open_answers_in_flight(self) -> None:
        """Read what a killed agent left being answered (its gap, handed over when the
        guard starts, says which of those the guardian denied), then note this run's.
        Only with a guardian: without one, nobody denies a dead agent's opens."""
        directory = self._config.guardian_dir
        if directory is None:
            return
        try:
            self._unanswered = answering.keep_left(directory)
            in_flight = AnswersInFlight(directory / ANSWERING_NAME)
        except OSError as e:
            _logger.error("file guard: answers in flight not kept: %s", e)
            self._tamper("answers_in_flight", f"cannot keep the answers in flight: {e}")
            return
        in_flight.start(os.getpid())
        self._in_flight = in_flight

    def _forget_unanswered(self) -> None:
        """Once the gaps handed over are recorded: forget the notes of the agents they
        name, and of agents no gap named (the guardian dropped it, or died with it);
        keep those of a gap not recorded, handed over again at the next start."""
        directory = self._config.guardian_dir
        named, recorded = self._gap_pids
        done = {pid for pid in self._unanswered if pid in recorded or pid not in named}
        if directory is not None and done:
            try:
                answering.forget_left(directory, done)
            except OSError as e:
                _logger.error("file guard: cannot forget answers in flight: %s", e)
        self._unanswered = {}

    def _open_repeat_journal(self) -> None:
        """Record the repeats a killed agent answered but never recorded, then hand the
        journal to the guard for this run's repeats."""
        path = self._config.repeat_journal
        if path is None:
            return
        try:
            journal = RepeatJournal(path)
        except (RepeatJournalError, OSError) as e:
            _logger.error("file guard: repeats are kept in memory only: %s", e)
            self._tamper("repeat_journal", f"cannot use the repeat journal: {e}")
            return
        recovered = journal.read_back()
        for r in recovered:
            event = self._repeat_event(r.event, r.pid, r.count, r.first_ns, r.last_ns)
            if r.file is not None:
                self._class_event(event, *r.file)
            self._sink(event)
        journal.mark_all_done()
        if recovered:
            _logger.warning(
                "file guard: recorded %d repeats a killed agent had answered",
                sum(r.count for r in recovered),
            )
        self._journal = journal
        self._guard.journal_fd = journal.fd

    def _program_run(self, access: Access) -> bool:
        """A run of an approved program (of any policy loaded) outside the protected
        trees: its exec is seen only so that the process's answers end there."""
        return (
            access.action == "execute"
            and (access.dev, access.ino) in self._programs_run
            and not under_roots(access.path, self._guard.roots)
        )

    def _watch_programs(self) -> None:
        """Have the guard see every run of an approved program (its answers for the
        running process end there: the same program run again with a library
        preloaded is another question)."""
        openers = self._openers
        if openers is None:
            return
        for app in openers[1].apps.by_inode.values():
            try:
                fd = os.open(app.path, os.O_PATH | os.O_CLOEXEC)
            except OSError as e:
                _logger.warning("cannot watch approved program %s: %s", app.path, e.strerror)
                continue
            try:
                self._guard.mark_exec(fd)
            finally:
                os.close(fd)

    def _guard_labelled_inodes(self) -> None:
        """Mark every labelled inode itself: those kept from earlier runs (found by file
        handle, wherever they were moved or linked since) and those in the trees now."""
        try:
            self._inodes.open()
        except Exception as e:  # noqa: BLE001 - a bad database must not stop the guard
            _logger.error("labelled inodes not kept across restarts: %s", e)
            self._tamper("labelled_inodes", f"cannot open the labelled-inode set: {e}")
        mounts = inodes.mount_fds(self._guard.roots)
        kept = 0
        try:
            for fd, _home in self._inodes.reopen_known(mounts):
                try:
                    kept += self._guard.mark_file(fd)
                finally:
                    os.close(fd)
        finally:
            for fd in mounts.values():
                os.close(fd)

        def hand_on() -> None:
            self._inodes.persist()
            with self._fold_lock:
                self._hand_classes()

        found_so_far = 0

        def found(fd: int, path: str) -> None:
            nonlocal found_so_far
            st = os.fstat(fd)
            identity = file_identity(fd)
            label = read_label(f"/proc/self/fd/{fd}", self._config.label_key, identity=identity)
            home = policy_path(label, path)
            if path == home:
                path = home  # one string for both: the state kept per file is mostly paths
            self._inodes.add(fd, home, key=(st.st_dev, st.st_ino), identity=identity)
            self._guard.mark_file(fd)
            version = (st.st_dev, st.st_ino, st.st_ctime_ns)
            # The first open of this file version needs no second read of its label (the
            # classes keep those they class); a change of it from here on is compared
            # with what was seen now.
            classed = self._class_file(version, label, self._engine, path)
            if not classed and len(self._labels) < LABELS_READ_AT_START:
                self._labels[version] = label
            self._label_seen(path, st.st_dev, st.st_ino, label, 0, 0)
            found_so_far += 1
            if found_so_far % SCAN_BATCH == 0:
                hand_on()

        scanned = inodes.scan(self._guard.roots, found, lambda e: _logger.warning("scan: %s", e))
        hand_on()
        _logger.info(
            "guarding %d labelled files by inode (%d kept from earlier runs)", scanned, kept
        )

    def flush(self, *, forget: bool = False) -> None:
        """Record every counted repeat; with ``forget``, also forget every answer the
        guard repeats (what decisions depend on changed)."""
        self._inodes.persist()
        self._cmdlines.clear()
        self._programs.clear()
        # The take's generation of the repeat journal is marked done only once its
        # events are recorded, and before the next take reuses its half.
        with self._flush_lock:
            with self._fold_lock:
                generation = self._guard.journal_generation()
                repeats = self._guard.take_repeats(forget=forget)
            # Per process, only the highest label it read taints it: one look at each.
            strongest: dict[int, events_pb2.FileAccess] = {}
            for recorded, pid, count, first_ns, last_ns, file in repeats:
                assert isinstance(recorded, bytes)  # noqa: S101 - only _decide() gives tokens
                event = self._repeat_event(recorded, pid, count, first_ns, last_ns)
                if file is not None:
                    self._class_event(event, *file)
                access = event.file_access
                if _taints_by_repeat(access):
                    best = strongest.get(pid)
                    if best is None or access.level > best.level:
                        strongest[pid] = access
                self._sink(event)
            for access in strongest.values():
                self._taint_by_repeat(access)
            if self._journal is not None and generation:
                self._journal.mark_done(generation)
            with self._fold_lock:
                self._hand_classes()

    def _repeat_event(
        self, recorded: bytes, pid: int, count: int, first_ns: int, last_ns: int
    ) -> events_pb2.Event:
        """The event of ``count`` repeats by ``pid`` of the access recorded as
        ``recorded``."""
        event = events_pb2.Event.FromString(recorded)
        _set_time(event.time, last_ns)
        access = event.file_access
        if access.pid != pid:  # a shared answer, used by another process
            access.pid = pid
            access.cmdline = self._cmdline_of(pid, access.executable)
        access.count = count
        _set_time(access.first, first_ns)
        _set_time(access.last, last_ns)
        return event

    # -- classes (classes.py) ---------------------------------------------------------------
    def _class_file(
        self,
        version: classes.FileVersion,
        label: Label | None,
        engine: Engine | None,
        path: str,
    ) -> int:
        """The class of a labelled file version found at ``path`` (0: none), to be
        handed to the guard at the next fold when it is new there."""
        if label is None or engine is None or label.home is None:
            return 0
        if label.until is not None and label.until < date.today():
            return 0  # its first open after the period ran out is recorded as such
        number = self._classes.number_of(version)
        if not number:
            number = self._classes.add(version, label, _signature(engine, label.home), path)
            if number:
                self._classed.append((version, number))
        return number

    def _revalidate_classes(self) -> None:
        """Class again the files whose ctime changed with their label unchanged (the
        DAC keeper's work), and hand the guard every class afresh."""
        key = self._config.label_key
        entries = self._classes.revalidate(lambda fd: read_label(f"/proc/self/fd/{fd}", key))
        with self._fold_lock:  # files classed meanwhile are handed over at the next fold
            self._set_classes(entries, replace=True)

    def _hand_classes(self) -> None:
        """Hand the guard the files classed since the last time (fold lock held). Each
        relabelled file adds a version and leaves its old one behind there; once those
        would outnumber the files known, the guard gets exactly the known ones instead."""
        if not self._classed:
            return
        entries, self._classed = self._classed, []
        if self._handed + len(entries) > len(self._classes) + classes.SLACK:
            self._set_classes(self._classes.current(), replace=True)
        else:
            self._set_classes(classes.pack(entries), replace=False)

    def _set_classes(self, entries: bytes, *, replace: bool) -> None:
        """(fold lock held) Classes only spare Python work: a failure is logged, and
        files the guard has no class for are decided in Python."""
        try:
            self._guard.set_classes(entries, replace=replace)
        except (ValueError, MemoryError) as e:
            _logger.error("file guard: classes not handed to the C loop: %s", e)
            return
        count = len(entries) // classes.ENTRY.size
        self._handed = count if replace else self._handed + count

    def _class_event(
        self, event: events_pb2.Event, dev: int, ino: int, ctime_ns: int, path: bytes
    ) -> None:
        """Make the event of a class answer's repeats name its own file: the path it was
        opened by, and its label's id and home (the rest of the label is the class's)."""
        access = event.file_access
        access.path = os.fsdecode(path)
        label = self._classes.label_of((dev, ino, ctime_ns))
        if label is None:  # read back after a restart: its label as it is now
            label = self._label_by_path(access.path, dev, ino)
        access.label_id = (label.label_id or "") if label is not None else ""
        access.home = (label.home or "") if label is not None else ""
        if label is None:
            access.reason = f"{access.reason} (answered for its class; its label is gone)"[:500]

    def _label_by_path(self, path: str, dev: int, ino: int) -> Label | None:
        key = self._config.label_key
        found = classes.label_at(path, dev, ino, lambda fd: read_label(f"/proc/self/fd/{fd}", key))
        label = found[1] if found is not None else None
        return label if label is not None and label.valid else None

    def _flush_loop(self) -> None:
        """Fold repeats every period; at midnight forget the answers too (labels expire
        and training lapses by the day)."""
        day = date.today()
        while not self._stopping.wait(FOLD_SECONDS):
            today = date.today()
            written, self._pending = self._pending, {}  # before the fold: see _follow
            self.flush(forget=today != day)
            day = today
            self._retry_pending(written)  # before a sweep forgets the processes gone
            self._taints.sweep()
            self._export_flushed.clear()
            self._export.refresh()

    def health(self) -> Health:
        """The worst of the guard's, the watcher's, the DAC keeper's and the refusal
        recorder's health; degraded while starting and without policy."""
        guard, changes, dac = self._guard.health(), self._changes.health(), self._dac.health()
        refusals, export = self._refusals.health(), self._export.health()
        spread = self._spread.health() if self._spread is not None else export
        if not self._started and guard.state == "ok":
            return Health("degraded", "starting: labelled files are being found and marked")
        if self._engine is None and guard.state == "ok" and dac.state == "ok":
            return Health("degraded", "no policy loaded: every protected open is denied")
        order = ("ok", "degraded", "disabled", "failed")
        parts = (guard, changes, dac, refusals, export, spread)
        worst = max(parts, key=lambda h: order.index(h.state))
        if worst.state == "ok":
            writes = enforcement(self._guard.decides_writes)
            return Health("ok", f"{guard.detail}; {dac.detail}; {writes}")
        return worst

    # -- the decision path -----------------------------------------------------------------
    def _label(self, access: Access) -> tuple[Label | None, bytes]:
        """The file's label, and its identity when it was just read from the file
        (b"" when the label came from the cache)."""
        key = (access.dev, access.ino, access.ctime_ns)
        label: Any = self._classes.label_of(key) or self._labels.get(key, _MISSING)
        if label is not _MISSING:
            return label, b""
        identity = file_identity(access.fd)
        # Under the lock the change watcher labels new files with: read outside it,
        # a label it is writing reads as "update in progress" (and is denied).
        with self._inherit_lock:
            label = read_label(access.fd, self._config.label_key, identity=identity)
            if label is None:
                label = self._unlabelled(access, identity)
        if len(self._labels) >= LABEL_CACHE:
            self._labels.clear()
        self._labels[key] = label
        return label, identity

    def _unlabelled(self, access: Access, identity: bytes) -> Label | None:
        """The label of a file with no label attributes: fail-closed if it is an inode
        known to be labelled (its label was stripped), inherited if it is new in a
        labelled directory, else none (unclassified)."""
        known = self._inodes.get(access.dev, access.ino)
        if known is not None and known.identity == identity:
            return invalid_label(
                f"the label was removed from a labelled file (home {known.home}): set it again"
            )
        # A file just created in a labelled directory (this may be its creating open):
        # give it the directory's label before anyone reads it -- only when the path
        # the kernel gives is this very file in the agent's view, since an opener in
        # another mount namespace may see other directories by the same names.
        path = Path(access.path)
        try:
            st = path.lstat()
        except OSError:
            return None
        if (st.st_dev, st.st_ino) != (access.dev, access.ino):
            return None
        return inherit_label(path.parent, access.fd, self._config.label_key, name=path.name)

    def _keep_labelled(
        self,
        fd: int,
        label: Label,
        path: str,
        key: tuple[int, int] | None = None,
        identity: bytes = b"",
    ) -> None:
        """A labelled file: make sure its inode is marked and kept, wherever it is."""
        try:
            if self._inodes.add(fd, policy_path(label, path), key=key, identity=identity):
                self._guard.mark_file(fd)
        except OSError as e:
            _logger.warning("cannot keep the labelled inode of %s: %s", path, e)

    def _keep_labelled_path(self, path: str, label: Label) -> None:
        try:
            fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        try:
            self._keep_labelled(fd, label, path)
        finally:
            os.close(fd)

    def _home_of(self, dev: int, ino: int, *labels: Label | None) -> str:
        """The home of a file: from the first of ``labels`` with one, else from the
        labelled-inode set ("" when neither knows it)."""
        for label in labels:
            if label is not None and label.home:
                return label.home
        known = self._inodes.get(dev, ino)
        return known.home if known is not None else ""

    def _tamper(self, kind: str, detail: str) -> None:
        self._sink(
            events_pb2.Event(
                severity=events_pb2.SEVERITY_HIGH,
                tamper=events_pb2.Tamper(kind=kind, detail=detail[:500]),
            )
        )

    def _label_seen(  # noqa: PLR0917 - where, what, and who
        self,
        path: str,
        dev: int,
        ino: int,
        now: Label | None,
        pid: int,
        uid: int,
        *,
        attributes_changed: bool = False,
    ) -> None:
        """Compare a file's label with the last one seen on it and record a change, as a
        ``label`` file change: HIGH when the label was removed or no longer holds
        (written around ``baomi-agent label set``).

        Both the open path and the change watcher see labels; whichever sees a change
        first records it, with its process (the one that changed the attributes, or
        the first to open the file after). A file never seen labelled since the agent
        started has nothing to compare with: a label removed from it is not recorded,
        and an invalid one only when its attributes were just changed.
        """
        key = inodes.inode_key(dev, ino)
        with self._lock:
            before = self._last_labels.get(key)
            if now == before:
                return
            if now is None:
                self._last_labels.pop(key, None)
            else:
                if len(self._last_labels) >= LABEL_CACHE:
                    self._last_labels.clear()  # bounded; a file forgotten is learnt again
                self._last_labels[key] = now
        if before is None and not (attributes_changed and now is not None and not now.valid):
            return  # first seen: nothing to compare with
        alarming = now is None or not now.valid
        self._sink(
            events_pb2.Event(
                severity=events_pb2.SEVERITY_HIGH if alarming else events_pb2.SEVERITY_INFO,
                file_change=events_pb2.FileChange(
                    path=path,
                    change="label",
                    uid=max(uid, 0),
                    pid=max(pid, 0),
                    level=effective_level(now, date.today()),  # type: ignore[arg-type]
                    label_id=(now.label_id or "") if now else "",
                    home=self._home_of(dev, ino, now, before),
                ),
            )
        )

    def _decide(self, access: Access) -> _Decided | bool:
        """The answer to an open: only what the answer needs; the rest is _decided()."""
        engine = self._engine
        if self._taints:
            self._follow_open(access)
        label, identity = self._label(access)
        if label is None and self._program_run(access):
            return True  # watched, not guarded (_watch_programs): nothing to decide
        if engine is None:
            verdict, opener = Verdict(False, "", "no policy loaded"), None
        else:
            verdict, opener = self._verdict(engine, access, label)
        return _Decided(verdict, engine, label, identity, opener)

    def _answering(self, access: Access, result: object) -> None:
        """Just before the answer: record the access. The recorder journals the event
        before it returns, so an agent killed right after the answer still has it; and
        note it in flight by its event's fd number until the answer is written
        (``_decided``), so that if a kill lets the guardian answer it instead, the next
        agent records what it became (answering.py)."""
        if isinstance(result, _Decided):
            if self._tainting(access, result):  # before the answer: before any write
                assert result.label is not None  # noqa: S101 - _tainting checks it
                self._taints.read(access.pid, result.label, access.path)
            result.recorded = self._record(access, result.label, result.verdict)
            if self._in_flight is not None:
                result.in_flight = self._in_flight.hold(access.fd, result.recorded)
            if self._pause_marker and self._pause_marker in access.path:
                _logger.warning("%s: not answering %s (test)", PAUSE_ENV, access.path)
                time.sleep(PAUSE_SECONDS)

    def _decided(self, access: Access, result: object) -> None:
        """After the answer (the event fd still open): keep a labelled inode, compare
        the label with the last one seen and keep the answer for its repeats."""
        if not isinstance(result, _Decided):
            return  # an approved program run: nothing to record
        if self._in_flight is not None:
            self._in_flight.release(result.in_flight)
        label, verdict, engine = result.label, result.verdict, result.engine
        if result.identity:  # the label was just read from the file
            if label is not None:
                key = (access.dev, access.ino)
                self._keep_labelled(access.fd, label, access.path, key, result.identity)
            self._label_seen(access.path, access.dev, access.ino, label, access.pid, access.uid)
        # The same process opening the same file version again, under the same policy,
        # gets the same answer from the guard (in C) and is counted, not re-recorded;
        # so does any plain process of the same person and program.
        plain = self._plain(access, result.opener)
        with self._fold_lock:
            if engine is self._engine:  # not decided under a policy replaced meanwhile
                cls = 0
                if plain and label is not None and access.action == "read":
                    version = (access.dev, access.ino, access.ctime_ns)
                    cls = self._class_file(version, label, engine, access.path)
                self._guard.repeat(access, verdict.allow, result.recorded, plain=plain, cls=cls)

    def _plain(self, access: Access, opener: Opener | None) -> bool:
        """Whether the opener's answers hold for every process of its euid and
        executable path that is plain too: nothing singled it out (taint, a tracer, an
        interpreter's extra execute check, an approved program by another path), and
        the file it runs is the one its path names here (not a bind mount or another
        namespace's file by the same name)."""
        exe = access.executable
        if (
            opener is None
            or opener.program is None
            or opener.interpreter
            or opener.exe not in (exe, unapproved(exe))
        ):
            return False
        named = self._programs.get(exe, _MISSING)
        if named is _MISSING:
            try:
                st = os.stat(exe)  # noqa: PTH116 - the hot path: no Path object
                named = (st.st_dev, st.st_ino)
            except OSError:
                named = None
            if len(self._programs) >= LABEL_CACHE:
                self._programs.clear()
            self._programs[exe] = named
        return named is not None and named == opener.program  # looked up by Openers

    def _cmdline_of(self, pid: int, exe: str) -> str:
        """The command line of a process, read once per fold period per program."""
        key = (pid, exe)
        line = self._cmdlines.get(key)
        if line is None:
            line = _cmdline(pid)
            if len(self._cmdlines) >= LABEL_CACHE:
                self._cmdlines.clear()
            self._cmdlines[key] = line
        return line

    def _opener(self, engine: Engine, access: Access) -> Opener:
        """The opening process as ``engine``'s policy sees it (opener.py)."""
        pair = self._openers
        if pair is None or pair[0] is not engine:  # a policy switched meanwhile
            return Opener(unapproved(access.executable, "policy changing"), "?")
        return pair[1].lookup(access.pid, access.executable)

    def _verdict(
        self, engine: Engine, access: Access, label: Label | None
    ) -> tuple[Verdict, Opener]:
        """The engine's verdict on ``access``, the opener's program given by identity.

        A read by an interpreter or the dynamic loader runs what it reads (``sh
        run.sh``, ``ld.so BINARY``): it is decided as an execute too, and denied when an
        ``execute, deny`` rule matches the file; a read no such rule matches is decided
        as a read alone (the agent cannot tell a script from data).
        """
        opener = self._opener(engine, access)
        # The file's home, not the way in (the path only for unlabelled files).
        path = label.home if label is not None and label.home else access.path
        decide = functools.partial(
            engine.decide,
            uid=access.uid,
            exe=opener.exe,
            path=path,
            file_key=(access.dev, access.ino, access.ctime_ns),
            label=label,
        )
        verdict = decide(action=access.action)
        if verdict.allow and opener.interpreter and access.action == "read":
            run = decide(action="execute")
            if not run.allow and run.rule:
                why = f"read by {opener.interpreter}, which runs what it reads: {run.reason}"
                return Verdict(False, run.rule, why), opener
        return verdict, opener

    def _record(self, access: Access, label: Label | None, verdict: Verdict) -> bytes:
        """Record the access; returns its event serialized, to stand for its repeats."""
        today = date.today()
        invalid = label is not None and not label.valid
        person = self._engine.policyset.subjects.by_uid.get(access.uid) if self._engine else None
        event = events_pb2.Event(
            severity=SEVERITY_OF[(verdict.allow, invalid)],
            file_access=events_pb2.FileAccess(
                path=access.path,
                action=access.action,
                uid=max(access.uid, 0),
                user=person.name if person else "",
                pid=access.pid,
                executable=access.executable,
                cmdline=self._cmdline_of(access.pid, access.executable),
                level=effective_level(label, today),  # type: ignore[arg-type]
                label_id=(label.label_id or "") if label else "",
                label_until=label.until.isoformat() if label and label.until else "",
                label_scope=list(label.scope) if label else [],
                home=self._home_of(access.dev, access.ino, label) if label else "",
                decision=events_pb2.DECISION_ALLOW if verdict.allow else events_pb2.DECISION_DENY,
                reason=verdict.reason[:500],
                rule=verdict.rule[:500],
            ),
        )
        recorded = event.SerializeToString()  # before the recorder's thread fills it in
        self._sink(event)
        if (
            label is not None
            and label.valid
            and label.level > 0
            and label.until is not None
            and label.until < today
        ):
            self._report_declassified(access, label)
        return recorded

    def _report_declassified(self, access: Access, label: Label) -> None:
        """The first open after a label's period ran out says so, once per file label."""
        key = (access.dev, access.ino, f"{label.label_id}:{label.until}")
        with self._lock:
            if key in self._declassified:
                return
            self._declassified.add(key)
        self._sink(
            events_pb2.Event(
                severity=events_pb2.SEVERITY_INFO,
                file_change=events_pb2.FileChange(
                    path=access.path,
                    change="declassified",
                    uid=max(access.uid, 0),
                    pid=access.pid,
                    level=events_pb2.LEVEL_UNCLASSIFIED,
                    label_id=label.label_id or "",
                ),
            )
        )

    def _denied_without_decision(self, access: Access, reason: str) -> None:
        """Record an open the guard denied because no decision could be made."""
        self._sink(
            events_pb2.Event(
                severity=events_pb2.SEVERITY_HIGH,
                file_access=events_pb2.FileAccess(
                    path=access.path,
                    action=access.action,
                    uid=max(access.uid, 0),
                    pid=access.pid,
                    executable=access.executable,
                    decision=events_pb2.DECISION_DENY,
                    reason=reason,
                ),
            )
        )

    def _timed_out(self, access: Access) -> None:
        deadline_ms = self._config.deadline * 1000
        self._denied_without_decision(access, f"no decision within {deadline_ms:.0f} ms; denied")

    def _error(self, access: Access | None, error: BaseException) -> None:
        where = access.path if access is not None else "the guard"
        _logger.error("decision for %s failed: %s; denied", where, error)
        if access is not None:
            self._denied_without_decision(
                access, f"decision failed ({type(error).__name__}); denied"
            )
            return
        self._tamper("file_guard_error", str(error))

    def _attributes_changed(self, change: Change) -> None:
        """A file's attributes changed: record it if its label did (``_label_seen``).

        Other metadata changes (mode, owner, times) of a file whose label stayed are not
        recorded.
        """
        try:
            fd = os.open(change.path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return  # gone since: its delete is reported
        try:
            st = os.fstat(fd)
            now = read_label(f"/proc/self/fd/{fd}", self._config.label_key)
            if now is not None and now.problem == UPDATING_PROBLEM:
                return  # a rewrite under way: its last write is another change, read then
            known = self._inodes.get(st.st_dev, st.st_ino)
            if now is None and known is not None and known.identity == file_identity(fd):
                now = invalid_label(
                    f"the label was removed from a labelled file (home {known.home}): set it again"
                )
            elif now is not None and now.valid:
                self._keep_labelled(fd, now, change.path)
        except OSError:
            return
        finally:
            os.close(fd)
        self._label_seen(
            change.path, st.st_dev, st.st_ino, now, change.pid, change.uid, attributes_changed=True
        )

    def _overflow(self) -> None:
        self._tamper(
            "fanotify_overflow", "the kernel's change queue overflowed; the trees were re-marked"
        )

    # -- changes ------------------------------------------------------------------------
    def _on_change(self, change: Change) -> None:
        self.tree_changes += 1  # the label inventory looks again only after changes
        self._changed(change)
        if change.kind in ("create", "write"):
            self._follow(change.path, change.pid)
        # after _changed: a new file in a labelled directory has its label by now
        self._dac.changed(change.kind, change.path, change.uid, change.pid)

    def _changed(self, change: Change) -> None:
        if change.kind == "attrib":
            self._attributes_changed(change)
            return
        level = 0
        label_id = ""
        if change.kind == "create" and change.path:
            path = Path(change.path)
            try:
                with self._inherit_lock:
                    label = inherit_label(path.parent, path, self._config.label_key)
            except OSError:
                label = None
            if label is not None:
                level, label_id = label.level, label.label_id or ""
                self._keep_labelled_path(change.path, label)
        self._sink(
            events_pb2.Event(
                severity=events_pb2.SEVERITY_INFO,
                file_change=events_pb2.FileChange(
                    path=change.path,
                    change=change.kind,
                    old_path=change.old_path,
                    uid=max(change.uid, 0),
                    pid=max(change.pid, 0),
                    level=level,  # type: ignore[arg-type]
                    label_id=label_id,
                ),
            )
        )

    # -- labels follow content (taint.py, export.py) ---------------------------------------
    @staticmethod
    def _tainting(access: Access, result: _Decided) -> bool:
        """Whether this answer lets the process read a classified file: it is tainted
        then. Other processes given this answer by the guard's C loop are tainted when
        the fold reports their repeats (``_taint_by_repeat``)."""
        label = result.label
        return (
            result.verdict.allow
            and access.action in ("read", "execute")
            and label is not None
            and label.valid
            and effective_level(label, date.today()) > 0
        )

    def _follow_open(self, access: Access) -> None:
        """A tainted process opening a file for writing (or writing a labelled one):
        label it first, so it is decided -- and guarded from then on -- at its new
        level. Only when the path the kernel gives is this very file in the agent's
        view (the label's home is that path)."""
        if access.action == "read" and opens_for_writing(access.pid) is False:
            return  # the common case, told by one read of /proc/PID/syscall
        if access.action not in ("read", "write"):
            return
        taint = self._taints.of(access.pid)
        if taint is None:
            return
        try:
            st = os.lstat(access.path)
        except OSError:
            return
        if (st.st_dev, st.st_ino) != (access.dev, access.ino) or not stat.S_ISREG(st.st_mode):
            return
        if self._derive(access.fd, access.path, taint, access.pid, access.uid):
            self._labels.pop((access.dev, access.ino, access.ctime_ns), None)

    def _follow(self, path: str, pid: int, *, retry: bool = True) -> None:
        """A file under the trees was created or written by ``pid``: if that process is
        tainted, the file gets its label (the change path; the process may have exited
        since, see taint.py). The file is looked at again after the next fold
        (``retry``): the guard's C loop may have answered a read of the process with
        another process's answer, which only the fold reports (``_taint_by_repeat``)."""
        if pid <= 0 or not path:
            return
        if retry and len(self._pending) < PENDING_WRITES:
            self._pending[(path, pid)] = None
        taint = self._taints.of(pid) if self._taints else None
        if taint is None:
            return
        try:
            fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return  # gone since
        uid = proc_uid(pid)
        try:
            labelled = stat.S_ISREG(os.fstat(fd).st_mode) and self._derive(
                fd, path, taint, pid, uid
            )
        finally:
            os.close(fd)
        if labelled:  # its writers are those of its new level now
            self._dac.changed("create", path, uid, pid)

    def _known_tainted(self, pid: int) -> bool:
        """Whether ``pid`` is known to have read a labelled file (spread.py asks)."""
        return bool(self._taints) and self._taints.of(pid) is not None

    def _written_elsewhere(self, pid: int, fd: int) -> None:
        """A tainted process wrote the file open as ``fd`` (O_PATH) somewhere on a
        protected tree's filesystem: it gets the taint's label, its path as home."""
        taint = self._taints.of(pid)
        path = fd_path(fd)
        if taint is None or not path.startswith("/") or not stat.S_ISREG(os.fstat(fd).st_mode):
            return
        self._derive(fd, path, taint, pid, proc_uid(pid))

    def _retry_pending(self, written: dict[tuple[str, int], None]) -> None:
        """Look again at the files written before the fold that just ran."""
        for path, pid in written:
            self._follow(path, pid, retry=False)

    def _taint_by_repeat(self, access: events_pb2.FileAccess) -> None:
        """A read the guard's C loop answered (counted in a repeat event) taints its
        process as a decided one does; it may have exited meanwhile (taint.py)."""
        if not _taints_by_repeat(access):
            return
        label = Label(
            level=access.level,
            until=date.fromisoformat(access.label_until) if access.label_until else None,
            scope=tuple(access.label_scope),
            label_id=access.label_id or None,
            home=access.home or None,
        )
        self._taints.read(access.pid, label, access.path)

    def _derive(self, fd: int, path: str, taint: Taint, pid: int, uid: int) -> bool:
        """Give the file open as ``fd`` at ``path`` the taint's label (derive_label);
        keep its inode guarded and record a ``derived`` file change. True if labelled."""
        try:
            with self._inherit_lock:
                label = derive_label(
                    f"/proc/self/fd/{fd}", taint.label, self._config.label_key, home=path
                )
        except (AgentError, OSError, ValueError) as e:
            _logger.error("cannot label %s, written after reading %s: %s", path, taint.source, e)
            self._tamper(
                "derived_label", f"cannot label {path} written after reading a labelled file: {e}"
            )
            return False
        if label is None:
            return False  # labelled as high already
        self._keep_labelled(fd, label, path)
        self._sink(
            events_pb2.Event(
                severity=events_pb2.SEVERITY_INFO,
                file_change=events_pb2.FileChange(
                    path=path,
                    change="derived",
                    old_path=taint.source,
                    uid=max(uid, 0),
                    pid=max(pid, 0),
                    level=label.level,  # type: ignore[arg-type]
                    label_id=label.label_id or "",
                    home=label.home or "",
                ),
            )
        )
        return True

    def _export_decision(self, pid: int, fd: int, mask: int) -> bool:
        """An open (``FAN_OPEN_PERM``), a write or a close after writing in an export
        place: a tainted process writing there is decided as ``export`` of its taint's
        label to the file's path; the open's answer is the verdict, a write or close
        (by a process that opened before its read, or got the descriptor from one that
        did, as ``sh -c 'cat SRC > DST'`` does) is only recorded."""
        if pid == os.getpid():
            return True
        opening = bool(mask & FAN_OPEN_PERM)
        if opening and opens_for_writing(pid) is False:
            return True
        st = os.fstat(fd)
        key = (pid, st.st_dev, st.st_ino)
        if not stat.S_ISREG(st.st_mode) or (not opening and key in self._exported):
            return True  # decided (and recorded) at its open
        taint = self._taints.of(pid) if self._taints else None
        if taint is None and pid not in self._export_flushed:
            # Its read may have been answered in C and not reported yet: fold now (once
            # per process and period) rather than let it out untainted.
            self._export_flushed.add(pid)
            self.flush()
            taint = self._taints.of(pid)
        if taint is None:
            return True
        path = fd_path(fd)
        uid = proc_uid(pid)
        try:
            exe = os.readlink(f"/proc/{pid}/exe")  # noqa: PTH115
        except OSError:
            exe = ""
        engine, pair = self._engine, self._openers
        if engine is None or pair is None or pair[0] is not engine:
            verdict = Verdict(False, "", "no policy loaded")
        else:
            verdict = engine.decide(
                uid=uid,
                exe=pair[1].lookup(pid, exe).exe,
                path=path,
                file_key=(st.st_dev, st.st_ino, st.st_ctime_ns),
                label=taint.label,
                action="export",
            )
        if len(self._exported) >= EXPORTS_KEPT:
            self._exported.clear()
        self._exported[key] = None
        self._record_export(pid, uid, exe, path, taint, verdict, opening=opening)
        return verdict.allow or not opening

    def _record_export(  # noqa: PLR0917 - who, where, what and the answer
        self,
        pid: int,
        uid: int,
        exe: str,
        path: str,
        taint: Taint,
        verdict: Verdict,
        *,
        opening: bool,
    ) -> None:
        """One ``export`` access: HIGH unless the policy allows it."""
        label = taint.label
        what = f"data of {taint.source} ({LEVEL_NAMES[label.level]}) read by this process"
        if opening:
            reason = f"{verdict.reason}; {what}"
            decision = events_pb2.DECISION_ALLOW if verdict.allow else events_pb2.DECISION_DENY
        else:
            # Opened before the process read labelled data: the kernel asked nothing then.
            reason = f"{verdict.reason}; {what}, written to a file it had opened before"
            if not verdict.allow:
                reason = "NOT refused (opened before the read): " + reason
            decision = events_pb2.DECISION_ALLOW
        person = self._engine.policyset.subjects.by_uid.get(uid) if self._engine else None
        self._sink(
            events_pb2.Event(
                severity=events_pb2.SEVERITY_INFO if verdict.allow else events_pb2.SEVERITY_HIGH,
                file_access=events_pb2.FileAccess(
                    path=path,
                    action="export",
                    uid=max(uid, 0),
                    user=person.name if person else "",
                    pid=pid,
                    executable=exe,
                    cmdline=_cmdline(pid),
                    level=label.level,  # type: ignore[arg-type]
                    label_id=label.label_id or "",
                    label_until=label.until.isoformat() if label.until else "",
                    label_scope=list(label.scope),
                    home=label.home or "",
                    decision=decision,
                    reason=reason[:500],
                    rule=verdict.rule[:500],
                ),
            )
        )

    # -- the guardian's gap ---------------------------------------------------------------
    def _gap_recorded(
        self, records: list[dict[str, Any]], progress: GapProgress | None = None
    ) -> None:
        """Record what the guardian journalled while no agent ran: one ``guard_gap``
        tamper event (start, end, counts), one ``file_access`` per open it answered, and
        one DENY per access the killed agent had recorded as allowed whose answer the
        guardian gave instead (``answering``) -- after the ``progress.recorded`` first
        of them (an agent killed while recording this gap recorded those).

        The sink (the recorder) journals each event before it returns, so each is on
        record when ``progress`` counts it, and once this returns the guardian is told
        the gap is recorded and stops handing it over."""
        start = next((r for r in records if r.get("event") == "gap_start"), {})
        end = next((r for r in records if r.get("event") == "gap_end"), {})
        pids = {int(r.get("agent_pid", 0)) for r in records if r.get("event") == "pending_denied"}
        self._gap_pids[0].update(pids)
        corrections, attributed, pending = attribute_pending(records, self._unanswered)
        opens = [r for r in records if r.get("event") == "open"]
        denied = sum(r.get("decision") != "allow" for r in opens)
        detail = (
            f"no agent guarded files ({start.get('reason', 'unknown')}); the guardian "
            f"denied {end.get('denied', denied)} opens of labelled files, allowed "
            f"{end.get('allowed', len(opens) - denied)}, left {end.get('unrecorded', 0)} "
            f"unrecorded, and denied {pending} opens the agent had not answered"
        )
        if pending:
            detail += (
                f" ({attributed} attributed to accesses it had recorded, "
                f"{len(corrections)} of them recorded as allowed and corrected; "
                f"{pending - attributed} unattributed: answered in its fast path, "
                "or read and not yet recorded)"
            )
        if not end:
            detail += (
                "; then the guardian stopped (killed, or the host restarted) before an agent "
                "took over: opens after its last record were NOT guarded"
            )
        tamper = events_pb2.Tamper(kind="guard_gap", detail=detail)
        if "time" in start:
            tamper.gap_start.FromNanoseconds(int(float(start["time"]) * 1e9))
        if "time" in end:
            tamper.gap_end.FromNanoseconds(int(float(end["time"]) * 1e9))
        events = [events_pb2.Event(severity=events_pb2.SEVERITY_HIGH, tamper=tamper)]
        # The corrections last: an agent killed while recording them, whose successor
        # no longer has the notes, leaves only them unrecorded (the detail counts them).
        events += [_gap_access(r) for r in opens] + corrections
        for event in events[progress.recorded if progress is not None else 0 :]:
            self._sink(event)
            if progress is not None:
                progress.one_more()
        self._gap_pids[1].update(pids)


def _gap_access(record: dict[str, Any]) -> events_pb2.Event:
    """A ``file_access`` event for one open the guardian answered."""
    allowed = record.get("decision") == "allow"
    labelled = record.get("labelled")
    why = {True: "labelled", False: "not labelled", None: "cannot be inspected"}.get(
        labelled, "unknown"
    )
    if labelled and record.get("inherited"):
        why = "in a labelled directory"
    event = events_pb2.Event(
        severity=events_pb2.SEVERITY_INFO if allowed else events_pb2.SEVERITY_MEDIUM,
        file_access=events_pb2.FileAccess(
            path=str(record.get("path", "")),
            action=str(record.get("action", "read")),
            uid=max(int(record.get("uid", -1)), 0),
            pid=int(record.get("pid", 0)),
            decision=events_pb2.DECISION_ALLOW if allowed else events_pb2.DECISION_DENY,
            reason="decided by the guardian while no agent ran: " + why,
        ),
    )
    event.time.FromNanoseconds(int(float(record.get("time", 0)) * 1e9))
    return event


def _signature(engine: Engine, home: str) -> tuple[object, ...]:
    """What ``engine`` can tell of a home: the policy's patterns that match it, under
    its policy version (a key of another policy never names the same class)."""
    return (engine.version, *engine.home_signature(home))


def _taints_by_repeat(access: events_pb2.FileAccess) -> bool:
    """Whether a repeat the C loop answered let its process read a classified file."""
    return (
        access.decision == events_pb2.DECISION_ALLOW
        and access.action in ("read", "execute")
        and access.level > 0
    )
