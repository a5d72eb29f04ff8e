"""Sensor ``meeting``: the room's agent runs the pre-meeting check by itself, a set time
before each meeting of its room that it knows of, and records the signed result.

Meetings come from the meetings file, read again on every look, so a meeting added or
moved by the secrecy office is picked up without a restart. The secrecy office keeps
the schedule at the collector: ``meetings.toml`` and ``subjects.toml`` of the signed
policy bundle the agent keeps take precedence over the local files (the room itself --
its cabinet, PA inventory and baselines -- stays in the room's local ``rooms.toml``).
Each meeting is checked once per start time; a run that cannot load its files is
reported and retried.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from baomi.meeting.rooms import load_meetings, load_rooms
from baomi.meeting.sdr import SweepError
from baomi.policy.subjects import Subjects
from baomi.v1 import events_pb2

from agent.errors import AgentError
from agent.meeting.check import (
    Inputs,
    check_severity,
    meeting_message,
    run_check,
    sign_meeting_check,
)
from agent.sensors.base import EventSink, Health

_logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class MeetingScheduleConfig:
    """Which room this agent serves and when to check it."""

    room: str
    rooms: Path
    meetings: Path
    subjects: Path
    key_pem: bytes  # the host's key: results are signed like `meeting check --state-dir`
    sweep: Path | None = None  # the latest rtl_power sweep of the room, if an SDR writes one
    lead: timedelta = timedelta(minutes=30)  # how long before the start the check runs
    poll_seconds: float = 30.0  # between looks at the meetings file
    #: The policy directory the agent keeps from the collector's signed bundles: its
    #: meetings.toml and subjects.toml, when there, are used instead of the local ones.
    bundle: Path | None = None

    def current(self, local: Path, name: str) -> Path:
        """The bundle's file ``name`` if the collector sent one, else ``local``."""
        if self.bundle is not None and (self.bundle / name).is_file():
            return self.bundle / name
        return local


class MeetingScheduler:
    """Runs the checklist for each upcoming meeting of one room, once, ahead of time."""

    name = "meeting"

    def __init__(self, config: MeetingScheduleConfig, sink: EventSink) -> None:
        self._config = config
        self._sink = sink
        self._done: set[tuple[str, datetime]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="meeting-schedule", daemon=True)
        self._health = Health("disabled", "not started")

    def start(self) -> None:
        """Start looking for due meetings."""
        self._health = Health("ok", f"room {self._config.room}")
        self._thread.start()

    def stop(self) -> None:
        """Stop looking."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._health = Health("disabled", "stopped")

    def health(self) -> Health:
        """ok, or degraded with the reason the last look failed."""
        return self._health

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_due(datetime.now(UTC))
            except (AgentError, SweepError) as e:  # a bad file: say so, try again later
                _logger.error("scheduled meeting check: %s", e)
                self._health = Health("degraded", str(e)[:300])
            self._stop.wait(self._config.poll_seconds)

    def run_due(self, now: datetime) -> list[str]:
        """Check every meeting of the room whose start is within ``lead`` of ``now``
        (or within its own check window, if that is shorter); returns the ids checked."""
        cfg = self._config
        room = load_rooms(cfg.rooms).get(cfg.room)
        if room is None:
            raise AgentError(f"{cfg.rooms}: no room {cfg.room!r}; fix --meeting-room")
        checked = []
        meetings = cfg.current(cfg.meetings, "meetings.toml")
        subjects = cfg.current(cfg.subjects, "subjects.toml")
        for meeting in load_meetings(meetings).values():
            start = meeting.start
            if meeting.room != cfg.room or start is None or (meeting.id, start) in self._done:
                continue
            # Never earlier than the meeting's own window opens (C0 would fail it).
            lead = min(cfg.lead, meeting.check_before)
            if not start - lead <= now < start:
                continue
            items = run_check(
                Inputs(
                    room=room,
                    meeting=meeting,
                    subjects=Subjects.load(subjects),
                    sweep=cfg.sweep,
                    now=now,
                )
            )
            check = meeting_message(room.name, meeting.id, "check", items, "scheduled")
            sign_meeting_check(check, cfg.key_pem)
            self._sink(
                events_pb2.Event(
                    severity=check_severity(check),  # type: ignore[arg-type]
                    meeting_check=check,
                )
            )
            self._done.add((meeting.id, start))
            checked.append(meeting.id)
            self._health = Health("ok", f"room {cfg.room}; checked {meeting.id}")
        return checked
