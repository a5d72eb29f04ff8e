"""Several collectors on one PostgreSQL database, sharing nothing else.

Each collector here is a real ``Collector`` on its own event loop with its own store
connections, serving real mTLS gRPC on loopback, as separate processes would; they share
only the database (and the PKI, as a deployment does). A host's stream is served by one
collector at a time under its lease; afterwards every acknowledged event is stored
exactly once with the acknowledged hash, each host's seq runs 1..N and ``audit verify``
finds no damage.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from baomi import chain
from baomi.v1 import collector_pb2, events_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from collector import audit, checkpoint, ingest, pki, policy
from collector.console import ConsoleConfig, feed
from collector.errors import StoreError
from collector.server import create_token
from collector.store import Store, open_store
from tests.collector_harness import (
    Host,
    RunningCollector,
    Stream,
    enroll_call,
    enroll_host,
    new_csr,
)
from tests.conftest import _as_cluster_owner, _fresh_database, _pg_bin_dir
from tests.procs import Proc, Processes, free_port_pair, start_collector

pytestmark = pytest.mark.postgres

SETTLE = 15.0  # seconds to wait for anything asynchronous


@pytest.fixture
def database(postgres_server: str) -> Iterator[str]:
    """A fresh database every collector of the test opens."""
    with _fresh_database(postgres_server) as url:
        yield url


@pytest.fixture
def fast_leases(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shorter lease waits, so refusals come within a test's patience."""
    monkeypatch.setattr(ingest, "LEASE_WAIT_SECONDS", 1.0)
    monkeypatch.setattr(ingest, "LEASE_CHECK_SECONDS", 0.2)


class Cluster:
    """Collectors over one database, each with its own store (its own connections)."""

    def __init__(self, url: str, pki_dir: Path) -> None:
        self.url = url
        self.pki_dir = pki_dir
        self.stores: list[Store] = []
        self.collectors: list[RunningCollector] = []

    def start(self, **config: Any) -> RunningCollector:
        store = open_store(self.url)
        self.stores.append(store)
        running = RunningCollector(store, self.pki_dir, **{"checkpoint_seconds": 3600, **config})
        self.collectors.append(running)
        return running

    def stop(self, running: RunningCollector) -> None:
        running.stop()
        self.collectors.remove(running)

    def close(self) -> None:
        for running in list(self.collectors):
            self.stop(running)
        for store in self.stores:
            store.close()


@pytest.fixture
def cluster(database: str, pki_dir: Path) -> Iterator[Cluster]:
    c = Cluster(database, pki_dir)
    try:
        yield c
    finally:
        c.close()


class Agent:
    """An agent's view of one host: the events it made, in order, and the highest seq a
    collector acknowledged with exactly that event's hash. It resends, like the real
    agent, everything after the head a collector announces."""

    def __init__(self, host: Host, events: int) -> None:
        self.host = host
        self.events = host.events(events)
        self.acked = 0
        self.acks: list[events_pb2.Ack] = []
        self.refusals: list[str] = []
        self._lock = threading.Lock()

    def session(self, address: str, batch_events: int = 7, cut_after: int | None = None) -> None:
        """One connection: read the head, send what follows it, take the Acks. With
        ``cut_after``, the connection ends after that many batches (a network cut)."""
        stream = Stream(self.host, address, settle=SETTLE)
        try:
            head = stream.next()
            if not isinstance(head, events_pb2.Ack):
                if isinstance(head, grpc.RpcError):
                    self.refusals.append(f"{head.code().name}: {head.details()}")
                return
            self._take(head)
            rest = self.events[head.up_to_seq :]
            batches = [rest[i : i + batch_events] for i in range(0, len(rest), batch_events)]
            for b in batches[:cut_after]:
                stream.send(b)
            for _ in batches[:cut_after]:
                ack = stream.next()
                if not isinstance(ack, events_pb2.Ack):
                    return
                self._take(ack)
        finally:
            stream.close()

    def _take(self, ack: events_pb2.Ack) -> None:
        assert not ack.HasField("rejection"), ack.rejection.reason
        if ack.up_to_seq:
            # The agent is a witness: a head it holds must carry its event's hash.
            assert chain.event_hash(self.events[ack.up_to_seq - 1]) == ack.head_hash
        with self._lock:
            self.acks.append(ack)
            self.acked = max(self.acked, ack.up_to_seq)


