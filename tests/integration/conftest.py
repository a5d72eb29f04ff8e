"""Fixtures for integration tests: a PKI and an in-process collector over each store."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture
def ns() -> Iterator[str]:
    """A fresh network namespace, removed afterwards."""
    from pyroute2 import netns

    name = f"baomi-test-{uuid.uuid4().hex[:8]}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.remove(name)


@pytest.fixture
def ipr(ns: str) -> Iterator[Any]:
    """A pyroute2 IPRoute in the test's namespace, for making changes."""
    from pyroute2 import IPRoute

    with IPRoute(netns=ns, flags=0) as ipr:
        yield ipr
