"""The collector's per-batch chain check, without a network."""

from __future__ import annotations

import grpc
import pytest
from baomi import chain
from baomi.v1 import events_pb2

from collector.ingest import ForeignHost, HostChain, Rejected
from tests.collector_harness import Host


def _host() -> Host:
    return Host("ws-01", b"", b"", b"")


def _bodies(events: list[events_pb2.Event]) -> list[bytes]:
    """The events' bytes as a batch carries them."""
    return [e.SerializeToString() for e in events]


def test_contiguous_batch_advances_the_head() -> None:
    h = _host()
    state = HostChain("ws-01", 0, chain.GENESIS)
    rows = state.check(_bodies(h.events(4)), 0)
    assert [r.seq for r in rows] == [1, 2, 3, 4]
    assert (state.seq, state.hash) == (4, h.head)
    assert not state.breaks


def test_replayed_events_are_skipped() -> None:
    h = _host()
    events = h.events(6)
    state = HostChain("ws-01", 0, chain.GENESIS)
    state.check(_bodies(events[:4]), 0)
    rows = state.check(_bodies(events), 0)
    assert [r.seq for r in rows] == [5, 6]


def test_gap_and_wrong_prev_hash_are_breaks_but_stored() -> None:
    h = _host()
    events = h.events(5)
    state = HostChain("ws-01", 0, chain.GENESIS)
    rows = state.check(_bodies([events[0], events[2]]), 0)
    assert [r.seq for r in rows] == [1, 3]
    assert state.breaks == [(3, "seq gap: 1 then 3")]


def test_foreign_host_raises() -> None:
    h = _host()
    ev = h.events(1)
    ev[0].host_id = "ws-02"
    with pytest.raises(ForeignHost):
        HostChain("ws-01", 0, chain.GENESIS).check(_bodies(ev), 0)


def test_seq_must_increase_within_a_batch() -> None:
    h = _host()
    a, b = h.events(2)
    with pytest.raises(Rejected) as err:
        HostChain("ws-01", 0, chain.GENESIS).check(_bodies([b, a]), 0)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
