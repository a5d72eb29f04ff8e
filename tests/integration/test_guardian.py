"""The guardian keeps the file guard failing closed while no agent runs (real kernel).

Each test guards a temporary tree with an agent in a subprocess
(``tests.guardian_agent``, which allows every open) and a guardian it spawns; the
agent is killed by pid (``kill -9``) or stopped (SIGTERM), and an ordinary uid then
opens a labelled and an unlabelled file. Teardown kills the agent and releases (or
kills) every guardian by pid, so no fanotify group outlives a test.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from baomi.v1 import events_pb2

from agent.sensors.files import _guardian, answering, guardian, sensor
from agent.sensors.files.fanotify import (
    AT_FDCWD,
    EVENT_F_FLAGS,
    FAN_CLASS_CONTENT,
    FAN_CLOEXEC,
    FAN_DENY,
    FAN_EVENT_ON_CHILD,
    FAN_MARK_ADD,
    FAN_OPEN_PERM,
    RESPONSE,
    fanotify_init,
    fanotify_mark,
)
from tests.integration import test_file_guard
from tests.procs import (
    Proc,
    Processes,
    cli,
    create_token,
    enroll_agent,
    free_port_pair,
    init_pki,
    start_agent,
    start_collector,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (fanotify, setuid children)"),
]

BOB = 2002  # an ordinary uid
WAIT_S = 20.0  # seconds any condition may take to come true
CHILD_TIMEOUT_S = 10.0  # seconds a child (an opener, the CLI) may run


def wait_for(what: Callable[[], Any], seconds: float = WAIT_S) -> Any:
    """Poll ``what`` until it is truthy; its value."""
    deadline = time.monotonic() + seconds
    while not (value := what()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


@dataclass
class Site:
    """A tree with a labelled and an unlabelled file, a state dir and its processes."""

    base: Path
    agents: list[subprocess.Popen[bytes]] = field(default_factory=list)
    guardians: set[int] = field(default_factory=set)

    @property
    def root(self) -> Path:
        return self.base / "secret"

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def out(self) -> Path:
        return self.base / "agent.out"

    def start_agent(self, slow: str = "", hang_on_gap: bool = False) -> subprocess.Popen[bytes]:
        """An agent guarding ``root``; returns once it says it is ready (with
        ``hang_on_gap``: once it has been handed a gap, in which it then hangs)."""
        awaited = "gap" if hang_on_gap else "ready"
        seen = len(self.records(awaited))
        argv = [sys.executable, "-m", "tests.guardian_agent", "--root", str(self.root)]
        argv += ["--state", str(self.state), "--out", str(self.out), "--slow", slow]
        argv += ["--hang-on-gap"] if hang_on_gap else []
        log = (self.base / "agent.log").open("ab")
        agent = subprocess.Popen(argv, stdout=log, stderr=log, cwd=Path(__file__).parents[2])
        log.close()
        self.agents.append(agent)
        wait_for(lambda: len(self.records(awaited)) > seen or agent.poll() is not None)
        assert agent.poll() is None, (self.base / "agent.log").read_text()
        if not hang_on_gap:
            self.guardians.add(self.records("ready")[-1]["guardian"])
        return agent

    def records(self, event: str) -> list[dict[str, Any]]:
        """What the agents wrote of one kind, oldest first."""
        if not self.out.exists():
            return []
        lines = self.out.read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["event"] == event]

    def guardian_pid(self) -> int:
        """The running guardian's pid (asserts one runs); remembered for teardown."""
        now = guardian.status(self.state)
        assert now is not None and now["ok"]
        self.guardians.add(now["pid"])
        return int(now["pid"])

    def journal(self) -> list[dict[str, Any]]:
        path = self.state / guardian.JOURNAL_NAME
        return [json.loads(line) for line in path.read_text().splitlines()]


