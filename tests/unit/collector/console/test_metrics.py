"""The /metrics text: what a scraper reads about the store."""

from __future__ import annotations

import pytest

from collector.console import metrics
from collector.console.alerts import AlertStats
from collector.ingest import IngestStats


@pytest.mark.parametrize(("store_up", "value"), [(True, "1"), (False, "0")])
def test_the_store_being_down_is_a_gauge(store_up: bool, value: str) -> None:
    text = metrics.render(
        committed=0,
        ingest=IngestStats(),
        connected=0,
        hosts=[],
        decommissioned=[],
        alerts=AlertStats(),
        store_up=store_up,
    )
    assert "# TYPE baomi_store_up gauge" in text
    assert f"\nbaomi_store_up {value}\n" in text
