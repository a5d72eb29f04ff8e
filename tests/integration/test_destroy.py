"""Recorded destruction (销毁) end to end: a real collector with its console, a real agent
guarding a tree with fanotify, the real ``baomi-agent destroy`` command as root.

A secadmin asks for the destruction of a register entry over HTTP naming the person,
another approves it; the agent receives the order signed; the command hands the
request to the agent over its root socket (the file guard would stop the command
itself from overwriting the file). A
person other than the one named, a person the policy does not allow ``delete``, and an
order altered on the host are refused and recorded; the named, allowed person destroys
the file: it is gone, the register says destroyed, the destruction report lists it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from baomi.v1 import collector_pb2, events_pb2

from agent.destroy import ORDERS_DIR, socket_path
from agent.spool import Spool
from collector.console.auth import create_account
from collector.reports.destruction import build_destruction
from collector.reports.leaver import build_leaver
from collector.reports.render import render
from tests.integration.test_agent import wait_for
from tests.integration.test_file_guard import site  # noqa: F401 - the site fixture
from tests.integration.test_register import (  # noqa: F401 - the deployment fixture
    PASSWORD,
    REPO,
    Deployment,
    _approve,
    _requested,
    deployment,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (fanotify, setuid children)"),
]


def _destroy(
    d: Deployment, path: Path, order: str, by: str, *more: str
) -> subprocess.CompletedProcess[str]:
    """``baomi-agent destroy`` as root, as the officer would type it."""
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'protos'}:{REPO}"}
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "--state-dir", str(d.state), "destroy", str(path),
         "--order", order, "--by", by, *more],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip


def _classified(d: Deployment, name: str, text: str) -> tuple[Path, str]:
    path = d.site.root / name
    path.write_text(text)
    path.chmod(0o644)
    done = d.request(str(path), "--level", "机密", "--basis", "第2条", "--title", "试验数据")
    assert done.returncode == 0, done.stderr
    rid = _requested(d, path, "classify").register_id
    _approve(d, rid)
    wait_for(lambda: d.entry(rid).status == "in_force")
    return path, rid


def _approve_by_another(d: Deployment, register_id: str) -> None:
    """A second secadmin approves the destruction sue asked for (not its requester)."""
    if d.collector.store.account("tom") is None:
        create_account(d.collector.store, "tom", role="secadmin", by="cli:test", password=PASSWORD)
    tom = d.as_role("tom")
    page = tom.get("/register")
    assert register_id in page.text and "销毁" in page.text
    assert tom.post("/register/approve", {"register_id": register_id}).status == 303


def _changes(d: Deployment, change: str) -> list[events_pb2.FileChange]:
    rows = d.collector.store.chain("ws-01")
    found = [events_pb2.Event.FromString(r.body) for r in rows if r.kind == "file_change"]
    return [e.file_change for e in found if e.file_change.change == change]


def _this_half() -> str:
    today = dt.datetime.now(dt.UTC).astimezone(dt.timezone(dt.timedelta(hours=8))).date()
    return f"{today.year}-H{1 if today.month <= 6 else 2}"


def test_destroy_refusals_then_destruction_and_report(deployment: Deployment) -> None:  # noqa: F811
    d = deployment
    path, rid = _classified(d, "plan.txt", "the plan\n" * 1000)
    sue = d.as_role("sue")

    # A secadmin asks for it, naming one person; another approves it.
    order_form = {"register_id": rid, "person": "alice"}
    assert d.as_role("aud").post("/register/destroy", order_form).status == 403
    bad = sue.post("/register/destroy", {"register_id": rid, "person": "alice bob"})
    assert bad.status == 400 and "login name" in bad.text
    assert sue.post("/register/destroy", order_form).status == 303
    assert d.entry(rid).order is None  # nothing before an approval
    _approve_by_another(d, rid)
    order = d.entry(rid).order
    assert order is not None and order.action == "destroy"
    assert list(order.scope) == ["user:alice"]
    kept = d.state / ORDERS_DIR / f"{order.order_id}.pb"
    wait_for(kept.is_file)  # the agent received it; nothing happened to the file
    assert path.is_file() and d.entry(rid).status == "in_force"

    # Someone other than the person the order names.
    done = _destroy(d, path, order.order_id, "carol")
    assert done.returncode == 2 and "names 'alice'" in done.stderr, done.stderr
    # The named person, but the policy allows alice no delete yet.
    done = _destroy(d, path, order.order_id, "alice")
    assert done.returncode == 2 and "does not allow alice to delete" in done.stderr, done.stderr
    # An order edited on the host (another person put in) no longer verifies.
    good = kept.read_bytes()
    forged = collector_pb2.LabelOrder.FromString(good)
    forged.scope[:] = ["user:carol"]
    kept.write_bytes(forged.SerializeToString())
    done = _destroy(d, path, order.order_id, "carol")
    assert done.returncode == 2 and "signature does not verify" in done.stderr, done.stderr
    kept.write_bytes(good)
    done = _destroy(d, path, "order-000000000000", "alice")
    assert done.returncode == 2 and "no destruction order" in done.stderr, done.stderr
    assert path.read_text() == "the plan\n" * 1000  # untouched by any refusal
    # Each refusal is recorded on the host's chain.
    wait_for(lambda: len(_changes(d, "destroy_refused")) == 4)
    reasons = [c.detail for c in _changes(d, "destroy_refused")]
    assert any("signature does not verify" in r for r in reasons)

    # Root's own processes may not write the guarded file: only the agent can.
    append = subprocess.run(["/bin/sh", "-c", f": >> {path}"], capture_output=True, check=False)
    assert append.returncode != 0 and b"Operation not permitted" in append.stderr

    d.site.write_policy(extra=f"p, alice, {d.site.root}/**, delete, allow\n")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()  # this process is the agent
    done = _destroy(d, path, order.order_id, "alice")
    assert done.returncode == 0, done.stderr
    assert f"register {rid}" in done.stdout and digest in done.stdout
    assert not path.exists()
    wait_for(lambda: d.entry(rid).status == "destroyed")
    assert [h.step for h in d.entry(rid).history][-2:] == ["approved", "applied"]
    (change,) = _changes(d, "destroyed")
    assert (change.label_id, change.home, change.level) == (rid, str(path), 2)
    assert json.loads(change.detail) == {"sha256": digest, "order": order.order_id, "by": "alice"}
    # The order is used up (and the collector's resending it changes nothing).
    assert not kept.exists()
    again = _destroy(d, path, order.order_id, "alice")
    assert again.returncode == 2 and "No such file" in again.stderr

    # The destruction register (销毁登记表) of the period lists it: on the command line,
    # in the console, and as the PDF checked below.
    store_url = f"sqlite:///{d.state.parent / 'c.db'}"
    html = d.site.base / "destruction.html"
    made = subprocess.run(
        [sys.executable, "-m", "collector.cli", "report", "destruction", "--period",
         _this_half(), "--store", store_url, "--out", str(html)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONPATH": f"{REPO / 'protos'}:{REPO}"},
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert rid in html.read_text() and digest in html.read_text()
    aud = d.as_role("aud")
    form = {"period": _this_half(), "format": "html", "kind": "destruction"}
    assert aud.post("/reports/generate", form).status == 200
    (stored,) = d.collector.store.reports("destruction")
    assert rid in aud.get(f"/reports/{stored.id}").body.decode()
    bad = aud.post("/reports/generate", {**form, "kind": "bogus"})
    assert bad.status == 400 and "报告种类只能是" in bad.text
    report = build_destruction(d.collector.store, _this_half())
    (row,) = report.figures["rows"]
    assert (row["register_id"], row["approver"], row["person"]) == (rid, "tom", "alice")
    pdf = d.site.base / "destruction.pdf"
    pdf.write_bytes(render(report, "pdf", "zh"))
    text = subprocess.run(
        ["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True
    ).stdout
    flat = "".join(text.split())  # a long id or hash may wrap in its cell
    for shown in ("销毁登记表", rid, "试验数据", "机密", "alice", "tom", order.order_id, digest):
        assert shown in flat, (shown, text)
    assert str(path) in flat


def _destruction_ref(d: Deployment) -> str:
    """HOST/SEQ of the one destruction the host recorded."""
    rows = [r for r in d.collector.store.chain("ws-01") if r.kind == "file_change"]
    (seq,) = [
        r.seq for r in rows if events_pb2.Event.FromString(r.body).file_change.change == "destroyed"
    ]
    return f"ws-01/{seq}"


def test_leaver_handover_refuses_sign_off_while_items_are_held(
    deployment: Deployment,  # noqa: F811
) -> None:
    d = deployment
    # zhang asks for both (the requests' SUDO_USER): he holds them as their requester.
    kept, kept_id = _classified(d, "kept.txt", "kept\n")
    gone, gone_id = _classified(d, "gone.txt", "gone\n")
    # alice reads one: per the record she holds it as a reader.
    assert d.site.open_as(2001, "kept.txt")
    sue, aud = d.as_role("sue"), d.as_role("aud")
    wait_for(lambda: kept_id in sue.get("/leavers?user=alice").text)
    alice = sue.get("/leavers?user=alice").text
    assert "reader" in alice and gone_id not in alice

    page = sue.get("/leavers?user=zhang")
    assert page.status == 200 and kept_id in page.text and gone_id in page.text
    assert page.text.count('class="item-held"') == 2
    refused = sue.post("/leavers/signoff", {"user": "zhang"})
    assert refused.status == 400 and "still held" in refused.text
    assert kept_id in refused.text and gone_id in refused.text
    assert aud.post("/leavers/signoff", {"user": "zhang"}).status == 403

    # One handed back.
    form = {"user": "zhang", "register_id": kept_id, "how": "returned"}
    assert sue.post("/leavers/close", form).status == 303
    refused = sue.post("/leavers/signoff", {"user": "zhang"})
    assert refused.status == 400 and gone_id in refused.text and kept_id not in refused.text

    # The other destroyed: a record that is no destruction is refused; the real one is
    # taken once the file is destroyed under its order.
    form = {"user": "zhang", "register_id": gone_id, "how": "destroyed", "record": "ws-01/1"}
    bad = sue.post("/leavers/close", form)
    assert bad.status == 400 and "not a recorded destruction" in bad.text
    d.site.write_policy(extra=f"p, alice, {d.site.root}/**, delete, allow\n")
    assert sue.post("/register/destroy", {"register_id": gone_id, "person": "alice"}).status == 303
    _approve_by_another(d, gone_id)
    order = d.entry(gone_id).order
    assert order is not None
    wait_for((d.state / ORDERS_DIR / f"{order.order_id}.pb").is_file)
    done = _destroy(d, gone, order.order_id, "alice")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: d.entry(gone_id).status == "destroyed")
    wait_for(lambda: 'class="item-destroyed"' in sue.get("/leavers?user=zhang").text)
    form["record"] = _destruction_ref(d)
    assert sue.post("/leavers/close", form).status == 303
    page = sue.get("/leavers?user=zhang").text
    assert form["record"] in page and 'class="item-held"' not in page

    assert sue.post("/leavers/signoff", {"user": "zhang"}).status == 303
    page = aud.get("/leavers?user=zhang").text
    assert 'id="leaver-signed"' in page and "sue" in page
    # Each closing is a step of the entry's history in the collector's chain.
    steps = [(h.step, h.actor, h.detail) for h in d.entry(kept_id).history]
    assert ("handover", "sue", "returned: leaver zhang") in steps
    assert kept.is_file()  # a return hands the file back; it does not touch it

    # The leaver review sheet lists the items with their handover state.
    pdf = d.site.base / "leaver.pdf"
    pdf.write_bytes(render(build_leaver(d.collector.store, "zhang"), "pdf", "zh"))
    text = subprocess.run(
        ["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True
    ).stdout
    flat = "".join(text.split())
    for shown in ("台账条目交还情况", kept_id, gone_id, "已交还", "已销毁", form["record"]):
        assert shown in flat, (shown, text)
    assert "仍持有" not in flat


def test_with_no_agent_running_the_command_destroys_and_spools_the_record(
    deployment: Deployment,  # noqa: F811
) -> None:
    d = deployment
    path, rid = _classified(d, "solo.txt", "alone\n")
    d.site.write_policy(extra=f"p, alice, {d.site.root}/**, delete, allow\n")
    sue = d.as_role("sue")
    assert sue.post("/register/destroy", {"register_id": rid, "person": "alice"}).status == 303
    _approve_by_another(d, rid)
    order = d.entry(rid).order
    assert order is not None
    wait_for((d.state / ORDERS_DIR / f"{order.order_id}.pb").is_file)
    shutil.copy(d.site.key_file, d.state / "label.key")  # where a host keeps its label key
    d.agent.stop()
    assert not socket_path(d.state).exists()

    done = _destroy(d, path, order.order_id, "alice", "--policies", str(d.site.policies))
    assert done.returncode == 0, done.stderr
    assert not path.exists() and f"register {rid}" in done.stdout
    # Recorded in the host's spool, sent to the collector when the agent runs again.
    spool = Spool(d.state / "spool.db")
    try:
        spooled = [events_pb2.Event.FromString(b) for _, b in spool.read_after(0, 100_000)]
    finally:
        spool.close()
    (change,) = [e.file_change for e in spooled if e.file_change.change == "destroyed"]
    assert (change.label_id, change.home) == (rid, str(path))
    assert any(e.label_order_result.order_id == order.order_id for e in spooled)
