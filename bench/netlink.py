"""Network sensor: how long from a link change to its event, beside bare pyroute2.

In a private network namespace (created here, removed at the end) a veth is toggled up
and down; each time, the clock starts when pyroute2's ``link set`` call returns and
stops when the sink receives the ``link_up``/``link_down`` event. The next toggle waits
for that event, so the figure is latency, not queueing. The same toggles are then timed
with a bare pyroute2 listener (an ``AsyncIPRoute`` subscription that only notes the
state) for the ratio: what the sensor's own work costs. The kernel may deliver the
notification before the call's acknowledgement, so a latency can be below zero.

Last, the time from ``start()`` to the end of the first full dump with 200 links.

``python -m bench.netlink`` prints the figures (needs root); ``run()`` returns them.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from baomi.v1 import events_pb2

from agent.sensors.network import RTM_NEWLINK, RTMGRP_LINK, NetworkConfig, NetworkSensor

IFF_UP = 0x1
WAIT_S = 10.0  # seconds one toggle may take to be reported before the bench gives up
IFNAME = "bench0"


class _Waiter:
    """Where a listener reports (up or down, when); the toggler waits on it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._state: bool | None = None
        self._at = 0.0

    def saw(self, up: bool) -> None:
        now = time.perf_counter()
        with self._cond:
            if self._state is not up:
                self._state, self._at = up, now
                self._cond.notify_all()

    def wait(self, up: bool) -> float:
        """When the listener saw the link reach ``up``."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._state is up, WAIT_S):
                raise TimeoutError(f"no {'link_up' if up else 'link_down'} in {WAIT_S:.0f} s")
            return self._at


@dataclass
class _Latencies:
    from_call: list[float]  # from just before the pyroute2 call
    from_return: list[float]  # from its return (the kernel may notify before it acks)


@contextlib.contextmanager
def _namespace() -> Iterator[str]:
    from pyroute2 import netns

    name = f"baomi-bench-{uuid.uuid4().hex[:8]}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.remove(name)


def _toggle(ipr: Any, index: int, waiter: _Waiter, toggles: int) -> _Latencies:
    """Latencies (seconds) of ``toggles`` state changes of link ``index``."""
    out = _Latencies([], [])
    for n in range(toggles):
        up = n % 2 == 0
        called = time.perf_counter()
        ipr.link("set", index=index, state="up" if up else "down")
        returned = time.perf_counter()
        seen = waiter.wait(up)
        out.from_call.append(seen - called)
        out.from_return.append(seen - returned)
    return out


def _sensor_latencies(ns: str, ipr: Any, index: int, toggles: int) -> _Latencies:
    waiter = _Waiter()

    def sink(event: events_pb2.Event) -> None:
        n = event.network
        if n.interface == IFNAME and n.action in ("link_up", "link_down"):
            waiter.saw(n.action == "link_up")

    with tempfile.TemporaryDirectory() as sysfs:
        sensor = NetworkSensor(NetworkConfig(netns=ns, sysfs=Path(sysfs)), sink)
        sensor.start()
        try:
            if not sensor.wait_synced(WAIT_S):
                raise TimeoutError(f"the sensor did not sync: {sensor.health()}")
            waiter.saw(False)
            return _toggle(ipr, index, waiter, toggles)
        finally:
            sensor.stop()


def _bare_latencies(ns: str, ipr: Any, index: int, toggles: int) -> _Latencies:
    """The same toggles seen by a bare pyroute2 subscription in a thread of its own."""
    from pyroute2 import AsyncIPRoute

    waiter = _Waiter()
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def listen() -> None:
        listener = AsyncIPRoute(netns=ns, flags=0)
        try:
            await listener.bind(groups=RTMGRP_LINK)
            ready.set()
            while True:
                for msg in [m async for m in listener.get()]:
                    if msg["header"]["type"] == RTM_NEWLINK and msg["index"] == index:
                        waiter.saw(bool(msg["flags"] & IFF_UP))
        finally:
            listener.close()

    def thread_main() -> None:
        loop = asyncio.new_event_loop()
        box["loop"] = loop
        box["task"] = loop.create_task(listen())
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(box["task"])
        loop.close()

    thread = threading.Thread(target=thread_main, name="bench-bare-listener", daemon=True)
    thread.start()
    try:
        if not ready.wait(WAIT_S):
            raise TimeoutError("the bare listener did not subscribe")
        waiter.saw(False)
        return _toggle(ipr, index, waiter, toggles)
    finally:
        loop: asyncio.AbstractEventLoop = box["loop"]
        loop.call_soon_threadsafe(box["task"].cancel)
        thread.join(WAIT_S)


def _start_time(ns: str, ipr: Any, links: int) -> float:
    """Seconds from start() to the end of the first dump with ``links`` more links."""
    for n in range(links // 2):
        ipr.link("add", ifname=f"d{n}a", kind="veth", peer=f"d{n}b")
    with tempfile.TemporaryDirectory() as sysfs:
        sensor = NetworkSensor(NetworkConfig(netns=ns, sysfs=Path(sysfs)), lambda e: None)
        t0 = time.perf_counter()
        sensor.start()
        try:
            if not sensor.wait_synced(60):
                raise TimeoutError(f"the sensor did not sync: {sensor.health()}")
            return time.perf_counter() - t0
        finally:
            sensor.stop()


def _ms(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] * 1e3


def run(toggles: int = 200, links: int = 200) -> list[tuple[str, float, str]]:
    """Measure; (figure, value, unit) rows."""
    from pyroute2 import IPRoute

    with _namespace() as ns, IPRoute(netns=ns, flags=0) as ipr:
        ipr.link("add", ifname=IFNAME, kind="veth", peer="bench1")
        index = ipr.link_lookup(ifname=IFNAME)[0]
        bare = _bare_latencies(ns, ipr, index, toggles)
        sensor = _sensor_latencies(ns, ipr, index, toggles)
        start = _start_time(ns, ipr, links)
    per = f"ms over {toggles} toggles"
    return [
        ("netlink: sensor, call return -> event p50", _ms(sensor.from_return, 50), per),
        ("netlink: sensor, call return -> event p99", _ms(sensor.from_return, 99), "ms"),
        ("netlink: sensor, call -> event p50", _ms(sensor.from_call, 50), per),
        ("netlink: sensor, call -> event p99", _ms(sensor.from_call, 99), "ms"),
        ("netlink: bare pyroute2, call -> event p50", _ms(bare.from_call, 50), per),
        ("netlink: bare pyroute2, call -> event p99", _ms(bare.from_call, 99), "ms"),
        (
            "netlink: sensor / bare, call -> event p50",
            _ms(sensor.from_call, 50) / _ms(bare.from_call, 50),
            "x",
        ),
        ("netlink: start to first full dump", start * 1e3, f"ms with {links + 3} links"),
    ]


def main() -> int:
    """Print the figures."""
    rows = run()
    width = max(len(r[0]) for r in rows)
    for name, value, unit in rows:
        print(f"{name.ljust(width)}  {value:10.3f}  {unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
