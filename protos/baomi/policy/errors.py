"""Errors of the decision side: a policy file that cannot be trusted, a bad label."""

from __future__ import annotations

from pathlib import Path

from baomi.errors import ConfigError


class PolicyError(ConfigError):
    """A policy file (model, rules, subjects, test table) is wrong.

    Carries where (``file``, ``line``; line 0 when the whole file is at fault) and why
    (``reason``, which says how to fix it). A policy set that raises this is never
    enforced: the caller keeps the last good one.
    """

    def __init__(self, file: str | Path, line: int, reason: str) -> None:
        self.file = str(file)
        self.line = line
        self.reason = reason
        where = f"{self.file}:{line}" if line > 0 else self.file
        super().__init__(f"{where}: {reason}")


class LabelError(ConfigError):
    """A classification label given by an operator is invalid or cannot be written."""
