"""Errors of the agent; each message says how to fix the problem."""

from __future__ import annotations


class AgentError(Exception):
    """Root of every error the agent raises on purpose."""


class SpoolError(AgentError):
    """The spool is missing, corrupt or cannot be written."""


class EnrollError(AgentError):
    """Enrolment with the collector failed."""


class ConfigError(AgentError):
    """A setting or file is wrong."""
