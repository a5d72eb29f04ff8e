"""The spool chains events, keeps them until acknowledged, and refuses corruption."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from baomi import chain
from baomi.v1 import events_pb2

from agent import spool as spool_module
from agent.errors import SpoolError
from agent.spool import CollectorMismatch, Spool
from tests.procs import SQLITE_MEMORY, fresh_python


def _status() -> events_pb2.Event:
    return events_pb2.Event(agent_status=events_pb2.AgentStatus(state="running"))


def test_events_are_chained_from_genesis(tmp_path: Path) -> None:
    spool = Spool.create(tmp_path / "s.db", "ws-01", 0, chain.GENESIS)
    events = spool.append([_status() for _ in range(5)])
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert events[0].prev_hash == chain.GENESIS
    for before, after in itertools.pairwise(events):
        assert after.prev_hash == chain.event_hash(before)
    assert all(e.host_id == "ws-01" and e.HasField("time") for e in events)
    stored = spool.read_after(0, 10)
    assert [chain.bytes_hash(b) for _, b in stored] == [chain.event_hash(e) for e in events]


def test_chain_continues_from_the_collectors_head(tmp_path: Path) -> None:
    head = b"\x07" * 32
    spool = Spool.create(tmp_path / "s.db", "ws-01", 41, head)
    (ev,) = spool.append([_status()])
    assert (ev.seq, ev.prev_hash) == (42, head)


def _hash_at(spool: Spool, seq: int) -> bytes:
    return next(chain.bytes_hash(b) for s, b in spool.read_after(seq - 1, 1) if s == seq)


def test_only_acknowledged_events_leave_and_the_head_survives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "RETAINED", 2)
    path = tmp_path / "s.db"
    spool = Spool.create(path, "ws-01", 0, chain.GENESIS)
    spool.append([_status() for _ in range(10)])
    assert spool.acknowledge(6, _hash_at(spool, 6)) == 6
    assert spool.pending() == 4
    assert [s for s, _ in spool.read_after(0, 100)] == [5, 6, 7, 8, 9, 10]  # 2 kept
    spool.acknowledge(10, _hash_at(spool, 10))
    assert spool.acked == (10, _hash_at(spool, 10))
    head = spool.head
    spool.close()
    reopened = Spool(path)
    assert reopened.head == head and reopened.pending() == 0
    (ev,) = reopened.append([_status()])
    assert ev.seq == 11 and ev.prev_hash == head[1]


def test_a_head_this_host_did_not_make_is_refused(tmp_path: Path) -> None:
    spool = Spool.create(tmp_path / "s.db", "ws-01", 0, chain.GENESIS)
    spool.append([_status() for _ in range(5)])
    real = _hash_at(spool, 3)
    with pytest.raises(CollectorMismatch, match="another event at seq 3"):
        spool.acknowledge(3, b"\x01" * 32)  # a forged or foreign event at seq 3
    with pytest.raises(CollectorMismatch, match="which made only 5"):
        spool.acknowledge(6, b"\x01" * 32)
    assert spool.pending() == 5  # nothing forgotten
    assert spool.acknowledge(3, real) == 3
    with pytest.raises(CollectorMismatch, match="another event at seq 3"):
        spool.acknowledge(3, b"\x02" * 32)  # the acknowledged head is remembered
    with pytest.raises(CollectorMismatch, match="another event at seq 0"):
        spool.acknowledge(0, b"\x02" * 32)


def test_a_collector_that_lost_events_gets_what_is_kept_again(tmp_path: Path) -> None:
    spool = Spool.create(tmp_path / "s.db", "ws-01", 0, chain.GENESIS)
    spool.append([_status() for _ in range(5)])
    spool.acknowledge(5, _hash_at(spool, 5))
    with pytest.raises(CollectorMismatch, match="below seq 5") as lost:
        spool.acknowledge(2, _hash_at(spool, 2))
    assert lost.value.lost
    spool.rebase(2, _hash_at(spool, 2))
    assert spool.acked[0] == 2 and spool.pending() == 3
    assert [s for s, _ in spool.read_after(2, 10)] == [3, 4, 5]  # sent again


def test_unclean_stop_is_remembered(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    Spool.create(path, "ws-01", 0, chain.GENESIS).close()
    first = Spool(path)
    assert first.mark_running()[0] is False
    first.close()  # killed: never marked stopped
    second = Spool(path)
    unclean, last_alive = second.mark_running()
    assert unclean and last_alive > 0
    second.mark_stopped()
    second.close()
    assert Spool(path).mark_running()[0] is False


def test_full_spool_is_loud_not_lossy(tmp_path: Path) -> None:
    spool = Spool.create(tmp_path / "s.db", "ws-01", 0, chain.GENESIS)
    spool.max_bytes = 64 * 1024
    alarms: list[int] = []
    spool.on_full = alarms.append
    for _ in range(20):
        spool.append([_status() for _ in range(100)])
    assert len(alarms) == 1 and alarms[0] > spool.max_bytes
    assert spool.pending() == 2000  # nothing dropped


def test_missing_spool_says_to_enrol(tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match="enrol this host first"):
        Spool(tmp_path / "nope.db")


@pytest.mark.parametrize("damage", ["garbage header", "truncated"])
def test_corrupt_spool_is_refused_with_recovery_advice(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "s.db"
    spool = Spool.create(path, "ws-01", 0, chain.GENESIS)
    spool.append([_status() for _ in range(200)])
    spool.close()
    data = path.read_bytes()
    if damage == "garbage header":
        path.write_bytes(b"\x00garbage" * 16 + data[128:])
    else:
        path.write_bytes(data[: len(data) // 3])
    with pytest.raises(SpoolError, match="corrupt") as err:
        Spool(path)
    assert "re-enrol" in str(err.value) and ".recover" in str(err.value)
    assert path.exists()


def test_a_full_spool_opened_and_sent_does_not_keep_its_pages_cached(tmp_path: Path) -> None:
    """The integrity check at open reads every page, and sending a backlog reads them
    again; an idle agent must not keep them (SQLite's default cache holds up to 2 MB
    per connection, for as long as it is open)."""
    path = tmp_path / "s.db"
    spool = Spool.create(path, "ws-01", 0, chain.GENESIS)
    note = "x" * 400
    for _ in range(20):
        spool.append(
            [events_pb2.Event(agent_status=events_pb2.AgentStatus(state=note)) for _ in range(1000)]
        )
    spool.close()
    assert path.stat().st_size > 8 * 1024 * 1024
    printed = fresh_python(
        SQLITE_MEMORY + "from pathlib import Path\n"
        "from agent.spool import Spool\n"
        f"spool = Spool(Path({str(path)!r}))\n"
        "opened = used()\n"
        "seq = 0\n"
        "while rows := spool.read_after(seq, 500):\n"
        "    seq = rows[-1][0]\n"
        "print(opened, used())\n"
    )
    opened, sent = (int(n) for n in printed.split())
    if opened < 0:
        pytest.skip("Python's sqlite3 is not linked to a shared libsqlite3 here")
    assert opened < 1024 * 1024, f"SQLite holds {opened} bytes after the spool opened"
    assert sent < 1024 * 1024, f"SQLite holds {sent} bytes after every event was read"


def test_release_memory_frees_the_pages_a_large_event_left_cached(tmp_path: Path) -> None:
    """What the stream calls once the collector has everything: SQLite keeps none of
    the pages of the last large event written and read back, nor its copy that a cached
    insert statement kept bound (~300 KB here, until the next append)."""
    path = tmp_path / "s.db"
    Spool.create(path, "ws-01", 0, chain.GENESIS).close()
    printed = fresh_python(
        SQLITE_MEMORY + "from pathlib import Path\n"
        "from agent.spool import Spool\n"
        "from baomi.v1 import events_pb2\n"
        f"spool = Spool(Path({str(path)!r}))\n"
        "big = events_pb2.Event(agent_status=events_pb2.AgentStatus(state='x' * 300_000))\n"
        "spool.append([big])\n"
        "spool.read_after(0, 10)\n"
        "before = used()\n"
        "spool.release_memory()\n"
        "print(before, used())\n"
    )
    before, after = (int(n) for n in printed.split())
    if before < 0:
        pytest.skip("Python's sqlite3 is not linked to a shared libsqlite3 here")
    assert before - after > 200 * 1024, (before, after)
    assert after < 128 * 1024, f"SQLite still holds {after} bytes"
