"""Alerts out: high-severity events to webhooks (JSON) and syslog (RFC 5424), for a SIEM.

An alert carries metadata only (host, seq, kind, severity, time, a console link): the
targets are the system administrator's, and the content of events is not theirs to read.

Delivery never holds up ingest or the console: events go into a bounded queue that one
worker thread drains. When the queue is full an alert is dropped and counted (the event
itself is safe in the record); a webhook that fails is retried a few times with backoff.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import queue
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from baomi.v1 import events_pb2

from collector.console.errors import ConsoleError
from collector.console.eventview import EventView

_logger = logging.getLogger(__name__)

QUEUE_SIZE = 1000  # alerts waiting for delivery; more are dropped and counted
WEBHOOK_TIMEOUT_SECONDS = 5.0
WEBHOOK_ATTEMPTS = 3  # per alert and webhook
BACKOFF_SECONDS = 0.5  # doubled after each failed attempt
SYSLOG_TIMEOUT_SECONDS = 5.0
SYSLOG_MAX_BYTES = 8192  # a UDP datagram's message is cut to this (RFC 5426 asks for >= 2048)
ALERT_SEVERITY = events_pb2.SEVERITY_HIGH  # this and above go out
APP_NAME = "baomi-collector"
#: RFC 5424 structured-data id. 32473 is the enterprise number reserved for examples
#: (RFC 5612); a site with its own IANA number can change it here.
SD_ID = "baomi@32473"
FACILITY = 13  # log audit
# Baomi severity -> syslog severity (RFC 5424 table 2).
SYSLOG_SEVERITY: dict[int, int] = {
    events_pb2.SEVERITY_CRITICAL: 2,  # critical
    events_pb2.SEVERITY_HIGH: 3,  # error
    events_pb2.SEVERITY_MEDIUM: 4,  # warning
    events_pb2.SEVERITY_LOW: 5,  # notice
    events_pb2.SEVERITY_INFO: 6,  # informational
}


@dataclass(frozen=True, slots=True)
class SyslogTarget:
    """Where syslog messages go: ``udp://HOST:PORT`` or ``tcp://HOST:PORT``."""

    transport: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> SyslogTarget:
        """Parse the setting; ConsoleError says what is wrong."""
        parts = urlsplit(text.strip())
        try:
            port = parts.port
        except ValueError as e:
            raise ConsoleError(f"syslog address {text[:80]!r}: {e}") from e
        if parts.scheme not in ("udp", "tcp") or not parts.hostname or port is None:
            raise ConsoleError(
                f"syslog address {text[:80]!r} is not valid: use udp://HOST:PORT or "
                "tcp://HOST:PORT (for example udp://siem.example:514)"
            )
        return cls(parts.scheme, parts.hostname, port)


def check_webhook(url: str) -> str:
    """``url`` if it is an http(s) URL, else ConsoleError."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConsoleError(f"webhook {url[:80]!r} is not an http:// or https:// URL")
    return url.strip()


def _sd_escape(value: str) -> str:
    """An SD-PARAM value (RFC 5424 6.3.3): escape '"', '\\' and ']'."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _header_token(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, or '-' (the NILVALUE)."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def alert_metadata(v: EventView) -> dict[str, object]:
    """What an alert says about an event: where and what kind, never its content.

    Alert targets are set by the system administrator, who may not read events (三员分立):
    paths, device names, users and details stay in the console, behind the link.
    """
    row = v.row
    return {
        "source": APP_NAME,
        "host_id": row.host_id,
        "seq": row.seq,
        "kind": v.kind,
        "severity": v.severity,
        "time": dt.datetime.fromtimestamp(row.event_time_us / 1e6, dt.UTC).isoformat(
            timespec="microseconds"
        ),
        "hash": row.hash.hex(),
        "console_path": f"/events/{quote(row.host_id, safe='')}/{row.seq}",
    }


def syslog_message(v: EventView, hostname: str) -> bytes:
    """One RFC 5424 message for an event: header, structured data, BOM + UTF-8 JSON
    metadata (:func:`alert_metadata`)."""
    row = v.row
    severity = SYSLOG_SEVERITY.get(row.severity, 6)
    stamp = dt.datetime.fromtimestamp(row.event_time_us / 1e6, dt.UTC).isoformat(
        timespec="microseconds"
    )
    sd = (
        f'[{SD_ID} host="{_sd_escape(row.host_id)}" seq="{row.seq}" '
        f'kind="{_sd_escape(row.kind)}" severity="{v.severity}" hash="{row.hash.hex()}"]'
    )
    header = (
        f"<{FACILITY * 8 + severity}>1 {stamp.replace('+00:00', 'Z')} "
        f"{_header_token(hostname, 255)} {APP_NAME} {os.getpid()} "
        f"{_header_token(row.kind, 32)} {sd} "
    )
    body = json.dumps(alert_metadata(v), ensure_ascii=False, separators=(",", ":"))
    return header.encode("ascii") + b"\xef\xbb\xbf" + body.encode("utf-8")


