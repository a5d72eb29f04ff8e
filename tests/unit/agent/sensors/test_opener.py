"""The opening process as the policy sees it: real processes, looked at through /proc."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from baomi.policy.apps import ApprovedApps, ContentHashes, Interpreters
from baomi.policy.subjects import Subjects

from agent.sensors.files import opener as opener_module
from agent.sensors.files.opener import Openers

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (/proc/PID/map_files)"),
]

LOADER = "/lib64/ld-linux-x86-64.so.2"
LIBM = "/lib/x86_64-linux-gnu/libm.so.6"


@pytest.fixture
def viewer(tmp_path: Path) -> Path:
    (tmp_path / "bin").mkdir()
    path = tmp_path / "bin" / "viewer"
    shutil.copy("/usr/bin/cat", path)
    return path


@pytest.fixture
def openers(viewer: Path) -> Openers:
    subjects = Subjects.parse(
        f'[people.alice]\nuid = 2001\ndepartment = "x"\napps = {{ "绝密" = ["{viewer}"] }}\n'
    )
    hashes = ContentHashes()
    interpreters = Interpreters.scan()
    apps = ApprovedApps.resolve(subjects, hashes=hashes, interpreters=interpreters)
    return Openers(apps, hashes=hashes, interpreters=interpreters)


class Running:
    """Processes started by a test, each waiting on its stdin; killed by pid at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *argv: str, ran: str, env: dict[str, str] | None = None) -> int:
        """Start ``argv``; returns its pid once its exe link reads ``ran``."""
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=env if env is not None else {"PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        self.procs.append(proc)
        _wait_until(lambda: _exe(proc.pid) == os.path.realpath(ran) and _exec_done(proc.pid))
        return proc.pid

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def running() -> Iterator[Running]:
    r = Running()
    try:
        yield r
    finally:
        r.stop()


def _exe(pid: int) -> str:
    try:
        return str(Path(f"/proc/{pid}/exe").readlink())
    except OSError:
        return ""


def _exec_done(pid: int) -> bool:
    """The exec finished: its environment's address is set (0 until then)."""
    return opener_module._stat_fields(pid)[1] != 0


def _wait_until(cond: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_approved_program_is_given_by_its_listed_path(
    openers: Openers, running: Running, viewer: Path
) -> None:
    pid = running.start(str(viewer), ran=str(viewer))
    seen = openers.lookup(pid, _exe(pid))
    assert (seen.exe, seen.interpreter) == (str(viewer), "")
    assert openers.lookup(pid, _exe(pid)) == seen  # from the cache


def test_another_program_is_unapproved(openers: Openers, running: Running) -> None:
    pid = running.start("/usr/bin/cat", ran="/usr/bin/cat")
    assert openers.lookup(pid, "/usr/bin/cat").exe == "(unapproved: /usr/bin/cat)"


def test_the_path_shown_does_not_matter(openers: Openers, running: Running, viewer: Path) -> None:
    # What a bind mount in a namespace would show: the approved path, another program.
    pid = running.start("/usr/bin/cat", ran="/usr/bin/cat")
    assert openers.lookup(pid, str(viewer)).exe == f"(unapproved: {viewer})"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LD_PRELOAD", LIBM),
        ("LD_LIBRARY_PATH", "/tmp"),
        ("LD_AUDIT", "/nonexistent.so"),
        ("GCONV_PATH", "/tmp"),
    ],
)
def test_a_code_loading_environment_taints(
    openers: Openers, running: Running, viewer: Path, variable: str, value: str
) -> None:
    pid = running.start(str(viewer), ran=str(viewer), env={variable: value})
    seen = openers.lookup(pid, str(viewer))
    assert seen.exe == f"(unapproved: {viewer}; {variable} in its environment)"


def test_code_mapped_from_a_users_file_taints(
    openers: Openers, running: Running, viewer: Path, tmp_path: Path
) -> None:
    lib = tmp_path / "libx.so"
    shutil.copy(LIBM, lib)
    os.chown(lib, 2002, 2002)
    pid = running.start(str(viewer), ran=str(viewer), env={"LD_PRELOAD": str(lib)})
    _wait_until(lambda: str(lib) in Path(f"/proc/{pid}/maps").read_text())  # loaded
    taint = opener_module._mapped_code_taint(pid, Path(f"/proc/{pid}/exe").stat())
    assert taint == f"runs code from {lib} (owner uid 2002, mode {lib.stat().st_mode & 0o777:o})"
    clean = running.start(str(viewer), ran=str(viewer))
    assert opener_module._mapped_code_taint(clean, Path(f"/proc/{clean}/exe").stat()) == ""


