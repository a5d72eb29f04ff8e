"""The kernel edge of the file guard against the real kernel.

Every test marks only directories it made itself (``tempfile.mkdtemp`` under the system
temp dir, mode 0755 so other uids can reach them: pytest's ``tmp_path`` parents are 0700
root). Opens come from child processes running as other uids, every one with a timeout,
and every guard is stopped in teardown. Assertions are about answers (EPERM or not) and
callbacks, never about how fast they came.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from baomi.v1 import events_pb2

import agent
from agent.sensors.files import fanotify as fan
from agent.sensors.files import permission
from agent.sensors.files._answers import Answers
from agent.sensors.files.changes import Change, ChangeWatcher
from agent.sensors.files.permission import Access, PermissionGuard
from agent.sensors.files.repeats import RepeatJournal
from tests.command_child import CommandChild

UID, OTHER_UID, NOBODY = 1001, 1002, 65534
CHILD_TIMEOUT = 10  # seconds any child process may run
SETTLE_TIMEOUT = 10.0  # seconds to wait for an asynchronous effect (a new mark, a change)
REPO = Path(agent.__file__).resolve().parent.parent


def _why_not() -> str | None:
    """One line saying why fanotify permission tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root: fanotify permission events need CAP_SYS_ADMIN"
    try:
        fd = fan.fanotify_init(fan.FAN_CLASS_CONTENT | fan.FAN_CLOEXEC, os.O_RDONLY)
    except OSError as e:
        return f"no fanotify permission events on this kernel: {e.strerror}"
    os.close(fd)
    return None


_SKIP = _why_not()
pytestmark = [pytest.mark.root, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]

# The child that opens: prints one line per path, "ok" or the errno name.
OPEN_CHILD = """
import errno, os, sys
for p in sys.argv[1:]:
    try:
        os.close(os.open(p, os.O_RDONLY))
        print("ok", flush=True)
    except OSError as e:
        print(errno.errorcode[e.errno], flush=True)
"""


def _python_for(uid: int) -> str:
    """A Python interpreter that ``uid`` can run (pyenv's lives under 0700 /root)."""
    ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    candidates = [
        sys.executable,
        os.path.realpath(sys.executable),
        f"/usr/bin/python{ver}",
        f"/usr/local/bin/python{ver}",
    ]
    for python in dict.fromkeys(candidates):
        if not Path(python).exists():
            continue
        try:
            subprocess.run(
                [python, "-c", "pass"],
                user=uid,
                group=uid,
                extra_groups=[],
                check=True,
                capture_output=True,
                timeout=CHILD_TIMEOUT,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        return python
    pytest.skip(f"no Python {ver} interpreter that uid {uid} can run")


@pytest.fixture(scope="module")
def child_python() -> str:
    """An interpreter for children running as UID and OTHER_UID."""
    python = _python_for(UID)
    assert _python_for(OTHER_UID) == python
    return python


def open_as(python: str, uid: int, *paths: Path) -> list[str]:
    """Open each path in a child running as ``uid``; "ok" or an errno name per path."""
    return _child_lines(python, uid, OPEN_CHILD, *map(str, paths))


def _child_lines(python: str, uid: int, code: str, *args: str) -> list[str]:
    """What a child running ``code`` as ``uid`` printed, word by word."""
    out = subprocess.run(
        [python, "-c", code, *args],
        user=uid,
        group=uid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=True,
    )
    return out.stdout.split()


def eventually(check: Callable[[], bool], what: str) -> None:
    """Wait until ``check()`` holds: for effects the kernel delivers asynchronously."""
    until = time.monotonic() + SETTLE_TIMEOUT
    while not check():
        if time.monotonic() > until:
            pytest.fail(f"not within {SETTLE_TIMEOUT:.0f} s: {what}")
        time.sleep(0.02)


def _fd_count() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


def _fanotify_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("fanotify-")]


def _public(path: Path, mode: int = 0o644) -> Path:
    path.chmod(mode)
    return path


def _write(path: Path, text: str) -> Path:
    """A file every uid may read."""
    path.write_text(text)
    return _public(path)


@pytest.fixture
def make_dir() -> Iterator[Callable[[], Path]]:
    """Fresh 0755 temporary directories (removed afterwards)."""
    made: list[Path] = []

    def make() -> Path:
        d = Path(tempfile.mkdtemp(prefix="baomi-fanotify-"))
        d.chmod(0o755)
        made.append(d)
        return d

    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def tree(make_dir: Callable[[], Path]) -> Path:
    """A protected tree: public, secret, sub/secret (all readable by every uid)."""
    d = make_dir()
    (d / "public").write_text("public\n")
    (d / "secret").write_text("secret\n")
    (d / "sub").mkdir()
    (d / "sub" / "secret").write_text("secret\n")
    for p in (d / "public", d / "secret", d / "sub" / "secret"):
        _public(p)
    _public(d / "sub", 0o755)
    return d


class Recorder:
    """A decide() that allows by uid and path, and remembers every Access it saw."""

    def __init__(self, deny: Callable[[Access], bool] | None = None) -> None:
        self.seen: list[Access] = []
        self.deny = deny or (lambda a: a.uid == UID and "secret" in a.path)
        self.timeouts: list[Access] = []
        self.errors: list[tuple[Access | None, BaseException]] = []

    def decide(self, a: Access) -> bool:
        _ = a.path  # resolve while the fd is valid, for the asserts afterwards
        self.seen.append(a)
        return not self.deny(a)

    def paths(self) -> list[str]:
        return [a.path for a in self.seen]


@pytest.fixture
def guarded() -> Iterator[Callable[..., PermissionGuard]]:
    """Start PermissionGuards; each is stopped at teardown whatever the test did."""
    guards: list[PermissionGuard] = []

    def start(
        roots: list[Path], rec: Recorder, decide: Callable[[Access], bool] | None = None, **kw: Any
    ) -> PermissionGuard:
        g = PermissionGuard(
            roots,
            decide or rec.decide,
            on_timeout=rec.timeouts.append,
            on_error=lambda a, e: rec.errors.append((a, e)),
            **kw,
        )
        guards.append(g)
        g.start()
        assert g.health().state == "ok", g.health()
        return g

    yield start
    for g in guards:
        g.stop()


