"""The file guard end to end: the kernel's answer to real opens, and the record of them.

Child processes open labelled files as other uids and through other executables; the
agent decides in the fanotify path and streams what happened to a real collector.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from baomi.labels import XATTR_LEVEL, load_label_key, set_label
from baomi.v1 import events_pb2

from agent.core import AgentConfig
from agent.identity import enroll
from agent.sensors.files.repeats import HALF_BYTES, RepeatJournal
from collector.server import create_token
from collector.store.sqlite import SQLiteStore
from tests.collector_harness import RunningCollector, init_pki
from tests.command_child import CommandChild
from tests.integration.test_agent import FAST, AgentThread, host_events, wait_for

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (fanotify, setuid children)"),
]

MODEL = Path(__file__).resolve().parents[2] / "policies" / "model.conf"

SUBJECTS = """
[people.alice]
uid = 2001
department = "finance"
roles = ["staff"]
clearance = "核心"
trained_until = 2099-12-31
status = "active"
apps = {{ "绝密" = ["{viewer}"] }}

[people.bob]
uid = 2002
department = "finance"
roles = ["staff"]
clearance = "一般"
trained_until = 2099-12-31
status = "{bob_status}"

[people.carol]
uid = 2003
department = "hr"
roles = ["staff"]
clearance = "重要"
trained_until = 2099-12-31
status = "active"

[people.dave]
uid = 2004
department = "finance"
roles = ["staff"]
clearance = "核心"
trained_until = 2020-01-01
status = "active"

[people.erin]
uid = 2005
department = "finance"
roles = ["staff"]
clearance = "核心"
trained_until = 2099-12-31
status = "{erin_status}"
"""


@dataclass
class Site:
    """A protected tree, a policy for it, and executables to open files with."""

    base: Path
    root: Path
    policies: Path
    cat: str
    viewer: str
    key: bytes  # the label key the agent seals and checks labels with

    @property
    def key_file(self) -> Path:
        return self.base / "label.key"

    def write_policy(
        self,
        *,
        erin_status: str = "leaving",
        bob_status: str = "active",
        deny_bob: bool = False,
        extra: str = "",
    ) -> None:
        """Write the site's policy; ``extra`` is more policy.csv lines (write, delete)."""
        self.policies.mkdir(exist_ok=True)
        shutil.copy(MODEL, self.policies / "model.conf")
        rules = f"p, role:staff, {self.root}/**, read, allow\n"
        if deny_bob:
            rules += f"p, bob, {self.root}/s1.txt, read, deny\n"
        rules += extra
        (self.policies / "policy.csv").write_text(rules)
        (self.policies / "subjects.toml").write_text(
            SUBJECTS.format(viewer=self.viewer, erin_status=erin_status, bob_status=bob_status)
        )

    def open_as(self, uid: int, name: str, exe: str | None = None) -> bool:
        """Read a protected file as ``uid`` through ``exe``; True if the kernel allowed it."""
        done = subprocess.run(
            [exe or self.cat, str(self.root / name)],
            user=uid,
            capture_output=True,
            timeout=10,
            check=False,
        )
        if done.returncode != 0:
            assert b"Operation not permitted" in done.stderr, done.stderr
        return done.returncode == 0


