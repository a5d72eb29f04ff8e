"""The real agent core against an in-process collector: heartbeats, gaps, outages."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from baomi.v1 import collector_pb2, events_pb2
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from agent import core
from agent.core import Agent, AgentConfig
from agent.identity import enroll
from agent.spool import Spool
from agent.stream import StreamConfig
from collector.policy import signed_bytes
from collector.server import create_token
from collector.store import Store
from tests.collector_harness import RunningCollector

FAST = StreamConfig(batch_seconds=0.05, backoff_initial=0.05, backoff_max=0.3)


class AgentThread:
    """Runs ``Agent.run`` on its own loop until ``stop``."""

    def __init__(self, config: AgentConfig) -> None:
        self.agent = Agent(config)
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(
            target=self._loop.run_until_complete, args=(self.agent.run(self._stop),), daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=20)
        assert not self._thread.is_alive()
        self._loop.close()


def wait_for(what: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def host_events(store: Store, host: str) -> list[events_pb2.Event]:
    return [events_pb2.Event.FromString(r.body) for r in store.chain(host)]


@pytest.fixture
def config(collector: RunningCollector, tmp_path: Path) -> Iterator[AgentConfig]:
    token = create_token(collector.store, "ws-01")
    state = tmp_path / "agent"
    ca = (collector.pki_dir / "ca.pem").read_bytes()
    enroll(state, collector.address, token, ca, collector.enroll_address)
    yield AgentConfig(state_dir=state, heartbeat_seconds=0.2, stream=FAST)


def test_agent_streams_heartbeats_and_stops_clean(
    collector: RunningCollector, config: AgentConfig
) -> None:
    running = AgentThread(config)
    wait_for(lambda: len(host_events(collector.store, "ws-01")) >= 3)
    running.stop()
    events = host_events(collector.store, "ws-01")
    states = [e.agent_status.state for e in events]
    assert states[0] == "started" and states[-1] == "stopping"
    assert all(e.WhichOneof("kind") == "agent_status" for e in events)
    assert Spool(config.state_dir / "spool.db").pending() == 0


def test_unclean_stop_is_reported_as_tamper(
    collector: RunningCollector, config: AgentConfig
) -> None:
    spool = Spool(config.state_dir / "spool.db")
    spool.mark_running()
    spool.close()  # as if killed: never marked stopped
    running = AgentThread(config)
    wait_for(lambda: any(e.HasField("tamper") for e in host_events(collector.store, "ws-01")))
    running.stop()
    tamper = next(e for e in host_events(collector.store, "ws-01") if e.HasField("tamper"))
    assert tamper.tamper.kind == "unclean_stop"
    assert tamper.severity == events_pb2.SEVERITY_HIGH
    assert tamper.tamper.gap_end.ToMicroseconds() >= tamper.tamper.gap_start.ToMicroseconds()


def test_events_wait_out_a_collector_outage(
    collector: RunningCollector, config: AgentConfig, tmp_path: Path
) -> None:
    """With the collector unreachable, events stay in the spool; they arrive later."""
    dead = replace(config, heartbeat_seconds=0.05)
    # Point the agent at a closed port first.
    info = (config.state_dir / "agent.json").read_text()
    (config.state_dir / "agent.json").write_text(info.replace(collector.address, "127.0.0.1:1"))
    running = AgentThread(dead)
    wait_for(lambda: running.agent.spool.pending() >= 10)
    running.stop()
    assert collector.store.head("ws-01") is None
    (config.state_dir / "agent.json").write_text(info)
    running = AgentThread(config)
    spooled = Spool(config.state_dir / "spool.db").head[0]
    wait_for(lambda: (collector.store.head("ws-01") or (0, b""))[0] >= spooled)
    running.stop()
    seqs = [e.seq for e in host_events(collector.store, "ws-01")]
    assert seqs == list(range(1, len(seqs) + 1))


def test_spool_over_its_limit_raises_a_loud_event(
    collector: RunningCollector, config: AgentConfig
) -> None:
    small = replace(config, spool_max_bytes=1)
    running = AgentThread(small)
    wait_for(
        lambda: any(
            e.agent_status.state == "spool_full" for e in host_events(collector.store, "ws-01")
        )
    )
    running.stop()
    alarm = next(
        e for e in host_events(collector.store, "ws-01") if e.agent_status.state == "spool_full"
    )
    assert alarm.severity == events_pb2.SEVERITY_HIGH


def test_watch_policy_sends_a_signed_bundle(
    collector: RunningCollector, config: AgentConfig, tmp_path: Path
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "policy.csv").write_text("p, secadmin, *, read\n")
    collector.collector.policy.load_directory(policies)
    identity = Agent(config).identity
    with grpc.secure_channel(identity.collector, identity.credentials()) as ch:
        watch = ch.unary_stream(
            "/baomi.v1.Collector/WatchPolicy",
            request_serializer=collector_pb2.WatchPolicyRequest.SerializeToString,
            response_deserializer=collector_pb2.PolicyBundle.FromString,
        )
        bundle = next(watch(collector_pb2.WatchPolicyRequest(current_version=""), timeout=10))
    assert bundle.files["policy.csv"] == b"p, secadmin, *, read\n"
    key = load_pem_public_key(identity.signing_pub_pem)
    key.verify(bundle.signature, signed_bytes(bundle))  # type: ignore[union-attr]


def test_the_stream_goes_on_after_an_unexpected_failure(
    collector: RunningCollector, config: AgentConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = AgentThread(config)
    spool = running.agent.spool
    real = spool.read_after
    failures = [RuntimeError("disk hiccup")]

    def flaky(seq: int, limit: int) -> list[tuple[int, bytes]]:
        if failures:
            raise failures.pop()
        return real(seq, limit)

    monkeypatch.setattr(spool, "read_after", flaky)
    wait_for(lambda: len(host_events(collector.store, "ws-01")) >= 3)
    running.stop()
    assert "RuntimeError: disk hiccup" in running.agent.stream.last_error


def _stream_health(agent: AgentThread) -> str:
    """What the agent's next status says of its stream ("" when it is fine)."""
    status = agent.agent._status("running").agent_status  # what it would send next
    return next((s.detail for s in status.sensors if s.name == "stream"), "")


