"""Labels follow content (issue 15, Build item 4), end to end with a real agent and
collector: what a process that read a labelled file writes is labelled at the source's
level and sealed; what it writes into a place the export rules name is denied (or,
where the kernel cannot be asked any more, recorded) as ``export``.

The copies are made in ``out/``, an unlabelled directory of the protected tree where
staff may create and write files; the export place is a tmpfs mounted in the test's own
directory (the export guard marks only that mount). Copies outside the trees are made
on an ext4 filesystem of the test's own, loop-mounted, which the agent watches whole.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from baomi.labels import Label, load_label_key, read_label, set_label
from baomi.v1 import events_pb2

from tests.integration import test_file_guard
from tests.integration.test_agent import AgentThread, host_events, wait_for
from tests.integration.test_file_guard import RunningCollector, Site, run_as, running_guard

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (fanotify, setuid children)"),
]

site = test_file_guard.site
ALICE = 2001  # 核心, finance: reads s2.txt (机密, any cleared subject)
BOB = 2002  # 一般: may not read a 机密 file
Guarded = tuple[AgentThread, RunningCollector]
CHECKOUT = Path(__file__).resolve().parents[2]


@pytest.fixture
def follow(site: Site, tmp_path: Path) -> Iterator[tuple[Site, Guarded]]:
    """The site with ``out/`` writable by staff and ``export/`` (a tmpfs) an export
    place no staff may export to, guarded by a running agent."""
    out = site.root / "out"
    out.mkdir(mode=0o755)
    export = site.base / "export"
    export.mkdir(mode=0o755)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=1777", "baomi-export", str(export)],
        check=True,
        timeout=10,
    )
    try:
        site.write_policy(
            extra=(
                f"p, role:staff, {out}, delete, allow\n"
                f"p, role:staff, {out}/**, write, allow\n"
                f"p, role:staff, {export}/**, export, deny\n"
            )
        )
        with running_guard(site, tmp_path) as both:
            wait_for(lambda: "export places watched: " + str(export) in _health(both[0]))
            yield site, both
    finally:
        subprocess.run(["umount", "-l", str(export)], check=False, timeout=10)


def _health(agent: AgentThread) -> str:
    files = next(s for s in agent.agent.sensors if s.name == "files")
    return str(files._export.health().detail)


def _label(path: Path, site: Site) -> Label | None:
    try:
        return read_label(path, site.key)
    except OSError:
        return None


def _derived(path: Path, site: Site) -> Label:
    """The label ``path`` gets within a few seconds (the change path is asynchronous)."""
    wait_for(lambda: (lbl := _label(path, site)) is not None and lbl.level == 2)
    label = _label(path, site)
    assert label is not None
    return label


def _acl(path: Path) -> str:
    return subprocess.run(
        ["getfacl", "-n", "-p", str(path)], capture_output=True, text=True, timeout=10, check=True
    ).stdout


def _events(collector: RunningCollector, agent: AgentThread) -> list[events_pb2.Event]:
    assert agent.agent.recorder.flush()
    return host_events(collector.store, "ws-01")


def test_copies_by_cp_by_redirect_and_by_a_child_are_labelled_and_sealed(
    follow: tuple[Site, Guarded],
) -> None:
    site, (agent, collector) = follow
    src, out = site.root / "s2.txt", site.root / "out"
    home = str(src)  # s2.txt has no label id: its home names it

    copied = run_as(ALICE, "cp", str(src), str(out / "cp.txt"))
    assert copied.returncode == 0, copied.stderr
    # a second cp's read may be answered with the first one's answer, in C
    again = run_as(ALICE, "cp", str(src), str(out / "again.txt"))
    assert again.returncode == 0, again.stderr
    redirected = run_as(ALICE, "/bin/sh", "-c", f"cat {src} > {out}/redirect.txt")
    assert redirected.returncode == 0, redirected.stderr
    # The reader writes nothing itself: its child (a shell) does, after the read.
    child = (
        "import subprocess, sys; open(sys.argv[1]).read(); "
        "subprocess.run(['/bin/sh', '-c', 'echo summary > ' + sys.argv[2]], check=True, timeout=10)"
    )
    by_child = run_as(ALICE, "/usr/bin/python3", "-c", child, str(src), str(out / "child.txt"))
    assert by_child.returncode == 0, by_child.stderr

    # A cat run before makes the answer for s2.txt a shared one: the next cat, vouched
    # for at its first file (s1.txt, 秘密), is answered for s2.txt (机密) in C; that read
    # is learnt at the next fold, and the file it wrote is raised to 机密 then.
    assert site.open_as(ALICE, "s2.txt")
    mixed = run_as(ALICE, "/bin/sh", "-c", f"cat {site.root}/s1.txt {src} > {out}/mixed.txt")
    assert mixed.returncode == 0, mixed.stderr

    for name in ("cp.txt", "again.txt", "redirect.txt", "child.txt"):
        label = _derived(out / name, site)
        assert label.valid, (name, label.problem)
        assert (label.home, label.derived_from) == (str(out / name), home), name
    mixed_label = _derived(out / "mixed.txt", site)
    assert mixed_label.valid and mixed_label.derived_from == home
    assert (out / "cp.txt").read_bytes() == src.read_bytes()  # (the agent's own pid reads)
    # The copies are guarded at 机密: bob (一般) may not read them, nor keep the write
    # right the agent's DAC gave him on redirect.txt while it was unclassified; alice may.
    wait_for(lambda: f"user:{BOB}:" not in _acl(out / "redirect.txt"))
    assert f"user:{ALICE}:rw-" in _acl(out / "redirect.txt")
    assert not site.open_as(BOB, "out/cp.txt")
    assert site.open_as(ALICE, "out/redirect.txt")

    # explain, as an administrator runs it, judges the sealed derived label valid.
    explained = subprocess.run(
        [sys.executable, "-c", "from agent.cli import main; raise SystemExit(main())",
         "--state-dir", str(site.base), "explain", "--policies", str(site.policies),
         "--user", "bob", "--path", str(out / "cp.txt"), "--action", "read"],
        capture_output=True, text=True, timeout=60, check=False, cwd=CHECKOUT,
        env={**os.environ, "PYTHONPATH": f"{CHECKOUT}/protos:{CHECKOUT}"},
    )  # fmt: skip
    assert explained.returncode == 0, explained.stderr
    assert explained.stdout.startswith("DENY  read"), explained.stdout
    assert f"机密 (2); scope any cleared subject; home {out}/cp.txt; derived from {home}" in (
        explained.stdout
    )
    assert "invalid label" not in explained.stdout

    changes = [e.file_change for e in _events(collector, agent) if e.HasField("file_change")]
    derived = {c.path for c in changes if c.change == "derived"}
    made = ("cp.txt", "again.txt", "redirect.txt", "child.txt", "mixed.txt")
    assert derived == {str(out / n) for n in made}
    # mixed.txt first at 秘密 (from s1.txt), then 机密: the highest read wins
    levels = {(c.path, c.level, c.old_path) for c in changes if c.change == "derived"}
    assert {(p, lvl) for p, lvl, _ in levels if lvl == 2} == {(str(out / n), 2) for n in made}


def test_an_unrelated_process_new_file_is_not_labelled(follow: tuple[Site, Guarded]) -> None:
    site, (agent, collector) = follow
    src, out = site.root / "s2.txt", site.root / "out"
    # alice read the source in another process, which has ended
    assert site.open_as(ALICE, "s2.txt")
    made = run_as(ALICE, "/bin/sh", "-c", f"echo mine > {out}/plain.txt")
    assert made.returncode == 0, made.stderr
    # a tainted copy made after it, as a witness that the change path has run by then
    assert run_as(ALICE, "cp", str(src), str(out / "after.txt")).returncode == 0
    _derived(out / "after.txt", site)
    time.sleep(1.5)  # a sweep of the taints, too
    assert _label(out / "plain.txt", site) is None
    changes = [e.file_change for e in _events(collector, agent) if e.HasField("file_change")]
    assert str(out / "plain.txt") not in {c.path for c in changes if c.change == "derived"}


def test_a_tainted_write_to_an_export_place_is_denied_and_recorded(
    follow: tuple[Site, Guarded],
) -> None:
    site, (agent, collector) = follow
    src, export = site.root / "s2.txt", site.base / "export"
    # untainted: the place is an ordinary filesystem
    plain = run_as(ALICE, "/bin/sh", "-c", f"echo hello > {export}/plain.txt")
    assert plain.returncode == 0, plain.stderr
    # cp reads the 机密 source, then opens the copy for writing: refused there
    copied = run_as(ALICE, "cp", str(src), str(export / "copy.txt"))
    assert copied.returncode != 0
    assert b"Operation not permitted" in copied.stderr, copied.stderr
    assert not (export / "copy.txt").exists() or (export / "copy.txt").stat().st_size == 0
    again = run_as(ALICE, "cp", str(src), str(export / "again.txt"))  # a shared answer
    assert again.returncode != 0
    assert b"Operation not permitted" in again.stderr, again.stderr
    # the shell opened the target before cat read the source: not refusable any more,
    # recorded as the export it is
    late = run_as(ALICE, "/bin/sh", "-c", f"cat {src} > {export}/late.txt")
    assert late.returncode == 0, late.stderr

    def exports() -> list[events_pb2.Event]:
        return [
            e
            for e in _events(collector, agent)
            if e.HasField("file_access") and e.file_access.action == "export"
        ]

    wait_for(lambda: len(exports()) >= 3)
    time.sleep(0.5)
    found = {e.file_access.path: e for e in exports()}
    assert set(found) == {str(export / n) for n in ("copy.txt", "again.txt", "late.txt")}
    assert found[str(export / "again.txt")].file_access.decision == events_pb2.DECISION_DENY
    denied = found[str(export / "copy.txt")]
    assert denied.severity == events_pb2.SEVERITY_HIGH
    access = denied.file_access
    assert (access.decision, access.uid, access.user, access.level) == (
        events_pb2.DECISION_DENY,
        ALICE,
        "alice",
        2,
    )
    assert access.rule == f"p, role:staff, {export}/**, export, deny"
    assert access.home == str(src) and access.executable.endswith("/cp")
    assert f"data of {src} (机密)" in access.reason
    late_event = found[str(export / "late.txt")]
    assert late_event.severity == events_pb2.SEVERITY_HIGH
    assert late_event.file_access.decision == events_pb2.DECISION_ALLOW
    assert late_event.file_access.reason.startswith("NOT refused (opened before the read)")


@pytest.fixture
def own_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A fresh ext4 filesystem mounted for this test alone (watched whole)."""
    image, mountpoint = tmp_path / "fs.img", Path(tempfile.mkdtemp(prefix="baomi-fs-"))
    with image.open("wb") as f:
        f.truncate(64 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, timeout=60)
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True, timeout=30)
    try:
        mountpoint.chmod(0o755)
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], check=False, timeout=30).returncode:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False, timeout=30)
        mountpoint.rmdir()


