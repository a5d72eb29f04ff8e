"""Fixtures for the report tests: a seeded store (each backend), policies, poppler tools."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from collector.store import Store
from tests.collector_harness import init_pki
from tests.integration.reports import seed

ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts" / "reports"
POPPLER = ("pdftotext", "pdffonts", "pdftoppm")


@dataclass
class Seeded:
    """A store holding the seeded history, and what a report needs beside it."""

    store: Store
    store_url: str
    specs: list[seed.Spec]
    policies_dir: Path
    expected_policy: str
    key_path: Path


@pytest.fixture
def seeded(store: Store, store_url: str, tmp_path: Path) -> Iterator[Seeded]:
    """The seeded history in a fresh store of each backend, with a signed checkpoint."""
    pki_dir = tmp_path / "pki"
    init_pki(pki_dir)
    policies_dir, version = seed.policies(tmp_path / "policies")
    specs = seed.history(version)
    seed.write(store, pki_dir, specs)
    seed.add_findings(store)
    yield Seeded(store, store_url, specs, policies_dir, version, pki_dir / "signing.pub")


@pytest.fixture(scope="session")
def poppler() -> None:
    """Skip when poppler-utils is missing (Debian: apt install poppler-utils)."""
    missing = [tool for tool in POPPLER if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"poppler-utils missing ({', '.join(missing)}): apt install poppler-utils")


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where rendered pages are kept for people to look at (gitignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
