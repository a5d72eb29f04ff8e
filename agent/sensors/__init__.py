"""Sensors: each watches one part of the machine and hands events to the agent core.

The core knows sensors only through ``base.Sensor`` and the ``REGISTRY`` table below;
it never imports fanotify, pyudev or pyroute2 itself.
"""

from __future__ import annotations

from agent.sensors.base import REGISTRY, EventSink, Health, Sensor

__all__ = ["REGISTRY", "EventSink", "Health", "Sensor"]
