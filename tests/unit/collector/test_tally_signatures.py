"""Reports count a meeting check as cleared only if its signature held on arrival."""

from __future__ import annotations

from pathlib import Path

from baomi.v1 import events_pb2

from collector.ingest import COLLECTOR_HOST, to_row
from collector.meeting_signatures import ALERT_KIND
from collector.reports.tally import tally
from collector.store.base import EventRow


def _check(host: str, seq: int, room: str, *, cleared: bool = True) -> EventRow:
    ev = events_pb2.Event(
        host_id=host,
        seq=seq,
        prev_hash=b"\0" * 32,
        meeting_check=events_pb2.MeetingCheck(
            room=room, meeting=f"m-{seq}", phase="check", cleared=cleared, inspector="zhou"
        ),
    )
    ev.time.FromMicroseconds(1_800_000_000_000_000 + seq)
    return to_row(ev, "meeting_check", 0)


def _alert(seq: int, host: str, seqs: list[int]) -> EventRow:
    ev = events_pb2.Event(
        host_id=COLLECTOR_HOST,
        seq=seq,
        prev_hash=b"\0" * 32,
        tamper=events_pb2.Tamper(
            kind=ALERT_KIND, subject_host=host, subject_seq=seqs[0], subject_seqs=seqs
        ),
    )
    ev.time.FromMicroseconds(1_800_000_000_000_000 + 100 + seq)
    return to_row(ev, "tamper", 0)


def test_a_check_a_signature_alert_names_is_not_cleared_whichever_comes_first() -> None:
    rows = [
        _alert(1, "room-pc", [3]),  # before the check it names (clock order)
        _check("room-pc", 3, "r301"),
        _check("room-pc", 4, "r301"),  # signed correctly: cleared
        _check("room-pc", 5, "r302"),
        _alert(2, "room-pc", [5]),  # after the check it names
        _check("room-pc", 6, "r302", cleared=False),
    ]
    t = tally(rows)
    assert (t.checks, t.checks_cleared) == (4, 1)
    assert t.rooms == {"r301": [2, 1], "r302": [2, 0]}
    signature = [n for n in t.not_cleared if n["failed"] == ["signature"]]
    assert sorted(str(n["meeting"]) for n in signature) == ["m-3", "m-5"]
    assert len(t.not_cleared) == 3  # the two forged and the one not cleared by itself


def test_the_leaver_review_never_shows_an_unsigned_check_as_cleared(tmp_path: Path) -> None:
    from collector.reports.leaver import build_leaver
    from collector.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        store.append([_check("room-pc", 1, "r301"), _check("room-pc", 2, "r301"),
                      _alert(1, "room-pc", [2])])  # fmt: skip
        report = build_leaver(store, "zhou", policies_dir=tmp_path)
    finally:
        store.close()
    shown = {m["meeting"]: m["cleared"] for m in report.figures["meetings"]}
    assert shown == {"m-1": True, "m-2": False}
