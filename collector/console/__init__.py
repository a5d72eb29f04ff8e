"""The collector's web console for security staff, with three-role separation (三员分立).

``ConsoleServer`` runs it inside the collector process over a :class:`Backend`, the parts
of the collector it uses; :mod:`collector.console.routes` holds the route table with the
roles allowed on each page, and one module of pages per task.
"""

from __future__ import annotations

from collector.console.backend import Backend
from collector.console.server import ConsoleConfig, ConsoleServer

__all__ = ["Backend", "ConsoleConfig", "ConsoleServer"]
