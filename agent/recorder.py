"""The recorder: takes events from sensor threads without blocking them, and spools them.

A permission answer must not wait for an fsync, so sensors hand events to a queue and
return at once; one writer thread drains the queue in small batches (one durable
transaction each), so a burst of opens costs one fsync, not one per open. Identical
file accesses by one process within a batch are folded into one event with a count and
the first and last times; nothing is dropped.

Before an event is queued it is written to the event journal (``journal``), which
outlives a ``kill -9`` of the agent; each spool commit says how far into the journal
it reaches, and ``recover()`` spools what the journal holds beyond that at the next
start. So a sensor that records an access before answering it (the file guard does)
loses none to a killed agent.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from baomi.v1 import events_pb2

from agent.journal import EventJournal, JournalError
from agent.spool import Spool

_logger = logging.getLogger(__name__)

BATCH_SECONDS = 0.02  # how long the writer gathers events before one commit
BATCH_EVENTS = 2000  # events per commit at most


def _fold_key(ev: events_pb2.Event) -> tuple[object, ...] | None:
    if ev.WhichOneof("kind") != "file_access":
        return None
    a = ev.file_access
    if a.count:
        # Counted already, with its first and last times: the file guard's repeats (one
        # per process and file each fold period) and the refusal recorder's. Kept as
        # they come: looking for their twins cost a third of the writer's time for each
        # file a new process opened.
        return None
    return (a.pid, a.uid, a.path, a.action, a.decision, a.executable, a.reason, ev.severity)


def fold(events: list[events_pb2.Event]) -> list[events_pb2.Event]:
    """Merge repeated identical file accesses, keeping the first's place in order; an
    access counted already is kept as it is."""
    out: list[events_pb2.Event] = []
    seen: dict[tuple[object, ...], events_pb2.Event] = {}
    for ev in events:
        key = _fold_key(ev)
        if key is None:
            out.append(ev)
            continue
        first = seen.get(key)
        if first is None:
            seen[key] = ev
            access = ev.file_access
            access.count = max(access.count, 1)
            if not access.HasField("first"):
                access.first.CopyFrom(ev.time)
            if not access.HasField("last"):
                access.last.CopyFrom(ev.time)
            out.append(ev)
            continue
        merged = first.file_access
        merged.count += max(ev.file_access.count, 1)
        merged.last.CopyFrom(ev.time)
    return out


_Item = tuple[events_pb2.Event, int | None]  # an event and its journal position after it


class Recorder:
    """Journal and queue in, spool out, on one writer thread."""

    def __init__(
        self,
        spool: Spool,
        on_spooled: Callable[[], None],
        journal: EventJournal | None = None,
    ) -> None:
        self._spool = spool
        self._on_spooled = on_spooled
        self._journal = journal
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._order = threading.Lock()  # journal order is queue order
        self._written = threading.Condition()
        self._received = 0
        self._spooled = 0
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self.error = ""

    def recover(self) -> int:
        """Spool what the journal holds beyond the spool's mark (events recorded by an
        agent killed before its recorder committed them); how many. Call before
        ``start()``."""
        journal = self._journal
        if journal is None:
            return 0
        bodies, position = journal.recover(self._spool.journal_mark())
        events = []
        for body in bodies:
            event = events_pb2.Event()
            try:
                event.ParseFromString(body)
            except Exception:
                _logger.exception("journal: an unreadable event of %d bytes", len(body))
                continue
            events.append(event)
        self._spool.append(fold(events), journal=(journal.epoch, position))
        journal.drained(position)
        return len(events)

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def record(self, event: events_pb2.Event) -> None:
        """Journal one event and hand it over; returns without waiting for the spool
        (only for room in the journal, when the spool falls behind). Safe from any
        thread."""
        if not event.HasField("time"):
            event.time.FromNanoseconds(time.time_ns())
        with self._order:  # counted under the order lock: flush() reads the count alone
            self._received += 1
            self._queue.put((event, self._journal_append(event)))

    def _journal_append(self, event: events_pb2.Event) -> int | None:
        journal = self._journal
        if journal is None:
            return None
        try:
            return journal.append(event.SerializeToString())
        except (JournalError, ValueError) as e:
            # Still spooled, but a kill before then would lose it: said, not hidden.
            self.error = f"event journal: {e}"
            _logger.error("%s", self.error)
            return None

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every event recorded so far is in the spool."""
        with self._written:
            target = self._received
            return self._written.wait_for(lambda: self._spooled >= target, timeout)

    def stop(self) -> None:
        """Spool what is queued, then end the writer."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            batch, stop = self._next_batch()
            if batch:
                self._write(batch)
            # Dropped before waiting for the next: an idle writer holding its last batch
            # kept its events alive (a label inventory of 2,000 files is ~0.7 MB).
            del batch
            if stop:
                return

    def _next_batch(self) -> tuple[list[_Item], bool]:
        """Up to BATCH_EVENTS queued events, waiting at most BATCH_SECONDS after the
        first; and whether ``stop()`` came after them."""
        first = self._queue.get()
        if first is None:
            return [], True
        batch = [first]
        deadline = time.monotonic() + BATCH_SECONDS
        while len(batch) < BATCH_EVENTS:
            remaining = deadline - time.monotonic()
            try:
                item = (
                    self._queue.get(timeout=max(remaining, 0))
                    if remaining > 0
                    else (self._queue.get_nowait())
                )
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _write(self, batch: list[_Item]) -> None:
        folded = fold([event for event, _ in batch])
        reached = max((at for _, at in batch if at is not None), default=None)
        journal = self._journal
        mark = (journal.epoch, reached) if journal is not None and reached is not None else None
        while True:
            try:
                self._spool.append(folded, journal=mark)
                self.error = ""
                break
            except Exception as e:
                self.error = str(e)
                _logger.exception("cannot spool %d events; retrying in 1 s", len(folded))
                time.sleep(1)
        if journal is not None and mark is not None:
            journal.drained(mark[1])
        with self._written:
            self._spooled += len(batch)
            self._written.notify_all()
        self._on_spooled()