@pytest.fixture
def site() -> Iterator[Site]:
    # Not under pytest's tmp_path: other uids must be able to reach these files.
    base = Path(tempfile.mkdtemp(prefix="baomi-guard-"))
    base.chmod(0o755)
    root = base / "secret"
    root.mkdir(mode=0o755)
    (base / "bin").mkdir(mode=0o755)
    viewer = base / "bin" / "viewer"
    shutil.copy("/usr/bin/cat", viewer)
    key = load_label_key(base / "label.key", create=True)
    s = Site(base, root, base / "policies", "/usr/bin/cat", str(viewer), key)
    labels = {
        "s1.txt": {"level": "秘密", "scope": "dept:finance"},
        "s2.txt": {"level": "机密"},
        "top.txt": {"level": "绝密"},
        "old.txt": {"level": "机密", "until": "2020-01-01"},
    }
    for name in [*labels, "bad.txt"]:
        (root / name).write_text(f"content of {name}\n")
        (root / name).chmod(0o644)
    for name, label in labels.items():
        set_label(root / name, **label, key=key)  # type: ignore[arg-type]
    os.setxattr(root / "bad.txt", "user.baomi.level", b"ultra-secret")
    s.write_policy()
    try:
        yield s
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def running_guard(
    site: Site, tmp_path: Path, **settings: object
) -> Iterator[tuple[AgentThread, RunningCollector]]:
    """A collector, and an agent guarding the site with ``settings`` added to its files
    sensor's; the agent's health is awaited (``ok``, or the state given as ``health``)."""
    health = settings.pop("health", "ok")
    store = SQLiteStore(tmp_path / "c.db")
    init_pki(tmp_path / "pki")
    collector = RunningCollector(store, tmp_path / "pki", checkpoint_seconds=3600)
    state = tmp_path / "agent"
    enroll(
        state,
        collector.address,
        create_token(store, "ws-01"),
        (tmp_path / "pki" / "ca.pem").read_bytes(),
        collector.enroll_address,
    )
    config = AgentConfig(
        state_dir=state,
        heartbeat_seconds=3600,
        stream=FAST,
        sensors={
            "files": {
                "roots": [str(site.root)],
                "policies": str(site.policies),
                "deadline": 0.5,
                "label_key": str(site.key_file),
                # In-process agents here: a guardian would outlive the test
                # (test_guardian.py tests it, with agents in subprocesses).
                "unsafe_no_guardian": True,
                **settings,
            }
        },
    )
    agent = AgentThread(config)
    try:
        # the guard answers opens, every labelled file is marked, the DAC is the agent's
        wait_for(
            lambda: any(
                s.name == "files" and s.health().state == health for s in agent.agent.sensors
            )
        )
        yield agent, collector
    finally:
        agent.stop()
        collector.stop()
        store.close()


@pytest.fixture
def guarded(site: Site, tmp_path: Path) -> Iterator[tuple[AgentThread, RunningCollector]]:
    with running_guard(site, tmp_path) as both:
        yield both


def run_as(
    uid: int, *argv: str, timeout: float = 10, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """``argv`` run as ``uid`` (no supplementary groups) through ``setpriv``."""
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv],
        capture_output=True,
        timeout=timeout,
        check=False,
        env=env,
    )


def _accesses(collector: RunningCollector) -> list[events_pb2.FileAccess]:
    return [
        e.file_access for e in host_events(collector.store, "ws-01") if e.HasField("file_access")
    ]


CASES = [
    # (what, uid, file, through the approved viewer, allowed, reason in the event)
    ("equal level allowed", 2002, "s1.txt", False, True, ""),
    ("read up denied", 2002, "s2.txt", False, False, "read up"),
    ("outside scope denied", 2003, "s1.txt", False, False, "scope"),
    ("expired training denied", 2004, "s1.txt", False, False, "training"),
    ("leaver denied", 2005, "s1.txt", False, False, "leaving"),
    ("unapproved application denied for 绝密", 2001, "top.txt", False, False, "not approved"),
    ("approved application allowed for 绝密", 2001, "top.txt", True, True, ""),
    ("expired label allowed as declassified", 2002, "old.txt", False, True, ""),
    ("invalid label denied", 2001, "bad.txt", False, False, "invalid label"),
    ("unknown user denied", 2999, "s1.txt", False, False, "unknown user"),
    ("root is not exempt", 0, "s1.txt", False, False, "unknown user"),
]


def test_kernel_answers_and_every_access_is_recorded(
    site: Site, guarded: tuple[AgentThread, RunningCollector]
) -> None:
    agent, collector = guarded
    for what, uid, name, viewer, allowed, _ in CASES:
        got = site.open_as(uid, name, site.viewer if viewer else None)
        assert got is allowed, what
    assert agent.agent.recorder.flush()
    wait_for(lambda: len(_accesses(collector)) >= len(CASES))
    time.sleep(0.3)  # anything more would be an extra event
    accesses = _accesses(collector)
    assert len(accesses) == len(CASES)
    for (what, uid, name, viewer, allowed, reason), a in zip(CASES, accesses, strict=True):
        assert a.path == str(site.root / name), what
        assert a.uid == uid and a.action == "read", what
        assert a.executable == (site.viewer if viewer else site.cat), what
        want = events_pb2.DECISION_ALLOW if allowed else events_pb2.DECISION_DENY
        assert a.decision == want, (what, a.reason)
        assert reason in a.reason, (what, a.reason)
        assert a.count == 1
    declassified = [
        e.file_change
        for e in host_events(collector.store, "ws-01")
        if e.file_change.change == "declassified"
    ]
    assert [d.path for d in declassified] == [str(site.root / "old.txt")]
    assert a.user == "" and accesses[0].user == "bob"
    assert accesses[0].label_scope == ["dept:finance"] and accesses[0].level == 1


