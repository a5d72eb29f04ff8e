"""Fixtures of the meeting-room tests."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tests.integration.meeting.helpers import GOOD


@pytest.fixture
def http_cabinet() -> Iterator[tuple[str, dict[str, bytes]]]:
    """A cabinet's HTTP endpoint serving ``answer["body"]``; yields (url, answer)."""
    answer = {"body": json.dumps(GOOD).encode()}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(answer["body"])

        def log_message(self, *_args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/state", answer
    finally:
        server.shutdown()
        server.server_close()
