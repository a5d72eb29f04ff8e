"""The periodic inspection report (定期检查): figures for one period and the one before.

One streaming pass over the period's events (``tally``), a lighter one over the
previous period for the comparison column, the register of cleared staff, findings from
the console, and ``audit.verify`` over the whole record for the cover.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

from baomi.v1 import events_pb2

from collector.ingest import COLLECTOR_HOST
from collector.reports.common import (
    FORMAT_VERSION,
    Report,
    Verification,
    expected_policy_version,
    iso_local,
    load_subjects,
    local_time,
    person_fields,
    read_findings,
    scan_range,
)
from collector.reports.period import Period, parse_period, to_us
from collector.reports.tally import LIST_LIMIT, Tally, tally
from collector.store.base import FindingRow, Store

TOP_N = 10  # rows of the top-people and top-files tables
HOST_ROWS = 200  # rows of the host table; hosts needing attention come first
ONLINE_WINDOW_US = 10 * 60 * 1_000_000  # a heartbeat this close to the period end: online
TRAINING_NOTICE_DAYS = 30  # training that lapses within this many days is listed
LEVELS = (3, 2, 1, 0)
_EPOCH = dt.date(1970, 1, 1)


def build_inspection(
    store: Store,
    period: str | Period,
    *,
    policies_dir: Path = Path("policies"),
    verify_key_path: Path | None = None,
    witness_path: Path | None = None,
    unit: str = "",
    now: dt.datetime | None = None,
    store_url: str | None = None,
) -> Report:
    """Compute every figure of the inspection report for ``period``.

    ``verify_key_path`` is the collector's ``signing.pub``: without it the cover says the
    record was not verified. ``store_url``, when given, lets the verification run in a
    worker process beside the aggregation.
    """
    p = parse_period(period) if isinstance(period, str) else period
    prev = p.previous()
    now = now or dt.datetime.now(dt.UTC)
    # Reference day for "lapses within 30 days" and "overdue": the period's last day,
    # or today while the period is still running, so a past period always reads the same.
    as_of = min(p.last_day, now.astimezone(p.tz).date())
    reference_us = min(p.end_us, to_us(now))
    timings: dict[str, float] = {}

    verifying = Verification(store, verify_key_path, store_url, witness_path)
    t0 = time.perf_counter()
    cur = Tally(day_offset_us=_offset_us(p))
    cur.add(scan_range(store, p.start_us, p.end_us))
    timings["period_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    before = tally(scan_range(store, prev.start_us, prev.end_us), light=True)
    timings["previous_s"] = time.perf_counter() - t0

    subjects, subjects_sha = load_subjects(policies_dir)
    expected = expected_policy_version(policies_dir)
    findings = read_findings(store)
    known = [h for h in store.hosts() if h != COLLECTOR_HOST]

    t0 = time.perf_counter()
    verified = verifying.result({h: (t.min_seq, t.max_seq) for h, t in cur.hosts.items()})
    timings["verify_s"] = time.perf_counter() - t0

    hosts = _hosts(cur, known, expected, reference_us)
    findings_fig = _findings(findings, p, as_of)
    figures: dict[str, Any] = {
        "kind": "inspection",
        "format": FORMAT_VERSION,
        "unit": unit,
        "period": p.name,
        "start": iso_local(p.start),
        "end": iso_local(p.end),
        "previous_period": prev.name,
        "as_of": as_of.isoformat(),
        "filters": {
            "tz": "UTC+8",
            "period": [p.start_us, p.end_us],
            "previous": [prev.start_us, prev.end_us],
            "previous_start": iso_local(prev.start),
            "previous_end": iso_local(prev.end),
            "events": cur.events,
            "previous_events": before.events,
            "subjects_sha256": subjects_sha,
            "expected_policy": expected,
            "online_window_s": ONLINE_WINDOW_US // 1_000_000,
            "top_n": TOP_N,
            "list_limit": LIST_LIMIT,
            "training_days": TRAINING_NOTICE_DAYS,
        },
        "summary": _summary(cur, before, findings, p, prev),
        "hosts": hosts,
        "access": _access(cur, subjects),
        "devices": _devices(cur),
        "links": _links(cur),
        "meetings": _meetings(cur),
        "findings": findings_fig,
        "declassified": _declassified(cur),
        "training": _training(subjects, as_of),
        "leavers": _leavers(subjects, cur),
        "record": {
            "tamper": dict(sorted(cur.tamper.items())),
            "collector_alerts": dict(sorted(cur.collector_alerts.items())),
            "by_kind": dict(sorted(cur.by_kind.items())),
        },
    }
    meta = {
        "generated_at": iso_local(now),
        # where the inputs were read: shown, not digested (the digest covers their content)
        "sources": {"policies": str(policies_dir), "subjects": str(policies_dir / "subjects.toml")},
        "verification": verified,
        "period_label": {lang: p.label(lang) for lang in ("zh", "en")},
        "previous_label": {lang: prev.label(lang) for lang in ("zh", "en")},
    }
    return Report("inspection", p.name, figures, meta, timings=timings)


def _offset_us(p: Period) -> int:
    offset = p.start.utcoffset() or dt.timedelta(0)
    return int(offset.total_seconds()) * 1_000_000


def _classified(t: Tally) -> int:
    return sum(allowed + denied for allowed, denied in t.by_level[1:])


def _denied(t: Tally) -> int:
    return sum(denied for _, denied in t.by_level)


def _summary(
    cur: Tally, before: Tally, findings: list[FindingRow] | None, p: Period, prev: Period
) -> list[dict[str, Any]]:
    def opened(period: Period) -> int | None:
        if findings is None:
            return None
        return sum(1 for f in findings if period.contains(f.created_us))

    def unclean(t: Tally) -> int:
        return sum(h.unclean_stops for h in t.hosts.values())

    rows: list[tuple[str, Any, Any]] = [
        ("hosts_reporting", len(cur.hosts), len(before.hosts)),
        ("classified_accesses", _classified(cur), _classified(before)),
        ("denied_accesses", _denied(cur), _denied(before)),
        (
            "blocked_devices",
            sum(cur.blocked_by_class.values()),
            sum(before.blocked_by_class.values()),
        ),
        ("link_violations", cur.violations, before.violations),
        ("meeting_checks", cur.checks, before.checks),
        # a rate as [numerator, denominator]: no float in what the digest covers
        (
            "meeting_pass_rate",
            [cur.checks_cleared, cur.checks],
            [before.checks_cleared, before.checks],
        ),
        ("declassified", len(cur.declassified), len(before.declassified)),
        ("unclean_stops", unclean(cur), unclean(before)),
        ("findings_opened", opened(p), opened(prev)),
    ]
    return [{"key": k, "value": v, "previous": pv} for k, v, pv in rows]


def _status_of(body: bytes) -> events_pb2.AgentStatus | None:
    return events_pb2.Event.FromString(body).agent_status if body else None


def _hosts(cur: Tally, known: list[str], expected: str, reference_us: int) -> dict[str, Any]:
    rows = []
    for host in sorted(set(known) | set(cur.hosts)):
        h = cur.hosts.get(host)
        status = _status_of(h.last_status) if h is not None else None
        version = status.policy_version if status is not None else ""
        drift: bool | None = None
        if expected and status is not None:
            drift = version != expected
        bad = (
            [f"{s.name}:{s.state}" for s in status.sensors if s.state != "ok"]
            if status is not None
            else []
        )
        online = h is not None and reference_us - h.last_status_us <= ONLINE_WINDOW_US
        rows.append(
            {
                "host": host,
                "events": h.events if h else 0,
                "first": local_time(h.first_us) if h else "",
                "last": local_time(h.last_us) if h else "",
                "agent": status.version if status is not None else "",
                "policy": version,
                "drift": drift,
                "sensors": bad,
                "unclean_stops": h.unclean_stops if h else 0,
                "gap_s": h.gap_us // 1_000_000 if h else 0,
                "policy_failures": h.policy_failures if h else 0,
                "denied": h.denied if h else 0,
                "blocked_devices": h.blocked_devices if h else 0,
                "link_violations": h.link_violations if h else 0,
                "online": bool(online and h is not None and h.last_status_us),
            }
        )

    def attention(r: dict[str, Any]) -> tuple[int, str]:
        problem = (
            r["events"] == 0
            or r["drift"] is True
            or bool(r["sensors"])
            or r["unclean_stops"] > 0
            or r["link_violations"] > 0
            or r["policy_failures"] > 0
        )
        return (0 if problem else 1, r["host"])

    rows.sort(key=attention)
    return {
        "known": len(rows),
        "reporting": sum(1 for r in rows if r["events"]),
        "silent": sum(1 for r in rows if not r["events"]),
        "online": sum(1 for r in rows if r["online"]),
        "drift": sum(1 for r in rows if r["drift"] is True),
        "unclean_stops": sum(r["unclean_stops"] for r in rows),
        "gap_s": sum(r["gap_s"] for r in rows),
        "expected_policy": expected,
        "rows": rows[:HOST_ROWS],
        "total_rows": len(rows),
    }


def _access(cur: Tally, subjects: Any) -> dict[str, Any]:
    by_level = [
        {"level": lv, "allowed": cur.by_level[lv][0], "denied": cur.by_level[lv][1]}
        for lv in LEVELS
    ]
    denials = [
        {"reason": cat, "count": n, "example": cur.denial_examples.get(cat, "")}
        for cat, n in sorted(cur.denials.items(), key=lambda kv: (-kv[1], kv[0]))
    ]

    def user_total(item: tuple[str, Any]) -> tuple[int, str]:
        u = item[1]
        return (-(sum(u.allowed[1:]) + u.denied), item[0])

    top_users = []
    for login, u in sorted(cur.users.items(), key=user_total)[:TOP_N]:
        row = person_fields(subjects, login)
        row.update(
            {
                "user": login,
                "levels": [u.allowed[3], u.allowed[2], u.allowed[1]],
                "denied": u.denied,
            }
        )
        top_users.append(row)
    top_files = [
        {
            "path": path,
            "level": f.level,
            "accesses": f.accesses,
            "denied": f.denied,
            "users": len(f.users),
            "hosts": len(f.hosts),
        }
        for path, f in sorted(
            cur.files.items(), key=lambda kv: (-(kv[1].accesses + kv[1].denied), kv[0])
        )[:TOP_N]
    ]
    return {
        "events": cur.access_events,
        "accesses": sum(a + d for a, d in cur.by_level),
        "classified": _classified(cur),
        "denied": _denied(cur),
        "by_level": by_level,
        "denials": denials,
        "top_users": top_users,
        "top_files": top_files,
        "files": len(cur.files),
        "people": len(cur.users),
        "daily": [
            [(_EPOCH + dt.timedelta(days=day)).isoformat(), a, d]
            for day, (a, d) in sorted(cur.daily.items())
        ],
    }


def _devices(cur: Tally) -> dict[str, Any]:
    sticks = sorted(cur.sticks.values(), key=lambda s: (-s.insertions, s.vendor_product, s.serial))
    return {
        "added": cur.devices_added,
        "blocked": sum(cur.blocked_by_class.values()),
        "blocked_by_class": _counted(cur.blocked_by_class, "class"),
        "allowed_by_class": _counted(cur.allowed_by_class, "class"),
        "registered": [
            {
                "vendor_product": s.vendor_product,
                "serial": s.serial,
                "name": s.name,
                "insertions": s.insertions,
                "hosts": len(s.hosts),
                "first": local_time(s.first_us),
                "last": local_time(s.last_us),
            }
            for s in sticks[:LIST_LIMIT]
        ],
        "registered_total": len(sticks),
        "blocked_list": [{**d, "time": local_time(int(str(d["time"])))} for d in cur.blocked],
    }


def _links(cur: Tally) -> dict[str, Any]:
    hosts = {h for h, t in cur.hosts.items() if t.link_violations}
    return {
        "violations": cur.violations,
        "hosts": len(hosts),
        "by_kind": _counted(cur.violations_by_kind, "kind"),
        "list": [{**v, "time": local_time(int(str(v["time"])))} for v in cur.violation_list],
    }


def _meetings(cur: Tally) -> dict[str, Any]:
    return {
        "checks": cur.checks,
        "cleared": cur.checks_cleared,
        "sweeps": cur.sweeps,
        "sweeps_cleared": cur.sweeps_cleared,
        "rooms": [
            {"room": room, "checks": n, "cleared": ok}
            for room, (n, ok) in sorted(cur.rooms.items())
        ],
        "failed_items": [
            {"id": i, "title": title, "count": n, "unknown": cur.unknown_items.get((i, title), 0)}
            for (i, title), n in sorted(
                cur.failed_items.items(), key=lambda kv: (-kv[1], _item_order(kv[0][0]), kv[0][1])
            )
        ],
        "not_cleared": [{**m, "time": local_time(int(str(m["time"])))} for m in cur.not_cleared],
    }


def _item_order(item_id: str) -> tuple[int, str]:
    """C2 before C10."""
    digits = item_id.lstrip("Cc")
    return (int(digits), item_id) if digits.isdigit() else (10**6, item_id)


def _findings(findings: list[FindingRow] | None, p: Period, as_of: dt.date) -> dict[str, Any]:
    if findings is None:
        return {"available": False}
    today = as_of.isoformat()

    def overdue(f: FindingRow) -> bool:
        return f.status != "closed" and bool(f.due) and f.due < today

    follow = [
        f
        for f in findings
        if f.created_us < p.end_us and (f.status != "closed" or p.contains(f.updated_us))
    ]
    follow.sort(key=lambda f: (f.status == "closed", f.due or "9999", f.id))
    return {
        "available": True,
        "open": sum(1 for f in findings if f.status == "open"),
        "rectifying": sum(1 for f in findings if f.status == "rectifying"),
        "closed": sum(1 for f in findings if f.status == "closed"),
        "overdue": sum(1 for f in findings if overdue(f)),
        "opened_in_period": sum(1 for f in findings if p.contains(f.created_us)),
        "closed_in_period": sum(
            1 for f in findings if f.status == "closed" and p.contains(f.updated_us)
        ),
        "rows": [
            {
                "id": f.id,
                "title": f.title,
                "host": f.host_id,
                "owner": f.owner,
                "due": f.due,
                "status": f.status,
                "overdue": overdue(f),
                "note": f.note,
            }
            for f in follow[: LIST_LIMIT * 2]
        ],
        "total_rows": len(follow),
    }


def _declassified(cur: Tally) -> dict[str, Any]:
    items = sorted(cur.declassified.items(), key=lambda kv: (kv[1], kv[0]))
    return {
        "count": len(items),
        "rows": [
            {"time": local_time(when), "host": host, "path": path, "label": label}
            for (host, path, label), when in items[: LIST_LIMIT * 2]
        ],
    }


def _training(subjects: Any, as_of: dt.date) -> list[dict[str, Any]]:
    if subjects is None:
        return []
    horizon = as_of + dt.timedelta(days=TRAINING_NOTICE_DAYS)
    rows = []
    for person in subjects.people:
        if person.clearance <= 0 or person.status != "active":
            continue
        until = person.trained_until
        if until is not None and until > horizon:
            continue
        rows.append(
            {
                "user": person.name,
                "name": person.display,
                "department": person.department,
                "clearance": person.clearance,
                "trained_until": until.isoformat() if until else "",
                "days_left": (until - as_of).days if until else None,
            }
        )
    rows.sort(key=lambda r: (r["trained_until"], r["user"]))
    return rows


def _leavers(subjects: Any, cur: Tally) -> list[dict[str, Any]]:
    if subjects is None:
        return []
    rows = []
    for person in subjects.people:
        if person.status not in ("leaving", "left"):
            continue
        u = cur.users.get(person.name)
        rows.append(
            {
                "user": person.name,
                "name": person.display,
                "department": person.department,
                "clearance": person.clearance,
                "status": person.status,
                "secret_accesses": sum(u.allowed[1:]) if u else 0,
                "denied": u.denied if u else 0,
                "last_access": local_time(u.last_us) if u else "",
            }
        )
    rows.sort(key=lambda r: (r["status"], r["user"]))
    return rows


def _counted(counter: Any, name: str) -> list[dict[str, Any]]:
    return [
        {name: key, "count": n}
        for key, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
