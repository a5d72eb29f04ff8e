"""Errors of the web console."""

from __future__ import annotations

from collector.errors import CollectorError


class ConsoleError(CollectorError):
    """A console request or command that cannot be carried out; the message says why."""
