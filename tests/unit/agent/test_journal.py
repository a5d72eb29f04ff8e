"""The event journal: what a killed agent recorded comes back exactly once.

Tested as an attacker on the agent's durability would: a kill -9 in a process of its
own, records torn mid-write, a ring that wrapped, a mark from another ring, a full ring.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from baomi.v1 import events_pb2

from agent.journal import HEADER_BYTES, EventJournal, JournalError
from agent.recorder import Recorder
from agent.spool import Spool

RING = 4096  # the smallest ring: a few dozen events, so tests wrap it


def bodies(n: int, start: int = 0) -> list[bytes]:
    return [f"event {i} ".encode() * (1 + i % 7) for i in range(start, start + n)]


def test_what_was_appended_after_the_mark_comes_back(tmp_path: Path) -> None:
    j = EventJournal(tmp_path / "j", RING)
    assert j.recover(None) == ([], 0)
    first = [j.append(b) for b in bodies(5)]
    mark = (j.epoch, first[1])  # the spool holds the first two
    again = EventJournal(tmp_path / "j", RING)
    recovered, end = again.recover(mark)
    assert recovered == bodies(5)[2:]
    assert end == first[-1]


def test_appending_goes_on_where_recovery_ended(tmp_path: Path) -> None:
    j = EventJournal(tmp_path / "j", RING)
    j.recover(None)
    j.append(b"one")
    again = EventJournal(tmp_path / "j", RING)
    _, end = again.recover((again.epoch, 0))
    at = again.append(b"two")
    third = EventJournal(tmp_path / "j", RING)
    assert third.recover((third.epoch, 0)) == ([b"one", b"two"], at)
    assert at > end


def test_the_ring_wraps_and_never_returns_an_earlier_lap(tmp_path: Path) -> None:
    j = EventJournal(tmp_path / "j", RING)
    j.recover(None)
    mark = 0
    for lap in range(10):  # each batch drained, as the recorder does after a commit
        positions = [j.append(b) for b in bodies(20, lap * 20)]
        recovered, end = EventJournal(tmp_path / "j", RING).recover((j.epoch, mark))
        assert recovered == bodies(20, lap * 20)
        assert end == positions[-1]
        mark = positions[-1]
        j.drained(mark)
    assert mark > 2 * RING  # it went round, twice


def test_a_record_torn_by_the_kill_ends_the_recovery(tmp_path: Path) -> None:
    j = EventJournal(tmp_path / "j", RING)
    j.recover(None)
    ends = [j.append(b) for b in bodies(3)]
    # The third record's body half written: its checksum no longer matches.
    with (tmp_path / "j").open("r+b") as f:
        f.seek(HEADER_BYTES + ends[1] + 16 + 2)
        f.write(b"\0\0\0")
    recovered, end = EventJournal(tmp_path / "j", RING).recover((j.epoch, 0))
    assert recovered == bodies(2)
    assert end == ends[1]


def test_a_mark_of_another_ring_recovers_nothing_and_starts_afresh(tmp_path: Path) -> None:
    j = EventJournal(tmp_path / "j", RING)
    j.recover(None)
    j.append(b"from the spool before a re-enrolment")
    again = EventJournal(tmp_path / "j", RING)
    assert again.recover((b"someelse", 0)) == ([], 0)
    assert again.epoch != j.epoch
    # Its old records are gone, not waiting to be read under the new epoch.
    assert EventJournal(tmp_path / "j", RING).recover((again.epoch, 0)) == ([], 0)


def test_a_full_ring_waits_for_the_spool_then_says_so(tmp_path: Path) -> None:
    j = EventJournal(tmp_path / "j", RING)
    j.recover(None)
    body = b"x" * 200
    ends = []
    with pytest.raises(JournalError, match="full"):
        for _ in range(100):
            ends.append(j.append(body, timeout=0.05))
    j.drained(ends[-1])
    j.append(body, timeout=0.05)  # room again


def test_an_event_too_big_for_the_ring_is_refused(tmp_path: Path) -> None:
    j = EventJournal(tmp_path / "j", RING)
    with pytest.raises(JournalError, match="does not fit"):
        j.append(b"x" * RING)
    with pytest.raises(JournalError, match="does not fit"):
        j.append(b"")


def test_a_file_that_is_not_a_journal_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "j"
    path.write_bytes(b"not a journal" * 1000)
    with pytest.raises(JournalError, match="move it aside"):
        EventJournal(path, RING)


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_bytes(b"")
    (tmp_path / "j").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError, match="symbolic links"):
        EventJournal(tmp_path / "j", RING)


def test_the_file_is_private(tmp_path: Path) -> None:
    EventJournal(tmp_path / "j", RING)
    assert (tmp_path / "j").stat().st_mode & 0o777 == 0o600


KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from agent.journal import EventJournal
    j = EventJournal(Path(sys.argv[1]), int(sys.argv[2]))
    j.recover(None)
    for i in range(int(sys.argv[3])):
        j.append(f"event {i}".encode())
    print(j.epoch.hex(), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_kill_9_right_after_appending_loses_nothing(tmp_path: Path) -> None:
    """No fsync, no close, no exit handler: the page cache keeps what was written."""
    n = 1000
    out = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(tmp_path / "j"), str(1 << 20), str(n)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == -signal.SIGKILL, out.stderr
    epoch = bytes.fromhex(out.stdout.strip())
    recovered, _ = EventJournal(tmp_path / "j", 1 << 20).recover((epoch, 0))
    assert recovered == [f"event {i}".encode() for i in range(n)]


# -- the recorder with a journal -----------------------------------------------------------
def make_spool(tmp_path: Path) -> Spool:
    return Spool.create(tmp_path / "spool.db", "journal-host", 0, b"")


def access(i: int) -> events_pb2.Event:
    return events_pb2.Event(
        severity=events_pb2.SEVERITY_INFO,
        file_access=events_pb2.FileAccess(path=f"/secret/{i}", action="read", uid=1000 + i),
    )


def spooled_paths(spool: Spool) -> list[str]:
    return [
        events_pb2.Event.FromString(body).file_access.path
        for _, body in spool.read_after(0, 10_000)
        if events_pb2.Event.FromString(body).WhichOneof("kind") == "file_access"
    ]


def test_events_recorded_but_never_spooled_are_spooled_once_at_the_next_start(
    tmp_path: Path,
) -> None:
    spool = make_spool(tmp_path)
    journal = EventJournal(tmp_path / "events.journal", RING * 16)
    first = Recorder(spool, lambda: None, journal)
    first.recover()
    first.start()
    for i in range(3):
        first.record(access(i))
    assert first.flush()
    # The writer thread is gone as if killed: these stay queued, in memory and journal.
    first.stop()
    stalled = Recorder(spool, lambda: None, journal)  # never started: nothing spooled
    for i in range(3, 8):
        stalled.record(access(i))
    assert spooled_paths(spool) == [f"/secret/{i}" for i in range(3)]

    again = Recorder(spool, lambda: None, EventJournal(tmp_path / "events.journal", RING * 16))
    assert again.recover() == 5
    assert spooled_paths(spool) == [f"/secret/{i}" for i in range(8)]
    # A second start finds nothing more: the mark went into the spool with them.
    third = Recorder(spool, lambda: None, EventJournal(tmp_path / "events.journal", RING * 16))
    assert third.recover() == 0
    assert spooled_paths(spool) == [f"/secret/{i}" for i in range(8)]


def test_a_journal_that_cannot_take_an_event_still_spools_it_and_says_so(
    tmp_path: Path,
) -> None:
    spool = make_spool(tmp_path)
    journal = EventJournal(tmp_path / "events.journal", RING)
    rec = Recorder(spool, lambda: None, journal)
    rec.recover()
    rec.record(access(0))
    big = access(1)
    big.file_access.cmdline = "x" * RING  # larger than a quarter of the ring
    rec.record(big)
    assert "does not fit" in rec.error
    rec.start()
    assert rec.flush()
    rec.stop()
    assert spooled_paths(spool) == ["/secret/0", "/secret/1"]


def test_spool_marks_outlive_reopening(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    assert spool.journal_mark() is None
    spool.append([access(0)], journal=(b"epoch123", 4096))
    spool.close()
    again = Spool(tmp_path / "spool.db")
    assert again.journal_mark() == (b"epoch123", 4096)


def _resident_kib(path: Path) -> int:
    """KiB of ``path``'s mapping resident in this process (/proc/self/smaps)."""
    lines = Path("/proc/self/smaps").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.endswith(str(path)):
            for detail in lines[i + 1 : i + 25]:
                if detail.startswith("Rss:"):
                    return int(detail.split()[1])
    raise AssertionError(f"{path} is not mapped")


