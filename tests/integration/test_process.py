"""The process sensor against real processes.

There are no cameras or sound cards here, so the capture device globs point into the
test's own directory (``tmp/dev/snd/pcmC0D0c``, ``tmp/dev/video0``: regular files), and
real child processes hold those open or carry a recorder's command line. Every child
has a timeout and is killed in teardown. Scans are asked for (``check_now``) and waited
on with deadlines; nothing asserts how fast a scan was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil  # type: ignore[import-untyped,unused-ignore]
import pytest
from baomi.v1 import events_pb2

import agent
from agent.errors import ConfigError
from agent.sensors.process import ProcessConfig, ProcessSensor

DEADLINE = 10.0  # seconds to wait for a scan or a child's answer
CHILD_TIMEOUT = 60  # seconds any child process may live
NOBODY = 65534
REPO = Path(agent.__file__).resolve().parent.parent

# A recorder stand-in: opens and closes the paths it is told on stdin, answers "ok".
HOLDER = textwrap.dedent(
    f"""
    import signal, sys
    signal.alarm({CHILD_TIMEOUT})
    held = {{}}
    for line in sys.stdin:
        verb, _, path = line.strip().partition(" ")
        if verb == "open":
            held[path] = open(path, "rb")
        elif verb == "close":
            held.pop(path).close()
        print("ok", flush=True)
    """
)
SLEEPER = f"import time; time.sleep({CHILD_TIMEOUT})"


class Sink:
    """A collecting event sink."""

    def __init__(self) -> None:
        self.events: list[events_pb2.Event] = []
        self._lock = threading.Lock()

    def __call__(self, event: events_pb2.Event) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, pid: int) -> list[events_pb2.Process]:
        """The process events about ``pid`` so far."""
        with self._lock:
            return [e.process for e in self.events if e.process.pid == pid]


class Holder:
    """A child process that opens and closes files when told."""

    def __init__(self, argv0: str) -> None:
        self.proc = subprocess.Popen(
            [argv0, "-c", HOLDER],
            executable=sys.executable if "/" not in argv0 else None,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pid = self.proc.pid

    def tell(self, line: str) -> None:
        """Send one command and wait for its answer."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def end(self) -> None:
        """Close its stdin (it exits) and reap it."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(DEADLINE)


@pytest.fixture
def dev(tmp_path: Path) -> Path:
    """A fake /dev with a capture PCM, a playback PCM and a camera."""
    d = tmp_path / "dev"
    (d / "snd").mkdir(parents=True)
    for name in ("snd/pcmC0D0c", "snd/pcmC0D0p", "video0"):
        (d / name).write_bytes(b"")
    return d


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    """Child processes to kill at the end."""
    procs: list[subprocess.Popen[str]] = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(DEADLINE)


Start = Callable[..., tuple[ProcessSensor, Sink]]


@pytest.fixture
def start(dev: Path) -> Iterator[Start]:
    """Start a sensor looking at the fake /dev (keyword overrides of ProcessConfig)."""
    sensors: list[ProcessSensor] = []

    def _start(**overrides: object) -> tuple[ProcessSensor, Sink]:
        settings: dict[str, object] = {
            "interval": 3600.0,  # scans happen when the test asks
            "capture_devices": (f"{dev}/video*", f"{dev}/snd/pcmC*D*c"),
        }
        settings.update(overrides)
        sink = Sink()
        sensor = ProcessSensor(ProcessConfig(**settings), sink)  # type: ignore[arg-type]
        sensors.append(sensor)
        sensor.start()
        return sensor, sink

    try:
        yield _start
    finally:
        for sensor in sensors:
            sensor.stop()


def _spawn(children: list[subprocess.Popen[str]], argv: list[str]) -> subprocess.Popen[str]:
    """A Python child whose argv[0] is ``argv[0]`` and whose code is in ``argv``."""
    proc = subprocess.Popen(argv, executable=sys.executable, text=True)
    children.append(proc)
    return proc


def _holder(children: list[subprocess.Popen[str]], argv0: str) -> Holder:
    holder = Holder(argv0)
    children.append(holder.proc)
    return holder


def _scan(sensor: ProcessSensor) -> None:
    assert sensor.check_now(wait=DEADLINE)


def test_process_holding_a_capture_device_is_reported(
    start: Start, dev: Path, children: list[subprocess.Popen[str]]
) -> None:
    sensor, sink = start()
    holder = _holder(children, "python3")  # no recorder's name: only the open device tells
    holder.tell(f"open {dev}/snd/pcmC0D0c")
    _scan(sensor)
    [event] = sink.of(holder.pid)
    assert event.name == psutil.Process(holder.pid).name()
    assert event.executable == psutil.Process(holder.pid).exe()
    assert event.uid == os.getuid()
    assert list(event.devices) == [f"{dev}/snd/pcmC0D0c"]
    assert "holds capture device" in event.reason
    assert f"{dev}/snd/pcmC0D0c" in event.reason
    started = psutil.Process(holder.pid).create_time()
    assert abs(event.started.ToNanoseconds() / 1e9 - started) < 0.01
    severity = next(e.severity for e in sink.events if e.process.pid == holder.pid)
    assert severity == events_pb2.SEVERITY_HIGH


def test_playback_device_is_not_capture(
    start: Start, dev: Path, children: list[subprocess.Popen[str]]
) -> None:
    sensor, sink = start()
    holder = _holder(children, "python3")
    holder.tell(f"open {dev}/snd/pcmC0D0p")
    _scan(sensor)
    assert sink.of(holder.pid) == []


def test_recorder_by_name_holding_a_device(
    start: Start, dev: Path, tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "arecord").symlink_to(sys.executable)  # the kernel names it after the link
    holder = _holder(children, str(bindir / "arecord"))
    holder.tell(f"open {dev}/snd/pcmC0D0c")
    sensor, sink = start()  # after the open: its name alone is reason enough to report it
    _scan(sensor)
    [event] = sink.of(holder.pid)
    assert event.name == "arecord"
    assert "recording program arecord" in event.reason
    assert "holds capture device" in event.reason


def test_recorder_command_line_is_reported(
    start: Start, children: list[subprocess.Popen[str]]
) -> None:
    sensor, sink = start()
    capture = _spawn(
        children, ["ffmpeg", "-c", SLEEPER, "-f", "v4l2", "-i", "/dev/video0", "out.mkv"]
    )
    convert = _spawn(children, ["ffmpeg", "-c", SLEEPER, "-i", "talk.mp4", "talk.webm"])
    gst = _spawn(
        children, ["gst-launch-1.0", "-c", SLEEPER, "pulsesrc", "!", "wavenc", "!", "filesink"]
    )
    _scan(sensor)
    [event] = sink.of(capture.pid)
    assert event.cmdline.startswith("ffmpeg -c ")
    assert "-f v4l2" in event.cmdline
    assert "ffmpeg capturing (-f v4l2)" in event.reason
    assert list(event.devices) == []
    assert sink.of(convert.pid) == []  # ffmpeg converting a file records nothing
    assert "gst-launch-1.0 capturing (pulsesrc)" in sink.of(gst.pid)[0].reason


def test_unrelated_process_is_not_reported(
    start: Start, children: list[subprocess.Popen[str]]
) -> None:
    sensor, sink = start()
    other = subprocess.Popen(["sleep", str(CHILD_TIMEOUT)], text=True)
    children.append(other)
    _scan(sensor)
    assert sink.of(other.pid) == []


def test_reported_once_per_episode(
    start: Start, dev: Path, children: list[subprocess.Popen[str]]
) -> None:
    sensor, sink = start()
    holder = _holder(children, "python3")
    holder.tell(f"open {dev}/video0")
    for _ in range(3):
        _scan(sensor)
    assert len(sink.of(holder.pid)) == 1

    holder.tell(f"close {dev}/video0")  # the episode ends ...
    _scan(sensor)
    holder.tell(f"open {dev}/video0")  # ... and a new one begins, same process
    _scan(sensor)
    _scan(sensor)
    assert len(sink.of(holder.pid)) == 2

    argv = ["ffmpeg", "-c", SLEEPER, "-f", "alsa", "-i", "hw:0", "out.wav"]
    first = _spawn(children, argv)
    _scan(sensor)
    _scan(sensor)
    assert len(sink.of(first.pid)) == 1
    first.kill()
    first.wait(DEADLINE)
    _scan(sensor)
    again = _spawn(children, argv)  # exits and restarts: reported again
    _scan(sensor)
    assert len(sink.of(again.pid)) == 1


def test_periodic_scans_report_without_being_asked(
    start: Start, dev: Path, children: list[subprocess.Popen[str]]
) -> None:
    sensor, sink = start(interval=0.05)
    holder = _holder(children, "python3")
    holder.tell(f"open {dev}/snd/pcmC0D0c")
    seen = sensor.scans
    deadline = time.monotonic() + DEADLINE
    while not sink.of(holder.pid) or sensor.scans < seen + 5:  # found, then scanned on
        assert time.monotonic() < deadline, "periodic scans did not report in time"
        time.sleep(0.01)
    assert len(sink.of(holder.pid)) == 1
    assert sensor.health().state == "ok"


def test_long_command_line_is_bounded(start: Start, children: list[subprocess.Popen[str]]) -> None:
    sensor, sink = start()
    padding = ["x" * 1000] * 100  # 100 kB of arguments after the capture input
    capture = _spawn(children, ["ffmpeg", "-c", SLEEPER, "-f", "x11grab", "-i", ":0.0", *padding])
    _scan(sensor)
    [event] = sink.of(capture.pid)
    assert len(event.cmdline) <= 256
    assert len(event.reason) <= 500
    assert "x11grab" in event.reason


def test_processes_coming_and_going_during_scans(
    start: Start, children: list[subprocess.Popen[str]]
) -> None:
    sensor, _ = start()
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            subprocess.run(["true"], check=True, timeout=CHILD_TIMEOUT)

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(20):
            found = sensor.scan()  # processes vanish between listing and reading
            assert all(d.pid != os.getpid() for d in found)
    finally:
        stop.set()
        for t in threads:
            t.join(DEADLINE)
    assert sensor.health().state == "ok"


# Imports as root (the interpreter lives under /root), then becomes nobody to scan.
NON_ROOT_SCAN = """
import json, os, sys
from agent.sensors.process import ProcessConfig, ProcessSensor
sensor = ProcessSensor(ProcessConfig(capture_devices=(sys.argv[1],)), lambda event: None)
nobody = int(sys.argv[2])
os.setgroups([])
os.setresgid(nobody, nobody, nobody)
os.setresuid(nobody, nobody, nobody)
found = sensor.scan()
print(json.dumps({"health": sensor.health().state, "detail": sensor.health().detail,
                  "pids": [d.pid for d in found]}))
"""


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_without_root_other_users_files_are_unreadable(
    dev: Path, children: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    holder = _holder(children, "python3")
    holder.tell(f"open {dev}/video0")
    capture = _spawn(children, ["ffmpeg", "-c", SLEEPER, "-f", "v4l2", "-i", "/dev/video0"])
    result = subprocess.run(
        [sys.executable, "-c", NON_ROOT_SCAN, f"{dev}/video*", str(NOBODY)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["health"] == "degraded"
    assert "run as root" in report["detail"]
    assert capture.pid in report["pids"]  # command lines are readable by everyone
    assert holder.pid not in report["pids"]  # root's open files are not


def test_empty_policy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="nothing to look for"):
        ProcessSensor(ProcessConfig(recorders=(), capture_devices=()), Sink())


def test_check_now_on_a_stopped_sensor_says_no() -> None:
    sensor = ProcessSensor(ProcessConfig(), Sink())
    assert not sensor.check_now(wait=0.1)
