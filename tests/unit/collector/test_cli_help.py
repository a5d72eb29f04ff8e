"""Every option of every ``baomi-collector`` command says what it does, its default and
what the exit status means."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from collector.cli import build_parser


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def test_every_option_of_every_command_says_what_it_does() -> None:
    missing = []
    for path, parser in _commands(build_parser()):
        assert "exit status:" in (parser.epilog or ""), path
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            if not action.help:
                missing.append((" ".join(path), action.dest))
    assert missing == []
    events = next(c for path, c in _commands(build_parser()) if path == ("events",))
    text = " ".join(events.format_help().split())
    assert "(default: 100)" in text  # --limit
    serve = next(c for path, c in _commands(build_parser()) if path == ("serve",))
    assert "(default: var/pki)" in " ".join(serve.format_help().split())
