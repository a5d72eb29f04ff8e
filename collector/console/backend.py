"""What the console uses of the collector it runs in, handed to it by the collector.

The console never sees the gRPC server: :mod:`collector.server` builds a
:class:`Backend` from its parts and passes it in, so the console's modules import
nothing of the server and a test can serve the console over parts of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from collector.ingest import CollectorChain, Ingest
from collector.policy import PolicyService
from collector.register import RegisterService
from collector.store.base import Store


@dataclass(frozen=True, kw_only=True)
class Backend:
    """The collector's parts the console's pages use."""

    store: Store
    ingest: Ingest  # chain heads for the live feed; counters for /metrics
    policy: PolicyService  # the bundle in force; publishing a new one to every agent
    verify_key: Path  # signing.pub: verifying the record on the audit page and in reports
    witness: Path | None  # the witness file the record is checked against, if kept
    policies_dir: Path | None  # the policy directory an inspection report compares
    register: RegisterService | None = None  # the classification register (定密台账)

    @property
    def chain(self) -> CollectorChain:
        """The collector's own chain, where console actions and alerts are recorded."""
        return self.ingest.alerts
