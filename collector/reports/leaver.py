"""The leaver review (离职审查): what one person knew, as a sheet to sign.

Every classified file the person opened (level, label, first and last access, count),
the accesses refused to them, the devices attached to the computers they used on the
days they used them, the classified meetings they attended or checked, and the findings
still open that name them. One streaming pass over the record (or over a period).
Then the register items the person holds and where their handover stands
(collector/handover.py: returned, destroyed or still held), over the whole record.
"""

from __future__ import annotations

import collections
import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baomi.v1 import events_pb2

from collector import handover
from collector.ingest import COLLECTOR_HOST
from collector.meeting_signatures import ALERT_KIND as SIGNATURE_ALERT
from collector.register import Register
from collector.reports.common import (
    FORMAT_VERSION,
    Report,
    Verification,
    iso_local,
    load_subjects,
    local_time,
    read_findings,
    scan_range,
)
from collector.reports.period import CHINA_TZ, Period, parse_period
from collector.reports.tally import DAY_US, reason_category
from collector.store.base import FindingRow, Store

LEAVER_LIST_LIMIT = 500  # rows per table; totals are exact
ATTENDEE_ITEM = "C12"  # the meeting check item that lists the registered attendees
_DENY = events_pb2.DECISION_DENY
# Days are local (Beijing) days, as people work them.
_DEVICE_DAY_OFFSET_US = int(CHINA_TZ.utcoffset(None).total_seconds()) * 1_000_000


@dataclass(slots=True)
class _File:
    level: int
    label: str
    first_us: int
    last_us: int
    count: int = 0
    hosts: set[str] = field(default_factory=set)


def _stamp_us(ts: Any, fallback: int) -> int:
    us = int(ts.seconds) * 1_000_000 + int(ts.nanos) // 1000
    return us or fallback


def _word(text: str) -> re.Pattern[str]:
    """``text`` as a whole word (so login "li" does not match "clients")."""
    return re.compile(rf"(?<![\w.-]){re.escape(text)}(?![\w.-])")