def test_drained_records_leave_the_resident_set(tmp_path: Path) -> None:
    """The ring costs memory for what the spool has not taken, not for its whole size."""
    ring = 8 * 1024 * 1024
    j = EventJournal(tmp_path / "j", ring)
    j.recover(None)
    body = b"x" * 1000
    for _ in range(3):  # three laps of the ring, drained as they go
        for _ in range(ring // 1024 // 8):
            end = 0
            for _ in range(8):
                end = j.append(body)
            j.drained(end)
    assert _resident_kib(tmp_path / "j") < 3 * 1024
    # ... yet the file still holds the records: a mark behind them reads them back.
    assert EventJournal(tmp_path / "j", ring).recover((j.epoch, end - 8 * 1024))[0] == [body] * 8


def test_a_drained_burst_leaves_the_resident_set_once_the_spool_has_it_all(
    tmp_path: Path,
) -> None:
    """A large event (a label inventory) and then quiet: the idle agent does not keep
    its pages, though they are fewer than a release takes while events flow."""
    j = EventJournal(tmp_path / "j", 8 * 1024 * 1024)
    j.recover(None)
    end = j.append(b"i" * 300 * 1024)
    assert _resident_kib(tmp_path / "j") >= 300
    j.drained(end - 1)  # not all of it in the spool yet: kept
    assert _resident_kib(tmp_path / "j") >= 300
    j.drained(end)
    assert _resident_kib(tmp_path / "j") < 16
    assert EventJournal(tmp_path / "j", 8 * 1024 * 1024).recover((j.epoch, 0))[0] == [
        b"i" * 300 * 1024
    ]
