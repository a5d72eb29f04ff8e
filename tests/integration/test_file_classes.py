"""Class answers: a labelled tree read file after file is decided in Python once.

The file guard puts every labelled file it knows into a class (classes.py); a vouched
process's first open of a file whose class was decided for the same euid and program
is answered by the C loop. These tests run the real file guard over a real tree and
assert what an attacker or an auditor would look at: which opens the kernel refused,
how many questions reached Python, and that the record names every file by its own
path, home and label id -- never the file the class was first decided for.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from baomi.labels import load_label_key, set_label
from baomi.v1 import events_pb2

import agent
from agent.sensors.files import sensor as sensor_module
from agent.sensors.files.inodes import LabelledInodes
from agent.sensors.files.permission import Access
from agent.sensors.files.repeats import HALF_BYTES, RepeatJournal
from agent.sensors.files.sensor import FileGuard, FileGuardConfig
from tests.integration.test_fanotify import _SKIP

pytestmark = [pytest.mark.root, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]

MODEL = Path(agent.__file__).resolve().parent.parent / "policies" / "model.conf"
FILES = 40  # per directory
CHILD_TIMEOUT = 20
SUBJECTS = """
[people.reader]
uid = {uid}
department = "t"
roles = ["staff"]
clearance = "核心"
trained_until = 2099-12-31
status = "active"

[people.other]
uid = 2002
department = "t"
roles = ["staff"]
clearance = "核心"
trained_until = 2099-12-31
status = "active"
apps = {{ "秘密" = ["{viewer}"] }}
"""


@dataclass
class Tree:
    base: Path
    root: Path
    policies: Path
    key: bytes
    cat: str

    def files(self, directory: str) -> list[Path]:
        return sorted((self.root / directory).iterdir())

    def write_policy(self, *, deny: str = "closed") -> None:
        self.policies.mkdir(exist_ok=True)
        shutil.copy(MODEL, self.policies / "model.conf")
        (self.policies / "policy.csv").write_text(
            f"p, role:staff, {self.root}/**, read, allow\n"
            f"p, role:staff, {self.root}/{deny}/**, read, deny\n"
        )
        (self.policies / "subjects.toml").write_text(
            SUBJECTS.format(uid=os.geteuid(), viewer=self.base / "viewer")
        )

    def cat_all(self, paths: list[Path]) -> list[str]:
        """One process reads every path in turn (as ``grep -r`` or a backup would);
        per path "ok" or "EPERM"."""
        done = subprocess.run(
            [
                "/bin/sh",
                "-c",
                'for p in "$@"; do head -c1 "$p" >/dev/null 2>&1 && echo ok || echo EPERM; done',
                "sh",
                *map(str, paths),
            ],
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            check=True,
        )
        return done.stdout.split()

    def grep_all(self, paths: list[Path]) -> str:
        """One process opening every path (``cat`` of them all): its stderr."""
        done = subprocess.run(
            [self.cat, *map(str, paths)],
            check=False,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
        )
        return done.stderr


@pytest.fixture
def tree() -> Iterator[Tree]:
    base = Path(tempfile.mkdtemp(prefix="baomi-classes-"))
    base.chmod(0o755)
    root = base / "secret"
    key = load_label_key(base / "label.key", create=True)
    for directory in ("open", "closed"):
        (root / directory).mkdir(parents=True)
        for i in range(FILES):
            f = root / directory / f"f{i:02d}.txt"
            f.write_text(f"{directory} {i}\n")
            set_label(f, "秘密", scope="dept:t", label_id=f"REG-{directory}-{i}", key=key)
    cat = base / "reader"  # a program of its own: no other test's answers apply
    shutil.copy("/usr/bin/cat", cat)
    shutil.copy("/usr/bin/cat", base / "viewer")  # the program uid 2002 is approved for
    t = Tree(base, root, base / "policies", key, str(cat))
    t.write_policy()
    yield t
    shutil.rmtree(base, ignore_errors=True)


class Decisions:
    """Counts the questions that reached Python (FileGuard._decide)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[str] = []
        decide = FileGuard._decide

        def counted(guard: FileGuard, access: Access) -> object:
            self.paths.append(access.path)
            return decide(guard, access)

        monkeypatch.setattr(FileGuard, "_decide", counted)


