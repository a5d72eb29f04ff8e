"""Baomi collector: gRPC ingest, tamper-evident store, audit and CLI."""

__version__ = "0.1.0"
