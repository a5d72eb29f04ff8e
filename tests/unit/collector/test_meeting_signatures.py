"""The signature status the console shows for each meeting check, from the alerts."""

from __future__ import annotations

from baomi.v1 import events_pb2

from collector.ingest import COLLECTOR_HOST, to_row
from collector.meeting_signatures import ALERT_KIND, Status, statuses
from collector.store.base import EventRow


def _row(host: str, seq: int, **kind: object) -> EventRow:
    event = events_pb2.Event(host_id=host, seq=seq, prev_hash=b"\0" * 32, **kind)  # type: ignore[arg-type]
    return to_row(event, str(event.WhichOneof("kind")), received_us=1)


def _check(host: str, seq: int) -> EventRow:
    return _row(host, seq, meeting_check=events_pb2.MeetingCheck(room="r1", meeting="m1"))


def _alert(seq: int, kind: str, host: str, seqs: list[int]) -> EventRow:
    tamper = events_pb2.Tamper(
        kind=kind, detail="why", subject_host=host, subject_seq=seqs[0], subject_seqs=seqs
    )
    return _row(COLLECTOR_HOST, seq, tamper=tamper)


def test_checks_named_by_an_alert_are_invalid_the_rest_valid() -> None:
    checks = [_check("room-a", 1), _check("room-a", 2), _check("room-b", 2), _check("room-a", 3)]
    alerts = [
        _alert(7, ALERT_KIND, "room-a", [2, 3]),
        _alert(8, "chain_break", "room-a", [1]),  # another kind names nothing here
    ]
    got = statuses(checks, alerts, complete=True)
    assert got == {
        ("room-a", 1): Status("valid"),
        ("room-a", 2): Status("invalid", "why", 7),
        ("room-b", 2): Status("valid"),
        ("room-a", 3): Status("invalid", "why", 7),
    }


def test_a_cut_short_alert_listing_shows_no_check_as_valid() -> None:
    """When more alerts exist than were read, a check no alert read names may still be
    named by one that was not: it is unchecked, never valid."""
    checks = [_check("room-a", 1), _check("room-a", 2)]
    got = statuses(checks, [_alert(7, ALERT_KIND, "room-a", [2])], complete=False)
    assert got[("room-a", 1)].state == "unchecked"
    assert got[("room-a", 2)].state == "invalid"