# --- PermissionGuard ------------------------------------------------------------------------
def test_allows_and_denies_by_uid_and_path(
    tree: Path, guarded: Callable[..., PermissionGuard], child_python: str
) -> None:
    rec = Recorder()
    guarded([tree], rec)

    assert open_as(
        child_python, UID, tree / "public", tree / "secret", tree / "sub" / "secret"
    ) == [
        "ok",
        "EPERM",
        "EPERM",
    ]
    assert open_as(child_python, OTHER_UID, tree / "secret", tree / "sub" / "secret") == [
        "ok",
        "ok",
    ]

    exe = os.path.realpath(child_python)
    by_path = {(a.uid, a.path): a for a in rec.seen}
    for uid, name in [(UID, "public"), (UID, "secret"), (OTHER_UID, "sub/secret")]:
        a = by_path[(uid, str(tree / name))]
        st = (tree / name).stat()
        assert (a.executable, a.action) == (exe, "read")
        assert (a.dev, a.ino, a.ctime_ns) == (st.st_dev, st.st_ino, st.st_ctime_ns)
        assert a.pid not in (0, os.getpid())
    assert rec.timeouts == [] and rec.errors == []


def test_ctime_changes_when_a_label_changes(
    tree: Path, guarded: Callable[..., PermissionGuard], child_python: str
) -> None:
    """ctime_ns (in the caller's cache key) moves when an xattr label is set."""
    rec = Recorder()
    guarded([tree], rec)
    assert open_as(child_python, OTHER_UID, tree / "public") == ["ok"]
    os.setxattr(tree / "public", "user.baomi.label", b"level=2")
    assert open_as(child_python, OTHER_UID, tree / "public") == ["ok"]
    before, after = (a.ctime_ns for a in rec.seen)
    assert after > before


def test_uid_and_executable_follow_setuid_and_exec(
    tree: Path, guarded: Callable[..., PermissionGuard]
) -> None:
    """A root child opens twice, setuid()s (no exec: it is not dumpable now), opens
    twice, then execs cat: the euid and executable are right at every step, also on
    the path that keeps /proc handles of busy openers."""
    rec = Recorder(deny=lambda a: False)
    guarded([tree], rec)
    script = f"""
import os, sys
p = sys.argv[1]
def o():
    os.close(os.open(p, os.O_RDONLY))
o(); o()
os.setresgid({UID}, {UID}, {UID}); os.setgroups([]); os.setresuid({UID}, {UID}, {UID})
o(); o()
os.execv("/bin/cat", ["cat", p])
"""
    subprocess.run(
        [sys.executable, "-c", script, str(tree / "public")],
        check=True,
        capture_output=True,
        timeout=CHILD_TIMEOUT,
    )
    py, cat = os.path.realpath(sys.executable), os.path.realpath("/bin/cat")
    assert [(a.uid, a.executable) for a in rec.seen] == [
        (0, py),
        (0, py),
        (UID, py),
        (UID, py),
        (UID, cat),
    ]
    assert len({a.pid for a in rec.seen}) == 1


class Repeating(Recorder):
    """A Recorder whose answers the guard repeats (as the file guard's are)."""

    def __init__(
        self, deny: Callable[[Access], bool] | None = None, *, plain: bool = False
    ) -> None:
        super().__init__(deny)
        self.guard: PermissionGuard | None = None
        self.kept: list[bool] = []
        self.plain = plain

    def decide(self, a: Access) -> bool:
        allowed = super().decide(a)
        assert self.guard is not None
        token = (a.path, a.uid, a.executable)
        self.kept.append(self.guard.repeat(a, allowed, token, plain=self.plain))
        return allowed


def _counts(g: PermissionGuard) -> dict[object, int]:
    return {token: count for token, _, count, _, _, _ in g.take_repeats(forget=True)}


def test_repeats_are_answered_without_asking_and_counted(
    tree: Path,
    guarded: Callable[..., PermissionGuard],
    children: Callable[..., CommandChild],
    child_python: str,
) -> None:
    rec = Repeating()
    rec.guard = guarded([tree], rec)
    before = time.time_ns()
    child = children(child_python, UID)
    py = os.path.realpath(child_python)
    assert child.opens(tree / "public", 5) == ["ok"] * 5
    assert child.opens(tree / "secret", 3) == ["EPERM"] * 3  # a denial repeats as one
    assert rec.paths() == [str(tree / "public"), str(tree / "secret")]
    assert rec.kept == [True, True]

    rows = rec.guard.take_repeats(forget=True)
    assert {t: c for t, _, c, _, _, _ in rows} == {
        (str(tree / "public"), UID, py): 4,
        (str(tree / "secret"), UID, py): 2,
    }
    assert all(before <= first <= last <= time.time_ns() for _, _, _, first, last, _ in rows)
    assert {pid for _, pid, _, _, _, _ in rows} == {child.proc.pid}
    # take_repeats(forget=True) forgets every answer: the next open is asked again.
    assert child.opens(tree / "public", 2) == ["ok", "ok"]
    assert rec.paths()[2:] == [str(tree / "public")]
    assert _counts(rec.guard) == {(str(tree / "public"), UID, py): 1}


def test_answers_outlive_a_take_while_their_process_lives(
    tree: Path,
    guarded: Callable[..., PermissionGuard],
    children: Callable[..., CommandChild],
    child_python: str,
) -> None:
    rec = Repeating()
    rec.guard = guarded([tree], rec)
    child = children(child_python, UID)
    assert child.opens(tree / "public", 2) == ["ok", "ok"]
    assert [c for _, _, c, _, _, _ in rec.guard.take_repeats()] == [1]
    assert child.opens(tree / "public", 2) == ["ok", "ok"]  # still answered in C
    assert rec.paths() == [str(tree / "public")]
    assert [c for _, _, c, _, _, _ in rec.guard.take_repeats()] == [2]


