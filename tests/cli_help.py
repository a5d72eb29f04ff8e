"""Walking a program's command-line grammar, for the tests of its --help."""

from __future__ import annotations

import argparse
from collections.abc import Iterator


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub)command of ``parser`` by its path of names, the program itself first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


def undocumented(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """(command, option) of every option without help; asserts every command's help
    ends with the exit status."""
    missing = []
    for path, command in commands(parser):
        assert "exit status:" in (command.epilog or ""), path
        for action in command._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            if not action.help:
                missing.append((" ".join(path), action.dest))
    return missing


def help_of(parser: argparse.ArgumentParser, *path: str) -> str:
    """The --help text of one command, unwrapped (words separated by single spaces)."""
    command = next(c for p, c in commands(parser) if p == path)
    return " ".join(command.format_help().split())
