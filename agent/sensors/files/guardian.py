"""The agent's side of the guardian: adopt it, spawn it, hand over to it, release it.

fanotify fails open: when the last holder of a permission group goes, the kernel
allows every pending and later open. The guardian (``guardian_daemon``, its answer
loop in C) holds a duplicate of the group so that it outlives the agent, and answers
it -- labelled files denied -- while no agent does. ``GuardianLink`` is what
``PermissionGuard`` uses: ``adopt()`` a running guardian (group fd and marks intact,
the gap's journal read back), or ``spawn()`` one for a new group; a thread watches the
guardian's pidfd and respawns it, reporting ``guardian_died``; ``hold()`` hands the
group over on a clean stop. ``release()`` (``baomi-agent guardian stop``) ends it.

The guardian hands every gap over until an agent ``confirm()``s it as recorded, so a
kill between adopting and recording loses none. How far each gap handed over is
recorded is kept in ``STATE/guardian.recorded`` (``GapProgress``: events recorded, and
whether all are), written right after each event is: the next agent goes on where a
killed one stopped and skips a gap recorded in full whose confirmation was lost. A
kill between an event's recording and that write records that one event twice.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from agent.errors import AgentError
from agent.sensors.files.guardian_daemon import JOURNAL_NAME, SOCKET_NAME

_logger = logging.getLogger(__name__)

LOG_NAME = "guardian.log"
RECORDED_NAME = "guardian.recorded"  # how far each gap handed over is recorded
REPLY_TIMEOUT = 5.0  # seconds a control command waits for the guardian's reply
SPAWN_TIMEOUT = 10.0  # seconds a new guardian may take to listen
REPLY_BYTES = 4096  # the longest reply line
GAP_BYTES = 64 * 1024 * 1024  # of one gap's journal read back at most
_PEERCRED = struct.Struct("3i")

GapRecords = list[dict[str, Any]]


class GapProgress:
    """How many of one gap's events are on record, and whether all are. Kept in a line
    of ``guardian.recorded`` by ``pwrite`` (the page cache outlives a ``kill -9``);
    without a file (a gap no guardian waits to hear about) only in memory."""

    def __init__(self, gap: str = "", recorded: int = 0, done: bool = False) -> None:
        self.id = gap
        #: Events recorded so far: whoever records the gap goes on after as many.
        self.recorded = recorded
        self.done = done
        self._fd, self._at = -1, 0

    def keep_in(self, fd: int, at: int) -> None:
        """Keep the progress from now on in the line at offset ``at`` of ``fd``."""
        self._fd, self._at = fd, at

    def one_more(self) -> None:
        """One more of the gap's events is on record (call right after it is)."""
        self.recorded += 1
        self._write()

    def finish(self) -> None:
        """Every event of the gap is on record."""
        self.done = True
        self._write()

    def line(self) -> bytes:
        """This gap's line of ``guardian.recorded``: "ID RECORDED DONE", of a width
        that does not change as it is rewritten."""
        return f"{self.id} {self.recorded:012d} {int(self.done)}\n".encode()

    def _write(self) -> None:
        if self._fd >= 0:
            try:
                os.pwrite(self._fd, self.line(), self._at)
            except OSError as e:  # then only a duplicate at worst: go on recording
                _logger.error("cannot keep how far a gap is recorded: %s", e)


def _read_progress(path: Path) -> dict[str, GapProgress]:
    """Each gap's progress as ``guardian.recorded`` keeps it (by gap id)."""
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return {}
    progress = {}
    for line in lines:
        with contextlib.suppress(ValueError):
            gap, recorded, done = line.split()
            progress[gap.decode()] = GapProgress(gap.decode(), int(recorded), done == b"1")
    return progress


class Gap(NamedTuple):
    """One gap read back: its id ("" for one no guardian waits to hear about), records
    and how far they are recorded."""

    id: str
    records: GapRecords
    progress: GapProgress


