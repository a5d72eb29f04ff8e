"""One streaming pass over a period's events, aggregated into plain counters.

The pass reads each stored row once, in time order, and decodes the protobuf body only
for the kinds whose fields a figure needs (heartbeats are kept as the last raw body per
host and decoded once at the end). Nothing grows with the number of events except
per-file, per-user and per-stick tables, which grow with the number of distinct files,
people and sticks. Rows the agent folded stand for ``count`` accesses (0 read as 1).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field

from baomi.v1 import events_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from collector.ingest import COLLECTOR_HOST
from collector.meeting_signatures import ALERT_KIND as SIGNATURE_ALERT
from collector.store.base import EventRow

LIST_LIMIT = 50  # rows kept for detail tables (the most recent ones); totals are exact
DAY_US = 86_400 * 1_000_000

_ALLOW = events_pb2.DECISION_ALLOW
_DENY = events_pb2.DECISION_DENY

#: Denial reasons as the decision engine and the file guard word them, by prefix, and
#: the category a committee reads (see agent/decision/engine.py, refusal()).
REASON_PREFIXES: tuple[tuple[str, str], ...] = (
    ("unknown user", "unknown_user"),
    ("denied by rule", "deny_rule"),
    ("no rule allows", "no_rule"),
    ("invalid label", "invalid_label"),
    ("status ", "status"),
    ("not trained", "training"),
    ("training expired", "training"),
    ("read up: clearance", "clearance"),
    ("clearance", "clearance"),
    ("outside need-to-know", "scope"),
    ("application", "application"),
    ("no decision within", "timeout"),
    ("decision failed", "error"),
)


def reason_category(reason: str) -> str:
    """The category of a denial reason (``other`` when no known wording matches)."""
    for prefix, category in REASON_PREFIXES:
        if reason.startswith(prefix):
            return category
    return "other"


@dataclass(slots=True)
class HostTally:
    """What one host did in the period."""

    events: int = 0
    first_us: int = 0
    last_us: int = 0
    min_seq: int = 0
    max_seq: int = 0
    last_status_us: int = 0
    last_status: bytes = b""  # body of the newest agent_status, decoded at the end
    unclean_stops: int = 0
    gap_us: int = 0  # time without enforcement that unclean stops account for
    policy_failures: int = 0
    denied: int = 0  # denied accesses (folded counts)
    blocked_devices: int = 0
    link_violations: int = 0


@dataclass(slots=True)
class FileTally:
    """One classified file (by path) across hosts."""

    level: int = 0
    accesses: int = 0
    denied: int = 0
    users: set[str] = field(default_factory=set)
    hosts: set[str] = field(default_factory=set)


@dataclass(slots=True)
class UserTally:
    """One person's accesses: by level allowed, and denied."""

    allowed: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    denied: int = 0
    last_us: int = 0  # newest allowed access to a classified file


@dataclass(slots=True)
class StickTally:
    """One registered storage device (by serial, vendor and product)."""

    vendor_product: str
    serial: str
    name: str
    insertions: int = 0
    hosts: set[str] = field(default_factory=set)
    first_us: int = 0
    last_us: int = 0


