"""The events pages: filters, hostile strings rendered inert, CSV export safe from
formula injection, the live feed over SSE, hosts and their drift and silence."""

from __future__ import annotations

import csv
import io
import json
import time
import urllib.request

import pytest
from baomi import chain
from baomi.v1 import events_pb2

from collector import cli
from collector.console import exports, feed
from collector.console.eventview import SEVERITY_BY_NAME
from tests.collector_harness import Host, batch, enroll_host, send_batches
from tests.integration.console.conftest import Console

XSS = "<img src=x onerror=alert(1)>"
FORMULAS = ['=HYPERLINK("http://evil","x")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"]


def _send(
    console: Console, host: Host, severity: int = events_pb2.SEVERITY_INFO, **kind: object
) -> None:
    events = host.events(1, **kind)
    events[0].severity = severity  # type: ignore[assignment]
    host.head = chain.event_hash(events[0])
    send_batches(host, console.running.address, [batch(events)])


def test_hostile_strings_render_inert_and_export_inert(console: Console) -> None:
    host = enroll_host(console.running, "ws-01")
    _send(
        console,
        host,
        device=events_pb2.Device(
            action="add", name=XSS, serial=XSS, vendor_id="0781", product_id="5567"
        ),
    )
    for path in FORMULAS:
        _send(
            console,
            host,
            file_access=events_pb2.FileAccess(path=path, action="read", user=f"{path}user"),
        )
    aud = console.as_role("auditor")
    page = aud.get("/events").text
    assert XSS not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    detail = aud.get("/events/ws-01/1").text
    assert XSS not in detail and "&lt;img src=x onerror=alert(1)&gt;" in detail
    resp = aud.get("/events/export.csv")
    assert resp.headers["content-type"].startswith("text/csv")
    assert "attachment" in resp.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(resp.body.decode("utf-8-sig"))))
    assert rows[0] == list(exports.COLUMNS)
    for row in rows[1:]:
        for cell in row:
            assert not cell.startswith(exports.FORMULA_START), row
    users = {row[5] for row in rows[1:]}
    for formula in FORMULAS:
        # A leading tab or CR is shown as an escape (baomi.display): no formula either.
        shown = formula.replace("\t", "\\t").replace("\r", "\\r")
        assert ("'" + formula if shown == formula else shown) + "user" in users
    assert any(XSS in row[7] for row in rows[1:])  # the text itself is kept, just inert


def test_filters(console: Console) -> None:
    a, b = enroll_host(console.running, "ws-01"), enroll_host(console.running, "ws-02")
    _send(
        console,
        a,
        events_pb2.SEVERITY_MEDIUM,
        file_access=events_pb2.FileAccess(
            path="/srv/secret/a/plan.docx", user="wang", action="read"
        ),
    )
    _send(
        console,
        a,
        file_access=events_pb2.FileAccess(path="/srv/secret/b/notes.txt", user="li", action="read"),
    )
    _send(
        console,
        b,
        events_pb2.SEVERITY_HIGH,
        network=events_pb2.Network(action="link_up", interface="wlan0", violation=True),
    )
    aud = console.as_role("auditor")

    def shown(query: str) -> set[str]:
        page = aud.get("/events?" + query).text
        return {
            line.split('href="/events/')[1].split('"')[0]
            for line in page.splitlines()
            if 'href="/events/ws-' in line
        }

    assert shown("host=ws-02") == {"ws-02/1"}
    assert shown("kind=file_access") == {"ws-01/1", "ws-01/2"}
    assert shown("severity=medium&host=ws-01") == {"ws-01/1"}
    assert shown("severity=high") == {"ws-02/1"}
    assert shown("user=li") == {"ws-01/2"}
    assert shown("path=plan") == {"ws-01/1"}
    assert shown("path=wang") == set()  # a user name is not a path
    assert shown("since=2000-01-01&until=2001-01-01") == set()
    assert aud.get("/events?kind=nonsense").status == 400
    assert aud.get("/events?since=yesterday").status == 400
    assert set(SEVERITY_BY_NAME) == {"info", "low", "medium", "high", "critical"}


def test_heartbeats_are_folded_out_unless_asked_for(console: Console) -> None:
    """One agent_status per host every half minute would bury the accesses an officer
    looks for: left out of the list, the live view and the export unless asked for."""
    host = enroll_host(console.running, "ws-01")
    for _ in range(3):
        _send(console, host, agent_status=events_pb2.AgentStatus(state="running"))
    _send(console, host, file_access=events_pb2.FileAccess(path="/srv/secret/x", action="read"))
    alarm = events_pb2.AgentStatus(state="spool_full")
    _send(console, host, events_pb2.SEVERITY_HIGH, agent_status=alarm)  # an alarm: listed
    aud = console.as_role("auditor")

    def shown(query: str) -> list[str]:
        page = aud.get("/events?" + query).text
        return sorted(
            line.split('href="/events/')[1].split('"')[0]
            for line in page.splitlines()
            if 'href="/events/ws-' in line
        )

    assert shown("") == ["ws-01/4", "ws-01/5"]
    assert shown("heartbeats=1") == ["ws-01/1", "ws-01/2", "ws-01/3", "ws-01/4", "ws-01/5"]
    assert shown("kind=agent_status") == ["ws-01/1", "ws-01/2", "ws-01/3", "ws-01/5"]
    page = aud.get("/events?heartbeats=1").text
    assert 'name="heartbeats" value="1" checked' in page
    assert "heartbeats=1" in page.split('id="export"')[1].split(">")[0]  # the export keeps it
    rows = list(csv.reader(io.StringIO(aud.get("/events/export.csv?host=ws-01").text)))
    assert [r[4] for r in rows[1:]] == ["agent_status", "file_access"]  # the alarm, the access


