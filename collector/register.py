"""The classification register (定密台账): requests, approvals, label orders and drift.

Every step of an entry -- requested, approved, rejected, applied, failed -- is a
``register_step`` event in the collector's own chain, so the register is kept in the
same tamper-evident record as every access. :class:`Register` is the table built from
those events (replayed at start, then kept up as steps are recorded), which the console
and ``baomi-collector register`` query.

Hosts take part through their own events: ``label_request`` (``baomi-agent label
request``), ``label_order_result`` (an order applied or failed) and ``label_inventory``
(the labelled files under their protected trees). :class:`RegisterService` reads them
from the store as they arrive (the ingest path is left alone), records the steps they
make, and compares each host's newest inventory with the register: a label nobody
approved, an entry missing on its host, a label that differs -- each an alert in the
chain and a finding. An approval makes a label order signed with the collector's
Ed25519 key (as policy bundles are), served to its host by ``WatchOrders``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import logging
import re
import secrets
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from baomi.v1 import collector_pb2, events_pb2
from cryptography.hazmat.primitives.asymmetric import ed25519

from collector.errors import CollectorError
from collector.ingest import COLLECTOR_HOST, CollectorChain, now_us
from collector.store import register_table
from collector.store.base import EventQuery, EventRow, FindingRow, Store

_logger = logging.getLogger(__name__)

POLL_SECONDS = 1.0  # between looks for hosts' register events
#: How far before the newest step it has, a collector looks for steps other collectors
#: on the same store recorded (their clocks may be behind): microseconds.
REFRESH_SLACK_US = 600 * 1_000_000
#: How far back of the last event taken a look for hosts' events goes: what another
#: collector sharing the store commits late, or stamps with a clock a little behind.
ARRIVAL_SLACK_US = 3600 * 1_000_000
ACTIONS = ("classify", "change", "declassify")
#: Statuses whose label the host must carry (for drift).
IN_FORCE = ("in_force", "changed", "declassified")
STATUSES = ("pending", "rejected", "approved", "failed", *IN_FORCE, "destroyed")
APPLIED_STATUS = {
    "classify": "in_force", "change": "changed", "declassify": "declassified",
    "destroy": "destroyed",
}  # fmt: skip
#: Requests a register entry takes: the label actions, and a destruction order
#: (collector/destruction.py), whose ``responsible`` is the person to carry it out.
ORDER_ACTIONS = (*ACTIONS, "destroy")
LEVEL_NAMES = {3: "绝密", 2: "机密", 1: "秘密", 0: "内部"}
_LEVEL_WORDS = {
    **{name: level for level, name in LEVEL_NAMES.items()},
    "top-secret": 3, "secret": 2, "confidential": 1, "internal": 0,
    "3": 3, "2": 2, "1": 1, "0": 0,
}  # fmt: skip
_SCOPE_RE = re.compile(r"(user|dept|role):[^,\s\x00-\x1f]{1,64}")
FINDING_AUTHOR = "register"  # created_by of the findings drift makes
DRIFT_KINDS = {
    "unapproved_label": "未登记的密级标志 (label not in the register)",
    "register_missing": "台账条目在主机上缺失 (register entry missing on the host)",
    "label_differs": "密级标志与台账不符 (label differs from the register)",
}


class RegisterError(CollectorError):
    """A register request or decision that cannot be taken; the message says why."""


# -- label orders ------------------------------------------------------------------
def order_signed_bytes(order: collector_pb2.LabelOrder) -> bytes:
    """What an order's signature covers: the order with an empty signature."""
    unsigned = collector_pb2.LabelOrder()
    unsigned.CopyFrom(order)
    unsigned.signature = b""
    return unsigned.SerializeToString(deterministic=True)


def sign_order(key: ed25519.Ed25519PrivateKey, order: collector_pb2.LabelOrder) -> None:
    """Sign ``order`` in place with the collector's key."""
    order.signature = key.sign(order_signed_bytes(order))


# -- checking what people type -----------------------------------------------------
def parse_level(text: str | int) -> int:
    """A level from 绝密/机密/秘密/内部, top-secret/..., or 3..0."""
    level = _LEVEL_WORDS.get(str(text).strip().lower())
    if level is None:
        raise RegisterError(
            f"level {str(text)[:20]!r} is not one of 绝密, 机密, 秘密, 内部 (or 3..0)"
        )
    return level