@dataclass(slots=True)
class Tally:
    """Everything the inspection report counts in one period."""

    light: bool = False  # previous period: key figures only, no per-file or per-user tables
    day_offset_us: int = 0  # local time minus UTC, for counting per local day
    events: int = 0
    by_kind: collections.Counter[str] = field(default_factory=collections.Counter)
    hosts: dict[str, HostTally] = field(default_factory=dict)
    # file access: [level] -> [allowed, denied], in accesses (folded counts expanded)
    by_level: list[list[int]] = field(default_factory=lambda: [[0, 0] for _ in range(4)])
    access_events: int = 0
    denials: collections.Counter[str] = field(default_factory=collections.Counter)
    denial_examples: dict[str, str] = field(default_factory=dict)
    # local day number (days since 1970-01-01) -> [allowed classified, denied] accesses
    daily: dict[int, list[int]] = field(default_factory=dict)
    users: dict[str, UserTally] = field(default_factory=dict)
    files: dict[str, FileTally] = field(default_factory=dict)
    # devices
    devices_added: int = 0
    blocked_by_class: collections.Counter[str] = field(default_factory=collections.Counter)
    allowed_by_class: collections.Counter[str] = field(default_factory=collections.Counter)
    blocked: collections.deque[dict[str, object]] = field(
        default_factory=lambda: collections.deque(maxlen=LIST_LIMIT)
    )
    sticks: dict[tuple[str, str], StickTally] = field(default_factory=dict)
    # links
    violations: int = 0
    violations_by_kind: collections.Counter[str] = field(default_factory=collections.Counter)
    violation_list: collections.deque[dict[str, object]] = field(
        default_factory=lambda: collections.deque(maxlen=LIST_LIMIT)
    )
    # meetings
    checks: int = 0
    checks_cleared: int = 0
    sweeps: int = 0
    sweeps_cleared: int = 0
    rooms: dict[str, list[int]] = field(default_factory=dict)  # room -> [checks, cleared]
    failed_items: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    unknown_items: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    not_cleared: collections.deque[dict[str, object]] = field(
        default_factory=lambda: collections.deque(maxlen=LIST_LIMIT)
    )
    # meeting checks counted as cleared, (host, seq) -> (room, phase): a signature alert
    # naming one later takes it back; (host, seq) of checks such alerts name
    cleared_checks: dict[tuple[str, int], events_pb2.MeetingCheck] = field(default_factory=dict)
    unsigned_checks: set[tuple[str, int]] = field(default_factory=set)
    # files declassified: (host, path, label_id) -> first time seen
    declassified: dict[tuple[str, str, str], int] = field(default_factory=dict)
    # the record itself
    tamper: collections.Counter[str] = field(default_factory=collections.Counter)
    collector_alerts: collections.Counter[str] = field(default_factory=collections.Counter)

    def add(self, rows: Iterable[EventRow]) -> None:
        """Fold ``rows`` (time order) into the counters."""
        parse = events_pb2.Event.FromString
        hosts = self.hosts
        by_level = self.by_level
        by_kind = self.by_kind
        denials = self.denials
        users = self.users
        files = self.files
        light = self.light
        daily = self.daily
        offset = self.day_offset_us
        categories: dict[str, str] = {}
        for row in rows:
            host_id = row.host_id
            kind = row.kind
            when = row.event_time_us
            self.events += 1
            by_kind[kind] += 1
            if host_id == COLLECTOR_HOST:
                # The collector's own chain: alerts about the record, not a computer.
                if kind == "tamper":
                    t = parse(row.body).tamper
                    self.collector_alerts[t.kind] += 1
                    if t.kind == SIGNATURE_ALERT:
                        self._unsigned(t, when)
                continue
            h = hosts.get(host_id)
            if h is None:
                h = hosts[host_id] = HostTally(first_us=when, min_seq=row.seq)
            h.events += 1
            h.last_us = max(h.last_us, when)
            h.min_seq = min(h.min_seq, row.seq)
            h.max_seq = max(h.max_seq, row.seq)
            if kind == "file_access":
                a = parse(row.body).file_access
                n = a.count or 1
                level = min(a.level, 3)  # an unknown enum value from a newer agent reads as 绝密
                self.access_events += 1
                if a.decision == _DENY:
                    by_level[level][1] += n
                    h.denied += n
                    reason = a.reason
                    category = categories.get(reason)
                    if category is None:
                        category = categories[reason] = reason_category(reason)
                        self.denial_examples.setdefault(category, reason)
                    denials[category] += n
                    allowed = False
                else:
                    by_level[level][0] += n
                    allowed = True
                if light:
                    continue
                day = (when + offset) // DAY_US
                per_day = daily.get(day)
                if per_day is None:
                    per_day = daily[day] = [0, 0]
                if not allowed:
                    per_day[1] += n
                elif level:
                    per_day[0] += n
                user = a.user or f"uid:{a.uid}"
                u = users.get(user)
                if u is None:
                    u = users[user] = UserTally()
                if allowed:
                    u.allowed[level] += n
                    if level:
                        u.last_us = when
                else:
                    u.denied += n
                if level:
                    path = a.path
                    f = files.get(path)
                    if f is None:
                        f = files[path] = FileTally()
                    f.level = max(f.level, level)
                    f.users.add(user)
                    f.hosts.add(host_id)
                    if allowed:
                        f.accesses += n
                    else:
                        f.denied += n
            elif kind == "agent_status":
                h.last_status_us = when
                h.last_status = row.body
            elif kind == "device":
                self._device(parse(row.body).device, host_id, when, h)
            elif kind == "network":
                net = parse(row.body).network
                if net.violation:
                    self.violations += 1
                    h.link_violations += 1
                    self.violations_by_kind[net.link_kind or "unknown"] += 1
                    if not light:
                        self.violation_list.append(
                            {
                                "time": when,
                                "host": host_id,
                                "interface": net.interface,
                                "link_kind": net.link_kind,
                                "action": net.action,
                                "address": net.address,
                                "reason": net.reason,
                            }
                        )
            elif kind == "meeting_check":
                self._meeting(parse(row.body).meeting_check, host_id, row.seq, when)
            elif kind == "file_change":
                change = parse(row.body).file_change
                if change.change == "declassified":
                    self.declassified.setdefault((host_id, change.path, change.label_id), when)
            elif kind == "tamper":
                t = parse(row.body).tamper
                self.tamper[t.kind] += 1
                if t.kind == "unclean_stop":
                    h.unclean_stops += 1
                    h.gap_us += max(0, _ts_us(t.gap_end) - _ts_us(t.gap_start))
            elif kind == "policy_applied" and not parse(row.body).policy_applied.ok:
                h.policy_failures += 1

    def _device(self, d: events_pb2.Device, host_id: str, when: int, h: HostTally) -> None:
        if d.action != "add":
            return
        self.devices_added += 1
        cls = d.device_class or "unknown"
        if d.decision == _DENY:
            self.blocked_by_class[cls] += 1
            h.blocked_devices += 1
            if not self.light:
                self.blocked.append(
                    {
                        "time": when,
                        "host": host_id,
                        "class": cls,
                        "vendor_product": f"{d.vendor_id}:{d.product_id}",
                        "serial": d.serial,
                        "name": d.name,
                        "rule": d.rule,
                    }
                )
            return
        self.allowed_by_class[cls] += 1
        if cls != "storage" or self.light:
            return
        vp = f"{d.vendor_id}:{d.product_id}"
        stick = self.sticks.get((vp, d.serial))
        if stick is None:
            stick = self.sticks[(vp, d.serial)] = StickTally(vp, d.serial, d.name, first_us=when)
        stick.insertions += 1
        stick.hosts.add(host_id)
        stick.last_us = when

    def _meeting(self, m: events_pb2.MeetingCheck, host_id: str, seq: int, when: int) -> None:
        # A check whose signature the collector found wrong on arrival never counts as
        # cleared, whatever its own flag says (the alert may come before or after it).
        cleared = m.cleared and (host_id, seq) not in self.unsigned_checks
        if cleared:
            self.cleared_checks[(host_id, seq)] = m
        if m.phase == "sweep":
            self.sweeps += 1
            self.sweeps_cleared += cleared
            return
        self.checks += 1
        self.checks_cleared += cleared
        room = self.rooms.setdefault(m.room, [0, 0])
        room[0] += 1
        room[1] += cleared
        failed = ["signature"] if m.cleared and not cleared else []
        for item in m.items:
            if item.result == "fail":
                self.failed_items[(item.id, item.title)] += 1
                failed.append(item.id)
            elif item.result != "pass":
                self.unknown_items[(item.id, item.title)] += 1
        if not cleared and not self.light:
            self.not_cleared.append(
                {
                    "time": when,
                    "host": host_id,
                    "room": m.room,
                    "meeting": m.meeting,
                    "failed": failed,
                    "inspector": m.inspector,
                }
            )

    def _unsigned(self, alert: events_pb2.Tamper, when: int) -> None:
        """A meeting_signature alert: the checks it names are not cleared."""
        for seq in {alert.subject_seq, *alert.subject_seqs}:
            key = (alert.subject_host, seq)
            self.unsigned_checks.add(key)
            m = self.cleared_checks.pop(key, None)
            if m is None:
                continue
            if m.phase == "sweep":
                self.sweeps_cleared -= 1
                continue
            self.checks_cleared -= 1
            self.rooms[m.room][1] -= 1
            if not self.light:
                self.not_cleared.append(
                    {"time": when, "host": alert.subject_host, "room": m.room,
                     "meeting": m.meeting, "failed": ["signature"], "inspector": m.inspector}
                )  # fmt: skip


def _ts_us(ts: Timestamp) -> int:
    """A protobuf Timestamp in microseconds (0 when unset)."""
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def tally(rows: Iterable[EventRow], *, light: bool = False) -> Tally:
    """A new Tally over ``rows``."""
    t = Tally(light=light)
    t.add(rows)
    return t
