"""An agent with several collector addresses fails over by itself, storing every event
once: real ``baomi-collector`` and ``baomi-agent`` processes, mTLS on loopback."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests.procs import (
    Processes,
    cli,
    create_token,
    free_port_pair,
    init_pki,
    run_cli,
    start_agent,
    start_collector,
    wait_for,
)

HOST = "failover-host"
HEARTBEAT_S = 0.3  # the agent's heartbeats are the events it streams
STORED_TIMEOUT_S = 60.0  # seconds for events to reach a collector


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    """Daemons of this test; whatever still runs is SIGKILLed by pid in teardown."""
    with Processes(tmp_path / "logs") as group:
        yield group


def stored_seqs(store_path: Path, host: str) -> list[int]:
    """Every stored seq of ``host``, in order."""
    with closing(sqlite3.connect(store_path, timeout=10)) as db:
        rows = db.execute("SELECT seq FROM events WHERE host_id = ? ORDER BY seq", (host,))
        return [int(r[0]) for r in rows]


def test_a_dead_first_collector_is_passed_over_and_failover_keeps_every_event_once(
    tmp_path: Path, procs: Processes
) -> None:
    pki_dir, store_path, state = tmp_path / "pki", tmp_path / "events.db", tmp_path / "agent"
    store_url = f"sqlite:///{store_path}"
    init_pki(pki_dir)
    first, second = free_port_pair(), free_port_pair()  # nothing listens on ``first`` yet
    collector = start_collector(procs, store_url=store_url, pki_dir=pki_dir, port=second)
    token = create_token(store_url, HOST)
    addresses = [f"127.0.0.1:{first}", f"127.0.0.1:{second}"]
    run_cli(
        [
            cli("baomi-agent"), "--state-dir", str(state), "enroll",
            "--collector", addresses[0], "--collector", addresses[1],
            "--token", token, "--ca", str(pki_dir / "ca.pem"),
        ]
    )  # fmt: skip
    # Enrolment passed over the first address's dead enrolment port to the second's.
    assert json.loads((state / "agent.json").read_text())["collectors"] == addresses

    agent = start_agent(procs, state, heartbeat=HEARTBEAT_S)
    wait_for(
        lambda: len(stored_seqs(store_path, HOST)) >= 5,
        "the agent's events at the second collector",
        timeout=STORED_TIMEOUT_S,
        watch=[agent, collector],
    )
    # The serving collector goes away; one comes up at the first address, on the same
    # store: the agent must move there and carry on right after the stored head.
    collector.stop()
    before = len(stored_seqs(store_path, HOST))
    revived = start_collector(
        procs, store_url=store_url, pki_dir=pki_dir, port=first, name="collector-first"
    )
    wait_for(
        lambda: len(stored_seqs(store_path, HOST)) >= before + 5,
        "the agent's events at the first collector",
        timeout=STORED_TIMEOUT_S,
        watch=[agent, revived],
    )
    assert agent.stop() == 0
    assert revived.stop() == 0
    seqs = stored_seqs(store_path, HOST)
    assert seqs == list(range(1, len(seqs) + 1))  # nothing lost, nothing twice
    assert f"stream to {addresses[0]}" in agent.output(tail=200_000)  # it did try the first
    run_cli(
        [cli("baomi-collector"), "audit", "verify", "--store", store_url, "--pki", str(pki_dir)]
    )


def test_run_collector_overrides_the_enrolled_addresses_and_bad_ones_are_refused(
    tmp_path: Path, procs: Processes
) -> None:
    pki_dir, store_path, state = tmp_path / "pki", tmp_path / "events.db", tmp_path / "agent"
    store_url = f"sqlite:///{store_path}"
    init_pki(pki_dir)
    port = free_port_pair()
    collector = start_collector(procs, store_url=store_url, pki_dir=pki_dir, port=port)
    token = create_token(store_url, HOST)
    run_cli(
        [
            cli("baomi-agent"), "--state-dir", str(state), "enroll",
            "--collector", f"127.0.0.1:{port}", "--token", token,
            "--ca", str(pki_dir / "ca.pem"),
        ]
    )  # fmt: skip
    bad = run_cli(
        [cli("baomi-agent"), "--state-dir", str(state), "run", "--collector", "nowhere"],
        check=False,
    )
    assert bad.returncode != 0
    assert "'nowhere' must be HOST:PORT" in bad.stderr
    dead = free_port_pair()
    agent = start_agent(
        procs,
        state,
        heartbeat=HEARTBEAT_S,
        extra_args=["--collector", f"127.0.0.1:{dead}", "--collector", f"127.0.0.1:{port}"],
    )
    wait_for(
        lambda: len(stored_seqs(store_path, HOST)) >= 3,
        "the agent's events past the dead address",
        timeout=STORED_TIMEOUT_S,
        watch=[agent, collector],
    )
    assert agent.stop() == 0