def test_copies_outside_the_trees_on_their_filesystem_are_labelled_and_guarded(
    own_filesystem: Path, tmp_path: Path
) -> None:
    base = own_filesystem
    root, elsewhere = base / "secret", base / "elsewhere"
    root.mkdir(mode=0o755)
    elsewhere.mkdir()
    elsewhere.chmod(0o1777)  # anyone may make files here, as in /tmp
    key = load_label_key(base / "label.key", create=True)
    fs_site = Site(base, root, base / "policies", "/usr/bin/cat", "/usr/bin/cat", key)
    src = root / "s2.txt"
    src.write_text("content of s2.txt\n")
    src.chmod(0o644)
    set_label(src, level="机密", key=key)
    fs_site.write_policy()
    with running_guard(fs_site, tmp_path, follow_filesystems=True) as (agent, collector):
        assert run_as(ALICE, "cp", str(src), str(elsewhere / "copy.txt")).returncode == 0
        redirected = run_as(ALICE, "/bin/sh", "-c", f"cat {src} > {elsewhere}/redirect.txt")
        assert redirected.returncode == 0, redirected.stderr
        for name in ("copy.txt", "redirect.txt"):
            label = _derived(elsewhere / name, fs_site)
            assert (label.valid, label.home, label.derived_from) == (
                True,
                str(elsewhere / name),
                str(src),
            )
        # outside every directory mark, the copy is guarded by its own inode mark
        done = run_as(BOB, "cat", str(elsewhere / "copy.txt"))
        assert done.returncode != 0 and b"Operation not permitted" in done.stderr
        # an unrelated process's file there stays unlabelled
        assert run_as(ALICE, "/bin/sh", "-c", f"echo x > {elsewhere}/plain.txt").returncode == 0
        time.sleep(1.5)
        assert _label(elsewhere / "plain.txt", fs_site) is None
        denied = [
            e.file_access
            for e in _events(collector, agent)
            if e.HasField("file_access") and e.file_access.path == str(elsewhere / "copy.txt")
        ]
        assert any(a.uid == BOB and a.decision == events_pb2.DECISION_DENY for a in denied)


def test_a_stick_mounted_later_in_an_export_place_is_watched_too(
    follow: tuple[Site, Guarded],
) -> None:
    site, (agent, _collector) = follow
    stick = site.base / "export" / "stick"
    stick.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=1777", "baomi-stick", str(stick)],
        check=True,
        timeout=10,
    )
    try:
        wait_for(lambda: str(stick) in _health(agent))  # found again within a second
        copied = run_as(ALICE, "cp", str(site.root / "s2.txt"), str(stick / "copy.txt"))
        assert copied.returncode != 0
        assert b"Operation not permitted" in copied.stderr, copied.stderr
    finally:
        subprocess.run(["umount", "-l", str(stick)], check=False, timeout=10)
