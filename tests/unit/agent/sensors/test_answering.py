"""The answers in flight (what a killed agent was answering) and what the guardian's
denials of them are attributed to."""

from __future__ import annotations

import re
from pathlib import Path

from baomi.v1 import events_pb2

from agent.sensors.files import answering
from agent.sensors.files.answering import (
    NOT_DELIVERED,
    SLOTS,
    AnswersInFlight,
    attribute_pending,
)
from agent.sensors.files.sensor import FileGuard, FileGuardConfig

DEAD = 4242  # the killed agent's pid


def _access(path: str, decision: int, pid: int = 77) -> bytes:
    return events_pb2.Event(
        severity=events_pb2.SEVERITY_INFO,
        file_access=events_pb2.FileAccess(
            path=path,
            action="read",
            uid=2002,
            user="bob",
            pid=pid,
            executable="/usr/bin/cat",
            decision=decision,
            reason="allowed by rule 3",
            rule="p, bob, /srv/secret/*, read, allow",
            count=3,
        ),
    ).SerializeToString()


ALLOWED = _access("/srv/secret/s1.txt", events_pb2.DECISION_ALLOW)
DENIED = _access("/srv/secret/s2.txt", events_pb2.DECISION_DENY, pid=78)


def _pending(fds: list[int], count: int | None = None, pid: int = DEAD) -> dict[str, object]:
    return {
        "event": "pending_denied",
        "count": len(fds) if count is None else count,
        "fds": fds,
        "agent_pid": pid,
        "time": 1000.5,
    }


def test_what_is_held_and_not_released_outlives_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "answering"
    first = AnswersInFlight(path)
    first.start(DEAD)
    answered = first.hold(9, DENIED)
    held = first.hold(12, ALLOWED)
    assert answered >= 0 and held >= 0 and answered != held
    first.release(answered)
    # No close: the map's pages are what a kill -9 leaves in the file.
    assert AnswersInFlight(path).read_back() == (DEAD, {12: ALLOWED})
    assert path.stat().st_mode & 0o777 == 0o600


def test_start_forgets_and_a_released_slot_is_used_again(tmp_path: Path) -> None:
    notes = AnswersInFlight(tmp_path / "answering")
    notes.start(DEAD)
    notes.hold(12, ALLOWED)
    notes.start(5)
    assert notes.read_back() == (5, {})
    slots = [notes.hold(fd, ALLOWED) for fd in range(SLOTS)]
    assert sorted(slots) == list(range(SLOTS))
    assert notes.hold(999, ALLOWED) == -1  # full: not noted
    notes.release(slots[0])
    assert notes.hold(999, DENIED) == slots[0]
    assert notes.read_back()[1][999] == DENIED


def test_an_event_too_big_is_not_noted(tmp_path: Path) -> None:
    notes = AnswersInFlight(tmp_path / "answering")
    notes.start(DEAD)
    assert notes.hold(3, b"x" * (answering.BODY_BYTES + 1)) == -1
    assert notes.hold(3, b"") == -1
    assert notes.hold(3, b"x" * answering.BODY_BYTES) >= 0


def test_a_file_of_another_kind_is_started_afresh(tmp_path: Path) -> None:
    path = tmp_path / "answering"
    path.write_bytes(b"not a map of answers")
    notes = AnswersInFlight(path)
    assert notes.read_back() == (0, {})
    assert path.stat().st_size == answering.FILE_BYTES


def test_an_allowed_access_the_guardian_denied_is_corrected() -> None:
    records = [{"event": "gap_start"}, _pending([5, 12, 40]), {"event": "gap_end"}]
    left = {DEAD: {12: ALLOWED, 30: DENIED}}
    corrections, attributed, denied = attribute_pending(records, left)
    assert (attributed, denied) == (1, 3)  # 5 and 40: answered in C, or not yet recorded
    [event] = corrections
    a = event.file_access
    assert (a.path, a.uid, a.user, a.pid, a.executable, a.action) == (
        "/srv/secret/s1.txt",
        2002,
        "bob",
        77,
        "/usr/bin/cat",
        "read",
    )
    assert a.decision == events_pb2.DECISION_DENY and a.reason == NOT_DELIVERED
    assert a.rule == "" and a.count == 0 and not a.HasField("first")
    assert event.severity == events_pb2.SEVERITY_MEDIUM
    assert event.time.ToNanoseconds() == 1_000_500_000_000


def test_an_access_recorded_as_denied_is_attributed_without_a_correction() -> None:
    corrections, attributed, denied = attribute_pending([_pending([30])], {DEAD: {30: DENIED}})
    assert (corrections, attributed, denied) == ([], 1, 1)


