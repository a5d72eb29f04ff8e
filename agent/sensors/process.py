"""Sensor ``process``: recording or streaming software, and who holds a capture device.

No recording may happen near classified material. Every ``interval`` seconds, and at
once when asked (``check_now``: the USB sensor asks right after a device arrives, since
a new camera or microphone is the moment a recorder starts), the sensor looks at every
process with psutil and reports it when

(a) it is a known recorder (by process name, executable or ``argv[0]``) *and* its
    arguments capture from a camera, microphone or screen (``RecorderRule``: ``ffmpeg
    -f v4l2``, ``gst-launch-1.0 v4l2src``, ``vlc v4l2://``; programs whose only purpose
    is recording, such as ``arecord`` or OBS, need no particular argument), or
(b) it holds a capture device open: a link in ``/proc/PID/fd`` matches one of the
    capture device globs (``/dev/video*``, ``/dev/snd/pcmC*D*c`` ...), whatever the
    program is called. This is the rule a renamed recorder cannot dodge.

Each process, named by (pid, start time) so that a reused pid is a new process, is
reported once per episode: when it is first seen doing so. Once it stops (exits or
closes the device), the episode ends and a later start is reported again. A sound
server (PipeWire, PulseAudio) holds the microphone for its clients and is reported as
such; the client is caught by rule (a) when it is a known recorder.

Command lines are attacker-controlled: at most ``MATCH_BYTES`` of one are read to
match, and ``CMDLINE_CHARS`` of it go into an event. Without root the open files of
other users' processes cannot be read; health says so.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]
from baomi.v1 import events_pb2

from agent.errors import ConfigError
from agent.sensors.base import EventSink, Health

_logger = logging.getLogger(__name__)

INTERVAL = 5.0  # seconds between scans
MATCH_BYTES = 32_768  # of /proc/PID/cmdline read to match recorder arguments
CMDLINE_CHARS = 256  # of a command line kept in an event
REASON_CHARS = 500  # of a reason kept in an event
MAX_DEVICES = 16  # capture devices listed per process
STOP_TIMEOUT = 10.0  # seconds stop() waits for a scan in progress


@dataclass(frozen=True, kw_only=True)
class RecorderRule:
    """A program that can record or stream, and the arguments that make it capture."""

    names: tuple[str, ...]  # process names, executable or argv[0] basenames (any case)
    capture: tuple[str, ...] = ()  # regexes over the arguments; empty: always captures


# Inputs that are a camera, a microphone or the screen, as each program spells them.
_FFMPEG_CAPTURE = (
    r"(?:^|\s)-f\s+(?:v4l2|video4linux2|alsa|pulse|oss|jack|sndio|openal|x11grab|kmsgrab"
    r"|fbdev|pipewire|xcbgrab)(?:\s|$)",
    r"(?:^|\s)-i\s+(?:/dev/(?:video|snd/|dsp|audio)|(?:plug)?hw:)",
)
_GSTREAMER_CAPTURE = (
    r"\b(?:v4l2src|alsasrc|pulsesrc|pipewiresrc|jackaudiosrc|osssrc|oss4src|ximagesrc"
    r"|kmssrc|autoaudiosrc|autovideosrc|libcamerasrc)\b",
)
_URL_CAPTURE = (r"\b(?:v4l2|v4l|alsa|pulse|jack|oss|screen|tv)://", r"\bav://(?:v4l2|alsa|pulse)")
_SOX_CAPTURE = (
    r"(?:^|\s)-d(?:\s|$)",
    r"(?:^|\s)-t\s*(?:alsa|pulseaudio|oss|sndio)(?:\s|$)",
)

RECORDERS = (
    RecorderRule(names=("ffmpeg", "avconv"), capture=_FFMPEG_CAPTURE),
    RecorderRule(
        names=("gst-launch-1.0", "gst-launch-0.10", "gst-launch"), capture=_GSTREAMER_CAPTURE
    ),
    RecorderRule(names=("vlc", "cvlc", "mpv", "mplayer", "mencoder"), capture=_URL_CAPTURE),
    RecorderRule(names=("sox",), capture=_SOX_CAPTURE),
    RecorderRule(names=("pw-cat",), capture=(r"(?:^|\s)(?:--record|-r)(?:\s|$)",)),
    # Programs whose purpose is recording or screen capture.
    RecorderRule(
        names=(
            "arecord",
            "parecord",
            "parec",
            "pw-record",
            "rec",
            "obs",
            "obs-studio",
            "simplescreenrecorder",
            "recordmydesktop",
            "kazam",
            "vokoscreen",
            "vokoscreenng",
            "peek",
            "wf-recorder",
            "gpu-screen-recorder",
            "kooha",
            "gnome-sound-recorder",
            "audacity",
            "cheese",
            "guvcview",
            "fswebcam",
            "streamer",
        ),
    ),
)
CAPTURE_DEVICES = ("/dev/video*", "/dev/snd/pcmC*D*c", "/dev/dsp*", "/dev/audio*")


@dataclass(frozen=True, kw_only=True)
class ProcessConfig:
    """What the process sensor looks for, and how often."""

    interval: float = INTERVAL  # seconds between scans
    recorders: tuple[RecorderRule, ...] = RECORDERS
    capture_devices: tuple[str, ...] = CAPTURE_DEVICES  # globs of device paths held open


@dataclass(frozen=True)
class Detection:
    """A process caught recording, as reported."""

    pid: int
    started: float  # seconds since the epoch (psutil create_time)
    name: str
    executable: str
    cmdline: str  # at most CMDLINE_CHARS
    uid: int
    reasons: tuple[str, ...]
    devices: tuple[str, ...]  # capture devices it holds open

    @property
    def key(self) -> tuple[int, float]:
        """What names the process across pid reuse."""
        return (self.pid, self.started)


class _Rule:
    """A RecorderRule compiled."""

    def __init__(self, rule: RecorderRule) -> None:
        self.names = frozenset(n.lower() for n in rule.names)
        try:
            self.capture = [re.compile(p) for p in rule.capture]
        except re.error as e:
            raise ConfigError(f"process sensor: bad capture pattern for {rule.names}: {e}") from e

    def reason(self, names: set[str], args: str) -> str:
        """Why a process named ``names`` with arguments ``args`` records, or ""."""
        hit = sorted(names & self.names)
        if not hit:
            return ""
        if not self.capture:
            return f"recording program {hit[0]}"
        for pattern in self.capture:
            m = pattern.search(args)
            if m:
                return f"{hit[0]} capturing ({m.group().strip()[:60]})"
        return ""


def _argv(pid: int) -> list[str]:
    """The first MATCH_BYTES of a command line, split into arguments."""
    try:
        with Path(f"/proc/{pid}/cmdline").open("rb") as f:
            raw = f.read(MATCH_BYTES)
    except OSError:
        return []
    return raw.decode("utf-8", "replace").split("\0")[:-1] if raw else []


def _held(pid: int, devices: re.Pattern[str]) -> tuple[list[str], int]:
    """Capture devices ``pid`` has open, and 1 when its fds could not be read."""
    held: list[str] = []
    try:
        entries = list(os.scandir(f"/proc/{pid}/fd"))
    except PermissionError:
        return held, 1
    except OSError:
        return held, 0  # gone, or a kernel thread
    for entry in entries:
        try:
            target = os.readlink(entry.path)  # noqa: PTH115 - thousands a scan; str is enough
        except OSError:
            continue  # closed meanwhile
        # Sockets, pipes and anonymous inodes read "socket:[123]" and the like.
        if target.startswith("/") and devices.match(target) and target not in held:
            held.append(target)
            if len(held) == MAX_DEVICES:
                break
    return held, 0


def _basename(path: str | None) -> str:
    return path.rsplit("/", 1)[-1].lower() if path else ""


class ProcessSensor:
    """Sensor ``process``: report recorders and holders of capture devices."""

    name = "process"

    def __init__(self, config: ProcessConfig, sink: EventSink) -> None:
        if not config.recorders and not config.capture_devices:
            raise ConfigError(
                "process sensor: nothing to look for; give recorder rules or capture device globs"
            )
        if config.interval <= 0:
            raise ConfigError("process sensor: interval must be a positive number of seconds")
        self._config = config
        self._sink = sink
        self._rules = [_Rule(r) for r in config.recorders]
        self._devices = (
            re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in config.capture_devices))
            if config.capture_devices
            else None
        )
        self._active: dict[tuple[int, float], Detection] = {}
        self._scan_lock = threading.Lock()  # one scan at a time: the thread's or a caller's
        self._cond = threading.Condition()  # guards the counters and health below
        self._requested = 0
        self._completed = 0
        self._scans = 0
        self._health = Health("disabled", "not started")
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Start the scanning thread; the first scan begins at once."""
        if self._thread is not None:
            return
        self._stopping.clear()
        self._set_health("ok")
        self._thread = threading.Thread(target=self._loop, name="process-scan", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop scanning (after the scan in progress, if any)."""
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        self._wake.set()
        thread.join(STOP_TIMEOUT)
        if thread.is_alive():
            _logger.error("process sensor: scan thread did not stop in %.0f s", STOP_TIMEOUT)
        self._thread = None
        self._set_health("disabled", "stopped")

    def health(self) -> Health:
        """ok; degraded when some processes' open files cannot be read; failed on errors."""
        with self._cond:
            return self._health

    def _set_health(self, state: str, detail: str = "") -> None:
        with self._cond:
            self._health = Health(state, detail)

    @property
    def scans(self) -> int:
        """Scans completed since construction."""
        with self._cond:
            return self._scans

    def check_now(self, wait: float = 0.0) -> bool:
        """Scan as soon as possible, without waiting for the interval.

        Returns at once unless ``wait`` (seconds) is given; then True when a scan that
        began after this call has finished within it. False when the sensor is stopped.
        """
        if self._thread is None:
            return False
        with self._cond:
            self._requested += 1
            ticket = self._requested
        self._wake.set()
        if wait <= 0:
            return False
        with self._cond:
            return self._cond.wait_for(lambda: self._completed >= ticket, wait)

    # -- scanning ----------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            # Cleared before the ticket is read: a request arriving after the read sets
            # it again and gets a scan of its own.
            self._wake.clear()
            with self._cond:
                ticket = self._requested
            try:
                self.scan()
            except Exception as e:  # keep scanning; health tells the collector
                _logger.exception("process sensor: scan failed")
                self._set_health("failed", f"scan failed: {type(e).__name__}: {e}"[:REASON_CHARS])
            with self._cond:
                self._completed = ticket
                self._cond.notify_all()
            self._wake.wait(self._config.interval)

    def scan(self) -> list[Detection]:
        """Look at every process now; report the new detections; return all current ones.

        The pre-meeting check can call this for the list of processes recording now.
        """
        with self._scan_lock:
            found: dict[tuple[int, float], Detection] = {}
            unreadable = 0
            me = os.getpid()
            for proc in psutil.process_iter(["name", "exe", "uids", "create_time"], ad_value=None):
                if proc.pid == me:
                    continue
                try:
                    detection, denied = self._inspect(proc, proc.info)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue  # gone meanwhile (or a zombie), or hidden from us
                unreadable += denied
                if detection is not None:
                    found[detection.key] = detection
            new = [d for key, d in found.items() if key not in self._active]
            self._active = found
            with self._cond:
                self._scans += 1
                self._health = (
                    Health(
                        "degraded",
                        f"cannot read the open files of {unreadable} processes; run as root",
                    )
                    if unreadable
                    else Health("ok")
                )
        for detection in new:
            self._report(detection)
        return list(found.values())

    def _inspect(self, proc: Any, info: dict[str, Any]) -> tuple[Detection | None, int]:
        """The detection for one process, if any, and 1 when its fds were unreadable."""
        pid = int(proc.pid)
        argv = _argv(pid)
        # A renamed copy keeps its executable's name; a symlink or `exec -a` changes only
        # argv[0] and, for the former, the process name: any of the three counts.
        candidates = (info.get("name"), info.get("exe"), argv[0] if argv else None)
        names = {b for b in map(_basename, candidates) if b}
        reasons: list[str] = []
        args = " ".join(argv[1:])
        for rule in self._rules:
            reason = rule.reason(names, args)
            if reason:
                reasons.append(reason)
                break
        devices: list[str] = []
        denied = 0
        if self._devices is not None:
            devices, denied = _held(pid, self._devices)
        if devices:
            reasons.append("holds capture device " + ", ".join(devices))
        if not reasons:
            return None, denied
        started = info.get("create_time")
        if started is None:
            started = proc.create_time()
        uids = info.get("uids")
        return (
            Detection(
                pid=pid,
                started=float(started),
                name=str(info.get("name") or (argv[0] if argv else "")),
                executable=str(info.get("exe") or ""),
                cmdline=" ".join(argv)[:CMDLINE_CHARS],
                uid=int(uids.real) if uids is not None else 0,
                reasons=tuple(reasons),
                devices=tuple(devices),
            ),
            denied,
        )

    def _report(self, detection: Detection) -> None:
        event = events_pb2.Event(
            severity=events_pb2.SEVERITY_HIGH,
            process=events_pb2.Process(
                pid=detection.pid,
                name=detection.name[:CMDLINE_CHARS],
                executable=detection.executable[:CMDLINE_CHARS],
                cmdline=detection.cmdline,
                uid=max(detection.uid, 0),
                reason="; ".join(detection.reasons)[:REASON_CHARS],
                devices=[d[:CMDLINE_CHARS] for d in detection.devices],
            ),
        )
        event.process.started.FromNanoseconds(int(detection.started * 1e9))
        _logger.info(
            "process sensor: pid %d (%s): %s", detection.pid, detection.name, event.process.reason
        )
        try:
            self._sink(event)
        except Exception:  # a failing sink must not stop the scanning
            _logger.exception("process sensor: the event sink failed")
