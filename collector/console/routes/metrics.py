"""/metrics: Prometheus counters for a scraper holding the bearer token (no login)."""

from __future__ import annotations

from starlette.responses import PlainTextResponse, Response

from collector.console import auth, metrics
from collector.console.app import Ctx


async def metrics_text(c: Ctx) -> Response:
    """Prometheus metrics for a scraper with the bearer token of ``serve
    --metrics-token-file`` (no console login; counts and host ids, no event data)."""
    token = c.console.metrics_token
    if token is None:
        return c.error(404, c.t("not_found"))
    if not auth.same_token(f"Bearer {token}", c.request.headers.get("authorization")):
        return PlainTextResponse(
            "a bearer token is required (the one in serve --metrics-token-file)",
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="baomi-metrics"'},
        )
    ingest = c.console.backend.ingest
    text = metrics.render(
        committed=ingest.writer.committed,
        ingest=ingest.stats,
        connected=ingest.connected,
        hosts=list(c.console.feed.hosts.values()),
        decommissioned=list(c.console.feed.decommissioned),
        alerts=c.console.alerts.stats,
        store_up=ingest.store_up,
    )
    return PlainTextResponse(text, media_type=metrics.CONTENT_TYPE)
