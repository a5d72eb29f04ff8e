"""A small plain-HTTP health port for load balancers (``serve --health-port``).

HAProxy in TCP mode passes the agents' TLS through to the collectors untouched (mTLS
ends at the collector, so the host identity still comes from the client certificate);
it cannot speak gRPC health over TLS itself, so it asks this port instead. ``GET
/health`` answers 200 while the collector serves and its store answers a query within
``STORE_TIMEOUT_S``, else 503 with the reason; anything else is 404. It says nothing an
unauthenticated caller could use, so it needs no TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

from collector.store import Store

_logger = logging.getLogger(__name__)

STORE_TIMEOUT_S = 2.0  # seconds the store may take to answer before we say unavailable
REQUEST_TIMEOUT_S = 5.0  # seconds a client may take to send its request line and headers
MAX_REQUEST_BYTES = 8192  # request line and headers, at most
PROBE_HOST = "_health"  # a host id no certificate can carry: the probe reads one row


class HealthServer:
    """``GET /health`` on a plain TCP port: 200 serving, 503 not."""

    def __init__(self, store: Store, serving: Callable[[], bool]) -> None:
        self._store = store
        self._serving = serving  # False while starting and once stopping
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: any free port); the port bound."""
        self._server = await asyncio.start_server(self._handle, host, port)
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def problem(self) -> str | None:
        """Why this collector should not get agents now, or None."""
        if not self._serving():
            return "not serving (starting or stopping)"
        try:
            await asyncio.wait_for(asyncio.to_thread(self._store.head, PROBE_HOST), STORE_TIMEOUT_S)
        except TimeoutError:
            return f"the store did not answer within {STORE_TIMEOUT_S:g} s"
        except Exception as e:  # noqa: BLE001 - whatever the backend raised, we are down
            return f"the store does not answer: {type(e).__name__}: {e}"
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            if len(head) > MAX_REQUEST_BYTES:
                return
            method, _, rest = head.decode("latin-1").partition(" ")
            path = rest.partition(" ")[0]
            if method in ("GET", "HEAD") and path == "/health":
                why = await self.problem()
                status = "200 OK" if why is None else "503 Service Unavailable"
                doc = {"status": "serving"} if why is None else {"status": "down", "reason": why}
                if why is not None:
                    _logger.warning("health: %s", why)
            else:
                status, doc = "404 Not Found", {"status": "unknown", "reason": "GET /health"}
            body = json.dumps(doc).encode() + b"\n"
            writer.write(
                f"HTTP/1.0 {status}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + (body if method != "HEAD" else b"")
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a probe that hung up or never finished: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
