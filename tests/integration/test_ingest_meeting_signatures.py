"""Ingest checks each meeting check's host signature on arrival and alerts a bad one."""

from __future__ import annotations

from baomi.meeting.signature import sign_meeting_check
from baomi.v1 import events_pb2

from collector.meeting_signatures import ALERT_KIND
from tests.collector_harness import Host, RunningCollector, batch, enroll_host, send_batches


def meeting_check(
    host: Host, *, sign: bool = True, cleared: bool = True, meeting: str = "m1"
) -> events_pb2.MeetingCheck:
    """A pre-meeting check of room r1, signed with the host's key unless told."""
    check = events_pb2.MeetingCheck(
        room="r1",
        meeting=meeting,
        phase="check",
        cleared=cleared,
        items=[
            events_pb2.CheckItem(id="C7", title="cabinet", result="pass", mandatory=True),
        ],
    )
    if sign:
        sign_meeting_check(check, host.key_pem)
    return check


def _alerts(collector: RunningCollector) -> list[events_pb2.Tamper]:
    tampers = [
        events_pb2.Event.FromString(r.body).tamper for r in collector.store.chain("_collector")
    ]
    return [t for t in tampers if t.kind == ALERT_KIND]


def test_a_valid_signature_is_not_alerted(collector: RunningCollector) -> None:
    host = enroll_host(collector, "room-pc")
    events = host.events(1, meeting_check=meeting_check(host))
    acks = send_batches(host, collector.address, [batch(events)])
    assert acks[-1].up_to_seq == 1
    assert _alerts(collector) == []


def test_a_tampered_or_missing_signature_is_alerted_on_arrival(
    collector: RunningCollector,
) -> None:
    host = enroll_host(collector, "room-pc")
    # A check that failed, turned into "cleared" after signing: the signature breaks.
    tampered = meeting_check(host, cleared=False)
    tampered.cleared = True
    events = [
        *host.events(1),  # a file access: not looked at
        *host.events(1, meeting_check=tampered),
        *host.events(1, meeting_check=meeting_check(host)),
        *host.events(1, meeting_check=meeting_check(host, sign=False)),
    ]
    acks = send_batches(host, collector.address, [batch(events)])
    assert acks[-1].up_to_seq == 4  # stored all the same: the record keeps what came
    (alert,) = _alerts(collector)
    assert (alert.subject_host, alert.subject_seq, list(alert.subject_seqs)) == (
        "room-pc",
        2,
        [2, 4],
    )
    assert alert.detail == (
        "host room-pc seq 2: meeting check of room r1 meeting m1: signature does not verify; "
        "also seq 4"
    )


def test_a_check_signed_by_another_hosts_key_is_alerted(collector: RunningCollector) -> None:
    """The signature must be by the key of the certificate the host streams with."""
    host = enroll_host(collector, "room-pc")
    other = enroll_host(collector, "room-pc-2")
    events = host.events(1, meeting_check=meeting_check(other))
    send_batches(host, collector.address, [batch(events)])
    (alert,) = _alerts(collector)
    assert alert.subject_seq == 1 and alert.detail.endswith("signature does not verify")


def test_a_replayed_check_is_not_alerted_twice(collector: RunningCollector) -> None:
    host = enroll_host(collector, "room-pc")
    events = host.events(1, meeting_check=meeting_check(host, sign=False))
    send_batches(host, collector.address, [batch(events)])
    send_batches(host, collector.address, [batch(events)])  # the agent missed the Ack
    (alert,) = _alerts(collector)
    assert alert.detail.endswith("meeting check of room r1 meeting m1: no signature")
