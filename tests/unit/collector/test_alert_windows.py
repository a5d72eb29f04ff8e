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
