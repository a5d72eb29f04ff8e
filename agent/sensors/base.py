"""The interface every sensor implements, and the registry of sensors by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # not at run time: the guardian imports this package and needs no protobuf
    from baomi.v1 import events_pb2

#: How a sensor hands an event to the core. Thread-safe; the event is spooled
#: (durably chained) before the call returns.
EventSink = Callable[["events_pb2.Event"], None]


@dataclass(frozen=True)
class Health:
    """A sensor's state as the collector sees it in heartbeats."""

    state: str  # ok, degraded, disabled, failed
    detail: str = ""


class Sensor(Protocol):
    """Start, stop, health; events go out through the sink given at construction."""

    name: str

    def start(self) -> None:
        """Begin watching (typically in a thread of its own). Must not block."""

    def stop(self) -> None:
        """Stop watching and close every handle."""

    def health(self) -> Health:
        """Current state, for heartbeats."""


@runtime_checkable
class PolicyAware(Protocol):
    """A sensor that enforces part of the policy bundle."""

    def apply_policy(self, directory: Path) -> None:
        """Load the policy files in ``directory``; raise AgentError to refuse them."""


SensorFactory = Callable[[dict[str, Any], EventSink], Sensor]
