"""The register end to end in Debian Chromium on a guarded host: a request made on the
host with ``baomi-agent label request`` is approved by the secadmin in the browser; the
label appears on the file sealed with the host key, the kernel enforces it at the next
open, and the register page shows the entry in force. A change of level and a
declassification, asked on the host and approved in the browser, take effect at the
next open. (The same deployment as tests/integration/test_register.py: a real collector
and console, a real agent guarding its tree with fanotify.)"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from baomi.labels import read_label

from tests.integration.test_agent import wait_for
from tests.integration.test_file_guard import site  # noqa: F401 - the guarded tree
from tests.integration.test_register import (  # noqa: F401 - deployment is a fixture
    BOB,
    CAROL,
    PASSWORD,
    Deployment,
    _label_level,
    _requested,
    deployment,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (fanotify, setuid children)"),
]


def _approve_in_browser(d: Deployment, page: Any, register_id: str) -> None:
    """The secadmin sue approves the waiting request of ``register_id`` on /register."""
    page.goto(d.console + "/register")
    row = page.locator("#register-requests tr", has_text=register_id)
    row.locator("button[name=approve]").click()
    page.wait_for_url(d.console + "/register")


def test_a_host_request_approved_in_chromium_is_sealed_enforced_and_registered(
    deployment: Deployment,  # noqa: F811 - the fixture
    browser_for: Any,
) -> None:
    d = deployment
    plan: Path = d.site.root / "plan.txt"
    plan.write_text("the plan\n")
    plan.chmod(0o644)
    assert d.site.open_as(BOB, "plan.txt")  # unlabelled: anyone reads it

    page = browser_for().new_page()
    page.goto(d.console + "/login")
    page.fill("input[name=name]", "sue")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(d.console + "/")

    done = d.request(str(plan), "--level", "机密", "--until", "2099-12-31", "--basis",
                     "保密事项范围 第3条", "--title", "年度计划")  # fmt: skip
    assert done.returncode == 0, done.stderr
    rid = _requested(d, plan, "classify").register_id
    _approve_in_browser(d, page, rid)
    wait_for(lambda: d.entry(rid).status == "in_force")
    label = read_label(plan, d.site.key)  # sealed with the host key: read with it
    assert label is not None and label.valid
    assert (label.level, label.label_id, label.home) == (2, rid, str(plan))
    assert not d.site.open_as(BOB, "plan.txt")  # 机密: 一般 may not read it
    assert d.site.open_as(CAROL, "plan.txt")  # 重要 may
    page.goto(d.console + "/register")
    entry_row = page.locator("#register-entries tr", has_text=rid)
    assert "有效" in entry_row.inner_text() and "年度计划" in entry_row.inner_text()

    # A change of level asked on the host (the register id comes from the label).
    done = d.request(str(plan), "--action", "change", "--level", "绝密", "--until",
                     "2099-12-31", "--basis", "升级")  # fmt: skip
    assert done.returncode == 0, done.stderr
    _requested(d, plan, "change")
    _approve_in_browser(d, page, rid)
    wait_for(lambda: d.entry(rid).status == "changed")
    assert _label_level(d, plan) == 3
    assert not d.site.open_as(CAROL, "plan.txt")  # 绝密 now

    # A declassification: the next open is unclassified again.
    done = d.request(str(plan), "--action", "declassify")
    assert done.returncode == 0, done.stderr
    _requested(d, plan, "declassify")
    _approve_in_browser(d, page, rid)
    wait_for(lambda: d.entry(rid).status == "declassified")
    assert _label_level(d, plan) == 0
    assert d.site.open_as(BOB, "plan.txt")
    assert [h.step for h in d.entry(rid).history] == ["requested", "approved", "applied"] * 3