def test_plain_answers_are_shared_by_processes_of_the_same_program(
    tree: Path,
    guarded: Callable[..., PermissionGuard],
    children: Callable[..., CommandChild],
    child_python: str,
) -> None:
    """A new process of the same program and euid, once vouched for (its first open
    is asked), is answered in C for files another one was answered for, each access
    counted under its own pid; another euid is asked."""
    rec = Repeating(deny=lambda a: a.path.endswith("secret"), plain=True)
    rec.guard = guarded([tree], rec)
    first = children(child_python, UID)
    assert first.opens(tree / "public", 2) == ["ok", "ok"]
    assert first.opens(tree / "sub" / "secret", 1) == ["EPERM"]
    second = children(child_python, UID)
    assert second.opens(tree / "secret", 2) == ["EPERM", "EPERM"]  # asked once: vouched
    assert second.opens(tree / "public", 3) == ["ok"] * 3
    assert second.opens(tree / "sub" / "secret", 2) == ["EPERM"] * 2
    asked = [str(tree / "public"), str(tree / "sub" / "secret"), str(tree / "secret")]
    assert rec.paths() == asked  # the second process's other files were never asked
    other = children(child_python, OTHER_UID)
    assert other.opens(tree / "public", 1) == ["ok"]
    assert rec.paths() == [*asked, str(tree / "public")]
    rows = rec.guard.take_repeats()
    counts = {(t[0], pid): c for t, pid, c, _, _, _ in rows}  # type: ignore[index]
    assert counts == {
        (str(tree / "public"), first.proc.pid): 1,
        (str(tree / "secret"), second.proc.pid): 1,
        (str(tree / "public"), second.proc.pid): 3,
        (str(tree / "sub" / "secret"), second.proc.pid): 2,
    }


def test_repeats_follow_setuid_exec_and_relabel(
    tree: Path, guarded: Callable[..., PermissionGuard], children: Callable[..., CommandChild]
) -> None:
    """A repeated answer is only for the same euid, executable and file version: a
    setuid without exec, a change of the file's xattrs (a label) and an exec are each
    asked again, in the same process."""
    rec = Repeating(deny=lambda a: a.uid == UID and a.executable.endswith("cat"))
    rec.guard = guarded([tree], rec)
    child = children(sys.executable)  # root, then UID
    public = tree / "public"
    assert child.opens(public, 2) == ["ok", "ok"]
    assert child.ask(f"setuid {UID}") == "done"
    assert child.opens(public, 2) == ["ok", "ok"]
    os.setxattr(public, "user.baomi.level", "秘密".encode())  # a new file version
    assert child.opens(public, 2) == ["ok", "ok"]
    child.ask(f"exec {public}")  # cat, as UID: denied, so cat says so and exits
    child.proc.wait(CHILD_TIMEOUT)
    assert child.proc.returncode != 0
    py, cat = os.path.realpath(sys.executable), os.path.realpath("/bin/cat")
    assert [(a.uid, a.executable) for a in rec.seen] == [(0, py), (UID, py), (UID, py), (UID, cat)]
    assert len({a.pid for a in rec.seen}) == 1
    assert len({a.ctime_ns for a in rec.seen}) == 2


def test_a_full_answer_table_asks_again(
    tree: Path,
    guarded: Callable[..., PermissionGuard],
    children: Callable[..., CommandChild],
    child_python: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(permission, "ANSWERS_KEPT", 1)
    rec = Repeating(deny=lambda a: False)
    rec.guard = guarded([tree], rec)
    child = children(child_python, UID)
    assert child.opens(tree / "public", 3) == ["ok"] * 3
    assert child.opens(tree / "secret", 3) == ["ok"] * 3
    assert rec.kept == [True, False, False, False]
    assert rec.paths() == [str(tree / "public")] + [str(tree / "secret")] * 3


def test_repeats_counted_before_stop_are_kept(
    tree: Path, children: Callable[..., CommandChild], child_python: str
) -> None:
    rec = Repeating(deny=lambda a: False)
    g = rec.guard = PermissionGuard([tree], rec.decide)
    g.start()
    child = children(child_python, UID)
    try:
        assert child.opens(tree / "public", 4) == ["ok"] * 4
    finally:
        g.stop()
    assert [c for _, _, c, _, _, _ in g.take_repeats()] == [3]
    assert g.take_repeats() == []
    assert not g.repeat(rec.seen[0], True, "after stop")


class Journalled(Repeating):
    """A Repeating whose tokens are the recorded events, as the file guard's are."""

    def decide(self, a: Access) -> bool:
        allowed = Recorder.decide(self, a)
        assert self.guard is not None
        recorded = events_pb2.Event(
            file_access=events_pb2.FileAccess(path=a.path, pid=a.pid, uid=a.uid)
        ).SerializeToString()
        self.kept.append(self.guard.repeat(a, allowed, recorded, plain=self.plain))
        return allowed


def _read_back(journal: RepeatJournal) -> dict[tuple[str, int], int]:
    """What a start after a kill -9 now would record: (path, pid) -> repeats."""
    return {
        (events_pb2.Event.FromString(r.event).file_access.path, r.pid): r.count
        for r in journal.read_back()
    }


def test_repeats_are_journalled_before_they_are_answered(
    tree: Path,
    guarded: Callable[..., PermissionGuard],
    children: Callable[..., CommandChild],
    child_python: str,
    tmp_path: Path,
) -> None:
    journal = RepeatJournal(tmp_path / "repeats.journal")
    rec = Journalled()
    g = rec.guard = guarded([tree], rec, journal_fd=journal.fd)
    before = time.time_ns()
    child = children(child_python, UID)
    pid = child.proc.pid
    assert child.opens(tree / "public", 5) == ["ok"] * 5
    assert child.opens(tree / "secret", 3) == ["EPERM"] * 3
    # Nothing taken yet: this is what the agent would find after a kill -9 now.
    assert _read_back(journal) == {(str(tree / "public"), pid): 4, (str(tree / "secret"), pid): 2}
    assert all(before <= r.first_ns <= r.last_ns <= time.time_ns() for r in journal.read_back())
    # A second read loop would write over them: it refuses until they are read back.
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError, match="not yet read back"):
            Answers(r, os.getpid(), 10, journal.fd)
    finally:
        os.close(r)
        os.close(w)
    # take() returns exactly what the generation holds; once recorded it is done.
    generation = g.journal_generation()
    rows = g.take_repeats()
    assert sorted(c for _, _, c, _, _, _ in rows) == [2, 4]
    journal.mark_done(generation)
    assert _read_back(journal) == {}
    # The next generation, in the other half, carries its own copy of the event.
    assert child.opens(tree / "public", 2) == ["ok", "ok"]
    assert _read_back(journal) == {(str(tree / "public"), pid): 2}
    assert g.journal_generation() == generation + 1


