"""The file guard tried as an attacker with an ordinary account would.

The protected tree is left world-writable, as on a shared server whose permissions
drifted, and every attack runs as an ordinary uid: a hard link or a rename out of the
tree, a hard link from one department's directory into another's, a bind mount in a
user and mount namespace of the attacker's own. Each time the open is decided by the
rules of the file's *home* (where it was labelled) and recorded once, naming the path
the attacker used and the home.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from baomi.labels import set_label
from baomi.v1 import events_pb2

from tests.integration import test_file_guard
from tests.integration.test_agent import AgentThread, wait_for
from tests.integration.test_file_guard import Site, _accesses

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (fanotify, setuid children)"),
]

# The protected tree, its policy and a running agent with a real collector.
site = test_file_guard.site
guarded = test_file_guard.guarded

BOB, CAROL = 2002, 2003  # 一般 in finance; 重要 in hr (test_file_guard.SUBJECTS)
Guarded = tuple[AgentThread, object]


_run_as = test_file_guard.run_as


def _read_as(uid: int, path: Path) -> bool:
    """``cat PATH`` as ``uid``: True when the kernel let it read."""
    done = _run_as(uid, "/usr/bin/cat", str(path))
    if done.returncode != 0:
        assert b"Operation not permitted" in done.stderr, done.stderr
    return done.returncode == 0


@pytest.fixture
def arranged(site: Site) -> Site:
    """Two departments' directories under the root, rules by directory, and the whole
    tree world-writable; arranged before the agent starts (``guarded``)."""
    root = site.root
    for d in ("finance", "shared"):
        (root / d).mkdir(mode=0o777)
        (root / d).chmod(0o777)
    budget = root / "finance" / "budget.txt"
    budget.write_text("2027 budget\n")
    set_label(budget, "秘密", key=site.key)
    (root / "shared" / "menu.txt").write_text("canteen menu\n")
    (site.policies / "policy.csv").write_text(
        f"p, role:staff, {root}/shared/**, read, allow\n"
        f"p, bob, {root}/finance/**, read, allow\n"
        f"p, role:staff, {root}/*.txt, read, allow\n"
    )
    outside = site.base / "outside"
    outside.mkdir(mode=0o777)
    outside.chmod(0o777)
    root.chmod(0o777)
    for p in root.rglob("*"):
        p.chmod(0o777 if p.is_dir() else 0o666)
    return site


def _the_access(collector: object, path: Path) -> events_pb2.FileAccess:
    """The one open for read or execute recorded through ``path`` (waits for it, then
    checks it is one); refused writes (test_refusals) are not opens the guard decided."""

    def opens() -> list[events_pb2.FileAccess]:
        found = _accesses(collector)  # type: ignore[arg-type]
        return [a for a in found if a.path == str(path) and a.action in {"read", "execute"}]

    wait_for(lambda: bool(opens()))
    found = opens()
    assert len(found) == 1, found
    return found[0]


def _link_as(uid: int, src: Path, dst: Path) -> None:
    """``ln SRC DST`` as ``uid``; where the agent's permissions refuse it, as root."""
    if _run_as(uid, "/usr/bin/ln", str(src), str(dst)).returncode != 0:
        os.link(src, dst)  # the attack was refused already; test the read through a link


def test_a_hard_link_out_of_the_tree_is_decided_as_the_file(
    arranged: Site, guarded: Guarded
) -> None:
    _, collector = guarded
    top = arranged.root / "top.txt"  # 绝密: bob (一般) may not read it
    link = arranged.base / "outside" / "top-link"
    _link_as(BOB, top, link)
    assert not _read_as(BOB, link)
    a = _the_access(collector, link)
    assert (a.uid, a.decision, a.home) == (BOB, events_pb2.DECISION_DENY, str(top))
    assert "read up" in a.reason and a.level == 3
    # The approved viewer reads it for alice through the same link: decided, not blocked.
    done = subprocess.run(
        [arranged.viewer, str(link)], user=2001, capture_output=True, timeout=10, check=False
    )
    assert done.returncode == 0 and done.stdout == b"content of top.txt\n"


def test_a_file_renamed_out_of_the_tree_stays_guarded(arranged: Site, guarded: Guarded) -> None:
    _, collector = guarded
    s2 = arranged.root / "s2.txt"  # 机密
    moved = arranged.base / "outside" / "s2.txt"
    done = _run_as(BOB, "/usr/bin/mv", str(s2), str(moved))
    if done.returncode != 0:
        s2.rename(moved)
    assert not _read_as(BOB, moved)
    a = _the_access(collector, moved)
    assert (a.decision, a.home, a.level) == (events_pb2.DECISION_DENY, str(s2), 2)