def parse_until(text: str) -> str:
    """A 保密期限 as an ISO date, "" when none."""
    text = text.strip()
    if not text:
        return ""
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError as e:
        raise RegisterError(f"保密期限 {text[:20]!r} is not a date YYYY-MM-DD") from e


def parse_scope(text: str | Iterable[str]) -> tuple[str, ...]:
    """知悉范围 entries (user:NAME, dept:NAME, role:NAME)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    scope = tuple(s.strip() for s in items if s.strip())
    bad = [s for s in scope if not _SCOPE_RE.fullmatch(s)]
    if bad:
        raise RegisterError(f"scope entry {bad[0][:70]!r} is not user:NAME, dept:NAME or role:NAME")
    return scope


def check_request(req: events_pb2.LabelRequest) -> None:
    """RegisterError saying what is missing or wrong in a request."""
    if req.action not in ORDER_ACTIONS:
        raise RegisterError(f"action {req.action[:20]!r} is not one of {', '.join(ORDER_ACTIONS)}")
    if not req.host or not req.path.startswith("/"):
        raise RegisterError("a request names the host and the file's absolute path")
    if req.action == "classify":
        for name, value in (("title", req.title), ("basis (定密依据)", req.basis)):
            if not value.strip():
                raise RegisterError(f"a classification request needs its {name}")
        if req.level == events_pb2.LEVEL_UNCLASSIFIED:
            raise RegisterError("classify at 秘密, 机密 or 绝密; 内部 needs no register entry")
    elif not req.register_id:
        raise RegisterError(f"a {req.action} request names the register entry (register id)")
    if req.action == "destroy" and not req.responsible.strip():
        raise RegisterError("a destroy request names the person to carry it out (responsible)")
    parse_until(req.until)
    parse_scope(req.scope)


# -- the table ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HistoryStep:
    """One recorded step of an entry, with the chain position that records it."""

    time_us: int
    seq: int  # in the collector's chain
    step: str
    actor: str
    detail: str


@dataclass(slots=True)
class Entry:
    """One classified item of the register."""

    register_id: str
    host: str
    home: str
    title: str
    level: int
    until: str
    scope: tuple[str, ...]
    basis: str
    responsible: str
    requester: str
    created_us: int
    updated_us: int
    status: str = "pending"
    approver: str = ""
    approved_us: int = 0
    content_hash: str = ""
    #: The request waiting for a decision, and the approved one waiting for its host.
    pending: events_pb2.LabelRequest | None = None
    order: collector_pb2.LabelOrder | None = None  # unsigned; signed when served
    status_before: str = ""  # restored when a change or declassification fails
    history: list[HistoryStep] = field(default_factory=list)

    @property
    def level_name(self) -> str:
        """绝密/机密/秘密/内部."""
        return LEVEL_NAMES.get(self.level, str(self.level))

    def row(self) -> register_table.RegisterRow:
        """The entry as the register's table holds it."""
        return register_table.RegisterRow(
            register_id=self.register_id,
            host=self.host,
            home=self.home,
            title=self.title,
            level=self.level,
            until=self.until,
            scope=",".join(self.scope),
            basis=self.basis,
            responsible=self.responsible,
            requester=self.requester,
            approver=self.approver,
            status=self.status,
            content_hash=self.content_hash,
            created_at=self.created_us,
            approved_at=self.approved_us,
            updated_at=self.updated_us,
        )