def test_shared_answers_are_journalled_against_one_copy_of_their_event(
    tree: Path,
    guarded: Callable[..., PermissionGuard],
    children: Callable[..., CommandChild],
    child_python: str,
    tmp_path: Path,
) -> None:
    """Processes answered with another's answer are journalled each under its own pid,
    all against one record of the event in the half (not one per process)."""
    journal = RepeatJournal(tmp_path / "repeats.journal")
    rec = Journalled(deny=lambda a: False, plain=True)
    rec.guard = guarded([tree], rec, journal_fd=journal.fd)
    first = children(child_python, UID)
    assert first.opens(tree / "public", 2) == ["ok", "ok"]
    others = [children(child_python, UID) for _ in range(3)]
    for child in others:
        assert child.opens(tree / "secret", 1) == ["ok"]  # asked: vouches for it
        assert child.opens(tree / "public", 2) == ["ok", "ok"]  # the shared answer
    back = _read_back(journal)
    assert back == {
        (str(tree / "public"), first.proc.pid): 1,
        **{(str(tree / "public"), c.proc.pid): 2 for c in others},
    }
    # The public event's template once for the shared answer, once for the first
    # process's own answer: not once more per process that shared it.
    _, gen, halves = journal._header()
    used = halves[gen % 2][1]
    body = journal._map[4096 + (gen % 2) * journal.half_bytes :][:used]
    assert body.count(str(tree / "public").encode()) == 2


def test_a_full_journal_half_hands_repeats_to_python(
    tree: Path,
    guarded: Callable[..., PermissionGuard],
    children: Callable[..., CommandChild],
    child_python: str,
    tmp_path: Path,
) -> None:
    """Nothing is answered that is not on record: when the half is full, each repeat is
    decided (and recorded) again."""
    journal = RepeatJournal(tmp_path / "repeats.journal", half_bytes=4096)
    rec = Journalled(deny=lambda a: False)
    rec.guard = guarded([tree], rec, journal_fd=journal.fd)
    child = children(child_python, UID)
    assert child.opens(tree / "public", 400) == ["ok"] * 400
    journalled = sum(_read_back(journal).values())
    assert 100 < journalled < 400  # some fit, the rest were decided
    assert journalled + len(rec.seen) == 400


def test_execute_is_asked_as_execute(
    tree: Path, guarded: Callable[..., PermissionGuard], child_python: str
) -> None:
    tool = tree / "tool"
    shutil.copyfile("/bin/true", tool)
    _public(tool, 0o755)
    rec = Recorder(deny=lambda a: a.action == "execute" and a.uid == UID)
    guarded([tree], rec)

    with pytest.raises(PermissionError):
        subprocess.run(
            [str(tool)], user=UID, group=UID, extra_groups=[], timeout=CHILD_TIMEOUT, check=True
        )
    assert (
        subprocess.run(
            [str(tool)],
            user=OTHER_UID,
            group=OTHER_UID,
            extra_groups=[],
            timeout=CHILD_TIMEOUT,
            check=False,
        ).returncode
        == 0
    )
    # Reading the same file is a separate question, with a different answer.
    assert open_as(child_python, UID, tool) == ["ok"]

    asked = [(a.uid, a.action) for a in rec.seen if a.path == str(tool)]
    assert (UID, "execute") in asked
    assert (OTHER_UID, "execute") in asked
    assert (UID, "read") in asked


# The child that reads and writes: one step per argument, "ok" or the errno name each.
# r: open read-only and read; w: open read-write (kept); W: write through it; R: read
# through the read-only one; t: truncate(2) by path; m: map read-only, close, read;
# M: map shared and writable, close the descriptor, keep the mapping (touch nothing);
# F: fork, the child going on with the next steps (a new process: no answers yet).
STEPS_CHILD = """
import errno, mmap, os, sys
path, ro, rw, kept = sys.argv[1], None, None, None
def step(s):
    global ro, rw, kept
    if s == "r":
        ro = os.open(path, os.O_RDONLY); os.read(ro, 100)
    elif s == "w":
        rw = os.open(path, os.O_RDWR)
    elif s == "W":
        os.pwrite(rw, b"changed", 0)
    elif s == "R":
        os.pread(ro, 100, 0)
    elif s == "t":
        os.truncate(path, 3)
    elif s == "m":
        fd = os.open(path, os.O_RDONLY); m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        os.close(fd); m[:1]
    elif s == "M":  # libc's mmap: Python's keeps a duplicate of the descriptor
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype, libc.mmap.argtypes = ctypes.c_void_p, [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
            ctypes.c_long]
        fd = os.open(path, os.O_RDWR)
        kept = libc.mmap(None, 4096, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
        os.close(fd)
        if kept in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap")
    elif s == "F":
        child = os.fork()
        if child:
            os.waitpid(child, 0); os._exit(0)
for s in sys.argv[2]:
    try:
        step(s); print("ok", flush=True)
    except OSError as e:
        print(errno.errorcode[e.errno], flush=True)
"""


def steps_as(python: str, uid: int, path: Path, steps: str) -> list[str]:
    """Run ``steps`` (STEPS_CHILD) on ``path`` in one child as ``uid``."""
    return _child_lines(python, uid, STEPS_CHILD, str(path), steps)


def _mark(g: PermissionGuard, path: Path) -> None:
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        assert g.mark_file(fd)
    finally:
        os.close(fd)


