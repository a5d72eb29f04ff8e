"""Baomi host agent: sensors, decisions, durable spool and the stream to the collector."""

__version__ = "0.1.0"
