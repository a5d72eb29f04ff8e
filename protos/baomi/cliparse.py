"""The argument parser both command-line programs use: every option's help shows its
default, and every command's help ends with what its exit status means."""

from __future__ import annotations

import argparse
from typing import Any

EXIT_STATUS = """\
exit status:
  0  done (for a check: passed)
  1  the command ran and found a problem (a check failed, a mismatch, damage)
  2  bad usage, configuration or input; the message says what to fix"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Help text as written, plus "(default: X)" for options whose default means
    something (not None, False, an empty list, or one the help already states)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and default not in (None, False, [], argparse.SUPPRESS)
            and "default" not in text
        ):
            text += " (default: %(default)s)"
        return text


class HelpfulParser(argparse.ArgumentParser):
    """ArgumentParser with defaults and the exit status in every (sub)command's help;
    subcommands inherit it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        kwargs.setdefault("epilog", EXIT_STATUS)
        super().__init__(*args, **kwargs)
