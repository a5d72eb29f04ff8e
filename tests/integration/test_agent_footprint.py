"""What an idle agent keeps resident. A connected agent streams without loading
cryptography's native library (its Rust extension and OpenSSL bindings, ~8 MB): it
checks the collector's signing key at start without it, and needs it only for a
signature to verify. ``run`` restarts itself, in the same process, without docstrings
(``python -OO``, ~1 MB) and without the working directory on its module path. Real
``baomi-collector`` and ``baomi-agent`` processes, mTLS on loopback."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests.procs import (
    Proc,
    Processes,
    create_token,
    enroll_agent,
    free_port_pair,
    init_pki,
    start_agent,
    start_collector,
    wait_for,
)

HOST = "footprint-host"
HEARTBEAT_S = 0.3  # the agent's heartbeats are the events it streams
STORED_TIMEOUT_S = 60.0  # seconds for its events to reach the collector


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    """Daemons of this test; whatever still runs is SIGKILLed by pid in teardown."""
    with Processes(tmp_path / "logs") as group:
        yield group


def stored(store_path: Path) -> int:
    """How many of the agent's events the collector stored."""
    with closing(sqlite3.connect(store_path, timeout=10)) as db:
        (count,) = db.execute("SELECT count(*) FROM events WHERE host_id = ?", (HOST,)).fetchone()
        return int(count)


def streaming_agent(tmp_path: Path, procs: Processes, *, cwd: Path | None = None) -> Proc:
    """A collector and an enrolled ``baomi-agent run`` (started in ``cwd``), once the
    agent's heartbeats are stored."""
    pki_dir, store_path, state = tmp_path / "pki", tmp_path / "events.db", tmp_path / "agent"
    store_url = f"sqlite:///{store_path}"
    init_pki(pki_dir)
    port = free_port_pair()
    collector = start_collector(procs, store_url=store_url, pki_dir=pki_dir, port=port)
    enroll_agent(state, port=port, token=create_token(store_url, HOST), ca=pki_dir / "ca.pem")
    with contextlib.chdir(cwd or Path.cwd()):
        agent = start_agent(procs, state, heartbeat=HEARTBEAT_S)
    wait_for(
        lambda: stored(store_path) >= 3,
        "the agent's heartbeats at the collector",
        timeout=STORED_TIMEOUT_S,
        watch=[agent, collector],
    )
    return agent


def test_a_streaming_agent_has_not_loaded_cryptography(tmp_path: Path, procs: Processes) -> None:
    agent = streaming_agent(tmp_path, procs)
    maps = Path(f"/proc/{agent.pid}/maps").read_text()
    assert "cygrpc" in maps  # the right process: it streams over gRPC
    assert "cryptography" not in maps, [m for m in maps.splitlines() if "cryptography" in m]


def test_run_restarts_itself_lean_and_never_imports_from_its_working_directory(
    tmp_path: Path, procs: Processes
) -> None:
    """An ``agent`` package planted in the directory root starts the agent from is not
    what runs as root: ``python -m`` would put that directory first on the module path,
    ``-P`` keeps it off."""
    planted, marker = tmp_path / "cwd", tmp_path / "planted-code-ran"
    (planted / "agent").mkdir(parents=True)
    for name in ("__init__.py", "__main__.py"):
        (planted / "agent" / name).write_text(f"open({str(marker)!r}, 'w').close()\n")
    agent = streaming_agent(tmp_path, procs, cwd=planted)
    argv = Path(f"/proc/{agent.pid}/cmdline").read_bytes().split(b"\0")
    assert argv[1:5] == [b"-P", b"-OO", b"-m", b"agent"], argv  # the same pid, restarted
    assert argv[5:7] == [b"--state-dir", str(tmp_path / "agent").encode()]
    # Still baomi-agent to ps, top and pgrep, and so are its threads.
    names = {p.read_text() for p in Path(f"/proc/{agent.pid}/task").glob("*/comm")}
    assert "baomi-agent\n" in names
    assert Path(f"/proc/{agent.pid}/comm").read_text() == "baomi-agent\n"
    assert agent.popen.poll() is None
    assert not marker.exists(), "the agent imported code from its working directory"