def test_a_collector_that_takes_nothing_shows_as_not_delivering(
    store: Store, pki_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.integration.test_ingest_races import GatedStore

    monkeypatch.setattr(core, "NOT_DELIVERING_SECONDS", 0.5)
    gate = GatedStore(store)
    running = RunningCollector(gate, pki_dir, checkpoint_seconds=3600)  # type: ignore[arg-type]
    try:
        state = tmp_path / "agent"
        ca = (pki_dir / "ca.pem").read_bytes()
        enroll(state, running.address, create_token(store, "ws-01"), ca, running.enroll_address)
        gate.close_gate("ws-01")  # connected, but nothing is ever committed
        agent = AgentThread(AgentConfig(state_dir=state, heartbeat_seconds=0.2, stream=FAST))
        try:
            wait_for(lambda: "not delivering" in _stream_health(agent))
        finally:
            gate.open_gate()
            agent.stop()
    finally:
        running.stop()


def test_backoff_starts_again_after_a_session_that_delivered(
    config: AgentConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream that delivered and then broke (the usual end: the collector restarted)
    reconnects at the first backoff step, not at the step its failures had reached."""
    from agent import stream as stream_module

    client = Agent(config).stream
    outcomes = [False, False, False, True, False]  # delivered before breaking?
    waits: list[float] = []

    async def session(channel: object) -> None:
        client.delivered = outcomes.pop(0)
        raise RuntimeError("stream broke")

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if not outcomes:
            raise asyncio.CancelledError

    monkeypatch.setattr(client, "_session", session)
    monkeypatch.setattr(stream_module.random, "uniform", lambda low, high: high)
    monkeypatch.setattr(stream_module.asyncio, "sleep", sleep)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(client.run())
    initial = FAST.backoff_initial
    assert waits == [initial, 2 * initial, 4 * initial, initial, 2 * initial]


def test_the_stream_frees_the_spools_cache_once_the_collector_has_everything(
    collector: RunningCollector, config: AgentConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large event (a label inventory) fills the spool's page cache as it is written,
    sent and acknowledged; the idle agent must not keep those pages."""
    released: list[int] = []  # events the collector had acknowledged at each release

    def release_memory(spool: Spool) -> None:
        released.append(spool.acked[0])

    monkeypatch.setattr(Spool, "release_memory", release_memory)
    running = AgentThread(replace(config, heartbeat_seconds=60))
    try:
        wait_for(lambda: len(released) >= 1)  # caught up after the start
        big = events_pb2.Event(agent_status=events_pb2.AgentStatus(state="x" * 300_000))
        running.agent.emit(big)
        wait_for(
            lambda: any(
                len(e.agent_status.state) == 300_000 for e in host_events(collector.store, "ws-01")
            )
        )
        wait_for(lambda: len(released) >= 2)
        sent = len(host_events(collector.store, "ws-01"))
        assert released[-1] == sent  # released only with every event acknowledged
    finally:
        running.stop()
