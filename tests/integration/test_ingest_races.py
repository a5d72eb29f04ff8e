"""Ingest under races and hostile hosts, on SQLite and PostgreSQL.

The races are made deterministic with a store whose commits wait at a gate the test
opens: a second stream of a host arriving while the first stream's batch is still
being committed, a replay arriving before its first version commits, a group commit
that one host's batch makes fail. Afterwards every Ack a client received names a row
the store holds with exactly the acknowledged hash, and ``audit verify`` passes.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from baomi import chain
from baomi.v1 import events_pb2

from collector import audit, pki
from collector.store import Store
from collector.store.base import EventRow
from tests.collector_harness import (
    Host,
    RunningCollector,
    Stream,
    batch,
    enroll_host,
    send_batches,
)

SETTLE = 10.0  # seconds to wait for anything asynchronous


class GatedStore:
    """A store whose ``append`` of a chosen host's rows waits until ``open()``, and
    which can be told to fail a host's rows, as a store refusing them would."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._gate = threading.Event()
        self._gate.set()
        self.gated_host = ""
        self.failing_host = ""
        self.waiting = threading.Event()  # an append is held at the gate

    def __getattr__(self, name: str) -> Any:  # every other Store method
        return getattr(self._store, name)

    def close_gate(self, host_id: str) -> None:
        self.gated_host = host_id
        self._gate.clear()

    def open_gate(self) -> None:
        self._gate.set()

    def append(self, rows: Sequence[EventRow]) -> int:
        hosts = {r.host_id for r in rows}
        if self.gated_host in hosts and not self._gate.is_set():
            self.waiting.set()
            assert self._gate.wait(SETTLE), "the test never opened the gate"
        if self.failing_host in hosts:
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return self._store.append(rows)


@pytest.fixture
def gated(store: Store, pki_dir: Path) -> Iterator[tuple[RunningCollector, GatedStore]]:
    gate = GatedStore(store)
    running = RunningCollector(gate, pki_dir, checkpoint_seconds=3600)  # type: ignore[arg-type]
    try:
        yield running, gate
    finally:
        gate.open_gate()
        running.stop()


def _stored(running: RunningCollector, host_id: str) -> dict[int, bytes]:
    return {r.seq: r.hash for r in running.store.chain(host_id)}


def _assert_acks_hold(running: RunningCollector, host_id: str, acks: list[Any]) -> None:
    """Every Ack names a seq the store holds with exactly the acknowledged hash."""
    stored = _stored(running, host_id)
    for ack in acks:
        if isinstance(ack, events_pb2.Ack) and ack.up_to_seq:
            assert stored.get(ack.up_to_seq) == ack.head_hash, (host_id, ack.up_to_seq)


def _alerts(running: RunningCollector, kind: str) -> list[events_pb2.Tamper]:
    return [
        events_pb2.Event.FromString(r.body).tamper
        for r in running.store.chain("_collector")
        if r.kind == "tamper" and events_pb2.Event.FromString(r.body).tamper.kind == kind
    ]


def _verified(running: RunningCollector) -> audit.AuditReport:
    running.checkpoint()
    return audit.verify(running.store, pki.load_verify_key(running.pki_dir / "signing.pub"))


def _wait(check: Callable[[], bool], what: str) -> None:
    until = time.monotonic() + SETTLE
    while not check():
        assert time.monotonic() < until, what
        time.sleep(0.01)


