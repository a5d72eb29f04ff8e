"""Running the CLIs in a given language, and measuring where text starts on a terminal.

The suite pins English messages for everything it starts (tests/conftest.py);
``locale_env`` and ``use_locale`` undo that for a test of one language.
"""

from __future__ import annotations

import os

import pytest
from baomi.clitext import cells

ZH, C = "zh_CN.UTF-8", "C"  # the two settings the CLI tests run under
_OVERRIDES = ("LC_ALL", "LC_MESSAGES")  # would win over LANG


def locale_env(lang: str) -> dict[str, str]:
    """This process's environment with ``LANG=lang`` deciding the messages."""
    env = {k: v for k, v in os.environ.items() if k not in _OVERRIDES}
    env["LANG"] = lang
    return env


def use_locale(monkeypatch: pytest.MonkeyPatch, lang: str) -> None:
    """``LANG=lang`` deciding the messages of CLIs run in this process."""
    for name in _OVERRIDES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANG", lang)


def cell_at(line: str, text: str) -> int:
    """The terminal cell (from 0) where ``text`` starts in ``line``."""
    index = line.find(text)
    assert index >= 0, f"{text!r} not in {line!r}"
    return cells(line[:index])
