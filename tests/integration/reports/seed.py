# One event or finding per line: the seeded history reads as a table.
# ruff: noqa: E501
"""A known event history for the report tests, written as plain data.

Every event is one ``Spec``: host, local (Beijing) time, kind and the protobuf fields.
``write`` turns the specs into correctly chained events per host, stores them, and signs
a checkpoint over every head with the collector's key, so ``audit verify`` passes. The
tests compute what each report must print from these specs with their own few lines of
arithmetic, never with the report code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baomi import chain
from baomi.v1 import events_pb2

from collector import checkpoint, pki
from collector.ingest import COLLECTOR_HOST, to_row
from collector.policy import bundle_digest
from collector.store import Store
from collector.store.base import FindingRow

BEIJING = dt.timezone(dt.timedelta(hours=8))
NOW = dt.datetime(2027, 1, 5, 9, 0, tzinfo=BEIJING)  # when the tests "generate" reports
ATTACK_IMG = "<img src=x onerror=alert(1)>"
ATTACK_CSV = "=cmd|' /C calc'!A0"
ALLOW = events_pb2.DECISION_ALLOW
DENY = events_pb2.DECISION_DENY

SUBJECTS = """
[people.zhang]
display = "张伟"
uid = 1001
department = "office"
roles = ["leader"]
clearance = "核心"
trained_until = 2027-06-30
status = "active"

[people.li]
display = "李强"
uid = 1002
department = "finance"
clearance = "核心"
trained_until = 2027-01-30    # lapses exactly 30 days after 2026-12-31: listed
status = "active"

[people.wang]
display = "王芳"
uid = 1003
department = "finance"
clearance = "重要"
trained_until = 2027-01-31    # 31 days: not listed
status = "active"

[people.zhao]
display = "赵磊"
uid = 1004
department = "rd"
clearance = "一般"
trained_until = 2025-03-31    # lapsed
status = "active"

[people.chen]
display = "陈静"
uid = 1005
department = "rd"
clearance = "核心"
trained_until = 2027-09-30
status = "leaving"

[people.zhou]
display = "周杰"
uid = 1008
department = "partner-co"
clearance = "一般"
trained_until = 2027-02-28
status = "active"

[people.wu]
display = "吴昊"
uid = 1009
department = "rd"
clearance = "重要"
trained_until = 2026-12-31
status = "left"
"""


@dataclass(frozen=True)
class Spec:
    """One event of the history."""

    host: str
    when: str  # "YYYY-MM-DD HH:MM", Beijing time
    kind: str
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def time(self) -> dt.datetime:
        """The event's instant."""
        return dt.datetime.strptime(self.when, "%Y-%m-%d %H:%M").replace(tzinfo=BEIJING)


def access(host: str, when: str, user: str, uid: int, path: str, level: int, decision: int,
           reason: str = "", count: int = 1, label: str = "") -> Spec:  # fmt: skip
    """A file access (``count`` folded repeats; 0 stands for 1)."""
    return Spec(
        host,
        when,
        "file_access",
        {
            "path": path,
            "action": "read",
            "uid": uid,
            "user": user,
            "pid": 4000,
            "executable": "/usr/bin/wps",
            "level": level,
            "label_id": label or f"L-{Path(path).stem}",
            "decision": decision,
            "reason": reason or ("allowed: clearance ok" if decision == ALLOW else ""),
            "count": count,
        },
    )


def device(host: str, when: str, cls: str, serial: str, name: str, decision: int,
           vendor: str = "0951", product: str = "1666", action: str = "add") -> Spec:  # fmt: skip
    """A USB device arriving (or leaving)."""
    return Spec(
        host,
        when,
        "device",
        {
            "action": action,
            "device_class": cls,
            "vendor_id": vendor,
            "product_id": product,
            "serial": serial,
            "name": name,
            "decision": decision,
            "rule": "registered stick" if decision == ALLOW else f"block {cls}",
        },
    )


def link(host: str, when: str, interface: str, link_kind: str, violation: bool) -> Spec:
    """A network change, illicit or not."""
    return Spec(
        host,
        when,
        "network",
        {
            "action": "default_route" if violation else "link_up",
            "interface": interface,
            "link_kind": link_kind,
            "address": "192.168.43.2/24",
            "violation": violation,
            "reason": f"{link_kind} link on a secret computer" if violation else "",
        },
    )