def test_a_second_stream_starts_from_the_first_streams_commits(
    gated: tuple[RunningCollector, GatedStore],
) -> None:
    running, gate = gated
    host = enroll_host(running, "ws-01")
    # A re-imaged agent (another chain under the same host id) connects while the first
    # stream's batch is still being committed.
    other = Host(host.host_id, host.key_pem, host.cert_pem, host.ca_pem)
    first = Stream(host, running.address)
    hello = first.next()
    assert isinstance(hello, events_pb2.Ack) and hello.up_to_seq == 0
    gate.close_gate("ws-01")
    first.send(host.events(20))
    assert gate.waiting.wait(SETTLE)
    second = Stream(other, running.address)
    with pytest.raises(queue.Empty):
        second.next(timeout=0.5)  # no head is announced while a commit is open
    gate.open_gate()
    head = second.next()
    assert isinstance(head, events_pb2.Ack)
    assert (head.up_to_seq, head.head_hash) == (20, host.head)  # the first stream's rows
    # The second chain's own seq 1-20 are replays of other content: alerted, not stored.
    second.send(other.events(20), other.events(5))
    acks = [second.next(), second.next()]
    rest = second.close() + first.close()
    _assert_acks_hold(running, "ws-01", [hello, head, *acks, *rest])
    assert all(isinstance(a, events_pb2.Ack) for a in acks)
    assert [a.up_to_seq for a in acks] == [20, 25]  # type: ignore[union-attr]
    [replayed] = _alerts(running, "conflicting_replay")
    assert "20 in one batch" in replayed.detail and replayed.subject_seq == 1
    assert list(replayed.subject_seqs) == list(range(1, 21))
    assert len(_stored(running, "ws-01")) == 25
    # Seq 21 follows the second chain, not the stored one: a break, found by audit.
    report = _verified(running)
    assert [(d.host_id, d.seq, d.kind) for d in report.damage] == [("ws-01", 21, "break")]


def test_a_replay_before_its_first_version_commits_is_alerted(
    gated: tuple[RunningCollector, GatedStore],
) -> None:
    running, gate = gated
    host = enroll_host(running, "ws-01")
    stream = Stream(host, running.address)
    assert isinstance(stream.next(), events_pb2.Ack)
    gate.close_gate("ws-01")
    first = host.events(10)
    rewritten = [events_pb2.Event() for _ in range(6)]
    for ev, orig in zip(rewritten, first[4:], strict=True):
        ev.CopyFrom(orig)
        ev.file_access.path = "/srv/secret/innocent.txt"
    stream.send(first, [*rewritten, *host.events(5)])
    ingest = running.collector.ingest
    _wait(lambda: ingest.stats.batches >= 2, "the collector never read the replay")
    gate.open_gate()
    acks = [stream.next(), stream.next()]
    stream.close()
    assert [a.up_to_seq for a in acks] == [10, 15]  # type: ignore[union-attr]
    _assert_acks_hold(running, "ws-01", acks)
    [alert] = _alerts(running, "conflicting_replay")
    assert alert.subject_seq == 5 and "6 in one batch" in alert.detail
    stored = _stored(running, "ws-01")
    assert [stored[e.seq] for e in first] == [chain.event_hash(e) for e in first]


def test_a_batch_the_store_refuses_fails_alone(
    gated: tuple[RunningCollector, GatedStore],
) -> None:
    running, gate = gated
    hosts = [enroll_host(running, f"ws-{i:02d}") for i in range(3)]
    streams = [Stream(h, running.address) for h in hosts]
    for s in streams:
        assert isinstance(s.next(), events_pb2.Ack)
    # Hold the writer on ws-00's batch so the next two are committed as one group.
    gate.close_gate("ws-00")
    streams[0].send(hosts[0].events(3))
    assert gate.waiting.wait(SETTLE)
    gate.failing_host = "ws-02"
    streams[1].send(hosts[1].events(3))
    streams[2].send(hosts[2].events(3))
    time.sleep(0.3)
    gate.open_gate()
    assert streams[0].next().up_to_seq == 3  # type: ignore[union-attr]
    assert streams[1].next().up_to_seq == 3  # type: ignore[union-attr]
    refused = streams[2].next()
    assert isinstance(refused, grpc.RpcError)
    assert refused.code() == grpc.StatusCode.UNAVAILABLE
    assert "not acknowledged" in str(refused.details())
    assert "Overflow" not in str(refused.details())  # nothing of the collector's insides
    for s in streams:
        s.close()
    assert len(_stored(running, "ws-01")) == 3 and not _stored(running, "ws-02")


