"""The collector's web console for security staff, with three-role separation (三员分立).

``ConsoleServer`` runs it inside the collector process; :mod:`collector.console.pages`
holds the route table with the roles allowed on each page.
"""

from __future__ import annotations

from collector.console.server import ConsoleConfig, ConsoleServer

__all__ = ["ConsoleConfig", "ConsoleServer"]
