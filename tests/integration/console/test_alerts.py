"""Alerts out to a webhook (JSON) and syslog (RFC 5424, UDP and TCP), metadata only;
Prometheus metrics behind a scrape token."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from baomi import chain
from baomi.v1 import events_pb2

from collector.console import alerts
from collector.console.alerts import AlertSender
from collector.console.eventview import view
from collector.ingest import to_row
from tests.collector_harness import Host, batch, enroll_host, send_batches
from tests.integration.console.conftest import METRICS_TOKEN, Console
from tests.integration.console.web import Resp

SECRET_PATH = "/srv/机密/2027-merger-plan.docx"  # noqa: S105 - a path, not a password
METADATA = {"source", "host_id", "seq", "kind", "severity", "time", "hash", "console_path"}

# RFC 5424: <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] BOM MSG
SYSLOG_RE = re.compile(
    rb"^<(?P<pri>\d+)>1 (?P<ts>\S+Z) (?P<host>\S+) baomi-collector (?P<pid>\d+) (?P<msgid>\S+) "
    rb'\[baomi@32473 host="(?P<h>[^"]*)" seq="(?P<seq>\d+)" kind="(?P<kind>[^"]*)" '
    rb'severity="(?P<sev>[a-z]+)" hash="(?P<hash>[0-9a-f]{64})"\] \xef\xbb\xbf(?P<msg>.*)$',
    re.S,
)


class Hook:
    """A webhook receiver: answers 500 to the first ``fail`` requests, then 200."""

    def __init__(self, fail: int = 0, block: threading.Event | None = None) -> None:
        self.bodies: list[dict[str, object]] = []
        self.raw: list[bytes] = []
        self.attempts = 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.attempts += 1
                if block is not None:
                    block.wait(10)
                if hook.attempts <= fail:
                    self.send_response(500)
                else:
                    hook.raw.append(body)
                    hook.bodies.append(json.loads(body))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=s3cret"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(10)
    yield s
    s.close()


def _send(console: Console, host: Host, severity: int, **kind: object) -> None:
    events = host.events(1, **kind)
    events[0].severity = severity  # type: ignore[assignment]
    host.head = chain.event_hash(events[0])
    send_batches(host, console.running.address, [batch(events)])


def _scrape(console: Console, token: str | None = METRICS_TOKEN) -> Resp:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else None
    return console.client().get("/metrics", headers=headers)


def test_high_severity_events_go_to_webhook_and_syslog(
    scraped_console: Console, udp: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    console = scraped_console
    monkeypatch.setattr(alerts, "BACKOFF_SECONDS", 0.05)
    hook = Hook(fail=1)  # the first attempt fails: delivered on the retry
    try:
        sam = console.as_role("sysadmin")
        port = udp.getsockname()[1]
        resp = sam.post(
            "/settings",
            {
                "webhooks": hook.url,
                "syslog": f"udp://127.0.0.1:{port}",
                "timezone": "Asia/Shanghai",
            },
        )
        assert resp.status == 200 and 'id="saved"' in resp.text
        settings_audit = [
            e.console_action
            for e in console.audit()
            if e.console_action.action == "settings_change"
        ]
        assert "s3cret" not in settings_audit[0].detail  # the URL's secret is not logged
        host = enroll_host(console.running, "ws-01")
        _send(
            console, host, events_pb2.SEVERITY_INFO, network=events_pb2.Network(action="link_new")
        )
        # A HIGH event whose content the system administrator may not read (三员分立).
        _send(
            console,
            host,
            events_pb2.SEVERITY_HIGH,
            file_access=events_pb2.FileAccess(
                path=SECRET_PATH, action="read", user="zhang", executable="/usr/bin/wps"
            ),
        )
        data, _ = udp.recvfrom(65536)
        m = SYSLOG_RE.match(data)
        assert m, data
        assert int(m["pri"]) == 13 * 8 + 3  # log audit, error
        assert (m["h"], m["seq"], m["kind"], m["sev"]) == (b"ws-01", b"2", b"file_access", b"high")
        doc = json.loads(m["msg"])
        assert set(doc) == METADATA and doc["console_path"] == "/events/ws-01/2"
        deadline = time.monotonic() + 10
        while not hook.bodies and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(hook.bodies) == 1 and hook.attempts == 2
        body = hook.bodies[0]
        assert set(body) == METADATA
        assert (body["host_id"], body["seq"], body["kind"], body["severity"]) == (
            "ws-01",
            2,
            "file_access",
            "high",
        )
        assert str(body["time"]).startswith("20") and body["console_path"] == "/events/ws-01/2"
        for sent in (hook.raw[0].decode(), data.decode()):
            for content in (SECRET_PATH, "机密", "merger", "zhang", "wps"):
                assert content not in sent, (content, sent)
        # Only the high event went out (the info one did not).
        udp.settimeout(0.5)
        with pytest.raises(TimeoutError):
            udp.recvfrom(65536)
        assert "baomi_alerts_sent_total 2" in _scrape(console).text
    finally:
        hook.close()


def _event_view(severity: int = events_pb2.SEVERITY_CRITICAL, detail: str = "x") -> object:
    ev = events_pb2.Event(
        host_id="ws-01",
        seq=7,
        prev_hash=b"\0" * 32,
        severity=severity,  # type: ignore[arg-type]
        tamper=events_pb2.Tamper(kind="chain_break", detail=detail),
    )
    ev.time.FromNanoseconds(time.time_ns())
    return view(to_row(ev, "tamper", 0))


def test_syslog_over_tcp_uses_octet_counting() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)
    sender = AlertSender(hostname="collector one")  # a space is not allowed in HOSTNAME
    try:
        sender.configure([], f"tcp://127.0.0.1:{server.getsockname()[1]}")
        detail = 'multi\nline "quoted" ] detail'
        sender.offer(_event_view(detail=detail))  # type: ignore[arg-type]
        sender.offer(_event_view())  # type: ignore[arg-type]
        conn, _ = server.accept()
        conn.settimeout(10)
        data = b""
        while data.count(b"baomi-collector") < 2:
            data += conn.recv(65536)
        length, rest = data.split(b" ", 1)
        first = rest[: int(length)]
        m = SYSLOG_RE.match(first)
        assert m and m["host"] == b"collectorone" and int(m["pri"]) == 13 * 8 + 2
        assert json.loads(m["msg"])["kind"] == "tamper" and detail not in data.decode()
        conn.close()
    finally:
        sender.close()
        server.close()


def test_alert_queue_is_bounded_and_counts_what_it_drops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(alerts, "QUEUE_SIZE", 2)
    release = threading.Event()
    hook = Hook(block=release)
    sender = AlertSender()
    try:
        sender.configure([hook.url], None)
        for _ in range(10):
            sender.offer(_event_view())  # type: ignore[arg-type]
        # One is being delivered (held by the receiver), two wait, the rest are dropped.
        assert sender.stats.dropped >= 7
        sender.offer(_event_view(events_pb2.SEVERITY_MEDIUM))  # type: ignore[arg-type]
        assert sender.stats.queued + sender.stats.dropped == 10  # medium: not an alert
    finally:
        release.set()
        sender.close()
        hook.close()
    assert len(hook.bodies) == sender.stats.queued


def test_bad_alert_targets_are_refused(console: Console) -> None:
    sam = console.as_role("sysadmin")
    for form in (
        {"webhooks": "file:///etc/passwd", "syslog": "", "timezone": ""},
        {"webhooks": "", "syslog": "udp://nohost", "timezone": ""},
        {"webhooks": "", "syslog": "", "timezone": "Mars/Olympus"},
    ):
        assert sam.post("/settings", form).status == 400
    assert console.store.settings().get("webhooks", "") == ""


def test_without_a_scrape_token_there_are_no_metrics(console: Console) -> None:
    for token in (None, METRICS_TOKEN):
        resp = _scrape(console, token)
        assert resp.status == 404 and "baomi_" not in resp.text


def test_metrics_need_the_scrape_token(scraped_console: Console) -> None:
    for token in (None, "", "wrong", METRICS_TOKEN + "x", METRICS_TOKEN[:-1]):
        resp = _scrape(scraped_console, token)
        assert resp.status == 401, token
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert "baomi_" not in resp.text
    aud = scraped_console.as_role("auditor")  # a console login is not a scrape token
    assert aud.get("/metrics").status == 401
    assert _scrape(scraped_console).status == 200


def test_metrics_text(scraped_console: Console) -> None:
    console = scraped_console
    host = enroll_host(console.running, "ws-01")
    send_batches(host, console.running.address, [batch(host.events(25))])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        resp = _scrape(console)
        if 'baomi_stream_lag_seconds{host="ws-01"}' in resp.text and (
            "baomi_agents_connected 0" in resp.text
        ):
            break
        time.sleep(0.1)
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in resp.text.splitlines()
        if line and not line.startswith("#")
    }
    assert values["baomi_ingest_events_total"] >= 25
    assert values["baomi_ingest_batches_total"] >= 1
    assert values["baomi_agents_connected"] == 0  # the stream has ended
    assert values['baomi_stream_lag_seconds{host="ws-01"}'] >= 0
    assert "# TYPE baomi_ingest_events_total counter" in resp.text
    assert "# TYPE baomi_agents_connected gauge" in resp.text