def test_a_hard_link_into_another_departments_directory_keeps_its_rules(
    arranged: Site, guarded: Guarded
) -> None:
    _, collector = guarded
    budget = arranged.root / "finance" / "budget.txt"
    assert not _read_as(CAROL, budget)  # carol (hr) has no finance rule
    in_shared = arranged.root / "shared" / "budget.txt"
    _link_as(CAROL, budget, in_shared)
    assert _read_as(CAROL, arranged.root / "shared" / "menu.txt")  # shared/** is hers
    assert not _read_as(CAROL, in_shared)  # but the link is still finance's file
    a = _the_access(collector, in_shared)
    assert (a.uid, a.decision, a.home) == (CAROL, events_pb2.DECISION_DENY, str(budget))
    assert a.rule == ""  # no rule of shared/** was used
    assert _read_as(BOB, in_shared)  # bob's finance rule follows the file


def test_a_bind_mount_in_the_attackers_namespace_changes_nothing(
    arranged: Site, guarded: Guarded
) -> None:
    _, collector = guarded
    root = arranged.root
    budget = root / "finance" / "budget.txt"
    script = f"mount --bind {root}/finance {root}/shared && exec cat {root}/shared/budget.txt"
    done = _run_as(CAROL, "/usr/bin/unshare", "-Urm", "/bin/sh", "-c", script)
    assert done.returncode != 0 and b"Operation not permitted" in done.stderr, done
    wait_for(lambda: any(a.home == str(budget) for a in _accesses(collector)))  # type: ignore[arg-type]
    [a] = [a for a in _accesses(collector) if a.home == str(budget)]  # type: ignore[arg-type]
    assert (a.uid, a.decision) == (CAROL, events_pb2.DECISION_DENY)


def test_a_labelled_file_moved_out_while_the_agent_was_down_is_guarded_again(
    arranged: Site, guarded: Guarded
) -> None:
    agent, collector = guarded
    s2 = arranged.root / "s2.txt"
    assert not _read_as(BOB, s2)  # seen (and kept) labelled
    config = agent.agent.config
    agent.stop()
    moved = arranged.base / "outside" / "s2-moved.txt"
    s2.rename(moved)
    again = AgentThread(config)
    try:
        wait_for(
            lambda: any(s.name == "files" and s.health().state == "ok" for s in again.agent.sensors)
        )
        assert not _read_as(BOB, moved)  # no directory mark sees it: its inode mark does
        a = _the_access(collector, moved)
        assert (a.decision, a.home) == (events_pb2.DECISION_DENY, str(s2))
    finally:
        again.stop()


def test_a_label_copied_from_another_file_is_not_believed(arranged: Site, guarded: Guarded) -> None:
    """Copying a 秘密 file's label attributes, seal included, onto the 机密 file: the
    owner cannot (the agent owns the file), and a writer who can gets a seal that is
    not this file's -- fail-closed and recorded HIGH, never 秘密."""
    _, collector = guarded
    s1, s2 = arranged.root / "s1.txt", arranged.root / "s2.txt"
    copy = (
        f"import os\nfor n in os.listxattr({str(s1)!r}):\n"
        f"    n.startswith('user.baomi.') and os.setxattr({str(s2)!r}, n, "
        f"os.getxattr({str(s1)!r}, n))\n"
    )
    refused = _run_as(BOB, "/usr/bin/python3", "-c", copy)
    assert refused.returncode != 0 and b"Permission denied" in refused.stderr, refused
    wait_for(  # the refused copy is on record
        lambda: any(
            a.uid == BOB and a.path == str(s2) and "setxattr EACCES" in a.reason
            for a in _accesses(collector)  # type: ignore[arg-type]
        )
    )
    test_file_guard._as_root_elsewhere(copy)  # the writer who may
    assert os.getxattr(s2, "user.baomi.level") == "秘密".encode()
    assert not _read_as(BOB, s2)
    a = _the_access(collector, s2)
    assert a.decision == events_pb2.DECISION_DENY and a.level == 3
    assert "seal does not match" in a.reason
    wait_for(lambda: bool(test_file_guard._label_changes(collector, s2)))  # type: ignore[arg-type]
    changes = test_file_guard._label_changes(collector, s2)  # type: ignore[arg-type]
    assert all(c.severity == events_pb2.SEVERITY_HIGH for c in changes)
