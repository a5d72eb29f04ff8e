"""Network and process sensors inside the real agent: their events reach the collector."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from baomi.v1 import events_pb2

from agent.core import AgentConfig
from agent.identity import enroll
from collector.server import create_token
from collector.store.sqlite import SQLiteStore
from tests.collector_harness import RunningCollector, init_pki
from tests.integration.test_agent import FAST, AgentThread, host_events, wait_for

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, /proc)"),
]


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[RunningCollector]:
    store = SQLiteStore(tmp_path / "c.db")
    init_pki(tmp_path / "pki")
    running = RunningCollector(store, tmp_path / "pki", checkpoint_seconds=3600)
    try:
        yield running
    finally:
        running.stop()
        store.close()


def _agent(
    collector: RunningCollector, tmp_path: Path, sensors: dict[str, dict[str, object]]
) -> AgentThread:
    state = tmp_path / "agent"
    enroll(
        state,
        collector.address,
        create_token(collector.store, "ws-01"),
        (collector.pki_dir / "ca.pem").read_bytes(),
        collector.enroll_address,
    )
    return AgentThread(
        AgentConfig(state_dir=state, heartbeat_seconds=3600, stream=FAST, sensors=sensors)
    )


def _network(collector: RunningCollector) -> list[events_pb2.Event]:
    return [e for e in host_events(collector.store, "ws-01") if e.HasField("network")]


def test_link_and_default_route_reach_the_collector(
    collector: RunningCollector,
    tmp_path: Path,
    ns: str,
    ipr: Any,
) -> None:
    agent = _agent(collector, tmp_path, {"network": {"netns": ns, "gateways": ["10.9.0.1"]}})
    try:
        ipr.link("add", ifname="uplink0", kind="veth", peer="uplink1")
        idx = ipr.link_lookup(ifname="uplink0")[0]
        ipr.link("set", index=idx, state="up")
        ipr.addr("add", index=idx, address="10.8.0.2", prefixlen=24)
        ipr.route("add", dst="0.0.0.0/0", gateway="10.8.0.1")
        wait_for(lambda: any(e.network.action == "default_route_add" for e in _network(collector)))
    finally:
        agent.stop()
    events = _network(collector)
    actions = {(e.network.action, e.network.interface) for e in events}
    assert ("link_new", "uplink0") in actions and ("link_up", "uplink0") in actions
    route = next(e for e in events if e.network.action == "default_route_add")
    assert route.network.violation and route.network.gateway == "10.8.0.1"
    assert route.severity == events_pb2.SEVERITY_HIGH


def test_recorder_holding_a_capture_device_reaches_the_collector(
    collector: RunningCollector, tmp_path: Path
) -> None:
    dev = tmp_path / "dev" / "snd"
    dev.mkdir(parents=True)
    pcm = dev / "pcmC0D0c"
    pcm.write_bytes(b"")
    agent = _agent(
        collector,
        tmp_path,
        {
            "process": {
                "interval": 0.2,
                "capture_devices": [str(tmp_path / "dev" / "snd" / "pcmC*D*c")],
            }
        },
    )
    holder = subprocess.Popen(
        # Not a known recorder's name: found only because it holds the capture device,
        # so the event must name the device (a known name could be reported before the
        # device is open).
        ["voice-memo", "-c", f"import time; f = open({str(pcm)!r}); time.sleep(30)"],
        executable="/usr/bin/python3",
    )
    try:
        wait_for(
            lambda: any(e.process.pid == holder.pid for e in host_events(collector.store, "ws-01"))
        )
    finally:
        holder.kill()
        holder.wait(10)
        agent.stop()
    found = next(
        e.process for e in host_events(collector.store, "ws-01") if e.process.pid == holder.pid
    )
    assert list(found.devices) == [str(pcm)]
