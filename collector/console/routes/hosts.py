"""Hosts and their agents: state, versions, policy drift; enrolment tokens and
decommissioning (sysadmin)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.responses import HTMLResponse, RedirectResponse, Response

from collector import pki
from collector.console.app import SYS, Console, Ctx
from collector.console.errors import ConsoleError
from collector.console.eventview import format_time
from collector.enrollment import TOKEN_SECONDS, create_token
from collector.errors import CollectorError
from collector.ingest import COLLECTOR_HOST, now_us


@dataclass
class HostRow:
    """One line of the hosts page."""

    host_id: str
    state: str  # online, degraded, silent, stopped, decommissioned, unknown
    version: str
    policy: str
    drift: bool
    sensors: list[tuple[str, str, str]]
    last_seen: str
    quiet_s: float
    interval_s: float
    lag_s: float
    applied_error: str


def host_rows(console: Console) -> list[HostRow]:
    """Every host the feed knows, with its state and policy drift."""
    current = console.backend.policy.current
    version = current.version if current else ""
    now = now_us()
    rows = []
    for h in sorted(console.feed.hosts.values(), key=lambda s: s.host_id):
        if h.host_id in console.feed.decommissioned:
            state = "decommissioned"
        elif h.last_seen_us == 0:
            state = "unknown"
        elif h.stopped:
            state = "stopped"
        elif h.silent(now):
            state = "silent"
        elif h.status and any(s.state != "ok" for s in h.status.sensors):
            state = "degraded"  # reporting, but some sensor does less than it should
        else:
            state = "online"
        enforced = h.status.policy_version if h.status else ""
        rows.append(
            HostRow(
                host_id=h.host_id,
                state=state,
                version=h.status.version if h.status else "",
                policy=enforced,
                drift=bool(version) and enforced != version,
                sensors=[(s.name, s.state, s.detail) for s in h.status.sensors] if h.status else [],
                last_seen=format_time(h.last_seen_us, console.tz) if h.last_seen_us else "",
                quiet_s=(now - h.last_seen_us) / 1e6 if h.last_seen_us else 0.0,
                interval_s=h.interval_s,
                lag_s=h.lag_s,
                applied_error=h.applied.error if h.applied and not h.applied.ok else "",
            )
        )
    return rows


async def hosts(c: Ctx) -> Response:
    """Agents: version, policy enforced vs current, sensors, last seen; silence alerts."""
    return _hosts_page(c)


def _hosts_page(c: Ctx, token: tuple[str, str] | None = None, status: int = 200) -> HTMLResponse:
    current = c.console.backend.policy.current
    return c.render(
        "hosts.html",
        status=status,
        rows=host_rows(c.console),
        current=current.version if current else "",
        token=token,
        token_hours=TOKEN_SECONDS // 3600,
        can_manage=c.user is not None and c.user.role == SYS,
    )


async def token_create(c: Ctx) -> Response:
    """A single-use enrolment token, shown once."""
    host = (await c.field("host", 63)).strip()
    try:
        pki.check_host_id(host)
    except CollectorError as e:
        raise ConsoleError(str(e)) from e
    token = await c.run(create_token, c.store, host)
    await c.run(c.store.recommission, host)
    await c.audit("token_create", host, f"valid {TOKEN_SECONDS // 3600} h")
    return _hosts_page(c, token=(host, token))


async def decommission(c: Ctx) -> Response:
    """Revoke a host: its certificates are forgotten, its agent can no longer connect."""
    host = (await c.field("host", 63)).strip()
    if host == COLLECTOR_HOST or host not in await c.run(c.store.hosts):
        raise ConsoleError(c.t("unknown_host"))
    await c.run(c.store.decommission, host, c.account.name, now_us())
    c.console.feed.decommissioned[host] = now_us()
    await c.audit("decommission", host)
    return RedirectResponse("/hosts", status_code=303)