def kill(proc: subprocess.Popen[bytes]) -> None:
    """``kill -9`` by pid, and reap."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(CHILD_TIMEOUT_S)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


@pytest.fixture
def site() -> Iterator[Site]:
    # Not under pytest's tmp_path: the ordinary uid must reach these files.
    base = Path(tempfile.mkdtemp(prefix="baomi-guardian-"))
    base.chmod(0o755)
    s = Site(base)
    s.root.mkdir(mode=0o755)
    s.state.mkdir(mode=0o700)
    for name in ("secret.txt", "menu.txt", "slow.txt"):
        (s.root / name).write_text(f"content of {name}\n")
        (s.root / name).chmod(0o644)
    os.setxattr(s.root / "secret.txt", "user.baomi.level", "机密".encode())
    (s.root / "finance").mkdir(mode=0o755)
    os.setxattr(s.root / "finance", "user.baomi.level", "秘密".encode())
    (s.root / "finance" / "plan.txt").write_text("content of plan.txt\n")
    (s.root / "finance" / "plan.txt").chmod(0o644)
    try:
        yield s
    finally:
        for agent in s.agents:
            kill(agent)
        with contextlib.suppress(Exception):
            guardian.release(s.state)
        for pid in s.guardians:
            if pid and alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)


def read_as(uid: int, path: Path) -> subprocess.Popen[bytes]:
    """``cat PATH`` as ``uid``, started (it may block in the guard)."""
    return subprocess.Popen(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "/usr/bin/cat", path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def can_read(uid: int, path: Path) -> bool:
    """True when ``uid`` read ``path``; False when the open was denied (EPERM)."""
    proc = read_as(uid, path)
    out, err = proc.communicate(timeout=CHILD_TIMEOUT_S)
    if proc.returncode:
        assert b"Operation not permitted" in err, err
        return False
    assert out == f"content of {path.name}\n".encode()
    return True


def test_the_kernel_matches_a_response_by_the_dead_readers_fd_number(site: Site) -> None:
    """What the guardian relies on (kernel 6.18): an event read by a process that died
    unanswered still waits, and a FAN_DENY for its fd number from another holder of
    the group answers it; a number with no pending event is ENOENT. deny_pending
    returns the numbers it answered: the event's, as the dead reader was given it."""
    fan = fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC, EVENT_F_FLAGS)
    reader = opener = None
    try:
        fanotify_mark(fan, FAN_MARK_ADD, FAN_OPEN_PERM | FAN_EVENT_ON_CHILD, AT_FDCWD, site.root)
        # The reader prints the fd number its event came as (fanotify_event_metadata.fd).
        script = "import os,struct,sys,time; b = os.read(int(sys.argv[1]), 4096)"
        script += "; print(struct.unpack_from('=IBBHQii', b)[5], flush=True); time.sleep(60)"
        reader = subprocess.Popen(
            [sys.executable, "-c", script, str(fan)], stdout=subprocess.PIPE, pass_fds=(fan,)
        )
        opener = read_as(BOB, site.root / "menu.txt")
        assert reader.stdout is not None
        event_fd = int(reader.stdout.readline())
        kill(reader)
        time.sleep(0.2)
        assert opener.poll() is None  # still waiting for an answer nobody will give
        with pytest.raises(OSError) as no_event:
            os.write(fan, RESPONSE.pack(999, FAN_DENY))
        assert no_event.value.errno == errno.ENOENT
        assert _guardian.deny_pending(fan, 64) == [event_fd]
        assert _guardian.deny_pending(fan, 64) == []  # answered: nothing pending now
        _, err = opener.communicate(timeout=CHILD_TIMEOUT_S)
        assert opener.returncode != 0 and b"Operation not permitted" in err
    finally:
        for proc in (reader, opener):
            if proc is not None:
                kill(proc)
        os.close(fan)


