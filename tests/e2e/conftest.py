"""Browser tests: Debian Chromium driven by Playwright against a real collector + agent."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.core import AgentConfig
from agent.identity import enroll
from agent.stream import StreamConfig
from collector.console import ConsoleConfig
from collector.console.auth import create_account
from collector.server import create_token
from collector.store import open_store
from tests.collector_harness import RunningCollector, init_pki
from tests.integration.test_agent import AgentThread

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
PASSWORD = "correct-horse-battery"  # noqa: S105 - a test account's
ACCOUNTS = {"sysadmin": "sam", "secadmin": "sue", "auditor": "aud"}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
]


@dataclass
class Site:
    """A collector serving its console, one enrolled agent running, an account per role."""

    running: RunningCollector
    agent: AgentThread
    base: str


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (apt install chromium)")
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    tmp = tmp_path_factory.mktemp("site")
    init_pki(tmp / "pki")
    store = open_store(f"sqlite:///{tmp / 'collector.db'}")
    for role, name in ACCOUNTS.items():
        create_account(store, name, role=role, by="cli:test", password=PASSWORD)
    running = RunningCollector(
        store,
        tmp / "pki",
        checkpoint_seconds=3600,
        policies_dir=REPO / "policies",
        console=ConsoleConfig(listen="127.0.0.1:0"),
    )
    token = create_token(store, "ws-01")
    state = tmp / "agent"
    enroll(
        state, running.address, token, (tmp / "pki" / "ca.pem").read_bytes(), running.enroll_address
    )
    agent = AgentThread(
        AgentConfig(
            state_dir=state,
            heartbeat_seconds=1.0,
            stream=StreamConfig(batch_seconds=0.05, backoff_initial=0.05, backoff_max=0.3),
        )
    )
    try:
        yield Site(running, agent, f"http://127.0.0.1:{running.collector.ports['console']}")
    finally:
        agent.stop()
        running.stop()
        store.close()


@pytest.fixture(scope="module")
def playwright_() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture
def browser_for(playwright_: object, tmp_path: Path) -> Iterator[object]:
    """A factory of fresh Chromium contexts (own profile directory each)."""
    contexts: list[object] = []

    def make() -> object:
        profile = tmp_path / f"profile-{len(contexts)}"
        context = playwright_.chromium.launch_persistent_context(  # type: ignore[attr-defined]
            str(profile),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            locale="zh-CN",
            viewport={"width": 1360, "height": 900},
            accept_downloads=True,
        )
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()  # type: ignore[attr-defined]
    shutil.rmtree(tmp_path, ignore_errors=True)


def screenshot_dir() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
