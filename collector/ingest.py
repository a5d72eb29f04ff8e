"""Ingest: the Stream RPC, the chain check, group commit and checkpoints.

Each agent stream is handled by one coroutine. It parses batches, checks every event
against the host's chain (contiguous seq, matching prev_hash), hands new rows to the
single ``Writer`` and sends an Ack only after the rows are durably committed. The writer
commits whatever batches are waiting, from every stream, in one transaction (group
commit), so the cost of a durable commit is shared.

One truth per host: a host has at most one stream served at a time. A new stream of a
host ends the one before it and starts only once every batch that stream handed to the
writer has settled, so the head it announces, the replays it checks and the Acks it
sends all see the same chain. Across collectors sharing one database, a stream is served
under the host's lease (``HostLeases``, an advisory lock in PostgreSQL) taken before
the first Ack and given back only once its batches have settled; a stream of a host
another collector serves waits ``LEASE_WAIT_SECONDS`` for it, then is refused with
UNAVAILABLE, and the agent connects again. A collector that loses its database session
loses its leases and ends the streams it served under them. Within a stream, replays
are checked against the rows handed to the writer and not yet committed as well as
against the store. An Ack is sent only when every row it covers is in the store with
exactly the acknowledged hash, and no batch is committed after one of its stream that
failed.

Per-host isolation: events are validated (seq, times, enum values) before they reach
the store, and a group commit that fails is retried batch by batch, so one host's bad
batch never fails another host's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from baomi import chain
from baomi.v1 import events_pb2
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf.message import DecodeError

from collector import checkpoint, meeting_signatures, validate
from collector.errors import StoreError
from collector.rpc import abort
from collector.store.base import CheckpointRow, EventRow, Store

_logger = logging.getLogger(__name__)

#: The collector's own chain, where it records alerts (chain breaks, foreign host ids).
#: Not a valid host id, so no agent can enrol under it.
COLLECTOR_HOST = "_collector"

MAX_BATCH_EVENTS = 5000  # events per batch; more is RESOURCE_EXHAUSTED
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # bytes per gRPC message, enforced by gRPC itself
MAX_COMMIT_ROWS = 20000  # rows per group commit
CHECKPOINT_SECONDS = 10.0
#: The lease of the one collector that signs checkpoints. Not a valid host id.
CHECKPOINT_LEASE = "_checkpoints"
CHAIN_ATTEMPTS = 100  # tries to append one event to the collector's chain, racing others
LEASE_WAIT_SECONDS = 5.0  # a stream of a host another collector serves waits this long
LEASE_POLL_SECONDS = 0.1  # between tries of a lease another collector holds
LEASE_CHECK_SECONDS = 1.0  # how often the session holding the leases is checked


def now_us() -> int:
    """Wall clock in microseconds since the epoch."""
    return time.time_ns() // 1000


class Lineage:
    """The commits of one stream, in order. Once one fails, the later ones are not made:
    the agent, told only of the failure, resends from the head it is given next, and a
    later batch committed past the failed one would leave a hole it never fills."""

    def __init__(self) -> None:
        self.broken = False  # read and set by the writer thread only


@dataclass
class _Batch:
    rows: list[EventRow]
    lineage: Lineage
    done: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop


class Writer:
    """One thread that owns the store's write path and commits batches in groups."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._queue: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        #: Highest (seq, hash) per host stored at start and committed here since: what
        #: this collector's console follows (checkpoints read the heads from the store).
        self.heads: dict[str, tuple[int, bytes]] = store.heads()
        self.committed = 0
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def follow_store(self, host_id: str) -> None:
        """Take ``host_id``'s head from the store, where another process (an import of an
        offline host's export) stored its events, for what this collector shows."""
        head = self._store.head(host_id)
        if head is not None and head[0] > self.heads.get(host_id, (0, b""))[0]:
            self.heads[host_id] = head

    async def write(self, rows: list[EventRow], lineage: Lineage | None = None) -> None:
        """Commit ``rows`` durably (together with whatever else is waiting); not if an
        earlier write of ``lineage`` failed."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.put(_Batch(rows, lineage or Lineage(), done, loop))
        await done

    def stored_head(self, host_id: str) -> tuple[int, bytes] | None:
        """``host_id``'s head as stored (by any collector); blocking."""
        return self._store.head(host_id)

    def close(self) -> None:
        """Commit what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            size = len(first.rows)
            while size < MAX_COMMIT_ROWS:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                group.append(item)
                size += len(item.rows)
            errors = self._commit(group)
            for batch, error in zip(group, errors, strict=True):
                if error is None:
                    for r in batch.rows:
                        if r.seq > self.heads.get(r.host_id, (0, b""))[0]:
                            self.heads[r.host_id] = (r.seq, r.hash)
                else:
                    batch.lineage.broken = True
                batch.loop.call_soon_threadsafe(_settle, batch.done, error)

    def _commit(self, batches: list[_Batch]) -> list[BaseException | None]:
        """Append the batches in one transaction; what failed, per batch. When the
        transaction fails, each batch is tried on its own: a batch the store refuses
        fails alone, with the later batches of its stream (not tried)."""
        if any(b.lineage.broken for b in batches):
            return self._one_by_one(batches)
        rows = [r for b in batches for r in b.rows]
        try:
            inserted = self._store.append(rows)
        except Exception as e:  # noqa: BLE001 - whatever the store raises fails the batch
            if len(batches) == 1:
                _logger.error("commit of %d rows failed: %r", len(rows), e)
                return [e]
            _logger.warning("group commit of %d rows failed (%r); batch by batch", len(rows), e)
            return self._one_by_one(batches)
        self.committed += inserted
        if inserted == len(rows):
            return [None] * len(batches)
        # Some (host, seq) was in the store already: only a batch whose rows are all
        # stored with its hashes may be acknowledged.
        return [self._conflict(b.rows) for b in batches]

    def _one_by_one(self, batches: list[_Batch]) -> list[BaseException | None]:
        errors: list[BaseException | None] = []
        for b in batches:
            if b.lineage.broken:
                errors.append(EarlierBatchFailed())
                continue
            [error] = self._commit([b])
            if error is not None:
                b.lineage.broken = True
            errors.append(error)
        return errors

    def _conflict(self, rows: list[EventRow]) -> StoreConflict | None:
        """The first row of ``rows`` the store holds with another hash, if any."""
        by_host: dict[str, list[EventRow]] = {}
        for r in rows:
            by_host.setdefault(r.host_id, []).append(r)
        for host, mine in by_host.items():
            stored = self._store.hashes(host, mine[0].seq, mine[-1].seq)
            for r in mine:
                if stored.get(r.seq) != r.hash:
                    return StoreConflict(host, r.seq)
        return None


class EarlierBatchFailed(Exception):  # noqa: N818 - an outcome of a commit
    """A batch not committed because an earlier one of its stream failed."""

    def __init__(self) -> None:
        super().__init__("an earlier batch of this stream was not stored")


class StoreConflict(Exception):  # noqa: N818 - an outcome of a commit
    """The store holds another event at a (host, seq) a batch carried."""

    def __init__(self, host_id: str, seq: int) -> None:
        super().__init__(f"host {host_id} seq {seq}: the store holds another event there")
        self.host_id = host_id
        self.seq = seq


def _settle(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


def to_row(
    event: events_pb2.Event, kind: str, received_us: int, body: bytes | None = None
) -> EventRow:
    """The stored form of an event: ``body`` as it was sent (hashed and kept as it is),
    or the event's canonical bytes when it was made here."""
    if body is None:
        body = chain.canonical_bytes(event)
    stamp = event.time  # each read of a submessage field makes a new Python object
    return EventRow(
        host_id=event.host_id,
        seq=event.seq,
        kind=kind,
        severity=event.severity,
        event_time_us=stamp.seconds * 1_000_000 + stamp.nanos // 1000,
        received_us=received_us,
        hash=hashlib.sha256(body).digest(),
        body=body,
    )


