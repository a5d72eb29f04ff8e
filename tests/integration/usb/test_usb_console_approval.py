"""Approving a blocked stick in the console (real Chromium) makes a running agent allow it.

The whole path is real: the USB sensor blocks the stick in the umockdev testbed, the
device event reaches the collector, a security administrator approves it in the browser,
the collector signs and pushes the new policy bundle, the agent applies it and the USB
sensor re-decides the present stick: ``authorized`` goes back to 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from baomi.v1 import events_pb2

from agent.core import AgentConfig
from agent.identity import enroll
from collector.console import ConsoleConfig
from collector.console.auth import create_account
from collector.server import create_token
from collector.store.sqlite import SQLiteStore
from tests.collector_harness import RunningCollector, init_pki
from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS
from tests.integration.test_agent import FAST, AgentThread, host_events, wait_for
from tests.integration.usb.conftest import Testbed, asset

pytestmark = [pytest.mark.umockdev, pytest.mark.browser]

REPO = Path(__file__).resolve().parents[3]
PASSWORD = "correct-horse-battery"  # noqa: S105 - a test account's


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[RunningCollector, AgentThread]]:
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (apt install chromium)")
    store = SQLiteStore(tmp_path / "c.db")
    init_pki(tmp_path / "pki")
    create_account(store, "sue", role="secadmin", by="cli:test", password=PASSWORD)
    running = RunningCollector(
        store,
        tmp_path / "pki",
        checkpoint_seconds=3600,
        policies_dir=REPO / "policies",
        console=ConsoleConfig(listen="127.0.0.1:0"),
    )
    state = tmp_path / "agent"
    enroll(
        state,
        running.address,
        create_token(store, "ws-01"),
        (running.pki_dir / "ca.pem").read_bytes(),
        running.enroll_address,
    )
    # The USB sensor reads the policy the agent keeps from the collector's bundles.
    agent = AgentThread(
        AgentConfig(
            state_dir=state,
            heartbeat_seconds=3600,
            stream=FAST,
            sensors={"usb": {"policies": str(state / "policy")}},
        )
    )
    try:
        yield running, agent
    finally:
        agent.stop()
        running.stop()
        store.close()


def _applied(running: RunningCollector) -> int:
    return sum(e.policy_applied.ok for e in host_events(running.store, "ws-01"))


def test_approving_a_stick_in_the_browser_lets_the_agent_allow_it(
    testbed: Testbed,
    site: tuple[RunningCollector, AgentThread],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from playwright.sync_api import sync_playwright

    running, _ = site
    wait_for(lambda: _applied(running) >= 1)  # the shipped policy is in force
    (sys_path,) = testbed.add_file(asset("stick-unregistered.umockdev"))
    port = sys_path.rsplit("/", 1)[1]
    wait_for(lambda: any(e.device.port == port for e in host_events(running.store, "ws-01")))
    assert testbed.attribute(sys_path, "authorized") == "0"

    base = f"http://127.0.0.1:{running.collector.ports['console']}"
    # The browser is the security officer's, not the secret computer's: Playwright's
    # driver and Chromium run outside the umockdev testbed (their udev and /sys probing
    # would otherwise go to the fake one). This process keeps the preload it started with.
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            locale="zh-CN",
            viewport={"width": 1360, "height": 900},
        )
        try:
            page: Any = context.new_page()
            page.goto(base + "/login")
            page.fill("input[name=name]", "sue")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(base + "/")
            page.goto(base + "/devices")
            form = page.locator("form.approve").first
            form.locator("input[name=label]").fill("BM-U-2026-042")
            form.locator("input[name=owner]").fill("wang")
            form.locator("button[type=submit]").click()
            page.wait_for_url(base + "/devices")
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "secadmin-devices-approved.png"), full_page=True)
        finally:
            context.close()

    wait_for(lambda: _applied(running) >= 2)  # the bundle with the registered stick
    wait_for(lambda: testbed.attribute(sys_path, "authorized") == "1")
    allowed = [
        e.device
        for e in host_events(running.store, "ws-01")
        if e.device.port == port and e.device.decision == events_pb2.DECISION_ALLOW
    ]
    assert allowed, "the agent did not record allowing the approved stick"
    actions = [
        events_pb2.Event.FromString(r.body).console_action
        for r in running.store.chain("_collector")
        if r.kind == "console_action"
    ]
    assert any(a.action == "approve_device" and a.actor == "sue" and a.ok for a in actions)