def build_leaver(
    store: Store,
    user: str,
    *,
    period: str | Period | None = None,
    policies_dir: Path = Path("policies"),
    verify_key_path: Path | None = None,
    witness_path: Path | None = None,
    unit: str = "",
    now: dt.datetime | None = None,
    store_url: str | None = None,
) -> Report:
    """Compute the leaver review of ``user`` (login name or uid) over the whole record,
    or over ``period`` when given."""
    p = parse_period(period) if isinstance(period, str) else period
    now = now or dt.datetime.now(dt.UTC)
    subjects, subjects_sha = load_subjects(policies_dir)
    person = subjects.find(user) if subjects is not None else None
    login = person.name if person is not None else user.strip()
    uid = person.uid if person is not None else (int(login) if login.isdigit() else None)
    display = person.display if person is not None else ""
    verifying = Verification(store, verify_key_path, store_url, witness_path)

    files: dict[tuple[str, str], _File] = {}
    denied: dict[
        tuple[str, str], list[Any]
    ] = {}  # (path, category) -> [level, count, last, reason]
    days: set[tuple[str, int]] = set()  # (host, local day) the person used
    devices: dict[tuple[str, int], list[dict[str, Any]]] = collections.defaultdict(list)
    meetings: list[dict[str, Any]] = []
    checked: list[tuple[str, int]] = []  # (host, seq) of each entry of meetings
    unsigned: set[tuple[str, int]] = set()  # meeting checks a signature alert names
    names = [_word(login)] + ([_word(display)] if display else [])
    accesses = 0
    parse = events_pb2.Event.FromString
    for row in scan_range(store, p.start_us if p else None, p.end_us if p else None):
        kind = row.kind
        if kind == "file_access":
            a = parse(row.body).file_access
            if not (a.user == login or (not a.user and uid is not None and a.uid == uid)):
                continue
            when = row.event_time_us
            n = a.count or 1
            days.add((row.host_id, (when + _DEVICE_DAY_OFFSET_US) // DAY_US))
            level = min(a.level, 3)
            if a.decision == _DENY:
                key = (a.path, reason_category(a.reason))
                d = denied.get(key)
                if d is None:
                    denied[key] = [level, n, when, a.reason]
                else:
                    d[1] += n
                    d[2] = when
                continue
            if level == 0:
                continue
            accesses += n
            first = _stamp_us(a.first, when)
            last = _stamp_us(a.last, when)
            f = files.get((a.path, a.label_id))
            if f is None:
                f = files[(a.path, a.label_id)] = _File(level, a.label_id, first, last)
            f.level = max(f.level, level)
            f.first_us = min(f.first_us, first)
            f.last_us = max(f.last_us, last)
            f.count += n
            f.hosts.add(row.host_id)
        elif kind == "device":
            dev = parse(row.body).device
            if dev.action == "add":
                day = (row.event_time_us + _DEVICE_DAY_OFFSET_US) // DAY_US
                devices[(row.host_id, day)].append(
                    {
                        "time_us": row.event_time_us,
                        "host": row.host_id,
                        "class": dev.device_class or "unknown",
                        "vendor_product": f"{dev.vendor_id}:{dev.product_id}",
                        "serial": dev.serial,
                        "name": dev.name,
                        "decision": "deny" if dev.decision == _DENY else "allow",
                    }
                )
        elif kind == "tamper" and row.host_id == COLLECTOR_HOST:
            t = parse(row.body).tamper
            if t.kind == SIGNATURE_ALERT:  # these checks failed their signature on arrival
                unsigned.update((t.subject_host, q) for q in (t.subject_seq, *t.subject_seqs))
        elif kind == "meeting_check":
            m = parse(row.body).meeting_check
            role = ""
            if m.inspector == login:
                role = "inspector"
            else:
                for item in m.items:
                    if item.id == ATTENDEE_ITEM and any(rx.search(item.evidence) for rx in names):
                        role = "attendee"
                        break
            if role:
                meetings.append(
                    {
                        "time": local_time(row.event_time_us),
                        "host": row.host_id,
                        "room": m.room,
                        "meeting": m.meeting,
                        "phase": m.phase,
                        "cleared": m.cleared,
                        "role": role,
                    }
                )
                checked.append((row.host_id, row.seq))
    for entry, check in zip(meetings, checked, strict=True):
        if check in unsigned:
            entry["cleared"] = False  # never cleared on a check whose signature failed

    used = sorted(
        (d for key in days for d in devices.get(key, ())),
        key=lambda d: (d["time_us"], d["host"], d["serial"]),
    )
    file_rows = sorted(files.items(), key=lambda kv: (-kv[1].level, kv[0][0], kv[0][1]))
    figures: dict[str, Any] = {
        "kind": "leaver",
        "format": FORMAT_VERSION,
        "unit": unit,
        "user": login,
        "known": person is not None,
        "person": {
            "user": login,
            "uid": uid,
            "name": display,
            "department": person.department if person else "",
            "clearance": person.clearance if person else -1,
            "status": person.status if person else "",
            "trained_until": person.trained_until.isoformat()
            if person and person.trained_until
            else "",
        },
        "period": p.name if p else "",
        "start": iso_local(p.start) if p else "",
        "end": iso_local(p.end) if p else "",
        "accesses": accesses,
        "by_level": [
            {
                "level": lv,
                "files": sum(1 for f in files.values() if f.level == lv),
                "accesses": sum(f.count for f in files.values() if f.level == lv),
            }
            for lv in (3, 2, 1)
        ],
        "files": [
            {
                "path": path,
                "level": f.level,
                "label": label,
                "first": local_time(f.first_us),
                "last": local_time(f.last_us),
                "count": f.count,
                "hosts": sorted(f.hosts),
            }
            for (path, label), f in file_rows[:LEAVER_LIST_LIMIT]
        ],
        "files_total": len(files),
        "denied": [
            {
                "path": path,
                "reason": category,
                "example": d[3],
                "level": d[0],
                "count": d[1],
                "last": local_time(d[2]),
            }
            for (path, category), d in sorted(denied.items())[:LEAVER_LIST_LIMIT]
        ],
        "denied_total": sum(d[1] for d in denied.values()),
        "devices": [
            {**{k: v for k, v in d.items() if k != "time_us"}, "time": local_time(d["time_us"])}
            for d in used[:LEAVER_LIST_LIMIT]
        ],
        "devices_total": len(used),
        "meetings": meetings[:LEAVER_LIST_LIMIT],
        "meetings_total": len(meetings),
        "findings": _findings(read_findings(store), login, display),
        "handover": _handover(store, login),
        "filters": {
            "tz": "UTC+8",
            "period": [p.start_us, p.end_us] if p else None,
            "uid": uid,
            "subjects_sha256": subjects_sha,
            "attendee_item": ATTENDEE_ITEM,
            "list_limit": LEAVER_LIST_LIMIT,
        },
    }
    meta = {
        "generated_at": iso_local(now),
        "verification": verifying.result(),
        "period_label": {lang: p.label(lang) for lang in ("zh", "en")} if p else None,
    }
    return Report("leaver", login, figures, meta)


def _handover(store: Store, login: str) -> list[dict[str, Any]]:
    """The register items the person holds and where their handover stands."""
    return [
        {
            "register_id": i.entry.register_id,
            "title": i.entry.title,
            "level": i.entry.level,
            "host": i.entry.host,
            "home": i.entry.home,
            "why": list(i.why),
            "state": i.state,
            "record": i.record,
        }
        for i in handover.items(store, Register.load(store), login)[:LEAVER_LIST_LIMIT]
    ]


def _findings(
    findings: list[FindingRow] | None, login: str, display: str
) -> list[dict[str, Any]] | None:
    """Findings not closed whose owner is the person or whose text names them."""
    if findings is None:
        return None
    rx = [_word(login)] + ([_word(display)] if display else [])
    rows: list[dict[str, Any]] = [
        {
            "id": f.id,
            "title": f.title,
            "host": f.host_id,
            "owner": f.owner,
            "due": f.due,
            "status": f.status,
        }
        for f in findings
        if f.status != "closed"
        and (
            (f.owner and f.owner in (login, display))
            or any(r.search(f"{f.title} {f.note}") for r in rx)
        )
    ]
    rows.sort(key=lambda r: r["id"])
    return rows
