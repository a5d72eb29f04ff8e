"""The stream to the collector: batches out, acknowledgements back, replay after faults.

Batches are bounded by count and by time. At most ``window`` batches are in flight
without an Ack. Events leave the spool only when the collector acknowledged them. After
any fault the client moves to the next collector address (when it has several), waits
(exponential backoff with full jitter, growing once every address has failed) and
reconnects; the collector's first Ack says where its copy of the chain stands, and
sending resumes right after it, so nothing is lost and nothing is stored twice --
collectors sharing one store give the same head.

Every Ack is checked against the spool (``Spool.acknowledge``): a head that is not
this host's event (forged, or another host's) is refused -- recorded as a tamper
event, nothing forgotten, the stream ended and tried again later; a head below what
the collector acknowledged before is recorded too, and what the spool still keeps
after it is sent again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from baomi import chain
from baomi.v1 import events_pb2

from agent.heap import return_freed_heap
from agent.identity import Identity
from agent.spool import CollectorMismatch, Spool

_logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class StreamConfig:
    """Limits of the stream."""

    batch_events: int = 500  # events per batch at most
    batch_seconds: float = 0.2  # how long a partial batch may wait
    window: int = 8  # batches in flight without an Ack
    backoff_initial: float = 0.5  # seconds
    backoff_max: float = 30.0  # seconds


class StreamClient:
    """Sends the spool to the collector for as long as it runs."""

    def __init__(
        self,
        identity: Identity,
        spool: Spool,
        config: StreamConfig,
        on_tamper: Callable[[str, str], None] | None = None,
    ) -> None:
        self._identity = identity
        self._spool = spool
        self._config = config
        self._on_tamper = on_tamper  # (kind, detail): a collector head refused
        self._reported: set[tuple[int, bytes]] = set()  # claims already recorded
        self._wake = asyncio.Event()
        self.connected = False
        self.delivered = False  # the current (or last) session had something acknowledged
        self.last_error = ""
        self.acked_seq = 0
        self._progress = time.monotonic()  # when the collector last took something
        self._turn = 0  # sessions started: picks the address (round robin)

    @property
    def collector(self) -> str:
        """HOST:PORT this client streams to."""
        return self._identity.collector

    def notify(self) -> None:
        """New events are in the spool (call on the event loop)."""
        self._wake.set()

    @property
    def address(self) -> str:
        """The collector address the stream uses now."""
        addresses = self._identity.addresses
        return addresses[self._turn % len(addresses)]

    async def run(self) -> None:
        """Stream until cancelled, reconnecting after every fault (to the next address)."""
        attempt = 0  # sessions since one delivered
        channels: dict[str, grpc.aio.Channel] = {}
        try:
            while True:
                self.delivered = False  # set by the session on each acknowledgement
                address = self.address
                if address not in channels:
                    channels[address] = grpc.aio.secure_channel(
                        address,
                        self._identity.credentials(),
                        options=[("grpc.keepalive_time_ms", 30_000)],
                    )
                try:
                    await self._session(channels[address])
                except grpc.aio.AioRpcError as e:
                    self.last_error = f"{e.code().name}: {e.details()}"
                    _logger.warning("stream to %s ended: %s", address, self.last_error)
                except RejectedError as e:
                    self.last_error = str(e)
                    _logger.error("collector rejected a batch: %s", e)
                except CollectorMismatch as e:
                    self.last_error = f"collector head refused: {e}"
                    _logger.error("%s", self.last_error)
                except Exception as e:  # whatever it was: stream on after a pause
                    self.last_error = f"stream failed: {type(e).__name__}: {e}"
                    _logger.exception("stream to %s failed; again", address)
                self.connected = False
                if self.delivered:  # however it ended, it worked: reconnect at once
                    attempt = 0
                self._turn += 1  # the next address; with one, the same again
                # The pause grows once per round of every address, so a dead first
                # collector costs a short pause, not the backoff of a long outage.
                rounds = attempt // len(self._identity.addresses)
                cap = min(self._config.backoff_max, self._config.backoff_initial * 2**rounds)
                attempt = min(attempt + 1, 16 * len(self._identity.addresses))
                await asyncio.sleep(random.uniform(0, cap))  # noqa: S311 - jitter, not crypto
        finally:
            for channel in channels.values():
                await channel.close(grace=None)

    async def _session(self, channel: grpc.aio.Channel) -> None:
        """One connection's life; sets ``delivered`` when the collector acknowledges."""
        call = channel.stream_stream(
            "/baomi.v1.Collector/Stream",
            request_serializer=None,
            response_deserializer=events_pb2.Ack.FromString,
        )()
        first = await call.read()
        if not isinstance(first, events_pb2.Ack):  # EOF before the head
            return
        self.connected = True
        self._acknowledge(first)
        in_flight: collections.deque[int] = collections.deque()
        slots = asyncio.Semaphore(self._config.window)

        async def receive() -> None:
            while True:
                ack = await call.read()
                if not isinstance(ack, events_pb2.Ack):  # EOF: the collector ended the stream
                    return
                if ack.HasField("rejection"):
                    raise RejectedError(ack.rejection.reason)
                self._acknowledge(ack)
                self.delivered = True
                while in_flight and in_flight[0] <= ack.up_to_seq:
                    in_flight.popleft()
                    slots.release()

        receiver = asyncio.create_task(receive())
        try:
            sent = first.up_to_seq
            released = False  # the spool's cache since the stream last caught up
            while not receiver.done():
                rows = self._spool.read_after(sent, self._config.batch_events)
                if len(rows) < self._config.batch_events:
                    # Let a partial batch fill for a moment before sending it.
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._config.batch_seconds)
                    rows = self._spool.read_after(sent, self._config.batch_events)
                    if not rows:
                        if not released and not in_flight:  # caught up, all acknowledged
                            self._spool.release_memory()
                            return_freed_heap()
                            released = True
                        continue
                if not await self._take_slot(slots, receiver):
                    break
                # The spooled bytes as they are: the collector hashes what it receives.
                await call.write(chain.batch_of([body for _, body in rows]))
                sent = rows[-1][0]
                in_flight.append(sent)
                released = False
            await receiver  # raises what ended it
        finally:
            receiver.cancel()
            call.cancel()

    @staticmethod
    async def _take_slot(slots: asyncio.Semaphore, receiver: asyncio.Task[None]) -> bool:
        """Wait for room in the window; False if the stream ended meanwhile."""
        while not receiver.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(slots.acquire(), 0.5)
                return True
        return False

    def _acknowledge(self, ack: events_pb2.Ack) -> None:
        """Believe the collector's head only where this host's chain bears it out."""
        try:
            self._spool.acknowledge(ack.up_to_seq, ack.head_hash)
        except CollectorMismatch as e:
            self._report(ack, e)
            if not e.lost:
                raise
            self._spool.rebase(ack.up_to_seq, ack.head_hash)  # send again what is kept
        acked = self._spool.acked[0]
        if acked != self.acked_seq:
            self._progress = time.monotonic()
        self.acked_seq = acked

    def quiet_seconds(self, waiting: int) -> float:
        """How long events have waited with nothing acknowledged (0 when none wait)."""
        if not waiting:
            self._progress = time.monotonic()
            return 0.0
        return time.monotonic() - self._progress

    def _report(self, ack: events_pb2.Ack, e: CollectorMismatch) -> None:
        claim = (ack.up_to_seq, bytes(ack.head_hash))
        if claim in self._reported or self._on_tamper is None:
            return
        self._reported.add(claim)
        kind = "collector_lost_events" if e.lost else "collector_head_refused"
        self._on_tamper(kind, f"{self.address}: {e}")


class RejectedError(Exception):
    """The collector refused a batch; the events stay in the spool."""