def test_kill_9_leaves_labelled_files_denied(site: Site) -> None:
    agent = site.start_agent()
    held_by = site.guardian_pid()
    assert can_read(BOB, site.root / "secret.txt")  # the agent allows everything
    kill(agent)
    assert not can_read(BOB, site.root / "secret.txt")
    assert can_read(BOB, site.root / "menu.txt")
    assert not can_read(BOB, site.root / "finance" / "plan.txt")  # would inherit a label
    assert site.guardian_pid() == held_by
    journal = site.journal()
    starts = [r for r in journal if r["event"] == "gap_start"]
    assert starts[-1]["reason"] == "agent died" and starts[-1]["agent_pid"] == agent.pid
    opens = [
        (r["path"], r["decision"], r["labelled"], r["uid"]) for r in journal if r["event"] == "open"
    ]
    assert (str(site.root / "secret.txt"), "deny", True, BOB) in opens
    assert (str(site.root / "menu.txt"), "allow", False, BOB) in opens
    [plan] = [r for r in journal if r.get("path") == str(site.root / "finance" / "plan.txt")]
    assert (plan["decision"], plan["labelled"], plan["inherited"]) == ("deny", True, True)
    assert (site.state / guardian.JOURNAL_NAME).stat().st_mode & 0o777 == 0o600


def test_an_open_waiting_in_the_dead_agent_ends_denied(site: Site) -> None:
    agent = site.start_agent(slow="slow.txt")
    opener = read_as(BOB, site.root / "slow.txt")  # unlabelled, but its answer is lost
    wait_for(lambda: site.records("deciding"))
    assert opener.poll() is None  # blocked in the agent's decide()
    kill(agent)
    _, err = opener.communicate(timeout=CHILD_TIMEOUT_S)
    assert opener.returncode != 0 and b"Operation not permitted" in err
    [pending] = wait_for(lambda: [r for r in site.journal() if r["event"] == "pending_denied"])
    assert pending["count"] == 1
    assert can_read(BOB, site.root / "slow.txt")  # asked afresh: unlabelled, allowed


def test_a_clean_stop_hands_over_to_the_guardian(site: Site) -> None:
    agent = site.start_agent()
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(CHILD_TIMEOUT_S) == 0
    assert site.records("stopped")
    assert not can_read(BOB, site.root / "secret.txt")
    assert can_read(BOB, site.root / "menu.txt")
    starts = [r for r in site.journal() if r["event"] == "gap_start"]
    assert starts[-1]["reason"] == "handed over"


def test_a_restarted_agent_adopts_the_guardian_and_reports_the_gap(site: Site) -> None:
    kill(site.start_agent())
    held_by = site.guardian_pid()
    assert not can_read(BOB, site.root / "secret.txt")
    site.start_agent()
    assert site.guardian_pid() == held_by  # adopted, not replaced
    [gap] = site.records("gap")
    kinds = [r["event"] for r in gap["records"]]
    assert kinds[0] == "gap_start" and kinds[-1] == "gap_end"
    start, end = gap["records"][0], gap["records"][-1]
    assert start["reason"] == "agent died" and end["time"] >= start["time"]
    assert end["denied"] == 1
    denied = [r for r in gap["records"] if r["event"] == "open" and r["decision"] == "deny"]
    assert [r["path"] for r in denied] == [str(site.root / "secret.txt")]
    assert can_read(BOB, site.root / "secret.txt")  # the new agent decides again


def _opens(gap: dict[str, Any]) -> list[tuple[str, str]]:
    return [(r["path"], r["decision"]) for r in gap["records"] if r["event"] == "open"]