def _publish(site: Site, collector: RunningCollector, applied: int, **policy: object) -> None:
    """Publish the site's policy (rewritten with ``policy``) through the collector and
    wait until the agent has applied ``applied`` bundles in all."""
    site.write_policy(**policy)  # type: ignore[arg-type]
    files = {p.name: p.read_bytes() for p in site.policies.iterdir()}
    collector.call(lambda: collector.collector.policy.publish(files, "secadmin"))
    wait_for(
        lambda: sum(e.policy_applied.ok for e in host_events(collector.store, "ws-01")) >= applied
    )


def test_changes_take_effect_on_the_next_open(
    site: Site, guarded: tuple[AgentThread, RunningCollector]
) -> None:
    agent, collector = guarded

    def publish(applied: int, **policy: object) -> None:
        _publish(site, collector, applied, **policy)

    assert not site.open_as(2002, "s2.txt")  # 机密, bob is 一般
    set_label(site.root / "s2.txt", level="秘密", key=site.key)
    assert site.open_as(2002, "s2.txt")  # label change: no stale verdict

    assert site.open_as(2002, "s1.txt")
    publish(1, deny_bob=True)
    assert not site.open_as(2002, "s1.txt")  # policy change: no stale verdict
    publish(2)
    assert site.open_as(2002, "s1.txt")  # the deny rule is gone
    publish(3, bob_status="leaving")
    assert not site.open_as(2002, "s1.txt")  # subject change: no stale verdict
    current = collector.collector.policy.current
    assert current is not None and agent.agent.policy.version == current.version


def test_changes_reach_a_process_that_opened_before(
    site: Site,
    guarded: tuple[AgentThread, RunningCollector],
    children: Callable[..., CommandChild],
) -> None:
    """One process keeps opening the same file while the label, the policy and the
    subjects change: the answer it got before is never given again after a change."""
    _, collector = guarded
    applied = 0

    def publish(**policy: object) -> None:
        nonlocal applied
        applied += 1
        _publish(site, collector, applied, **policy)

    bob = children("/usr/bin/python3", 2002)  # Debian's: uid 2002 can run it
    s1, s2 = site.root / "s1.txt", site.root / "s2.txt"
    assert bob.opens(s1, 3) == ["ok"] * 3
    assert bob.opens(s2, 2) == ["EPERM"] * 2  # 机密, bob is 一般
    set_label(s2, level="秘密", key=site.key)
    assert bob.opens(s2, 2) == ["ok"] * 2  # label change
    publish(deny_bob=True)
    assert bob.opens(s1, 2) == ["EPERM"] * 2  # policy change
    publish()
    assert bob.opens(s1, 2) == ["ok"] * 2
    publish(bob_status="leaving")
    assert bob.opens(s1, 2) == ["EPERM"] * 2  # subject change


def _as_root_elsewhere(code: str) -> None:
    """Run ``code`` as root in a process other than the agent's (whose own attribute
    changes its change watcher ignores)."""
    subprocess.run(["/usr/bin/python3", "-c", code], timeout=10, check=True)


def _label_changes(collector: RunningCollector, path: Path) -> list[events_pb2.Event]:
    return [
        e
        for e in host_events(collector.store, "ws-01")
        if e.HasField("file_change")
        and e.file_change.change == "label"
        and e.file_change.path == str(path)
    ]


def test_a_label_lowered_by_the_files_writer_is_not_believed(
    site: Site, guarded: tuple[AgentThread, RunningCollector]
) -> None:
    """alice (核心) may write s2.txt (机密): the agent's DAC grants her user:2001:rw-.
    Lowering its level herself -- user.* attributes are the writer's to set -- breaks
    the seal, so the label counts as 绝密 (bob, 一般, is denied even the 秘密 it claims),
    and the change is recorded as a HIGH label change."""
    _, collector = guarded
    s2 = site.root / "s2.txt"
    _publish(site, collector, 1, extra=f"p, alice, {s2}, write, allow\n")
    code = f"import os; os.setxattr({str(s2)!r}, {XATTR_LEVEL!r}, '秘密'.encode())"
    subprocess.run(["/usr/bin/python3", "-c", code], user=2001, timeout=10, check=True)
    assert os.getxattr(s2, XATTR_LEVEL) == "秘密".encode()
    assert not site.open_as(2002, "s2.txt")
    wait_for(lambda: any(a.path == str(s2) for a in _accesses(collector)))
    [access] = [a for a in _accesses(collector) if a.path == str(s2)]
    assert access.decision == events_pb2.DECISION_DENY
    assert access.level == 3 and "seal does not match" in access.reason
    wait_for(lambda: bool(_label_changes(collector, s2)))
    [change] = _label_changes(collector, s2)
    assert change.severity == events_pb2.SEVERITY_HIGH and change.file_change.level == 3


