"""Errors of the agent; each message says how to fix the problem.

The policy language the agent shares with the collector (``baomi``) raises
``baomi.errors.ConfigError``; the agent's own errors share its root, so one
``except AgentError`` catches both.
"""

from __future__ import annotations

from baomi.errors import BaomiError, ConfigError

AgentError = BaomiError  # the root of every error the agent raises on purpose

__all__ = ["AgentError", "ConfigError", "EnrollError", "SpoolError"]


class SpoolError(AgentError):
    """The spool is missing, corrupt or cannot be written."""


class EnrollError(AgentError):
    """Enrolment with the collector failed."""
