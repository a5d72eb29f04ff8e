"""Errors of the collector; each message says how to fix the problem."""

from __future__ import annotations


class CollectorError(Exception):
    """Root of every error the collector raises on purpose."""


class ConfigError(CollectorError):
    """A setting, file or command-line value is wrong."""


class StoreError(CollectorError):
    """The store could not be opened or written."""


class EnrollmentError(CollectorError):
    """An enrolment token is unknown, used or expired."""