@pytest.mark.parametrize(
    ("opened_before", "then_opened"),
    [(True, False), (True, True), (False, False)],
    ids=["removed", "removed-then-opened", "never-opened"],
)
def test_a_label_removed_by_the_files_writer_is_recorded_and_denied(
    site: Site,
    guarded: tuple[AgentThread, RunningCollector],
    opened_before: bool,
    then_opened: bool,
) -> None:
    """A seal cannot stop a writer removing the whole label (here root, in a process of
    its own: an ordinary holder of write loses it at the first attribute removed, as
    the label no longer holds -- test_dac); the agent knows every
    labelled inode (scanned at start), so the stripped file is never "unclassified": the
    removal is a HIGH label change -- also for a file nobody opened since the agent
    started, and when the writer opens the file at once (decided before the change
    watcher reads the attribute change) -- and every open of it is denied."""
    _, collector = guarded
    s1 = site.root / "s1.txt"
    if opened_before:
        assert site.open_as(2002, "s1.txt")  # the guard sees it labelled 秘密
    _as_root_elsewhere(
        f"import os\nfor n in os.listxattr({str(s1)!r}):\n"
        f"    n.startswith('user.baomi.') and os.removexattr({str(s1)!r}, n)\n"
        + (f"try: open({str(s1)!r}).close()\nexcept PermissionError: pass\n" if then_opened else "")
    )
    assert not [n for n in os.listxattr(s1) if n.startswith("user.baomi.")]
    # Each removexattr that leaves the label not whole is recorded (the kernel may
    # merge steps still queued); every state on the way is fail-closed (绝密).
    wait_for(lambda: len(_label_changes(collector, s1)) >= 1)
    assert not site.open_as(2002, "s1.txt")
    changes = _label_changes(collector, s1)
    assert all(c.severity == events_pb2.SEVERITY_HIGH for c in changes)
    assert all(c.file_change.pid > 0 and c.file_change.level == 3 for c in changes)
    assert all(c.file_change.home == str(s1) for c in changes)
    wait_for(lambda: any("label was removed" in a.reason for a in _accesses(collector)))
    denied = [a for a in _accesses(collector) if "label was removed" in a.reason]
    assert denied[-1].decision == events_pb2.DECISION_DENY and denied[-1].uid == 2002


def test_new_file_in_labelled_directory_inherits_its_label(
    site: Site, guarded: tuple[AgentThread, RunningCollector]
) -> None:
    sub = site.root / "finance"
    sub.mkdir()
    set_label(sub, level="机密", scope="dept:finance", key=site.key)
    # Creating an entry needs delete on the directory (the agent's DAC grants rwx), and
    # writing it needs write on its files: the writes through the creating descriptor
    # are asked whenever the change watcher has marked the new inode before the
    # kernel opened it (a race either side may win).
    rules = f"p, alice, {sub}, delete, allow\np, alice, {sub}/**, write, allow\n"
    _publish(site, guarded[1], 1, extra=rules)
    made = subprocess.run(
        ["/bin/sh", "-c", f"echo new > {sub}/made.txt"],
        user=2001,
        capture_output=True,
        timeout=10,
        check=False,
    )
    if made.returncode != 0:  # say why: the guard's record of the creating open
        time.sleep(0.5)
        why = [(a.decision, a.reason, a.level) for a in _accesses(guarded[1]) if "made" in a.path]
        pytest.fail(f"creating made.txt failed ({made.stderr!r}); recorded: {why}")
    assert os.getxattr(sub / "made.txt", "user.baomi.level") == os.getxattr(sub, "user.baomi.level")
    assert not site.open_as(2002, "finance/made.txt")  # bob: 一般 < 机密
    # the new inode is guarded by now: alice's next write is asked, and her rule allows it
    more = subprocess.run(
        ["/bin/sh", "-c", f"echo more >> {sub}/made.txt"], user=2001, check=False, timeout=10
    )
    assert more.returncode == 0
    wait_for(lambda: any(a.action == "write" and "made" in a.path for a in _accesses(guarded[1])))


