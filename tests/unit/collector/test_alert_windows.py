"""Alert windows: one alert per host and kind per window, naming every seq."""

from __future__ import annotations

import asyncio
from typing import Any

from collector import ingest
from collector.ingest import AlertWindows


class Chain:
    """Stands in for the collector's chain: keeps what would be alerted."""

    def __init__(self) -> None:
        self.alerts: list[tuple[str, str, list[int]]] = []

    async def alert(self, kind: str, detail: str, **subject: Any) -> None:
        self.alerts.append((kind, subject["subject_host"], list(subject["subject_seqs"])))


def test_a_window_closes_by_itself_and_the_next_finding_opens_another() -> None:
    async def run() -> list[tuple[str, str, list[int]]]:
        chain = Chain()
        windows = AlertWindows(chain, seconds=0.2)  # type: ignore[arg-type]
        await windows.found("ws-01", "chain_break", [(3, "why")])
        await windows.found("ws-01", "chain_break", [(5, "why"), (6, "why")])
        await windows.found("ws-02", "chain_break", [(9, "why")])  # another host: at once
        await windows.found("ws-01", "conflicting_replay", [(1, "why")])  # another kind
        assert len(chain.alerts) == 3
        await asyncio.sleep(0.4)  # the windows close; ws-01's gathered seqs are alerted
        await windows.found("ws-01", "chain_break", [(7, "why")])  # a new window, at once
        await windows.close()
        return chain.alerts

    assert asyncio.run(run()) == [
        ("chain_break", "ws-01", [3]),
        ("chain_break", "ws-02", [9]),
        ("conflicting_replay", "ws-01", [1]),
        ("chain_break", "ws-01", [5, 6]),
        ("chain_break", "ws-01", [7]),
    ]


def test_a_window_that_gathers_too_many_seqs_closes_early(monkeypatch: Any) -> None:
    monkeypatch.setattr(ingest, "ALERT_SEQS", 10)

    async def run() -> list[tuple[str, str, list[int]]]:
        chain = Chain()
        windows = AlertWindows(chain, seconds=3600)  # type: ignore[arg-type]
        await windows.found("ws-01", "chain_break", [(1, "why")])
        for seq in range(2, 30):
            await windows.found("ws-01", "chain_break", [(seq, "why")])
        await windows.close()
        return chain.alerts

    alerts = asyncio.run(run())
    assert [seqs for _, _, seqs in alerts] == [
        [1],
        list(range(2, 12)),  # closed at 10 seqs; the next finding opened a new window
        [12],
        list(range(13, 23)),
        [23],
        list(range(24, 30)),
    ]


class HeldWriter:
    """Stands in for the store's writer: keeps the rows, each write held until released."""

    def __init__(self) -> None:
        self.heads: dict[str, tuple[int, bytes]] = {}
        self.rows: list[Any] = []
        self.release = asyncio.Event()

    async def write(self, rows: list[Any]) -> None:
        await self.release.wait()
        self.rows += rows


def test_the_alert_that_opens_a_window_is_recorded_even_if_its_stream_is_cancelled() -> None:
    """A stream superseded while its first chain_break alert waits for the chain must
    not leave an open window with nothing recorded: the next stream's break would be
    held back for the whole window (and lost with a crash)."""
    from baomi.v1 import events_pb2

    async def run() -> list[tuple[str, int]]:
        writer = HeldWriter()
        chain = ingest.CollectorChain(writer)  # type: ignore[arg-type]
        windows = AlertWindows(chain, seconds=3600)
        busy = asyncio.create_task(chain.alert("foreign_host", "another alert writes first"))
        await asyncio.sleep(0)
        stream = asyncio.create_task(windows.found("ws-01", "chain_break", [(26, "why")]))
        await asyncio.sleep(0.01)  # waiting for the chain behind the first alert
        stream.cancel()
        await asyncio.sleep(0.01)
        writer.release.set()
        await busy
        await windows.found("ws-01", "chain_break", [(27, "why")])  # gathered in the window
        await chain.drain()
        recorded = []
        for row in writer.rows:
            tamper = events_pb2.Event.FromString(row.body).tamper
            recorded.append((tamper.kind, tamper.subject_seq))
        return recorded

    assert asyncio.run(run()) == [("foreign_host", 0), ("chain_break", 26)]
