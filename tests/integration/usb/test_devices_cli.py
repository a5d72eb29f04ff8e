"""``baomi-agent devices list`` and ``generate-policy`` over a umockdev testbed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from baomi.devices.policy import DevicePolicy
from baomi.devices.rules import RuleSet

from agent.cli import main
from agent.sensors.usb import list_devices
from tests.cells import ZH, C, cell_at, use_locale
from tests.integration.usb.conftest import Policies, Testbed, asset, shared

pytestmark = pytest.mark.umockdev

# Anything a terminal acts on: C0 controls (ESC, CR, LF, BEL, ...), DEL, C1 controls
# (0x9b is CSI on its own), bidi overrides and isolates.
TERMINAL_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_list_shows_class_and_decision(
    testbed: Testbed, policies: Policies, capsys: pytest.CaptureFixture[str]
) -> None:
    testbed.add_file(shared("umockdev/sony-xperia-mini-pro.umockdev"))
    code, out = _run(capsys, "devices", "list", "--policies", str(policies.path))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["PORT", "ID", "AUTH", "DECISION", "CLASS", "NAME", "SERIAL", "RULE"]
    phone = next(line for line in lines if line.startswith("1-1.5.2.4 "))
    assert "0fce:0166" in phone
    assert " block " in phone
    assert "mtp,phone" in phone
    assert "MiniPro" in phone
    assert "baomi:recording-or-phone" in phone
    hub = next(line for line in lines if line.startswith("usb1 "))
    assert " allow " in hub and "hub" in hub


def test_list_speaks_the_locales_language_json_does_not(
    testbed: Testbed,
    policies: Policies,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    testbed.add_file(shared("umockdev/sony-xperia-mini-pro.umockdev"))
    listing = ("devices", "list", "--policies", str(policies.path))
    use_locale(monkeypatch, ZH)
    code, zh = _run(capsys, *listing)
    assert code == 0
    _, zh_json = _run(capsys, *listing, "--json")
    use_locale(monkeypatch, C)
    code, c = _run(capsys, *listing)
    assert code == 0
    _, c_json = _run(capsys, *listing, "--json")
    assert zh_json == c_json
    header = ["端口", "ID", "授权", "判定", "类别", "名称", "序列号", "规则"]
    lines = zh.splitlines()
    assert lines[0].split() == header
    phone = next(line for line in lines if line.startswith("1-1.5.2.4 "))
    hub = next(line for line in lines if line.startswith("usb1 "))
    assert " 阻断 " in phone and " 放行 " in hub
    assert " block " in next(line for line in c.splitlines() if line.startswith("1-1.5.2.4 "))
    assert not any(word in c for word in ("阻断", "放行", "端口"))
    # Each column starts at the header's cell in every row (the ID column: usb ids).
    rows = json.loads(c_json)
    for lines in (zh.splitlines(), c.splitlines()):
        for n, column in ((1, "id"), (4, "classes")):
            starts = {cell_at(lines[0], lines[0].split()[n])}
            for line, row in zip(lines[1:], rows, strict=True):
                shown = ",".join(row[column]) or "-" if column == "classes" else row[column]
                starts.add(cell_at(line, f" {shown[:8]}") + 1)
            assert len(starts) == 1, (column, starts, lines)


def test_list_escapes_attacker_strings(
    testbed: Testbed, policies: Policies, capsys: pytest.CaptureFixture[str]
) -> None:
    testbed.add_file(asset("attacker-strings.umockdev"))
    code, out = _run(capsys, "devices", "list", "--policies", str(policies.path))
    assert code == 0
    assert TERMINAL_CONTROL.search(out.replace("\n", "")) is None
    assert len(out.splitlines()) == 2  # header and the device: no injected line breaks
    row = out.splitlines()[1]
    assert "\\x1b[2J\\x1b[H\\x1b[31mPWNED" in row
    assert len(row) < 400  # 10 KB of name cut to a table cell

    code, out = _run(capsys, "devices", "list", "--json", "--policies", str(policies.path))
    assert code == 0
    assert out.isascii()
    assert TERMINAL_CONTROL.search(out.replace("\n", "")) is None
    (row_json,) = json.loads(out)
    name = row_json["name"]
    assert name.startswith("\x1b[2J\x1b[H\x1b[31mPWNED\x1b]0;owned\x07\r\nrm -rf /")
    assert '"quoted"' in name and "\u202e" in name and "\x9b" in name and "机密" in name
    assert len(name) == 256  # bounded: model.MAX_DEVICE_STRING
    assert row_json["decision"] == "block"
    assert "more than USB allows" in row_json["suspicious"]


def test_generate_policy_pins_present_devices(
    testbed: Testbed, policies: Policies, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Generated rules re-parse, match exactly the devices present, and leave out the
    recorders, phones and sticks that an allow rule would let in."""
    testbed.add_file(shared("usbguard/devices.umockdev"))
    out_file = tmp_path / "devices.rules"
    code, out = _run(
        capsys,
        "devices",
        "generate-policy",
        "--out",
        str(out_file),
        "--policies",
        str(policies.path),
    )
    assert code == 0
    assert "wrote rules for 6 device(s)" in out and "(1 left out)" in out
    text = out_file.read_text()
    rules = RuleSet.parse(text, path=str(out_file))
    assert len(rules) == 6
    assert '# left out: "5986:0706" at "1-8": video' in text
    assert 'hash "2y2qS3rcuMr1Ye5knWsbD8CGzPtrs+eiRR/haro7+Ng="' in text
    for observed in list_devices():
        match = rules.first_match(observed.device)
        if observed.device.port == "1-8":
            assert match is None
        else:
            assert match is not None and match.target == "allow", observed.device.port

    # Installed, it is honoured (and the camera is still blocked by the defaults).
    (policies.path / "devices.rules").write_text(text)
    policy = DevicePolicy.load(policies.path)
    for observed in list_devices():
        decision = policy.evaluate(observed.device)
        assert decision.target == ("block" if observed.device.port == "1-8" else "allow")

    # An existing file is not replaced without --force.
    assert main(["devices", "generate-policy", "--out", str(out_file)]) == 2


