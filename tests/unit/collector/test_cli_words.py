"""The command lines' Chinese words are the console's and the reports' (baomi.clitext
copies them: the agent does not import collector code)."""

from __future__ import annotations

import pytest
from baomi.clitext import MESSAGES

from collector.console.i18n import MESSAGES as CONSOLE
from collector.reports import text as reports

SEVERITIES = ("info", "low", "medium", "high", "critical", "unspecified")
KINDS = (
    "file_access",
    "file_change",
    "device",
    "network",
    "process",
    "meeting_check",
    "agent_status",
    "policy_applied",
    "tamper",
    "console_action",
)
#: clitext key -> the console's key for the same word
SAME_AS_CONSOLE = {
    "meeting.cleared": "cleared",
    "meeting.not_cleared": "not_cleared",
    "meeting.col.result": "result",
    "devices.decision.allow": "decision_allow",
    "devices.decision.block": "decision_block",
    "devices.decision.reject": "decision_reject",
    "devices.col.name": "device_name",
    "devices.col.class": "device_class",
    "devices.col.serial": "serial",
    "events.col.time": "time",
    "events.col.host": "host",
    "events.col.severity": "severity",
    "events.col.kind": "kind",
    **{f"events.severity.{s}": f"severity_{s}" for s in SEVERITIES},
    **{f"events.kind.{k}": f"kind_{k}" for k in KINDS},
}
#: clitext key -> the reports' key for the same word
SAME_AS_REPORTS = {
    "explain.allow": "col.allowed",
    "explain.deny": "col.denied",
    "meeting.result.unknown": "col.unknown_count",
    "meeting.result.fail": "verify.failed",
    "meeting.result.pass": "verify.ok",
}


@pytest.mark.parametrize(("ours", "theirs"), sorted(SAME_AS_CONSOLE.items()))
def test_chinese_words_are_the_consoles(ours: str, theirs: str) -> None:
    assert MESSAGES["zh"][ours] == CONSOLE["zh"][theirs]


@pytest.mark.parametrize(("ours", "theirs"), sorted(SAME_AS_REPORTS.items()))
def test_chinese_words_are_the_reports(ours: str, theirs: str) -> None:
    assert MESSAGES["zh"][ours] == reports.translator("zh")(theirs)
