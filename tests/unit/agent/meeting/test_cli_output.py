"""``baomi-agent meeting check|sweep`` output: evidence names what the scans found
(Bluetooth, Wi-Fi and USB names chosen by whoever brought the device), so it is printed
through the one escaping rule (baomi.display), as text and as JSON."""

from __future__ import annotations

import json

import pytest

from agent.meeting.check import Item
from agent.meeting.cli import Header, Signed, _print
from tests.cells import ZH, C, use_locale

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


def test_sweep_and_refusal_in_chinese(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    items = [Item("C13", "fail", "DOC2 not returned", mandatory=True)]
    header = Header("A", "m1", "张三")
    use_locale(monkeypatch, ZH)
    _print(items, as_json=False, header=header, signed=Signed("h1", 7))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "会议 m1（会议室 A）会后清场，检查人 张三"  # noqa: RUF001
    assert lines[2].split()[:4] == ["C13", "未通过", "*", "会后清场"]
    assert lines[3] == "不准召开：C13 未通过（* 为必查项）；已由 h1 签名，暂存为事件 7"  # noqa: RUF001
    _print(items, as_json=True, header=header, signed=Signed("h1", 7))
    chinese = json.loads(capsys.readouterr().out)
    use_locale(monkeypatch, C)
    _print(items, as_json=False, header=header, signed=Signed("h1", 7))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "sweep of meeting m1 in A by 张三"
    assert lines[3] == "NOT CLEARED: C13 fail (* mandatory); signed by h1, spooled as event 7"
    _print(items, as_json=True, header=header, signed=Signed("h1", 7))
    assert json.loads(capsys.readouterr().out) == chinese
    assert chinese["verdict"] == "NOT CLEARED: C13 fail"
