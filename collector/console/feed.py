"""The live feed: new events as they are committed, and what they say about each host.

One task polls the ingest writer's chain heads (memory, no query) and reads only what
is new, by primary key, so any number of open live views cost one small read per
change. Each new event goes to every subscriber (the SSE streams), to the alert sinks,
and into the per-host state the hosts page and the silence check use.

With several collector replicas on one PostgreSQL store, a replica's feed sees the
events its own ingest committed; the pages that query the store see them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from baomi.v1 import events_pb2

from collector.console.eventview import EventView, view
from collector.ingest import COLLECTOR_HOST, CollectorChain, now_us
from collector.store.base import ConsoleQuery, EventRow, Store

_logger = logging.getLogger(__name__)

POLL_SECONDS = 0.2  # between looks at the chain heads
CATCH_UP_ROWS = 2000  # rows read per host per poll; a backlog drains over several polls
SUBSCRIBER_QUEUE = 2000  # events buffered per live view before it is told to reload
HEARTBEAT_DEFAULT_SECONDS = 30.0  # assumed until two heartbeats of a host are seen
HEARTBEAT_BOUNDS = (1.0, 86_400.0)  # seconds; estimates outside are clamped
SILENCE_SLACK_SECONDS = 5.0  # beyond one heartbeat interval, for batching and the network

Heads = Callable[[], dict[str, tuple[int, bytes]]]
Sink = Callable[[EventView], None]
#: Runs a blocking store call off the event loop: ``await run(fn, *args)``.
Runner = Callable[..., Awaitable[Any]]


@dataclass
class HostState:
    """What the newest events of one host say about it."""

    host_id: str
    last_seen_us: int = 0  # collector's clock: when its newest event arrived
    status: events_pb2.AgentStatus | None = None  # newest heartbeat
    status_us: int = 0  # its event time
    interval_s: float = HEARTBEAT_DEFAULT_SECONDS
    applied: events_pb2.PolicyApplied | None = None  # newest policy_applied
    lag_s: float = 0.0  # received minus event time of its newest event
    alerted: bool = False  # a silence alert was raised and the host has not spoken since

    def observe(self, row: EventRow, event: events_pb2.Event) -> None:
        """Take in one event of this host, in seq order."""
        self.last_seen_us = max(self.last_seen_us, row.received_us)
        self.lag_s = max(0.0, (row.received_us - row.event_time_us) / 1e6)
        self.alerted = False
        if row.kind == "agent_status":
            declared = event.agent_status.heartbeat_seconds
            if declared:  # the agent says how often it reports
                self.interval_s = min(max(declared, HEARTBEAT_BOUNDS[0]), HEARTBEAT_BOUNDS[1])
            elif self.status is not None and row.event_time_us > self.status_us:
                gap = (row.event_time_us - self.status_us) / 1e6
                self.interval_s = min(max(gap, HEARTBEAT_BOUNDS[0]), HEARTBEAT_BOUNDS[1])
            self.status, self.status_us = event.agent_status, row.event_time_us
        elif row.kind == "policy_applied":
            self.applied = event.policy_applied

    @property
    def stopped(self) -> bool:
        """The agent said it was stopping (a clean stop is offline, not an alarm)."""
        return self.status is not None and self.status.state == "stopping"

    def silent(self, now: int) -> bool:
        """Quiet for longer than its heartbeat interval (plus slack)."""
        allowed = (self.interval_s + SILENCE_SLACK_SECONDS) * 1_000_000
        return self.last_seen_us > 0 and now - self.last_seen_us > allowed


@dataclass(eq=False)  # identity: each view is its own subscriber
class Subscription:
    """One live view's queue of new events."""

    queue: asyncio.Queue[EventView] = field(
        default_factory=lambda: asyncio.Queue(maxsize=SUBSCRIBER_QUEUE)
    )
    overflowed: bool = False