def meeting(when: str, room: str, name: str, failed: tuple[str, ...], unknown: tuple[str, ...],
            attendees: str, phase: str = "check") -> Spec:  # fmt: skip
    """A pre-meeting check (C1..C13) on the meeting-room computer."""
    items = [
        {
            "id": f"C{n}",
            "title": f"检查项{n}",
            "result": "fail"
            if f"C{n}" in failed
            else ("unknown" if f"C{n}" in unknown else "pass"),
            "evidence": f"attendees: {attendees}" if n == 12 else "measured",
            "mandatory": True,
        }
        for n in range(1, 14)
    ]
    return Spec(
        "meet-room-1",
        when,
        "meeting_check",
        {
            "room": room,
            "meeting": name,
            "phase": phase,
            "cleared": not failed and not unknown,
            "items": items,
            "inspector": "sun",
        },
    )


def status(host: str, when: str, policy: str, usb: str = "ok", state: str = "running") -> Spec:
    """A heartbeat."""
    return Spec(
        host,
        when,
        "agent_status",
        {
            "version": "0.1.0",
            "policy_version": policy,
            "sensors": [
                {"name": "files", "state": "ok"},
                {"name": "usb", "state": usb, "detail": "" if usb == "ok" else "monitor lost"},
            ],
            "state": state,
        },
    )


