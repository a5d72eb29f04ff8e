"""Fault injection with the real CLIs: SIGKILL the collector and the agent mid-stream.

The collector and agent run as subprocesses (``tests/procs.py``) on loopback with mTLS
and a SQLite store. The test itself fills the agent's spool through ``agent.spool.Spool``
at a steady pace while the agent streams it, so every kill falls into a live stream and
the spool is written by two processes at once.
"""

from __future__ import annotations

import collections
import json
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
from baomi.v1 import events_pb2

from agent.spool import Spool
from tests.procs import (
    Proc,
    Processes,
    cli,
    create_token,
    enroll_agent,
    free_port_pair,
    init_pki,
    run_cli,
    start_agent,
    start_collector,
    wait_for,
)

HOST = "fault-host"
EVENTS = 100_000  # file_access events the test spools
KILLS = 20  # SIGKILLs of each process
KILL_DELAY_S = (0.05, 1.5)  # seconds before each kill (after the last restart), uniform
FILL_CHUNK = 500  # events per spool transaction of the test's writer
FILL_INTERVAL_S = 0.17  # seconds between them: the spool fills over the whole kill plan
FILL_TIMEOUT_S = 120.0  # seconds the writer may still need once the kills are done
SEED = 20_260_527  # fixes the kill plan; printed so a failure can be replayed
HEARTBEAT_S = 0.5  # agent heartbeats also write the spool, concurrently with the test
CHECKPOINT_S = 1.0  # collector checkpoint interval
DRAIN_TIMEOUT_S = 300.0  # seconds for the collector to store everything after the kills
DRAIN_POLL_S = 0.5


@dataclass
class Deployment:
    """A collector with one enrolled agent (not yet running)."""

    pki_dir: Path
    store_path: Path
    port: int
    state_dir: Path
    collector: Proc

    @property
    def store_url(self) -> str:
        """The store as the CLIs name it."""
        return f"sqlite:///{self.store_path}"


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    """Daemons of this test; whatever still runs is SIGKILLed by pid in teardown."""
    with Processes(tmp_path / "logs") as group:
        yield group


@pytest.fixture
def deployment(tmp_path: Path, procs: Processes) -> Deployment:
    """``pki init``, ``serve`` and ``enroll``, each through its CLI."""
    pki_dir, store_path, state_dir = tmp_path / "pki", tmp_path / "collector.db", tmp_path / "agent"
    init_pki(pki_dir)
    port = free_port_pair()
    store_url = f"sqlite:///{store_path}"
    collector = start_collector(
        procs, store_url=store_url, pki_dir=pki_dir, port=port, checkpoint_seconds=CHECKPOINT_S
    )
    token = create_token(store_url, HOST)
    enroll_agent(state_dir, port=port, token=token, ca=pki_dir / "ca.pem")
    return Deployment(pki_dir, store_path, port, state_dir, collector)


def file_events(first: int, last: int) -> list[events_pb2.Event]:
    """file_access events with paths ``/secret/<first>`` … ``/secret/<last - 1>``."""
    return [
        events_pb2.Event(
            severity=events_pb2.SEVERITY_INFO,
            file_access=events_pb2.FileAccess(
                path=f"/secret/{i}", action="read", uid=1000, decision=events_pb2.DECISION_ALLOW
            ),
        )
        for i in range(first, last)
    ]


def stored_head(store_path: Path, host: str) -> int:
    """The highest seq the collector has committed for ``host`` (0 before any)."""
    with closing(sqlite3.connect(store_path, timeout=10)) as db:
        row = db.execute("SELECT MAX(seq) FROM events WHERE host_id = ?", (host,)).fetchone()
    return int(row[0] or 0)


def stored_events(store_path: Path, host: str) -> list[tuple[int, str, events_pb2.Event]]:
    """Every stored event of ``host`` as (seq column, kind column, decoded body)."""
    with closing(sqlite3.connect(store_path, timeout=10)) as db:
        rows = db.execute(
            "SELECT seq, kind, body FROM events WHERE host_id = ? ORDER BY seq", (host,)
        ).fetchall()
    return [(int(s), str(k), events_pb2.Event.FromString(b)) for s, k, b in rows]


