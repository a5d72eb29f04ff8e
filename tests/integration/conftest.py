"""Fixtures for integration tests: a PKI and an in-process collector over each store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.store import Store
from tests.collector_harness import RunningCollector, init_pki


@pytest.fixture
def pki_dir(tmp_path: Path) -> Path:
    """A fresh development PKI."""
    d = tmp_path / "pki"
    init_pki(d)
    return d


@pytest.fixture
def collector(store: Store, pki_dir: Path) -> Iterator[RunningCollector]:
    """A collector serving on loopback over ``store`` (SQLite and PostgreSQL)."""
    running = RunningCollector(store, pki_dir, checkpoint_seconds=3600)
    try:
        yield running
    finally:
        running.stop()
