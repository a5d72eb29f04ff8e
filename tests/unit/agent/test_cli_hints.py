"""Hints the agent's CLI prints are commands that run as written."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from agent.cli import build_parser

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


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def test_every_option_of_every_command_says_what_it_does_and_its_default() -> None:
    missing = []
    for path, parser in _commands(build_parser()):
        assert "exit status:" in (parser.epilog or ""), path
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            if not action.help:
                missing.append((" ".join(path), action.dest))
    assert missing == []
    run = next(c for path, c in _commands(build_parser()) if path == ("run",))
    help_text = " ".join(run.format_help().split())  # unwrapped
    assert "(default: 30.0)" in help_text  # --heartbeat
    assert "reads devices.rules and usb" in help_text  # (argparse wraps at the hyphen)
    assert "rtl_power" in help_text