def test_bad_policy_is_refused_and_last_good_stays(
    site: Site, guarded: tuple[AgentThread, RunningCollector]
) -> None:
    _, collector = guarded
    site.write_policy()
    (site.policies / "policy.csv").write_text("p, role:staff, /x/**, fly, allow\n")
    collector.call(
        lambda: collector.collector.policy.publish(
            {p.name: p.read_bytes() for p in site.policies.iterdir()}, "secadmin"
        )
    )
    wait_for(
        lambda: any(e.HasField("policy_applied") for e in host_events(collector.store, "ws-01"))
    )
    refused = next(
        e.policy_applied
        for e in host_events(collector.store, "ws-01")
        if e.HasField("policy_applied")
    )
    assert not refused.ok and "policy.csv:1" in refused.error
    assert site.open_as(2002, "s1.txt")  # the local policy is still in force


def test_repeated_opens_are_folded_never_dropped(
    site: Site, guarded: tuple[AgentThread, RunningCollector]
) -> None:
    agent, collector = guarded
    script = f"for _ in range(50): open({str(site.root / 's1.txt')!r}).close()"
    # Debian's python3: the test's own interpreter may sit where uid 2002 cannot reach.
    subprocess.run(["/usr/bin/python3", "-c", script], user=2002, timeout=30, check=True)
    agent.stop()
    accesses = [a for a in _accesses(collector) if a.path.endswith("s1.txt")]
    assert sum(a.count for a in accesses) == 50
    # The first is recorded at once, the 49 repeats counted and recorded each second of
    # folding; the recorder may merge those that meet in one of its batches.
    assert 1 <= len(accesses) <= 3
    for a in accesses[1:]:
        assert a.first.ToNanoseconds() <= a.last.ToNanoseconds()


def _unrecorded_repeats(
    path: Path, event: events_pb2.Event, repeats: list[tuple[int, int]]
) -> None:
    """Leave ``path`` as a killed agent would: generation 1 in half 1, never taken.
    Written by hand from the layout repeats.py documents (the C side writes the same)."""
    journal = RepeatJournal(path)
    journal.close()
    body = event.SerializeToString()
    half = struct.pack("<II", 1, len(body)) + body + b"\0" * (-len(body) % 8)
    for pid, t in repeats:
        half += struct.pack("<IIQq", 2, pid, 0, t)
    with path.open("r+b") as f:
        f.seek(24)  # gen, then each half's (gen, used)
        f.write(struct.pack("<QQQQQ", 1, 0, 0, 1, len(half)))
        f.seek(4096 + HALF_BYTES)
        f.write(half)


def test_repeats_a_killed_agent_answered_are_recorded_at_the_next_start(
    site: Site, tmp_path: Path
) -> None:
    recorded = events_pb2.Event(
        severity=events_pb2.SEVERITY_INFO,
        file_access=events_pb2.FileAccess(
            path=str(site.root / "s1.txt"),
            action="read",
            uid=2002,
            pid=4242,
            cmdline="cat s1.txt",
            decision=events_pb2.DECISION_ALLOW,
        ),
    )
    t0 = 1_700_000_000_000_000_000
    repeats = [(4242, t0), (4242, t0 + 5), (999_999_999, t0 + 7), (4242, t0 + 9)]
    _unrecorded_repeats(site.base / "repeats.journal", recorded, repeats)
    with running_guard(site, tmp_path) as (agent, collector):
        assert agent.agent.recorder.flush()
        wait_for(lambda: len(_accesses(collector)) >= 2)
        got = {a.pid: a for a in _accesses(collector) if a.path.endswith("s1.txt")}
    assert {pid: a.count for pid, a in got.items()} == {4242: 3, 999_999_999: 1}
    mine = got[4242]
    assert (mine.first.ToNanoseconds(), mine.last.ToNanoseconds()) == (t0, t0 + 9)
    assert mine.cmdline == "cat s1.txt" and mine.decision == events_pb2.DECISION_ALLOW
    # A shared answer's other process: its own pid, and no command line it never had.
    assert got[999_999_999].cmdline == ""
    # Read back once: marked done, so a later start records nothing again.
    assert RepeatJournal(site.base / "repeats.journal").read_back() == []
