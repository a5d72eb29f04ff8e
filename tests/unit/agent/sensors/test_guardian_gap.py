"""What the guardian journalled while no agent ran, read back and turned into events."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from baomi.v1 import events_pb2

from agent.sensors.files import guardian_daemon
from agent.sensors.files.guardian import (
    RECORDED_NAME,
    Gap,
    GuardianLink,
    read_gap,
    unfinished_gap,
)
from agent.sensors.files.guardian_daemon import JOURNAL_NAME, SOCKET_NAME, Guardian
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


def test_read_gap_stops_at_the_end_of_its_gap(tmp_path: Path) -> None:
    journal = tmp_path / "guardian.journal"
    _journal(journal, START, DENIED, END, {"event": "gap_recorded", "gap": "x"}, START, ALLOWED)
    assert read_gap(journal, 0) == [START, DENIED, END]
    with journal.open("w") as f:  # a guardian killed in its gap: no end
        f.write("")
    _journal(journal, START, DENIED, START, ALLOWED)
    assert read_gap(journal, 0) == [START, DENIED]


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


# -- gaps handed over until recorded (a guardian in this process, no fanotify) ----------
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the guardian's journal is root's")


@pytest.fixture
def guardian() -> Iterator[Guardian]:
    """A guardian of a pipe (it only hands its "group" fd over here) watching this
    process, in a short state directory (a unix socket path has 108 bytes)."""
    state = Path(tempfile.mkdtemp(prefix="baomi-gap-"))
    r, w = os.pipe2(os.O_CLOEXEC)
    g = Guardian(state, r, os.getpid())
    try:
        yield g
    finally:
        g._unwatch()
        g.sock.close()
        for fd in (g.journal_fd, r, w):
            os.close(fd)
        shutil.rmtree(state)


def _ask(g: Guardian, command: str) -> dict[str, Any]:
    reply, fds = g._command(command, os.getpid())
    assert fds in ([], [g.fan_fd])
    return reply


def _gap_ids(g: Guardian, reply: dict[str, Any]) -> list[str]:
    """The ids of the gaps an adopt reply hands over, checked against the journal."""
    ids = []
    for gap in reply["gaps"]:
        records = read_gap(g.journal_path, gap["offset"])
        assert records[0]["event"] == "gap_start" and records[-1]["event"] == "gap_end"
        assert records[0]["gap"] == gap["gap"]
        ids.append(gap["gap"])
    return ids


@pytest.mark.root
@needs_root
def test_every_adopt_hands_over_the_gaps_not_recorded_and_rotation_waits(
    guardian: Guardian, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(guardian_daemon, "JOURNAL_ROTATE_BYTES", 0)  # rotate at every gap
    rotated = guardian.journal_path.with_name(JOURNAL_NAME + ".1")
    assert _ask(guardian, "hold")["ok"]  # gap a (the empty journal is not rotated)
    [a] = _gap_ids(guardian, _ask(guardian, "adopt"))
    assert _ask(guardian, "hold")["ok"]  # gap b: a is unrecorded, so no rotation
    assert not rotated.exists()
    reply = _ask(guardian, "adopt")
    assert _gap_ids(guardian, reply) == [a, reply["gaps"][1]["gap"]]
    assert reply["gap_offset"] == reply["gaps"][1]["offset"]  # for older agents
    b = reply["gaps"][1]["gap"]
    assert _ask(guardian, "recorded 0123") == {"ok": False, "error": "no unrecorded gap '0123'"}
    assert _ask(guardian, f"recorded {b}") == {"ok": True}  # b, and a with it
    assert _ask(guardian, "adopt")["gaps"] == []
    assert _ask(guardian, "hold")["ok"]  # gap c: nothing unrecorded, rotated now
    assert rotated.exists()
    [c] = _gap_ids(guardian, _ask(guardian, "adopt"))
    assert c not in (a, b)
    journalled = [json.loads(line) for line in rotated.read_text().splitlines()]
    assert [r["gap"] for r in journalled if r["event"] == "gap_recorded"] == [b]


def _serve(g: Guardian) -> threading.Thread:
    """Let the guardian answer one control connection, as its main loop does."""
    t = threading.Thread(target=g._control, daemon=True)
    t.start()
    return t


@pytest.mark.root
@needs_root
def test_a_gap_whose_confirmation_was_lost_is_not_recorded_twice(guardian: Guardian) -> None:
    assert _ask(guardian, "hold")["ok"]  # a gap, then two agents in turn adopt it
    first = GuardianLink(guardian.dir, lambda detail: None)
    served = _serve(guardian)
    adopted = first.adopt()
    served.join()
    assert adopted is not None
    fan_fd, [gap] = adopted
    os.close(fan_fd)
    gap.progress.one_more()
    gap.progress.finish()
    sock = guardian.dir / SOCKET_NAME
    sock.rename(sock.with_name("elsewhere"))  # the confirmation gets lost
    first.confirm()
    first.close()
    sock.with_name("elsewhere").rename(sock)
    assert (guardian.dir / RECORDED_NAME).read_text() == f"{gap.id} 000000000001 1\n"
    assert [g for _, g in guardian.unconfirmed] == [gap.id]

    second = GuardianLink(guardian.dir, lambda detail: None)
    served = _serve(guardian)
    adopted = second.adopt()
    served.join()
    assert adopted is not None
    fan_fd, gaps = adopted
    os.close(fan_fd)
    second.close()
    assert gaps == []  # recorded by the first agent: not handed to on_gap again
    served = _serve(guardian)
    second.confirm()
    served.join()
    assert guardian.unconfirmed == []  # but confirmed this time


def _adopt(g: Guardian, links: list[GuardianLink]) -> list[Gap]:
    """A new agent's adopt of ``g``'s group (its link added to ``links``, to close when
    done with its gaps): the gaps handed to it."""
    link = GuardianLink(g.dir, lambda detail: None)
    links.append(link)
    served = _serve(g)
    adopted = link.adopt()
    served.join()
    assert adopted is not None
    os.close(adopted[0])
    return adopted[1]


@pytest.mark.root
@needs_root
def test_an_agent_killed_while_recording_a_gap_leaves_the_next_where_to_go_on(
    guardian: Guardian, tmp_path: Path
) -> None:
    links: list[GuardianLink] = []
    assert _ask(guardian, "hold")["ok"]  # gap a
    [a] = _adopt(guardian, links)
    assert _ask(guardian, "hold")["ok"]  # gap b; a was not recorded at all
    [again, b] = _adopt(guardian, links)
    assert again.id == a.id and again.progress.recorded == 0
    again.progress.one_more()
    again.progress.one_more()  # and the agent is killed: never finish()ed, or confirmed
    [a2, b2] = _adopt(guardian, links)
    assert (a2.id, a2.progress.recorded, a2.progress.done) == (a.id, 2, False)
    assert (b2.id, b2.progress.recorded) == (b.id, 0)

    # The file guard records what is left of a gap: here the last of its three events.
    sink: list[events_pb2.Event] = []
    guard = FileGuard(FileGuardConfig(roots=(tmp_path,), label_key=b"k" * 32), sink.append)
    guard._gap_recorded([START, DENIED, ALLOWED, END], a2.progress)
    assert [e.file_access.path for e in sink] == [ALLOWED["path"]]
    assert a2.progress.recorded == 3
    for link in links:
        link.close()


@pytest.mark.root
@needs_root
def test_gaps_never_confirmed_are_dropped_past_the_limits(
    guardian: Guardian, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Agents that never confirm (a crash loop, an agent older than confirmation) must
    not grow adopt's reply or the journal without end."""
    monkeypatch.setattr(guardian_daemon, "UNCONFIRMED_GAPS", 2)
    ids = []
    for _ in range(3):
        assert _ask(guardian, "hold")["ok"]
        ids.append(_gap_ids(guardian, _ask(guardian, "adopt"))[-1])
    assert _gap_ids(guardian, _ask(guardian, "adopt")) == ids[1:]
    journal = [json.loads(line) for line in guardian.journal_path.read_text().splitlines()]
    assert [r["gap"] for r in journal if r["event"] == "gap_dropped"] == ids[:1]

    monkeypatch.setattr(guardian_daemon, "JOURNAL_ROTATE_BYTES", 0)
    monkeypatch.setattr(guardian_daemon, "JOURNAL_HOLD_BYTES", 1)
    assert _ask(guardian, "hold")["ok"]  # past the hold limit: rotated all the same
    assert guardian.journal_path.with_name(JOURNAL_NAME + ".1").exists()
    [now] = _gap_ids(guardian, _ask(guardian, "adopt"))
    assert now not in ids


@pytest.mark.root
@needs_root
def test_a_guardian_older_than_confirmation_still_hands_over_its_last_gap(
    guardian: Guardian, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A guardian outlives the agent's upgrade: one whose adopt reply has no ``gaps``
    still has its last gap recorded, and is not sent a request it would not know."""
    adopt = Guardian._adopt

    def older_adopt(self: Guardian, pid: int, alive: bool) -> tuple[dict[str, Any], list[int]]:
        reply, fds = adopt(self, pid, alive)
        del reply["gaps"]
        return reply, fds

    monkeypatch.setattr(Guardian, "_adopt", older_adopt)
    assert _ask(guardian, "hold")["ok"]
    links: list[GuardianLink] = []
    [gap] = _adopt(guardian, links)
    assert gap.id == "" and [r["event"] for r in gap.records] == ["gap_start", "gap_end"]
    gap.progress.finish()
    links[0].confirm()  # nothing to confirm to this guardian
    links[0].close()
    assert "gap_recorded" not in guardian.journal_path.read_text()
