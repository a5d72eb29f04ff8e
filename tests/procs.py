"""The real CLIs as subprocesses: ``baomi-collector`` and ``baomi-agent``, started, waited
for, stopped and killed by pid.

Every process belongs to a ``Processes`` group, which kills whatever still runs when the
group closes (use it as a context manager in a fixture, so this happens when a test
fails too). Every wait has a deadline; output goes to log files under the group's
directory, never to pipes that could fill up and stall a daemon.

A typical fixture::

    @pytest.fixture
    def procs(tmp_path: Path) -> Iterator[Processes]:
        with Processes(tmp_path / "logs") as group:
            yield group
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

CLI_TIMEOUT_S = 60.0  # seconds a one-shot CLI command (pki, token, enroll, audit) may take
START_TIMEOUT_S = 30.0  # seconds a daemon may take to become ready
STOP_TIMEOUT_S = 30.0  # seconds a daemon may take to exit after SIGTERM
KILL_TIMEOUT_S = 10.0  # seconds the kernel may take to reap a SIGKILLed process
POLL_S = 0.05  # seconds between readiness probes
HEALTH_RPC_TIMEOUT_S = 1.0  # seconds per health probe
LOG_TAIL_CHARS = 4000  # how much of a log a failure message quotes


REPO = Path(__file__).resolve().parents[1]


def fresh_python(code: str) -> str:
    """What ``code`` prints, run by a new interpreter that sees this checkout and nothing
    the tests have imported: what a fresh process of the product loads, and keeps."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={"PYTHONPATH": f"{REPO / 'protos'}:{REPO}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S * 2,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


#: A prelude for fresh_python(): defines ``used()``, the bytes SQLite holds now
#: (sqlite3_memory_used), or prints "-1 -1" and ends when Python's sqlite3 is not
#: linked to a shared libsqlite3 (the test then skips).
SQLITE_MEMORY = (
    "import ctypes, sqlite3, sys\n"
    "maps = open('/proc/self/maps').read()\n"
    "lib = next((l.split()[-1] for l in maps.splitlines() if 'libsqlite3' in l), None)\n"
    "if lib is None:\n"
    "    print(-1, -1)\n"
    "    sys.exit(0)\n"
    "used = ctypes.CDLL(lib).sqlite3_memory_used\n"
    "used.restype = ctypes.c_int64\n"
)


def cli(name: str) -> str:
    """The path of an installed console script (``baomi-agent``, ``baomi-collector``)."""
    beside = Path(sys.executable).parent / name  # the venv running the tests
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed; run 'pip install -e .' in the venv")
    return found


def _ports_the_kernel_never_picks() -> tuple[int, int]:
    """Loopback ports below the kernel's ephemeral range (``ip_local_port_range``): no
    outgoing connection and no bind to port 0 is ever given one. A daemon a test
    restarts binds its ports again while thousands of connections may be open; a port
    from the ephemeral range could meanwhile be another connection's local port."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return 10_000, max(10_002, low - 2)


def _free_ports(count: int) -> int:
    """The first of ``count`` adjacent free loopback ports outside the kernel's
    ephemeral range (see _ports_the_kernel_never_picks)."""
    low, high = _ports_the_kernel_never_picks()
    for _ in range(200):
        port = random.randint(low, high - count + 1)
        with contextlib.ExitStack() as stack:
            try:
                for p in range(port, port + count):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", p))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no {count} adjacent free loopback ports found")


def free_port_pair() -> int:
    """A loopback port P such that P and P + 1 are both free (agents, then enrolment)."""
    return _free_ports(2)


def free_port() -> int:
    """A free loopback port."""
    return _free_ports(1)


class CliError(AssertionError):
    """A CLI command failed or overran its deadline; the message carries its output."""


def run_cli(
    args: Sequence[str], *, timeout: float = CLI_TIMEOUT_S, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a one-shot command to completion, with a deadline; raise ``CliError`` if
    ``check`` and it exits non-zero."""
    try:
        result = subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as e:  # run() has already killed it
        raise CliError(f"{' '.join(args)} did not finish within {timeout} s") from e
    if check and result.returncode != 0:
        raise CliError(
            f"{' '.join(args)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


@dataclass
class Proc:
    """One started daemon."""

    name: str
    args: list[str]
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    def alive(self) -> bool:
        """True while the process has not exited."""
        return self.popen.poll() is None

    def output(self, tail: int = LOG_TAIL_CHARS) -> str:
        """The end of everything it wrote (stdout and stderr, all runs under this name)."""
        try:
            return self.log.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL by pid and reap it."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=KILL_TIMEOUT_S)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM by pid and wait for a clean exit; SIGKILL and fail if it overruns."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise CliError(
                f"{self.name} (pid {self.pid}) did not stop within {timeout} s of SIGTERM\n"
                f"{self.output()}"
            ) from None


class Processes:
    """A group of daemons that are all killed, by pid, when the group closes."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Proc] = []

    def start(self, name: str, args: Sequence[str]) -> Proc:
        """Start ``args`` with output appended to ``<log_dir>/<name>.log``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            out.write(f"==== {time.strftime('%H:%M:%S')} start {' '.join(args)}\n".encode())
            out.flush()
            popen = subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a ^C at the terminal reaches pytest, not them
            )
        proc = Proc(name, list(args), popen, log)
        self.started.append(proc)
        return proc

    def close(self) -> None:
        """Kill every process still running."""
        for proc in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.kill()

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def wait_for(
    condition: Callable[[], bool],
    what: str,
    *,
    timeout: float,
    watch: Sequence[Proc] = (),
    interval: float = POLL_S,
) -> None:
    """Poll ``condition`` until true; fail after ``timeout`` or when a watched process
    exits, quoting the logs of the watched processes."""
    deadline = time.monotonic() + timeout
    while not condition():
        for proc in watch:
            if not proc.alive():
                raise CliError(
                    f"{proc.name} exited ({proc.popen.returncode}) while waiting for {what}\n"
                    f"{proc.output()}"
                )
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name}:\n{p.output()}" for p in watch)
            raise CliError(f"timed out after {timeout} s waiting for {what}\n{logs}")
        time.sleep(interval)


