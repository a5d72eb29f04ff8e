"""The recorder: takes events from sensor threads without blocking them, and spools them.

A permission answer must not wait for an fsync, so sensors hand events to a queue and
return at once; one writer thread drains the queue in small batches (one durable
transaction each), so a burst of opens costs one fsync, not one per open. Identical
file accesses by one process within a batch are folded into one event with a count and
the first and last times; nothing is dropped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from baomi.v1 import events_pb2

from agent.spool import Spool

_logger = logging.getLogger(__name__)

BATCH_SECONDS = 0.02  # how long the writer gathers events before one commit
BATCH_EVENTS = 2000  # events per commit at most


def _fold_key(ev: events_pb2.Event) -> tuple[object, ...] | None:
    if ev.WhichOneof("kind") != "file_access":
        return None
    a = ev.file_access
    return (a.pid, a.uid, a.path, a.action, a.decision, a.executable, a.reason, ev.severity)


def fold(events: list[events_pb2.Event]) -> list[events_pb2.Event]:
    """Merge repeated identical file accesses, keeping the first's place in order."""
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


class Recorder:
    """Queue in, spool out, on one writer thread."""

    def __init__(self, spool: Spool, on_spooled: Callable[[], None]) -> None:
        self._spool = spool
        self._on_spooled = on_spooled
        self._queue: queue.SimpleQueue[events_pb2.Event | None] = queue.SimpleQueue()
        self._written = threading.Condition()
        self._received = 0
        self._spooled = 0
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self.error = ""

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def record(self, event: events_pb2.Event) -> None:
        """Hand over one event; returns at once. Safe from any thread."""
        if not event.HasField("time"):
            event.time.FromNanoseconds(time.time_ns())
        with self._written:
            self._received += 1
        self._queue.put(event)

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
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + BATCH_SECONDS
            stop = False
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
                    stop = True
                    break
                batch.append(item)
            self._write(batch)
            if stop:
                return

    def _write(self, batch: list[events_pb2.Event]) -> None:
        folded = fold(batch)
        while True:
            try:
                self._spool.append(folded)
                self.error = ""
                break
            except Exception as e:
                self.error = str(e)
                _logger.exception("cannot spool %d events; retrying in 1 s", len(folded))
                time.sleep(1)
        with self._written:
            self._spooled += len(batch)
            self._written.notify_all()
        self._on_spooled()