def history(expected_policy: str) -> list[Spec]:
    """The whole seeded record: 2026-H1 (the previous period) and 2026-H2."""
    return [
        # ---- 2026-H1: the previous period ----
        access("sec-pc-01", "2026-03-02 09:00", "zhang", 1001, "/srv/secret/office/plan.docx", 3, ALLOW, count=2),
        access("sec-pc-01", "2026-03-03 09:00", "zhao", 1004, "/srv/secret/rd/spec.pdf", 1, DENY, "training expired 2025-03-31"),
        device("sec-pc-01", "2026-04-01 10:00", "camera", "CAM1", "Canon PowerShot", DENY, "04a9", "31e6"),
        meeting("2026-05-10 09:00", "第一会议室", "M-000", (), (), "zhang"),
        status("sec-pc-01", "2026-06-30 23:00", expected_policy),
        # ---- 2026-H2: the reported period ----
        access("sec-pc-01", "2026-07-10 09:00", "zhang", 1001, "/srv/secret/office/plan.docx", 3, ALLOW, count=3),
        access("sec-pc-01", "2026-08-01 10:00", "zhang", 1001, "/srv/secret/office/plan.docx", 3, ALLOW, count=0),
        access("sec-pc-02", "2026-09-03 14:00", "li", 1002, "/srv/secret/finance/budget.xlsx", 2, ALLOW, count=5),
        access("sec-pc-02", "2026-09-04 15:00", "wang", 1003, "/srv/secret/finance/budget.xlsx", 2, ALLOW, count=2),
        access("sec-pc-01", "2026-10-05 11:00", "zhao", 1004, "/srv/secret/rd/spec.pdf", 1, DENY, "training expired 2025-03-31", count=4),
        access("sec-pc-01", "2026-10-06 11:00", "zhou", 1008, "/srv/secret/office/plan.docx", 3, DENY, "read up: clearance 1 < level 3"),
        access("sec-pc-02", "2026-07-02 16:00", "chen", 1005, "/srv/secret/rd/design.dwg", 2, ALLOW, count=2),
        access("sec-pc-02", "2026-11-20 08:30", "chen", 1005, "/srv/secret/rd/design.dwg", 2, DENY, "status leaving", count=3),
        access("sec-pc-01", "2026-10-07 11:00", "", 4242, "/srv/secret/rd/spec.pdf", 1, DENY, "unknown user uid 4242"),
        access("sec-pc-02", "2026-07-20 10:00", "liu", 1006, "/srv/public/notice.txt", 0, ALLOW, count=7),
        access("sec-pc-01", "2026-07-15 09:30", "wu", 1009, "/srv/secret/rd/design.dwg", 2, ALLOW),
        device("sec-pc-01", "2026-08-10 09:00", "storage", "BM0001", "保密U盘 Kingston", ALLOW),
        device("sec-pc-01", "2026-08-10 17:00", "storage", "BM0001", "保密U盘 Kingston", ALLOW, action="remove"),
        device("sec-pc-02", "2026-09-10 10:00", "storage", "BM0001", "保密U盘 Kingston", ALLOW),
        device("sec-pc-01", "2026-08-12 12:00", "phone", "X1", ATTACK_IMG, DENY, "18d1", "4ee7"),
        device("sec-pc-02", "2026-10-01 12:00", "storage", "EVIL", ATTACK_CSV, DENY, "0781", "5581"),
        device("sec-pc-02", "2026-10-02 12:00", "audio", "MIC9", "Wireless Mic RX", DENY, "19f7", "0003"),
        device("sec-pc-02", "2026-11-20 09:00", "storage", "BM0002", "保密U盘 Aigo", ALLOW, "1234", "5678"),
        link("sec-pc-01", "2026-09-15 13:00", "wlan0", "wireless", True),
        link("sec-pc-02", "2026-11-01 13:00", "usb0", "usb", True),
        link("sec-pc-02", "2026-11-02 13:00", "enp3s0", "ethernet", False),
        meeting("2026-07-20 09:00", "第一会议室", "M-001", (), (), "zhang, li"),
        meeting("2026-09-20 09:00", "第一会议室", "M-002", ("C4", "C9"), ("C5",), "chen, wang"),
        meeting("2026-11-20 09:00", "保密会议室", "M-003", ("C4",), (), "zhou"),
        meeting("2026-11-20 12:00", "保密会议室", "M-003", (), (), "zhou", phase="sweep"),
        Spec("sec-pc-01", "2026-08-20 10:00", "file_change", {"path": "/srv/secret/old/report-2019.doc", "change": "declassified", "label_id": "L-2019"}),
        Spec("sec-pc-01", "2026-09-01 10:00", "file_change", {"path": "/srv/secret/old/report-2019.doc", "change": "declassified", "label_id": "L-2019"}),
        Spec("sec-pc-02", "2026-09-02 10:00", "file_change", {"path": "/srv/secret/old/memo.doc", "change": "declassified", "label_id": "L-2018"}),
        Spec("sec-pc-02", "2026-09-03 10:00", "file_change", {"path": "/srv/secret/finance/budget.xlsx", "change": "write", "label_id": "L-budget"}),
        Spec("sec-pc-02", "2026-10-10 10:30", "tamper", {"kind": "unclean_stop", "detail": "the agent did not stop cleanly"}),
        Spec("sec-pc-02", "2026-10-11 10:00", "policy_applied", {"version": "bad", "ok": False, "error": "casbin model refused"}),
        status("sec-pc-02", "2026-10-05 08:00", expected_policy),
        status("sec-pc-02", "2026-10-10 10:31", expected_policy, usb="degraded", state="started"),
        status("sec-pc-02", "2026-10-10 12:00", expected_policy),
        status("meet-room-1", "2026-12-20 18:00", expected_policy, state="stopping"),
        status("meet-room-1", "2026-12-21 08:00", expected_policy, state="started"),
        status("sec-pc-01", "2026-12-31 23:55", expected_policy),
        status("sec-pc-02", "2026-12-31 23:58", "0000000000000old", usb="degraded"),
    ]  # fmt: skip


def gap(spec: Spec) -> tuple[int, int] | None:
    """The (start, end) µs of an unclean stop's gap (2 h 30 min before the event)."""
    if spec.kind == "tamper" and spec.fields.get("kind") == "unclean_stop":
        end = int(spec.time.timestamp() * 1_000_000)
        return end - 9000 * 1_000_000, end
    return None