def _stored(store: Store, host_id: str) -> dict[int, bytes]:
    return {r.seq: r.hash for r in store.chain(host_id)}


def _assert_exactly_once(store: Store, agent: Agent) -> None:
    """Seq 1..N, each with the agent's event; every Ack names a stored row."""
    stored = _stored(store, agent.host.host_id)
    expected = {e.seq: chain.event_hash(e) for e in agent.events}
    assert stored == expected
    for ack in agent.acks:
        if ack.up_to_seq:
            assert stored[ack.up_to_seq] == ack.head_hash


def _lease_holder(url: str, host_id: str) -> int | None:
    """The PostgreSQL backend pid holding ``host_id``'s lease, if any."""
    from collector.store.postgres import lease_key

    key = lease_key(host_id)  # signed, as the shifted oids read back
    with psycopg.connect(url, autocommit=True) as db:
        row = db.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND (classid::bigint << 32 | objid::bigint) = %s",
            (key,),
        ).fetchone()
    return None if row is None else int(row[0])


def _wait(check: Callable[[], bool], what: str) -> None:
    until = time.monotonic() + SETTLE
    while not check():
        assert time.monotonic() < until, what
        time.sleep(0.02)


def _verified(store: Store, pki_dir: Path) -> audit.AuditReport:
    return audit.verify(store, pki.load_verify_key(pki_dir / "signing.pub"))