class GuardianError(AgentError):
    """The guardian refused a command or could not be reached or started."""


def request(state_dir: Path, command: str) -> tuple[dict[str, Any], list[int]]:
    """Send ``command`` to the guardian of ``state_dir``; its reply and any fds.

    Raises FileNotFoundError or ConnectionRefusedError when no guardian listens, and
    GuardianError when the peer is not root or the reply is not one.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        s.settimeout(REPLY_TIMEOUT)
        s.connect(str(state_dir / SOCKET_NAME))
        _pid, uid, _gid = _PEERCRED.unpack(
            s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
        if uid != 0:
            raise GuardianError(f"{state_dir / SOCKET_NAME} is served by uid {uid}, not root")
        s.sendall(command.encode() + b"\n")
        data, fds, _flags, _addr = socket.recv_fds(s, REPLY_BYTES, 1)
        while data and not data.endswith(b"\n") and len(data) < REPLY_BYTES:
            more = s.recv(REPLY_BYTES)
            if not more:
                break
            data += more
    try:
        reply = json.loads(data)
    except ValueError as e:
        for fd in fds:
            os.close(fd)
        raise GuardianError(f"the guardian gave no reply to {command!r}") from e
    return reply, fds


def release(state_dir: Path) -> bool:
    """Tell the guardian to flush its marks, answer what is pending and exit.

    False when none was running; GuardianError while an agent runs (stop it first).
    """
    try:
        reply, _ = request(state_dir, "release")
    except (FileNotFoundError, ConnectionRefusedError):
        return False
    if not reply.get("ok"):
        raise GuardianError(f"the guardian refused to stop: {reply.get('error')}")
    return True


def status(state_dir: Path) -> dict[str, Any] | None:
    """The guardian's pid and watched agent (0: none), or None when none runs."""
    try:
        reply, _ = request(state_dir, "status")
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    return reply


def read_gap(journal: Path, offset: int) -> GapRecords:
    """The records of the gap that starts at ``offset`` of ``journal``: up to its
    ``gap_end``, the next gap's start or the journal's end."""
    if offset < 0:
        return []
    with journal.open("rb") as f:
        f.seek(offset)
        raw = f.read(GAP_BYTES)
    records: GapRecords = []
    for line in raw.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line.decode("utf-8", "surrogateescape"))
            if records and record.get("event") == "gap_start":
                break
            records.append(record)
            if record.get("event") == "gap_end":
                break
    return records


