"""The file guard's approved programs tried as an attacker with an ordinary account would.

alice (核心) may read 绝密 files with one approved program, a copy of ``cat`` at a path
of the test's own. Each attack runs as her (or bob), through a real guard: another
program bind-mounted over the approved path in a user and mount namespace of her own,
the approved program with a preloaded library (one that also wipes its trace from the
environment), run by the dynamic loader or under a tracer; and a shell or the loader
reading a file an ``execute, deny`` rule covers. Each is denied and recorded once,
naming why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from baomi.v1 import events_pb2

from tests.integration import test_file_guard
from tests.integration.test_agent import AgentThread, wait_for
from tests.integration.test_file_guard import Site, _accesses

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (fanotify, setuid children)"),
]

site = test_file_guard.site
guarded = test_file_guard.guarded

ALICE, BOB = 2001, 2002  # alice: 核心, the viewer approved for 绝密; bob: 一般
LOADER = "/lib64/ld-linux-x86-64.so.2"
LIBM = "/lib/x86_64-linux-gnu/libm.so.6"
SHELL = os.path.realpath("/bin/sh")  # dash on Debian
Guarded = tuple[AgentThread, object]

# A preloaded library that, once loaded, wipes LD_PRELOAD from the environment the
# kernel shows in /proc/PID/environ: only the code it mapped gives it away.
EVIL_C = r"""
#include <string.h>
#include <unistd.h>
extern char **environ;
__attribute__((constructor)) static void evil(void) {
    for (char **e = environ; *e; e++)
        if (strncmp(*e, "LD_PRELOAD=", 11) == 0)
            memset(*e, 'X', strlen(*e));
    write(2, "evil ran\n", 9);
}
"""


def _run_as(uid: int, *argv: str) -> subprocess.CompletedProcess[bytes]:
    return test_file_guard.run_as(
        uid, *argv, timeout=20, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    )


@pytest.fixture
def arranged(site: Site) -> Site:
    """A script and a program under the root that no one may execute; arranged before
    the agent starts (``guarded``)."""
    root = site.root
    script = root / "run.sh"
    script.write_text("echo ran-the-script\n")
    tool = root / "tool"
    shutil.copy("/usr/bin/echo", tool)
    for p in (script, tool):
        p.chmod(0o755)
    (site.policies / "policy.csv").write_text(
        f"p, role:staff, {root}/**, read, allow\n"
        f"p, role:staff, {root}/run.sh, execute, deny\n"
        f"p, role:staff, {root}/tool, execute, deny\n"
    )
    return site


def _the_access(collector: object, path: Path, uid: int) -> events_pb2.FileAccess:
    """The one access to ``path`` by ``uid`` recorded (waits for it, then checks it is one)."""

    def mine() -> list[events_pb2.FileAccess]:
        return [
            a
            for a in _accesses(collector)  # type: ignore[arg-type]
            if a.path == str(path) and a.uid == uid
        ]

    wait_for(lambda: bool(mine()))
    found = mine()
    assert len(found) == 1, found
    return found[0]


def _denied(done: subprocess.CompletedProcess[bytes]) -> bool:
    return done.returncode != 0 and b"Operation not permitted" in done.stderr


def test_the_approved_program_reads_top_secret(arranged: Site, guarded: Guarded) -> None:
    _, collector = guarded
    top = arranged.root / "top.txt"
    done = _run_as(ALICE, arranged.viewer, str(top))
    assert done.returncode == 0 and done.stdout == b"content of top.txt\n", done.stderr
    a = _the_access(collector, top, ALICE)
    assert (a.decision, a.executable) == (events_pb2.DECISION_ALLOW, arranged.viewer)


def test_another_program_bind_mounted_over_the_approved_path(
    arranged: Site, guarded: Guarded
) -> None:
    _, collector = guarded
    top = arranged.root / "top.txt"
    script = f"mount --bind /usr/bin/cat {arranged.viewer} && exec {arranged.viewer} {top}"
    done = _run_as(ALICE, "unshare", "-Urm", "/bin/sh", "-c", script)
    assert _denied(done), done.stderr
    a = _the_access(collector, top, ALICE)
    assert a.decision == events_pb2.DECISION_DENY
    assert a.executable == arranged.viewer  # the path the process shows: the approved one
    assert f"application (unapproved: {arranged.viewer}) not approved for 绝密" in a.reason


def test_a_preloaded_library_in_the_approved_program(arranged: Site, guarded: Guarded) -> None:
    _, collector = guarded
    top = arranged.root / "top.txt"
    done = _run_as(ALICE, "env", f"LD_PRELOAD={LIBM}", arranged.viewer, str(top))
    assert _denied(done), done.stderr
    a = _the_access(collector, top, ALICE)
    assert a.decision == events_pb2.DECISION_DENY
    assert f"(unapproved: {arranged.viewer}; LD_PRELOAD in its environment)" in a.reason


def test_a_preloaded_library_that_hides_itself(
    arranged: Site, guarded: Guarded, tmp_path: Path
) -> None:
    _, collector = guarded
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build the preloaded library")
    source = tmp_path / "evil.c"
    source.write_text(EVIL_C)
    evil = arranged.base / "evil.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-o", str(evil), str(source)], check=True, timeout=60
    )
    os.chown(evil, ALICE, ALICE)  # hers, as one she built would be
    top = arranged.root / "top.txt"
    done = _run_as(ALICE, "env", f"LD_PRELOAD={evil}", arranged.viewer, str(top))
    assert b"evil ran" in done.stderr  # her code ran inside the approved program
    assert _denied(done), done.stderr
    a = _the_access(collector, top, ALICE)
    assert a.decision == events_pb2.DECISION_DENY
    assert f"runs code from {evil} (owner uid {ALICE}" in a.reason


def test_the_approved_program_under_a_tracer(arranged: Site, guarded: Guarded) -> None:
    _, collector = guarded
    top = arranged.root / "top.txt"
    done = _run_as(ALICE, "strace", "-o", "/dev/null", arranged.viewer, str(top))
    assert _denied(done), done.stderr
    a = _the_access(collector, top, ALICE)
    assert a.decision == events_pb2.DECISION_DENY
    assert f"(unapproved: {arranged.viewer}; traced by pid " in a.reason


def test_the_approved_program_in_a_user_namespace(arranged: Site, guarded: Guarded) -> None:
    # There it could have pointed its exe link at the approved file (PR_SET_MM_MAP).
    _, collector = guarded
    top = arranged.root / "top.txt"
    done = _run_as(ALICE, "unshare", "-Ur", arranged.viewer, str(top))
    assert _denied(done), done.stderr
    a = _the_access(collector, top, ALICE)
    assert a.decision == events_pb2.DECISION_DENY
    assert "it runs in another user namespace" in a.reason


def test_the_loader_running_the_approved_program(arranged: Site, guarded: Guarded) -> None:
    _, collector = guarded
    top = arranged.root / "top.txt"
    done = _run_as(ALICE, LOADER, arranged.viewer, str(top))
    assert _denied(done), done.stderr
    a = _the_access(collector, top, ALICE)
    assert a.decision == events_pb2.DECISION_DENY
    assert "the dynamic loader run directly" in a.reason
    assert "not approved for 绝密" in a.reason


def test_a_shell_reading_a_script_no_one_may_execute(arranged: Site, guarded: Guarded) -> None:
    _, collector = guarded
    script = arranged.root / "run.sh"
    assert _denied(_run_as(BOB, str(script)))  # the kernel's exec: execute, denied
    done = _run_as(BOB, "/bin/sh", str(script))
    assert done.returncode != 0 and b"ran-the-script" not in done.stdout
    assert b"Operation not permitted" in done.stderr

    def by_sh() -> list[events_pb2.FileAccess]:
        return [
            a
            for a in _accesses(collector)  # type: ignore[arg-type]
            if a.path == str(script) and a.action == "read" and a.executable == SHELL
        ]

    wait_for(lambda: bool(by_sh()))
    assert len(by_sh()) == 1, by_sh()
    a = by_sh()[0]
    assert a.decision == events_pb2.DECISION_DENY
    assert a.rule == f"p, role:staff, {script}, execute, deny"
    shell = Path(SHELL).name
    assert a.reason.startswith(f"read by {shell}, which runs what it reads: denied by rule")
    # A program that only reads it still may: the rule is about running it.
    done = _run_as(BOB, "/usr/bin/cat", str(script))
    assert done.returncode == 0 and done.stdout == b"echo ran-the-script\n"


def test_the_loader_reading_a_program_no_one_may_execute(arranged: Site, guarded: Guarded) -> None:
    _, collector = guarded
    tool = arranged.root / "tool"
    done = _run_as(BOB, LOADER, str(tool), "hello")
    assert done.returncode != 0 and b"hello" not in done.stdout, done
    a = _the_access(collector, tool, BOB)
    assert (a.decision, a.action) == (events_pb2.DECISION_DENY, "read")
    assert a.rule == f"p, role:staff, {tool}, execute, deny"
    assert "ld-linux-x86-64.so.2, which runs what it reads" in a.reason


def test_the_approved_program_linked_into_the_tree_is_decided_by_its_rules(
    arranged: Site, guarded: Guarded
) -> None:
    """Runs of approved programs are only watched -- outside the trees. The same file
    reached inside a tree, where an execute rule denies it, is decided and denied."""
    _, collector = guarded
    tool = arranged.root / "tool"
    tool.unlink()
    os.link(arranged.viewer, tool)  # as root: the approved program under a denied name
    done = _run_as(ALICE, str(tool), str(arranged.root / "s1.txt"))
    assert _denied(done), done
    a = _the_access(collector, tool, ALICE)
    assert (a.decision, a.action) == (events_pb2.DECISION_DENY, "execute")
    assert a.rule == f"p, role:staff, {tool}, execute, deny"


def test_an_answer_shared_by_the_approved_program_reaches_no_impostor(
    arranged: Site, guarded: Guarded
) -> None:
    """The approved program's answers are shared with its other plain processes (the
    guard's C cache), never with one of the same path that is preloaded, traced or
    another file mounted over it: each of those is decided and denied."""
    _, collector = guarded
    top, s1 = arranged.root / "top.txt", arranged.root / "s1.txt"
    for _ in range(2):  # the second process is answered from the shared answers
        done = _run_as(ALICE, arranged.viewer, str(top), str(s1))
        assert done.returncode == 0, done.stderr
    impostors = [
        ["env", f"LD_PRELOAD={LIBM}", arranged.viewer, str(s1), str(top)],
        ["strace", "-o", "/dev/null", arranged.viewer, str(s1), str(top)],
        [
            "unshare",
            "-Urm",
            "/bin/sh",
            "-c",
            f"mount --bind /usr/bin/cat {arranged.viewer} && exec {arranged.viewer} {s1} {top}",
        ],
    ]
    for argv in impostors:
        if shutil.which(argv[0]) is None:
            continue
        assert _denied(_run_as(ALICE, *argv)), argv
    wait_for(
        lambda: (
            sum(
                a.decision == events_pb2.DECISION_DENY and a.path == str(top)
                for a in _accesses(collector)  # type: ignore[arg-type]
            )
            >= sum(shutil.which(argv[0]) is not None for argv in impostors)
        )
    )


VIEWER_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
/* viewer FILE [LIBRARY | -]: print FILE; with LIBRARY, run itself again in the same
 * process with LIBRARY preloaded, to print FILE once more; with -, print it again
 * after a line on stdin. */
static int show(const char *path)
{
	char buf[256];
	int fd = open(path, O_RDONLY);
	if (fd < 0) {
		perror(path);
		return 1;
	}
	ssize_t n = read(fd, buf, sizeof(buf));
	if (n > 0)
		fwrite(buf, 1, (size_t)n, stdout);
	fflush(stdout);
	close(fd);
	return 0;
}
int main(int argc, char **argv)
{
	char line[8];
	if (argc < 2 || show(argv[1]))
		return 1;
	if (argc < 3)
		return 0;
	if (strcmp(argv[2], "-") == 0)
		return read(0, line, sizeof(line)) > 0 ? show(argv[1]) : 1;
	setenv("LD_PRELOAD", argv[2], 1);
	char *again[] = { argv[0], argv[1], NULL };
	execv("/proc/self/exe", again);
	perror("exec");
	return 2;
}
"""


