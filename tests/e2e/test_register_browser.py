"""The classification register in Debian Chromium: a request made on the host is
approved by the secadmin in the browser; the running agent applies the signed label
order and the register page shows the entry in force."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from baomi.labels import LABEL_KEY_FILE, load_label_key, read_label

from agent import label_orders
from collector.register import Register
from tests.e2e.conftest import ACCOUNTS, PASSWORD, Site, screenshot_dir

pytestmark = pytest.mark.browser


def _wait(what: Any, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _login(page: Any, base: str, role: str) -> None:
    page.goto(base + "/login")
    page.fill("input[name=name]", ACCOUNTS[role])
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/")


def test_a_host_request_approved_in_the_browser_labels_the_file(
    site: Site, browser_for: Any
) -> None:
    state = site.agent.agent.config.state_dir
    with tempfile.TemporaryDirectory(prefix="baomi-register-") as tmp:
        doc = Path(tmp) / "方案.txt"
        doc.write_text("方案\n")
        request = label_orders.make_request(
            str(doc),
            action="classify",
            level="秘密",
            until="2099-12-31",
            scope="dept:finance",
            basis="保密事项范围 第5条",
            title="E2E 方案",
            register_id=None,
            responsible="li",
            key=None,
        )
        label_orders.spool_request(state, request)
        store = site.running.store
        register_ids: list[str] = []

        def requested() -> bool:
            register_ids[:] = [
                e.register_id for e in Register.load(store).entries.values() if e.home == str(doc)
            ]
            return bool(register_ids)

        _wait(requested)
        (rid,) = register_ids

        page = browser_for().new_page()  # type: ignore[attr-defined]
        _login(page, site.base, "secadmin")
        page.goto(site.base + "/register")
        row = page.locator("#register-requests tr", has_text=rid)
        assert "定密" in row.inner_text() and "秘密" in row.inner_text()
        row.locator("button[name=approve]").click()
        page.wait_for_url(site.base + "/register")
        _wait(lambda: Register.load(store).entries[rid].status == "in_force")
        label = read_label(doc, load_label_key(state / LABEL_KEY_FILE))
        assert label is not None and label.valid
        assert (label.level, label.label_id) == (1, rid)

        page.goto(site.base + "/register")
        entry_row = page.locator("#register-entries tr", has_text=rid)
        assert "有效" in entry_row.inner_text() and "E2E 方案" in entry_row.inner_text()
        page.screenshot(path=str(screenshot_dir() / "secadmin-register.png"), full_page=True)
        page.goto(site.base + f"/register/entry?id={rid}")
        history = page.locator("#register-history").inner_text()
        assert "approved" in history and "applied" in history and "sue" in history
