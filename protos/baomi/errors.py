"""Errors raised on purpose by Baomi's shared code; each message says how to fix it."""

from __future__ import annotations


class BaomiError(Exception):
    """Root of every error raised on purpose (the agent's AgentError is this class)."""


class ConfigError(BaomiError):
    """A setting or file is wrong."""
