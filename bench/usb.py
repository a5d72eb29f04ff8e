"""Blocked before use: USB ``add`` to ``authorized=0`` latency of the USB sensor.

A umockdev testbed (real libudev, real pyudev monitor, fake sysfs) holds ``--devices``
unregistered USB sticks, spread over buses and ports. The agent's ``UsbSensor`` starts
with Baomi's default policy and blocks them all in its start sweep (the first figure:
present devices decided per second). Then, one device at a time, ``authorized`` is set
back to 1 without a uevent and the clock starts at ``Testbed.uevent(path, "add")``; it
stops when the sensor hands over the device's event, which it does right after writing
``0`` to ``authorized`` (the file is then read back to check). p50, p99 and max over all
devices; target p99 <= 50 ms. Last, the devices are re-added in bursts of eight (a
hub's worth arriving together), each timed from its own uevent.

The event sink is an in-memory list, so spooling is not in the figure; it would not be
in a real block either, since the sensor writes ``authorized`` before the event.

umockdev needs ``LD_PRELOAD`` from process start: ``run()`` outside
``umockdev-wrapper`` runs this module again under it and returns the child's rows.
``python -m bench.usb [--devices N]`` prints the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.proc import BenchError

DEVICES = 200  # at least 200 devices for a p99
TARGET_P99_MS = 50.0
WAIT_S = 10.0  # longest wait for one device's event before the run is called failed
# Devices arriving together. umockdev hands uevents over a unix datagram socket whose
# queue is net.unix.max_dgram_qlen (often 10) and aborts when it is full; the kernel's
# netlink queue is the monitor's receive buffer (4 MiB), so larger bursts are real but
# cannot be emulated here.
BURST = 8
PORTS_PER_BUS = 15  # a root hub has at most 15 ports
UNDER_UMOCKDEV = "libumockdev-preload" in os.environ.get("LD_PRELOAD", "")
TEMPLATE = (
    Path(__file__).resolve().parent.parent
    / "tests"
    / "assets"
    / "usb"
    / ("stick-unregistered.umockdev")
)


def _device_text(template: str, index: int) -> tuple[str, str]:
    """umockdev text of stick ``index`` (its own bus, port and serial) and its sys path."""
    bus, port = 10 + index // PORTS_PER_BUS, 1 + index % PORTS_PER_BUS
    path = f"/devices/pci0000:00/0000:00:14.0/usb{bus}/{bus}-{port}"
    serial = f"BENCH{index:015d}"
    text = (
        template.replace("/devices/pci0000:00/0000:00:14.0/usb3/3-2", path)
        .replace("E0D55EA574B1F5B0A9C2", serial)
        .replace("BUSNUM=003", f"BUSNUM={bus:03d}")
    )
    return text, "/sys" + path


class _Clock:
    """The sink: stamps the moment the sensor hands over each device's ``add`` event."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.stamps: dict[tuple[str, str], int] = {}
        self.denied = 0

    def __call__(self, event: Any) -> None:
        now = time.perf_counter_ns()  # first: the write to authorized just happened
        if event.WhichOneof("kind") != "device":
            return
        key = (event.device.port, event.device.action)
        with self.cond:
            # A second add of a port is a burst's (the first was the one-by-one run's).
            self.stamps[(key[0], "burst") if key in self.stamps else key] = now
            self.denied += event.device.decision == 2  # DECISION_DENY
            self.cond.notify_all()

    def wait(self, keys: list[tuple[str, str]]) -> None:
        deadline = time.monotonic() + WAIT_S
        with self.cond:
            while not all(k in self.stamps for k in keys):
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = [k for k in keys if k not in self.stamps]
                    raise BenchError(f"no event for {len(missing)} device(s), e.g. {missing[0]}")
                self.cond.wait(left)


