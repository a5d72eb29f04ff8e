"""One computer's inspection record (涉密计算机检查): what an inspector checks on one host.

USB history, illicit links, denied accesses, sensor health gaps and the periods when
nothing was enforced, from one streaming pass over that host's events in the period.
"""

from __future__ import annotations

import collections
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baomi.v1 import events_pb2

from collector.ingest import COLLECTOR_HOST
from collector.reports.common import (
    FORMAT_VERSION,
    Report,
    ReportError,
    Verification,
    expected_policy_version,
    iso_local,
    local_time,
    scan_range,
)
from collector.reports.period import Period, parse_period, to_us
from collector.reports.tally import DAY_US, reason_category
from collector.store.base import EventRow, Store

HOST_LIST_LIMIT = 500  # rows per detail table of one host; totals are exact
SILENCE_US = 15 * 60 * 1_000_000  # no event for this long: no heartbeat (default 30 s)
_EPOCH = dt.date(1970, 1, 1)
_DENY = events_pb2.DECISION_DENY


@dataclass
class _HostPass:
    """State of the pass over one host's events."""

    end_us: int
    offset_us: int
    events: int = 0
    first_us: int = 0
    last_us: int = 0
    min_seq: int = 0
    max_seq: int = 0
    status: events_pb2.AgentStatus | None = None
    policy_failures: list[dict[str, Any]] = field(default_factory=list)
    usb: list[dict[str, Any]] = field(default_factory=list)
    usb_total: int = 0
    blocked: int = 0
    links: list[dict[str, Any]] = field(default_factory=list)
    links_total: int = 0
    denied: list[dict[str, Any]] = field(default_factory=list)
    denied_total: int = 0  # accesses (folded counts)
    denied_events: int = 0  # events, each a row of the table
    denied_by_reason: collections.Counter[str] = field(default_factory=collections.Counter)
    tamper: list[dict[str, Any]] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    sensor_gaps: list[dict[str, Any]] = field(default_factory=list)
    open_sensors: dict[str, dict[str, Any]] = field(default_factory=dict)
    stopping_us: int = 0  # time of an agent_status "stopping" not yet followed by a start
    daily: dict[int, list[int]] = field(default_factory=dict)

    def add(self, row: EventRow) -> None:
        """Fold one event of the host (time order)."""
        when = row.event_time_us
        if not self.events:
            self.first_us, self.min_seq = when, row.seq
        self.events += 1
        self.min_seq = min(self.min_seq, row.seq)
        self.max_seq = max(self.max_seq, row.seq)
        ev = events_pb2.Event.FromString(row.body)
        kind = row.kind
        unclean = kind == "tamper" and ev.tamper.kind == "unclean_stop"
        self._gap(when, unclean)
        self.last_us = max(self.last_us, when)
        day = self.daily.setdefault((when + self.offset_us) // DAY_US, [0, 0])
        day[0] += 1
        if kind == "file_access":
            a = ev.file_access
            if a.decision == _DENY:
                n = a.count or 1
                day[1] += n
                self.denied_total += n
                self.denied_events += 1
                self.denied_by_reason[reason_category(a.reason)] += n
                if len(self.denied) < HOST_LIST_LIMIT:
                    self.denied.append(
                        {
                            "time": local_time(when),
                            "user": a.user or f"uid:{a.uid}",
                            "path": a.path,
                            "level": min(a.level, 3),
                            "action": a.action,
                            "reason": a.reason,
                            "count": n,
                        }
                    )
        elif kind == "device":
            d = ev.device
            self.usb_total += 1
            self.blocked += d.decision == _DENY and d.action == "add"
            if len(self.usb) < HOST_LIST_LIMIT:
                self.usb.append(
                    {
                        "time": local_time(when),
                        "action": d.action,
                        "class": d.device_class or "unknown",
                        "vendor_product": f"{d.vendor_id}:{d.product_id}",
                        "serial": d.serial,
                        "name": d.name,
                        "decision": "deny" if d.decision == _DENY else "allow",
                        "rule": d.rule,
                    }
                )
        elif kind == "network" and ev.network.violation:
            net = ev.network
            self.links_total += 1
            if len(self.links) < HOST_LIST_LIMIT:
                self.links.append(
                    {
                        "time": local_time(when),
                        "interface": net.interface,
                        "link_kind": net.link_kind,
                        "action": net.action,
                        "address": net.address,
                        "reason": net.reason,
                    }
                )
        elif kind == "agent_status":
            self._status(ev.agent_status, when)
        elif kind == "policy_applied" and not ev.policy_applied.ok:
            self.policy_failures.append(
                {
                    "time": local_time(when),
                    "version": ev.policy_applied.version,
                    "error": ev.policy_applied.error,
                }
            )
        elif kind == "tamper":
            t = ev.tamper
            start = t.gap_start.seconds * 1_000_000 + t.gap_start.nanos // 1000
            end = t.gap_end.seconds * 1_000_000 + t.gap_end.nanos // 1000
            self.tamper.append({"time": local_time(when), "kind": t.kind, "detail": t.detail})
            if unclean:
                self.gaps.append(_interval("unclean_stop", start, end))

    def _gap(self, when: int, unclean: bool) -> None:
        """Close a stop or a silence that ``when`` ends."""
        if self.stopping_us:
            self.gaps.append(_interval("stopped", self.stopping_us, when))
            self.stopping_us = 0
        elif self.events > 1 and when - self.last_us > SILENCE_US and not unclean:
            # An unclean stop explains its own silence with the agent's exact gap.
            self.gaps.append(_interval("silence", self.last_us, when))

    def _status(self, status: events_pb2.AgentStatus, when: int) -> None:
        self.status = status
        if status.state == "stopping":
            self.stopping_us = when
        for sensor in status.sensors:
            opened = self.open_sensors.get(sensor.name)
            if sensor.state != "ok" and opened is None:
                self.open_sensors[sensor.name] = {
                    "sensor": sensor.name,
                    "state": sensor.state,
                    "detail": sensor.detail,
                    "start_us": when,
                }
            elif sensor.state == "ok" and opened is not None:
                del self.open_sensors[sensor.name]
                self.sensor_gaps.append(_sensor_gap(opened, when))

    def finish(self) -> None:
        """Close what is still open at the end of the period."""
        if self.stopping_us:
            self.gaps.append(_interval("stopped", self.stopping_us, self.end_us))
        for opened in self.open_sensors.values():
            self.sensor_gaps.append(_sensor_gap(opened, 0))
        self.sensor_gaps.sort(key=lambda g: (g["start"], g["sensor"]))
        self.gaps.sort(key=lambda g: (g["start"], g["cause"]))


def _interval(cause: str, start_us: int, end_us: int) -> dict[str, Any]:
    return {
        "cause": cause,
        "start": local_time(start_us),
        "end": local_time(end_us),
        "seconds": max(0, end_us - start_us) // 1_000_000,
    }


def _sensor_gap(opened: dict[str, Any], end_us: int) -> dict[str, Any]:
    start = int(opened["start_us"])
    return {
        "sensor": opened["sensor"],
        "state": opened["state"],
        "detail": opened["detail"],
        "start": local_time(start),
        "end": local_time(end_us),  # "" while still not ok at the end of the period
        "seconds": (end_us - start) // 1_000_000 if end_us else None,
    }


def build_host(
    store: Store,
    host_id: str,
    period: str | Period,
    *,
    policies_dir: Path = Path("policies"),
    verify_key_path: Path | None = None,
    witness_path: Path | None = None,
    unit: str = "",
    now: dt.datetime | None = None,
    store_url: str | None = None,
) -> Report:
    """Compute the inspection record of ``host_id`` over ``period``."""
    p = parse_period(period) if isinstance(period, str) else period
    if host_id == COLLECTOR_HOST or host_id not in store.hosts():
        raise ReportError(
            f"unknown host {host_id!r}: see 'baomi-collector events' or the console for "
            "the hosts the collector knows"
        )
    now = now or dt.datetime.now(dt.UTC)
    verifying = Verification(store, verify_key_path, store_url, witness_path)
    offset = p.start.utcoffset() or dt.timedelta(0)
    state = _HostPass(
        end_us=min(p.end_us, to_us(now)), offset_us=int(offset.total_seconds()) * 1_000_000
    )
    for row in scan_range(store, p.start_us, p.end_us, host_id=host_id):
        state.add(row)
    state.finish()
    expected = expected_policy_version(policies_dir)
    status = state.status
    figures: dict[str, Any] = {
        "kind": "host",
        "format": FORMAT_VERSION,
        "unit": unit,
        "host": host_id,
        "period": p.name,
        "start": iso_local(p.start),
        "end": iso_local(p.end),
        "overview": {
            "events": state.events,
            "first": local_time(state.first_us),
            "last": local_time(state.last_us),
            "agent": status.version if status else "",
            "policy": status.policy_version if status else "",
            "expected_policy": expected,
            "drift": (status.policy_version != expected) if status and expected else None,
            "sensors": [f"{s.name}:{s.state}" for s in status.sensors] if status else [],
            "denied": state.denied_total,
            "devices": state.usb_total,
            "blocked": state.blocked,
            "links": state.links_total,
            "gaps": len(state.gaps),
            "gap_s": sum(g["seconds"] for g in state.gaps),
        },
        "usb": state.usb,
        "usb_total": state.usb_total,
        "links": state.links,
        "links_total": state.links_total,
        "denied": state.denied,
        "denied_total": state.denied_total,
        "denied_events": state.denied_events,
        "denied_by_reason": [
            {"reason": r, "count": n}
            for r, n in sorted(state.denied_by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        "sensor_gaps": state.sensor_gaps[:HOST_LIST_LIMIT],
        "sensor_gaps_total": len(state.sensor_gaps),
        "no_enforcement": state.gaps[:HOST_LIST_LIMIT],
        "no_enforcement_total": len(state.gaps),
        "policy_failures": state.policy_failures,
        "tamper": state.tamper[:HOST_LIST_LIMIT],
        "tamper_total": len(state.tamper),
        "daily": [
            [(_EPOCH + dt.timedelta(days=d)).isoformat(), n, denied]
            for d, (n, denied) in sorted(state.daily.items())
        ],
        "filters": {
            "tz": "UTC+8",
            "period": [p.start_us, p.end_us],
            "host": host_id,
            "list_limit": HOST_LIST_LIMIT,
            "silence_s": SILENCE_US // 1_000_000,
        },
    }
    meta = {
        "generated_at": iso_local(now),
        "verification": verifying.result({host_id: (state.min_seq, state.max_seq)}),
        "period_label": {lang: p.label(lang) for lang in ("zh", "en")},
    }
    return Report("host", f"{host_id}@{p.name}", figures, meta)
