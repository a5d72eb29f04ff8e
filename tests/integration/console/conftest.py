"""Fixtures for console tests: a real collector serving its console, one account per role."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from collector.console import ConsoleConfig
from collector.console.auth import create_account
from collector.store import Store
from tests.collector_harness import RunningCollector
from tests.integration.console.web import Client

REPO = Path(__file__).resolve().parents[3]
PASSWORD = "correct-horse-battery"  # noqa: S105 - a test account's
METRICS_TOKEN = "scrape-" + "0123456789abcdef" * 2
ROLE_ACCOUNTS = {"sysadmin": "sam", "secadmin": "sue", "auditor": "aud"}


@dataclass
class Console:
    """A running collector with its console, and helpers to log in."""

    running: RunningCollector
    base: str

    @property
    def store(self) -> Store:
        return self.running.store

    def client(self) -> Client:
        return Client(self.base)

    def as_role(self, role: str) -> Client:
        c = self.client()
        resp = c.login(ROLE_ACCOUNTS[role], PASSWORD)
        assert resp.status == 303, resp.text
        return c

    def audit(self) -> list[object]:
        """Every console action recorded in the collector's chain, oldest first."""
        from baomi.v1 import events_pb2

        from collector.ingest import COLLECTOR_HOST

        return [
            events_pb2.Event.FromString(r.body)
            for r in self.store.chain(COLLECTOR_HOST)
            if r.kind == "console_action"
        ]


def start_console(store: Store, pki_dir: Path, **config: object) -> RunningCollector:
    """A collector with the shipped policies and a console on an ephemeral port."""
    console = config.pop("console", ConsoleConfig(listen="127.0.0.1:0"))
    return RunningCollector(
        store,
        pki_dir,
        checkpoint_seconds=3600,
        policies_dir=REPO / "policies",
        console=console,
        **config,
    )


def _serve(store: Store, pki_dir: Path, config: ConsoleConfig) -> Iterator[Console]:
    for role, name in ROLE_ACCOUNTS.items():
        create_account(store, name, role=role, by="cli:test", password=PASSWORD)
    running = start_console(store, pki_dir, console=config)
    c = Console(running, f"http://127.0.0.1:{running.collector.ports['console']}")
    try:
        yield c
    finally:
        c.running.stop()  # a test may have restarted it


@pytest.fixture
def console(store: Store, pki_dir: Path) -> Iterator[Console]:
    """A collector serving the console over ``store`` (SQLite and PostgreSQL), with
    one account per role (password ``PASSWORD``)."""
    yield from _serve(store, pki_dir, ConsoleConfig(listen="127.0.0.1:0"))


@pytest.fixture
def scraped_console(store: Store, pki_dir: Path, tmp_path: Path) -> Iterator[Console]:
    """``console``, serving /metrics to a scraper with ``METRICS_TOKEN``."""
    token_file = tmp_path / "metrics.token"
    token_file.write_text(METRICS_TOKEN + "\n")
    config = ConsoleConfig(listen="127.0.0.1:0", metrics_token_file=token_file)
    yield from _serve(store, pki_dir, config)