# -- leases -----------------------------------------------------------------------------
def test_a_host_served_by_one_collector_is_refused_by_another_until_it_is_free(
    cluster: Cluster, fast_leases: None, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = cluster.start(), cluster.start()
    host = enroll_host(a, "ws-01")
    agent = Agent(host, 30)
    first = Stream(host, a.address, settle=SETTLE)
    hello = first.next()
    assert isinstance(hello, events_pb2.Ack) and hello.up_to_seq == 0
    first.send(agent.events[:10])
    ack = first.next()
    assert isinstance(ack, events_pb2.Ack) and ack.up_to_seq == 10
    assert _lease_holder(cluster.url, "ws-01") is not None
    # The agent reconnects to B while A still serves it (a half-open connection).
    refused = Stream(host, b.address, settle=SETTLE)
    status = refused.next()
    assert isinstance(status, grpc.RpcError)
    assert status.code() == grpc.StatusCode.UNAVAILABLE
    assert status.details() == "host ws-01 is being served by another collector; retry"
    refused.close()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    # Once A's stream ends, B serves the host from the head A's commits left.
    first.send(agent.events[10:20])
    assert isinstance(first.next(), events_pb2.Ack)
    first.close()
    agent.session(b.address)
    assert agent.acked == 30
    _assert_exactly_once(cluster.stores[0], agent)


def test_a_second_stream_waits_for_the_lease_and_starts_from_the_commits_before_it(
    cluster: Cluster,
) -> None:
    a, b = cluster.start(), cluster.start()
    host = enroll_host(a, "ws-01")
    agent = Agent(host, 20)
    first = Stream(host, a.address, settle=SETTLE)
    assert isinstance(first.next(), events_pb2.Ack)
    first.send(agent.events[:10])
    assert isinstance(first.next(), events_pb2.Ack)
    waiting = Stream(host, b.address, settle=SETTLE)
    with pytest.raises(queue.Empty):
        waiting.next(timeout=0.5)  # no head is announced while A holds the lease
    first.close()
    head = waiting.next()
    assert isinstance(head, events_pb2.Ack)
    assert (head.up_to_seq, head.head_hash) == (10, chain.event_hash(agent.events[9]))
    waiting.close()


def test_a_stream_waiting_for_the_lease_gives_way_to_a_newer_one_of_its_host(
    cluster: Cluster,
) -> None:
    a, b = cluster.start(), cluster.start()
    host = enroll_host(a, "ws-01")
    served = Stream(host, a.address, settle=SETTLE)
    assert isinstance(served.next(), events_pb2.Ack)
    stale = Stream(host, b.address, settle=SETTLE)
    with pytest.raises(queue.Empty):
        stale.next(timeout=0.5)  # waiting for A's lease
    newer = Stream(host, b.address, settle=SETTLE)
    ended = stale.next(timeout=2)  # well before the 5 s the wait would last
    assert isinstance(ended, grpc.RpcError)
    assert ended.code() == grpc.StatusCode.ABORTED
    served.close()
    head = newer.next()
    assert isinstance(head, events_pb2.Ack) and head.up_to_seq == 0
    for s in (stale, newer):
        s.close()


def test_one_hosts_streams_alternating_and_racing_between_three_collectors(
    cluster: Cluster, fast_leases: None
) -> None:
    collectors = [cluster.start(), cluster.start(), cluster.start()]
    agents = [Agent(enroll_host(collectors[0], f"ws-{i:02}"), 400) for i in range(3)]
    rng = random.Random(14)

    def run(agent: Agent) -> None:
        # Each agent connects here and there, cut off now and then, while a second
        # connection of the same agent races it on another collector.
        until = time.monotonic() + 60
        while agent.acked < len(agent.events):
            assert time.monotonic() < until, f"{agent.host.host_id} stuck at {agent.acked}"
            first, second = rng.sample(collectors, 2)
            racer = threading.Thread(
                target=agent.session, args=(second.address, 5, rng.randint(1, 4))
            )
            racer.start()
            agent.session(first.address, rng.randint(1, 20), rng.randint(1, 6))
            racer.join()

    threads = [threading.Thread(target=run, args=(agent,)) for agent in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store = cluster.stores[0]
    for agent in agents:
        _assert_exactly_once(store, agent)
    for running in list(cluster.collectors):
        cluster.stop(running)
    report = _verified(store, cluster.pki_dir)
    assert report.damage == []


def test_a_collector_that_loses_its_database_session_ends_the_streams_it_served(
    cluster: Cluster, fast_leases: None
) -> None:
    a, b = cluster.start(), cluster.start()
    host = enroll_host(a, "ws-01")
    agent = Agent(host, 20)
    stream = Stream(host, a.address, settle=SETTLE)
    assert isinstance(stream.next(), events_pb2.Ack)
    stream.send(agent.events[:10])
    assert isinstance(stream.next(), events_pb2.Ack)
    holder = _lease_holder(cluster.url, "ws-01")
    assert holder is not None
    # What PostgreSQL sees when a collector dies: its session ends, its locks go.
    with psycopg.connect(cluster.url, autocommit=True) as db:
        db.execute("SELECT pg_terminate_backend(%s)", (holder,))
    ended = stream.next()
    assert isinstance(ended, grpc.RpcError)
    assert ended.code() == grpc.StatusCode.UNAVAILABLE
    assert "lost its database session" in (ended.details() or "")
    stream.close()
    agent.session(b.address)
    assert agent.acked == 20
    _assert_exactly_once(cluster.stores[0], agent)


def _checkpoint(running: RunningCollector) -> bool:
    signed: bool = running.call(running.collector.ingest.checkpoint_once)
    return signed


# -- the collector's own chain ------------------------------------------------------------
def test_collectors_recording_at_once_keep_one_collector_chain(cluster: Cluster) -> None:
    collectors = [cluster.start(), cluster.start(), cluster.start()]

    def record(running: RunningCollector, n: int) -> None:
        for i in range(n):
            running.call(
                lambda i=i: running.collector.ingest.alerts.console_action(
                    actor=f"admin-{running.address}", role="secadmin", action="probe", target=str(i)
                )
            )

    threads = [threading.Thread(target=record, args=(c, 40)) for c in collectors]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store = cluster.stores[0]
    rows = list(store.chain(ingest.COLLECTOR_HOST))
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    actions = [
        (a.actor, a.target)
        for a in (events_pb2.Event.FromString(r.body).console_action for r in rows)
        if a.action == "probe"
    ]
    expected = {(f"admin-{c.address}", str(i)) for c in collectors for i in range(40)}
    assert sorted(actions) == sorted(expected)  # each once
    for running in list(cluster.collectors):
        cluster.stop(running)
    assert _verified(store, cluster.pki_dir).damage == []


# -- checkpoints ----------------------------------------------------------------------------
def test_one_collector_signs_checkpoints_and_another_takes_over_when_it_dies(
    cluster: Cluster,
) -> None:
    a, b = cluster.start(), cluster.start()
    agent_a = Agent(enroll_host(a, "ws-01"), 10)
    agent_b = Agent(enroll_host(a, "ws-02"), 10)
    agent_a.session(a.address)
    agent_b.session(b.address)
    assert _checkpoint(a)  # the first to ask leads
    assert not _checkpoint(b)  # while A lives, B signs nothing
    store = cluster.stores[0]
    [first] = store.checkpoints()
    assert checkpoint.heads_of(first)["ws-02"][0] == 10  # heads as stored, by either
    holder = _lease_holder(cluster.url, ingest.CHECKPOINT_LEASE)
    assert holder is not None
    with psycopg.connect(cluster.url, autocommit=True) as db:
        db.execute("SELECT pg_terminate_backend(%s)", (holder,))
    agent_b.events += agent_b.host.events(5)
    agent_b.session(b.address)
    assert _checkpoint(b)  # the leader is gone: B takes over
    assert not _checkpoint(a)  # A, back with a new session, finds B leading
    second = store.checkpoints()[-1]
    assert checkpoint.heads_of(second)["ws-02"][0] == 15
    for running in list(cluster.collectors):
        cluster.stop(running)
    assert _verified(store, cluster.pki_dir).damage == []


def test_a_checkpoint_signed_on_a_stale_predecessor_is_not_stored(cluster: Cluster) -> None:
    a = cluster.start()
    agent = Agent(enroll_host(a, "ws-01"), 5)
    agent.session(a.address)
    store = cluster.stores[0]
    assert _checkpoint(a)
    [first] = store.checkpoints()
    assert store.add_checkpoint_after(0, first.created_us, first.body, first.signature) is None
    assert store.add_checkpoint_after(first.id, 1, b"{}", b"sig") == first.id + 1


def _signed_seq(store: Store, host_id: str) -> int:
    last = store.last_checkpoint()
    return 0 if last is None else checkpoint.heads_of(last).get(host_id, (0, b""))[0]


def _enroll(store: Store, pki_dir: Path, enroll_address: str, host_id: str) -> Host:
    """Enrol ``host_id`` through the Enroll RPC of a collector process."""
    token = create_token(store, host_id)
    ca_pem = (pki_dir / "ca.pem").read_bytes()
    key_pem, csr_pem = new_csr()
    resp = enroll_call(enroll_address, ca_pem, token, csr_pem)
    return Host(host_id, key_pem, resp.certificate_pem, ca_pem)


def test_checkpoint_leader_processes_killed_in_turn_hand_signing_over(
    database: str, pki_dir: Path, tmp_path: Path
) -> None:
    """Two ``baomi-collector serve`` processes; each is killed with SIGKILL in turn
    (and started again): the other one signs the next checkpoint, and the checkpoints
    form one chain."""
    store = open_store(database)
    with Processes(tmp_path / "logs") as procs:
        ports = [free_port_pair(), free_port_pair()]

        def start(i: int) -> Proc:
            return start_collector(
                procs, store_url=database, pki_dir=pki_dir, port=ports[i], name=f"c{i}"
            )

        running = [start(0), start(1)]
        addresses = [f"127.0.0.1:{p}" for p in ports]
        host = _enroll(store, pki_dir, f"127.0.0.1:{ports[0] + 1}", "ws-01")
        agent = Agent(host, 60)
        agent.session(addresses[0], batch_events=10, cut_after=2)
        # The second victim surely leads: it led already, or took over from the first.
        for victim in (0, 1):
            _wait(lambda: _signed_seq(store, "ws-01") == agent.acked, "no checkpoint")
            running[victim].kill()
            agent.session(addresses[1 - victim], batch_events=10, cut_after=2)
            _wait(
                lambda: _signed_seq(store, "ws-01") == agent.acked,
                f"c{1 - victim} did not sign after c{victim} was killed",
            )
            running[victim] = start(victim)
        assert agent.acked == 60
        for proc in running:
            assert proc.stop() == 0
    _assert_exactly_once(store, agent)
    assert _verified(store, pki_dir).damage == []
    store.close()


# -- silence alerts ---------------------------------------------------------------------
def test_a_host_that_moved_to_another_collector_is_not_alerted_silent(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed, "SILENCE_SLACK_SECONDS", 0.0)
    a = cluster.start(console=ConsoleConfig(listen="127.0.0.1:0"))  # leads: it came first
    b = cluster.start()
    live = a.collector.console.console.feed  # type: ignore[union-attr]
    host = enroll_host(a, "ws-01")
    # Every second, saying every two: a margin for slow sessions.
    heartbeat = {"agent_status": events_pb2.AgentStatus(state="running", heartbeat_seconds=2)}
    agent = Agent(host, 0)
    agent.events = host.events(1, **heartbeat)
    agent.session(a.address)
    _wait(lambda: "ws-01" in live.hosts and live.hosts["ws-01"].last_seen_us > 0, "not seen")
    # It goes on at B, heartbeating each second; A's console hears nothing of it.
    for _ in range(3):
        time.sleep(1.0)
        agent.events += host.events(1, **heartbeat)
        agent.session(b.address)
    assert a.call(live.check_silence) == []  # B stored its heartbeats: not silent
    assert silent_alerts(a) == []  # nor did A's own housekeeping (every 2 s) alert it
    time.sleep(3.0)  # now it is quiet everywhere
    # The housekeeping may find the silence first: either way it is alerted once.
    assert a.call(live.check_silence) in (["ws-01"], [])
    assert [t.subject_host for t in silent_alerts(a)] == ["ws-01"]


def silent_alerts(running: RunningCollector) -> list[events_pb2.Tamper]:
    rows = running.store.chain(ingest.COLLECTOR_HOST)
    events = (events_pb2.Event.FromString(r.body) for r in rows)
    return [e.tamper for e in events if e.tamper.kind == "host_silent"]


# -- policy ---------------------------------------------------------------------------------
def test_a_policy_saved_on_one_collector_reaches_an_agent_of_another(cluster: Cluster) -> None:
    a, b = cluster.start(), cluster.start()
    host = enroll_host(a, "room-01")
    received: queue.SimpleQueue[collector_pb2.PolicyBundle] = queue.SimpleQueue()
    channel = host.channel(b.address)
    watch = channel.unary_stream(
        "/baomi.v1.Collector/WatchPolicy",
        request_serializer=collector_pb2.WatchPolicyRequest.SerializeToString,
        response_deserializer=collector_pb2.PolicyBundle.FromString,
    )(collector_pb2.WatchPolicyRequest(current_version=""), timeout=60)

    def read() -> None:
        with contextlib.suppress(grpc.RpcError):  # cancelled at the end
            for bundle in watch:
                received.put(bundle)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # What the console of A does on "Save and publish" (a new meeting schedule).
        files = {"meetings.toml": b'[meetings.m1]\nroom = "r1"\nstart = "2026-12-07T09:00"\n'}
        version = policy.bundle_digest(files)
        cluster.stores[0].add_policy_version(version, "secadmin", 1, "schedule", files)
        a.call(lambda: a.collector.policy.publish(files, author="secadmin"))
        started = time.monotonic()
        bundle = received.get(timeout=5 * policy.POLICY_POLL_SECONDS)
        assert time.monotonic() - started < 3 * policy.POLICY_POLL_SECONDS
        assert (bundle.version, dict(bundle.files), bundle.author) == (version, files, "secadmin")
        key = pki.load_verify_key(cluster.pki_dir / "signing.pub")
        key.verify(bundle.signature, policy.signed_bytes(bundle))
    finally:
        watch.cancel()
        channel.close()


# -- database outage ------------------------------------------------------------------------
class PostgresControl:
    """Stops and starts the test session's PostgreSQL server where it ran."""

    def __init__(self, url: str) -> None:
        with psycopg.connect(url, autocommit=True) as db:
            self.data = Path(_show(db, "data_directory"))
            port = _show(db, "port")
            sock = _show(db, "unix_socket_directories")
        self.options = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=on"
        bin_dir = _pg_bin_dir()
        assert bin_dir is not None
        self.pg_ctl = str(bin_dir / "pg_ctl")

    def stop(self) -> None:
        """As a crash would: no checkpoint, connections cut."""
        _as_cluster_owner([self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"], self.data)

    def start(self) -> None:
        log = self.data.parent / "server.log"
        _as_cluster_owner(
            [self.pg_ctl, "-D", str(self.data), "-l", str(log), "-o", self.options, "-w", "start"],
            self.data,
        )


def _show(db: psycopg.Connection[Any], setting: str) -> str:
    row = db.execute(f"SHOW {setting}").fetchone()
    assert row is not None
    return str(row[0])


def _health(running: RunningCollector) -> int:
    """The collector's gRPC health status, asked on its enrolment port."""
    ca = (running.pki_dir / "ca.pem").read_bytes()
    with grpc.secure_channel(running.enroll_address, grpc.ssl_channel_credentials(ca)) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="baomi.v1.Collector"), timeout=5
        )
    return int(reply.status)


def test_postgresql_restarted_mid_stream_loses_nothing_acknowledged(
    cluster: Cluster, fast_leases: None, postgres_server: str
) -> None:
    a = cluster.start()
    agent = Agent(enroll_host(a, "ws-01"), 200)
    agent.session(a.address, batch_events=10, cut_after=5)
    assert agent.acked == 50
    assert _health(a) == health_pb2.HealthCheckResponse.SERVING
    server = PostgresControl(postgres_server)
    server.stop()
    try:
        _wait(
            lambda: _health(a) == health_pb2.HealthCheckResponse.NOT_SERVING,
            "health does not show the outage",
        )
        assert not a.collector.ingest.store_up
        for _ in range(3):  # the agent retries; nothing is acknowledged meanwhile
            agent.session(a.address, batch_events=10, cut_after=3)
        assert agent.acked == 50
        assert agent.refusals and all(r.startswith("UNAVAILABLE") for r in agent.refusals)
    finally:
        server.start()
    _wait(
        lambda: _health(a) == health_pb2.HealthCheckResponse.SERVING,
        "health does not show the store back",
    )
    until = time.monotonic() + SETTLE
    while agent.acked < 200:
        assert time.monotonic() < until, f"stuck at {agent.acked}"
        agent.session(a.address, batch_events=10)
    cluster.stop(a)
    store = open_store(cluster.url)  # this thread's connection of before went with the server
    try:
        _assert_exactly_once(store, agent)
        assert _verified(store, cluster.pki_dir).damage == []
    finally:
        store.close()


def test_a_second_collector_on_one_sqlite_file_is_refused(tmp_path: Path, pki_dir: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    first = RunningCollector(open_store(url), pki_dir, checkpoint_seconds=3600)
    try:
        with pytest.raises(StoreError, match="another collector serves the SQLite store"):
            RunningCollector(open_store(url), pki_dir, checkpoint_seconds=3600)
    finally:
        first.stop()
    # Stopped, it lets the next one serve the file.
    RunningCollector(open_store(url), pki_dir, checkpoint_seconds=3600).stop()
