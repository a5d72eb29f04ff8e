"""Every option of every ``baomi-collector`` command says what it does, its default and
what the exit status means."""

from __future__ import annotations

from collector.cli import build_parser
from tests.cli_help import help_of, undocumented


def test_every_option_of_every_command_says_what_it_does() -> None:
    assert undocumented(build_parser()) == []
    assert "(default: 100)" in help_of(build_parser(), "events")  # --limit
    assert "(default: var/pki)" in help_of(build_parser(), "serve")