@pytest.fixture(params=["kept modes", "drifted modes"])
def guarded(
    request: pytest.FixtureRequest, tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[FileGuard, list[events_pb2.Event], Decisions]]:
    if request.param == "drifted modes":
        # The DAC keeper reverts these at start, which changes every file's ctime after
        # the labels were read: the classes must be brought up to date, not lost.
        for f in tree.root.rglob("*.txt"):
            f.chmod(0o666)
    decisions = Decisions(monkeypatch)
    events: list[events_pb2.Event] = []
    guard = FileGuard(
        FileGuardConfig(
            roots=(tree.root,),
            label_key=tree.key,
            policies=tree.policies,
            repeat_journal=tree.base / "repeats.journal",
        ),
        events.append,
    )
    guard.start()
    try:
        assert guard.health().state == "ok", guard.health().detail
        yield guard, events, decisions
    finally:
        guard.stop()


def _accesses(events: list[events_pb2.Event], reader: str) -> dict[str, events_pb2.FileAccess]:
    """The file_access events of ``reader`` by path (a path read twice: the last)."""
    return {
        e.file_access.path: e.file_access
        for e in events
        if e.HasField("file_access") and reader in e.file_access.executable
    }


def _decided_by(decisions: Decisions, reader_paths: list[Path]) -> list[str]:
    wanted = {str(p) for p in reader_paths}
    return [p for p in decisions.paths if p in wanted]


def test_a_tree_read_file_after_file_is_decided_once_per_class_and_every_file_recorded(
    tree: Tree, guarded: tuple[FileGuard, list[events_pb2.Event], Decisions]
) -> None:
    guard, events, decisions = guarded
    opened = tree.files("open")
    closed = tree.files("closed")
    stderr = tree.grep_all(opened + closed)
    # Every file of closed/ is refused, every file of open/ read.
    assert stderr.count("Operation not permitted") == FILES
    for f in closed:
        assert f"{f}: Operation not permitted" in stderr
    guard.flush()
    # One question per class: open/ (allowed) and closed/ (denied).
    assert len(_decided_by(decisions, opened + closed)) == 2
    accesses = _accesses(events, tree.cat)
    assert set(accesses) == {str(f) for f in opened + closed}
    for directory, files, decision in (
        ("open", opened, events_pb2.DECISION_ALLOW),
        ("closed", closed, events_pb2.DECISION_DENY),
    ):
        for i, f in enumerate(files):
            a = accesses[str(f)]
            assert a.decision == decision
            assert a.home == str(f)  # its own home, not the first file's
            assert a.label_id == f"REG-{directory}-{i}"
            assert a.level == 1  # 秘密
            assert max(a.count, 1) == 1  # 0: recorded when decided (one open)