def test_a_gap_outlives_an_agent_killed_before_it_recorded_the_gap(site: Site) -> None:
    """An agent killed after adopting the group but before it told the guardian the gap
    is recorded (hung in on_gap) leaves that gap with the guardian: the next agent is
    handed it again, with the gap of the kill; once it confirmed them, none is handed
    over twice."""
    kill(site.start_agent())
    held_by = site.guardian_pid()
    assert not can_read(BOB, site.root / "secret.txt")  # in the first gap
    hung = site.start_agent(hang_on_gap=True)
    [first] = site.records("gap")
    assert _opens(first) == [(str(site.root / "secret.txt"), "deny")]
    kill(hung)  # adopted, handed the first gap, never confirmed it
    assert not can_read(BOB, site.root / "finance" / "plan.txt")  # in the second gap
    site.start_agent()
    assert site.guardian_pid() == held_by
    _, again, second = site.records("gap")
    assert again["records"] == first["records"]  # the first gap is recorded after all,
    assert (first["recorded_before"], again["recorded_before"]) == (0, 1)  # on from there
    assert second["records"][0]["agent_pid"] == hung.pid and second["recorded_before"] == 0
    assert _opens(second) == [(str(site.root / "finance" / "plan.txt"), "deny")]
    confirmed = [r["gap"] for r in site.journal() if r["event"] == "gap_recorded"]
    assert confirmed == [second["records"][0]["gap"]]  # the newest, and with it the first
    kill(site.agents[-1])
    site.start_agent()  # handed only the gap of that kill
    *_, third = site.records("gap")
    assert len(site.records("gap")) == 4
    assert third["records"][0]["gap"] not in {first["records"][0]["gap"], confirmed[0]}
    assert _opens(third) == []


def test_an_agent_restarted_at_once_adopts_the_guardian(site: Site) -> None:
    first = site.start_agent()
    held_by = site.guardian_pid()
    os.kill(first.pid, signal.SIGKILL)  # and start the next without waiting
    site.start_agent()
    first.wait(CHILD_TIMEOUT_S)
    assert site.guardian_pid() == held_by
    assert site.records("gap")[0]["records"][0]["event"] == "gap_start"
    kinds = {r["event"] for r in site.journal()}
    assert {"gap_start", "pending_denied", "gap_end"} <= kinds


def test_a_killed_guardian_is_reported_and_replaced(site: Site) -> None:
    agent = site.start_agent()
    first = site.guardian_pid()
    os.kill(first, signal.SIGKILL)
    [died] = wait_for(lambda: site.records("tamper"))
    assert died["kind"] == "guardian_died" and str(first) in died["detail"]
    second = wait_for(lambda: (guardian.status(site.state) or {}).get("pid"))
    site.guardians.add(second)
    assert second != first
    assert can_read(BOB, site.root / "secret.txt")  # the agent still guards
    kill(agent)
    assert not can_read(BOB, site.root / "secret.txt")  # the new guardian holds


def test_the_gap_of_a_guardian_killed_while_holding_is_reported(site: Site) -> None:
    agent = site.start_agent()
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(CHILD_TIMEOUT_S) == 0
    assert not can_read(BOB, site.root / "secret.txt")
    first = site.guardian_pid()
    os.kill(first, signal.SIGKILL)  # fails open: nothing holds the group any more
    wait_for(lambda: not alive(first))
    site.start_agent()
    assert site.guardian_pid() != first  # a new guardian for a new group
    [gap] = site.records("gap")
    kinds = [r["event"] for r in gap["records"]]
    assert kinds == ["gap_start", "open"]  # and no end: the records stop at the kill
    assert gap["records"][1]["path"] == str(site.root / "secret.txt")