def test_notes_of_another_agent_or_numbers_not_denied_attribute_nothing() -> None:
    notes = {DEAD: {12: ALLOWED}}
    assert attribute_pending([_pending([12], pid=DEAD + 1)], notes) == ([], 0, 1)
    assert attribute_pending([_pending([13])], notes) == ([], 0, 1)
    assert attribute_pending([_pending([12])], {}) == ([], 0, 1)  # no notes left
    # A guardian older than the numbers: a count only.
    assert attribute_pending([{"event": "pending_denied", "count": 4}], notes) == (
        [],
        0,
        4,
    )
    # Past PENDING_FDS_KEPT the count goes on; the numbers named are attributed.
    many = attribute_pending([_pending([12], count=5000)], notes)
    assert (len(many[0]), many[1], many[2]) == (1, 1, 5000)


def test_the_gap_records_the_correction_last_and_counts_what_is_unattributed(
    tmp_path: Path,
) -> None:
    sink: list[events_pb2.Event] = []
    guard = FileGuard(FileGuardConfig(roots=(tmp_path,), label_key=b"k" * 32), sink.append)
    guard._unanswered = {DEAD: {12: ALLOWED, 30: DENIED}}
    opened = {
        "event": "open",
        "time": 1001.0,
        "pid": 90,
        "uid": 2002,
        "action": "read",
        "decision": "deny",
        "labelled": True,
        "path": "/srv/secret/s2.txt",
    }
    guard._gap_recorded(
        [
            {"event": "gap_start", "time": 1000.0, "reason": "agent died"},
            _pending([12, 30, 41]),
            opened,
            {"event": "gap_end", "time": 1002.0, "denied": 1, "allowed": 0},
        ]
    )
    tamper, by_guardian, correction = sink
    detail = tamper.tamper.detail
    numbers = re.search(
        r"denied (\d+) opens the agent had not answered \((\d+) attributed .*?(\d+) of them "
        r"recorded as allowed and corrected; (\d+) unattributed",
        detail,
    )
    assert numbers is not None, detail
    assert [int(n) for n in numbers.groups()] == [3, 2, 1, 1]
    assert by_guardian.file_access.pid == 90
    assert correction.file_access.path == "/srv/secret/s1.txt"
    assert correction.file_access.reason == NOT_DELIVERED


def test_what_an_agent_left_is_kept_aside_until_its_gap_is_recorded(tmp_path: Path) -> None:
    """An agent killed while recording the gap of the one before it must not take that
    one's notes with it: they stay in answering.PID until forget_left."""
    left_by_first = AnswersInFlight(tmp_path / "answering")
    left_by_first.start(DEAD)
    left_by_first.hold(12, ALLOWED)
    assert answering.keep_left(tmp_path) == {DEAD: {12: ALLOWED}}
    second = AnswersInFlight(tmp_path / "answering")
    second.start(DEAD + 1)  # the next agent, killed before the gap was recorded
    second.hold(7, DENIED)
    assert answering.keep_left(tmp_path) == {DEAD: {12: ALLOWED}, DEAD + 1: {7: DENIED}}
    AnswersInFlight(tmp_path / "answering").start(DEAD + 2)  # a clean map: nothing kept
    answering.forget_left(tmp_path, {DEAD})
    assert answering.keep_left(tmp_path) == {DEAD + 1: {7: DENIED}}
    (tmp_path / "answering.99").write_bytes(b"torn")  # not a map: removed
    assert answering.keep_left(tmp_path) == {DEAD + 1: {7: DENIED}}
    assert not (tmp_path / "answering.99").exists()


def test_the_guard_forgets_the_notes_of_a_recorded_gap_and_keeps_a_failed_ones(
    tmp_path: Path,
) -> None:
    for pid, fd in [(DEAD, 12), (DEAD + 1, 13), (DEAD + 2, 14)]:
        notes = AnswersInFlight(tmp_path / "answering")
        notes.start(pid)
        notes.hold(fd, ALLOWED)
        answering.keep_left(tmp_path)
    sink: list[events_pb2.Event] = []
    config = FileGuardConfig(roots=(tmp_path,), label_key=b"k" * 32, guardian_dir=tmp_path)
    guard = FileGuard(config, sink.append)
    guard._open_answers_in_flight()
    assert set(guard._unanswered) == {DEAD, DEAD + 1, DEAD + 2}
    guard._gap_recorded([_pending([12])])  # recorded: forgotten
    guard._gap_pids[0].add(DEAD + 1)  # handed over, its recording failed: kept
    guard._forget_unanswered()  # DEAD + 2: no gap names it (dropped): forgotten
    assert sorted(p.name for p in tmp_path.glob("answering.*")) == [f"answering.{DEAD + 1}"]
    assert sink[-1].file_access.reason == NOT_DELIVERED