CLOCK_AHEAD_US = 300 * 1_000_000  # an event dated this far after its arrival is alerted
ALERT_WINDOW_SECONDS = 60.0  # one alert per host and kind this often, at most
ALERT_SEQS = 10_000  # seqs one alert names at most; more close its window early


@dataclass
class _Window:
    """Findings of one host and kind after the alert that opened the window."""

    found: list[tuple[int, str]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class AlertWindows:
    """Chain breaks, conflicting replays and a clock ahead, alerted once per host and
    kind per window.

    The first finding is alerted at once (with everything of its batch) and opens a
    window; what the host sends wrong within the window is gathered and alerted as
    one event when the window closes, naming every seq (``Tamper.subject_seqs``; what
    ``audit verify`` counts as recorded at ingest). So a hostile host sending a break
    per batch costs one commit a minute, not one per batch. A crash loses the
    gathered alert of an open window, not the finding: the events are stored, and
    ``audit verify`` finds the breaks in them (as not recorded at ingest).
    """

    def __init__(self, chain: CollectorChain, seconds: float = ALERT_WINDOW_SECONDS) -> None:
        self._chain = chain
        self._seconds = seconds
        self._open: dict[tuple[str, str], _Window] = {}
        self._closing: set[asyncio.Task[None]] = set()

    async def found(self, host: str, kind: str, found: list[tuple[int, str]]) -> None:
        """Alert ``found`` ((seq, why), in seq order) now, or gather it for later."""
        key = (host, kind)
        window = self._open.get(key)
        if window is not None:
            window.found += found
            if len(window.found) >= ALERT_SEQS:
                await self._close(key)
            return
        window = self._open[key] = _Window()
        loop = asyncio.get_running_loop()
        window.timer = loop.call_later(self._seconds, self._close_later, key)
        await self._alert(host, kind, found, "in one batch")

    def _close_later(self, key: tuple[str, str]) -> None:
        task = asyncio.ensure_future(self._close(key))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, key: tuple[str, str]) -> None:
        window = self._open.pop(key, None)
        if window is None:
            return
        if window.timer is not None:
            window.timer.cancel()
        if window.found:
            await self._alert(*key, window.found, f"within {self._seconds:.0f} s of the last alert")

    async def close(self) -> None:
        """Alert what every open window gathered (a clean stop loses none)."""
        await asyncio.gather(*self._closing)
        for key in list(self._open):
            await self._close(key)

    async def _alert(self, host: str, kind: str, found: list[tuple[int, str]], when: str) -> None:
        seqs = [seq for seq, _ in found[:ALERT_SEQS]]
        first_seq, first_why = found[0]
        detail = f"host {host} seq {first_seq}: {first_why}"
        if len(found) > 1:
            shown = ", ".join(str(seq) for seq in seqs[1:20])
            more = f" and {len(found) - 20} more" if len(found) > 20 else ""
            detail += f"; {len(found)} {when} (also seq {shown}{more})"
        await self._chain.alert(
            kind, detail, subject_host=host, subject_seq=first_seq, subject_seqs=seqs
        )