def test_a_tracer_taints_while_attached(openers: Openers, running: Running, viewer: Path) -> None:
    pid = running.start(str(viewer), ran=str(viewer))
    assert openers.lookup(pid, str(viewer)).exe == str(viewer)  # cached as clean
    strace = subprocess.Popen(
        ["/usr/bin/strace", "-o", "/dev/null", "-p", str(pid)], stderr=subprocess.DEVNULL
    )
    try:
        _wait_until(lambda: opener_module._tracer(pid) == strace.pid)
        assert openers.lookup(pid, str(viewer)).exe == (
            f"(unapproved: {viewer}; traced by pid {strace.pid})"
        )
    finally:
        strace.terminate()
        strace.wait(timeout=10)
    _wait_until(lambda: opener_module._tracer(pid) == 0)
    assert openers.lookup(pid, str(viewer)).exe == str(viewer)


def test_the_loader_run_directly(openers: Openers, running: Running, viewer: Path) -> None:
    pid = running.start(LOADER, str(viewer), ran=LOADER)
    seen = openers.lookup(pid, _exe(pid))
    assert seen.exe == f"(unapproved: {_exe(pid)}; the dynamic loader run directly)"
    assert seen.interpreter.startswith("ld-linux")


def test_an_interpreter_is_named(openers: Openers, running: Running) -> None:
    pid = running.start("/bin/sh", "-c", "read x", ran="/bin/sh")
    seen = openers.lookup(pid, _exe(pid))
    assert seen.interpreter == "dash"
    assert seen.exe == f"(unapproved: {_exe(pid)})"


def test_an_exec_is_seen(openers: Openers, running: Running, viewer: Path) -> None:
    # The same process, first a shell, then (exec) the approved program.
    pid = running.start("/bin/sh", "-c", f"read x; exec {viewer}", ran="/bin/sh")
    assert openers.lookup(pid, _exe(pid)).interpreter == "dash"
    proc = running.procs[-1]
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.flush()
    _wait_until(lambda: _exe(pid) == str(viewer) and _exec_done(pid))
    seen = openers.lookup(pid, _exe(pid))
    assert (seen.exe, seen.interpreter) == (str(viewer), "")


def test_a_preload_file_in_the_processs_own_root_taints(
    openers: Openers, running: Running, viewer: Path
) -> None:
    # A mount namespace of its own, with an /etc whose ld.so.preload is not empty.
    script = f"mount -t tmpfs none /etc && echo ' ' > /etc/ld.so.preload && exec {viewer}"
    pid = running.start("/usr/bin/unshare", "-m", "/bin/sh", "-c", script, ran=str(viewer))
    seen = openers.lookup(pid, str(viewer))
    assert seen.exe == f"(unapproved: {viewer}; /etc/ld.so.preload is not empty)"


def test_a_vanished_process(openers: Openers) -> None:
    seen = openers.lookup(2**22 + 1, "/usr/bin/x")
    assert seen.exe == "(unapproved: /usr/bin/x; its program cannot be looked up)"
    assert seen.interpreter == "?"  # unknown: its reads are decided as executes too


def test_proc_files_are_read_to_their_end(running: Running) -> None:
    # A read of maps gives one page at a time: a library past it must not be missed.
    code = "import ssl, sqlite3, ctypes, decimal, sys; print(flush=True); sys.stdin.read()"
    pid = running.start("/usr/bin/python3", "-c", code, ran="/usr/bin/python3")
    proc = running.procs[-1]
    proc.stdout.readline()  # type: ignore[union-attr]  # imported: its maps stay put
    whole = Path(f"/proc/{pid}/maps").read_bytes()
    assert len(whole) > 2 * 4096  # pages: what one read() gives
    assert opener_module._read(f"/proc/{pid}/maps", 1 << 24) == whole
    with pytest.raises(OSError, match="more than 100 bytes"):
        opener_module._read(f"/proc/{pid}/maps", 100)


def test_a_tracer_of_another_thread_is_seen(running: Running) -> None:
    code = (
        "import sys, threading, time; threading.Thread(target=time.sleep, args=(60,)).start();"
        " print(flush=True); sys.stdin.read()"
    )
    pid = running.start("/usr/bin/python3", "-c", code, ran="/usr/bin/python3")
    running.procs[-1].stdout.readline()  # type: ignore[union-attr]  # its thread runs
    tid = next(t.name for t in Path(f"/proc/{pid}/task").iterdir() if int(t.name) != pid)
    strace = subprocess.Popen(
        ["/usr/bin/strace", "-o", "/dev/null", "-p", tid], stderr=subprocess.DEVNULL
    )
    try:
        _wait_until(lambda: opener_module._tracer(pid) == strace.pid)
        main = Path(f"/proc/{pid}/status").read_text()
        assert "TracerPid:\t0\n" in main  # the main thread is not traced
    finally:
        strace.terminate()
        strace.wait(timeout=10)


def test_another_user_namespace_taints(openers: Openers, running: Running, viewer: Path) -> None:
    # There the process may point its exe link at any file (prctl PR_SET_MM_MAP).
    pid = running.start("/usr/bin/unshare", "-Ur", str(viewer), ran=str(viewer))
    assert openers.lookup(pid, str(viewer)).exe == (
        f"(unapproved: {viewer}; it runs in another user namespace, where its exe link can "
        "be reset)"
    )