# -- collector ---------------------------------------------------------------------


def init_pki(pki_dir: Path) -> None:
    """``baomi-collector pki init``: a CA, server certificate and signing key."""
    run_cli([cli("baomi-collector"), "pki", "init", "--dir", str(pki_dir)])


def create_token(store_url: str, host: str) -> str:
    """``baomi-collector token create``: a single-use enrolment token for ``host``."""
    out = run_cli([cli("baomi-collector"), "token", "create", "--host", host, "--store", store_url])
    return out.stdout.strip()


def collector_healthy(port: int, ca_pem: bytes) -> bool:
    """True when the enrolment port (bound after the agents' port) answers a TLS health
    check with SERVING."""
    channel = grpc.secure_channel(
        f"127.0.0.1:{port + 1}", grpc.ssl_channel_credentials(root_certificates=ca_pem)
    )
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_RPC_TIMEOUT_S)
    except grpc.RpcError:
        return False
    finally:
        channel.close()
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def start_collector(
    procs: Processes,
    *,
    store_url: str,
    pki_dir: Path,
    port: int,
    checkpoint_seconds: float = 1.0,
    name: str = "collector",
    timeout: float = START_TIMEOUT_S,
    extra_args: Sequence[str] = (),
) -> Proc:
    """``baomi-collector serve`` on ``port`` (agents) and ``port + 1`` (enrolment), with
    ``extra_args`` after; returns once it answers health checks."""
    proc = procs.start(
        name,
        [
            cli("baomi-collector"),
            "serve",
            "--store",
            store_url,
            "--pki",
            str(pki_dir),
            "--listen",
            f"127.0.0.1:{port}",
            "--enroll-listen",
            f"127.0.0.1:{port + 1}",
            "--checkpoint-seconds",
            str(checkpoint_seconds),
            *extra_args,
        ],
    )
    ca_pem = (pki_dir / "ca.pem").read_bytes()
    wait_for(
        lambda: collector_healthy(port, ca_pem),
        f"the collector on port {port}",
        timeout=timeout,
        watch=[proc],
    )
    return proc


# -- agent -------------------------------------------------------------------------


def enroll_agent(state_dir: Path, *, port: int, token: str, ca: Path) -> None:
    """``baomi-agent enroll`` against the collector on ``port``; creates the spool."""
    run_cli(
        [
            cli("baomi-agent"),
            "--state-dir",
            str(state_dir),
            "enroll",
            "--collector",
            f"127.0.0.1:{port}",
            "--token",
            token,
            "--ca",
            str(ca),
        ]
    )


def spool_head(state_dir: Path) -> int:
    """The last seq the agent's spool assigned, read without the agent's code."""
    db = sqlite3.connect(f"file:{state_dir / 'spool.db'}?mode=ro", uri=True, timeout=10)
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'head_seq'").fetchone()
    finally:
        db.close()
    return int(row[0])


def start_agent(
    procs: Processes,
    state_dir: Path,
    *,
    heartbeat: float = 30.0,
    ready_at_seq: int | None = None,
    name: str = "agent",
    extra_args: Sequence[str] = (),
    timeout: float = START_TIMEOUT_S,
) -> Proc:
    """``baomi-agent run``. With ``ready_at_seq``, returns only once the spool's head
    has reached it: the caller passes the head before the start plus the start-up events
    it expects (an ``unclean_stop`` tamper event if the last run was killed, then the
    ``started`` status)."""
    proc = procs.start(
        name,
        [
            cli("baomi-agent"),
            "--state-dir",
            str(state_dir),
            "run",
            "--heartbeat",
            str(heartbeat),
            *extra_args,
        ],
    )
    if ready_at_seq is not None:
        wait_for(
            lambda: spool_head(state_dir) >= ready_at_seq,
            f"the agent to spool up to seq {ready_at_seq}",
            timeout=timeout,
            watch=[proc],
        )
    return proc
