"""Baomi host agent: sensors, decisions, durable spool and the stream to the collector."""

import os

# Both programs fork only to exec (subprocess, the guardian): gRPC's fork handlers are
# not needed, and with them a fork while gRPC threads run can crash the parent
# (grpc/grpc#29044, #41455). Read when grpc is first imported, so set here, before.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

__version__ = "0.1.0"
