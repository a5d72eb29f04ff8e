"""Writes and deletions refused by DAC the agent keeps, tried as ordinary users.

The protected tree is made world-writable (``chmod -R 777``) before the agent starts;
the agent takes it over: root:root, 0644/0755, ACL entries only for the holders of
``write`` (files) and ``delete`` (directories). Every attack runs as another uid with
``setpriv`` and must fail in the kernel; a change by root afterwards is put back and
recorded once as ``dac_drift``.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from baomi.labels import set_label
from baomi.policy.policyset import PolicySet
from baomi.v1 import events_pb2

from agent.decision.engine import Engine
from agent.sensors.files.dac import DacKeeper
from tests.integration import test_file_guard
from tests.integration.test_agent import AgentThread, host_events, wait_for
from tests.integration.test_file_guard import Site

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (fanotify, chown, setuid children)"),
]

site = test_file_guard.site
guarded = test_file_guard.guarded

ALICE, BOB, CAROL = 2001, 2002, 2003  # test_file_guard.SUBJECTS
Guarded = tuple[AgentThread, test_file_guard.RunningCollector]


_run_as = test_file_guard.run_as


def _refused(done: subprocess.CompletedProcess[bytes]) -> bool:
    """The command failed with EACCES or EPERM (and not for another reason)."""
    return done.returncode != 0 and (
        b"Permission denied" in done.stderr or b"Operation not permitted" in done.stderr
    )


@pytest.fixture
def arranged(site: Site) -> Site:
    """A finance directory, rules for write and delete, and the tree world-writable --
    all before the agent starts (``guarded``)."""
    root = site.root
    finance = root / "finance"
    finance.mkdir()
    budget = finance / "budget.txt"  # 秘密, finance: bob (一般) may write it
    budget.write_text("2027 budget\n")
    set_label(budget, "秘密", scope="dept:finance", key=site.key)
    (finance / "junk.txt").write_text("to be deleted\n")
    outside = site.base / "outside"
    outside.mkdir()
    (outside / "carols.txt").write_text("carol's own file\n")
    os.chown(outside / "carols.txt", CAROL, CAROL)
    site.write_policy(
        extra=f"p, bob, {finance}/**, write, allow\np, alice, {finance}, delete, allow\n"
    )
    for p in [root, *root.rglob("*"), outside]:
        p.chmod(0o777)
    return site


def test_the_tree_is_taken_over(arranged: Site, guarded: Guarded) -> None:
    root = arranged.root
    for p in [root, *root.rglob("*")]:
        st = p.stat()
        assert (st.st_uid, st.st_gid) == (0, 0), p
        assert stat.S_IMODE(st.st_mode) & 0o7002 == 0, p  # no set-id, sticky, other write
    acl = subprocess.run(
        ["getfacl", "-cp", str(root / "finance" / "budget.txt")],
        capture_output=True,
        check=True,
        timeout=10,
        text=True,
    ).stdout.split()
    # chmod 777 left exec bits, so 0755 (fanotify decides execution, not these bits)
    assert acl == ["user::rwx", f"user:{BOB}:rw-", "group::r-x", "mask::rwx", "other::r-x"]
    acl = subprocess.run(
        ["getfacl", "-cp", str(root / "finance")],
        capture_output=True,
        check=True,
        timeout=10,
        text=True,
    ).stdout.split()
    assert acl == ["user::rwx", f"user:{ALICE}:rwx", "group::r-x", "mask::rwx", "other::r-x"]
    assert not subprocess.run(  # no ACL: mode bits only
        ["getfacl", "-cps", str(root / "s1.txt")], capture_output=True, timeout=10, check=True
    ).stdout
    assert stat.S_IMODE((root / "s1.txt").stat().st_mode) == 0o755
    assert stat.S_IMODE(root.stat().st_mode) == 0o755


def _attacks(root: Path, outside: Path) -> list[tuple[str, list[str]]]:
    budget, s1 = root / "finance" / "budget.txt", root / "s1.txt"
    return [
        ("write", ["/bin/sh", "-c", f"echo x > {budget}"]),
        ("append", ["/bin/sh", "-c", f"echo x >> {budget}"]),
        ("truncate", ["truncate", "-s0", str(s1)]),
        ("unlink", ["rm", "-f", str(budget)]),
        ("rename within the tree", ["mv", str(budget), str(root / "moved.txt")]),
        ("create", ["touch", str(root / "finance" / "new.txt")]),
        ("hard link into the tree", ["ln", str(outside / "carols.txt"), str(root / "in.txt")]),
        ("hard link out of the tree", ["ln", str(budget), str(outside / "out.txt")]),
        ("setfacl", ["setfacl", "-m", f"u:{CAROL}:rw", str(budget)]),
        ("chmod", ["chmod", "666", str(s1)]),
        ("chmod a directory", ["chmod", "777", str(root / "finance")]),
    ]


def test_an_ordinary_user_without_the_right_is_refused(arranged: Site, guarded: Guarded) -> None:
    root, outside = arranged.root, arranged.base / "outside"
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    for what, argv in _attacks(root, outside):
        done = _run_as(CAROL, *argv)
        assert _refused(done), (what, done)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    assert not (outside / "out.txt").exists() and not (root / "in.txt").exists()
    # bob holds write on budget.txt only: other files and the directory stay closed
    assert _refused(_run_as(BOB, "truncate", "-s0", str(root / "s1.txt")))
    assert _refused(_run_as(BOB, "rm", "-f", str(root / "finance" / "budget.txt")))
    assert _refused(_run_as(BOB, "chmod", "666", str(root / "finance" / "budget.txt")))


def test_holders_of_write_and_delete_can(arranged: Site, guarded: Guarded) -> None:
    finance = arranged.root / "finance"
    budget = finance / "budget.txt"
    assert _run_as(BOB, "/bin/sh", "-c", f"echo more >> {budget}").returncode == 0
    assert budget.read_text() == "2027 budget\nmore\n"
    assert _run_as(BOB, "truncate", "-s0", str(budget)).returncode == 0
    assert _run_as(ALICE, "rm", "-f", str(finance / "junk.txt")).returncode == 0
    assert not (finance / "junk.txt").exists()


def _drifts(collector: test_file_guard.RunningCollector) -> list[events_pb2.Event]:
    return [
        e
        for e in host_events(collector.store, "ws-01")
        if e.HasField("file_change") and e.file_change.change == "dac_drift"
    ]


@pytest.mark.parametrize(
    ("what", "argv", "name"),
    [
        ("chmod", ["chmod", "777"], "s1.txt"),
        ("setfacl", ["setfacl", "-m", f"u:{CAROL}:rw"], "finance/budget.txt"),
        ("chown", ["chown", f"{CAROL}:{CAROL}"], "s1.txt"),
        ("chmod a directory", ["chmod", "1777"], "finance"),
        ("chmod the protected root", ["chmod", "777"], "."),
    ],
)
def test_drift_by_root_is_reverted_and_recorded_once(
    arranged: Site, guarded: Guarded, what: str, argv: list[str], name: str
) -> None:
    _, collector = guarded
    path = (arranged.root / name).resolve()
    kept = (path.stat(), os.listxattr(path))
    subprocess.run([*argv, str(path)], check=True, timeout=10)  # root, another process

    def restored() -> bool:
        st = path.stat()
        return (st.st_uid, st.st_mode, os.listxattr(path)) == (
            kept[0].st_uid,
            kept[0].st_mode,
            kept[1],
        )

    wait_for(lambda: bool(_drifts(collector)) and restored(), seconds=5)
    time.sleep(0.5)  # anything more would be a second event
    [event] = _drifts(collector)
    change = event.file_change
    assert event.severity == events_pb2.SEVERITY_HIGH, what
    assert (change.path, change.uid) == (str(path), 0) and change.pid > 0
    assert change.detail.startswith("found ") and "; restored 0:0 " in change.detail
    if name == "finance/budget.txt":
        assert f"user:{CAROL}:rw-" in change.detail.split(";")[0]
        assert change.home == str(path)
    assert _refused(_run_as(CAROL, "truncate", "-s0", str(arranged.root / "s1.txt")))


def test_a_holder_stripping_the_label_loses_write(site: Site, guarded: Guarded) -> None:
    """bob may write s1.txt (秘密, finance); the first label attribute he removes makes
    the label invalid (绝密, fail-closed), so the agent withdraws his write."""
    _, collector = guarded
    s1 = site.root / "s1.txt"
    test_file_guard._publish(site, collector, 1, extra=f"p, bob, {s1}, write, allow\n")
    assert (
        f"{BOB}"
        in subprocess.run(
            ["getfacl", "-cp", str(s1)], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    )
    first = next(n for n in os.listxattr(s1) if n.startswith("user.baomi."))
    code = f"import os; os.removexattr({str(s1)!r}, {first!r})"
    assert _run_as(BOB, "/usr/bin/python3", "-c", code).returncode == 0
    wait_for(lambda: _refused(_run_as(BOB, "truncate", "-s0", str(s1))), seconds=5)
    assert not _drifts(collector)  # a label change, not drift


def test_a_tree_that_cannot_be_kept_fails_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A read-only bind mount: the keeper cannot chmod, so health is failed, with one
    ERROR saying why."""
    tree = tmp_path / "ro"
    tree.mkdir()
    (tree / "f.txt").write_text("x")
    (tree / "f.txt").chmod(0o666)
    subprocess.run(["mount", "--bind", str(tree), str(tree)], check=True, timeout=10)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(tree)], check=True, timeout=10)
        policies = tmp_path / "policies"
        site_like = Site(tmp_path, tree, policies, "/usr/bin/cat", "/usr/bin/cat", b"k" * 32)
        site_like.write_policy()
        engine = Engine(PolicySet.load(policies))
        events: list[events_pb2.Event] = []
        keeper = DacKeeper([tree], b"k" * 32, lambda: engine, events.append)
        with caplog.at_level(logging.ERROR):
            keeper.start()
        keeper.stop()
        health = keeper.health()
        assert health.state == "failed" and "Read-only file system" in health.detail
        assert "\n" not in health.detail
        assert [r.levelno for r in caplog.records if "cannot keep" in r.message] == [logging.ERROR]
    finally:
        subprocess.run(["umount", str(tree)], check=True, timeout=10)