def test_cli_listing_folds_heartbeats_out_unless_asked_for(
    console: Console, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    host = enroll_host(console.running, "ws-01")
    _send(console, host, agent_status=events_pb2.AgentStatus(state="running"))
    _send(console, host, file_access=events_pb2.FileAccess(path="/srv/secret/x", action="read"))
    alarm = events_pb2.AgentStatus(state="spool_full")
    _send(console, host, events_pb2.SEVERITY_HIGH, agent_status=alarm)

    def kinds(*options: str) -> list[str]:
        assert cli.main(["events", "--store", store_url, "--host", "ws-01", "--json",
                         *options]) == 0  # fmt: skip
        return [next(k for k in d if k in ("agent_status", "file_access"))
                for d in map(json.loads, capsys.readouterr().out.splitlines())]  # fmt: skip

    assert kinds() == ["agent_status", "file_access"]  # the spool_full alarm stays
    assert kinds("--heartbeats") == ["agent_status", "file_access", "agent_status"]
    assert kinds("--kind", "agent_status") == ["agent_status", "agent_status"]


def test_paging_goes_back_in_time(console: Console) -> None:
    host = enroll_host(console.running, "ws-01")
    send_batches(host, console.running.address, [batch(host.events(150))])
    aud = console.as_role("auditor")
    first = aud.get("/events?host=ws-01").text
    older = first.split('<p><a href="')[-1].split('"')[0].replace("&amp;", "&")
    assert older.startswith("/events?") and "before=" in older
    second = aud.get(older).text
    assert 'ws-01/50"' in second and 'ws-01/51"' not in second
    assert 'ws-01/150"' in first and 'ws-01/51"' in first


def test_live_view_streams_new_events(console: Console) -> None:
    host = enroll_host(console.running, "ws-01")
    aud = console.as_role("auditor")
    req = urllib.request.Request(console.base + "/events/stream?kind=file_access")  # noqa: S310
    with aud.opener.open(req, timeout=10) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.readline().startswith(b"retry:")
        stream.readline()
        sent = time.monotonic()
        _send(console, host, agent_status=events_pb2.AgentStatus(state="running"))  # filtered out
        _send(console, host, file_access=events_pb2.FileAccess(path=XSS, action="read"))
        line = stream.readline()
        took = time.monotonic() - sent
    assert line.startswith(b"data: ")
    ev = json.loads(line[6:])
    assert ev["host"] == "ws-01" and ev["seq"] == 2 and ev["kind"] == "file_access"
    assert XSS in ev["summary"]  # JSON text; the page sets it as textContent
    assert took < 2.0


def test_a_host_whose_sensor_is_degraded_shows_as_degraded(console: Console) -> None:
    host = enroll_host(console.running, "ws-01")
    why = "writes rest on file modes and ACLs alone: this kernel has no pre-content events"
    _send(
        console,
        host,
        agent_status=events_pb2.AgentStatus(
            version="0.1.0",
            state="running",
            sensors=[
                events_pb2.SensorHealth(name="files", state="degraded", detail=why),
                events_pb2.SensorHealth(name="usb", state="ok", detail="listening"),
            ],
        ),
    )
    sam = console.as_role("sysadmin")
    deadline = time.monotonic() + 10
    while "state-degraded" not in (page := sam.get("/hosts").text):  # the feed is async
        assert time.monotonic() < deadline, "the hosts page never showed the host degraded"
        time.sleep(0.1)
    assert "在线（降级）" in page  # noqa: RUF001 - the console's own words
    assert f"files: {why}" in page and "usb: listening" not in page
    assert 'id="hosts-degraded">1<' in sam.get("/").text


def test_hosts_page_shows_drift_and_silence_raises_one_alert(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed, "SILENCE_SLACK_SECONDS", 0.0)
    host = enroll_host(console.running, "ws-01")
    current = console.running.collector.policy.current
    assert current is not None
    for state, policy in (("started", "old-version"), ("running", "old-version")):
        _send(
            console,
            host,
            agent_status=events_pb2.AgentStatus(
                version="0.1.0",
                state=state,
                policy_version=policy,
                sensors=[events_pb2.SensorHealth(name="files", state="ok")],
            ),
        )
        time.sleep(1.0)  # heartbeats about 1 s apart: the interval the feed learns
    sam = console.as_role("sysadmin")
    page = sam.get("/hosts").text
    assert 'id="host-ws-01"' in page and "未同步" in page  # drift: enforces old-version
    assert current.version in page
    # Quiet for longer than its heartbeat interval: one alert, not one per check.
    time.sleep(1.5)
    feed_ = console.running.collector.console.console.feed  # type: ignore[union-attr]
    # The console's own housekeeping (every 2 s) may find the silence first: either way
    # it is alerted once, and a second look finds nothing new.
    assert console.running.call(feed_.check_silence) in (["ws-01"], [])
    assert console.running.call(feed_.check_silence) == []

    def recorded() -> list[events_pb2.Event]:
        return [
            events_pb2.Event.FromString(r.body)
            for r in console.store.chain("_collector")
            if r.kind == "tamper"
        ]

    deadline = time.monotonic() + 10
    while not recorded() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2.5)  # another housekeeping round: still one alert
    alerts = recorded()
    assert [a.tamper.kind for a in alerts] == ["host_silent"]
    assert (
        alerts[0].tamper.subject_host == "ws-01" and alerts[0].severity == events_pb2.SEVERITY_HIGH
    )
    assert "state-silent" in sam.get("/hosts").text
    assert 'id="hosts-silent">1<' in sam.get("/").text
