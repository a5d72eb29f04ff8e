"""Events as the console shows them: decoded, summarised, filtered and searched.

Every string taken from an event may have been chosen by an attacker (a USB product
name, a file name, a user name). Nothing here marks any of it safe: templates escape it
(HTML, and control and bidi characters through :func:`baomi.display.escape`), CSV export
neutralises formulas, JSON encodes it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote
from zoneinfo import ZoneInfo

from baomi import display
from baomi.v1 import events_pb2
from google.protobuf import json_format

from collector.console.errors import ConsoleError
from collector.ingest import COLLECTOR_HOST
from collector.store.base import ConsoleQuery, EventRow, Store

KINDS = tuple(f.name for f in events_pb2.Event.DESCRIPTOR.oneofs_by_name["kind"].fields)
HEARTBEAT_KIND = "agent_status"
SEVERITIES: dict[int, str] = {
    events_pb2.SEVERITY_INFO: "info",
    events_pb2.SEVERITY_LOW: "low",
    events_pb2.SEVERITY_MEDIUM: "medium",
    events_pb2.SEVERITY_HIGH: "high",
    events_pb2.SEVERITY_CRITICAL: "critical",
}
SEVERITY_BY_NAME = {name: number for number, name in SEVERITIES.items()}
VIOLATION = events_pb2.SEVERITY_MEDIUM  # this severity and above is a violation
PAGE_EVENTS = 100  # rows on one events page
SCAN_ROWS = 20_000  # most rows a user/path search examines before it gives up
REFINE_ROWS = 5_000  # rows per query after the first of a user/path search
MAX_FILTER_CHARS = 200
SUMMARY_CHARS = 300


def severity_name(severity: int) -> str:
    """``high`` for SEVERITY_HIGH; ``unspecified`` for anything unknown."""
    return SEVERITIES.get(severity, "unspecified")


def format_time(us: int, tz: ZoneInfo) -> str:
    """Microseconds since the epoch as local ``YYYY-MM-DD HH:MM:SS``."""
    return dt.datetime.fromtimestamp(us / 1e6, tz).strftime("%Y-%m-%d %H:%M:%S")


def parse_time(text: str, tz: ZoneInfo) -> int:
    """A date or date-time typed in the console (local time unless it names a zone)."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError as e:
        raise ConsoleError(
            f"cannot read time {text[:40]!r}: use 2026-11-27 or 2026-11-27T08:00"
        ) from e
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz)
    return int(when.timestamp() * 1_000_000)