def unfinished_gap(journal: Path) -> GapRecords:
    """The records of the journal's last gap if it never ended: its guardian stopped
    (killed, or the host restarted) before an agent took over or released it."""
    try:
        with journal.open("rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - GAP_BYTES, 0))
            raw = f.read(GAP_BYTES)
    except FileNotFoundError:
        return []
    records = []
    for line in raw.splitlines():
        with contextlib.suppress(ValueError):
            records.append(json.loads(line.decode("utf-8", "surrogateescape")))
    starts = [i for i, r in enumerate(records) if r.get("event") == "gap_start"]
    if not starts:
        return []
    gap = records[starts[-1] :]
    return [] if any(r.get("event") in ("gap_end", "released") for r in gap) else gap


class GuardianLink:
    """One agent's link to its guardian: adopt or spawn, watch, hand over."""

    def __init__(self, state_dir: Path, on_died: Callable[[str], None]) -> None:
        # Absolute: the guardian runs in "/", and a relative state directory (the
        # demo's var/agent) would name nothing there.
        self.dir = Path(state_dir).absolute()
        self._on_died = on_died
        self._fan_fd = -1
        self._pid = 0
        self._child: subprocess.Popen[bytes] | None = None
        self._pidfd = -1
        self._wake_r, self._wake_w = -1, -1
        self._watcher: threading.Thread | None = None
        self._closing = False
        self.problem = ""  # why the group is not held by a guardian ("" when it is)
        #: adopt() found no guardian but the journal of one that stopped while holding.
        self.unfinished: GapRecords = []
        #: The gaps adopt() was handed, oldest first, by id.
        self._handed: dict[str, GapProgress] = {}
        self._progress_fd = -1  # guardian.recorded, while _handed is being recorded

    @property
    def pid(self) -> int:
        """The guardian's pid (0: none)."""
        return self._pid

    def adopt(self) -> tuple[int, list[Gap]] | None:
        """The group fd of a running guardian and the gaps it journalled that are not on
        record yet, oldest first (``confirm()`` them once recorded); None if none runs."""
        try:
            reply, fds = request(self.dir, "adopt")
        except (FileNotFoundError, ConnectionRefusedError):
            self.unfinished = unfinished_gap(self.dir / JOURNAL_NAME)
            return None
        except OSError as e:
            # It may have taken this process for its agent before the reply was lost:
            # make it answer its group again rather than leave that group unread.
            with contextlib.suppress(OSError, GuardianError):
                request(self.dir, "hold")
            raise GuardianError(f"cannot reach the guardian in {self.dir}: {e}") from e
        if not reply.get("ok") or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            if reply.get("ok"):  # watched, but without the group: let it answer again
                with contextlib.suppress(OSError, GuardianError):
                    request(self.dir, "hold")
            raise GuardianError(f"the guardian refused to hand over: {reply.get('error')}")
        fan_fd = fds[0]
        os.set_inheritable(fan_fd, False)
        self._fan_fd = fan_fd
        self._track(int(reply["pid"]), None)
        journal = Path(reply["journal"])
        if "gaps" not in reply:  # a guardian older than confirmation: the last gap only
            legacy = read_gap(journal, int(reply["gap_offset"]))
            return fan_fd, [Gap("", legacy, GapProgress())]
        self._handed = self._keep_progress([str(g["gap"]) for g in reply["gaps"]])
        gaps = [
            Gap(gap, read_gap(journal, int(g["offset"])), self._handed[gap])
            for g in reply["gaps"]
            if not self._handed[gap := str(g["gap"])].done
        ]
        return fan_fd, gaps

    def _keep_progress(self, ids: list[str]) -> dict[str, GapProgress]:
        """The progress of the gaps ``ids`` as an earlier agent left it, from now on
        kept in ``guardian.recorded`` (which then holds these gaps only)."""
        path = self.dir / RECORDED_NAME
        known = _read_progress(path)
        handed = {gap: known.get(gap) or GapProgress(gap) for gap in ids}
        try:
            tmp = path.with_name(RECORDED_NAME + ".tmp")
            tmp.write_bytes(b"".join(p.line() for p in handed.values()))
            tmp.replace(path)
            self._progress_fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as e:  # then a kill while recording records the gaps again
            _logger.error("cannot keep how far the gaps are recorded in %s: %s", path, e)
            return handed
        at = 0
        for progress in handed.values():
            progress.keep_in(self._progress_fd, at)
            at += len(progress.line())
        return handed

    def confirm(self) -> None:
        """Tell the guardian the gaps ``adopt()`` handed over are on record, as far as
        they are (``GapProgress.finish()``, now or by an earlier agent), oldest first."""
        self._forget_progress_fd()
        done = list(itertools.takewhile(lambda g: self._handed[g].done, self._handed))
        if not done:
            return
        try:
            reply, _ = request(self.dir, f"recorded {done[-1]}")
        except (OSError, GuardianError) as e:
            _logger.error("cannot tell the guardian the gap is recorded: %s", e)
            return
        if not reply.get("ok"):
            _logger.error("the guardian refused the gap as recorded: %s", reply.get("error"))
            return
        for gap in done:
            del self._handed[gap]

    def _forget_progress_fd(self) -> None:
        """Close guardian.recorded; no progress writes to its number once reused."""
        for progress in self._handed.values():
            progress.keep_in(-1, 0)
        if self._progress_fd >= 0:
            os.close(self._progress_fd)
            self._progress_fd = -1

    def spawn(self, fan_fd: int) -> None:
        """Start a guardian holding ``fan_fd`` and watching this process."""
        self._fan_fd = fan_fd
        self._spawn()

    def _spawn(self) -> None:
        with (self.dir / LOG_NAME).open("ab") as log:
            os.fchmod(log.fileno(), 0o600)
            child = subprocess.Popen(  # noqa: S603 - our own module, by our interpreter
                [
                    sys.executable,
                    "-m",
                    "agent.sensors.files.guardian_daemon",
                    "--dir",
                    str(self.dir),
                    "--fan-fd",
                    str(self._fan_fd),
                    "--agent-pid",
                    str(os.getpid()),
                ],
                pass_fds=(self._fan_fd,),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd="/",  # never a protected directory: its own imports would wait there
                start_new_session=True,  # not killed with the agent's process group
            )
        deadline = time.monotonic() + SPAWN_TIMEOUT
        while True:
            now = status(self.dir) if child.poll() is None else None
            if now is not None and now.get("pid") == child.pid:
                break
            if child.poll() is not None or time.monotonic() > deadline:
                with contextlib.suppress(OSError):
                    child.kill()
                child.wait(SPAWN_TIMEOUT)
                raise GuardianError(
                    f"the guardian did not start (see {self.dir / LOG_NAME}); "
                    "a crash of the agent would leave files unguarded"
                )
            time.sleep(0.02)
        self._track(child.pid, child)

    def _track(self, pid: int, child: subprocess.Popen[bytes] | None) -> None:
        self._pid, self._child = pid, child
        self._pidfd = os.pidfd_open(pid)
        self.problem = ""
        if self._watcher is None:
            self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
            self._watcher = threading.Thread(
                target=self._watch, name="fanotify-guardian-watch", daemon=True
            )
            self._watcher.start()

    def _watch(self) -> None:
        """Respawn the guardian whenever it dies, until ``hold()`` or ``close()``."""
        while not self._closing:
            # poll, not select: an agent's fd numbers pass FD_SETSIZE (1024).
            poller = select.poll()
            poller.register(self._pidfd, select.POLLIN)
            poller.register(self._wake_r, select.POLLIN)
            ready = [fd for fd, _ in poller.poll()]
            if self._closing or self._pidfd not in ready:
                continue
            dead = self._pid
            os.close(self._pidfd)
            self._pidfd = -1
            if self._child is not None:
                self._child.wait(SPAWN_TIMEOUT)
            detail = f"the guardian (pid {dead}) died; starting another"
            _logger.error("%s", detail)
            try:
                self._on_died(detail)
            except Exception:
                _logger.exception("guardian on_died failed")
            try:
                self._spawn()
            except (GuardianError, OSError) as e:
                self.problem = f"no guardian: {e}"
                _logger.error("%s", self.problem)
                return

    def hold(self) -> None:
        """Stop watching and tell the guardian to answer the group from now on."""
        self.close()
        try:
            reply, _ = request(self.dir, "hold")
        except OSError as e:
            _logger.error("cannot hand the file guard over to its guardian: %s", e)
            return
        if not reply.get("ok"):
            _logger.error("the guardian refused to hold: %s", reply.get("error"))

    def close(self) -> None:
        """Stop watching the guardian (it keeps running)."""
        self._closing = True
        self._forget_progress_fd()  # start() failed before the gaps were recorded
        if self._watcher is not None:
            os.write(self._wake_w, b"x")
            self._watcher.join(SPAWN_TIMEOUT + REPLY_TIMEOUT)
            self._watcher = None
            for fd in (self._wake_r, self._wake_w, self._pidfd):
                if fd >= 0:
                    os.close(fd)
            self._wake_r = self._wake_w = self._pidfd = -1