def test_generate_policy_to_stdout_includes_all_only_when_asked(
    testbed: Testbed, policies: Policies, capsys: pytest.CaptureFixture[str]
) -> None:
    testbed.add_file(asset("attacker-strings.umockdev"))
    code, out = _run(capsys, "devices", "generate-policy", "--policies", str(policies.path))
    assert code == 0
    assert RuleSet.parse(out).rules == ()
    assert "# left out: " in out
    assert out.isascii() and TERMINAL_CONTROL.search(out.replace("\n", "")) is None

    code, out = _run(
        capsys,
        "devices",
        "generate-policy",
        "--unsafe-include-all",
        "--policies",
        str(policies.path),
    )
    assert code == 0
    (rule,) = RuleSet.parse(out).rules
    assert out.isascii() and TERMINAL_CONTROL.search(out.replace("\n", "")) is None
    (observed,) = list_devices()
    assert rule.applies_to(observed.device) is True


def test_list_defaults_to_the_policy_the_agent_enforces(
    testbed: Testbed, policies: Policies, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stick allowed by the bundle in STATE/policy (as a console approval delivers it)
    is listed as allowed without --policies; an explicit --policies still wins."""
    testbed.add_file(shared("umockdev/sony-xperia-mini-pro.umockdev"))
    state = tmp_path / "state"
    (state / "policy").mkdir(parents=True)
    (state / "policy" / "devices.rules").write_text("allow id 0fce:0166\n")
    code = main(["--state-dir", str(state), "devices", "list"])
    captured = capsys.readouterr()
    assert code == 0
    assert f"device policy: {state / 'policy'}" in captured.err
    phone = next(line for line in captured.out.splitlines() if line.startswith("1-1.5.2.4 "))
    assert " allow " in phone
    code, out = _run(capsys, "--state-dir", str(state), "devices", "list", "--policies",
                     str(policies.path))  # fmt: skip
    assert code == 0
    phone = next(line for line in out.splitlines() if line.startswith("1-1.5.2.4 "))
    assert " block " in phone