def webhook_body(v: EventView) -> bytes:
    """The JSON a webhook receives: :func:`alert_metadata`."""
    return json.dumps(alert_metadata(v), ensure_ascii=False).encode("utf-8")


@dataclass
class AlertStats:
    """Counters for /metrics."""

    queued: int = 0
    sent: int = 0
    failed: int = 0  # a delivery that failed every attempt
    dropped: int = 0  # the queue was full


@dataclass
class _Targets:
    webhooks: tuple[str, ...] = ()
    syslog: SyslogTarget | None = None


class AlertSender:
    """Delivers high-severity events to the configured webhooks and syslog receiver."""

    def __init__(self, *, hostname: str | None = None, backoff: float = BACKOFF_SECONDS) -> None:
        self.stats = AlertStats()
        self._hostname = hostname or socket.gethostname()
        self._backoff = backoff
        self._targets = _Targets()
        self._queue: queue.Queue[EventView | None] = queue.Queue(maxsize=QUEUE_SIZE)
        self._tcp: socket.socket | None = None
        self._tcp_target: SyslogTarget | None = None
        self._thread = threading.Thread(target=self._run, name="alerts-out", daemon=True)
        self._thread.start()

    def configure(self, webhooks: list[str], syslog: str | None) -> None:
        """Set where alerts go (checked; ConsoleError when a target is invalid)."""
        hooks = tuple(check_webhook(u) for u in webhooks if u.strip())
        target = SyslogTarget.parse(syslog) if syslog and syslog.strip() else None
        self._targets = _Targets(hooks, target)

    @property
    def enabled(self) -> bool:
        """True when there is anywhere to send to."""
        return bool(self._targets.webhooks or self._targets.syslog)

    def offer(self, v: EventView) -> None:
        """Queue ``v`` if it is severe enough and alerts are configured (never blocks)."""
        if v.row.severity < ALERT_SEVERITY or not self.enabled:
            return
        try:
            self._queue.put_nowait(v)
            self.stats.queued += 1
        except queue.Full:
            self.stats.dropped += 1
            _logger.warning("alert queue full: alert for %s dropped", v.key)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (up to ``timeout``), then stop the worker."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            _logger.warning("alert queue still full at shutdown; undelivered alerts dropped")
            return
        self._thread.join(timeout)
        if self._tcp is not None:
            self._tcp.close()

    def _run(self) -> None:
        while (v := self._queue.get()) is not None:
            targets = self._targets
            for url in targets.webhooks:
                self._post(url, v)
            if targets.syslog is not None:
                self._syslog(targets.syslog, v)

    def _post(self, url: str, v: EventView) -> None:
        body = webhook_body(v)
        delay = self._backoff
        for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
            request = urllib.request.Request(  # noqa: S310 - scheme checked in check_webhook
                url, data=body, method="POST", headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_SECONDS) as r:  # noqa: S310
                    r.read(1024)
            except (urllib.error.URLError, OSError, ValueError) as e:
                _logger.warning("webhook %s attempt %d failed: %s", url, attempt, e)
            else:
                self.stats.sent += 1
                return
            if attempt < WEBHOOK_ATTEMPTS:
                time.sleep(delay)
                delay *= 2
        self.stats.failed += 1

    def _syslog(self, target: SyslogTarget, v: EventView) -> None:
        message = syslog_message(v, self._hostname)
        try:
            if target.transport == "udp":
                with socket.socket(_family(target.host), socket.SOCK_DGRAM) as s:
                    s.sendto(message[:SYSLOG_MAX_BYTES], (target.host, target.port))
            else:
                self._send_tcp(target, message)
            self.stats.sent += 1
        except OSError as e:
            self.stats.failed += 1
            _logger.warning("syslog to %s:%d failed: %s", target.host, target.port, e)

    def _send_tcp(self, target: SyslogTarget, message: bytes) -> None:
        # RFC 6587 octet counting: "LENGTH SP MESSAGE", so a message may hold newlines.
        frame = str(len(message)).encode() + b" " + message
        for attempt in range(2):  # a connection the receiver closed is reopened once
            if self._tcp is None or self._tcp_target != target:
                if self._tcp is not None:
                    self._tcp.close()
                self._tcp = socket.create_connection(
                    (target.host, target.port), timeout=SYSLOG_TIMEOUT_SECONDS
                )
                self._tcp_target = target
            try:
                self._tcp.sendall(frame)
            except OSError:
                self._tcp.close()
                self._tcp = None
                if attempt:
                    raise
            else:
                return


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