class Register:
    """The register as the ``register_step`` events of the collector's chain make it."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.requests: set[str] = set()  # request ids recorded (a host's is taken once)
        self.orders_done: set[str] = set()  # orders whose outcome is recorded
        self.refused: list[events_pb2.RegisterStep] = []  # hosts' requests refused
        self._taken: set[tuple[str, int]] = set()  # (chain, seq) of the steps applied
        self.dirty: set[str] = set()  # entries changed since the table was last written
        self.newest_us = 0  # the newest step's time

    @classmethod
    def load(cls, store: Store) -> Register:
        """Replay every register step in the store."""
        register = cls()
        register.take(steps_in(store))
        return register

    def take(self, rows: list[EventRow]) -> int:
        """Apply the stored steps not applied yet (another collector on the same store
        may have recorded some), in the order they were recorded; how many."""
        chains: dict[str, list[EventRow]] = {}
        for r in rows:
            if (r.host_id, r.seq) not in self._taken:
                chains.setdefault(r.host_id, []).append(r)
        # Each chain in its own order (seq, whatever its clock did); chains interleaved
        # by time, the only order there is between collectors.
        ordered = [sorted(c, key=lambda r: r.seq) for c in chains.values()]
        new = list(heapq.merge(*ordered, key=lambda r: r.event_time_us))
        for row in new:
            self.apply_row(row)
        return len(new)

    def apply_row(self, row: EventRow) -> None:
        """Take one stored ``register_step`` event into the table."""
        if (row.host_id, row.seq) in self._taken:
            return
        self._taken.add((row.host_id, row.seq))
        self.newest_us = max(self.newest_us, row.event_time_us)
        event = events_pb2.Event.FromString(row.body)
        self.apply(event.register_step, row.event_time_us, row.seq)

    def apply(self, step: events_pb2.RegisterStep, time_us: int, seq: int) -> None:
        """Take one step into the table (steps come in chain order)."""
        if step.request_id:
            self.requests.add(step.request_id)
        req = step.request
        entry = self.entries.get(step.register_id)
        if step.step == "refused":
            self.refused.append(step)  # a host's request that named no valid change
            return
        if step.step == "requested":
            if entry is None:
                entry = self.entries[step.register_id] = Entry(
                    register_id=step.register_id,
                    host=req.host,
                    home=req.path,
                    title=req.title,
                    level=req.level,
                    until=req.until,
                    scope=tuple(req.scope),
                    basis=req.basis,
                    responsible=req.responsible,
                    requester=req.requester,
                    created_us=time_us,
                    updated_us=time_us,
                    content_hash=req.content_hash,
                )
            entry.pending = req
            detail = f"{req.action} {LEVEL_NAMES.get(req.level, '?')} until {req.until or '-'}"
        elif entry is None:
            _logger.error("register step %s names unknown entry %s", step.step, step.register_id)
            return
        elif step.step == "approved":
            entry.pending = None
            if req.action == "destroy":  # in force until the host reports it destroyed
                entry.order = destroy_order(entry, step.order_id, req.responsible, time_us)
                entry.history.append(
                    HistoryStep(time_us, seq, step.step, step.actor,
                                f"order {step.order_id}: destroy by {req.responsible}")
                )  # fmt: skip
                entry.updated_us = time_us
                return
            entry.approver, entry.approved_us = step.actor, time_us
            entry.level, entry.until, entry.scope = req.level, req.until, tuple(req.scope)
            if req.title:
                entry.title = req.title
            if req.basis:
                entry.basis = req.basis
            entry.status_before, entry.status = entry.status, "approved"
            entry.order = collector_pb2.LabelOrder(
                order_id=step.order_id,
                host_id=entry.host,
                home=entry.home,
                content_hash=req.content_hash,
                level=req.level,
                until=req.until,
                scope=list(req.scope),
                register_id=entry.register_id,
                action=req.action,
                issued_us=time_us,
            )
            detail = f"order {step.order_id}: {req.action} {LEVEL_NAMES.get(req.level, '?')}"
        elif step.step == "rejected":
            if entry.pending is not None and entry.pending.action == "classify":
                entry.status = "rejected"
            entry.pending = None
            detail = step.reason
        elif step.step in ("applied", "failed"):
            self.orders_done.add(step.order_id)
            if entry.order is not None and entry.order.order_id == step.order_id:
                if step.step == "applied":
                    entry.status = APPLIED_STATUS.get(entry.order.action, "in_force")
                    entry.content_hash = step.content_hash or entry.content_hash
                else:
                    first = entry.order.action == "classify"
                    entry.status = "failed" if first else entry.status_before
                entry.order = None
            detail = f"order {step.order_id}" + (f": {step.reason}" if step.reason else "")
        else:
            detail = step.reason
        entry.updated_us = time_us
        entry.history.append(HistoryStep(time_us, seq, step.step, step.actor, detail))
        self.dirty.add(entry.register_id)

    def for_host(self, host: str) -> list[Entry]:
        """Entries of files on ``host``."""
        return [e for e in self.entries.values() if e.host == host]

    def listing(self, status: str | None = None) -> list[Entry]:
        """Entries, newest first, optionally of one status."""
        rows = [e for e in self.entries.values() if status in (None, e.status)]
        return sorted(rows, key=lambda e: e.created_us, reverse=True)


def steps_in(store: Store, since_us: int | None = None) -> list[EventRow]:
    """The register steps the collectors' chains hold (dated from ``since_us`` on)."""
    rows = store.query(EventQuery(kind="register_step", since_us=since_us, limit=None))
    return [r for r in rows if r.host_id.startswith(COLLECTOR_HOST)]


