"""The load balancer's health port (collector.health) over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from typing import Any

import pytest

from collector import health
from collector.health import HealthServer


class ProbeStore:
    """The one store method the probe uses, answering as a real backend would."""

    def __init__(self) -> None:
        self.error: Exception | None = None
        self.delay = 0.0

    def head(self, host_id: str) -> tuple[int, bytes] | None:
        time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return None


async def _get(port: int, request: bytes) -> tuple[int, dict[str, Any]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _probe(store: ProbeStore, serving: bool, request: bytes) -> tuple[int, dict[str, Any]]:
    async def go() -> tuple[int, dict[str, Any]]:
        server = HealthServer(store, lambda: serving)  # type: ignore[arg-type] - a store double
        port = await server.start("127.0.0.1", 0)
        try:
            return await _get(port, request)
        finally:
            await server.stop()

    return asyncio.run(go())


GET = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


def test_serving_with_a_store_that_answers_is_200() -> None:
    assert _probe(ProbeStore(), True, GET) == (200, {"status": "serving"})


def test_not_serving_is_503() -> None:
    status, doc = _probe(ProbeStore(), False, GET)
    assert status == 503
    assert doc["reason"] == "not serving (starting or stopping)"


def test_a_store_that_fails_is_503_with_its_error() -> None:
    store = ProbeStore()
    store.error = sqlite3.OperationalError("unable to open database file")
    status, doc = _probe(store, True, GET)
    assert status == 503
    assert "OperationalError: unable to open database file" in doc["reason"]


def test_a_store_that_hangs_is_503(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "STORE_TIMEOUT_S", 0.1)
    store = ProbeStore()
    store.delay = 0.5
    status, doc = _probe(store, True, GET)
    assert status == 503
    assert "did not answer within 0.1 s" in doc["reason"]


def test_another_path_is_404() -> None:
    status, _ = _probe(ProbeStore(), True, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert status == 404
