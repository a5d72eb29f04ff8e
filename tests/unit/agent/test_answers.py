"""The C answer table of the file guard, without the kernel: remember, take, limits.

Its read loop (``next()``) needs a fanotify group and is tested against the real kernel
in tests/integration/test_fanotify.py.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from agent.sensors.files._answers import Answers

ME = os.getpid()  # answers are kept only for a live process

EXE = "/usr/bin/cat"


@pytest.fixture
def make() -> Iterator[Callable[..., Answers]]:
    """Answers over a pipe's read end, standing in for the group (nothing reads it)."""
    fds: list[int] = []

    def answers(limit: int = 65_536) -> Answers:
        r, w = os.pipe()
        fds.extend((r, w))
        return Answers(r, os.getpid(), limit, track_execs=False)

    yield answers
    for fd in fds:
        os.close(fd)


def test_remembered_answers_are_forgotten_by_take_forget(make: Callable[..., Answers]) -> None:
    a = make()
    me = os.getpid()  # a live process: its answers outlive a plain take()
    assert a.remember(me, 1001, EXE, 1, 2, 3, False, True, "t1")
    assert a.remember(me, 1001, EXE, 1, 2, 3, True, False, "t2")  # execute: another key
    assert a.remember(me, 1001, "/usr/bin/less", 1, 2, 3, False, True, "t3")
    assert len(a) == 3
    assert a.take() == []  # none repeated yet
    assert len(a) == 3  # kept: the process is alive
    assert a.take(forget=True) == []
    assert len(a) == 0


def test_take_forgets_the_answers_of_processes_that_are_gone(
    make: Callable[..., Answers],
) -> None:
    a = make()
    child = subprocess.Popen(["sleep", "30"])
    try:
        token = object()
        refs = sys.getrefcount(token)
        assert a.remember(child.pid, 1001, EXE, 1, 2, 3, False, True, token)
        assert a.remember(os.getpid(), 1001, EXE, 1, 2, 3, False, True, "mine")
        a.take()
        assert len(a) == 2
    finally:
        child.kill()
        child.wait()
    a.take()  # the pid may be reused at once: its answers must not be
    assert len(a) == 1
    assert sys.getrefcount(token) == refs  # released


def test_the_same_key_again_replaces_the_token_not_the_count(make: Callable[..., Answers]) -> None:
    a = make()
    token = object()
    refs = sys.getrefcount(token)
    assert a.remember(ME, 1001, EXE, 1, 2, 3, False, True, token)
    assert sys.getrefcount(token) == refs + 1
    assert a.remember(ME, 1001, EXE, 1, 2, 3, False, False, "newer")
    assert len(a) == 1
    assert sys.getrefcount(token) == refs  # released
    a.take(forget=True)


def test_a_plain_answer_is_shared_and_released_once(make: Callable[..., Answers]) -> None:
    a = make()
    token = object()
    refs = sys.getrefcount(token)
    assert a.remember(os.getpid(), 1001, EXE, 1, 2, 3, False, True, token, True)
    assert sys.getrefcount(token) == refs + 2  # the process's answer and the shared one
    assert a.take(forget=True) == []
    assert sys.getrefcount(token) == refs


def test_the_table_grows_to_its_limit_and_then_refuses(make: Callable[..., Answers]) -> None:
    a = make(limit=1000)
    kept = [a.remember(ME, 1001, EXE, 1, ino, 3, False, True, ino) for ino in range(1200)]
    assert kept == [True] * 1000 + [False] * 200
    assert len(a) == 1000
    a.take(forget=True)
    assert a.remember(ME, 1001, EXE, 1, 5000, 3, False, True, "after take")


def test_non_utf8_executables_round_trip(make: Callable[..., Answers]) -> None:
    a = make()
    exe = os.fsdecode(b"/tmp/\xff\xfe-tool")
    assert a.remember(ME, 1001, exe, 1, 2, 3, False, True, "t")


def test_a_vanished_opener_is_not_remembered(make: Callable[..., Answers]) -> None:
    a = make()
    assert not a.remember(ME, -1, "", 1, 2, 3, False, False, "t")
    assert len(a) == 0


def test_closed_tables_remember_nothing(make: Callable[..., Answers]) -> None:
    a = make()
    a.close()
    assert not a.remember(ME, 1001, EXE, 1, 2, 3, False, True, "t")
    assert a.take() == []
    with pytest.raises(OSError, match="Bad file descriptor"):
        a.next()


def test_bad_limits_and_uninitialised_use_are_refused() -> None:
    with pytest.raises(ValueError, match="limit must be"):
        Answers(0, 1, 0)
    a = Answers.__new__(Answers)
    with pytest.raises(RuntimeError, match="__init__ was not called"):
        a.take()