@pytest.fixture
def reexecing(arranged: Site, tmp_path: Path) -> Site:
    """The approved viewer replaced, before the agent starts, by a program that can run
    itself again in the same process with a library preloaded, or read its file again
    after a pause."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build the viewer")
    source = tmp_path / "viewer.c"
    source.write_text(VIEWER_C)
    subprocess.run(["gcc", "-O2", "-o", arranged.viewer, str(source)], check=True, timeout=60)
    return arranged


def test_the_approved_program_run_again_with_a_preload_in_the_same_process(
    reexecing: Site, guarded: Guarded
) -> None:
    """The guard keeps answers per process; running the approved program again in the
    same process (execve keeps the pid) with a library preloaded ends them: the second
    image is decided afresh, tainted, and denied."""
    _, collector = guarded
    top = reexecing.root / "top.txt"
    done = _run_as(ALICE, reexecing.viewer, str(top), LIBM)
    assert done.stdout == b"content of top.txt\n"  # printed once, by the clean image
    assert _denied(done), done.stderr
    wait_for(
        lambda: any(
            a.path == str(top) and a.decision == events_pb2.DECISION_DENY
            for a in _accesses(collector)  # type: ignore[arg-type]
        )
    )
    [denied] = [
        a
        for a in _accesses(collector)  # type: ignore[arg-type]
        if a.path == str(top) and a.decision == events_pb2.DECISION_DENY
    ]
    assert "LD_PRELOAD in its environment" in denied.reason


def _tracer_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("TracerPid:", 1)[1].split()[0])


def test_a_tracer_attached_after_the_first_read_is_not_let_through(
    reexecing: Site, guarded: Guarded
) -> None:
    """The guard answers an approved process's repeats itself, in C. A tracer that
    attaches between two reads (and could then make the process read for it) ends
    those answers: the second read is decided afresh, traced, and denied."""
    if shutil.which("strace") is None:
        pytest.skip("needs strace to attach to the viewer")
    _, collector = guarded
    top = reexecing.root / "top.txt"
    setpriv = ["setpriv", f"--reuid={ALICE}", f"--regid={ALICE}", "--clear-groups"]
    viewer = subprocess.Popen(
        [*setpriv, reexecing.viewer, str(top), "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    tracer = None
    try:
        assert viewer.stdout is not None and viewer.stdin is not None
        assert viewer.stdout.readline() == b"content of top.txt\n"
        tracer = subprocess.Popen(
            [*setpriv, "strace", "-o", "/dev/null", "-p", str(viewer.pid)],
            stderr=subprocess.PIPE,
            text=True,
        )
        # strace says so once PTRACE_SEIZE has returned (the kernel told the attach).
        assert tracer.stderr is not None and "attached" in tracer.stderr.readline()
        assert _tracer_of(viewer.pid) == tracer.pid
        out, err = viewer.communicate(b"again\n", timeout=20)
    finally:
        viewer.kill()
        viewer.wait(10)
        if tracer is not None:
            tracer.kill()
            tracer.wait(10)
    assert out == b"" and b"Operation not permitted" in err, (out, err)
    wait_for(
        lambda: any(
            a.path == str(top) and a.decision == events_pb2.DECISION_DENY
            for a in _accesses(collector)  # type: ignore[arg-type]
        )
    )
    mine = [a for a in _accesses(collector) if a.path == str(top)]  # type: ignore[arg-type]
    assert sorted(a.decision for a in mine) == [
        events_pb2.DECISION_ALLOW,
        events_pb2.DECISION_DENY,
    ], mine
    [denied] = [a for a in mine if a.decision == events_pb2.DECISION_DENY]
    assert f"(unapproved: {reexecing.viewer}; traced by pid {tracer.pid})" in denied.reason


def _next_pid_will_be(pid: int) -> None:
    """Make the kernel give ``pid`` to the next process it starts (if still free then):
    its last pid handed out is set just before (CAP_SYS_ADMIN; checkpoint/restore)."""
    Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))


def test_a_process_given_the_pid_of_a_gone_approved_one_gets_none_of_its_answers(
    arranged: Site, guarded: Guarded
) -> None:
    """The approved program's answers are kept by pid for its next opens. Once it is
    gone, alice's next process given the same pid -- the same program, preloaded -- is
    decided afresh and denied: nothing kept for the pid reaches it. (Three things each
    see to it: the exec of the approved program, the exec told by the proc connector
    and the kept /proc handle of the gone process; with all three ignored the impostor
    reads the file, so this test fails.)"""
    _, collector = guarded
    top = arranged.root / "top.txt"
    argv = ["setpriv", f"--reuid={ALICE}", f"--regid={ALICE}", "--clear-groups"]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    for _ in range(50):  # another process on the machine may take the pid first: again
        first = subprocess.Popen(
            [*argv, arranged.viewer, str(top)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        out, err = first.communicate(timeout=20)
        assert first.returncode == 0 and out == b"content of top.txt\n", err
        pid = first.pid
        _next_pid_will_be(pid)  # at once: before the guard's next fold prunes the gone
        impostor = subprocess.Popen(
            [*argv, "env", f"LD_PRELOAD={LIBM}", arranged.viewer, str(top)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        out, err = impostor.communicate(timeout=20)
        if impostor.pid == pid:
            break
    else:
        pytest.skip("the kernel never gave the gone process's pid again")
    assert impostor.returncode != 0 and b"Operation not permitted" in err, (out, err)
    wait_for(
        lambda: any(
            a.pid == pid and a.decision == events_pb2.DECISION_DENY for a in _accesses(collector)
        )
    )
    (denied,) = [
        a for a in _accesses(collector) if a.pid == pid and a.decision == events_pb2.DECISION_DENY
    ]
    assert "LD_PRELOAD in its environment" in denied.reason
