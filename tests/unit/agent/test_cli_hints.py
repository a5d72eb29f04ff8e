"""Hints the agent's CLI prints are commands that run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from agent.cli import build_parser
from tests.cli_help import help_of, undocumented

REPO = Path(__file__).resolve().parents[3]


def _agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_the_not_enrolled_hint_is_a_command_the_cli_accepts(tmp_path: Path) -> None:
    state = tmp_path / "state"
    r = _agent("--state-dir", str(state), "run")
    assert r.returncode == 2
    hint = re.search(r"run '(baomi-agent [^']+)'", r.stderr)
    assert hint is not None, r.stderr
    words = hint.group(1).split()[1:]
    assert words[:2] == ["--state-dir", str(state)]
    # The placeholders filled in, the command parses: it fails on the unreachable
    # collector or the missing CA file, never on its own arguments.
    filled = [
        {"HOST:PORT": "127.0.0.1:9", "TOKEN": "t", "CA.pem": str(tmp_path / "ca.pem")}.get(w, w)
        for w in words
    ]
    r = _agent(*filled)
    assert r.returncode != 0
    assert "usage:" not in r.stderr and "unrecognized" not in r.stderr, r.stderr


def test_every_option_of_every_command_says_what_it_does_and_its_default() -> None:
    assert undocumented(build_parser()) == []
    help_text = help_of(build_parser(), "run")
    assert "(default: 30.0)" in help_text  # --heartbeat
    assert "reads devices.rules and usb" in help_text  # (argparse wraps at the hyphen)
    assert "rtl_power" in help_text