def test_a_new_process_of_the_program_is_recorded_file_by_file_too(
    tree: Tree, guarded: tuple[FileGuard, list[events_pb2.Event], Decisions]
) -> None:
    guard, events, decisions = guarded
    opened = tree.files("open")
    assert tree.grep_all(opened) == ""
    before = len(decisions.paths)
    second = subprocess.Popen(
        [tree.cat, *map(str, opened)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, stderr = second.communicate(timeout=CHILD_TIMEOUT)
    assert stderr == ""
    assert len(decisions.paths) - before <= 1  # its first open vouches for it
    guard.flush()
    mine = {
        e.file_access.path: e.file_access
        for e in events
        if e.HasField("file_access") and e.file_access.pid == second.pid
    }
    assert set(mine) == {str(f) for f in opened}
    for i, f in enumerate(opened):
        assert (mine[str(f)].label_id, mine[str(f)].home) == (f"REG-open-{i}", str(f))


def test_processes_after_one_whose_answers_were_forgotten_still_name_every_file(
    tree: Tree, guarded: tuple[FileGuard, list[events_pb2.Event], Decisions]
) -> None:
    """A new process's answers borrow the executable and path of the shared answer they
    were copied from: forgetting them when the process is gone must leave those for the
    next process (answered in C, recorded by file)."""
    guard, events, decisions = guarded
    opened = tree.files("open")
    assert tree.grep_all(opened) == ""
    for _ in range(3):
        before = len(decisions.paths)
        reader = subprocess.Popen(
            [tree.cat, *map(str, opened)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        _, stderr = reader.communicate(timeout=CHILD_TIMEOUT)
        assert stderr == ""
        assert len(decisions.paths) - before <= 1  # answered in C after its first open
        guard.flush()  # counts taken; the answers of the process (gone) forgotten
        mine = {
            e.file_access.path: e.file_access
            for e in events
            if e.HasField("file_access") and e.file_access.pid == reader.pid
        }
        assert set(mine) == {str(f) for f in opened}
        for i, f in enumerate(opened):
            a = mine[str(f)]
            assert (a.label_id, a.home, a.executable) == (f"REG-open-{i}", str(f), tree.cat)


def test_another_uid_running_the_same_program_gets_none_of_its_answers(
    tree: Tree, guarded: tuple[FileGuard, list[events_pb2.Event], Decisions]
) -> None:
    """uid 2002 may read the tree only through its approved viewer (so DAC lets it
    through, and only the guard can refuse): after the listed reader's class was
    answered for the reader program, 2002 running that program is refused every file."""
    guard, events, _ = guarded
    opened = tree.files("open")
    assert tree.grep_all(opened) == ""  # uid 0: allowed, class answered
    done = subprocess.run(
        [tree.cat, *map(str, opened)],
        user=2002,
        check=False,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    assert done.stderr.count("Operation not permitted") == FILES, done.stderr
    guard.flush()
    theirs = [
        e.file_access for e in events if e.HasField("file_access") and e.file_access.uid == 2002
    ]
    assert {a.path for a in theirs} == {str(f) for f in opened}
    assert all(a.decision == events_pb2.DECISION_DENY for a in theirs)


def test_a_hard_link_into_an_allowed_directory_is_decided_by_its_home_class(
    tree: Tree, guarded: tuple[FileGuard, list[events_pb2.Event], Decisions]
) -> None:
    guard, events, _ = guarded
    opened = tree.files("open")
    closed = tree.files("closed")
    link = tree.root / "open" / "zz-link.txt"
    os.link(closed[3], link)
    # The class of open/ is decided first (allowed); the link's inode is closed/'s.
    assert tree.cat_all([*opened[:3], link]) == ["ok", "ok", "ok", "EPERM"]
    guard.flush()
    a = _accesses(events, "head")[str(link)]
    assert a.decision == events_pb2.DECISION_DENY
    assert a.home == str(closed[3])
    assert a.label_id == "REG-closed-3"


def test_a_changed_label_is_asked_again(
    tree: Tree, guarded: tuple[FileGuard, list[events_pb2.Event], Decisions]
) -> None:
    guard, events, decisions = guarded
    opened = tree.files("open")
    assert tree.grep_all(opened[:2]) == ""
    # Raised to 绝密 (no approved program): not the class it was in.
    set_label(opened[5], "绝密", scope="dept:t", label_id="REG-raised", key=tree.key)
    # Stripped by hand: a known labelled file without its label.
    os.removexattr(opened[6], "user.baomi.level")
    before = len(decisions.paths)
    stderr = tree.grep_all([opened[4], opened[5], opened[6], opened[7]])
    asked = decisions.paths[before:]
    assert str(opened[5]) in asked and str(opened[6]) in asked
    assert f"{opened[6]}: Operation not permitted" in stderr
    guard.flush()
    accesses = _accesses(events, tree.cat)
    assert accesses[str(opened[5])].label_id == "REG-raised"
    assert accesses[str(opened[6])].decision == events_pb2.DECISION_DENY
    assert accesses[str(opened[4])].decision == events_pb2.DECISION_ALLOW


def test_a_new_policy_reclassifies_every_file(
    tree: Tree, guarded: tuple[FileGuard, list[events_pb2.Event], Decisions]
) -> None:
    guard, _, _ = guarded
    opened = tree.files("open")
    closed = tree.files("closed")
    assert tree.grep_all(opened) == ""
    tree.write_policy(deny="open")  # open/ is now the closed one
    guard.apply_policy(tree.policies)
    stderr = tree.grep_all(opened + closed)
    assert stderr.count("Operation not permitted") == FILES
    for f in opened:
        assert f"{f}: Operation not permitted" in stderr


def test_the_start_hands_what_it_found_on_in_batches(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan at start keeps at most SCAN_BATCH files' rows for labelled.db and class
    entries for the C loop before handing them on (kept for the whole scan, they made an
    idle agent ~0.6 MB larger for 2,000 files), and every file still ends up classed."""
    monkeypatch.setattr(sensor_module, "SCAN_BATCH", 16)
    pending: list[int] = []
    handed: list[int] = []
    persist = LabelledInodes.persist
    hand = FileGuard._hand_classes

    def counted_persist(inodes: LabelledInodes) -> None:
        pending.append(len(inodes._pending))
        persist(inodes)

    def counted_hand(guard: FileGuard) -> None:
        handed.append(len(guard._classed))
        hand(guard)

    monkeypatch.setattr(LabelledInodes, "persist", counted_persist)
    monkeypatch.setattr(FileGuard, "_hand_classes", counted_hand)
    guard = FileGuard(
        FileGuardConfig(
            roots=(tree.root,),
            label_key=tree.key,
            policies=tree.policies,
            inodes_db=tree.base / "labelled.db",
        ),
        [].append,
    )
    guard.start()
    try:
        assert max(pending) <= 16, pending
        assert max(handed) <= 16, handed
        assert sum(handed) == 2 * FILES
        assert sum(pending) == 2 * FILES
    finally:
        guard.stop()


def test_class_answers_are_journaled_with_their_files(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a kill -9 would leave in the repeat journal names each classed file, so the
    next start records every file the killed agent answered."""
    monkeypatch.setattr(sensor_module, "FOLD_SECONDS", 3600)  # nothing taken meanwhile
    events: list[events_pb2.Event] = []
    journal = tree.base / "repeats.journal"
    config = FileGuardConfig(
        roots=(tree.root,), label_key=tree.key, policies=tree.policies, repeat_journal=journal
    )
    guard = FileGuard(config, events.append)
    guard.start()
    try:
        opened = tree.files("open")
        assert tree.grep_all(opened[:10]) == ""
        # What a kill -9 leaves: the half being written, not yet taken.
        back = RepeatJournal(journal).read_back()
    finally:
        guard.stop()
    files = {r.file[3].decode() for r in back if r.file is not None}
    assert files >= {str(f) for f in opened[1:10]}


def test_class_answers_a_killed_agent_gave_are_recorded_by_file_at_the_next_start(
    tree: Tree,
) -> None:
    """The journal as a kill -9 leaves it (written by hand from repeats.py's layout):
    a class answer's event, for the file it was decided on, and a copy of it for
    another file. The next start records that file by its own path, id and home."""
    opened = tree.files("open")
    journal = tree.base / "repeats.journal"
    RepeatJournal(journal).close()
    decided = events_pb2.Event(
        file_access=events_pb2.FileAccess(
            path=str(opened[0]),
            home=str(opened[0]),
            label_id="REG-open-0",
            level=1,
            action="read",
            pid=4242,
            decision=events_pb2.DECISION_ALLOW,
        )
    )
    body = decided.SerializeToString()
    half = struct.pack("<II", 1, len(body)) + body + b"\0" * (-len(body) % 8)
    st = opened[5].stat()
    path = str(opened[5]).encode()
    at_file = len(half)
    half += struct.pack("<IIQQQq", 3, len(path), 0, st.st_dev, st.st_ino, st.st_ctime_ns)
    half += path + b"\0" * (-len(path) % 8)
    half += struct.pack("<IIQq", 2, 4242, at_file, 1_700_000_000_000_000_000)
    with journal.open("r+b") as f:
        f.seek(24)  # gen, then each half's (gen, used)
        f.write(struct.pack("<QQQQQ", 1, 0, 0, 1, len(half)))
        f.seek(4096 + HALF_BYTES)
        f.write(half)
    events: list[events_pb2.Event] = []
    config = FileGuardConfig(
        roots=(tree.root,), label_key=tree.key, policies=tree.policies, repeat_journal=journal
    )
    guard = FileGuard(config, events.append)
    guard.start()
    guard.stop()
    got = [e.file_access for e in events if e.HasField("file_access")]
    assert [(a.path, a.label_id, a.home, a.count) for a in got] == [
        (str(opened[5]), "REG-open-5", str(opened[5]), 1)
    ]


def test_a_decision_does_not_wait_for_a_fold_still_recording(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recording a fold's repeats can take tens of ms (thousands of first opens by new
    processes, each one event). Meanwhile a decision hands its answer over to be
    repeated and goes on to the next event: were it to wait for the fold, the events
    behind it would pass their deadline and legitimate opens be denied. Here the
    recording of the repeats is held up for seconds while another program reads two
    files."""
    monkeypatch.setattr(sensor_module, "FOLD_SECONDS", 3600)  # only the test's flush
    recording = threading.Event()
    release = threading.Event()
    events: list[events_pb2.Event] = []

    def sink(event: events_pb2.Event) -> None:
        if event.HasField("file_access") and event.file_access.count:  # a repeat
            recording.set()
            release.wait(CHILD_TIMEOUT)
        events.append(event)

    config = FileGuardConfig(roots=(tree.root,), label_key=tree.key, policies=tree.policies)
    guard = FileGuard(config, sink)
    guard.start()
    flushing = threading.Thread(target=guard.flush)
    try:
        opened = tree.files("open")
        assert tree.grep_all(opened) == ""  # answered in C but the first: repeats counted
        flushing.start()
        assert recording.wait(CHILD_TIMEOUT)
        other = tree.base / "other"  # a program of its own: decided in Python
        shutil.copy("/usr/bin/cat", other)
        done = subprocess.run(
            [str(other), str(opened[0]), str(opened[1])],
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == "open 0\nopen 1\n"
    finally:
        release.set()
        if flushing.is_alive():
            flushing.join(CHILD_TIMEOUT)
        guard.stop()
