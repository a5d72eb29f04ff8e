"""Recorded destruction (销毁) at the collector: orders, and the destructions recorded.

A secadmin asks for the destruction of a register entry in the console, naming the one
person who is to carry it out: a ``destroy`` request, decided like any other request
(approved or rejected in the register, by an approver other than who asked). The
approval makes a signed label order of action ``destroy`` served to the entry's host
(collector/register.py); the host applies it only when that person runs ``baomi-agent
destroy`` (agent/destroy.py). Its ``file_change`` of change ``destroyed`` is the
destruction record, and its ``label_order_result`` marks the entry destroyed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from baomi.v1 import events_pb2

from collector.ingest import COLLECTOR_HOST
from collector.register import Register, RegisterError, RegisterService
from collector.store.base import EventQuery, EventRow, Store

DESTROYED = "destroyed"  # FileChange.change of a destruction
_PERSON_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


async def request_destruction(
    service: RegisterService, register_id: str, *, person: str, actor: str
) -> None:
    """Ask for the destruction of an entry in force by ``person``; an approver decides."""
    person = person.strip()
    if not _PERSON_RE.fullmatch(person):
        raise RegisterError(
            "name the person who is to destroy the file by login name (letters, digits, . _ -)"
        )
    entry = service.register.entries.get(register_id)
    if entry is None:
        raise RegisterError(f"no register entry {register_id[:64]!r}")
    request = events_pb2.LabelRequest(
        action="destroy",
        register_id=register_id,
        host=entry.host,
        path=entry.home,
        level=entry.level,  # type: ignore[arg-type]
        requester=actor,
        responsible=person,
    )
    await service.request(request, actor=actor)


@dataclass(frozen=True, slots=True)
class Destruction:
    """One destruction as its host recorded it, with what the register says of it."""

    host: str
    seq: int
    time_us: int
    path: str
    home: str
    register_id: str
    level: int
    content_hash: str
    order_id: str
    person: str
    title: str
    approver: str  # who issued the order

    @property
    def ref(self) -> str:
        """HOST/SEQ of the record, as the console names events."""
        return f"{self.host}/{self.seq}"


def destruction_of(row: EventRow, register: Register) -> Destruction | None:
    """The destruction a stored event records, None when it records none."""
    if row.kind != "file_change" or row.host_id == COLLECTOR_HOST:
        return None
    change = events_pb2.Event.FromString(row.body).file_change
    if change.change != DESTROYED:
        return None
    try:
        detail = json.loads(change.detail)
    except ValueError:
        detail = {}
    if not isinstance(detail, dict):
        detail = {}
    order_id = str(detail.get("order", ""))
    entry = register.entries.get(change.label_id)
    approver = ""
    if entry is not None:
        approver = next(
            (h.actor for h in entry.history if h.step == "approved" and order_id in h.detail),
            "",
        )
    return Destruction(
        host=row.host_id,
        seq=row.seq,
        time_us=row.event_time_us,
        path=change.path,
        home=change.home,
        register_id=change.label_id,
        level=change.level,
        content_hash=str(detail.get("sha256", "")),
        order_id=order_id,
        person=str(detail.get("by", "")),
        title=entry.title if entry is not None else "",
        approver=approver,
    )


def destructions(
    store: Store, register: Register, since_us: int | None = None, until_us: int | None = None
) -> list[Destruction]:
    """The destructions recorded in ``[since_us, until_us)``, oldest first."""
    rows: Iterable[EventRow] = store.scan(
        EventQuery(kind="file_change", since_us=since_us, until_us=until_us, limit=None)
    )
    found = [d for r in rows if (d := destruction_of(r, register)) is not None]
    return sorted(found, key=lambda d: (d.time_us, d.host, d.seq))


def find_destruction(store: Store, register: Register, ref: str) -> Destruction:
    """The destruction recorded as ``HOST/SEQ``; RegisterError saying what is wrong."""
    host, _, seq = ref.strip().rpartition("/")
    if not host or not seq.isdigit():
        raise RegisterError(f"{ref[:80]!r} is not a record HOST/SEQ (e.g. ws-01/42)")
    rows = store.query(EventQuery(host_id=host, kind="file_change", limit=None))
    row = next((r for r in rows if r.seq == int(seq)), None)
    found = destruction_of(row, register) if row is not None else None
    if found is None:
        raise RegisterError(f"{ref[:80]} is not a recorded destruction (file_change destroyed)")
    return found
