"""Ingest: the Stream RPC, the chain check, group commit and checkpoints.

Each agent stream is handled by one coroutine. It parses batches, checks every event
against the host's chain (contiguous seq, matching prev_hash), hands new rows to the
single ``Writer`` and sends an Ack only after the rows are durably committed. The writer
commits whatever batches are waiting, from every stream, in one transaction (group
commit), so the cost of a durable commit is shared.
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

from collector import checkpoint
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


def now_us() -> int:
    """Wall clock in microseconds since the epoch."""
    return time.time_ns() // 1000


class Writer:
    """One thread that owns the store's write path and commits batches in groups."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._queue: queue.SimpleQueue[
            tuple[list[EventRow], asyncio.Future[None], asyncio.AbstractEventLoop] | None
        ] = queue.SimpleQueue()
        #: Highest committed (seq, hash) per host, what checkpoints sign.
        self.heads: dict[str, tuple[int, bytes]] = store.heads()
        self.committed = 0
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    async def write(self, rows: list[EventRow]) -> None:
        """Commit ``rows`` durably (together with whatever else is waiting)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.put((rows, done, loop))
        await done

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
            size = len(first[0])
            while size < MAX_COMMIT_ROWS:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                group.append(item)
                size += len(item[0])
            rows = [r for g in group for r in g[0]]
            error: BaseException | None = None
            try:
                self.committed += self._store.append(rows)
                for r in rows:
                    if r.seq > self.heads.get(r.host_id, (0, b""))[0]:
                        self.heads[r.host_id] = (r.seq, r.hash)
            except Exception as e:
                _logger.exception("commit of %d rows failed", len(rows))
                error = e
            for _, fut, loop in group:
                loop.call_soon_threadsafe(_settle, fut, error)


def _settle(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


def to_row(event: events_pb2.Event, kind: str, received_us: int) -> EventRow:
    """The stored form of an event."""
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


class CollectorChain:
    """The collector's own event chain, for alerts about what it refused or noticed."""

    def __init__(self, writer: Writer) -> None:
        self._writer = writer
        self._seq, self._hash = writer.heads.get(COLLECTOR_HOST, (0, chain.GENESIS))
        self._lock = asyncio.Lock()

    async def alert(
        self,
        kind: str,
        detail: str,
        *,
        subject_host: str = "",
        subject_seq: int = 0,
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
            ),
        )

    async def record(self, severity: int, **kind: Any) -> EventRow:
        """Append one event of the collector's own (``kind``: one oneof field) to its chain."""
        async with self._lock:
            event = events_pb2.Event(
                host_id=COLLECTOR_HOST,
                seq=self._seq + 1,
                prev_hash=self._hash,
                severity=severity,  # type: ignore[arg-type]
                **kind,
            )
            event.time.FromNanoseconds(time.time_ns())
            row = to_row(event, str(event.WhichOneof("kind")), now_us())
            try:
                await self._writer.write([row])
            except Exception:
                # Reload so the next event continues from what is really stored.
                self._seq, self._hash = self._writer.heads.get(COLLECTOR_HOST, (0, chain.GENESIS))
                raise
            self._seq, self._hash = row.seq, row.hash
            return row


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

    def check(self, batch: events_pb2.EventBatch, received_us: int) -> list[EventRow]:
        """Validate a batch and return the rows not yet stored, in seq order.

        Raises Rejected when the batch is malformed (nothing of it is taken) and
        ForeignHost when it claims another host. Chain breaks are collected in
        ``breaks`` and the rows are still stored: the record keeps what happened.
        """
        events = batch.events
        if not events:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "empty batch")
        if len(events) > MAX_BATCH_EVENTS:
            raise Rejected(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"batch of {len(events)} events; at most {MAX_BATCH_EVENTS} are taken",
            )
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
            last = ev_seq
            if ev_seq <= seq:
                continue  # a replay of what is stored; checked against it by the caller
            row = to_row(ev, kind, received_us)
            if ev_seq != seq + 1:
                self.breaks.append((ev_seq, f"seq gap: {seq} then {ev_seq}"))
            elif prev_hash != head:
                self.breaks.append((ev_seq, "prev_hash does not match the stored chain"))
            seq, head = ev_seq, row.hash
            rows.append(row)
        self.seq, self.hash = seq, head
        return rows


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
        self.stats = IngestStats()
        self._signing_key = signing_key
        self._checkpoint_seconds = checkpoint_seconds
        self._signed_heads: dict[str, tuple[int, bytes]] | None = None
        self._last_checkpoint: str | None = None  # digest of the newest checkpoint
        self._live: dict[str, asyncio.Event] = {}

    @property
    def connected(self) -> int:
        """How many hosts have a stream open now."""
        return len(self._live)

    async def stream(
        self, host_id: str, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[events_pb2.Ack]:
        """Take batches from one authenticated host; yield Acks after each commit."""
        # One stream per host: a reconnecting agent replaces its stale stream.
        superseded = asyncio.Event()
        old = self._live.get(host_id)
        if old is not None:
            old.set()
        self._live[host_id] = superseded
        self.stats.streams += 1
        try:
            head = await asyncio.to_thread(self.store.head, host_id)
            state = HostChain(host_id, *(head or (0, chain.GENESIS)))
            yield events_pb2.Ack(host_id=host_id, up_to_seq=state.seq, head_hash=state.hash)
            pending: asyncio.Queue[tuple[asyncio.Task[None] | None, events_pb2.Ack]] = (
                asyncio.Queue(maxsize=16)
            )
            reader = asyncio.create_task(self._read(state, requests, pending, context))
            waiter: asyncio.Task[tuple[asyncio.Task[None] | None, events_pb2.Ack]] | None = None
            stop = asyncio.create_task(superseded.wait())
            try:
                while True:
                    waiter = asyncio.create_task(pending.get())
                    done, _ = await asyncio.wait(
                        {waiter, reader, stop}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if waiter in done:
                        yield await self._settle(*waiter.result())
                        continue
                    if stop in done:
                        await abort(
                            context,
                            grpc.StatusCode.ABORTED,
                            "a newer stream of this host took over",
                        )
                    reader.result()  # raises what ended the reader, if anything
                    # The reader finished cleanly: flush what it queued, then end.
                    while not pending.empty():
                        yield await self._settle(*pending.get_nowait())
                    return
            finally:
                for task in (reader, waiter, stop):
                    if task is not None:
                        task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
        finally:
            if self._live.get(host_id) is superseded:
                del self._live[host_id]

    @staticmethod
    async def _settle(commit: asyncio.Task[None] | None, ack: events_pb2.Ack) -> events_pb2.Ack:
        if commit is not None:
            await commit  # a failed commit raises and ends the stream: the agent replays
        return ack

    async def _read(
        self,
        state: HostChain,
        requests: AsyncIterator[bytes],
        pending: asyncio.Queue[tuple[asyncio.Task[None] | None, events_pb2.Ack]],
        context: grpc.aio.ServicerContext,
    ) -> None:
        async for raw in requests:
            received = now_us()
            self.stats.batches += 1
            batch = events_pb2.EventBatch()
            try:
                batch.ParseFromString(raw)
            except DecodeError as e:
                await self._reject(
                    state,
                    pending,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"batch does not parse: {e}",
                    batch,
                )
                continue
            try:
                rows = state.check(batch, received)
            except Rejected as e:
                await self._reject(state, pending, e.code, e.reason, batch)
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
            await self._check_replays(state, batch, len(rows))
            for seq, why in state.breaks:
                await self.alerts.alert(
                    "chain_break",
                    f"host {state.host_id} seq {seq}: {why}",
                    subject_host=state.host_id,
                    subject_seq=seq,
                )
            state.breaks.clear()
            commit = asyncio.ensure_future(self.writer.write(rows)) if rows else None
            self.stats.events += len(rows)
            ack = events_pb2.Ack(host_id=state.host_id, up_to_seq=state.seq, head_hash=state.hash)
            await pending.put((commit, ack))

    async def _reject(
        self,
        state: HostChain,
        pending: asyncio.Queue[tuple[asyncio.Task[None] | None, events_pb2.Ack]],
        code: grpc.StatusCode,
        reason: str,
        batch: events_pb2.EventBatch,
    ) -> None:
        self.stats.rejected += 1
        _logger.warning("host %s: batch rejected: %s", state.host_id, reason)
        seqs = [e.seq for e in batch.events] or [0]
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

    async def _check_replays(
        self, state: HostChain, batch: events_pb2.EventBatch, new: int
    ) -> None:
        """A replayed seq must carry the event already stored; anything else is an alert."""
        replayed = [e for e in batch.events[: len(batch.events) - new]]
        if not replayed:
            return
        stored = await asyncio.to_thread(
            self.store.hashes, state.host_id, replayed[0].seq, replayed[-1].seq
        )
        for ev in replayed:
            have = stored.get(ev.seq)
            if have is not None and have != chain.event_hash(ev):
                await self.alerts.alert(
                    "conflicting_replay",
                    f"host {state.host_id} resent seq {ev.seq} with different content",
                    subject_host=state.host_id,
                    subject_seq=ev.seq,
                )

    async def checkpoint_once(self) -> bool:
        """Sign the current heads if they changed since the last checkpoint."""
        heads = dict(self.writer.heads)
        if heads == self._signed_heads or not heads:
            return False
        if self._last_checkpoint is None:
            rows = await asyncio.to_thread(self.store.checkpoints)
            self._last_checkpoint = checkpoint.digest(rows[-1]) if rows else checkpoint.FIRST_PREV
        created = now_us()
        body = checkpoint.make_body(created, self._last_checkpoint, heads)
        signature = checkpoint.sign(self._signing_key, body)
        cid = await asyncio.to_thread(self.store.add_checkpoint, created, body, signature)
        row = CheckpointRow(cid, created, body, signature)
        self._last_checkpoint = checkpoint.digest(row)
        self._signed_heads = heads
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
        """Commit what is queued and sign a last checkpoint."""
        await asyncio.to_thread(self.writer.close)
        await self.checkpoint_once()