def _measure(devices: int) -> list[tuple[str, float, str]]:
    """The measurement itself; must run under umockdev-wrapper."""
    import gi

    gi.require_version("UMockdev", "1.0")
    from gi.repository import UMockdev

    from agent.sensors.usb import UsbConfig, UsbSensor

    logging.disable(logging.WARNING)  # a blocked device is not news here
    template = TEMPLATE.read_text()
    testbed = UMockdev.Testbed.new()
    sys_dir = Path(testbed.get_sys_dir())
    work = Path(tempfile.mkdtemp(prefix="baomi-bench-usb-"))
    sensor = None
    try:
        paths = []
        for index in range(devices):
            text, path = _device_text(template, index)
            testbed.add_from_string(text)
            paths.append(path)
        ports = [p.rsplit("/", 1)[1] for p in paths]

        def authorized(path: str) -> str:
            return (sys_dir.parent / path.lstrip("/") / "authorized").read_text().strip()

        clock = _Clock()
        sensor = UsbSensor(UsbConfig(policies=work), clock)
        started = time.perf_counter_ns()
        sensor.start()
        if sensor.health().state != "ok":
            raise BenchError(f"the USB sensor did not start: {sensor.health().detail}")
        clock.wait([(p, "present") for p in ports])
        sweep_s = (max(clock.stamps.values()) - started) / 1e9
        if any(authorized(p) != "0" for p in paths):
            raise BenchError("the start sweep left a present stick authorized")

        latencies_ms = []
        for path, port in zip(paths, ports, strict=True):
            testbed.set_attribute(path, "authorized", "1")  # plugged in afresh
            sent = time.perf_counter_ns()
            testbed.uevent(path, "add")
            clock.wait([(port, "add")])
            latencies_ms.append((clock.stamps[(port, "add")] - sent) / 1e6)
            if authorized(path) != "0":
                raise BenchError(f"{port}: the event came but authorized is not 0")

        # Bursts: a hub's worth of devices arriving together, each timed from its own
        # uevent; the queue in front of the sensor is what this adds to the figure.
        burst_ms = []
        for first in range(0, devices, BURST):
            group = list(zip(paths, ports, strict=True))[first : first + BURST]
            for path, _ in group:
                testbed.set_attribute(path, "authorized", "1")
            sent_at = {}
            for path, port in group:
                sent_at[port] = time.perf_counter_ns()
                testbed.uevent(path, "add")
            clock.wait([(port, "burst") for _, port in group])
            burst_ms += [(clock.stamps[(port, "burst")] - sent_at[port]) / 1e6 for port in sent_at]
            if any(authorized(path) != "0" for path, _ in group):
                raise BenchError("a stick of a burst was left authorized")
    finally:
        if sensor is not None:
            sensor.stop()
        del testbed
        shutil.rmtree(work, ignore_errors=True)

    return [
        ("usb: add -> authorized=0, p50", _percentile(latencies_ms, 50), "ms"),
        (
            "usb: add -> authorized=0, p99",
            _percentile(latencies_ms, 99),
            f"ms (target <= {TARGET_P99_MS:.0f})",
        ),
        (
            "usb: add -> authorized=0, max",
            max(latencies_ms),
            f"ms (of {devices} devices, one at a time)",
        ),
        (
            f"usb: in bursts of {BURST}, p50",
            _percentile(burst_ms, 50),
            "ms (from each device's own add)",
        ),
        (
            f"usb: in bursts of {BURST}, p99",
            _percentile(burst_ms, 99),
            f"ms (target <= {TARGET_P99_MS:.0f})",
        ),
        ("usb: present devices decided at start", devices / sweep_s, "devices/s"),
    ]


def _percentile(values: list[float], q: int) -> float:
    """The nearest-rank ``q``-th percentile."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, -(-q * len(ordered) // 100) - 1))]


def run(devices: int = DEVICES) -> list[tuple[str, float, str]]:
    """Measure; (figure, value, unit and target) rows. Re-runs under umockdev-wrapper
    when this process is not preloaded with umockdev."""
    if UNDER_UMOCKDEV:
        return _measure(devices)
    wrapper = shutil.which("umockdev-wrapper")
    if wrapper is None:
        raise BenchError("umockdev-wrapper not found: apt install umockdev gir1.2-umockdev-1.0")
    done = subprocess.run(
        [wrapper, sys.executable, "-m", "bench.usb", "--devices", str(devices), "--json"],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"the USB benchmark failed under umockdev-wrapper:\n{done.stderr[-4000:]}")
    return [(str(n), float(v), str(u)) for n, v, u in json.loads(done.stdout)]


def main(argv: list[str] | None = None) -> int:
    """Print the figures (or, with --json, the rows for a parent process)."""
    p = argparse.ArgumentParser(prog="python -m bench.usb", description=__doc__)
    p.add_argument("--devices", type=int, default=DEVICES, help="devices added (>= 200 for p99)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = p.parse_args(argv)
    try:
        rows = run(args.devices)
    except BenchError as e:
        print(f"USB benchmark cannot run: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows))
        return 0
    width = max(len(r[0]) for r in rows)
    for name, value, unit in rows:
        print(f"{name.ljust(width)}  {value:10.2f}  {unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