class CollectorChain:
    """The collector's own event chain, for alerts about what it refused or noticed.

    One chain, whichever collector appends, so ``audit verify`` reads it as it always
    did. Collectors sharing a database append to it optimistically: an event is built
    on the head this collector last knew, and the store's key on (host, seq) lets only
    one event take each seq. The loser reads the head again and builds anew; the chain
    stays contiguous and linked because rows are never changed.
    """

    def __init__(self, writer: Writer) -> None:
        self._writer = writer
        self._seq, self._hash = writer.heads.get(COLLECTOR_HOST, (0, chain.GENESIS))
        self._stale = False  # read the head from the store before the next event
        self._lock = asyncio.Lock()
        self._recording: set[asyncio.Future[EventRow]] = set()  # kept until written

    async def alert(
        self,
        kind: str,
        detail: str,
        *,
        subject_host: str = "",
        subject_seq: int = 0,
        subject_seqs: list[int] | None = None,
        severity: int = events_pb2.SEVERITY_HIGH,
    ) -> None:
        """Record an alert durably in the collector's chain."""
        _logger.warning("alert %s: %s", kind, detail)
        await self.record(
            severity,
            tamper=events_pb2.Tamper(
                kind=kind,
                detail=detail[:2000],
                subject_host=subject_host[:200],
                subject_seq=subject_seq,
                subject_seqs=subject_seqs or [],
            ),
        )

    async def console_action(
        self,
        *,
        actor: str,
        role: str,
        action: str,
        target: str = "",
        detail: str = "",
        ok: bool = True,
        severity: int = events_pb2.SEVERITY_INFO,
        client: str = "",
        user_agent: str = "",
    ) -> EventRow:
        """Record what someone did in the web console, durably, before it is answered."""
        return await self.record(
            severity,
            console_action=events_pb2.ConsoleAction(
                # actor and target may be what an anonymous user typed: bounded.
                actor=actor[:200],
                role=role,
                action=action,
                target=target[:500],
                detail=detail[:2000],
                ok=ok,
                client=client[:100],
                user_agent=user_agent[:300],
            ),
        )

    async def follow_store(self, host_id: str) -> None:
        """See ``Writer.follow_store``: events stored by an import are checkpointed."""
        await asyncio.to_thread(self._writer.follow_store, host_id)

    async def record(self, severity: int, **kind: Any) -> EventRow:
        """Append one event of the collector's own (``kind``: one oneof field) to its chain.

        Once asked, the event is recorded even if the caller is cancelled meanwhile (a
        stream superseded, a browser gone): a cancelled alert that opened an alert window
        would otherwise hold back, for the whole window, what others find.
        """
        task = asyncio.ensure_future(self._record(severity, **kind))
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)
        return await asyncio.shield(task)

    async def _record(self, severity: int, **kind: Any) -> EventRow:
        async with self._lock:
            for _ in range(CHAIN_ATTEMPTS):
                if self._stale:
                    head = await asyncio.to_thread(self._writer.stored_head, COLLECTOR_HOST)
                    self._seq, self._hash = head or (0, chain.GENESIS)
                    self._stale = False
                event = events_pb2.Event(
                    host_id=COLLECTOR_HOST,
                    seq=self._seq + 1,
                    prev_hash=self._hash,
                    severity=severity,  # type: ignore[arg-type]
                    **kind,
                )
                event.time.FromNanoseconds(time.time_ns())
                row = to_row(event, str(event.WhichOneof("kind")), now_us())
                # Once queued the row is committed whatever happens to the caller (a
                # stream ended meanwhile): the chain goes on from its fate, never reusing
                # its seq.
                write = asyncio.ensure_future(self._writer.write([row]))
                try:
                    await asyncio.shield(write)
                except asyncio.CancelledError:
                    await asyncio.wait([write])
                    self._follow(write, row)
                    raise
                except StoreConflict:
                    # Another collector appended at this seq first: build on its event.
                    self._follow(write, row)
                    continue
                except Exception:
                    self._follow(write, row)
                    raise
                self._follow(write, row)
                return row
            raise StoreError(
                f"the collector's chain moved {CHAIN_ATTEMPTS} times while one event was "
                "appended; too many collectors are recording at once"
            )

    async def drain(self) -> None:
        """Wait until every event asked for is written (or failed)."""
        await asyncio.gather(*self._recording, return_exceptions=True)

    def _follow(self, write: asyncio.Future[None], row: EventRow) -> None:
        """Where the chain stands after ``write`` of ``row`` settled."""
        if write.cancelled() or write.exception() is not None:
            # Read the head again before the next event: what is really stored, by this
            # collector or another.
            self._stale = True
        else:
            self._seq, self._hash = row.seq, row.hash