def fill(spool: Spool, lock: threading.Lock, stop: threading.Event) -> None:
    """Spool the EVENTS file accesses in FILL_CHUNK transactions at a steady pace,
    holding ``lock`` around each append."""
    for i in range(EVENTS // FILL_CHUNK):
        if stop.wait(FILL_INTERVAL_S):
            return
        with lock:
            spool.append(file_events(i * FILL_CHUNK, (i + 1) * FILL_CHUNK))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_collector_and_agent_mid_stream_stores_every_event_once(
    deployment: Deployment, procs: Processes
) -> None:
    """The issue's acceptance test: 20 SIGKILLs of the collector and 20 of the agent at
    random points of a 100,000-event stream; afterwards every event is stored exactly
    once, every kill of the agent is on record, and ``audit verify`` passes."""
    d = deployment
    started = time.monotonic()
    rng = random.Random(SEED)
    plan = ["collector"] * KILLS + ["agent"] * KILLS
    rng.shuffle(plan)
    spool = Spool(d.state_dir / "spool.db")
    collector = d.collector
    agent = start_agent(procs, d.state_dir, heartbeat=HEARTBEAT_S, ready_at_seq=1)
    kills: list[int] = []  # events spooled but not yet acknowledged at each kill
    filling_lock, stop_filling = threading.Lock(), threading.Event()
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="filler") as pool:
            filling = pool.submit(fill, spool, filling_lock, stop_filling)
            try:
                for target in plan:
                    time.sleep(rng.uniform(*KILL_DELAY_S))
                    if filling.done():
                        filling.result()  # raises what stopped the filler early
                    kills.append(spool.pending())
                    if target == "collector":
                        collector.kill()
                        collector = start_collector(
                            procs,
                            store_url=d.store_url,
                            pki_dir=d.pki_dir,
                            port=d.port,
                            checkpoint_seconds=CHECKPOINT_S,
                        )
                        continue
                    agent.kill()
                    # Ready once it has spooled its unclean_stop tamper event and its
                    # status (killing it earlier would fold two kills into one gap); the
                    # filler waits meanwhile so that the head moves only by the agent.
                    with filling_lock:
                        head, _ = spool.head
                        agent = start_agent(
                            procs, d.state_dir, heartbeat=HEARTBEAT_S, ready_at_seq=head + 2
                        )
                filling.result(timeout=FILL_TIMEOUT_S)
            finally:
                stop_filling.set()
        killed_at = time.monotonic()

        def all_stored() -> bool:
            head, _ = spool.head
            return spool.pending() == 0 and stored_head(d.store_path, HOST) == head

        wait_for(
            all_stored,
            "the collector to store every spooled event",
            timeout=DRAIN_TIMEOUT_S,
            watch=[collector, agent],
            interval=DRAIN_POLL_S,
        )
        drained_at = time.monotonic()
        assert agent.stop() == 0, agent.output()
        # The clean stop spooled a "stopping" status and delivered it before exiting.
        head, _ = spool.head
        assert spool.pending() == 0, f"spool not empty after a clean stop\n{agent.output()}"
        assert collector.stop() == 0, collector.output()
    finally:
        spool.close()
    print(
        f"\nseed {SEED}: {KILLS} collector + {KILLS} agent kills in "
        f"{killed_at - started:.1f} s, drained in {drained_at - killed_at:.1f} s; "
        f"unacknowledged events at each kill: {kills}"
    )
    # The kills fell while events were on their way, not into an idle stream.
    assert sum(n > 0 for n in kills) > len(kills) // 4, kills

    # Exactly seq 1..head, no gaps, no duplicates, every body naming its own row.
    events = stored_events(d.store_path, HOST)
    assert [s for s, _, _ in events] == list(range(1, head + 1))
    assert all(ev.host_id == HOST and ev.seq == s for s, _, ev in events)
    assert all(ev.WhichOneof("kind") == k for _, k, ev in events)
    # Every spooled file access exactly once.
    paths = collections.Counter(ev.file_access.path for _, k, ev in events if k == "file_access")
    assert len(paths) == EVENTS
    assert set(paths) == {f"/secret/{i}" for i in range(EVENTS)}
    assert max(paths.values()) == 1
    # Every SIGKILL of the agent is on record as an unclean stop, and nothing else is.
    tampers = [ev.tamper for _, k, ev in events if k == "tamper"]
    assert [t.kind for t in tampers] == ["unclean_stop"] * KILLS
    assert all(t.gap_end.ToMicroseconds() >= t.gap_start.ToMicroseconds() > 0 for t in tampers)
    statuses = collections.Counter(
        ev.agent_status.state for _, k, ev in events if k == "agent_status"
    )
    assert statuses["started"] == KILLS + 1
    assert statuses["stopping"] == 1
    # The collector saw no break in the chain and no replay that differed from the record;
    # each restart after a SIGKILL of the collector says it signed an uncovered tail.
    alerts = [ev.tamper.kind for _, _, ev in stored_events(d.store_path, "_collector")]
    assert set(alerts) <= {"uncovered_at_start"}, alerts
    # The events CLI reads the same record.
    out = run_cli(
        [
            cli("baomi-collector"),
            "events",
            "--store",
            d.store_url,
            "--host",
            HOST,
            "--kind",
            "tamper",
            "--json",
            "--limit",
            str(10 * KILLS),
        ]
    ).stdout
    docs = [json.loads(line) for line in out.splitlines()]
    assert [doc["tamper"]["kind"] for doc in docs] == ["unclean_stop"] * KILLS
    # The record as a whole: chains, hashes, signed checkpoints.
    audit = run_cli(
        [cli("baomi-collector"), "audit", "verify", "--store", d.store_url, "--pki", str(d.pki_dir)]
    )
    assert audit.stdout.startswith("OK: "), audit.stdout


def test_corrupt_spool_stops_the_agent_with_a_recovery_hint(deployment: Deployment) -> None:
    """A spool whose header is garbage: ``run`` exits non-zero, says how to recover, and
    leaves the file as it was rather than starting an empty one over it."""
    d = deployment
    assert d.collector.stop() == 0
    path = d.state_dir / "spool.db"
    garbage = random.Random(SEED).randbytes(100)
    with path.open("r+b") as f:
        f.write(garbage)
    before = path.read_bytes()

    result = run_cli(
        [cli("baomi-agent"), "--state-dir", str(d.state_dir), "run", "--heartbeat", "1"],
        check=False,
        timeout=30,
    )

    assert result.returncode != 0
    message = result.stderr
    assert "corrupt" in message
    assert f"mv {path} {path}.corrupt" in message  # keep it for investigation
    assert ".recover" in message  # salvage what can be
    assert "re-enrol" in message  # and start a new spool where the collector stands
    assert "Traceback" not in message
    assert path.read_bytes() == before
