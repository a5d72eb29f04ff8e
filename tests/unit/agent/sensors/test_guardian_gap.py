"""What the guardian journalled while no agent ran, read back and turned into events."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from baomi.v1 import events_pb2

from agent.sensors.files.guardian import GuardianLink, read_gap, unfinished_gap
from agent.sensors.files.sensor import FileGuard, FileGuardConfig

START = {"event": "gap_start", "time": 1000.5, "reason": "agent died", "agent_pid": 7}
DENIED = {
    "event": "open",
    "time": 1001.25,
    "pid": 42,
    "uid": 2002,
    "action": "read",
    "decision": "deny",
    "labelled": True,
    "path": "/srv/secret/plan.txt",
}
ALLOWED = DENIED | {"decision": "allow", "labelled": False, "path": "/srv/secret/menu.txt"}
END = {"event": "gap_end", "time": 1002.0, "agent_pid": 8, "denied": 1, "allowed": 1}


def _journal(path: Path, *records: dict[str, object]) -> None:
    with path.open("a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def test_read_gap_starts_at_the_offset_and_skips_damaged_lines(tmp_path: Path) -> None:
    journal = tmp_path / "guardian.journal"
    _journal(journal, {"event": "gap_start", "reason": "handed over"}, END)
    offset = journal.stat().st_size
    _journal(journal, START)
    with journal.open("a") as f:
        f.write("{torn\n")
    _journal(journal, DENIED, END)
    assert read_gap(journal, offset) == [START, DENIED, END]
    assert read_gap(journal, -1) == []


def test_a_gap_becomes_one_tamper_event_and_one_access_per_open(tmp_path: Path) -> None:
    sink: list[events_pb2.Event] = []
    guard = FileGuard(FileGuardConfig(roots=(tmp_path,), label_key=b"k" * 32), sink.append)
    guard._gap_recorded([START, {"event": "pending_denied", "count": 2}, DENIED, ALLOWED, END])
    tamper, denied, allowed = sink
    assert tamper.tamper.kind == "guard_gap"
    assert tamper.tamper.gap_start.ToNanoseconds() == 1_000_500_000_000
    assert tamper.tamper.gap_end.ToNanoseconds() == 1_002_000_000_000
    assert "agent died" in tamper.tamper.detail and "denied 2 opens" in tamper.tamper.detail
    a = denied.file_access
    assert (a.path, a.uid, a.pid, a.decision) == (
        DENIED["path"],
        2002,
        42,
        events_pb2.DECISION_DENY,
    )
    assert "labelled" in a.reason and denied.time.ToNanoseconds() == 1_001_250_000_000
    assert allowed.file_access.decision == events_pb2.DECISION_ALLOW
    sink.clear()
    guard._gap_recorded([START, DENIED | {"inherited": True}, END])
    assert sink[1].file_access.reason.endswith("in a labelled directory")


def test_only_a_gap_that_never_ended_is_unfinished(tmp_path: Path) -> None:
    journal = tmp_path / "guardian.journal"
    assert unfinished_gap(journal) == []  # no journal yet
    _journal(journal, START, DENIED, END)
    assert unfinished_gap(journal) == []
    _journal(journal, START, DENIED)
    assert unfinished_gap(journal) == [START, DENIED]
    _journal(journal, {"event": "released"})
    assert unfinished_gap(journal) == []


def test_a_gap_without_an_end_says_what_was_not_guarded(tmp_path: Path) -> None:
    sink: list[events_pb2.Event] = []
    guard = FileGuard(FileGuardConfig(roots=(tmp_path,), label_key=b"k" * 32), sink.append)
    guard._gap_recorded([START, DENIED])
    tamper, _ = sink
    assert "denied 1 opens" in tamper.tamper.detail and "NOT guarded" in tamper.tamper.detail
    assert not tamper.tamper.HasField("gap_end")


def test_a_relative_state_directory_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guardian runs in "/": a relative state directory (the demo's var/agent)
    must reach it as the directory the agent meant."""
    monkeypatch.chdir(tmp_path)
    link = GuardianLink(Path("var/agent"), lambda detail: None)
    assert link.dir == tmp_path / "var" / "agent"