def test_writes_to_marked_files_are_asked_as_write(
    tree: Path, guarded: Callable[..., PermissionGuard], child_python: str
) -> None:
    """Pre-content events: a write, a truncation by path and a read through a writable
    descriptor are asked as "write"; reads through read-only descriptors are not."""
    secret = _public(tree / "secret", 0o666)  # file modes that let anyone write
    rec = Repeating(lambda a: a.action == "write" and a.uid == UID)
    rec.guard = g = guarded([tree], rec)
    assert g.decides_writes and "writes included" in g.health().detail
    _mark(g, secret)
    assert steps_as(child_python, UID, secret, "rRRm") == ["ok"] * 4
    assert [a.action for a in rec.seen] == ["read"]  # the open; its reads were not asked
    # Opening it for writing ends what the reads were answered: the write is asked.
    assert steps_as(child_python, UID, secret, "rRwWRt") == ["ok", "ok", "ok"] + ["EPERM"] * 3
    assert [a.action for a in rec.seen[1:]] == ["read", "write"]
    assert secret.read_text() == "secret\n"
    # truncate(2) by path, holding nothing open: a write too.
    assert steps_as(child_python, UID, secret, "t") == ["EPERM"]
    assert [a.action for a in rec.seen[3:]] == ["write"]
    # Someone allowed to write does, and the writes are counted against one answer.
    assert steps_as(child_python, OTHER_UID, secret, "wWWW") == ["ok"] * 4
    assert secret.read_text() == "changed"
    assert [(a.uid, a.action) for a in rec.seen[4:]] == [(OTHER_UID, "read"), (OTHER_UID, "write")]
    counts = _counts(g)
    assert counts[(str(secret), OTHER_UID, os.path.realpath(child_python))] >= 2
    # Files that were never marked as labelled are decided by the open alone.
    public = _public(tree / "public", 0o666)
    assert steps_as(child_python, UID, public, "wW") == ["ok", "ok"]


def test_a_read_by_a_process_that_maps_the_file_writable_is_asked_as_write(
    tree: Path, guarded: Callable[..., PermissionGuard], child_python: str
) -> None:
    """The C loop answers a read itself only when the process holds the file for
    reading only. A shared writable mapping kept after its descriptor was closed (its
    writes are page faults the same events announce) makes the read a write to decide.
    Mapping it so is a write already: denied to whoever may not write."""
    secret = _public(tree / "secret", 0o666)
    rec = Repeating(lambda a: a.action == "write" and a.uid == UID)
    rec.guard = g = guarded([tree], rec)
    _mark(g, secret)
    assert steps_as(child_python, UID, secret, "M") == ["EPERM"]
    assert [a.action for a in rec.seen] == ["read", "write"]
    # A writer maps it (its open asked as a read, the mapping as a write) and closes the
    # descriptor; its child, which inherits the mapping, opens the file read-only and
    # reads: the read is asked as a write, and its repeat answered as that write was.
    assert steps_as(child_python, OTHER_UID, secret, "MFrR") == ["ok"] * 4
    assert [(a.uid, a.action) for a in rec.seen[2:]] == [
        (OTHER_UID, "read"),
        (OTHER_UID, "write"),
        (OTHER_UID, "read"),
        (OTHER_UID, "write"),
    ]
    assert steps_as(child_python, UID, secret, "rR") == ["ok", "ok"]  # no mapping: reads
    assert [a.action for a in rec.seen[6:]] == ["read"]


def test_a_labelled_file_on_tmpfs_is_guarded_and_its_writes_said_to_rest_on_dac(
    tree: Path, guarded: Callable[..., PermissionGuard], child_python: str
) -> None:
    """tmpfs has no pre-content events: the file is still marked for opens, and health
    says its writes rest on DAC alone."""
    rec = Recorder()
    g = guarded([tree], rec)
    shm = Path(tempfile.mkdtemp(prefix="baomi-fanotify-", dir="/dev/shm"))
    try:
        moved = shm / "secret"
        _write(moved, "secret\n")
        shm.chmod(0o755)
        _mark(g, moved)
        assert open_as(child_python, UID, moved) == ["EPERM"]  # opens are still asked
        health = g.health()
        assert health.state == "degraded"
        assert "writes of 1 labelled files rest on file modes and ACLs alone" in health.detail
    finally:
        shutil.rmtree(shm, ignore_errors=True)


def test_without_pre_content_writes_are_not_asked_and_health_says_so(
    tree: Path, guarded: Callable[..., PermissionGuard], child_python: str
) -> None:
    """The degraded mode (kernels before 6.14): writes rest on DAC; health says it."""
    secret = _public(tree / "secret", 0o666)
    rec = Recorder(lambda a: a.action == "write")
    g = PermissionGuard(
        [tree],
        rec.decide,
        on_timeout=rec.timeouts.append,
        on_error=lambda a, e: rec.errors.append((a, e)),
        pre_content=False,
    )
    g.start()
    try:
        assert not g.decides_writes
        health = g.health()
        assert health.state == "degraded"
        assert "writes rest on file modes and ACLs alone" in health.detail
        _mark(g, secret)
        assert steps_as(child_python, UID, secret, "rwWt") == ["ok"] * 4
        assert [a.action for a in rec.seen] == ["read", "read"]
        assert not rec.errors
    finally:
        g.stop()


