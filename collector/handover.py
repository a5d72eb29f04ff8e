"""Leaver handover (离职交还): the register items a leaver holds, closed one by one.

What a person "holds": every register entry that is classified (in force or changed;
declassified ones no longer need handing back) or already destroyed, for which the
person is

* the responsible person (定密责任人) or the requester who made it (制作/申请), or
* a reader per the record: an allowed ``file_access`` of theirs carries the entry's
  register id -- a derived copy carries its source's id, so reading or writing a copy
  counts as holding the item too.

Each item is ``held`` until a secadmin closes it in the console as ``returned`` (交还),
or as ``destroyed`` by pointing at the destruction record (``HOST/SEQ`` of a
``file_change`` destroyed of that entry); an entry destroyed under its order is
``destroyed`` for everyone. Each closing is a ``register_step`` of step ``handover``
in the collector's chain (reason ``returned: leaver LOGIN`` or ``destroyed: leaver
LOGIN``, the destruction record as its source), so the entry's history shows it. The
review is signed off (a console action ``leaver_signoff``) only when nothing is held.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from baomi.v1 import events_pb2

from collector.destruction import find_destruction
from collector.ingest import COLLECTOR_HOST, CollectorChain
from collector.register import Entry, Register, RegisterError
from collector.store.base import EventQuery, Store

STEP = "handover"
SIGNOFF = "leaver_signoff"  # the console action that signs a review off
HOLDABLE = ("in_force", "changed", "destroyed")
CLOSED_AS = ("returned", "destroyed")


@dataclass(frozen=True, slots=True)
class Item:
    """One register item a person holds, and where its handover stands."""

    entry: Entry
    why: tuple[str, ...]  # responsible, requester, reader
    state: str  # held, returned, destroyed
    record: str = ""  # the destruction record (HOST/SEQ) it was closed with


def target(login: str) -> str:
    """The console action target of a leaver's review."""
    return f"leaver {login}"


def _closings(store: Store, login: str) -> dict[str, tuple[str, str]]:
    """register id -> (returned|destroyed, record) as recorded for ``login``."""
    rows = store.query(EventQuery(host_id=COLLECTOR_HOST, kind="register_step", limit=None))
    out: dict[str, tuple[str, str]] = {}
    for row in sorted(rows, key=lambda r: r.seq):
        step = events_pb2.Event.FromString(row.body).register_step
        how, _, who = step.reason.partition(": leaver ")
        if step.step == STEP and who == login and how in CLOSED_AS:
            out[step.register_id] = (how, step.source)
    return out


def items(store: Store, register: Register, login: str) -> list[Item]:
    """The register items ``login`` holds, with their handover state, by register id."""
    why: dict[str, list[str]] = {}
    for e in register.entries.values():
        if e.status in HOLDABLE:
            if e.responsible == login:
                why.setdefault(e.register_id, []).append("responsible")
            if e.requester == login:
                why.setdefault(e.register_id, []).append("requester")
    for row in store.scan(EventQuery(kind="file_access", limit=None)):
        access = events_pb2.Event.FromString(row.body).file_access
        entry = register.entries.get(access.label_id) if access.label_id else None
        if (
            entry is not None
            and entry.status in HOLDABLE
            and access.user == login
            and access.decision == events_pb2.DECISION_ALLOW
        ):
            reasons = why.setdefault(entry.register_id, [])
            if "reader" not in reasons:
                reasons.append("reader")
    closed = _closings(store, login)
    found = []
    for rid in sorted(why):
        entry = register.entries[rid]
        how, record = closed.get(rid, ("held", ""))
        if entry.status == "destroyed" and how == "held":
            how = "destroyed"
        found.append(Item(entry, tuple(why[rid]), how, record))
    return found


def signed_off(store: Store, login: str) -> tuple[str, int] | None:
    """(who, when) of the review's sign-off, None while it is not signed off."""
    rows = store.query(EventQuery(host_id=COLLECTOR_HOST, kind="console_action", limit=None))
    for row in sorted(rows, key=lambda r: r.seq, reverse=True):
        action = events_pb2.Event.FromString(row.body).console_action
        if action.action == SIGNOFF and action.ok and action.target == target(login):
            return action.actor, row.event_time_us
    return None


def check_signoff(held: list[Item]) -> None:
    """RegisterError naming the items still held; nothing when none is."""
    still = [i.entry.register_id for i in held if i.state == "held"]
    if still:
        raise RegisterError(
            f"{len(still)} register items are still held ({', '.join(still[:20])}): record "
            "each returned or destroyed before signing the review off"
        )


async def close_item(
    store: Store,
    register: Register,
    chain: CollectorChain,
    *,
    login: str,
    register_id: str,
    how: str,
    record: str,
    actor: str,
) -> None:
    """Record an item of ``login`` returned, or destroyed (``record``: HOST/SEQ)."""
    if how not in CLOSED_AS:
        raise RegisterError(f"close an item as {' or '.join(CLOSED_AS)}, not {how[:20]!r}")
    held = await asyncio.to_thread(items, store, register, login)
    if register_id not in {i.entry.register_id for i in held}:
        raise RegisterError(f"{login} holds no register item {register_id[:64]!r}")
    source = ""
    if how == "destroyed":
        if not record.strip():
            raise RegisterError("point at the destruction record (HOST/SEQ, e.g. ws-01/42)")
        done = await asyncio.to_thread(find_destruction, store, register, record)
        if done.register_id != register_id:
            raise RegisterError(
                f"{record.strip()} destroyed register {done.register_id}, not {register_id}"
            )
        source = done.ref
    step = events_pb2.RegisterStep(
        register_id=register_id,
        step=STEP,
        actor=actor[:200],
        reason=f"{how}: leaver {login}",
        source=source,
        status=register.entries[register_id].status,
    )
    row = await chain.record(events_pb2.SEVERITY_INFO, register_step=step)
    register.apply(step, row.event_time_us, row.seq)