class Rejected(Exception):  # noqa: N818 - a batch outcome, not a failure of ours
    """A batch the collector will not store; the stream goes on."""

    def __init__(self, code: grpc.StatusCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ForeignHost(Exception):  # noqa: N818
    """A batch names a host other than the peer certificate's."""


def _malformed(index: int, seq: int, problem: str) -> Rejected:
    return Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"event {index} (seq {seq}): {problem}")


@dataclass
class HostChain:
    """Where one host's chain stands as its stream is checked."""

    host_id: str
    seq: int
    hash: bytes
    breaks: list[tuple[int, str]] = field(default_factory=list)
    #: seq -> hash of the rows handed to the writer and not yet committed: a replay of
    #: one is checked against it (the store does not hold it yet).
    accepted: dict[int, bytes] = field(default_factory=dict)
    #: The commits handed to the writer and not yet settled.
    commits: set[asyncio.Future[None]] = field(default_factory=set)
    #: The events of the batch ``check`` looked at last, parsed.
    events: list[events_pb2.Event] = field(default_factory=list)
    #: This stream's commits, in order: none is made after one that failed.
    lineage: Lineage = field(default_factory=Lineage)

    def check(self, bodies: list[bytes], received_us: int) -> list[EventRow]:
        """Validate a batch (its events' bytes as sent) and return the rows not yet
        stored, in seq order; the parsed events are left in ``events``.

        Raises Rejected when the batch is malformed (nothing of it is taken) and
        ForeignHost when it claims another host. Chain breaks are collected in
        ``breaks`` and the rows are still stored: the record keeps what happened.
        """
        self.events = []
        if not bodies:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "empty batch")
        if len(bodies) > MAX_BATCH_EVENTS:
            raise Rejected(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"batch of {len(bodies)} events; at most {MAX_BATCH_EVENTS} are taken",
            )
        events = self.events
        for i, body in enumerate(bodies):
            try:
                events.append(events_pb2.Event.FromString(body))
            except DecodeError as e:
                raise _malformed(i, 0, f"does not parse: {e}") from e
        rows: list[EventRow] = []
        seq, head = self.seq, self.hash
        last = 0
        # This loop runs for every event the collector takes: each field is read once,
        # into a local, since every read of a protobuf field makes a new Python object.
        for i, ev in enumerate(events):
            if ev.host_id != self.host_id:
                raise ForeignHost(ev.host_id)
            ev_seq, prev_hash = ev.seq, ev.prev_hash
            kind = ev.WhichOneof("kind")
            if kind is None:
                raise _malformed(i, ev_seq, "no known kind is set")
            if ev_seq <= last:
                raise _malformed(i, ev_seq, "seq must increase in a batch")
            if len(prev_hash) != chain.HASH_BYTES:
                raise _malformed(i, ev_seq, "prev_hash must be 32 bytes")
            if not ev.HasField("time"):
                raise _malformed(i, ev_seq, "time is missing")
            if (wrong := validate.event_problem(ev, kind)) is not None:
                raise _malformed(i, ev_seq, wrong)
            last = ev_seq
            if ev_seq <= seq:
                continue  # a replay of what is stored; checked against it by the caller
            row = to_row(ev, kind, received_us, bodies[i])
            if ev_seq != seq + 1:
                self.breaks.append((ev_seq, f"seq gap: {seq} then {ev_seq}"))
            elif prev_hash != head:
                self.breaks.append((ev_seq, "prev_hash does not match the stored chain"))
            seq, head = ev_seq, row.hash
            rows.append(row)
        self.seq, self.hash = seq, head
        return rows


