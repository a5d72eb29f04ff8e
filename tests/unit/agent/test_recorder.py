"""The recorder spools everything handed to it and folds repeated accesses."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from baomi import chain
from baomi.v1 import events_pb2

from agent.recorder import Recorder, fold
from agent.spool import Spool


def _access(pid: int, path: str, ns: int) -> events_pb2.Event:
    ev = events_pb2.Event(
        file_access=events_pb2.FileAccess(
            pid=pid, uid=1000, path=path, action="read", decision=events_pb2.DECISION_ALLOW
        )
    )
    ev.time.FromNanoseconds(ns)
    return ev


def test_fold_merges_identical_accesses_only() -> None:
    events = [
        _access(10, "/s/a", 1_000),
        _access(10, "/s/b", 2_000),
        _access(10, "/s/a", 3_000),
        events_pb2.Event(agent_status=events_pb2.AgentStatus()),
        _access(11, "/s/a", 4_000),
        _access(10, "/s/a", 5_000),
    ]
    out = fold(events)
    assert [e.WhichOneof("kind") for e in out] == ["file_access"] * 2 + ["agent_status"] + [
        "file_access"
    ]
    a = out[0].file_access
    assert (a.path, a.count) == ("/s/a", 3)
    assert (a.first.ToNanoseconds(), a.last.ToNanoseconds()) == (1_000, 5_000)
    assert out[1].file_access.count == 1 and out[3].file_access.pid == 11
    assert sum(max(e.file_access.count, 1) for e in out) == len(events)


def test_events_from_many_threads_all_reach_the_spool(tmp_path: Path) -> None:
    spool = Spool.create(tmp_path / "s.db", "ws-01", 0, chain.GENESIS)
    woken = threading.Event()
    recorder = Recorder(spool, woken.set)
    recorder.start()

    def produce(pid: int) -> None:
        for i in range(500):
            recorder.record(_access(pid, f"/s/{i % 7}", i))

    threads = [threading.Thread(target=produce, args=(pid,)) for pid in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert recorder.flush()
    recorder.stop()
    stored = [events_pb2.Event.FromString(b) for _, b in spool.read_after(0, 100_000)]
    assert sum(e.file_access.count for e in stored) == 2000
    assert woken.is_set()


def _events_held_by(thread: threading.Thread) -> list[events_pb2.Event]:
    """The events a waiting thread's frames hold, directly or in a list or tuple."""
    frame = sys._current_frames().get(thread.ident or 0)
    held: list[events_pb2.Event] = []
    while frame is not None:
        for value in frame.f_locals.values():
            items = value if isinstance(value, (list, tuple)) else [value]
            for item in items:
                inner = item if isinstance(item, (list, tuple)) else [item]
                held += [x for x in inner if isinstance(x, events_pb2.Event)]
        frame = frame.f_back
    return held


def test_an_idle_writer_keeps_none_of_the_events_it_wrote(tmp_path: Path) -> None:
    """An idle agent must not keep its last batch alive: after a label inventory that
    is ~0.7 MB of messages, until the next event comes."""
    spool = Spool.create(tmp_path / "s.db", "ws-01", 0, chain.GENESIS)
    recorder = Recorder(spool, lambda: None)
    recorder.start()
    try:
        recorder.record(events_pb2.Event(agent_status=events_pb2.AgentStatus(state="x" * 1000)))
        assert recorder.flush()
        deadline = time.monotonic() + 5
        while _events_held_by(recorder._thread) and time.monotonic() < deadline:
            time.sleep(0.01)  # the writer is between its spool commit and its next wait
        assert _events_held_by(recorder._thread) == []
    finally:
        recorder.stop()
        spool.close()


def test_fold_keeps_accesses_counted_already_as_they_are() -> None:
    counted = _access(10, "/s/a", 5_000)
    counted.file_access.count = 4
    counted.file_access.first.FromNanoseconds(2_000)
    counted.file_access.last.FromNanoseconds(5_000)
    events = [_access(10, "/s/a", 1_000), counted, _access(10, "/s/a", 6_000)]
    out = fold(events)
    # The counted event is neither merged nor merged into: every open is still counted.
    assert [e.file_access.count for e in out] == [2, 4]
    assert out[1] is counted
    assert (out[0].file_access.first.ToNanoseconds(), out[0].file_access.last.ToNanoseconds()) == (
        1_000,
        6_000,
    )
    assert sum(e.file_access.count for e in out) == 2 + 4
