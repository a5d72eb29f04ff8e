"""Writes and deletions refused by DAC are recorded through kernel audit, one event each.

The tree is made world-writable before the agent starts (``test_dac.arranged``); the
agent takes it over and installs its audit rules. Every attack runs as carol (uid 2003,
no write or delete right) with ``setpriv``, fails in the kernel, and must reach the
collector as exactly one DENY ``file_access`` event naming her, the process, the path,
the action and the syscall with its errno.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from baomi.v1 import events_pb2

from agent.sensors.files import refusals
from tests.integration import test_dac, test_file_guard
from tests.integration.test_agent import wait_for
from tests.integration.test_file_guard import Site

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (fanotify, audit, setuid children)"),
    pytest.mark.skipif(shutil.which("auditctl") is None, reason="needs Debian auditd (auditctl)"),
]

site = test_file_guard.site
guarded = test_file_guard.guarded
arranged = test_dac.arranged

BOB, CAROL = 2002, 2003  # bob may write budget.txt; carol has no right in the tree
Guarded = test_dac.Guarded
PYTHON = "/usr/bin/python3"  # Debian's: the test's own may sit where carol cannot reach


def _attempt(uid: int, *argv: str) -> tuple[int, subprocess.CompletedProcess[bytes]]:
    """Run ``argv`` as ``uid``; its pid (setpriv execs it) and how it ended."""
    with subprocess.Popen(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as child:
        out, err = child.communicate(timeout=10)
    return child.pid, subprocess.CompletedProcess(argv, child.returncode, out, err)


def _refusals(collector: test_file_guard.RunningCollector, pid: int) -> list[events_pb2.Event]:
    return [
        e
        for e in test_file_guard.host_events(collector.store, "ws-01")
        if e.HasField("file_access")
        and e.file_access.pid == pid
        and e.file_access.reason.startswith("refused by file permissions")
    ]


def _rules_on(root: Path) -> list[str]:
    listed = subprocess.run(
        ["auditctl", "-l", "-k", refusals.AUDIT_KEY],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    return [line for line in listed.splitlines() if f" -F dir={root} " in line]


def _attacks(root: Path, outside: Path) -> list[tuple[list[str], Path, str, str]]:
    """(argv, path recorded, action, "syscall ... ERRNO" in the reason)."""
    budget, s1 = root / "finance" / "budget.txt", root / "s1.txt"
    strip = f"import os; os.removexattr({str(budget)!r}, 'user.baomi.level')"
    append = "openat(O_WRONLY|O_CREAT|O_APPEND) EACCES"
    return [
        (["/bin/sh", "-c", f"echo x >> {budget}"], budget, "write", append),
        (["truncate", "-s0", str(s1)], s1, "write", "openat(O_WRONLY|O_CREAT) EACCES"),
        (["rm", "-f", str(budget)], budget, "delete", "unlinkat EACCES"),
        (["mv", str(budget), str(root / "moved.txt")], budget, "delete", "renameat2 EACCES"),
        (["ln", str(budget), str(outside / "x")], budget, "delete", "linkat EPERM"),
        (["chmod", "777", str(s1)], s1, "write", "fchmodat EPERM"),
        ([PYTHON, "-c", strip], budget, "write", "removexattr EACCES"),
    ]  # fmt: skip


def test_each_refused_attempt_is_one_event(arranged: Site, guarded: Guarded) -> None:
    _, collector = guarded
    root, outside = arranged.root, arranged.base / "outside"
    pids = []
    for argv, *_ in _attacks(root, outside):
        pid, done = _attempt(CAROL, *argv)
        assert test_dac._refused(done), (argv, done)
        wait_for(lambda: bool(_refusals(collector, pid)), seconds=10)  # noqa: B023
        pids.append(pid)
    time.sleep(1.5)  # past a fold period: a second event would be there by now
    for pid, (argv, path, action, call) in zip(pids, _attacks(root, outside), strict=True):
        [event] = [
            e
            for e in test_file_guard.host_events(collector.store, "ws-01")
            if e.HasField("file_access") and e.file_access.pid == pid
        ]
        a = event.file_access
        assert event.severity == events_pb2.SEVERITY_MEDIUM
        assert (a.path, a.action, a.decision) == (str(path), action, events_pb2.DECISION_DENY)
        assert (a.uid, a.user) == (CAROL, "carol")
        assert a.cmdline == " ".join(argv) and a.count <= 1
        assert a.executable == os.path.realpath(shutil.which(argv[0]) or argv[0])
        assert a.reason.startswith(f"refused by file permissions: {call} — "), a.reason
        assert a.reason.endswith("(DAC kept by the agent)")
        if path.name == "budget.txt":  # labelled 秘密 by arranged(): its home and level
            assert (a.home, a.level) == (str(path), events_pb2.LEVEL_CONFIDENTIAL)
    assert (root / "finance" / "budget.txt").read_text() == "2027 budget\n"


def test_an_allowed_write_is_no_refusal(arranged: Site, guarded: Guarded) -> None:
    _, collector = guarded
    budget = arranged.root / "finance" / "budget.txt"
    pid, done = _attempt(BOB, "/bin/sh", "-c", f"echo more >> {budget}")
    assert done.returncode == 0, done
    refused, _ = _attempt(CAROL, "/bin/sh", "-c", f"echo x >> {budget}")
    wait_for(lambda: bool(_refusals(collector, refused)), seconds=10)  # later, so bob's is in
    assert not _refusals(collector, pid)


def test_a_flood_is_folded_never_dropped(arranged: Site, guarded: Guarded) -> None:
    agent, collector = guarded
    budget = arranged.root / "finance" / "budget.txt"
    loop = f"for i in $(seq 300); do echo x 2>/dev/null >> {budget}; done; exit 0"
    pid, done = _attempt(CAROL, "/bin/sh", "-c", loop)
    assert done.returncode == 0, done
    wait_for(lambda: sum(max(e.file_access.count, 1) for e in _refusals(collector, pid)) >= 300)
    agent.stop()
    events = _refusals(collector, pid)
    assert sum(max(e.file_access.count, 1) for e in events) == 300
    assert len(events) <= 10  # the first at once, then one per fold period
    folded = [e.file_access for e in events if e.file_access.count > 1]
    assert folded and all(a.first.ToNanoseconds() <= a.last.ToNanoseconds() for a in folded)


def test_rules_are_removed_at_stop(arranged: Site, guarded: Guarded) -> None:
    agent, _ = guarded
    assert _rules_on(arranged.root)
    agent.stop()
    assert not _rules_on(arranged.root)


KILLED_AGENT = """
import sys, time
from pathlib import Path
from agent.sensors.files.refusals import RefusalRecorder
RefusalRecorder([Path(sys.argv[1])], b"k" * 32, lambda: None, print).start()
print("started", flush=True)
time.sleep(60)
"""


@pytest.fixture
def stale(site: Site) -> Iterator[int]:
    """Rules left on the root by a recorder killed with SIGKILL, and one an older version
    would have left; the number of rules left."""
    was_off = (
        "enabled 0"
        in subprocess.run(
            ["auditctl", "-s"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    )
    with subprocess.Popen(
        [sys.executable, "-c", KILLED_AGENT, str(site.root)],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None and child.stdout.readline() == "started\n"
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
    older = ["always,exit", "-F", "arch=b64", "-S", "unlink", "-F", "exit=-EACCES"]
    older += ["-F", f"dir={site.root}", "-F", f"key={refusals.AUDIT_KEY}"]
    subprocess.run(["auditctl", "-a", *older], check=True, capture_output=True, timeout=10)
    try:
        yield len(_rules_on(site.root))
    finally:
        refusals.remove_rules([str(site.root)])
        if was_off:  # the killed one turned auditing on and could not turn it off
            subprocess.run(["auditctl", "-e", "0"], capture_output=True, timeout=10, check=True)


def test_stale_rules_of_a_killed_agent_are_replaced(
    site: Site, stale: int, guarded: Guarded
) -> None:
    _, collector = guarded
    assert stale > 1
    now = _rules_on(site.root)
    assert len(now) == len(set(now))  # none twice
    assert not any(" -S unlink -F exit=-EACCES " in line for line in now)  # the older one
    assert len(now) == sum(
        len(refusals.rules(str(site.root), abi, refusals.syscall_table(abi)))
        for abi in ("b64", "b32")
    )
    pid, done = _attempt(CAROL, "rm", "-f", str(site.root / "s1.txt"))
    assert test_dac._refused(done)
    wait_for(lambda: bool(_refusals(collector, pid)), seconds=10)
    time.sleep(1.5)
    assert len(_refusals(collector, pid)) == 1  # not once per duplicate rule


def test_without_audit_health_is_degraded_not_failed(tmp_path: Path) -> None:
    """A root the kernel cannot watch (gone): enforcement holds, its record does not."""
    gone = tmp_path / "gone"
    seen: list[events_pb2.Event] = []
    recorder = refusals.RefusalRecorder([gone], b"k" * 32, lambda: None, seen.append)
    recorder.start()
    try:
        health = recorder.health()
        assert health.state == "degraded"
        assert health.detail.startswith("refused writes and deletions are not recorded: ")
        assert "No such file or directory" in health.detail
        assert not _rules_on(gone)
    finally:
        recorder.stop()
    assert not seen


def test_rules_deleted_behind_its_back_are_put_back(tmp_path: Path) -> None:
    """``auditctl -D`` (or an auditd restart loading only its own rules) and auditing
    turned off: the recorder puts both back, says so HIGH, and records again."""
    base = Path(tempfile.mkdtemp(prefix="baomi-refusals-"))  # carol must reach it
    base.chmod(0o755)
    target = base / "f"
    target.write_text("kept\n")
    target.chmod(0o644)
    seen: list[events_pb2.Event] = []
    recorder = refusals.RefusalRecorder(
        [base], b"k" * 32, lambda: None, seen.append, check_seconds=0.5
    )
    recorder.start()
    try:
        assert recorder.health().state == "ok"
        rules = _rules_on(base)
        refusals.remove_rules([str(base)])
        subprocess.run(["auditctl", "-e", "0"], capture_output=True, timeout=10, check=True)
        wait_for(lambda: any(e.tamper.kind == "audit_rules" for e in seen), seconds=10)
        [tamper] = [e for e in seen if e.HasField("tamper")]
        assert tamper.severity == events_pb2.SEVERITY_HIGH
        assert tamper.tamper.detail.startswith(f"{len(rules)} of the agent's audit rules")
        assert "kernel auditing was turned off" in tamper.tamper.detail
        assert sorted(_rules_on(base)) == sorted(rules)
        pid, done = _attempt(CAROL, "/bin/sh", "-c", f"echo x >> {target}")
        assert test_dac._refused(done)
        wait_for(lambda: any(e.file_access.pid == pid for e in seen), seconds=10)
    finally:
        recorder.stop()
        shutil.rmtree(base, ignore_errors=True)
    assert not _rules_on(base)
