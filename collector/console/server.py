"""The console's HTTP server: uvicorn on the collector's own event loop.

The collector owns the process's signals, so uvicorn's signal handling is turned off;
``stop`` asks uvicorn to finish instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from collector.console import routes
from collector.console.app import Console, create_app
from collector.console.backend import Backend
from collector.errors import ConfigError

_logger = logging.getLogger(__name__)

HOUSEKEEPING_SECONDS = 2.0  # between checks for hosts gone silent
SHUTDOWN_SECONDS = 2  # open requests (live views) get this long when the collector stops
METRICS_TOKEN_MIN_CHARS = 20  # a guessable scrape token would open /metrics to anyone


@dataclass(frozen=True, kw_only=True)
class ConsoleConfig:
    """Where the console listens and whether it speaks TLS."""

    listen: str = "127.0.0.1:8080"
    cert: Path | None = None  # PEM certificate chain; with key, the console serves HTTPS
    key: Path | None = None
    metrics_token_file: Path | None = None  # bearer token of /metrics; without it, 404


def read_metrics_token(path: Path) -> str:
    """The scrape token in ``path`` (one line, surrounding whitespace ignored)."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the metrics token file {path}: {e}") from e
    if len(token) < METRICS_TOKEN_MIN_CHARS or not token.isascii() or not token.isprintable():
        raise ConfigError(
            f"the metrics token in {path} must be at least {METRICS_TOKEN_MIN_CHARS} printable "
            "ASCII characters (e.g. openssl rand -hex 32 > FILE)"
        )
    return token


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the collector owns SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Leave signals alone."""
        yield


def _bind(listen: str) -> socket.socket:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"console address {listen!r} is not HOST:PORT (e.g. 127.0.0.1:8080)")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {listen} for the console: {e.strerror}") from e
    sock.listen(128)
    sock.setblocking(False)
    return sock


class ConsoleServer:
    """The web console of one collector."""

    def __init__(self, backend: Backend, config: ConsoleConfig) -> None:
        if (config.cert is None) != (config.key is None):
            raise ConfigError("give both --console-cert and --console-key, or neither")
        self.config = config
        self.console = Console(backend, tls=config.cert is not None)
        if config.metrics_token_file is not None:
            self.console.metrics_token = read_metrics_token(config.metrics_token_file)
        self._server: _Server | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> int:
        """Listen and serve; return the port (useful with port 0)."""
        self.console.load_settings()
        await self.console.feed.start()
        sock = _bind(self.config.listen)
        config = uvicorn.Config(
            create_app(self.console, routes.ROUTES, routes.PUBLIC),
            log_level="warning",
            access_log=False,
            lifespan="off",
            proxy_headers=False,  # no proxy is trusted to say who the client is
            server_header=False,
            timeout_graceful_shutdown=SHUTDOWN_SECONDS,
            ssl_certfile=str(self.config.cert) if self.config.cert else None,
            ssl_keyfile=str(self.config.key) if self.config.key else None,
        )
        self._server = _Server(config)
        self._tasks = [
            asyncio.create_task(self._server.serve(sockets=[sock])),
            asyncio.create_task(self._housekeeping()),
        ]
        port = int(sock.getsockname()[1])
        scheme = "https" if self.console.tls else "http"
        _logger.info("console on %s://%s:%d/", scheme, sock.getsockname()[0], port)
        return port

    async def stop(self) -> None:
        """End live views, stop serving, deliver queued alerts."""
        await self.console.feed.stop()
        if self._server is not None:
            self._server.should_exit = True
        for task in self._tasks[1:]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.to_thread(self.console.alerts.close)
        self.console.executor.shutdown(wait=True, cancel_futures=True)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            try:
                await self.console.feed.check_silence()
            except Exception:
                _logger.exception("console housekeeping failed; retrying")
