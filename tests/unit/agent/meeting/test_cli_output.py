"""``baomi-agent meeting check|sweep`` output: evidence names what the scans found
(Bluetooth, Wi-Fi and USB names chosen by whoever brought the device), so it is printed
through the one escaping rule (baomi.display), as text and as JSON."""

from __future__ import annotations

import json

import pytest

from agent.meeting.check import Item
from agent.meeting.cli import Header, Signed, _print

EVIDENCE = "found 'Recorder\u202eav.3pm\x1b[2J\x07\nfake line'"


def test_evidence_is_printed_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    items = [Item("C1", "fail", EVIDENCE)]
    _print(items, as_json=False, header=Header("A"), signed=Signed("h1", 7))
    out = capsys.readouterr().out
    assert "Recorder\\u202eav.3pm\\x1b[2J\\x07\\nfake line" in out
    assert not any(c in out for c in ("\u202e", "\x1b", "\x07"))
    assert len(out.splitlines()) == 4  # header, column names, one item, verdict
    _print(items, as_json=True, header=Header("A"), signed=Signed("h1", 7))
    out = capsys.readouterr().out
    assert not any(c in out for c in ("\u202e", "\x1b", "\x07"))
    assert json.loads(out)["items"][0]["evidence"] == EVIDENCE