def test_next_queued_never_reads_the_group(make: Callable[..., Answers]) -> None:
    # The pipe is empty: a read would block; next_queued() answers None instead.
    assert make().next_queued() is None


@pytest.mark.parametrize(
    ("entries", "says"),
    [
        (b"\0" * 31, "32 bytes each"),
        (struct.pack("=QQqII", 1, 2, 3, 0, 0), "no class"),
        (struct.pack("=QQqII", 1, 0, 3, 7, 0), "no inode"),
        (struct.pack("=QQqII", 1, 2, 3, 7, 1), "padding"),
    ],
)
def test_set_classes_refuses_malformed_entries(
    make: Callable[..., Answers], entries: bytes, says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        make().set_classes(entries)


def test_set_classes_takes_many_and_replaces(make: Callable[..., Answers]) -> None:
    a = make()
    many = b"".join(struct.pack("=QQqII", 1, i, i, 1 + i % 3, 0) for i in range(1, 50_001))
    a.set_classes(many)
    a.set_classes(many[:32], replace=False)  # the same file again: its class replaced
    a.set_classes(b"")  # none


def test_a_class_is_kept_only_for_a_plain_open(make: Callable[..., Answers]) -> None:
    a = make()
    # cls with a plain open is accepted; without plain it is ignored, never an error
    assert a.remember(ME, 0, EXE, 1, 2, 3, 0, True, b"event", True, 5)
    assert a.remember(ME, 0, EXE, 1, 4, 3, 0, True, b"event", False, 5)
    assert [row[5] for row in a.take()] == []  # nothing repeated: no rows


@pytest.mark.skipif(os.geteuid() != 0, reason="the proc connector needs CAP_NET_ADMIN")
def test_an_exec_told_by_the_proc_connector_ends_the_process_answers() -> None:
    """A kept process that runs another program (same pid) loses its answers at the
    loop's next look at the connector, before any of its later events is answered."""
    r, w = os.pipe()
    a = Answers(r, os.getpid(), 1024)
    assert a.tracks_execs()
    child = subprocess.Popen(
        ["sh", "-c", "echo running; read line; exec sh -c 'echo ran again; sleep 30'"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        # Once sh runs its script its exec has been told (Popen may return before
        # that); reading the connector, as the loop does after each read of the group,
        # takes that exec, from before anything was kept.
        assert child.stdout is not None and child.stdout.readline() == "running\n"
        assert a.remember(ME, 1001, EXE, 1, 2, 3, False, True, "mine")
        assert a.remember(child.pid, 1001, EXE, 1, 2, 3, False, True, "before exec")
        a.take()
        assert len(a) == 2  # alive, same program: kept
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        # The exec (same pid) is told once it is done, after its exe link changed: the
        # line printed by the new program is the sign, not the link.
        assert child.stdout.readline() == "ran again\n"
        assert a.remember(ME, 1001, EXE, 4, 5, 6, False, True, "mine too")  # reads it
        a.take()
        assert len(a) == 2  # the child's answer went with its old program; mine stay
    finally:
        child.kill()
        child.wait()
        os.close(r)
        os.close(w)


def test_without_the_connector_the_loop_says_so() -> None:
    r, w = os.pipe()
    try:
        assert not Answers(r, os.getpid(), 16, track_execs=False).tracks_execs()
    finally:
        os.close(r)
        os.close(w)


def test_pruning_in_place_keeps_every_answer_of_the_living_findable(
    make: Callable[..., Answers],
) -> None:
    """take() deletes the answers of processes that are gone from the table in place
    (moving back the ones after them): every answer left is still found under its key
    -- remembered again it replaces itself instead of being added twice."""
    a = make()
    children = [subprocess.Popen(["sleep", "30"]) for _ in range(12)]
    try:
        keys = [(c.pid, ino) for c in children for ino in range(1, 200)]
        for pid, ino in keys:
            assert a.remember(pid, 1001, EXE, 7, ino, 3, False, True, f"{pid}/{ino}")
        assert len(a) == len(keys)
        gone = children[::3]
        for c in gone:
            c.kill()
            c.wait()
        a.take()
        living = [(pid, ino) for pid, ino in keys if pid not in {c.pid for c in gone}]
        assert len(a) == len(living)
        for pid, ino in living:
            assert a.remember(pid, 1001, EXE, 7, ino, 3, False, True, "again")
        assert len(a) == len(living)  # each found and replaced, none added
    finally:
        for c in children:
            c.kill()
            c.wait()
