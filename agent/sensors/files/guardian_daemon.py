"""The guardian process: keeps the file guard's permission group failing closed.

``python -m agent.sensors.files.guardian_daemon --dir STATE --fan-fd N --agent-pid P``
(spawned by ``guardian.GuardianLink``) holds a duplicate of the agent's fanotify
permission group, so the group and its marks outlive the agent. While an agent reads
the group the guardian only watches it (a pidfd). When the agent dies, or hands over
on a clean stop (``hold``), the guardian answers the group itself, in C
(``_guardian.serve``, which returns only when a control connection arrives): opens of
labelled files, of files in labelled directories and of files it cannot inspect are
denied, the rest allowed, each journalled as a JSON line in ``STATE/guardian.journal``
(root, 0600). A dead agent's unanswered events are
denied by fd number first (``_guardian.deny_pending``), and the numbers journalled.

Control (unix socket ``STATE/guardian.sock``, root peers only; one JSON reply line):
``adopt`` (the group fd comes back over SCM_RIGHTS, the gap is closed and the caller
watched; the reply names every gap not yet on record, see below), ``recorded GAP``
(the agent has recorded gap ``GAP`` and every older one it was handed), ``hold``
(the agent stops; serve from now), ``release`` (flush the marks, answer what is
pending, exit; refused while an agent runs) and ``status``. SIGTERM,
SIGINT and SIGHUP are ignored: only ``release`` ends the guardian (SIGKILL cannot be
refused, and fails open).

A gap handed over stays *unconfirmed* until an agent says ``recorded``: an agent
killed after ``adopt`` but before its events were journalled would otherwise lose the
gap, since the next agent is only handed the gaps since. So ``adopt`` returns every
unconfirmed gap (``gaps``: offset and id, oldest first), and the journal is not
rotated while one is unconfirmed (rotation would move it out of reach).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import select
import signal
import socket
import struct
import time
from pathlib import Path
from typing import Any

from agent.sensors.files import _guardian

_logger = logging.getLogger(__name__)

# In the agent's state directory (guardian.py, the agent's side, names them from here).
SOCKET_NAME = "guardian.sock"
JOURNAL_NAME = "guardian.journal"

REQUEST_BYTES = 64  # the longest control request
REQUEST_TIMEOUT = 2.0  # seconds a control peer may take to send its request
FD_LIMIT_CAP = 1 << 20  # fd numbers of a dead agent denied at most
PENDING_FDS_KEPT = 4096  # fd numbers a pending_denied record names at most (count: all)
RELEASE_IDLE_MS = 200  # ms without events after which release() has answered all
RECORDS_PER_GAP = 100_000  # opens journalled one by one per gap; the rest only counted
STEP_RETRY = 0.1  # seconds before the main loop goes on after an unexpected error
JOURNAL_ROTATE_BYTES = 64 * 1024 * 1024  # at a gap's start a bigger journal becomes .1
# ... unless a gap in it is unconfirmed, up to this size (then those gaps are dropped).
JOURNAL_HOLD_BYTES = 4 * JOURNAL_ROTATE_BYTES
# Gaps kept unconfirmed at most (agents that never confirm: a crash loop, an agent
# older than confirmation); the oldest is dropped beyond. Keeps adopt's reply short.
UNCONFIRMED_GAPS = 16
_PEERCRED = struct.Struct("3i")


class Guardian:
    """The guardian's state: the group, the control socket, the journal, the agent."""

    def __init__(self, state_dir: Path, fan_fd: int, agent_pid: int) -> None:
        self.dir = state_dir
        self.fan_fd = fan_fd
        self.journal_path = state_dir / JOURNAL_NAME
        self.journal_fd = self._open_journal()
        sock_path = state_dir / SOCKET_NAME
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()  # a dead guardian's; the agent found nobody listening
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o077)
        try:
            self.sock.bind(str(sock_path))
        finally:
            os.umask(old)
        self.sock.listen(8)
        self.agent_pid = 0
        self.agent_pidfd = -1
        self.agent_fd_limit = 0
        self.gap_offset = -1  # journal offset of the open gap's first line; -1: none
        self.gap_id = ""  # the open gap's id (its gap_start's "gap")
        #: Gaps handed to an agent that has not said ``recorded`` yet: (offset, id),
        #: oldest first, all in the current journal.
        self.unconfirmed: list[tuple[int, str]] = []
        self.tally = [0, 0, 0]  # denied, allowed, unrecorded in the open gap
        self.released = False
        if agent_pid:
            self._watch(agent_pid)
        else:
            self._gap_start("no agent")

    # -- the main loop ---------------------------------------------------------------------
    def run(self) -> None:
        """Watch or serve until released."""
        while not self.released:
            try:
                self._step()
            except Exception:  # the guardian's exit would fail open: log and go on
                _logger.exception("guardian step failed; going on")
                time.sleep(STEP_RETRY)
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            (self.dir / SOCKET_NAME).unlink()
        os.close(self.journal_fd)
        os.close(self.fan_fd)

    def _step(self) -> None:
        """Watch the agent until it dies or a control connection comes; or, with no
        agent, serve the group until a control connection comes."""
        sock = self.sock.fileno()
        if self.agent_pidfd >= 0:
            poller = select.poll()
            poller.register(self.agent_pidfd, select.POLLIN)
            poller.register(sock, select.POLLIN)
            ready = [fd for fd, _ in poller.poll()]
            if self.agent_pidfd in ready:
                self._agent_died()
            if sock in ready:
                self._control()
            return
        if self.gap_offset < 0:
            self._gap_start("no agent")
        counts = _guardian.serve(
            self.fan_fd,
            sock,
            self.journal_fd,
            os.getpid(),
            records=max(RECORDS_PER_GAP - self.tally[0] - self.tally[1], 0),
        )
        self.tally = [a + b for a, b in zip(self.tally, counts, strict=True)]
        self._control()

    # -- the agent -------------------------------------------------------------------------
    def _watch(self, pid: int) -> None:
        self.agent_pid = pid
        self.agent_fd_limit = FD_LIMIT_CAP
        try:
            self.agent_pidfd = os.pidfd_open(pid)
        except OSError as e:
            _logger.warning("agent %d cannot be watched (%s): it is taken for dead", pid, e)
            self._agent_died()
            return
        with contextlib.suppress(OSError):
            limit = resource.prlimit(pid, resource.RLIMIT_NOFILE)[0]
            if 0 <= limit < FD_LIMIT_CAP:  # RLIM_INFINITY is -1
                self.agent_fd_limit = limit
        _logger.info("guardian %d watching agent %d", os.getpid(), pid)

    def _unwatch(self) -> None:
        if self.agent_pidfd >= 0:
            os.close(self.agent_pidfd)
        self.agent_pidfd = -1

    def _agent_died(self) -> None:
        _logger.warning("agent %d died: the guardian answers its opens", self.agent_pid)
        self._unwatch()
        self._gap_start("agent died")
        denied = _guardian.deny_pending(self.fan_fd, self.agent_fd_limit)
        # The fd numbers let the next agent say whose opens these were: the dead agent
        # noted each event it was answering by that number (answering.py).
        self._journal(
            {
                "event": "pending_denied",
                "count": len(denied),
                "fds": denied[:PENDING_FDS_KEPT],
                "agent_pid": self.agent_pid,
            }
        )

    # -- the journal -----------------------------------------------------------------------
    def _journal(self, record: dict[str, Any]) -> None:
        record.setdefault("time", time.time())
        try:
            os.write(self.journal_fd, json.dumps(record).encode() + b"\n")
        except OSError as e:  # a full disk must not stop the answers
            _logger.error("guardian journal %s not written: %s", self.journal_path, e)

    def _open_journal(self) -> int:
        fd = os.open(
            self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        os.fchown(fd, 0, 0)
        os.fchmod(fd, 0o600)
        return fd

    def _gap_start(self, reason: str) -> None:
        # Not while a gap is unconfirmed: its offset names the current journal. Agents
        # killed before recording one in a row let the journal grow past the limit.
        size = os.fstat(self.journal_fd).st_size
        if size > JOURNAL_ROTATE_BYTES and (not self.unconfirmed or size > JOURNAL_HOLD_BYTES):
            while self.unconfirmed:
                self._drop_gap(f"the journal passed {JOURNAL_HOLD_BYTES} bytes")
            self.journal_path.replace(self.journal_path.with_name(JOURNAL_NAME + ".1"))
            os.close(self.journal_fd)
            self.journal_fd = self._open_journal()
        self.gap_offset = os.lseek(self.journal_fd, 0, os.SEEK_END)
        self.gap_id = os.urandom(8).hex()
        self.tally = [0, 0, 0]
        self._journal(
            {
                "event": "gap_start",
                "gap": self.gap_id,
                "reason": reason,
                "agent_pid": self.agent_pid,
            }
        )

    def _gap_end(self, new_agent: int) -> int:
        """End the open gap (if any), unconfirmed until an agent has recorded it."""
        offset = self.gap_offset
        if offset >= 0:
            self.unconfirmed.append((offset, self.gap_id))
            if len(self.unconfirmed) > UNCONFIRMED_GAPS:
                self._drop_gap(f"more than {UNCONFIRMED_GAPS} gaps were not recorded")
            denied, allowed, unrecorded = self.tally
            self._journal(
                {
                    "event": "gap_end",
                    "agent_pid": new_agent,
                    "denied": denied,
                    "allowed": allowed,
                    "unrecorded": unrecorded,
                }
            )
        self.gap_offset = -1
        return offset

    def _drop_gap(self, why: str) -> None:
        """Stop handing the oldest unconfirmed gap over: it stays in the journal only."""
        _offset, gap = self.unconfirmed.pop(0)
        _logger.error("gap %s is no longer handed to agents: %s", gap, why)
        self._journal({"event": "gap_dropped", "gap": gap, "reason": why})

    # -- control ---------------------------------------------------------------------------
    def _control(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError as e:
            _logger.warning("guardian control: %s", e)
            return
        with conn:
            conn.settimeout(REQUEST_TIMEOUT)
            try:
                pid, uid, _gid = _PEERCRED.unpack(
                    conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
                )
                command = conn.recv(REQUEST_BYTES).decode("ascii", "replace").strip()
                fds: list[int] = []
                if uid != 0:
                    reply = {"ok": False, "error": "only root controls the guardian"}
                else:
                    reply, fds = self._command(command, pid)
                socket.send_fds(conn, [json.dumps(reply).encode() + b"\n"], fds)
            except OSError as e:
                _logger.warning("guardian control connection failed: %s", e)

    def _command(self, command: str, pid: int) -> tuple[dict[str, Any], list[int]]:
        if self.agent_pidfd >= 0:
            poller = select.poll()
            poller.register(self.agent_pidfd, select.POLLIN)
            if poller.poll(0):
                self._agent_died()  # a restarted agent may ask before its death was seen
        alive = self.agent_pidfd >= 0
        if command == "status":
            status = {"ok": True, "pid": os.getpid(), "agent": self.agent_pid if alive else 0}
            return status, []
        if command == "adopt":
            return self._adopt(pid, alive)
        if command.startswith("recorded "):
            return self._recorded(command.removeprefix("recorded ").strip()), []
        if command == "hold":
            return self._hold(pid, alive), []
        if command == "release":
            return self._release(alive), []
        return {"ok": False, "error": f"unknown command {command!r}"}, []

    def _adopt(self, pid: int, alive: bool) -> tuple[dict[str, Any], list[int]]:
        """Hand the group to agent ``pid``: the gap ends, the agent is watched."""
        if alive and pid != self.agent_pid:
            return {"ok": False, "error": f"agent {self.agent_pid} holds the group"}, []
        self._unwatch()
        offset = self._gap_end(pid)
        self._watch(pid)
        reply = {"ok": True, "pid": os.getpid(), "journal": str(self.journal_path)}
        gaps = [{"offset": at, "gap": gap} for at, gap in self.unconfirmed]
        # gap_offset: the gap just ended, for an agent older than ``gaps``.
        return reply | {"gap_offset": offset, "gaps": gaps}, [self.fan_fd]

    def _recorded(self, gap: str) -> dict[str, Any]:
        """An agent has recorded gap ``gap`` and every older one: no adopt hands them
        over again."""
        ids = [known for _, known in self.unconfirmed]
        if gap not in ids:
            return {"ok": False, "error": f"no unrecorded gap {gap!r}"}
        del self.unconfirmed[: ids.index(gap) + 1]
        self._journal({"event": "gap_recorded", "gap": gap})
        return {"ok": True}

    def _hold(self, pid: int, alive: bool) -> dict[str, Any]:
        """The watched agent stops: answer the group from now on."""
        if not alive or pid != self.agent_pid:
            return {"ok": False, "error": "only the agent being watched hands over"}
        self._unwatch()
        self._gap_start("handed over")
        return {"ok": True}

    def _release(self, agent_alive: bool) -> dict[str, Any]:
        """Flush the marks, answer what is pending and end; refused while an agent runs
        (the group is its group: flushing it would unguard the running agent)."""
        if agent_alive:
            error = f"agent {self.agent_pid} is running: stop it first, then release"
            return {"ok": False, "error": error}
        with contextlib.suppress(OSError):
            _guardian.flush_marks(self.fan_fd)
        _guardian.serve(self.fan_fd, -1, self.journal_fd, os.getpid(), RELEASE_IDLE_MS)
        self._journal({"event": "released"})
        self.released = True
        _logger.info("guardian %d released", os.getpid())
        return {"ok": True}


def main(argv: list[str] | None = None) -> int:
    """Run the guardian until ``release``."""
    p = argparse.ArgumentParser(prog="baomi-guardian", description=__doc__)
    p.add_argument("--dir", type=Path, required=True, help="the agent's state directory")
    p.add_argument("--fan-fd", type=int, required=True, help="the inherited group fd")
    p.add_argument("--agent-pid", type=int, default=0, help="the agent to watch")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format='{"time": "%(asctime)s", "level": "%(levelname)s", '
        '"logger": "%(name)s", "message": "%(message)s"}',
    )
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(OSError), Path("/proc/self/oom_score_adj").open("w") as f:
        f.write("-1000")  # the last to go when memory runs out: its death fails open
    os.set_inheritable(args.fan_fd, False)
    Guardian(args.dir, args.fan_fd, args.agent_pid).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