@dataclass(frozen=True, slots=True)
class Drift:
    """One difference between a host's labelled files and the register."""

    kind: str  # unapproved_label, register_missing, label_differs
    host: str
    home: str
    detail: str

    @property
    def title(self) -> str:
        """The finding's title: what, and where (also its identity for de-duplication)."""
        return f"{DRIFT_KINDS[self.kind]}: {self.host}:{self.home}"[:200]


def destroy_order(
    entry: Entry, order_id: str, person: str, issued_us: int
) -> collector_pb2.LabelOrder:
    """A destruction order for ``entry``: its scope names the one person to carry it out."""
    return collector_pb2.LabelOrder(
        order_id=order_id,
        host_id=entry.host,
        home=entry.home,
        level=entry.level,  # type: ignore[arg-type]
        until=entry.until,
        scope=[f"user:{person}"],
        register_id=entry.register_id,
        action="destroy",
        issued_us=issued_us,
    )


def drift(register: Register, host: str, files: Iterable[events_pb2.LabelledFile]) -> list[Drift]:
    """What differs between ``host``'s inventory and the register, by home (a host
    lists its files in the order it walks its trees)."""
    found: list[Drift] = []
    seen: set[str] = set()
    for f in files:
        seen.add(f.home)
        entry = register.entries.get(f.register_id) if f.register_id else None
        if entry is None:
            found.append(
                Drift(
                    "unapproved_label",
                    host,
                    f.home,
                    f"labelled {LEVEL_NAMES.get(f.level, '?')} "
                    f"(label id {f.register_id or 'none'}) without an approved register entry",
                )
            )
            continue
        if entry.status not in IN_FORCE:
            continue  # requested or being applied: not drift yet
        want = (entry.host, entry.home, entry.level, entry.until, entry.scope)
        have = (host, f.home, f.level, f.until, tuple(f.scope))
        if want != have or f.problem:
            found.append(
                Drift(
                    "label_differs",
                    host,
                    f.home,
                    f"register {entry.register_id}: {_describe(*want[2:])} on "
                    f"{entry.host}:{entry.home}; the host has {_describe(*have[2:])}"
                    + (f" ({f.problem})" if f.problem else ""),
                )
            )
    for entry in register.for_host(host):
        if entry.status in IN_FORCE and entry.home not in seen:
            found.append(
                Drift(
                    "register_missing",
                    host,
                    entry.home,
                    f"register {entry.register_id} ({entry.status}) is not labelled on the host",
                )
            )
    return sorted(found, key=lambda d: (d.home, d.kind))


def _describe(level: int, until: str, scope: tuple[str, ...]) -> str:
    return f"{LEVEL_NAMES.get(level, '?')} until {until or '-'} scope {','.join(scope) or 'any'}"


# -- the service -------------------------------------------------------------------
@dataclass(slots=True)
class _HostEvents:
    """Where the reading of hosts' register events stands."""

    #: Per kind: the events taken within ARRIVAL_SLACK_US of the newest, (host, seq) ->
    #: when it arrived, and the arrival time of the newest taken.
    seen: dict[str, dict[tuple[str, int], int]] = field(default_factory=dict)
    since: dict[str, int] = field(default_factory=dict)
    inventories: dict[str, tuple[int, list[events_pb2.LabelledFile]]] = field(default_factory=dict)