def test_guardian_stop_releases_the_files(site: Site) -> None:
    agent = site.start_agent()
    held_by = site.guardian_pid()
    with pytest.raises(guardian.GuardianError, match="stop it first"):
        guardian.release(site.state)  # the running agent's group keeps its marks
    assert can_read(BOB, site.root / "secret.txt")  # still decided by the agent
    assert site.guardian_pid() == held_by
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(CHILD_TIMEOUT_S) == 0
    assert not can_read(BOB, site.root / "secret.txt")
    done = subprocess.run(
        [cli("baomi-agent"), "--state-dir", str(site.state), "guardian", "status"],
        capture_output=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"guardian pid {held_by}" in done.stdout.decode()
    done = subprocess.run(
        [cli("baomi-agent"), "--state-dir", str(site.state), "guardian", "stop"],
        capture_output=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    wait_for(lambda: not alive(held_by))
    assert can_read(BOB, site.root / "secret.txt")  # released: no group, no guard
    assert guardian.status(site.state) is None


def test_opens_during_a_clean_stop_are_all_answered(site: Site) -> None:
    """Opens keep coming while the agent stops: whatever its reader had read past its
    wake-up is decided before the hand-over, so no opener is left waiting."""
    agent = site.start_agent()
    stop = threading.Event()
    opened = [0] * 4

    def open_in_a_loop(i: int) -> None:
        while not stop.is_set():
            os.close(os.open(site.root / "menu.txt", os.O_RDONLY))
            opened[i] += 1

    threads = [threading.Thread(target=open_in_a_loop, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: min(opened) > 50)
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(CHILD_TIMEOUT_S) == 0
    before = list(opened)
    wait_for(lambda: all(n > b + 50 for n, b in zip(opened, before, strict=True)))
    stop.set()
    for t in threads:
        t.join(CHILD_TIMEOUT_S)
        assert not t.is_alive(), "an open was left waiting"


# -- the real CLI, with a collector ---------------------------------------------------
HOST = "guardian-host"


@dataclass
class Deployment:
    """A collector, an enrolled agent state dir with the site's label key, and the CLIs'
    processes (all killed by pid in teardown)."""

    procs: Processes
    site: test_file_guard.Site
    state: Path
    store: Path
    guardians: set[int] = field(default_factory=set)

    def start_agent(self, name: str) -> Proc:
        """``baomi-agent run --protect``; returns once an open it decided is recorded."""
        proc = start_agent(
            self.procs,
            self.state,
            name=name,
            extra_args=[
                "--protect",
                str(self.site.root),
                "--policies",
                str(self.site.policies),
                "--deadline-ms",
                "500",
            ],
        )
        now = wait_for(lambda: (guardian.status(self.state) or {}).get("agent") == proc.pid)
        assert now
        self.guardians.add(int((guardian.status(self.state) or {})["pid"]))
        probe = self.site.root / "top.txt"

        def recorded() -> bool:
            self.site.open_as(BOB, "top.txt")
            return any(e.file_access.path == str(probe) for e in self.events())

        wait_for(recorded)
        return proc

    def events(self) -> list[events_pb2.Event]:
        if not self.store.exists():
            return []
        with contextlib.closing(sqlite3.connect(self.store, timeout=10)) as db:
            rows = db.execute("SELECT body FROM events WHERE host_id = ?", (HOST,)).fetchall()
        return [events_pb2.Event.FromString(b) for (b,) in rows]


# test_file_guard's tree: sealed labels, a policy and subjects (bob is uid 2002).
labelled_site = test_file_guard.site


@pytest.fixture
def deployment(labelled_site: test_file_guard.Site, tmp_path: Path) -> Iterator[Deployment]:
    labelled = labelled_site
    (labelled.root / "menu.txt").write_text("content of menu.txt\n")
    (labelled.root / "menu.txt").chmod(0o644)
    with Processes(tmp_path / "logs") as procs:
        d = Deployment(procs, labelled, tmp_path / "agent", tmp_path / "collector.db")
        try:
            init_pki(tmp_path / "pki")
            port = free_port_pair()
            url = f"sqlite:///{d.store}"
            start_collector(procs, store_url=url, pki_dir=tmp_path / "pki", port=port)
            token = create_token(url, HOST)
            enroll_agent(d.state, port=port, token=token, ca=tmp_path / "pki" / "ca.pem")
            shutil.copy(labelled.key_file, d.state / "label.key")  # labels valid for it
            yield d
        finally:
            procs.close()
            with contextlib.suppress(Exception):
                guardian.release(d.state)
            for pid in d.guardians:
                if alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


def test_a_restarted_cli_agent_sends_the_gap_to_the_collector(deployment: Deployment) -> None:
    site = deployment.site
    deployment.start_agent("agent").kill()
    assert not site.open_as(BOB, "s1.txt")  # labelled: denied by the guardian
    assert site.open_as(BOB, "menu.txt")
    deployment.start_agent("agent-again")

    def gap() -> list[events_pb2.Event]:
        return [e for e in deployment.events() if e.tamper.kind == "guard_gap"]

    [tamper] = wait_for(gap)
    assert tamper.tamper.gap_start.ToNanoseconds() < tamper.tamper.gap_end.ToNanoseconds()
    by_guardian = [
        e.file_access
        for e in deployment.events()
        if e.file_access.reason.startswith("decided by the guardian")
    ]
    paths = {(a.path, a.decision, a.uid) for a in by_guardian}
    assert (str(site.root / "s1.txt"), events_pb2.DECISION_DENY, BOB) in paths
    assert (str(site.root / "menu.txt"), events_pb2.DECISION_ALLOW, BOB) in paths


def test_an_allowed_open_the_killed_agent_never_answered_is_recorded_as_denied(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent records bob's allowed open of s1.txt, and is killed before its answer
    is written (a test-only pause between the two): the guardian denies the open by its
    fd number, and the next agent records that the access ended denied, next to the
    ALLOW it stands by (the record is append-only)."""
    site = deployment.site
    s1 = str(site.root / "s1.txt")
    monkeypatch.setenv(sensor.PAUSE_ENV, "/s1.txt")
    agent = deployment.start_agent("agent")
    opener = read_as(BOB, site.root / "s1.txt")

    def of_opener(decision: int) -> list[events_pb2.FileAccess]:
        return [
            e.file_access
            for e in deployment.events()
            if (e.file_access.path, e.file_access.pid, e.file_access.decision)
            == (s1, opener.pid, decision)
        ]

    [recorded] = wait_for(lambda: of_opener(events_pb2.DECISION_ALLOW))
    time.sleep(0.2)
    assert opener.poll() is None  # recorded, and waiting for the answer
    agent.kill()
    _, err = opener.communicate(timeout=CHILD_TIMEOUT_S)
    assert opener.returncode != 0 and b"Operation not permitted" in err
    monkeypatch.delenv(sensor.PAUSE_ENV)
    deployment.start_agent("agent-again")

    [corrected] = wait_for(lambda: of_opener(events_pb2.DECISION_DENY))
    assert corrected.reason == answering.NOT_DELIVERED
    assert (corrected.uid, corrected.user, corrected.executable, corrected.action) == (
        recorded.uid,
        recorded.user,
        recorded.executable,
        "read",
    )
    assert corrected.uid == BOB and corrected.executable == "/usr/bin/cat"
    assert of_opener(events_pb2.DECISION_ALLOW) == [recorded]  # still on record
    [pending] = [r for r in journal_records(deployment.state) if r["event"] == "pending_denied"]
    assert pending["count"] >= 1 and len(pending["fds"]) == pending["count"]
    [gap] = [e.tamper.detail for e in deployment.events() if e.tamper.kind == "guard_gap"]
    numbers = re.search(
        r"denied (\d+) opens the agent had not answered \((\d+) attributed .*?(\d+) of them "
        r"recorded as allowed and corrected; (\d+) unattributed",
        gap,
    )
    assert numbers is not None, gap
    denied, attributed, corrections, unattributed = map(int, numbers.groups())
    assert denied == pending["count"] == attributed + unattributed
    assert attributed >= 1 and corrections == 1


def journal_records(state: Path) -> list[dict[str, Any]]:
    """The guardian journal of ``state``, parsed."""
    path = state / guardian.JOURNAL_NAME
    return [json.loads(line) for line in path.read_text().splitlines()]
