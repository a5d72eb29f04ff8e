"""Prometheus metrics of the collector, in the text exposition format (version 0.0.4).

Hand-written: a dozen lines of text need no client library.
"""

from __future__ import annotations

from collections.abc import Iterable

from collector.console.alerts import AlertStats
from collector.console.feed import HostState
from collector.ingest import IngestStats, now_us

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    """A label value: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _metric(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, float]]) -> str:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{labels} {value:g}" for labels, value in samples]
    return "\n".join(lines)


def render(
    *,
    committed: int,
    ingest: IngestStats,
    connected: int,
    hosts: Iterable[HostState],
    decommissioned: Iterable[str],
    alerts: AlertStats,
    store_up: bool = True,
) -> str:
    """The exposition text."""
    now = now_us()
    gone = set(decommissioned)
    live = [h for h in hosts if h.host_id not in gone]
    blocks = [
        _metric(
            "baomi_store_up",
            "gauge",
            "1 when the store answers; 0 while it does not (nothing is acknowledged).",
            [("", 1 if store_up else 0)],
        ),
        _metric(
            "baomi_ingest_events_total",
            "counter",
            "Events committed to the store by this collector since it started.",
            [("", committed)],
        ),
        _metric(
            "baomi_ingest_batches_total",
            "counter",
            "Event batches received from agents.",
            [("", ingest.batches)],
        ),
        _metric(
            "baomi_ingest_rejected_batches_total",
            "counter",
            "Event batches refused (malformed or too large).",
            [("", ingest.rejected)],
        ),
        _metric(
            "baomi_agents_connected",
            "gauge",
            "Agents with an event stream open to this collector.",
            [("", connected)],
        ),
        _metric(
            "baomi_stream_lag_seconds",
            "gauge",
            "Per host: arrival time minus event time of its newest event.",
            [(f'{{host="{_label(h.host_id)}"}}', h.lag_s) for h in live],
        ),
        _metric(
            "baomi_host_last_seen_seconds",
            "gauge",
            "Per host: seconds since its newest event arrived.",
            [
                (f'{{host="{_label(h.host_id)}"}}', max(0.0, (now - h.last_seen_us) / 1e6))
                for h in live
                if h.last_seen_us
            ],
        ),
        _metric(
            "baomi_hosts_silent",
            "gauge",
            "Hosts quiet for longer than their heartbeat interval (clean stops excluded).",
            [("", sum(1 for h in live if h.silent(now) and not h.stopped))],
        ),
        _metric(
            "baomi_alerts_sent_total",
            "counter",
            "Alerts delivered to a webhook or syslog.",
            [("", alerts.sent)],
        ),
        _metric(
            "baomi_alerts_failed_total",
            "counter",
            "Alert deliveries that failed every attempt.",
            [("", alerts.failed)],
        ),
        _metric(
            "baomi_alerts_dropped_total",
            "counter",
            "Alerts dropped because the delivery queue was full.",
            [("", alerts.dropped)],
        ),
    ]
    return "\n".join(blocks) + "\n"