HOSTILE = [
    ("seq past 2^63", lambda e: setattr(e, "seq", 2**63), "seq must be at most"),
    ("time past year 9999", lambda e: setattr(e.time, "seconds", 2**62), "time is outside"),
    ("negative nanos", lambda e: setattr(e.time, "nanos", -1), "time is outside"),
    ("unknown severity", lambda e: setattr(e, "severity", 77), "severity = 77"),
    (
        "unknown decision",
        lambda e: setattr(e.file_access, "decision", 9),
        "file_access.decision = 9",
    ),
    (
        "nested time out of range",
        lambda e: setattr(e.file_access.first, "seconds", -(2**40)),
        "file_access.first is outside",
    ),
]


def test_a_hostile_host_does_not_disturb_twenty_others(collector: RunningCollector) -> None:
    others = [enroll_host(collector, f"ws-{i:02d}") for i in range(20)]
    evil = enroll_host(collector, "evil")
    rounds = 5
    results: dict[str, list[events_pb2.Ack]] = {}

    def honest(host: Host) -> None:
        results[host.host_id] = send_batches(
            host, collector.address, [batch(host.events(40)) for _ in range(rounds)]
        )

    threads = [threading.Thread(target=honest, args=(h,)) for h in others]
    for t in threads:
        t.start()
    bad = []
    for _what, mutate, _why in HOSTILE:
        events = evil.events(3)
        mutate(events[1])
        evil.seq -= 3  # the same seqs again, mutated otherwise, next time
        evil.head = events[0].prev_hash
        bad.append(batch(events))
    evil_acks = send_batches(evil, collector.address, [*bad, batch(evil.events(2))])
    for t in threads:
        t.join(60)
    for (what, _mutate, why), ack in zip(HOSTILE, evil_acks[1:], strict=False):
        assert ack.rejection.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], what
        assert why in ack.rejection.reason, (what, ack.rejection.reason)
    assert evil_acks[-1].up_to_seq == 2 and not evil_acks[-1].HasField("rejection")
    for host in others:
        acks = results[host.host_id]
        assert acks[-1].up_to_seq == 40 * rounds
        assert len(_stored(collector, host.host_id)) == 40 * rounds
        _assert_acks_hold(collector, host.host_id, acks)
    report = _verified(collector)
    assert report.ok, report.damage


def test_two_hundred_streams_ack_only_what_is_stored(collector: RunningCollector) -> None:
    """50 hosts, each served by four streams at once from four chains of its own (as
    after re-imaging): whichever batch is stored first wins; no Ack ever names
    another's content, the losers' content is alerted as conflicting, and the record
    verifies."""
    hosts = [enroll_host(collector, f"ws-{i:02d}") for i in range(50)]
    acks: dict[str, list[Any]] = {h.host_id: [] for h in hosts}
    lock = threading.Lock()

    def run(host: Host) -> None:
        mine = Host(host.host_id, host.key_pem, host.cert_pem, host.ca_pem)
        got: list[Any] = []
        try:
            got = send_batches(mine, collector.address, [batch(mine.events(25)) for _ in range(2)])
        except grpc.RpcError as e:
            got = [e]  # superseded by another stream of the host: ABORTED
        with lock:
            acks[host.host_id].extend(got)

    threads = [threading.Thread(target=run, args=(h,)) for h in hosts for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    errors = [a for got in acks.values() for a in got if isinstance(a, grpc.RpcError)]
    odd = [(e.code(), e.details()) for e in errors if e.code() != grpc.StatusCode.ABORTED]
    assert not odd, odd[:3]
    for host in hosts:
        _assert_acks_hold(collector, host.host_id, acks[host.host_id])
        assert len(_stored(collector, host.host_id)) >= 25
    # The losing chains' later batches break the stored chains: only such breaks.
    report = _verified(collector)
    assert {d.kind for d in report.damage} <= {"break"}, report.damage