@dataclass
class _HostSlot:
    """Serves one host's streams one at a time."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    newest: asyncio.Event | None = None  # set: the stream it belongs to must give way
    settling: asyncio.Future[None] | None = None  # the last stream's commits, its lease


@dataclass
class IngestStats:
    """Counters for logs and metrics."""

    batches: int = 0
    events: int = 0
    rejected: int = 0
    streams: int = 0


class Ingest:
    """The Stream RPC and the checkpoint task, over one store."""

    def __init__(
        self,
        store: Store,
        signing_key: ed25519.Ed25519PrivateKey,
        *,
        checkpoint_seconds: float = CHECKPOINT_SECONDS,
        witness: Path | None = None,
    ) -> None:
        self.store = store
        self._witness = witness  # a file outside the store every checkpoint is added to
        self.writer = Writer(store)
        self.alerts = CollectorChain(self.writer)
        self.findings = AlertWindows(self.alerts)
        self.stats = IngestStats()
        self._signing_key = signing_key
        self._checkpoint_seconds = checkpoint_seconds
        self._leading: int | None = None  # the lease generation this collector signs in
        self._hosts: dict[str, _HostSlot] = {}
        self._leases = store.leases()  # SQLite: refused here if another collector serves it
        #: host -> (lease generation, set when the lease is lost) of the streams served
        self._leased: dict[str, tuple[int, asyncio.Event]] = {}
        self._background: set[asyncio.Future[None]] = set()
        #: False while the store does not answer: no batch is acknowledged then (its
        #: commit fails), and health and metrics say so.
        self.store_up = True

    @property
    def connected(self) -> int:
        """How many hosts have a stream open now."""
        return sum(1 for slot in self._hosts.values() if slot.lock.locked())

    async def stream(
        self, host_id: str, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[events_pb2.Ack]:
        """Take batches from one authenticated host; yield Acks after each commit.

        One stream per host at a time: a reconnecting agent's new stream ends the stale
        one, then waits until every commit that one started has settled.
        """
        slot = self._hosts.setdefault(host_id, _HostSlot())
        if slot.newest is not None:
            slot.newest.set()  # the stream being served (or waiting) gives way
        superseded = slot.newest = asyncio.Event()
        self.stats.streams += 1
        async with slot.lock:
            if slot.settling is not None:
                await asyncio.shield(slot.settling)
            if superseded.is_set():
                await abort(context, grpc.StatusCode.ABORTED, "a newer stream of this host came")
            state: HostChain | None = None
            lease: int | None = None
            lost = asyncio.Event()
            try:
                lease = await self._take_lease(host_id, context, superseded)
                self._leased[host_id] = (lease, lost)
                # Under the lease: no other collector adds to this chain meanwhile.
                try:
                    head = await asyncio.to_thread(self.store.head, host_id)
                except Exception as e:  # noqa: BLE001 - whatever the store raises; logged
                    _logger.error("host %s: head not read: %r", host_id, e)
                    await abort(
                        context,
                        grpc.StatusCode.UNAVAILABLE,
                        "the collector cannot reach its database; keep the events and retry",
                    )
                state = HostChain(host_id, *(head or (0, chain.GENESIS)))
                yield events_pb2.Ack(host_id=host_id, up_to_seq=state.seq, head_hash=state.hash)
                async for ack in self._serve(state, requests, context, superseded, lost):
                    yield ack
            finally:
                if lease is not None and self._leased.get(host_id) == (lease, lost):
                    del self._leased[host_id]
                # The next stream of this host starts from what these commits leave, and
                # from the earlier streams' too: a stream that ended before it served
                # (superseded or cancelled while it waited) must not drop what it waited
                # for, or the next one reads a head those commits are about to move. The
                # lease is given back only then, for the same reason across collectors.
                earlier = [slot.settling] if slot.settling is not None else []
                commits = state.commits if state is not None else set()
                slot.settling = asyncio.ensure_future(
                    self._settle_then_release(host_id, lease, [*earlier, *commits])
                )

    async def _settle_then_release(
        self, host_id: str, lease: int | None, commits: list[asyncio.Future[Any]]
    ) -> None:
        await asyncio.gather(*commits, return_exceptions=True)
        if lease is not None:
            try:
                await asyncio.to_thread(self._leases.give_back, host_id, lease)
            except Exception:  # a lease not given back ends with its session
                _logger.exception("host %s: lease not given back", host_id)

    async def _take_lease(
        self, host_id: str, context: grpc.aio.ServicerContext, superseded: asyncio.Event
    ) -> int:
        """The host's lease, waiting a bounded time for another collector to give it up
        (or until a newer stream of the host comes here)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEASE_WAIT_SECONDS
        while True:
            take = asyncio.ensure_future(asyncio.to_thread(self._leases.take, host_id))
            try:
                generation = await asyncio.shield(take)
            except asyncio.CancelledError:
                take.add_done_callback(lambda t: self._give_back_taken(host_id, t))
                raise
            except StoreError as e:
                _logger.error("host %s: no lease: %s", host_id, e)
                await abort(
                    context,
                    grpc.StatusCode.UNAVAILABLE,
                    "the collector cannot reach its database; keep the events and retry",
                )
            if generation is not None:
                return generation
            if superseded.is_set():
                await abort(context, grpc.StatusCode.ABORTED, "a newer stream of this host came")
            if loop.time() >= deadline:
                await abort(
                    context,
                    grpc.StatusCode.UNAVAILABLE,
                    f"host {host_id} is being served by another collector; retry",
                )
            await asyncio.sleep(LEASE_POLL_SECONDS)

    def _give_back_taken(self, host_id: str, take: asyncio.Future[int | None]) -> None:
        """A lease taken for a stream that was cancelled meanwhile goes back at once."""
        if take.cancelled() or take.exception() is not None:
            return
        generation = take.result()
        if generation is None:
            return
        task = asyncio.ensure_future(asyncio.to_thread(self._leases.give_back, host_id, generation))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def watch_leases(self) -> None:
        """Note whether the store answers (``store_up``), and end the streams served
        under leases the collector lost (its database session went away): another
        collector may serve those hosts now. Until cancelled."""
        while True:
            await asyncio.sleep(LEASE_CHECK_SECONDS)
            try:
                generation = await asyncio.to_thread(self._leases.alive)
            except Exception:  # treated as lost
                _logger.exception("checking the leases failed")
                generation = None
            if (generation is not None) != self.store_up:
                self.store_up = generation is not None
                if self.store_up:
                    _logger.warning("the store answers again; taking streams")
                else:
                    _logger.error("the store does not answer; nothing is acknowledged")
            for host, (held, lost) in list(self._leased.items()):
                if held != generation and not lost.is_set():
                    _logger.warning("host %s: lease lost with the database session", host)
                    lost.set()

    async def _serve(
        self,
        state: HostChain,
        requests: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext,
        superseded: asyncio.Event,
        lost: asyncio.Event,
    ) -> AsyncIterator[events_pb2.Ack]:
        """Read batches (``_read``) and yield each Ack once its commit has settled."""
        pending: asyncio.Queue[tuple[asyncio.Future[None] | None, events_pb2.Ack]] = asyncio.Queue(
            maxsize=16
        )
        reader = asyncio.create_task(self._read(state, requests, pending, context))
        waiter: asyncio.Task[tuple[asyncio.Future[None] | None, events_pb2.Ack]] | None = None
        stop = asyncio.create_task(superseded.wait())
        lease_lost = asyncio.create_task(lost.wait())
        try:
            while True:
                waiter = asyncio.create_task(pending.get())
                done, _ = await asyncio.wait(
                    {waiter, reader, stop, lease_lost}, return_when=asyncio.FIRST_COMPLETED
                )
                if lease_lost in done:  # before an Ack: another collector may serve it now
                    await abort(
                        context,
                        grpc.StatusCode.UNAVAILABLE,
                        "the collector lost its database session; connect again",
                    )
                if waiter in done:
                    yield await self._settle(state, *waiter.result(), context)
                    continue
                if stop in done:
                    await abort(
                        context, grpc.StatusCode.ABORTED, "a newer stream of this host took over"
                    )
                if (failure := reader.exception()) is not None and not isinstance(
                    failure, grpc.aio.AbortError
                ):
                    _logger.error("host %s: stream failed: %r", state.host_id, failure)
                    await abort(
                        context,
                        grpc.StatusCode.UNAVAILABLE,
                        "the collector could not take this stream; connect again",
                    )
                reader.result()  # raises what ended the reader, if anything
                # The reader finished cleanly: flush what it queued, then end.
                while not pending.empty():
                    yield await self._settle(state, *pending.get_nowait(), context)
                return
        finally:
            for task in (reader, waiter, stop, lease_lost):
                if task is not None:
                    task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    @staticmethod
    async def _settle(
        state: HostChain,
        commit: asyncio.Future[None] | None,
        ack: events_pb2.Ack,
        context: grpc.aio.ServicerContext,
    ) -> events_pb2.Ack:
        """The Ack, once its rows are in the store with its hashes."""
        if commit is None:
            return ack
        try:
            await commit
        except Exception as e:  # noqa: BLE001 - logged; the agent sends it again
            _logger.error(
                "host %s: batch up to seq %d not stored: %s", state.host_id, ack.up_to_seq, e
            )
            await abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "the collector could not store a batch; it is not acknowledged: send it again",
            )
        return ack

    async def _read(
        self,
        state: HostChain,
        requests: AsyncIterator[bytes],
        pending: asyncio.Queue[tuple[asyncio.Future[None] | None, events_pb2.Ack]],
        context: grpc.aio.ServicerContext,
    ) -> None:
        async for raw in requests:
            received = now_us()
            self.stats.batches += 1
            try:
                bodies = chain.batch_events(raw)  # hashed as sent, never re-encoded
            except chain.BatchError as e:
                await self._reject(
                    state, pending, grpc.StatusCode.INVALID_ARGUMENT, f"batch does not parse: {e}"
                )
                continue
            try:
                rows = state.check(bodies, received)
            except Rejected as e:
                await self._reject(state, pending, e.code, e.reason, state.events)
                continue
            except ForeignHost as e:
                claimed = str(e.args[0])
                await self.alerts.alert(
                    "foreign_host",
                    f"host {state.host_id} sent an event claiming host {claimed[:200]!r}",
                    subject_host=state.host_id,
                )
                await abort(
                    context,
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"this certificate is for host {state.host_id}; events must carry it",
                )
                return
            await self._check_replays(state, bodies, len(rows))
            await self._check_clock(state, rows)
            await meeting_signatures.check_arrivals(
                self.alerts, state.host_id, state.events, rows, context
            )
            if state.breaks:
                await self.findings.found(state.host_id, "chain_break", list(state.breaks))
                state.breaks.clear()
            commit = self._commit(state, rows) if rows else None
            self.stats.events += len(rows)
            ack = events_pb2.Ack(host_id=state.host_id, up_to_seq=state.seq, head_hash=state.hash)
            await pending.put((commit, ack))

    def _commit(self, state: HostChain, rows: list[EventRow]) -> asyncio.Future[None]:
        """Hand rows to the writer; until they commit, replays are checked against them."""
        commit = asyncio.ensure_future(self.writer.write(rows, state.lineage))
        accepted = state.accepted
        for r in rows:
            accepted[r.seq] = r.hash
        state.commits.add(commit)

        def settled(fut: asyncio.Future[None]) -> None:
            state.commits.discard(fut)
            if not fut.cancelled():
                fut.exception()  # seen: a stream that ended first never awaits its failure
            for r in rows:  # committed (now in the store) or failed (never acknowledged)
                if accepted.get(r.seq) == r.hash:
                    del accepted[r.seq]

        commit.add_done_callback(settled)
        return commit

    async def _reject(
        self,
        state: HostChain,
        pending: asyncio.Queue[tuple[asyncio.Future[None] | None, events_pb2.Ack]],
        code: grpc.StatusCode,
        reason: str,
        events: list[events_pb2.Event] | None = None,
    ) -> None:
        self.stats.rejected += 1
        _logger.warning("host %s: batch rejected: %s", state.host_id, reason)
        seqs = [e.seq for e in events or ()] or [0]
        rejection = events_pb2.Rejection(
            code=code.value[0], reason=reason[:1000], first_seq=min(seqs), last_seq=max(seqs)
        )
        ack = events_pb2.Ack(
            host_id=state.host_id,
            up_to_seq=state.seq,
            head_hash=state.hash,
            rejection=rejection,
        )
        await pending.put((None, ack))

    async def _check_clock(self, state: HostChain, rows: list[EventRow]) -> None:
        """Events dated after their arrival: the host's clock is ahead (or its events
        are backdated relative to one another). Listings order by the time the host
        gives, which is when the access happened; an auditor is told when that time
        cannot be right, by a ``clock_ahead`` alert naming the seqs."""
        ahead = [
            (r.seq, f"dated {(r.event_time_us - r.received_us) // 1_000_000} s after it arrived")
            for r in rows
            if r.event_time_us - r.received_us > CLOCK_AHEAD_US
        ]
        if ahead:
            await self.findings.found(state.host_id, "clock_ahead", ahead)

    async def _check_replays(self, state: HostChain, bodies: list[bytes], new: int) -> None:
        """A replayed seq must carry the event already stored; anything else is an alert."""
        count = len(bodies) - new
        if not count:
            return
        replayed = [(ev.seq, body) for ev, body in zip(state.events, bodies[:count], strict=False)]
        accepted = state.accepted
        if all(seq in accepted for seq, _ in replayed):
            stored: dict[int, bytes] = {}
        else:
            stored = await asyncio.to_thread(
                self.store.hashes, state.host_id, replayed[0][0], replayed[-1][0]
            )
        conflicts = []
        for seq, body in replayed:
            have = accepted.get(seq) or stored.get(seq)
            if have is not None and have != chain.bytes_hash(body):
                conflicts.append((seq, "resent with different content"))
        if conflicts:
            await self.findings.found(state.host_id, "conflicting_replay", conflicts)

    async def note_uncovered(self, imported: frozenset[str] = frozenset()) -> None:
        """Alert, per host, events found in the store beyond the newest checkpoint at
        start. A clean stop signs its last checkpoint, so these were left by a crash --
        or written into the database while the collector was down. The next checkpoint
        signs them; the alert says that it did so without proof. ``imported``: hosts an
        import of an offline host's export stored events of meanwhile (its record
        follows), which the alert names as a likely source. Only the collector that
        leads says so: beside a living leader, rows beyond its last checkpoint are the
        other collectors' work its next checkpoint signs."""
        if not await self.lead():
            return
        rows = await asyncio.to_thread(self.store.checkpoints)
        signed = checkpoint.heads_of(rows[-1]) if rows else {}
        for host, (seq, _) in sorted(self.writer.heads.items()):
            before = signed.get(host, (0, b""))[0]
            if host == COLLECTOR_HOST or seq <= before:
                continue
            await self.alerts.alert(
                "uncovered_at_start",
                f"host {host} seq {before + 1}..{seq} are covered by no checkpoint at start "
                "(the collector stopped uncleanly, or rows were written while it was down); "
                "they are signed now without proof that they are what the host sent"
                + (
                    "; an import of this host's signed export ran meanwhile (recorded next)"
                    if host in imported
                    else ""
                ),
                subject_host=host,
                subject_seq=before + 1,
            )

    async def lead(self) -> bool:
        """Whether this collector signs checkpoints: it holds the checkpoint lease, or
        takes it now that no other collector does (the leader stopped, or died and its
        session with it)."""
        generation = await asyncio.to_thread(self._leases.alive)
        if generation is not None and generation == self._leading:
            return True
        try:
            self._leading = await asyncio.to_thread(self._leases.take, CHECKPOINT_LEASE)
        except StoreError as e:
            _logger.warning("cannot take the checkpoint lease: %s", e)
            self._leading = None
        return self._leading is not None

    async def checkpoint_once(self) -> bool:
        """Sign the stored heads if they changed since the newest checkpoint, when this
        collector leads. The checkpoint follows the newest one, whoever signed it, and is
        stored only if that one is still the newest: the checkpoints never fork."""
        if not await self.lead():
            return False
        heads = await asyncio.to_thread(self.store.heads)
        last = await asyncio.to_thread(self.store.last_checkpoint)
        signed = checkpoint.heads_of(last) if last is not None else {}
        if heads == signed or not heads:
            return False
        received = {}
        for host, (seq, _) in heads.items():
            before = signed.get(host, (0, b""))[0]
            if seq > before:
                times = await asyncio.to_thread(self.store.received_times, host, before + 1, seq)
                received[host] = checkpoint.received_digest(times)
        created = now_us()
        prev = checkpoint.digest(last) if last is not None else checkpoint.FIRST_PREV
        body = checkpoint.make_body(created, prev, heads, received)
        signature = checkpoint.sign(self._signing_key, body)
        cid = await asyncio.to_thread(
            self.store.add_checkpoint_after,
            last.id if last is not None else 0,
            created,
            body,
            signature,
        )
        if cid is None:
            _logger.warning("another collector signed a checkpoint meanwhile; this one is dropped")
            return False
        row = CheckpointRow(cid, created, body, signature)
        if self._witness is not None:
            try:
                await asyncio.to_thread(checkpoint.append_witness, self._witness, row)
            except OSError as e:
                await self.alerts.alert(
                    "witness_failed",
                    f"checkpoint {cid} was not added to the witness file {self._witness}: "
                    f"{e.strerror}",
                )
        return True

    async def run_checkpoints(self) -> None:
        """Sign checkpoints every ``checkpoint_seconds`` until cancelled."""
        while True:
            await asyncio.sleep(self._checkpoint_seconds)
            try:
                await self.checkpoint_once()
            except Exception:
                _logger.exception("checkpoint failed; retrying in %.0f s", self._checkpoint_seconds)

    async def close(self) -> None:
        """Alert what open alert windows gathered, commit what is queued and sign a last
        checkpoint."""
        await self.findings.close()
        await self.alerts.drain()
        await asyncio.to_thread(self.writer.close)
        try:
            await self.checkpoint_once()
        except Exception:
            # The store may be away at shutdown; the next leader signs what this one
            # could not, and the leases must still be let go.
            _logger.exception("the last checkpoint was not signed")
        finally:
            await asyncio.to_thread(self._leases.close)