class LiveFeed:
    """Polls for committed events and fans them out."""

    def __init__(
        self,
        store: Store,
        heads: Heads,
        chain: CollectorChain,
        run: Runner,
        leads: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self._store = store
        self._leads = leads  # whether this collector raises silence alerts now
        self._silence_lock = asyncio.Lock()
        self._run_blocking = run
        self._heads = heads
        self._chain = chain
        self._seen: dict[str, int] = {}
        self._subscribers: set[Subscription] = set()
        self.sinks: list[Sink] = []
        self.hosts: dict[str, HostState] = {}
        self.decommissioned: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self.closing = asyncio.Event()

    async def start(self) -> None:
        """Load where every host stands, then follow new events."""
        await self._run_blocking(self._load)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop polling and end every live view."""
        self.closing.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _load(self) -> None:
        heads = self._heads()
        self._seen = {h: seq for h, (seq, _) in heads.items()}
        self.decommissioned = self._store.decommissioned()
        for host in sorted(set(self._store.hosts()) | set(heads)):
            if host == COLLECTOR_HOST:
                continue
            state = HostState(host)
            statuses = self._store.console_events(
                ConsoleQuery(host_id=host, kind="agent_status", limit=2)
            )
            for row in reversed(statuses):
                state.observe(row, events_pb2.Event.FromString(row.body))
            applied = self._store.console_events(
                ConsoleQuery(host_id=host, kind="policy_applied", limit=1)
            )
            for row in applied:
                state.applied = events_pb2.Event.FromString(row.body).policy_applied
            seq = heads.get(host, (0, b""))[0]
            newest = self._store.event(host, seq) if seq else None
            if newest is not None:
                state.last_seen_us = newest.received_us
            state.alerted = False
            self.hosts[host] = state

    def subscribe(self) -> Subscription:
        """A queue that receives every event committed from now on."""
        sub = Subscription()
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering to ``sub``."""
        self._subscribers.discard(sub)

    async def _run(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception:
                _logger.exception("live feed poll failed; retrying")
            await asyncio.sleep(POLL_SECONDS)

    async def poll(self) -> int:
        """Read and deliver whatever was committed since the last poll; how many."""
        changed = {
            host: self._seen.get(host, 0)
            for host, (seq, _) in self._heads().items()
            if seq > self._seen.get(host, 0)
        }
        if not changed:
            return 0
        rows = await self._run_blocking(self._fetch, changed)
        for row in rows:
            self._seen[row.host_id] = max(self._seen.get(row.host_id, 0), row.seq)
            self._deliver(view(row))
        return len(rows)

    def _fetch(self, changed: dict[str, int]) -> list[EventRow]:
        rows: list[EventRow] = []
        for host, after in changed.items():
            rows.extend(self._store.events_after(host, after, CATCH_UP_ROWS))
        rows.sort(key=lambda r: r.received_us)
        return rows

    def _deliver(self, v: EventView) -> None:
        host = v.row.host_id
        if host != COLLECTOR_HOST:
            self.hosts.setdefault(host, HostState(host)).observe(v.row, v.event)
        for sub in self._subscribers:
            try:
                sub.queue.put_nowait(v)
            except asyncio.QueueFull:
                sub.overflowed = True  # the view reloads instead of showing a gap
        for sink in self.sinks:
            try:
                sink(v)
            except Exception:
                _logger.exception("an event sink failed on %s", v.key)

    async def check_silence(self) -> list[str]:
        """Raise one alert per host that went quiet; return the hosts alerted now.

        The feed sees what this collector ingests. Of collectors sharing a store, only
        the one that leads alerts (once, not once each), and a host quiet here is first
        looked up in the store: another collector may be serving it.
        """
        async with self._silence_lock:  # one look at a time: each silence alerted once
            return await self._check_silence()

    async def _check_silence(self) -> list[str]:
        self.decommissioned = await self._run_blocking(self._store.decommissioned)
        now = now_us()
        candidates = [
            state
            for state in self.hosts.values()
            if not (state.alerted or state.stopped or state.host_id in self.decommissioned)
            and state.silent(now)
        ]
        if not candidates or (self._leads is not None and not await self._leads()):
            return []
        stored = await self._run_blocking(self._store.heads)
        alerted: list[str] = []
        for state in candidates:
            seq = stored.get(state.host_id, (0, b""))[0]
            if seq > self._seen.get(state.host_id, 0):  # stored by another collector
                newest = await self._run_blocking(self._store.event, state.host_id, seq)
                if newest is not None:
                    # Its newest event says when it spoke, and whether it stopped cleanly;
                    # the events before it were that collector's to deliver.
                    state.observe(newest, events_pb2.Event.FromString(newest.body))
                    self._seen[state.host_id] = seq
                if state.stopped or not state.silent(now):
                    continue
            state.alerted = True
            quiet = (now - state.last_seen_us) / 1e6
            await self._chain.alert(
                "host_silent",
                f"host {state.host_id} has sent nothing for {quiet:.0f} s; its heartbeat "
                f"interval is {state.interval_s:.0f} s",
                subject_host=state.host_id,
            )
            alerted.append(state.host_id)
        return alerted
