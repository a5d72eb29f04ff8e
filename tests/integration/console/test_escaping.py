"""Attacker-chosen strings (a USB name or serial, a file path) with a right-to-left
override, terminal escapes, a newline and BEL: shown as visible escapes in the console,
its CSV export and ``baomi-collector events`` (baomi.display; issue 13)."""

from __future__ import annotations

import csv
import io
import json
import urllib.parse

import pytest
from baomi import chain
from baomi.v1 import events_pb2

from collector import cli
from tests.collector_harness import Host, batch, enroll_host, send_batches
from tests.integration.console.conftest import Console

NAME = "Backup\u202egnp.exe"  # reads as "Backup…exe.png" when shown raw
SERIAL = "SN\x1b[2J\x1b[31m01\n\x07"
PATH = "/home/wang/\u2067report\u2069\x1b]0;owned\x07.docx"
RAW = ("\u202e", "\u2067", "\u2069", "\x1b", "\x07")


def shown(text: str) -> str:
    """What the one rule must make of ``text`` (written out here, not computed by it)."""
    return {
        NAME: "Backup\\u202egnp.exe",
        SERIAL: "SN\\x1b[2J\\x1b[31m01\\n\\x07",
        PATH: "/home/wang/\\u2067report\\u2069\\x1b]0;owned\\x07.docx",
    }[text]


def _send(console: Console, host: Host, **kind: object) -> None:
    events = host.events(1, **kind)
    events[0].severity = events_pb2.SEVERITY_MEDIUM
    host.head = chain.event_hash(events[0])
    send_batches(host, console.running.address, [batch(events)])


@pytest.fixture
def hostile(console: Console) -> Console:
    host = enroll_host(console.running, "ws-01")
    device = events_pb2.Device(
        action="add", name=NAME, serial=SERIAL, vendor_id="0781", product_id="5567"
    )
    _send(console, host, device=device)
    _send(console, host, file_access=events_pb2.FileAccess(path=PATH, action="read", user="wang"))
    return console


def _no_raw(text: str) -> None:
    for char in RAW:
        assert char not in text, f"raw U+{ord(char):04X} in the output"


def test_console_pages_show_escapes(hostile: Console) -> None:
    sec, aud = hostile.as_role("secadmin"), hostile.as_role("auditor")
    devices = sec.get("/devices").text
    assert shown(NAME) in devices and shown(SERIAL) in devices
    _no_raw(devices)
    for path in ("/events", "/events/ws-01/1", "/events/ws-01/2"):
        page = aud.get(path).text
        _no_raw(page)
    assert shown(NAME) in aud.get("/events").text
    detail = aud.get("/events/ws-01/2").text
    assert shown(PATH) in detail  # the path as the event's JSON holds it
    assert "/home/wang/\\u2067report\\u2069" in detail


def test_csv_export_shows_escapes(hostile: Console) -> None:
    body = hostile.as_role("auditor").get("/events/export.csv").body.decode("utf-8-sig")
    _no_raw(body)
    rows = list(csv.DictReader(io.StringIO(body)))
    assert shown(PATH) in {r["paths"] for r in rows}
    assert any(shown(NAME) in r["summary"] for r in rows)


def test_cli_listing_shows_escapes(
    hostile: Console, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["events", "--store", store_url, "--kind", "device"]) == 0
    out = capsys.readouterr().out
    _no_raw(out)
    assert "Backup\\u202egnp.exe" in out and "SN\\u001b[2J" in out
    assert cli.main(["events", "--store", store_url, "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    _no_raw("\n".join(lines))
    docs = [json.loads(line) for line in lines]  # still JSON, the same values
    assert {d.get("device", {}).get("name") for d in docs} >= {NAME}
    assert {d.get("file_access", {}).get("path") for d in docs} >= {PATH}


def test_typed_backslashes_survive_a_round_trip_through_a_form(hostile: Console) -> None:
    """What a user typed comes back as typed in the form's field (not doubled), so
    saving a finding again, or searching again, does not change it."""
    aud, sec = hostile.as_role("auditor"), hostile.as_role("secadmin")
    page = aud.get("/events?path=" + urllib.parse.quote("C:\\temp\\x")).text
    assert 'name="path" value="C:\\temp\\x"' in page
    note = "copied from D:\\share\\plan.docx"
    resp = sec.post("/findings/new", {"host": "ws-01", "seq": "1", "note": note, "owner": "li"})
    assert resp.status in (200, 303), resp.text
    page = sec.get("/findings").text
    assert f'name="note" value="{note}"' in page
