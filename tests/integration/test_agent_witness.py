"""The agent is a witness of its own chain: a collector head it did not make is refused,
and a collector that lost acknowledged events gets them again.

Each test runs a real agent against an in-process collector, stops both, tampers with
the collector's store as an attacker with database access would, and starts both again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from baomi import chain
from baomi.v1 import events_pb2

from agent.core import AgentConfig
from agent.identity import enroll
from agent.spool import Spool
from collector.ingest import to_row
from collector.server import create_token
from collector.store import Store
from tests.collector_harness import RunningCollector, raw_sql
from tests.integration.test_agent import FAST, AgentThread, host_events, wait_for

HOST = "ws-01"


class Site:
    """A store, a PKI and an enrolled agent's state, with a collector started on demand."""

    def __init__(self, store: Store, pki_dir: Path, state: Path) -> None:
        self.store, self.pki_dir, self.state = store, pki_dir, state
        self.running: RunningCollector | None = None

    def start(self) -> RunningCollector:
        self.running = RunningCollector(self.store, self.pki_dir, checkpoint_seconds=3600)
        return self.running

    def stop(self) -> None:
        if self.running is not None:
            self.running.stop()
            self.running = None

    def agent(self) -> AgentThread:
        assert self.running is not None
        info = self.state / "agent.json"  # the collector's port changes with each start
        settings = json.loads(info.read_text())
        settings["collector"] = self.running.address
        settings["collectors"] = [self.running.address]  # enrolment stores the list too
        info.write_text(json.dumps(settings))
        return AgentThread(AgentConfig(state_dir=self.state, heartbeat_seconds=0.2, stream=FAST))


@pytest.fixture
def site(store: Store, pki_dir: Path, tmp_path: Path) -> Iterator[Site]:
    s = Site(store, pki_dir, tmp_path / "agent")
    running = s.start()
    ca = (pki_dir / "ca.pem").read_bytes()
    enroll(s.state, running.address, create_token(store, HOST), ca, running.enroll_address)
    try:
        yield s
    finally:
        s.stop()


def _streamed(site: Site, at_least: int) -> int:
    """Run the agent until the collector holds ``at_least`` of its events; stop both.
    The collector's head seq."""
    agent = site.agent()
    wait_for(lambda: len(host_events(site.store, HOST)) >= at_least)
    agent.stop()
    site.stop()
    head = site.store.head(HOST)
    assert head is not None
    return head[0]


def _tampers(events: list[events_pb2.Event], kind: str) -> list[events_pb2.Tamper]:
    return [e.tamper for e in events if e.HasField("tamper") and e.tamper.kind == kind]


def test_a_forged_head_is_refused_and_the_real_event_kept(site: Site) -> None:
    head = _streamed(site, 3)
    spool = Spool(site.state / "spool.db")
    (real,) = spool.append(
        [events_pb2.Event(agent_status=events_pb2.AgentStatus(state="made offline"))]
    )
    spool.close()
    assert real.seq == head + 1
    # With the collector down, a row forged at head+1: right prev_hash, right hash.
    forged = events_pb2.Event(
        host_id=HOST,
        seq=head + 1,
        prev_hash=real.prev_hash,
        severity=events_pb2.SEVERITY_INFO,
        agent_status=events_pb2.AgentStatus(state="all quiet"),
    )
    forged.time.GetCurrentTime()
    site.store.append([to_row(forged, "agent_status", forged.time.ToMicroseconds())])
    site.start()
    [adopted] = _tampers(host_events(site.store, "_collector"), "uncovered_at_start")
    assert adopted.subject_host == HOST and adopted.subject_seq == head + 1
    agent = site.agent()
    try:
        wait_for(lambda: "collector head refused" in agent.agent.stream.last_error)
        time.sleep(0.5)  # it retries; each retry is refused the same way
    finally:
        agent.stop()
    spool = Spool(site.state / "spool.db")
    kept = [events_pb2.Event.FromString(b) for _, b in spool.read_after(head, 100)]
    spool.close()
    assert kept[0].seq == real.seq and chain.event_hash(kept[0]) == chain.event_hash(real)
    [refused] = _tampers(kept, "collector_head_refused")  # recorded once, kept to send
    assert f"another event at seq {head + 1}" in refused.detail
    stored = host_events(site.store, HOST)
    assert [e.agent_status.state for e in stored if e.seq == head + 1] == ["all quiet"]
    assert len(stored) == head + 1  # nothing of this host's was taken meanwhile


def test_a_collector_that_lost_its_tail_gets_it_again(site: Site, store_url: str) -> None:
    head = _streamed(site, 6)
    before = {e.seq: chain.event_hash(e) for e in host_events(site.store, HOST)}
    raw_sql(store_url, f"DELETE FROM events WHERE host_id = '{HOST}' AND seq > {head - 3}")
    assert site.store.head(HOST)[0] == head - 3  # type: ignore[index]
    site.start()
    agent = site.agent()
    try:
        wait_for(lambda: (site.store.head(HOST) or (0, b""))[0] > head + 1)
        wait_for(lambda: bool(_tampers(host_events(site.store, HOST), "collector_lost_events")))
    finally:
        agent.stop()
    after = {e.seq: chain.event_hash(e) for e in host_events(site.store, HOST)}
    assert all(after[seq] == h for seq, h in before.items())  # the same events, again
    [lost] = _tampers(host_events(site.store, HOST), "collector_lost_events")
    assert f"ends at seq {head - 3}, below seq {head}" in lost.detail
