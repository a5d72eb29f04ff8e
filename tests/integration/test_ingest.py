"""Ingest: exactly once, chain checks, bad batches answered without ending the stream."""

from __future__ import annotations

import hashlib
import re
import time
from unittest import mock

import grpc
import pytest
from baomi import chain
from baomi.v1 import events_pb2

from collector import audit, pki
from collector.ingest import MAX_BATCH_EVENTS, MAX_MESSAGE_BYTES
from tests.collector_harness import RunningCollector, batch, enroll_host, send_batches


def test_replay_stores_nothing_twice(collector: RunningCollector) -> None:
    host = enroll_host(collector, "ws-01")
    events = host.events(50)
    send_batches(host, collector.address, [batch(events[:30])])
    # The agent did not see the ack and resends everything, then continues.
    acks = send_batches(host, collector.address, [batch(events), batch(host.events(5))])
    assert acks[0].up_to_seq == 30
    assert acks[-1].up_to_seq == 55
    assert collector.store.count() == 55
    assert [r.seq for r in collector.store.chain("ws-01")] == list(range(1, 56))


def test_malformed_batch_is_rejected_and_stream_goes_on(collector: RunningCollector) -> None:
    host = enroll_host(collector, "ws-01")
    good = host.events(2)
    acks = send_batches(host, collector.address, [b"\xff\xff\xff garbage", batch(good)])
    assert acks[1].rejection.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "does not parse" in acks[1].rejection.reason
    assert acks[2].up_to_seq == 2 and not acks[2].HasField("rejection")


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda e: e.ClearField("kind"), "no known kind"),
        (lambda e: e.ClearField("time"), "time is missing"),
        (lambda e: setattr(e, "prev_hash", b"short"), "prev_hash must be 32 bytes"),
    ],
)
def test_invalid_event_rejects_its_batch_only(
    collector: RunningCollector, mutate: object, reason: str
) -> None:
    host = enroll_host(collector, "ws-01")
    bad = host.events(3)
    mutate(bad[1])  # type: ignore[operator]
    acks = send_batches(host, collector.address, [batch(bad)])
    assert acks[1].rejection.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert reason in acks[1].rejection.reason
    assert collector.store.head("ws-01") is None  # nothing of the batch was stored


def test_unknown_kind_from_a_newer_agent_is_rejected(collector: RunningCollector) -> None:
    host = enroll_host(collector, "ws-01")
    ev = host.events(1)[0]
    ev.ClearField("kind")
    raw = ev.SerializeToString() + b"\xfa\x06\x00"  # field 111, a kind this collector lacks
    acks = send_batches(host, collector.address, [b"\x0a" + bytes([len(raw)]) + raw])
    assert acks[1].rejection.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "no known kind" in acks[1].rejection.reason


def test_too_many_events_is_resource_exhausted(collector: RunningCollector) -> None:
    host = enroll_host(collector, "ws-01")
    small = host.events(MAX_BATCH_EVENTS + 1, agent_status=events_pb2.AgentStatus())
    acks = send_batches(host, collector.address, [batch(small)])
    assert acks[1].rejection.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


def test_oversized_message_is_resource_exhausted(collector: RunningCollector) -> None:
    host = enroll_host(collector, "ws-01")
    big = host.events(1, process=events_pb2.Process(cmdline="x" * (MAX_MESSAGE_BYTES + 10)))
    with pytest.raises(grpc.RpcError) as err:
        send_batches(host, collector.address, [batch(big)])
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert collector.store.head("ws-01") is None


def test_chain_break_is_stored_and_alerted(collector: RunningCollector) -> None:
    host = enroll_host(collector, "ws-01")
    first = host.events(3)
    host.head = b"\x01" * 32  # seq 4 will not name the hash of seq 3
    later = host.events(3)
    acks = send_batches(host, collector.address, [batch(first), batch(later)])
    assert acks[-1].up_to_seq == 6
    assert collector.store.count() == 6 + 1  # six events and one alert
    alert = events_pb2.Event.FromString(next(collector.store.chain("_collector")).body)
    assert alert.tamper.kind == "chain_break"
    assert (alert.tamper.subject_host, alert.tamper.subject_seq) == ("ws-01", 4)


def _alerts(collector: RunningCollector, kind: str) -> list[events_pb2.Tamper]:
    tampers = [
        events_pb2.Event.FromString(r.body).tamper for r in collector.store.chain("_collector")
    ]
    return [t for t in tampers if t.kind == kind]


