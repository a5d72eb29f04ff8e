"""Realistic, properly chained events for the benchmark, the same on every call.

Every event is a ``file_access`` of about 200 bytes whose content depends only on its
host and seq, so the load generator and the raw-SQLite baseline build identical rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from baomi import chain
from baomi.v1 import events_pb2

from collector.ingest import to_row
from collector.store.base import EventRow

T0_NS = 1_780_000_000 * 1_000_000_000  # event times start here (2026)
PROJECTS = ("falcon", "heron", "osprey", "kestrel", "merlin")
ACTIONS = ("read", "read", "read", "write", "execute", "export")
PROGRAMS = (
    "/usr/lib/libreoffice/program/soffice.bin",
    "/usr/bin/evince",
    "/usr/bin/python3.11",
    "/usr/bin/cp",
)


def host_name(index: int) -> str:
    """The id of load host ``index``."""
    return f"bench-host-{index:02d}"


def _fill(ev: events_pb2.Event, host_id: str, seq: int, prev_hash: bytes) -> None:
    k = seq % 997
    ev.host_id = host_id
    ev.seq = seq
    ev.time.FromNanoseconds(T0_NS + seq * 1_000_000)
    ev.prev_hash = prev_hash
    ev.severity = events_pb2.SEVERITY_INFO
    fa = ev.file_access
    project = PROJECTS[k % len(PROJECTS)]
    fa.path = f"/srv/projects/{project}/design/rev-{k % 50:04d}/section-{k:03d}.docx"
    fa.action = ACTIONS[k % len(ACTIONS)]
    fa.uid = 1000 + k % 40
    fa.user = f"user{k % 40:04d}"
    fa.pid = 20000 + seq % 30000
    fa.executable = PROGRAMS[k % len(PROGRAMS)]
    fa.level = events_pb2.LEVEL_SECRET
    fa.label_id = f"lbl-{k:08x}"
    fa.decision = events_pb2.DECISION_ALLOW
    fa.reason = f"clearance 2, group {project}"


def batches(host_id: str, events: int, batch_events: int) -> Iterator[events_pb2.EventBatch]:
    """Host ``host_id``'s chain from seq 1 (after GENESIS), ``batch_events`` at a time."""
    prev = chain.GENESIS
    for first in range(1, events + 1, batch_events):
        batch = events_pb2.EventBatch()
        for seq in range(first, min(first + batch_events, events + 1)):
            ev = batch.events.add()
            _fill(ev, host_id, seq, prev)
            prev = hashlib.sha256(chain.canonical_bytes(ev)).digest()
        yield batch


def serialized_batches(host_id: str, events: int, batch_events: int) -> tuple[list[bytes], bytes]:
    """The wire form of every batch of the host, and the hash of its last event."""
    out = [b.SerializeToString() for b in batches(host_id, events, batch_events)]
    last = events_pb2.EventBatch.FromString(out[-1]).events[-1]
    return out, chain.event_hash(last)


def rows(hosts: int, events: int, batch_events: int, received_us: int) -> list[EventRow]:
    """The rows the collector stores for ``hosts`` hosts, interleaved batch by batch as
    concurrent streams arrive."""
    per_host = [
        [
            [to_row(ev, "file_access", received_us) for ev in b.events]
            for b in batches(host_name(h), events, batch_events)
        ]
        for h in range(hosts)
    ]
    return [row for group in zip(*per_host, strict=True) for b in group for row in b]
