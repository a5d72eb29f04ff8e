"""The spool chains events, keeps them until acknowledged, and refuses corruption."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from baomi import chain
from baomi.v1 import events_pb2

from agent.errors import SpoolError
from agent.spool import Spool


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


def test_only_acknowledged_events_leave_and_the_head_survives(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    spool = Spool.create(path, "ws-01", 0, chain.GENESIS)
    spool.append([_status() for _ in range(10)])
    assert spool.acknowledge(6) == 6
    assert [s for s, _ in spool.read_after(0, 100)] == [7, 8, 9, 10]
    spool.acknowledge(10)
    head = spool.head
    spool.close()
    reopened = Spool(path)
    assert reopened.head == head and reopened.pending() == 0
    (ev,) = reopened.append([_status()])
    assert ev.seq == 11 and ev.prev_hash == head[1]


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