def _event(spec: Spec) -> events_pb2.Event:
    ev = events_pb2.Event(severity=events_pb2.SEVERITY_INFO)
    sub = getattr(ev, spec.kind)
    for name, value in spec.fields.items():
        if name == "sensors":
            for s in value:
                sub.sensors.add(**s)
        elif name == "items":
            for it in value:
                sub.items.add(**it)
        else:
            setattr(sub, name, value)
    if spec.kind == "file_access":
        sub.first.FromDatetime(spec.time)
        sub.last.FromDatetime(spec.time + dt.timedelta(minutes=5))
    if (g := gap(spec)) is not None:
        sub.gap_start.FromMicroseconds(g[0])
        sub.gap_end.FromMicroseconds(g[1])
    ev.time.FromDatetime(spec.time)
    return ev


def policies(directory: Path) -> tuple[Path, str]:
    """A policy directory with the test register; its bundle version."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "subjects.toml").write_text(SUBJECTS, encoding="utf-8")
    (directory / "policy.csv").write_text("p, role:leader, /srv/secret/**, read, allow\n")
    files = {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}
    return directory, bundle_digest(files)


def write(store: Store, pki_dir: Path, specs: list[Spec]) -> None:
    """Store ``specs`` as chained events (time order per host) and sign a checkpoint."""
    heads: dict[str, tuple[int, bytes]] = {}
    rows = []
    for spec in sorted(specs, key=lambda s: s.time):
        ev = _event(spec)
        seq, prev = heads.get(spec.host, (0, chain.GENESIS))
        ev.host_id, ev.seq, ev.prev_hash = spec.host, seq + 1, prev
        received = int(spec.time.timestamp() * 1_000_000) + 1_000_000
        row = to_row(ev, spec.kind, received)
        heads[spec.host] = (row.seq, row.hash)
        rows.append(row)
    # The collector's own chain: one alert, which reports count but no host owns.
    alert = events_pb2.Event(
        host_id=COLLECTOR_HOST,
        seq=1,
        prev_hash=chain.GENESIS,
        severity=events_pb2.SEVERITY_HIGH,
        tamper=events_pb2.Tamper(kind="foreign_host", detail="batch named another host"),
    )
    alert.time.FromDatetime(dt.datetime(2026, 9, 9, 9, 9, tzinfo=BEIJING))
    rows.append(to_row(alert, "tamper", int(alert.time.ToMicroseconds()) + 1))
    store.append(rows)
    for host in [*heads, "sec-pc-03"]:  # sec-pc-03: enrolled, silent
        store.add_host(host, hashlib.sha256(host.encode()).digest(), 0)
    authority = pki.load_authority(pki_dir)
    created = int(NOW.timestamp() * 1_000_000)
    body = checkpoint.make_body(created, checkpoint.FIRST_PREV, store.heads())
    store.add_checkpoint(created, body, checkpoint.sign(authority.signing_key, body))


def us(text: str) -> int:
    """Beijing "YYYY-MM-DD HH:MM" in µs."""
    when = dt.datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=BEIJING)
    return int(when.timestamp() * 1_000_000)


#: (title, host, owner, due, status, created, updated): the console's findings.
FINDINGS = [
    ("U盘违规接入", "sec-pc-02", "li", "2026-11-30", "open", "2026-10-02 13:00", "2026-10-02 13:00"),
    ("无线网卡外联", "sec-pc-01", "zhang", "2027-01-31", "rectifying", "2026-09-16 10:00", "2026-09-20 10:00"),
    ("会议室检查未通过", "meet-room-1", "sun", "2026-10-31", "closed", "2026-09-21 10:00", "2026-10-20 10:00"),
    ("陈静离职交接未完成", "sec-pc-02", "chen", "2027-02-01", "open", "2026-11-21 10:00", "2026-11-21 10:00"),
    ("旧问题", "sec-pc-01", "zhang", "2026-03-01", "closed", "2026-02-01 10:00", "2026-03-01 10:00"),
]  # fmt: skip


def add_findings(store: Store) -> None:
    """Store FINDINGS through the console's store methods."""
    for title, host, owner, due, state, created, updated in FINDINGS:
        store.add_finding(
            FindingRow(
                id=0,
                host_id=host,
                seq=1,
                title=title,
                severity=events_pb2.SEVERITY_HIGH,
                owner=owner,
                due=due,
                status=state,
                note="",
                created_us=us(created),
                created_by="secadmin",
                updated_us=us(updated),
                updated_by="secadmin",
            )
        )