def test_without_the_proc_connector_health_says_what_is_not_seen(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the kernel's proc connector cannot be had, the read loop reads each
    process's executable at every event, and health says what it no longer sees."""

    def untracked(*args: Any, **kwargs: Any) -> Answers:
        return Answers(*args, **kwargs, track_execs=False)

    monkeypatch.setattr(permission, "Answers", untracked)
    g = PermissionGuard([tree], lambda a: True)
    g.start()
    try:
        health = g.health()
        assert health.state == "degraded", health
        assert "no proc connector: a tracer attached to a process" in health.detail
    finally:
        g.stop()


def test_own_opens_are_allowed_without_asking(
    tree: Path, guarded: Callable[..., PermissionGuard], child_python: str
) -> None:
    rec = Recorder(deny=lambda a: True)
    guarded([tree], rec)
    assert (tree / "secret").read_text() == "secret\n"
    assert sorted(p.name for p in tree.iterdir()) == ["public", "secret", "sub"]
    assert rec.seen == []
    assert open_as(child_python, OTHER_UID, tree / "public") == ["EPERM"]


def test_new_directories_are_guarded(
    tree: Path,
    make_dir: Callable[[], Path],
    guarded: Callable[..., PermissionGuard],
    child_python: str,
) -> None:
    rec = Recorder()
    g = guarded([tree], rec)
    marked = g.health().detail

    # A whole new branch at once: the deeper levels exist before the guard sees the top.
    deep = tree / "n1" / "n2" / "n3"
    deep.mkdir(parents=True)
    for d in (tree / "n1", tree / "n1" / "n2", deep):
        _public(d, 0o755)
    _write(deep / "secret", "new secret\n")
    eventually(
        lambda: open_as(child_python, UID, deep / "secret") == ["EPERM"],
        "a secret in a new directory is denied",
    )

    # A directory moved in from outside the protected tree.
    outside = make_dir()
    (outside / "inner").mkdir()
    _public(outside / "inner", 0o755)
    _write(outside / "inner" / "secret", "moved secret\n")
    assert open_as(child_python, UID, outside / "inner" / "secret") == ["ok"]  # not guarded
    (outside / "inner").rename(tree / "moved")
    eventually(
        lambda: open_as(child_python, UID, tree / "moved" / "secret") == ["EPERM"],
        "a secret in a directory moved into the tree is denied",
    )
    assert open_as(child_python, UID, tree / "n1" / "n2") == ["ok"]  # directories: asked, allowed
    assert str(deep / "secret") in rec.paths()
    assert g.health().state == "ok" and g.health().detail != marked


def test_a_slow_decision_is_denied_at_the_deadline(
    tree: Path, guarded: Callable[..., PermissionGuard], child_python: str
) -> None:
    """decide() blocks until the child's open has *returned*: so the EPERM can only have
    come from the deadline, not from decide(), which would have said allow."""
    release = threading.Event()
    rec = Recorder(deny=lambda a: False)

    def slow(a: Access) -> bool:
        allowed = rec.decide(a)
        if a.path.endswith("secret"):
            release.wait(CHILD_TIMEOUT)
        return allowed

    g = guarded([tree], rec, decide=slow, deadline=0.05)
    try:
        assert open_as(child_python, UID, tree / "secret") == ["EPERM"]
        # Callbacks run after the answer, so that bookkeeping never holds the opener.
        eventually(lambda: len(rec.timeouts) == 1, "on_timeout called")
        assert rec.timeouts[0].path == str(tree / "secret")
        assert g.health().state == "degraded"  # that decision is still running
        # The opens behind it are not held up: another reader took over.
        assert open_as(child_python, UID, tree / "public") == ["ok"]
    finally:
        release.set()
    eventually(lambda: g.health().state == "ok", "health ok once the slow decision returned")
    assert rec.errors == []


def test_stuck_decisions_past_the_limit_deny_without_asking(
    tree: Path, guarded: Callable[..., PermissionGuard], child_python: str
) -> None:
    release = threading.Event()
    rec = Recorder(deny=lambda a: False)

    def slow(a: Access) -> bool:
        allowed = rec.decide(a)
        if a.path.endswith("secret"):
            release.wait(CHILD_TIMEOUT)
        return allowed

    guarded([tree], rec, decide=slow, deadline=0.05, max_stuck=1)
    try:
        assert open_as(child_python, UID, tree / "secret") == ["EPERM"]
        asked = len(rec.seen)
        assert open_as(child_python, UID, tree / "public") == ["EPERM"]
        assert len(rec.seen) == asked  # not asked at all
        eventually(lambda: len(rec.timeouts) == 2, "on_timeout called twice")
        assert [a.path for a in rec.timeouts] == [str(tree / "secret"), str(tree / "public")]
    finally:
        release.set()
    eventually(
        lambda: open_as(child_python, UID, tree / "public") == ["ok"],
        "decisions resume once the stuck one returned",
    )


def test_decide_raising_denies(
    tree: Path, guarded: Callable[..., PermissionGuard], child_python: str
) -> None:
    rec = Recorder()

    def broken(a: Access) -> bool:
        raise RuntimeError("policy engine bug")

    guarded([tree], rec, decide=broken)
    assert open_as(child_python, OTHER_UID, tree / "public") == ["EPERM"]
    eventually(lambda: len(rec.errors) == 1, "on_error called")
    [(access, error)] = rec.errors
    assert isinstance(error, RuntimeError)
    assert access is not None and access.path == str(tree / "public")


def test_stop_unguards_and_closes_everything(tree: Path, child_python: str) -> None:
    fds_before = _fd_count()
    rec = Recorder(deny=lambda a: True)
    g = PermissionGuard([tree], rec.decide, on_timeout=rec.timeouts.append)
    g.start()
    try:
        assert g.health().state == "ok"
        assert open_as(child_python, UID, tree / "public") == ["EPERM"]
        (tree / "later").mkdir()  # a directory the guard follows: one more mark
        _public(tree / "later", 0o755)
        eventually(
            lambda: open_as(child_python, UID, tree / "later") == ["EPERM"], "later is guarded"
        )
    finally:
        g.stop()
    assert g.health().state == "disabled"
    asked = len(rec.seen)
    assert open_as(child_python, UID, tree / "public", tree / "sub" / "secret", tree / "later") == [
        "ok",
        "ok",
        "ok",
    ]
    assert len(rec.seen) == asked
    assert _fd_count() == fds_before
    eventually(lambda: not _fanotify_threads(), "every fanotify thread ended")
    g.stop()  # twice is harmless


def test_stop_decides_what_is_already_queued(
    tree: Path, make_dir: Callable[[], Path], child_python: str
) -> None:
    """Opens waiting when stop() is called get decide()'s answer, not the kernel's
    close-time default (allow)."""
    entered, release = threading.Event(), threading.Event()
    rec = Recorder(deny=lambda a: "secret" in a.path)

    def gate(a: Access) -> bool:
        if a.path.endswith("public"):
            entered.set()
            release.wait(CHILD_TIMEOUT)
        return rec.decide(a)

    g = PermissionGuard([tree], gate, deadline=5.0)
    g.start()
    results: dict[str, list[str]] = {}
    first = threading.Thread(
        target=lambda: results.__setitem__("public", open_as(child_python, UID, tree / "public"))
    )
    first.start()
    second: threading.Thread | None = None
    try:
        assert entered.wait(CHILD_TIMEOUT)
        # The reader is busy with 'public': this one waits in the kernel queue.
        second = threading.Thread(
            target=lambda: results.__setitem__(
                "secret", open_as(child_python, UID, tree / "secret")
            )
        )
        second.start()
        time.sleep(0.2)  # let it reach the queue (if it does not, it is simply unguarded)
        stopper = threading.Thread(target=g.stop)
        stopper.start()
        time.sleep(0.1)
        release.set()
        stopper.join(CHILD_TIMEOUT)
        assert not stopper.is_alive()
    finally:
        release.set()
        g.stop()
        first.join(CHILD_TIMEOUT)
        if second is not None:
            second.join(CHILD_TIMEOUT)
    assert results["public"] == ["ok"]
    if str(tree / "secret") in rec.paths():  # it was queued before the marks went
        assert results["secret"] == ["EPERM"]
    else:
        assert results["secret"] == ["ok"]


def test_unprivileged_start_is_disabled_with_one_line(tree: Path) -> None:
    python = _python_for(NOBODY)
    script = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
from agent.sensors.files.changes import ChangeWatcher
from agent.sensors.files.permission import PermissionGuard
g = PermissionGuard([sys.argv[1]], lambda a: True)
g.start()
print(json.dumps([g.health().state, g.health().detail]))
g.stop()
w = ChangeWatcher([sys.argv[1]], print)
w.start()
print(json.dumps([w.health().state, w.health().detail]))
w.stop()
"""
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": os.pathsep.join(
            [str(REPO), str(REPO / "protos"), *(p for p in sys.path if "site-packages" in p)]
        ),
    }
    out = subprocess.run(
        [python, "-c", script, str(tree)],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=True,
    )
    guard_state, watcher_state = (line for line in out.stdout.splitlines())
    assert '"disabled"' in guard_state and "CAP_SYS_ADMIN" in guard_state
    assert '"disabled"' in watcher_state and "CAP_SYS_ADMIN" in watcher_state
    lines = out.stderr.splitlines()
    assert len(lines) == 2, out.stderr  # one per sensor
    assert lines[0].startswith("WARNING agent.sensors.files.permission: file guard disabled:")
    assert "CAP_SYS_ADMIN" in lines[0]


def test_missing_root_fails_health_and_guards_the_rest(tree: Path, child_python: str) -> None:
    rec = Recorder()
    g = PermissionGuard([tree, tree / "does-not-exist"], rec.decide)
    g.start()
    try:
        assert g.health().state == "failed"
        assert "does-not-exist" in g.health().detail
        assert open_as(child_python, UID, tree / "secret") == ["EPERM"]
    finally:
        g.stop()


# --- ChangeWatcher --------------------------------------------------------------------------
def _fid_support(d: Path) -> str | None:
    try:
        fd = fan.fanotify_init(fan.FAN_CLASS_NOTIF | fan.FAN_CLOEXEC | fan.FAN_REPORT_DFID_NAME, 0)
    except OSError as e:
        return f"no FID-reporting fanotify groups: {e.strerror}"
    try:
        fan.fanotify_mark(
            fd, fan.FAN_MARK_ADD, fan.FAN_CREATE | fan.FAN_ONDIR, fan.AT_FDCWD, str(d)
        )
    except OSError as e:
        return f"the temp filesystem cannot report file ids: {e.strerror}"
    finally:
        os.close(fd)
    return None


class Changes:
    """A thread-safe list of Change, with waiting."""

    def __init__(self) -> None:
        self.items: list[Change] = []
        self.overflows = 0
        self._lock = threading.Lock()

    def add(self, c: Change) -> None:
        with self._lock:
            self.items.append(c)

    def overflow(self) -> None:
        self.overflows += 1

    def wait_for(self, change: Change) -> None:
        eventually(lambda: change in self.snapshot(), f"{change} reported")

    def snapshot(self) -> list[Change]:
        with self._lock:
            return list(self.items)

    def of_kind(self, kind: str) -> list[Change]:
        return [c for c in self.snapshot() if c.kind == kind]


@pytest.fixture
def watched(make_dir: Callable[[], Path]) -> Iterator[tuple[Path, Changes, ChangeWatcher]]:
    """A 0777 directory under a running ChangeWatcher."""
    d = make_dir()
    if (why := _fid_support(d)) is not None:
        pytest.skip(why)
    d.chmod(0o777)
    changes = Changes()
    w = ChangeWatcher([d], changes.add, on_overflow=changes.overflow)
    w.start()
    try:
        assert w.health().state == "ok", w.health()
        yield d, changes, w
    finally:
        w.stop()


def run_as(uid: int, python: str, code: str, *args: Path) -> int:
    """Run ``code`` in a child as ``uid``; returns its pid (printed by the child)."""
    out = subprocess.run(
        [python, "-c", "import os, sys\nprint(os.getpid())\n" + code, *map(str, args)],
        user=uid,
        group=uid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=True,
    )
    return int(out.stdout.split()[0])


def test_changes_are_reported_with_paths_pid_and_uid(
    watched: tuple[Path, Changes, ChangeWatcher], child_python: str
) -> None:
    d, changes, _ = watched
    pid = run_as(
        UID,
        child_python,
        "d = sys.argv[1]\n"
        "with open(d + '/a', 'w') as f: f.write('x' * 100000)\n"
        "os.mkdir(d + '/sub')\n",
        d,
    )
    eventually(
        lambda: ("mkdir", str(d / "sub")) in [(c.kind, c.path) for c in changes.snapshot()],
        "mkdir reported",
    )
    # Once a directory is reported, it is watched: now move a file into it and out.
    pid2 = run_as(
        UID,
        child_python,
        "d = sys.argv[1]\n"
        "os.rename(d + '/a', d + '/sub/b')\n"
        "with open(d + '/sub/b', 'a') as f: f.write('more')\n"
        "os.unlink(d + '/sub/b')\n"
        "os.rmdir(d + '/sub')\n",
        d,
    )
    eventually(
        lambda: ("delete", str(d / "sub")) in [(c.kind, c.path) for c in changes.snapshot()],
        "the last change reported",
    )
    # uid is left out: it is -1 or UID depending on whether the child has exited by
    # the time its event is read (test_uid_of_a_live_writer covers it).
    assert [(c.kind, c.path, c.old_path, c.pid) for c in changes.snapshot()] == [
        ("create", str(d / "a"), "", pid),
        ("write", str(d / "a"), "", pid),
        ("mkdir", str(d / "sub"), "", pid),
        ("rename", str(d / "sub" / "b"), str(d / "a"), pid2),
        ("write", str(d / "sub" / "b"), "", pid2),
        ("delete", str(d / "sub" / "b"), "", pid2),
        ("delete", str(d / "sub"), "", pid2),
    ]


def test_attribute_changes_by_others_are_reported(
    watched: tuple[Path, Changes, ChangeWatcher], child_python: str
) -> None:
    d, changes, _ = watched
    f = _write(d / "f", "x")
    os.setxattr(f, "user.baomi.level", "机密".encode())  # this process: not news
    f.chmod(0o666)
    pid = run_as(
        UID,
        child_python,
        "os.setxattr(sys.argv[1] + '/f', 'user.baomi.level', '内部'.encode())\n",
        d,
    )
    eventually(lambda: any(c.kind == "attrib" for c in changes.snapshot()), "attrib reported")
    assert [(c.kind, c.path, c.pid) for c in changes.snapshot() if c.kind == "attrib"] == [
        ("attrib", str(f), pid)
    ]


def test_uid_of_a_live_writer(
    watched: tuple[Path, Changes, ChangeWatcher], child_python: str
) -> None:
    d, changes, _ = watched
    proc = subprocess.Popen(
        [
            child_python,
            "-c",
            "import sys, time\nopen(sys.argv[1], 'w').write('x')\nprint('done', flush=True)\n"
            "sys.stdin.read()",
            str(d / "live"),
        ],
        user=OTHER_UID,
        group=OTHER_UID,
        extra_groups=[],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "done"
        changes.wait_for(Change("create", str(d / "live"), "", proc.pid, OTHER_UID))
    finally:
        proc.kill()
        proc.wait(CHILD_TIMEOUT)


def test_renames_across_the_boundary(
    watched: tuple[Path, Changes, ChangeWatcher], make_dir: Callable[[], Path]
) -> None:
    d, changes, _ = watched
    outside = make_dir()
    (outside / "in").write_text("x")
    (outside / "in").rename(d / "in")
    (d / "in").rename(outside / "out")
    me = os.getpid()
    changes.wait_for(Change("rename", "", str(d / "in"), me, 0))
    assert changes.of_kind("rename") == [
        Change("rename", str(d / "in"), "", me, 0),  # from outside: old path unknown
        Change("rename", "", str(d / "in"), me, 0),  # to outside: new path unknown
    ]


def test_a_new_branch_is_reported_whole(watched: tuple[Path, Changes, ChangeWatcher]) -> None:
    """Entries made inside a new directory before it was marked are found by listing it."""
    d, changes, _ = watched
    (d / "x" / "y").mkdir(parents=True)
    (d / "x" / "y" / "f").write_text("f")
    changes.wait_for(Change("mkdir", str(d / "x"), "", os.getpid(), 0))
    for path in (d / "x" / "y", d / "x" / "y" / "f"):
        eventually(
            lambda p=path: any(c.path == str(p) for c in changes.snapshot()),
            f"{path} reported",
        )
    # And the new directories are watched from then on.
    (d / "x" / "y" / "g").write_text("g")
    changes.wait_for(Change("create", str(d / "x" / "y" / "g"), "", os.getpid(), 0))


def test_queue_overflow_is_reported_and_watching_goes_on(make_dir: Callable[[], Path]) -> None:
    d = make_dir()
    if (why := _fid_support(d)) is not None:
        pytest.skip(why)
    limit = int(Path("/proc/sys/fs/fanotify/max_queued_events").read_text())
    changes = Changes()
    stalled, release = threading.Event(), threading.Event()

    def slow(c: Change) -> None:
        if c.path.endswith("first"):
            stalled.set()
            release.wait(60)  # the reader sits here while the queue fills up
        changes.add(c)

    w = ChangeWatcher([d], slow, on_overflow=changes.overflow)
    w.start()
    try:
        (d / "first").write_text("x")
        assert stalled.wait(CHILD_TIMEOUT)
        for i in range(limit + 100):
            (d / f"f{i}").touch()
        release.set()
        eventually(lambda: changes.overflows == 1, "on_overflow called once")
        (d / "after").write_text("y")
        changes.wait_for(Change("create", str(d / "after"), "", os.getpid(), 0))
        assert w.health().state == "ok"
    finally:
        release.set()
        w.stop()


def test_change_watcher_stop_closes_everything(make_dir: Callable[[], Path]) -> None:
    d = make_dir()
    if (why := _fid_support(d)) is not None:
        pytest.skip(why)
    before = _fd_count()
    changes = Changes()
    w = ChangeWatcher([d], changes.add)
    w.start()
    (d / "sub").mkdir()
    changes.wait_for(Change("mkdir", str(d / "sub"), "", os.getpid(), 0))
    (d / "sub" / "last").write_text("x")
    w.stop()
    # What happened before stop() is still reported.
    assert Change("create", str(d / "sub" / "last"), "", os.getpid(), 0) in changes.snapshot()
    assert w.health().state == "disabled"
    assert _fd_count() == before
    eventually(lambda: not _fanotify_threads(), "every fanotify thread ended")


def test_the_switch_interval_is_short_while_a_guard_runs_and_restored_after(
    tree: Path, guarded: Callable[..., PermissionGuard]
) -> None:
    """Decisions in Python get the GIL back quickly while guards run; once the last one
    stops, the process has its own switch interval again."""
    before = sys.getswitchinterval()
    first = guarded([tree], Recorder())
    second = guarded([tree / "sub"], Recorder())
    short = pytest.approx(min(before, permission.SWITCH_INTERVAL))
    assert sys.getswitchinterval() == short
    first.stop()
    assert sys.getswitchinterval() == short
    second.stop()
    assert sys.getswitchinterval() == pytest.approx(before)