class RegisterService:
    """Requests, decisions, label orders and drift, recorded in the collector's chain."""

    def __init__(self, store: Store, chain: CollectorChain, key: ed25519.Ed25519PrivateKey) -> None:
        self._store = store
        self._chain = chain
        self._key = key
        self.register = Register.load(store)
        self._write_table(store)  # whole, from the record: the table is only a view of it
        self._host_events = _HostEvents()
        self._lock = asyncio.Lock()  # one decision at a time: steps stay in order
        self._changed = asyncio.Event()

    def _write_table(self, store: Store) -> None:
        """Write the entries changed since the last write to the register's table."""
        changed = [self.register.entries[r].row() for r in sorted(self.register.dirty)]
        self.register.dirty.clear()
        if changed:
            register_table.put(store, changed)

    # -- steps ----------------------------------------------------------------------
    async def _record(self, step: events_pb2.RegisterStep, severity: int) -> None:
        row = await self._chain.record(severity, register_step=step)
        self.register.apply_row(row)
        await asyncio.to_thread(self._write_table, self._store)
        self._changed.set()
        self._changed = asyncio.Event()

    async def request(self, req: events_pb2.LabelRequest, *, actor: str, source: str = "") -> str:
        """Record a request; its register id (new for a classification)."""
        check_request(req)
        if req.host not in await asyncio.to_thread(self._store.hosts):
            raise RegisterError(f"host {req.host[:63]!r} is not enrolled here: check its name")
        async with self._lock:
            await self._catch_up()
            if req.action == "classify":
                register_id = new_register_id()
            else:
                entry = self.register.entries.get(req.register_id)
                if entry is None:
                    raise RegisterError(f"no register entry {req.register_id[:64]!r}")
                if entry.status not in IN_FORCE:
                    raise RegisterError(
                        f"register {entry.register_id} is {entry.status}: only an entry in "
                        "force can be changed or declassified"
                    )
                if (entry.host, entry.home) != (req.host, req.path):
                    raise RegisterError(
                        f"register {entry.register_id} is {entry.host}:{entry.home}, "
                        f"not {req.host}:{req.path}"
                    )
                if entry.pending is not None or entry.order is not None:
                    raise RegisterError(f"register {entry.register_id} has a request in progress")
                register_id = entry.register_id
                if req.action == "declassify":
                    del req.scope[:]
                    req.level, req.until = events_pb2.LEVEL_UNCLASSIFIED, ""
            if not req.request_id:
                req.request_id = f"req-{secrets.token_hex(6)}"
            step = events_pb2.RegisterStep(
                register_id=register_id,
                step="requested",
                request_id=req.request_id,
                actor=actor[:200],
                request=req,
                status=self.register.entries[register_id].status
                if register_id in self.register.entries
                else "pending",
                source=source,
            )
            await self._record(step, events_pb2.SEVERITY_INFO)
            return register_id

    async def approve(self, register_id: str, *, actor: str) -> str:
        """Approve the pending request of an entry; the label order's id."""
        async with self._lock:
            await self._catch_up()
            entry = self._pending(register_id)
            assert entry.pending is not None  # noqa: S101 - _pending checked it
            if entry.pending.requester == actor:
                # Who asks does not decide: another approver (a second secadmin) does.
                raise RegisterError(
                    f"{actor} made this request and cannot approve it; another approver must"
                )
            order_id = f"order-{secrets.token_hex(6)}"
            await self._record(
                events_pb2.RegisterStep(
                    register_id=register_id,
                    step="approved",
                    request_id=entry.pending.request_id,
                    actor=actor[:200],
                    request=entry.pending,
                    order_id=order_id,
                    status="approved",
                ),
                events_pb2.SEVERITY_MEDIUM,
            )
            return order_id

    async def reject(self, register_id: str, *, actor: str, reason: str) -> None:
        """Reject the pending request of an entry, saying why."""
        if not reason.strip():
            raise RegisterError("say why the request is rejected")
        async with self._lock:
            await self._catch_up()
            entry = self._pending(register_id)
            assert entry.pending is not None  # noqa: S101 - _pending checked it
            after = "rejected" if entry.pending.action == "classify" else entry.status
            await self._record(
                events_pb2.RegisterStep(
                    register_id=register_id,
                    step="rejected",
                    request_id=entry.pending.request_id,
                    actor=actor[:200],
                    reason=reason.strip()[:1000],
                    request=entry.pending,
                    status=after,
                ),
                events_pb2.SEVERITY_INFO,
            )

    def _pending(self, register_id: str) -> Entry:
        entry = self.register.entries.get(register_id)
        if entry is None:
            raise RegisterError(f"no register entry {register_id[:64]!r}")
        if entry.pending is None:
            raise RegisterError(f"register {register_id} has no request waiting for a decision")
        return entry

    # -- orders -----------------------------------------------------------------------
    def orders_for(self, host: str) -> list[collector_pb2.LabelOrder]:
        """Signed orders approved for ``host`` and not yet applied or failed there."""
        orders = []
        for entry in self.register.for_host(host):
            if entry.order is not None and entry.order.order_id not in self.register.orders_done:
                order = collector_pb2.LabelOrder()
                order.CopyFrom(entry.order)
                sign_order(self._key, order)
                orders.append(order)
        return orders

    async def watch_orders(self, host: str) -> AsyncIterator[collector_pb2.LabelOrder]:
        """Every order for ``host`` now, then each new one (until the call ends)."""
        sent: set[str] = set()
        while True:
            changed = self._changed
            for order in self.orders_for(host):
                if order.order_id not in sent:
                    sent.add(order.order_id)
                    yield order
            await changed.wait()

    # -- hosts' events ------------------------------------------------------------------
    async def run(self) -> None:
        """Take hosts' register events every POLL_SECONDS until cancelled."""
        while True:
            try:
                await self.take_host_events()
            except Exception:
                _logger.exception("reading hosts' register events failed; retrying")
            await asyncio.sleep(POLL_SECONDS)

    async def refresh(self) -> bool:
        """Take steps other collectors sharing the store recorded; True if any."""
        async with self._lock:
            return await self._catch_up()

    async def _catch_up(self) -> bool:
        """``refresh`` with the lock held: a decision is taken on the newest register."""
        # Only lately dated steps: all of them every second would be read for nothing.
        since = self.register.newest_us - REFRESH_SLACK_US if self.register.newest_us else None
        rows = await asyncio.to_thread(steps_in, self._store, since)
        if not self.register.take(rows):
            return False
        await asyncio.to_thread(self._write_table, self._store)
        self._changed.set()
        self._changed = asyncio.Event()
        return True

    async def take_host_events(self) -> None:
        """Record the steps hosts' new events make, then look for drift."""
        await self.refresh()
        changed_hosts: set[str] = set()
        async for row in self._new_rows("label_request"):
            await self._host_request(row)
        async for row in self._new_rows("label_order_result"):
            await self._order_result(row)
            changed_hosts.add(row.host_id)
        inventories = self._host_events.inventories
        async for row in self._new_rows("label_inventory", newest_per_host=True):
            if row.seq > inventories.get(row.host_id, (0, []))[0]:
                files = list(events_pb2.Event.FromString(row.body).label_inventory.files)
                inventories[row.host_id] = (row.seq, files)
                changed_hosts.add(row.host_id)
        for host in sorted(changed_hosts & set(inventories)):
            await self._alert_drift(host, drift(self.register, host, inventories[host][1]))

    async def _new_rows(
        self, kind: str, *, newest_per_host: bool = False
    ) -> AsyncIterator[EventRow]:
        """The events of ``kind`` not taken yet, by host and seq, read one at a time.

        Looked for by when they arrived (the collector's clock), not by the host's: what
        an offline host spooled long ago arrives when it is delivered. Every event that
        arrived since the last look is taken, however many. Keys first, then the body of
        each new one only: an inventory is up to ~1.5 MB, and this runs every second.
        The first look takes the whole record; with ``newest_per_host`` (inventories,
        where only the newest counts) only each host's newest event is read.
        """
        state = self._host_events
        since = state.since.get(kind)
        keys = await asyncio.to_thread(
            self._store.received_keys, kind, 0 if since is None else since - ARRIVAL_SLACK_US
        )
        seen = state.seen.setdefault(kind, {})
        new = sorted(
            (host, seq, at)
            for host, seq, at in keys
            if (host, seq) not in seen and host != COLLECTOR_HOST
        )
        newest: dict[str, int] = {}
        for host, seq, _ in new:
            newest[host] = max(seq, newest.get(host, seq))
        for host, seq, at in new:
            seen[(host, seq)] = at
            if newest_per_host and seq != newest[host]:
                continue
            row = await asyncio.to_thread(self._store.event, host, seq)
            if row is not None:
                yield row
        latest = max([since or 0, *(at for _, _, at in keys)])
        state.since[kind] = latest
        floor = latest - ARRIVAL_SLACK_US  # what no later look returns again
        state.seen[kind] = {key: at for key, at in seen.items() if at >= floor}

    async def _host_request(self, row: EventRow) -> None:
        req = events_pb2.Event.FromString(row.body).label_request
        if req.request_id in self.register.requests:
            return
        req.host = row.host_id  # a host asks for its own files only
        source = f"{row.host_id}/{row.seq}"
        try:
            await self.request(req, actor=f"{req.requester or '?'}@{row.host_id}", source=source)
        except RegisterError as e:
            # Recorded as a step of its own, so a restarted collector refuses it only once.
            _logger.warning("label request %s refused: %s", source, e)
            async with self._lock:
                await self._record(
                    events_pb2.RegisterStep(
                        step="refused",
                        request_id=req.request_id,
                        actor=f"{req.requester or '?'}@{row.host_id}",
                        reason=str(e)[:1000],
                        request=req,
                        source=source,
                    ),
                    events_pb2.SEVERITY_LOW,
                )

    async def _order_result(self, row: EventRow) -> None:
        result = events_pb2.Event.FromString(row.body).label_order_result
        entry = self.register.entries.get(result.register_id)
        if (
            result.order_id in self.register.orders_done
            or entry is None
            or entry.host != row.host_id
        ):
            return
        async with self._lock:
            await self._record(
                events_pb2.RegisterStep(
                    register_id=result.register_id,
                    step="applied" if result.ok else "failed",
                    order_id=result.order_id,
                    actor=f"host:{row.host_id}",
                    reason=result.error[:1000],
                    content_hash=result.content_hash,
                    source=f"{row.host_id}/{row.seq}",
                    status=APPLIED_STATUS.get(entry.order.action, "in_force")
                    if result.ok and entry.order is not None
                    else entry.status_before or "failed",
                ),
                events_pb2.SEVERITY_INFO if result.ok else events_pb2.SEVERITY_MEDIUM,
            )

    async def _alert_drift(self, host: str, found: list[Drift]) -> None:
        """An alert and a finding for each drift not already an open finding; a finding
        of this host's drift that is gone (the register covers the label now, or the
        label was put right) is closed, and that is recorded."""
        findings = await asyncio.to_thread(self._store.findings)
        open_ = [f for f in findings if f.status != "closed"]
        now_titles = {d.title for d in found}
        for f in open_:
            if f.created_by != FINDING_AUTHOR or f": {host}:" not in f.title:
                continue
            if f.title in now_titles:
                continue
            await self._chain.alert(
                "drift_resolved",
                f"{f.title} (finding {f.id}): no longer found on the host",
                subject_host=host,
                severity=events_pb2.SEVERITY_INFO,
            )
            await asyncio.to_thread(
                self._store.update_finding,
                f.id,
                owner=f.owner,
                due=f.due,
                status="closed",
                note=f"{f.note} | 已消除 resolved: no longer found on the host"[:2000],
                by=FINDING_AUTHOR,
                now_us=now_us(),
            )
        known = {f.title for f in open_}
        for d in found:
            if d.title in known:
                continue
            known.add(d.title)
            alert = await self._chain.record(
                events_pb2.SEVERITY_MEDIUM,
                tamper=events_pb2.Tamper(
                    kind=d.kind, detail=f"{d.host}:{d.home}: {d.detail}"[:2000], subject_host=d.host
                ),
            )
            now = now_us()
            await asyncio.to_thread(
                self._store.add_finding,
                FindingRow(
                    id=0,
                    host_id=COLLECTOR_HOST,
                    seq=alert.seq,
                    title=d.title,
                    severity=alert.severity,
                    owner="",
                    due="",
                    status="open",
                    note=d.detail[:2000],
                    created_us=now,
                    created_by=FINDING_AUTHOR,
                    updated_us=now,
                    updated_by=FINDING_AUTHOR,
                ),
            )

    def host_drift(self) -> dict[str, list[Drift]]:
        """Per host that sent an inventory, what differs from the register now."""
        return {
            host: drift(self.register, host, files)
            for host, (_, files) in sorted(self._host_events.inventories.items())
        }


def new_register_id() -> str:
    """A fresh register id, e.g. ``DM-20261207-3f9a1c`` (a valid label id)."""
    return f"DM-{dt.datetime.now(dt.UTC):%Y%m%d}-{secrets.token_hex(3)}"
