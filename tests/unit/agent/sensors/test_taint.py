"""What a process has read (taint.py) with real processes, and the export places
(export.py) from globs and a mount table."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from baomi.labels import Label

from agent.sensors.files.export import fixed_part, mounts_under
from agent.sensors.files.taint import Taints, opens_for_writing, start_time

SECRET = Label(2, home="/srv/secret/a.doc")
TOP = Label(3, home="/srv/secret/b.doc")


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process that runs until the test ends."""
    child = subprocess.Popen(["sleep", "30"])
    try:
        yield child
    finally:
        child.kill()
        child.wait(timeout=10)


def _child_of(parent: int) -> int:
    """A running child of ``parent`` (a shell's), waited for."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        if found:
            return int(found[0])
        time.sleep(0.01)
    raise AssertionError("no child appeared")


def test_a_process_keeps_the_highest_label_it_read(sleeper: subprocess.Popen[bytes]) -> None:
    taints = Taints()
    assert taints.of(sleeper.pid) is None and not taints
    taints.read(sleeper.pid, TOP, "/b")
    taints.read(sleeper.pid, SECRET, "/a")  # lower: the higher stays
    got = taints.of(sleeper.pid)
    assert got is not None and (got.label, got.source) == (TOP, "/b")


def test_a_child_started_after_the_read_inherits_it_one_started_before_does_not() -> None:
    taints = Taints()
    shell = subprocess.Popen(
        ["/bin/sh", "-c", "sleep 30 & read x; sleep 30"], stdin=subprocess.PIPE
    )
    kids: set[int] = set()
    try:
        before = _child_of(shell.pid)  # started before the shell read anything
        kids.add(before)
        time.sleep(0.05)  # start times count in clock ticks (10 ms)
        taints.read(shell.pid, SECRET, "/a")
        assert taints.of(before) is None
        assert shell.stdin is not None
        shell.stdin.write(b"go\n")
        shell.stdin.flush()
        deadline = time.monotonic() + 5
        while len(kids) < 2 and time.monotonic() < deadline:
            found = Path(f"/proc/{shell.pid}/task/{shell.pid}/children").read_text().split()
            kids.update(int(k) for k in found)
            time.sleep(0.01)
        (after,) = kids - {before}
        # the cache of untainted pids is cleared by a new taint, never hides one
        got = taints.of(after)
        assert got is not None and got.label == SECRET
    finally:
        for pid in kids:  # the shell's children, by pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shell.kill()
        shell.wait(timeout=10)


def test_a_gone_process_is_forgotten_at_the_second_sweep_not_the_first() -> None:
    taints = Taints()
    child = subprocess.Popen(["sleep", "30"])
    taints.read(child.pid, SECRET, "/a")
    child.kill()
    child.wait(timeout=10)
    assert start_time(child.pid) is None
    taints.sweep()
    assert taints.of(child.pid) is not None  # its last writes are still reported
    taints.sweep()
    assert taints.of(child.pid) is None and not taints


def test_a_reused_pid_is_not_the_reader(sleeper: subprocess.Popen[bytes]) -> None:
    taints = Taints()
    taints.read(sleeper.pid, SECRET, "/a")
    started = start_time(sleeper.pid)
    assert started is not None
    # as if the pid had been given to another process: another start time on record
    taints._by_pid[sleeper.pid] = (started[0] - 1, taints._by_pid[sleeper.pid][1])
    assert taints.of(sleeper.pid) is None


def test_bounded(sleeper: subprocess.Popen[bytes]) -> None:
    taints = Taints(limit=1)
    taints.read(os.getpid(), SECRET, "/a")
    taints.read(sleeper.pid, SECRET, "/a")
    assert len(taints) == 1 and taints.of(sleeper.pid) is not None


@pytest.mark.parametrize(("flags", "writing"), [("os.O_WRONLY", True), ("os.O_RDONLY", False)])
def test_the_open_a_process_waits_in_says_whether_it_writes(
    tmp_path: Path, flags: str, writing: bool
) -> None:
    """An open of a FIFO blocks until the other end opens: the state of an opener
    waiting for the guard's answer."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    child = subprocess.Popen([sys.executable, "-c", f"import os; os.open({str(fifo)!r}, {flags})"])
    try:
        deadline = time.monotonic() + 5
        while opens_for_writing(child.pid) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert opens_for_writing(child.pid) is writing
    finally:
        child.kill()
        child.wait(timeout=10)
    assert opens_for_writing(child.pid) is None  # gone: cannot tell


@pytest.mark.parametrize(
    ("glob", "fixed"),
    [
        ("/media/**", "/media"),
        ("/media/*/usb", "/media"),
        ("/mnt/export/x.txt", "/mnt/export/x.txt"),
        ("/srv/[ab]/**", "/srv"),
        ("/**", "/"),
    ],
)
def test_the_fixed_part_of_an_export_glob(glob: str, fixed: str) -> None:
    assert fixed_part(glob) == fixed


def test_export_places_are_the_mounts_at_or_under_them(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(
        "22 1 254:1 / / rw - ext4 /dev/vda rw\n"
        "30 22 0:40 / /media rw - tmpfs tmpfs rw\n"
        "31 30 8:17 / /media/wang/USB\\040STICK rw - vfat /dev/sdb1 rw\n"
        "32 22 0:41 / /mediation rw - tmpfs tmpfs rw\n"
    )
    assert mounts_under(["/media"], str(table)) == ["/media", "/media/wang/USB STICK"]
    assert mounts_under(["/srv"], str(table)) == []