def test_a_break_in_every_batch_is_one_alert_a_window_naming_every_seq(
    collector: RunningCollector,
) -> None:
    """A hostile host breaking its chain in each of 200 batches: one alert at once, one
    for the rest of the window (closed here as a clean stop closes it), every seq named, so
    ``audit verify`` counts each break as recorded at ingest."""
    host = enroll_host(collector, "ws-01")
    batches = [batch(host.events(2))]
    for i in range(199):
        host.head = hashlib.sha256(b"not the head %d" % i).digest()
        batches.append(batch(host.events(2)))
    acks = send_batches(host, collector.address, batches)
    assert acks[-1].up_to_seq == 400
    breaks = list(range(3, 400, 2))  # the first event of every batch after the first
    [first] = _alerts(collector, "chain_break")
    assert (first.subject_seq, list(first.subject_seqs)) == (3, [3])
    collector.call(collector.collector.ingest.findings.close)
    collector.checkpoint()
    first, rest = _alerts(collector, "chain_break")
    assert rest.subject_seq == 5 and list(rest.subject_seqs) == breaks[1:]
    assert "198 within 60 s of the last alert" in rest.detail
    key = pki.load_verify_key(collector.pki_dir / "signing.pub")
    report = audit.verify(collector.store, key)
    assert {(d.seq, d.kind) for d in report.damage} == {(seq, "break") for seq in breaks}
    reviewed = audit.verify(collector.store, key, accepted=[("ws-01", seq) for seq in breaks])
    assert reviewed.ok, reviewed.damage


def test_events_dated_after_their_arrival_are_alerted(collector: RunningCollector) -> None:
    """Listings order by the host's clock; one that runs ahead is named, not trusted."""
    host = enroll_host(collector, "ws-01")
    now = time.time_ns()
    with mock.patch("tests.collector_harness.time.time_ns", return_value=now + 60 * 10**9):
        slightly = host.events(1)  # a minute ahead: clocks drift, and that is no alarm
    with mock.patch("tests.collector_harness.time.time_ns", return_value=now + 3600 * 10**9):
        ahead = host.events(2)
    acks = send_batches(host, collector.address, [batch(slightly), batch(ahead)])
    assert acks[-1].up_to_seq == 3  # stored all the same: the record keeps what was sent
    [alert] = _alerts(collector, "clock_ahead")
    assert (alert.subject_host, list(alert.subject_seqs)) == ("ws-01", [2, 3])
    assert re.search(r"seq 2: dated 3(599|600) s after it arrived", alert.detail), alert.detail


def test_conflicting_replay_is_alerted(collector: RunningCollector) -> None:
    host = enroll_host(collector, "ws-01")
    events = host.events(2)
    send_batches(host, collector.address, [batch(events)])
    events[1].file_access.path = "/srv/secret/other.docx"
    send_batches(host, collector.address, [batch(events)])
    kinds = [
        events_pb2.Event.FromString(r.body).tamper.kind for r in collector.store.chain("_collector")
    ]
    assert kinds == ["conflicting_replay"]
    stored = events_pb2.Event.FromString(list(collector.store.chain("ws-01"))[1].body)
    assert stored.file_access.path != "/srv/secret/other.docx"  # the first copy stands


def test_an_event_is_hashed_and_kept_as_sent(collector: RunningCollector) -> None:
    """A field this collector does not know, placed first: re-encoding would move it to
    the end and change the hash; the collector hashes and keeps the bytes it got."""
    host = enroll_host(collector, "ws-01")
    ev = host.events(1)[0]
    raw = b"\xb8\x3e\x01" + ev.SerializeToString()  # field 999 = 1, then the event
    assert events_pb2.Event.FromString(raw).SerializeToString() != raw
    acks = send_batches(host, collector.address, [chain.batch_of([raw])])
    assert acks[-1].up_to_seq == 1 and acks[-1].head_hash == hashlib.sha256(raw).digest()
    [row] = collector.store.chain("ws-01")
    assert row.body == raw and row.hash == hashlib.sha256(raw).digest()
    # The next event chains to that hash, and the record verifies.
    host.head = row.hash
    assert send_batches(host, collector.address, [batch(host.events(1))])[-1].up_to_seq == 2
    collector.checkpoint()
    key = pki.load_verify_key(collector.pki_dir / "signing.pub")
    assert audit.verify(collector.store, key).ok


@pytest.mark.parametrize(
    "raw",
    [
        b"\x0a\x80",  # a length whose varint never ends
        b"\x0a\x05abc",  # a length past the end
        b"\x0b",  # a group (wire type 3): not used by this protocol
        b"\x09\x01\x02",  # a 64-bit field cut short
    ],
)
def test_a_batch_that_is_not_protobuf_is_rejected(collector: RunningCollector, raw: bytes) -> None:
    host = enroll_host(collector, "ws-01")
    acks = send_batches(host, collector.address, [raw, batch(host.events(1))])
    assert acks[1].rejection.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "batch does not parse" in acks[1].rejection.reason
    assert acks[2].up_to_seq == 1