def _clip(text: str, limit: int = SUMMARY_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class EventView:
    """One stored event decoded, with the fields the pages and filters use."""

    row: EventRow
    event: events_pb2.Event
    user: str  # who acted, when the event says: a login name, a uid, a console account
    paths: tuple[str, ...]  # file paths or executables the event names
    summary: str

    @property
    def kind(self) -> str:
        """The event's kind (its oneof field)."""
        return self.row.kind

    @property
    def severity(self) -> str:
        """Severity name."""
        return severity_name(self.row.severity)

    @property
    def key(self) -> str:
        """``host/seq``, unique in the record."""
        return f"{self.row.host_id}/{self.row.seq}"

    def as_dict(self) -> dict[str, object]:
        """Every field of the event, JSON-ready (bytes as base64, as protobuf JSON does)."""
        doc: dict[str, object] = json_format.MessageToDict(
            self.event, preserving_proto_field_name=True
        )
        doc["prev_hash"] = self.event.prev_hash.hex()
        doc["hash"] = self.row.hash.hex()
        doc["received_us"] = self.row.received_us
        return doc

    def brief(self, tz: ZoneInfo) -> dict[str, object]:
        """What a row of the live view shows, JSON-ready (the browser inserts it as text,
        escaped as the pages' templates escape it)."""
        return {
            "time": format_time(self.row.event_time_us, tz),
            "host": display.escape(self.row.host_id),
            "seq": self.row.seq,
            "severity": self.severity,
            "kind": self.kind,
            "user": display.escape(self.user),
            "summary": display.escape(self.summary),
            "href": f"/events/{quote(self.row.host_id, safe='')}/{self.row.seq}",
        }


_DECISION: dict[int, str] = {events_pb2.DECISION_ALLOW: "allow", events_pb2.DECISION_DENY: "deny"}


def _label_request(ev: events_pb2.Event) -> tuple[str, tuple[str, ...], str]:
    r = ev.label_request
    return r.requester, (r.path,), f"{r.action} level {r.level} {r.register_id} {r.title}"


def _register_step(ev: events_pb2.Event) -> tuple[str, tuple[str, ...], str]:
    s = ev.register_step
    paths = (s.request.path,) if s.request.path else ()
    return s.actor, paths, f"{s.register_id} {s.step} {s.order_id} {s.reason}".strip()


def _label_order_result(ev: events_pb2.Event) -> tuple[str, tuple[str, ...], str]:
    r = ev.label_order_result
    outcome = "applied" if r.ok else f"failed: {r.error}"
    return "", (r.home,), f"order {r.order_id} ({r.register_id}) {outcome}"


def _label_inventory(ev: events_pb2.Event) -> tuple[str, tuple[str, ...], str]:
    files = ev.label_inventory.files
    more = " (truncated)" if ev.label_inventory.truncated else ""
    return "", tuple(f.home for f in files[:20]), f"{len(files)} labelled files{more}"


#: (user, paths, summary) of an event, one function per kind.
Summariser = Callable[[events_pb2.Event], tuple[str, tuple[str, ...], str]]


def _file_access(ev: events_pb2.Event) -> tuple[str, tuple[str, ...], str]:
    a = ev.file_access
    user = a.user or str(a.uid)
    extra = f" x{a.count}" if a.count > 1 else ""
    verdict = _DECISION.get(a.decision, "")
    return user, (a.path, a.executable), f"{a.action} {a.path} {verdict}{extra} {a.reason}"


def _file_change(ev: events_pb2.Event) -> tuple[str, tuple[str, ...], str]:
    c = ev.file_change
    moved = f" <- {c.old_path}" if c.old_path else ""
    detail = f": {c.detail}" if c.detail else ""  # dac_drift: found and restored
    return str(c.uid), (c.path, c.old_path), f"{c.change} {c.path}{moved}{detail}"


def _device(ev: events_pb2.Event) -> tuple[str, tuple[str, ...], str]:
    d = ev.device
    text = (
        f"{d.action} {d.device_class} '{d.name}' {d.vendor_id}:{d.product_id} "
        f"serial '{d.serial}' {_DECISION.get(d.decision, '')}"
    )
    return "", (), text


def _network(ev: events_pb2.Event) -> tuple[str, tuple[str, ...], str]:
    n = ev.network
    flag = " VIOLATION" if n.violation else ""
    return "", (), f"{n.action} {n.interface} {n.link_kind} {n.address} {n.reason}{flag}"


def _process(ev: events_pb2.Event) -> tuple[str, tuple[str, ...], str]:
    p = ev.process
    return str(p.uid), (p.executable,), f"{p.name} pid {p.pid} {p.reason}"


def _meeting_check(ev: events_pb2.Event) -> tuple[str, tuple[str, ...], str]:
    m = ev.meeting_check
    failed = sum(1 for i in m.items if i.result != "pass")
    verdict = "cleared" if m.cleared else "NOT cleared"
    return (
        m.inspector,
        (),
        f"{m.phase} room {m.room} meeting {m.meeting}: {verdict}, {failed} not passed",
    )


def _agent_status(ev: events_pb2.Event) -> tuple[str, tuple[str, ...], str]:
    s = ev.agent_status
    return "", (), f"{s.state} agent {s.version} policy {s.policy_version}"


def _policy_applied(ev: events_pb2.Event) -> tuple[str, tuple[str, ...], str]:
    pa = ev.policy_applied
    return "", (), f"policy {pa.version} {'applied' if pa.ok else 'REFUSED'} {pa.error}"


def _tamper(ev: events_pb2.Event) -> tuple[str, tuple[str, ...], str]:
    return "", (), f"{ev.tamper.kind}: {ev.tamper.detail}"


def _console_action(ev: events_pb2.Event) -> tuple[str, tuple[str, ...], str]:
    c = ev.console_action
    outcome = "" if c.ok else " REFUSED"
    return c.actor, (), f"{c.actor} ({c.role or '-'}) {c.action} {c.target}{outcome} {c.detail}"


SUMMARISERS: dict[str, Summariser] = {
    "file_access": _file_access,
    "file_change": _file_change,
    "device": _device,
    "network": _network,
    "process": _process,
    "meeting_check": _meeting_check,
    "agent_status": _agent_status,
    "policy_applied": _policy_applied,
    "tamper": _tamper,
    "console_action": _console_action,
    "label_request": _label_request,
    "register_step": _register_step,
    "label_order_result": _label_order_result,
    "label_inventory": _label_inventory,
}


def view(row: EventRow) -> EventView:
    """Decode a stored event for display."""
    ev = events_pb2.Event.FromString(row.body)
    summarise = SUMMARISERS.get(row.kind)
    user, paths, summary = summarise(ev) if summarise else ("", (), row.kind)
    return EventView(row, ev, user, tuple(p for p in paths if p), _clip(summary.strip()))


@dataclass(frozen=True, slots=True, kw_only=True)
class Filters:
    """The events page's filters as typed; empty strings mean any."""

    host: str = ""
    kind: str = ""
    severity: str = ""  # minimum severity name
    user: str = ""  # exact
    path: str = ""  # substring of any path the event names
    since: str = ""
    until: str = ""
    heartbeats: str = ""  # "1": list agent_status heartbeats too (folded out by default)
    hidden: tuple[str, ...] = ()  # kinds this viewer may not see (set by role, not typed)

    @classmethod
    def of(cls, params: Mapping[str, str], *, hidden: tuple[str, ...] = ()) -> Filters:
        """Filters from query parameters (bounded, unknown values refused)."""
        values = {
            name: params.get(name, "").strip()[:MAX_FILTER_CHARS]
            for name in ("host", "kind", "severity", "user", "path", "since", "until")
        }
        heartbeats = "1" if params.get("heartbeats", "") == "1" else ""
        for name, value in values.items():
            if "\x00" in value:  # PostgreSQL text cannot hold one: refused, not a 500 there
                raise ConsoleError(f"the {name} filter holds a NUL character: remove it")
        if values["kind"] and values["kind"] not in KINDS:
            raise ConsoleError(f"unknown event kind {values['kind'][:40]!r}")
        if values["severity"] and values["severity"] not in SEVERITY_BY_NAME:
            raise ConsoleError(f"unknown severity {values['severity'][:40]!r}")
        if values["kind"] in hidden:
            raise ConsoleError(f"events of kind {values['kind']!r} are not shown to this role")
        return cls(**values, heartbeats=heartbeats, hidden=hidden)

    def params(self) -> dict[str, str]:
        """The non-empty filters, for links that keep them."""
        return {k: v for k in self.__slots__ if k != "hidden" and (v := getattr(self, k))}

    @property
    def folds_heartbeats(self) -> bool:
        """Whether routine heartbeats (agent_status at INFO, one per host every half
        minute, shown per host on the hosts page) are left out: unless asked for or
        filtered on. An agent's alarm (spool_full, HIGH) is always listed."""
        return not self.heartbeats and self.kind != HEARTBEAT_KIND

    def query(
        self, tz: ZoneInfo, *, limit: int, before: tuple[int, str, int] | None
    ) -> ConsoleQuery:
        """The store query; user and path become a byte pre-filter refined by ``matches``."""
        needle = self.path or self.user
        return ConsoleQuery(
            host_id=self.host or None,
            kind=self.kind or None,
            min_severity=SEVERITY_BY_NAME[self.severity] if self.severity else None,
            since_us=parse_time(self.since, tz) if self.since else None,
            until_us=parse_time(self.until, tz) if self.until else None,
            contains=needle.encode("utf-8") if needle else None,
            before=before,
            limit=limit,
            fold_heartbeats=self.folds_heartbeats,
        )

    def matches(self, v: EventView) -> bool:
        """The checks the store cannot make: user and path inside the event body."""
        if v.kind in self.hidden:
            return False
        routine = v.kind == HEARTBEAT_KIND and v.row.severity <= events_pb2.SEVERITY_INFO
        if routine and self.folds_heartbeats:
            return False
        if self.user and v.user != self.user:
            return False
        return not self.path or any(self.path in p for p in v.paths)

    @property
    def refines(self) -> bool:
        """True when rows from the store still need ``matches``."""
        return bool(self.user or self.path or self.hidden)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of search results and where the next (older) one starts."""

    events: list[EventView]
    next_before: tuple[int, str, int] | None
    scanned: int
    exhausted: bool  # the search stopped at SCAN_ROWS before filling the page


def search(
    store: Store,
    filters: Filters,
    tz: ZoneInfo,
    *,
    limit: int = PAGE_EVENTS,
    before: tuple[int, str, int] | None = None,
    scan_rows: int = SCAN_ROWS,
) -> Page:
    """Newest events matching ``filters``, older than ``before``."""
    found: list[EventView] = []
    scanned = 0
    cursor = before
    # A user or path search may cost the store a full scan per query, however many rows
    # it returns: the first asks for a few (enough when the text is common), the next
    # ones for many (when the text is often elsewhere in the event than the filter looks).
    chunk = limit if not filters.refines else max(limit * 5, 500)
    while len(found) < limit:
        rows = store.console_events(filters.query(tz, limit=chunk, before=cursor))
        scanned += len(rows)
        for row in rows:
            v = view(row)
            cursor = (row.event_time_us, row.host_id, row.seq)
            if filters.matches(v):
                found.append(v)
                if len(found) == limit:
                    break
        if len(rows) < chunk:
            return Page(found, None, scanned, exhausted=False)
        if scanned >= scan_rows and len(found) < limit:
            return Page(found, cursor, scanned, exhausted=True)
        if filters.refines:
            chunk = REFINE_ROWS
    return Page(found, cursor, scanned, exhausted=False)


def audit_log(store: Store, *, limit: int, before: tuple[int, str, int] | None) -> list[EventView]:
    """The console's own actions, newest first, from the collector's chain."""
    rows = store.console_events(
        ConsoleQuery(host_id=COLLECTOR_HOST, kind="console_action", before=before, limit=limit)
    )
    return [view(r) for r in rows]
