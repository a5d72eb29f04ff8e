"""The USB sensor inside the real agent: each decision reaches the collector as an event,
and a device rule pushed from the collector changes what the agent allows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from baomi.v1 import events_pb2

from agent.core import AgentConfig
from agent.identity import enroll
from collector.server import create_token
from collector.store.sqlite import SQLiteStore
from tests.collector_harness import RunningCollector, init_pki
from tests.integration.test_agent import FAST, AgentThread, host_events, wait_for
from tests.integration.usb.conftest import Policies, Testbed, asset, shared
from tests.integration.usb.test_usb_sensor import KEYBOARD, SONY_PHONE

pytestmark = pytest.mark.umockdev

DENY, ALLOW = events_pb2.DECISION_DENY, events_pb2.DECISION_ALLOW


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


@pytest.fixture
def start_agent(
    collector: RunningCollector, policies: Policies, tmp_path: Path
) -> Iterator[Callable[[], AgentThread]]:
    """Start the agent with the USB sensor (after what the test set up first)."""
    started: list[AgentThread] = []

    def start() -> AgentThread:
        state = tmp_path / "agent"
        token = create_token(collector.store, "ws-01")
        ca = (collector.pki_dir / "ca.pem").read_bytes()
        enroll(state, collector.address, token, ca, collector.enroll_address)
        sensors = {"usb": {"policies": str(policies.path)}}
        config = AgentConfig(state_dir=state, heartbeat_seconds=3600, stream=FAST, sensors=sensors)
        running = AgentThread(config)
        started.append(running)
        wait_for(lambda: any(s.name == "usb" for s in running.agent.sensors))
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def agent(start_agent: Callable[[], AgentThread]) -> AgentThread:
    """The agent, started before the test adds devices."""
    return start_agent()


def _device_events(collector: RunningCollector) -> list[events_pb2.Device]:
    return [e.device for e in host_events(collector.store, "ws-01") if e.HasField("device")]


CASES = [
    # (asset, port suffix is the last path element, allowed, a class it must carry)
    ("stick-registered.umockdev", True, "storage"),
    ("stick-unregistered.umockdev", False, "storage"),
    ("webcam.umockdev", False, "video"),
    ("microphone.umockdev", False, "audio"),
    ("wireless-mic.umockdev", False, "audio"),
    ("iphone.umockdev", False, "phone"),
    ("rndis-tether.umockdev", False, "tethering"),
    ("badusb.umockdev", False, "badusb"),
]


def test_every_decision_reaches_the_collector(
    testbed: Testbed, collector: RunningCollector, agent: AgentThread
) -> None:
    wait_for(lambda: any(s.name == "usb" for s in agent.agent.sensors))
    ports = []
    for name, _, _ in CASES:
        (sys_path,) = testbed.add_file(asset(name))
        ports.append(sys_path.rsplit("/", 1)[1])
    # A device plugged in while the sensor starts is decided by its start sweep
    # ("present") as well as, or instead of, by its udev event ("add"): either decides.
    deciding = ("add", "present")

    def decided() -> dict[str, events_pb2.Device]:
        return {d.port: d for d in _device_events(collector) if d.action in deciding}

    wait_for(lambda: set(ports) <= set(decided()))
    by_port = decided()
    for (name, allowed, cls), port in zip(CASES, ports, strict=True):
        event = by_port[port]
        assert event.decision == (ALLOW if allowed else DENY), (name, event.reason)
        assert cls in event.device_class.split(","), (name, event.device_class)


def test_phone_recording_is_blocked_and_recorded(
    testbed: Testbed, collector: RunningCollector, agent: AgentThread
) -> None:
    recording = shared("umockdev/sony-xperia-mini-pro.umockdev")
    wait_for(lambda: any(s.name == "usb" for s in agent.agent.sensors))
    testbed.add_file(recording)
    sys_path = SONY_PHONE
    port = sys_path.rsplit("/", 1)[1]
    wait_for(lambda: any(d.port == port for d in _device_events(collector)))
    event = next(d for d in _device_events(collector) if d.port == port)
    assert event.decision == DENY and testbed.attribute(sys_path, "authorized") == "0"


def _event_for(collector: RunningCollector, sys_path: str) -> events_pb2.Device:
    port = sys_path.rsplit("/", 1)[1]
    wait_for(lambda: any(d.port == port for d in _device_events(collector)))
    return next(d for d in _device_events(collector) if d.port == port)


def test_keyboard_present_before_start_is_evaluated_and_allowed(
    testbed: Testbed, collector: RunningCollector, start_agent: Callable[[], AgentThread]
) -> None:
    testbed.add_file(shared("umockdev/usbkbd.umockdev"))
    start_agent()
    event = _event_for(collector, KEYBOARD)
    assert event.decision == ALLOW and "hid" in event.device_class.split(",")
    assert testbed.attribute(KEYBOARD, "authorized") == "1"


def test_imported_usbguard_rules_are_honoured(
    testbed: Testbed,
    collector: RunningCollector,
    policies: Policies,
    start_agent: Callable[[], AgentThread],
) -> None:
    policies.rules(
        "# /etc/usbguard/rules.conf of this host\n"
        'allow id 046d:0825 hash "eVWBB1xn5qxtw/2xQZcwnLr7NPzOSaShlkQk90suSsE=" '
        "with-interface equals { 0e:01:00 0e:02:00 }\n"
    )
    start_agent()
    (sys_path,) = testbed.add_file(asset("webcam.umockdev"))
    event = _event_for(collector, sys_path)
    assert event.decision == ALLOW and event.rule.startswith("allow id 046d:0825")
    assert testbed.attribute(sys_path, "authorized") == "1"
