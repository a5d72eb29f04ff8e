"""The network sensor against the real kernel, in private network namespaces.

Every test makes its own namespace (a unique name, removed in teardown) and changes
links, addresses and routes only there, with pyroute2, so the host's interfaces are
never touched. Wireless and USB links cannot be created on this kernel: a fake sysfs
tree marks a veth as one, which is what the sensor reads to classify. Waits have
deadlines; nothing asserts how fast an event came.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from baomi.v1 import events_pb2

from agent.errors import ConfigError
from agent.sensors.network import NetworkConfig, NetworkSensor, classify_link

DEADLINE = 10.0  # seconds to wait for an event or a state
IFF_UP = 0x1


def _why_not() -> str | None:
    """One line saying why namespace tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root: creating network namespaces needs CAP_SYS_ADMIN"
    try:
        from pyroute2 import netns
    except ImportError:
        return "pyroute2 is not installed"
    name = f"baomi-probe-{uuid.uuid4().hex[:8]}"
    try:
        netns.create(name)
        netns.remove(name)
    except OSError as e:
        return f"cannot create a network namespace here: {e}"
    return None


_SKIP = _why_not()
pytestmark = [pytest.mark.root, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]


class Sink:
    """A collecting event sink; ``gate`` cleared makes the sensor's thread wait in it."""

    def __init__(self) -> None:
        self.events: list[events_pb2.Event] = []
        self._cond = threading.Condition()
        self.gate = threading.Event()
        self.gate.set()
        self.blocked = threading.Event()

    def __call__(self, event: events_pb2.Event) -> None:
        if not self.gate.is_set():
            self.blocked.set()
            self.gate.wait(DEADLINE)
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(
        self, match: Callable[[events_pb2.Event], bool], timeout: float = DEADLINE
    ) -> events_pb2.Event:
        """The first event (seen so far or arriving before the deadline) that matches."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for event in self.events[seen:]:
                    if match(event):
                        return event
                seen = len(self.events)
                left = deadline - time.monotonic()
                if left <= 0:
                    got = [_brief(e) for e in self.events]
                    raise AssertionError(f"no matching event within {timeout} s; got {got}")
                self._cond.wait(left)

    def network(self, action: str, interface: str) -> events_pb2.Network:
        """Wait for the network event ``action`` on ``interface``."""
        event = self.wait_for(
            lambda e: (
                e.WhichOneof("kind") == "network"
                and e.network.action == action
                and e.network.interface == interface
            )
        )
        return event.network

    def actions(self, interface: str) -> list[str]:
        """The network actions seen so far on ``interface``."""
        with self._cond:
            return [
                e.network.action
                for e in self.events
                if e.WhichOneof("kind") == "network" and e.network.interface == interface
            ]


def _brief(event: events_pb2.Event) -> str:
    kind = event.WhichOneof("kind")
    if kind == "network":
        n = event.network
        return f"{n.action} {n.interface} {n.link_kind} {n.gateway}".strip()
    return str(kind)


Start = Callable[..., tuple[NetworkSensor, Sink]]


@pytest.fixture
def start(ns: str, tmp_path: Path) -> Iterator[Start]:
    """Start a sensor on the namespace (keyword overrides of NetworkConfig); stopped after."""
    sensors: list[NetworkSensor] = []

    def _start(**overrides: object) -> tuple[NetworkSensor, Sink]:
        settings: dict[str, object] = {"netns": ns, "sysfs": tmp_path / "sys"}
        settings.update(overrides)
        sink = Sink()
        sensor = NetworkSensor(NetworkConfig(**settings), sink)  # type: ignore[arg-type]
        sensors.append(sensor)
        sensor.start()
        assert sensor.wait_synced(DEADLINE), sensor.health()
        return sensor, sink

    try:
        yield _start
    finally:
        for sensor in sensors:
            sensor.stop()


def _fake_wireless(sysfs: Path, name: str) -> None:
    """Mark ``name`` wireless the way cfg80211 does: a phy80211 link and a wireless dir."""
    phy = sysfs / "devices" / "pci0000:00" / "0000:00:14.3" / "ieee80211" / "phy0"
    net = sysfs / "devices" / "pci0000:00" / "0000:00:14.3" / "net" / name
    phy.mkdir(parents=True)
    (net / "wireless").mkdir(parents=True)
    (net / "phy80211").symlink_to(os.path.relpath(phy, net))
    (net / "device").symlink_to(os.path.relpath(net.parent.parent, net))
    (sysfs / "class" / "net").mkdir(parents=True, exist_ok=True)
    (sysfs / "class" / "net" / name).symlink_to(os.path.relpath(net, sysfs / "class" / "net"))


def _fake_usb(sysfs: Path, name: str) -> None:
    """Give ``name`` a device on a USB bus, as cdc_ether or rndis_host do (tethering)."""
    interface = sysfs / "devices" / "pci0000:00" / "0000:00:14.0" / "usb1" / "1-2" / "1-2:1.0"
    net = interface / "net" / name
    net.mkdir(parents=True)
    (net / "device").symlink_to(os.path.relpath(interface, net))
    (sysfs / "class" / "net").mkdir(parents=True, exist_ok=True)
    (sysfs / "class" / "net" / name).symlink_to(os.path.relpath(net, sysfs / "class" / "net"))


def _is_up(ipr: Any, name: str) -> bool:
    index = ipr.link_lookup(ifname=name)[0]
    return bool(ipr.link("get", index=index)[0]["flags"] & IFF_UP)


def _veth(ipr: Any, name: str, peer: str, *, up: bool = False) -> int:
    ipr.link("add", ifname=name, kind="veth", peer=peer)
    if up:
        ipr.link("set", ifname=name, state="up")
    return int(ipr.link_lookup(ifname=name)[0])


def _default_routes(ipr: Any) -> list[str]:
    return [
        str(r.get("gateway")) for r in ipr.route("dump") if r["dst_len"] == 0 and r.get("gateway")
    ]


# -- links -----------------------------------------------------------------------------
def test_existing_links_are_reported_at_start(start: Start) -> None:
    _, sink = start()
    lo = sink.network("link_new", "lo")
    assert lo.link_kind == "loopback"
    assert not lo.violation


def test_new_veth_and_its_state(start: Start, ipr: Any) -> None:
    _, sink = start()
    _veth(ipr, "v0", "v1")
    new = sink.network("link_new", "v0")
    assert new.link_kind == "veth"
    assert not new.violation
    assert sink.network("link_new", "v1").link_kind == "veth"

    ipr.link("set", ifname="v0", state="up")
    up = sink.network("link_up", "v0")
    assert not up.violation
    ipr.link("set", ifname="v0", state="down")
    sink.network("link_down", "v0")
    ipr.link("del", ifname="v0")
    sink.network("link_del", "v0")
    sink.network("link_del", "v1")  # a veth pair goes together
    assert sink.actions("v0") == ["link_new", "link_up", "link_down", "link_del"]


def test_bridge_tun_and_tap_are_classified(start: Start, ipr: Any) -> None:
    _, sink = start()
    ipr.link("add", ifname="br0", kind="bridge")
    ipr.link("add", ifname="tun0", kind="tuntap", mode="tun")
    ipr.link("add", ifname="tap0", kind="tuntap", mode="tap")
    assert sink.network("link_new", "br0").link_kind == "bridge"
    assert sink.network("link_new", "tun0").link_kind == "tun"
    assert sink.network("link_new", "tap0").link_kind == "tap"


def test_addresses_are_reported(start: Start, ipr: Any) -> None:
    _, sink = start()
    index = _veth(ipr, "v0", "v1", up=True)
    ipr.addr("add", index=index, address="10.7.0.2", prefixlen=24)
    added = sink.network("address_add", "v0")
    assert added.address == "10.7.0.2/24"
    ipr.addr("del", index=index, address="10.7.0.2", prefixlen=24)
    assert sink.network("address_del", "v0").address == "10.7.0.2/24"


# -- default routes --------------------------------------------------------------------
def test_default_route_through_a_configured_gateway(start: Start, ipr: Any) -> None:
    _, sink = start(gateways=("10.7.0.1",))
    index = _veth(ipr, "v0", "v1", up=True)
    ipr.addr("add", index=index, address="10.7.0.2", prefixlen=24)
    ipr.route("add", dst="0.0.0.0/0", gateway="10.7.0.1")
    added = sink.network("default_route_add", "v0")
    assert added.gateway == "10.7.0.1"
    assert not added.violation
    ipr.route("del", dst="0.0.0.0/0", gateway="10.7.0.1")
    removed = sink.network("default_route_del", "v0")
    assert removed.gateway == "10.7.0.1"


def test_default_route_through_another_gateway_is_a_violation(start: Start, ipr: Any) -> None:
    _, sink = start(gateways=("10.7.0.1",))
    index = _veth(ipr, "v0", "v1", up=True)
    ipr.addr("add", index=index, address="10.7.0.2", prefixlen=24)
    ipr.route("add", dst="0.0.0.0/0", gateway="10.7.0.254")
    event = sink.wait_for(
        lambda e: e.network.action == "default_route_add" and e.network.gateway == "10.7.0.254"
    )
    assert event.severity == events_pb2.SEVERITY_HIGH
    assert event.network.violation
    assert "10.7.0.254" in event.network.reason
    assert not event.network.enforced
    assert _default_routes(ipr) == ["10.7.0.254"]  # reported, not enforced
    ipr.route("del", dst="0.0.0.0/0", gateway="10.7.0.254")
    assert sink.network("default_route_del", "v0").gateway == "10.7.0.254"


def test_ipv6_default_route_and_other_tables_count(start: Start, ipr: Any) -> None:
    _, sink = start(gateways=("10.7.0.1",))
    index = _veth(ipr, "v0", "v1", up=True)
    ipr.addr("add", index=index, address="10.7.0.2", prefixlen=24)
    ipr.route("add", dst="0.0.0.0/0", gateway="10.7.0.1", table=100)
    assert not sink.network("default_route_add", "v0").violation
    ipr.addr("add", index=index, address="fd00::2", prefixlen=64)
    ipr.route("add", dst="::/0", gateway="fd00::1", family=10)
    v6 = sink.wait_for(
        lambda e: e.network.action == "default_route_add" and "::" in e.network.address
    )
    assert v6.network.gateway == "fd00::1"
    assert v6.network.violation


def test_default_route_is_reported_again_after_a_link_flap(start: Start, ipr: Any) -> None:
    # IPv4 drops the routes of a link going down without a notification.
    _, sink = start(gateways=("10.7.0.1",))
    index = _veth(ipr, "v0", "v1", up=True)
    ipr.addr("add", index=index, address="10.7.0.2", prefixlen=24)
    ipr.route("add", dst="0.0.0.0/0", gateway="10.7.0.1")
    sink.network("default_route_add", "v0")
    ipr.link("set", index=index, state="down")
    sink.network("default_route_del", "v0")
    ipr.link("set", index=index, state="up")
    ipr.route("add", dst="0.0.0.0/0", gateway="10.7.0.1")
    sink.wait_for(lambda e: sink.actions("v0").count("default_route_add") == 2)


def test_enforcing_deletes_an_unauthorised_default_route(start: Start, ipr: Any) -> None:
    _, sink = start(gateways=("10.7.0.1",), enforce=True)
    index = _veth(ipr, "v0", "v1", up=True)
    ipr.addr("add", index=index, address="10.7.0.2", prefixlen=24)
    ipr.route("add", dst="0.0.0.0/0", gateway="10.7.0.1")
    assert not sink.network("default_route_add", "v0").enforced
    ipr.route("add", dst="0.0.0.0/0", gateway="10.7.0.9", table=50)
    bad = sink.wait_for(
        lambda e: e.network.action == "default_route_add" and e.network.gateway == "10.7.0.9"
    )
    assert bad.network.violation
    assert bad.network.enforced
    assert "deleted" in bad.network.reason
    sink.wait_for(
        lambda e: e.network.action == "default_route_del" and e.network.gateway == "10.7.0.9"
    )
    assert _default_routes(ipr) == ["10.7.0.1"]  # the configured one stays


# -- wireless and USB ------------------------------------------------------------------
def test_wireless_link_up_is_a_violation(start: Start, ipr: Any, tmp_path: Path) -> None:
    _fake_wireless(tmp_path / "sys", "wlan0")
    _, sink = start()
    _veth(ipr, "wlan0", "peer0")
    new = sink.network("link_new", "wlan0")
    assert new.link_kind == "wireless"
    assert not new.violation  # present but down: not yet
    ipr.link("set", ifname="wlan0", state="up")
    event = sink.wait_for(
        lambda e: e.network.action == "link_up" and e.network.interface == "wlan0"
    )
    assert event.severity == events_pb2.SEVERITY_HIGH
    assert event.network.violation
    assert "wireless" in event.network.reason
    assert not event.network.enforced
    assert _is_up(ipr, "wlan0")


def test_enforcing_brings_a_wireless_link_down(start: Start, ipr: Any, tmp_path: Path) -> None:
    _fake_wireless(tmp_path / "sys", "wlan0")
    sensor, sink = start(enforce=True)
    _veth(ipr, "wlan0", "peer0")
    sink.network("link_new", "wlan0")
    ipr.link("set", ifname="wlan0", state="up")
    up = sink.network("link_up", "wlan0")
    assert up.violation
    assert up.enforced
    assert "brought down" in up.reason
    sink.network("link_down", "wlan0")
    assert not _is_up(ipr, "wlan0")
    assert sensor.health().state == "ok"


def test_wireless_link_up_before_start_is_brought_down(
    start: Start, ipr: Any, tmp_path: Path
) -> None:
    _fake_wireless(tmp_path / "sys", "wlan0")
    _veth(ipr, "wlan0", "peer0", up=True)
    _, sink = start(enforce=True)
    up = sink.network("link_up", "wlan0")
    assert up.violation
    assert up.enforced
    sink.network("link_down", "wlan0")
    assert not _is_up(ipr, "wlan0")


def test_usb_link_is_a_violation_existing_or_new(start: Start, ipr: Any, tmp_path: Path) -> None:
    _fake_usb(tmp_path / "sys", "usb0")
    _fake_usb(tmp_path / "sys", "enx0")
    _veth(ipr, "usb0", "peer0")  # present before the sensor starts
    _, sink = start()
    existing = sink.wait_for(
        lambda e: e.network.action == "link_new" and e.network.interface == "usb0"
    )
    assert existing.severity == events_pb2.SEVERITY_HIGH
    assert existing.network.violation
    assert existing.network.link_kind == "usb"
    assert "USB" in existing.network.reason

    _veth(ipr, "enx0", "peer1")
    new = sink.network("link_new", "enx0")
    assert new.violation
    assert new.link_kind == "usb"
    ipr.link("set", ifname="enx0", state="up")
    assert sink.network("link_up", "enx0").violation


def test_classification_from_sysfs(tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    _fake_wireless(sysfs, "wlan0")
    _fake_usb(sysfs, "usb0")
    _fake_usb(sysfs, "wlx0")
    (sysfs / "class" / "net" / "wlx0" / "wireless").mkdir()  # a USB Wi-Fi dongle
    cases = [
        ("wlan0", {"ifi_type": 1, "flags": 0}, ("wireless", False)),
        ("usb0", {"ifi_type": 1, "flags": 0}, ("usb", True)),
        ("wlx0", {"ifi_type": 1, "flags": 0}, ("wireless", True)),
        ("mon0", {"ifi_type": 803, "flags": 0}, ("wireless", False)),
        ("lo", {"ifi_type": 772, "flags": 0x8}, ("loopback", False)),
        ("eth0", {"ifi_type": 1, "flags": 0}, ("ethernet", False)),
        ("ppp0", {"ifi_type": 512, "flags": 0}, ("ppp", False)),
        ("wg0", {"ifi_type": 65534, "flags": 0, "info_kind": "wireguard"}, ("wireguard", False)),
        ("tap1", {"ifi_type": 1, "flags": 0, "info_kind": "tun", "tun_type": 2}, ("tap", False)),
        ("x0", {"ifi_type": 42, "flags": 0}, ("arphrd-42", False)),
    ]
    for name, attrs, expected in cases:
        assert classify_link(sysfs, name, **attrs) == expected, name  # type: ignore[arg-type]


def test_classification_finds_a_renamed_link_by_index(tmp_path: Path) -> None:
    # udev renamed eth1 to enx0 before the sensor read the message that says eth1.
    sysfs = tmp_path / "sys"
    _fake_usb(sysfs, "enx0")
    (sysfs / "class" / "net" / "enx0" / "ifindex").write_text("7\n")
    assert classify_link(sysfs, "eth1", ifi_type=1, flags=0, index=7) == ("usb", True)
    assert classify_link(sysfs, "eth1", ifi_type=1, flags=0, index=8) == ("ethernet", False)


# -- faults ----------------------------------------------------------------------------
def test_resync_after_the_kernel_drops_messages(start: Start, ipr: Any) -> None:
    """A full receive buffer (ENOBUFS) makes the sensor reconnect and re-read everything."""
    sensor, sink = start(rcvbuf=4096, backoff_min=0.05)
    _veth(ipr, "gone0", "gone1")
    sink.network("link_new", "gone0")
    sink.gate.clear()  # the sensor's thread stops reading at its next event
    _veth(ipr, "v0", "v1")
    assert sink.blocked.wait(DEADLINE)
    for n in range(200):  # far more than 8 KiB of notifications
        ipr.link("set", ifname="v0", state="up" if n % 2 == 0 else "down")
    _veth(ipr, "late0", "late1", up=True)  # made during the outage
    ipr.link("del", ifname="gone0")
    sink.gate.set()

    tamper = sink.wait_for(lambda e: e.WhichOneof("kind") == "tamper")
    assert tamper.tamper.kind == "netlink_resync"
    assert "ENOBUFS" in tamper.tamper.detail
    assert sink.network("link_new", "late0").link_kind == "veth"
    sink.network("link_up", "late0")
    sink.network("link_del", "gone0")
    assert sensor.resyncs >= 1
    sink.wait_for(lambda e: sensor.health().state == "ok")

    _veth(ipr, "after0", "after1")  # and it keeps following changes
    sink.network("link_new", "after0")


def test_missing_namespace_degrades_health(tmp_path: Path) -> None:
    sink = Sink()
    config = NetworkConfig(netns=f"baomi-absent-{uuid.uuid4().hex[:8]}", sysfs=tmp_path)
    sensor = NetworkSensor(config, sink)
    sensor.start()
    try:
        assert not sensor.wait_synced(1.0)
        health = sensor.health()
        assert health.state == "degraded"
        assert "opening rtnetlink" in health.detail
        assert "ENOENT" in health.detail
    finally:
        sensor.stop()
    assert not Path(f"/run/netns/{config.netns}").exists()  # never created by the sensor


def test_bad_gateway_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="gateways"):
        NetworkSensor(NetworkConfig(gateways=("10.0.0.300",)), Sink())
