"""The console's pages and the route table that says who may use each.

Roles (三员分立):
- sysadmin: hosts and agents (enrolment tokens, decommission), accounts (create, never
  seeing a password of them),
  collector settings;
- secadmin: policy (editor, history, rollback), devices (approve a registered stick),
  findings, meeting checks, accounts (grant and revoke a role, reset, disable, enable,
  unlock; see collector/console/accounts.py), and the events behind them;
- auditor: every event, export, the console's audit log, chain verification,
  findings and meeting checks to read; nothing else.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import difflib
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

from baomi.v1 import events_pb2
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)

from collector import audit as record_audit
from collector import meeting_signatures, pki
from collector.console import auth, devices, eventview, metrics, svg
from collector.console.accounts import (
    account_create,
    account_disable,
    account_enable,
    account_grant,
    account_reset,
    account_revoke,
    account_unlock,
    accounts,
    login,
    logout,
    password,
)
from collector.console.app import (
    LANG_COOKIE,
    Console,
    Ctx,
    Handler,
    Page,
    _local,
    current_user,
    form_id,
    lang_of,
    refuse_input,
)
from collector.console.errors import ConsoleError
from collector.console.eventview import Filters, format_time, search, view
from collector.console.exports import events_csv
from collector.console.i18n import LANGS
from collector.errors import CollectorError
from collector.ingest import COLLECTOR_HOST, now_us
from collector.policy import PolicyProblem, bundle_digest, validate
from collector.server import TOKEN_SECONDS, create_token
from collector.store.base import (
    ROLES,
    AccountRow,
    ConsoleQuery,
    FindingRow,
    PolicyVersionRow,
)

SYS, SEC, AUD = "sysadmin", "secadmin", "auditor"
ALL = frozenset(ROLES)
EXPORT_EVENTS = 50_000  # rows in one CSV export
EXPORT_SCAN = 500_000  # rows an export with a user/path filter examines at most
CHART_DAYS = 14
FINDING_STATUSES = ("open", "rectifying", "closed")
KEEPALIVE_SECONDS = 15.0  # SSE comment lines keep proxies from closing an idle stream
MEETING_EVENTS = 500
AUDIT_EVENTS = 200


def _user(c: Ctx) -> AccountRow:
    if c.user is None:  # guard() runs handlers only for a logged-in user
        raise ConsoleError("log in first")
    return c.user.account


# ------------------------------------------------------------------ hosts, overview


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
    current = console.collector.policy.current
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


def _violation_chart(c: Ctx) -> object:
    tz = c.console.tz
    today = dt.datetime.now(tz).replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - dt.timedelta(days=CHART_DAYS - 1)
    since_us = int(start.timestamp() * 1_000_000)
    day_us = 86_400 * 1_000_000
    counts = c.store.severity_counts(since_us, day_us, eventview.VIOLATION)
    labels = [(start + dt.timedelta(days=i)).strftime("%m-%d") for i in range(CHART_DAYS)]
    series = []
    for severity in (
        events_pb2.SEVERITY_MEDIUM,
        events_pb2.SEVERITY_HIGH,
        events_pb2.SEVERITY_CRITICAL,
    ):
        values = [0] * CHART_DAYS
        for bucket, sev, n in counts:
            day = (bucket - since_us) // day_us
            if sev == severity and 0 <= day < CHART_DAYS:
                values[day] += n
        name = eventview.severity_name(severity)
        series.append((name, c.t(f"severity_{name}"), values))
    return svg.stacked_bars(labels, series, title=c.t("violations_chart", days=CHART_DAYS))


async def overview(c: Ctx) -> Response:
    """Hosts online and offline; violations by severity (security roles)."""
    rows = host_rows(c.console)
    states = Counter(r.state for r in rows)
    chart = None
    open_findings = 0
    role = c.user.role if c.user else ""
    if role in (SEC, AUD):
        chart = await c.run(_violation_chart, c)
        findings = await c.run(c.store.findings)
        open_findings = sum(1 for f in findings if f.status != "closed")
    current = c.console.collector.policy.current
    return c.render(
        "overview.html",
        states=states,
        hosts=len(rows),
        drift=sum(1 for r in rows if r.drift and r.state != "decommissioned"),
        chart=chart,
        open_findings=open_findings,
        policy=current.version if current else "",
    )


# ------------------------------------------------------------------ events


def _hidden(c: Ctx) -> tuple[str, ...]:
    """Event kinds the user's role may not see: the console's own audit trail is the
    auditor's (the administrators it audits do not read it)."""
    return () if c.user is not None and c.user.role == AUD else ("console_action",)


def _cursor(text: str) -> tuple[int, str, int] | None:
    """``before`` of a page link: "TIME_SEQ_HOST"."""
    if not text:
        return None
    damaged = ConsoleError("the page link is damaged; start from the first page")
    try:
        t, seq, host = text.split("_", 2)
        cursor = int(t), host, int(seq)
    except ValueError as e:
        raise damaged from e
    # Every real cursor fits the stores' signed 64-bit columns and PostgreSQL text.
    if not all(-(2**63) <= n < 2**63 for n in (cursor[0], cursor[2])) or "\x00" in host:
        raise damaged
    return cursor


def _cursor_text(cursor: tuple[int, str, int]) -> str:
    return f"{cursor[0]}_{cursor[2]}_{cursor[1]}"


async def events(c: Ctx) -> Response:
    """Events newest first with filters; the first page follows new events live."""
    params = c.request.query_params
    filters = Filters.of(params, hidden=_hidden(c))
    before = _cursor(params.get("before", ""))
    page = await c.run(search, c.store, filters, c.console.tz, before=before)
    older = (
        "/events?" + urlencode({**filters.params(), "before": _cursor_text(page.next_before)})
        if page.next_before
        else ""
    )
    return c.render(
        "events.html",
        filters=filters,
        page=page,
        rows=[(v, format_time(v.row.event_time_us, c.console.tz)) for v in page.events],
        older=older,
        live=before is None,
        query=urlencode(filters.params()),
        kinds=[k for k in eventview.KINDS if k not in filters.hidden],
        severities=list(eventview.SEVERITY_BY_NAME),
        can_export=c.user is not None and c.user.role == AUD,
    )


def accepts(filters: Filters, v: eventview.EventView, since: int | None, until: int | None) -> bool:
    """Whether a live event passes the view's filters (what the store query would check)."""
    r = v.row
    return (
        (not filters.host or r.host_id == filters.host)
        and (not filters.kind or r.kind == filters.kind)
        and (not filters.severity or r.severity >= eventview.SEVERITY_BY_NAME[filters.severity])
        and (since is None or r.event_time_us >= since)
        and (until is None or r.event_time_us < until)
        and filters.matches(v)
    )


async def events_stream(c: Ctx) -> Response:
    """Server-sent events: each new event matching the filters, as JSON."""
    filters = Filters.of(c.request.query_params, hidden=_hidden(c))
    tz = c.console.tz
    q = filters.query(tz, limit=1, before=None)
    feed = c.console.feed
    console, request = c.console, c.request

    async def stream() -> object:
        sub = feed.subscribe()
        try:
            yield "retry: 2000\n\n"
            while not feed.closing.is_set():
                try:
                    v = await asyncio.wait_for(sub.queue.get(), timeout=KEEPALIVE_SECONDS)
                except TimeoutError:
                    if await current_user(console, request) is None:
                        yield "event: ended\ndata: {}\n\n"
                        return
                    yield ": keepalive\n\n"
                    continue
                if sub.overflowed:
                    yield "event: reload\ndata: {}\n\n"
                    return
                if accepts(filters, v, q.since_us, q.until_us):
                    row = v.brief(tz)
                    row["kind_label"] = c.t(f"kind_{v.kind}")
                    row["severity_label"] = c.t(f"severity_{v.severity}")
                    yield f"data: {json.dumps(row, ensure_ascii=False)}\n\n"
        finally:
            feed.unsubscribe(sub)

    return StreamingResponse(
        stream(),  # type: ignore[arg-type]
        media_type="text/event-stream",
        headers={"X-Accel-Buffering": "no"},
    )


async def events_export(c: Ctx) -> Response:
    """The filtered events as CSV (audited)."""
    filters = Filters.of(c.request.query_params)
    tz = c.console.tz
    page = await c.run(search, c.store, filters, tz, limit=EXPORT_EVENTS, scan_rows=EXPORT_SCAN)
    await c.audit(
        "export",
        "events.csv",
        f"{len(page.events)} events; filters {json.dumps(filters.params(), ensure_ascii=False)}",
    )
    body = await c.run(events_csv, page.events, tz)
    stamp = dt.datetime.now(tz).strftime("%Y%m%d-%H%M%S")
    return Response(
        body.encode("utf-8"),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="baomi-events-{stamp}.csv"'},
    )


async def event_detail(c: Ctx) -> Response:
    """One event in full (the view is audited)."""
    host = str(c.request.path_params["host"])
    seq = int(c.request.path_params["seq"])
    # No host id holds a NUL (and PostgreSQL text cannot): no such event.
    row = await c.run(c.store.event, host, seq) if "\x00" not in host else None
    if row is None:
        return c.error(404, c.t("not_found"))
    if row.kind in _hidden(c):
        await c.audit("forbidden", f"GET {c.request.url.path}", ok=False)
        return c.error(403, c.t("forbidden"))
    await c.audit("view_event", f"{host}/{seq}", row.kind)
    v = view(row)
    findings = [f for f in await c.run(c.store.findings) if (f.host_id, f.seq) == (host, seq)]
    return c.render(
        "event.html",
        v=v,
        when=format_time(row.event_time_us, c.console.tz),
        received=format_time(row.received_us, c.console.tz),
        body=json.dumps(v.as_dict(), ensure_ascii=False, indent=2),
        findings=findings,
        can_find=c.user is not None and c.user.role == SEC,
        violation=row.severity >= eventview.VIOLATION,
    )


# ------------------------------------------------------------------ hosts (sysadmin)


async def hosts(c: Ctx) -> Response:
    """Agents: version, policy enforced vs current, sensors, last seen; silence alerts."""
    return _hosts_page(c)


def _hosts_page(c: Ctx, token: tuple[str, str] | None = None, status: int = 200) -> HTMLResponse:
    current = c.console.collector.policy.current
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
    await c.run(c.store.decommission, host, _user(c).name, now_us())
    c.console.feed.decommissioned[host] = now_us()
    await c.audit("decommission", host)
    return RedirectResponse("/hosts", status_code=303)


# ------------------------------------------------------------------ policy (secadmin)


def _current_files(c: Ctx) -> dict[str, bytes]:
    current = c.console.collector.policy.current
    return dict(current.files) if current else {}


async def publish(
    c: Ctx, files: dict[str, bytes], *, note: str, action: str, target: str = ""
) -> PolicyVersionRow | list[PolicyProblem]:
    """Validate, store as a new version, push to agents and audit; or the problems."""
    problems = await c.run(validate, files)
    if problems:
        await c.audit(
            action,
            target,
            ("refused, nothing published: " + "; ".join(map(str, problems)))[:1900],
            ok=False,
        )
        return problems
    name = _user(c).name
    version = bundle_digest(files)
    created = now_us()
    number = await c.run(c.store.add_policy_version, version, name, created, note[:500], files)
    await c.console.collector.policy.publish(files, author=name)
    await c.audit(action, target or f"version {number} ({version})", note[:500])
    return PolicyVersionRow(number, version, name, created, note, files)


def _diff(old: dict[str, bytes], new: dict[str, bytes]) -> list[tuple[str, list[str]]]:
    """Unified diff per changed file."""
    out = []
    for name in sorted(set(old) | set(new)):
        a = old.get(name, b"").decode("utf-8", "replace").splitlines()
        b = new.get(name, b"").decode("utf-8", "replace").splitlines()
        if a != b or (name in old) != (name in new):
            lines = list(
                difflib.unified_diff(
                    a,
                    b,
                    f"a/{name}" if name in old else "/dev/null",
                    f"b/{name}" if name in new else "/dev/null",
                    lineterm="",
                )
            )
            out.append((name, lines))
    return out


async def _edited_files(c: Ctx) -> tuple[dict[str, bytes], str]:
    """The files as posted by the editor (browsers send CRLF; policy files use LF)."""
    form = await c.form()
    files: dict[str, bytes] = {}
    for key, value in form.multi_items():
        if key.startswith("file:") and isinstance(value, str):
            text = value.replace("\r\n", "\n")
            if text.strip():
                files[key.removeprefix("file:")] = text.encode("utf-8")
    new_name = (await c.field("new_name", 100)).strip()
    new_text = (await c.field("new_content", 1024 * 1024)).replace("\r\n", "\n")
    if new_name and new_text.strip():
        files[new_name] = new_text.encode("utf-8")
    return files, (await c.field("note", 500)).strip()


def _policy_page(
    c: Ctx,
    files: dict[str, bytes],
    *,
    note: str = "",
    problems: list[PolicyProblem] | None = None,
    diff: list[tuple[str, list[str]]] | None = None,
    status: int = 200,
) -> HTMLResponse:
    current = c.console.collector.policy.current
    return c.render(
        "policy.html",
        status=status,
        files=[(n, d.decode("utf-8", "replace")) for n, d in sorted(files.items())],
        note=note,
        problems=problems,
        diff=diff,
        current=current.version if current else "",
    )


async def policy(c: Ctx) -> Response:
    """The editor: one text area per policy file."""
    return _policy_page(c, _current_files(c))


async def policy_preview(c: Ctx) -> Response:
    """Validation and a diff against what is in force, without saving."""
    files, note = await _edited_files(c)
    problems = await c.run(validate, files)
    return _policy_page(
        c, files, note=note, problems=problems, diff=_diff(_current_files(c), files)
    )


async def policy_save(c: Ctx) -> Response:
    """Save and push; a policy that does not load is refused with the reason."""
    files, note = await _edited_files(c)
    if files == _current_files(c):
        raise ConsoleError(c.t("policy_unchanged"))
    result = await publish(c, files, note=note or c.t("policy_edit"), action="policy_change")
    if isinstance(result, list):
        return _policy_page(
            c, files, note=note, problems=result, diff=_diff(_current_files(c), files), status=422
        )
    return RedirectResponse("/policy/history", status_code=303)


async def policy_history(c: Ctx) -> Response:
    """Every published version with author and note."""
    versions = await c.run(c.store.policy_versions)
    current = c.console.collector.policy.current
    return c.render(
        "history.html",
        versions=[(v, format_time(v.created_us, c.console.tz)) for v in versions],
        current=current.version if current else "",
    )


async def policy_version(c: Ctx) -> Response:
    """One version's files and its diff from the version before."""
    number = int(c.request.path_params["number"])
    row = await c.run(c.store.policy_version, number)
    if row is None:
        return c.error(404, c.t("not_found"))
    previous = await c.run(c.store.policy_version, number - 1) if number > 1 else None
    return c.render(
        "version.html",
        v=row,
        when=format_time(row.created_us, c.console.tz),
        diff=_diff(previous.files if previous else {}, row.files),
        files=[(n, d.decode("utf-8", "replace")) for n, d in sorted(row.files.items())],
    )


async def policy_rollback(c: Ctx) -> Response:
    """Publish an earlier version's files again, as a new version."""
    number = form_id(await c.field("number", 20), "version number")
    row = await c.run(c.store.policy_version, number)
    if row is None:
        return c.error(404, c.t("not_found"))
    result = await publish(
        c,
        row.files,
        note=f"rollback to version {row.number}",
        action="policy_rollback",
        target=f"version {row.number} ({row.version})",
    )
    if isinstance(result, list):
        return c.error(422, "; ".join(map(str, result)))
    return RedirectResponse("/policy/history", status_code=303)


# ------------------------------------------------------------------ devices (secadmin)


async def devices_page(c: Ctx) -> Response:
    """USB devices seen on any host, with the decision reported and the one in force."""
    seen = await c.run(devices.inventory, c.store)
    files = _current_files(c)
    return c.render(
        "devices.html",
        rows=[
            (d, format_time(d.last_us, c.console.tz), devices.decide_now(files, d), sorted(d.hosts))
            for d in seen
        ],
        levels=devices.LEVELS,
    )


async def device_approve(c: Ctx) -> Response:
    """Register a stick: allow rule and registry entry, published to every agent."""
    host = await c.field("host", 63)
    seq = form_id(await c.field("seq", 20), "event seq")
    row = await c.run(c.store.event, host, seq)
    if row is None or row.kind != "device":
        raise ConsoleError(c.t("not_found"))
    device = events_pb2.Event.FromString(row.body).device
    files = devices.approve(
        _current_files(c),
        device,
        label=(await c.field("label", 40)).strip(),
        owner=(await c.field("owner", 40)).strip(),
        level=await c.field("level", 10),
        actor=_user(c).name,
        seen_on=host,
        when=dt.datetime.now(c.console.tz),
    )
    target = f"{device.vendor_id}:{device.product_id} serial {device.serial[:64]!r}"
    result = await publish(
        c,
        files,
        note=f"approve USB stick {target} seen on {host}",
        action="approve_device",
        target=target,
    )
    if isinstance(result, list):
        return c.error(422, "; ".join(map(str, result)))
    return RedirectResponse("/devices", status_code=303)


# ------------------------------------------------------------------ findings, meetings


async def findings(c: Ctx) -> Response:
    """Violations followed to closure."""
    status = c.request.query_params.get("status", "")
    rows = await c.run(c.store.findings, status if status in FINDING_STATUSES else None)
    today = dt.datetime.now(c.console.tz).date().isoformat()
    return c.render(
        "findings.html",
        rows=[(f, format_time(f.updated_us, c.console.tz)) for f in rows],
        statuses=FINDING_STATUSES,
        status_filter=status,
        today=today,
        can_edit=c.user is not None and c.user.role == SEC,
    )


def _due(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError as e:
        raise ConsoleError(f"due date {text[:20]!r} is not YYYY-MM-DD") from e


async def finding_create(c: Ctx) -> Response:
    """Make a finding of a violation event."""
    host = await c.field("host", 63)
    seq = form_id(await c.field("seq", 20), "event seq")
    row = await c.run(c.store.event, host, seq)
    if row is None:
        raise ConsoleError(c.t("not_found"))
    v = view(row)
    now = now_us()
    name = _user(c).name
    finding = FindingRow(
        id=0,
        host_id=host,
        seq=row.seq,
        title=v.summary[:200],
        severity=row.severity,
        owner=(await c.field("owner", 100)).strip(),
        due=_due(await c.field("due", 20)),
        status="open",
        note=(await c.field("note", 2000)).strip(),
        created_us=now,
        created_by=name,
        updated_us=now,
        updated_by=name,
    )
    fid = await c.run(c.store.add_finding, finding)
    await c.audit("finding_create", f"finding {fid}", f"event {host}/{row.seq}")
    return RedirectResponse("/findings", status_code=303)


async def finding_update(c: Ctx) -> Response:
    """Change a finding's owner, due date, status or note."""
    fid = int(c.request.path_params["fid"])
    status = await c.field("status", 20)
    if status not in FINDING_STATUSES:
        raise ConsoleError(f"status must be one of {', '.join(FINDING_STATUSES)}")
    owner = (await c.field("owner", 100)).strip()
    due = _due(await c.field("due", 20))
    note = (await c.field("note", 2000)).strip()
    changed = await c.run(_update_finding, c, fid, owner=owner, due=due, status=status, note=note)
    if not changed:
        return c.error(404, c.t("not_found"))
    await c.audit("finding_update", f"finding {fid}", f"status {status}, owner {owner}, due {due}")
    return RedirectResponse("/findings", status_code=303)


def _update_finding(c: Ctx, fid: int, *, owner: str, due: str, status: str, note: str) -> bool:
    return bool(
        c.store.update_finding(
            fid, owner=owner, due=due, status=status, note=note, by=_user(c).name, now_us=now_us()
        )
    )


async def meetings(c: Ctx) -> Response:
    """Pre-meeting checks and sweeps reported by room agents."""
    rows = await c.run(
        c.store.console_events, ConsoleQuery(kind="meeting_check", limit=MEETING_EVENTS)
    )
    signatures = await c.run(meeting_signatures.lookup, c.store, rows)
    items = []
    for row in rows:
        m = events_pb2.Event.FromString(row.body).meeting_check
        failed = [i for i in m.items if i.result != "pass"]
        signature = signatures[(row.host_id, row.seq)]
        items.append((row, m, failed, format_time(row.event_time_us, c.console.tz), signature))
    return c.render("meetings.html", items=items)


# ------------------------------------------------------------------ accounts, settings


async def settings(c: Ctx) -> Response:
    """Collector settings: alert targets and the time zone pages use."""
    return c.render("settings.html", s=c.console.settings, saved=False)


async def settings_save(c: Ctx) -> Response:
    """Check and store the settings, then apply them."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # noqa: PLC0415

    from collector.console.alerts import SyslogTarget, check_webhook  # noqa: PLC0415

    hooks = [check_webhook(u) for u in (await c.field("webhooks", 4000)).splitlines() if u.strip()]
    syslog = (await c.field("syslog", 200)).strip()
    if syslog:
        SyslogTarget.parse(syslog)
    tz = (await c.field("timezone", 64)).strip() or "Asia/Shanghai"
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ConsoleError(f"unknown time zone {tz[:64]!r} (use e.g. Asia/Shanghai)") from e
    values = {"webhooks": "\n".join(hooks), "syslog": syslog, "timezone": tz}

    def save() -> None:
        for key, value in values.items():
            c.store.set_setting(key, value)

    await c.run(save)
    c.console.load_settings()
    # Webhook URLs may carry secrets in their query: the audit names hosts only.
    shown = ", ".join(u.split("/")[2] for u in hooks)
    await c.audit(
        "settings_change", "alerts", f"webhooks [{shown}], syslog {syslog or '-'}, tz {tz}"
    )
    return c.render("settings.html", s=c.console.settings, saved=True)


# ------------------------------------------------------------------ audit (auditor)


async def audit_page(c: Ctx, result: record_audit.AuditReport | None = None) -> Response:
    """The console's own actions from the collector's chain."""
    params = c.request.query_params
    filters = Filters(
        host=COLLECTOR_HOST, kind="console_action", user=params.get("actor", "").strip()[:200]
    )
    before = _cursor(params.get("before", ""))
    page = await c.run(search, c.store, filters, c.console.tz, limit=AUDIT_EVENTS, before=before)
    older = (
        "/audit?" + urlencode({"actor": filters.user, "before": _cursor_text(page.next_before)})
        if page.next_before
        else ""
    )
    return c.render(
        "audit.html",
        rows=[
            (v, v.event.console_action, format_time(v.row.event_time_us, c.console.tz))
            for v in page.events
        ],
        actor=filters.user,
        older=older,
        result=result,
    )


async def audit_log(c: Ctx) -> Response:
    """GET /audit."""
    return await audit_page(c)


async def audit_verify(c: Ctx) -> Response:
    """Recompute every chain and checkpoint (collector.audit.verify), against the
    collector's witness file too when it keeps one."""
    config = c.console.collector.config
    key = pki.load_verify_key(config.pki_dir / "signing.pub")
    report = await c.run(record_audit.verify_witnessed, c.store, key, config.witness)
    await c.audit(
        "verify_chain",
        "record",
        f"{'OK' if report.ok else 'FAILED'}: {report.hosts} hosts, {report.events} events, "
        f"{len(report.damage)} problems",
        severity=events_pb2.SEVERITY_INFO if report.ok else events_pb2.SEVERITY_HIGH,
    )
    return await audit_page(c, report)


# ------------------------------------------------------------------ reports


REPORT_FORMATS = ("pdf", "html")


async def reports_page(c: Ctx, error: str = "", status: int = 200) -> Response:
    """Generated inspection reports (scheduled and on request) and a form for a new one."""
    from collector.reports import list_reports  # noqa: PLC0415 - the PDF stack on use

    rows = await c.run(list_reports, c.store)
    return c.render(
        "reports.html",
        status=status,
        rows=[(r, format_time(r.created_us, c.console.tz)) for r in rows],
        formats=REPORT_FORMATS,
        error=error,
    )


async def reports(c: Ctx) -> Response:
    """GET /reports."""
    return await reports_page(c)


async def report_download(c: Ctx) -> Response:
    """One stored report's document (an export: audited)."""
    from collector.reports import list_reports, report_document  # noqa: PLC0415

    rid = int(c.request.path_params["rid"])
    row = next((r for r in await c.run(list_reports, c.store) if r.id == rid), None)
    document = await c.run(report_document, c.store, rid) if row is not None else None
    if row is None or document is None:
        return c.error(404, c.t("not_found"))
    await c.audit("export", f"report {rid}", f"{row.kind} {row.subject} {row.fmt} {row.digest}")
    media = "application/pdf" if row.fmt == "pdf" else "text/html; charset=utf-8"
    name = f"baomi-{row.kind}-{row.subject}-{rid}.{row.fmt}".replace("/", "_")
    return Response(
        document,
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{quote(name)}"'},
    )


async def report_generate(c: Ctx) -> Response:
    """Build an inspection report for a period now, keep it, and list it."""
    from collector.reports import build_inspection, render  # noqa: PLC0415
    from collector.reports.schedule import store_report  # noqa: PLC0415

    period = (await c.field("period", 20)).strip()
    fmt = await c.field("format", 8)
    lang = "en" if c.lang == "en" else "zh"
    if fmt not in REPORT_FORMATS:
        await c.audit("report_generate", period, f"format {fmt!r} refused", ok=False)
        return await reports_page(c, c.t("report_format_bad"), 400)
    collector = c.console.collector
    now = dt.datetime.now(dt.UTC)

    def make() -> tuple[str, int]:
        report = build_inspection(
            c.store,
            period,
            policies_dir=collector.config.policies_dir or Path("policies"),
            verify_key_path=collector.config.pki_dir / "signing.pub",
            witness_path=collector.config.witness,
            now=now,
        )
        document = render(report, fmt, lang)
        row = store_report(c.store, report, fmt=fmt, lang=lang, document=document, now=now)
        return report.digest, row.id

    try:
        digest, rid = await c.run(make)
    except CollectorError as e:  # a bad period, an unreadable policy directory, ...
        await c.audit("report_generate", period[:20], str(e)[:300], ok=False)
        return await reports_page(c, str(e), 400)
    await c.audit("report_generate", f"report {rid}", f"inspection {period} {fmt} {digest}")
    return await reports_page(c)


# ------------------------------------------------------------------ public


async def switch_lang(c: Ctx) -> Response:
    """Choose the language (a preference cookie; nothing on the server changes)."""
    lang = c.request.query_params.get("to", "zh")
    response = RedirectResponse(_local(c.request.query_params.get("next", "/")), status_code=303)
    if lang in LANGS:
        c.console.cookie(response, c.console.cookie_name(LANG_COOKIE), lang, 365 * 86_400)
    return response


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
    ingest = c.console.collector.ingest
    text = metrics.render(
        committed=ingest.writer.committed,
        ingest=ingest.stats,
        connected=ingest.connected,
        hosts=list(c.console.feed.hosts.values()),
        decommissioned=list(c.console.feed.decommissioned),
        alerts=c.console.alerts.stats,
    )
    return PlainTextResponse(text, media_type=metrics.CONTENT_TYPE)


def public(console: Console, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint open without login (the handler sees the user if there is one)."""

    async def endpoint(request: Request) -> Response:
        ctx = Ctx(console, request, await current_user(console, request), lang_of(request))
        try:
            return await handler(ctx)
        except ConsoleError as e:
            return await refuse_input(ctx, e)

    return endpoint


# ------------------------------------------------------------------ the route table


ROUTES: list[Page] = [
    Page("/", overview, ALL, nav="nav_overview"),
    Page("/events", events, frozenset({SEC, AUD}), nav="nav_events"),
    Page("/events/stream", events_stream, frozenset({SEC, AUD})),
    Page("/events/export.csv", events_export, frozenset({AUD})),
    Page("/events/{host}/{seq:id}", event_detail, frozenset({SEC, AUD})),
    Page("/hosts", hosts, frozenset({SYS, SEC}), nav="nav_hosts"),
    Page("/hosts/token", token_create, frozenset({SYS}), ("POST",)),
    Page("/hosts/decommission", decommission, frozenset({SYS}), ("POST",)),
    Page("/devices", devices_page, frozenset({SEC}), nav="nav_devices"),
    Page("/devices/approve", device_approve, frozenset({SEC}), ("POST",)),
    Page("/policy", policy, frozenset({SEC}), nav="nav_policy"),
    Page("/policy/preview", policy_preview, frozenset({SEC}), ("POST",)),
    Page("/policy/save", policy_save, frozenset({SEC}), ("POST",)),
    Page("/policy/history", policy_history, frozenset({SEC}), nav="nav_history"),
    Page("/policy/versions/{number:id}", policy_version, frozenset({SEC})),
    Page("/policy/rollback", policy_rollback, frozenset({SEC}), ("POST",)),
    Page("/findings", findings, frozenset({SEC, AUD}), nav="nav_findings"),
    Page("/findings/new", finding_create, frozenset({SEC}), ("POST",)),
    Page("/findings/{fid:id}", finding_update, frozenset({SEC}), ("POST",)),
    Page("/meetings", meetings, frozenset({SEC, AUD}), nav="nav_meetings"),
    Page("/accounts", accounts, frozenset({SYS, SEC}), nav="nav_accounts"),
    Page("/accounts/new", account_create, frozenset({SYS}), ("POST",)),
    Page("/accounts/grant", account_grant, frozenset({SEC}), ("POST",)),
    Page("/accounts/revoke", account_revoke, frozenset({SEC}), ("POST",)),
    Page("/accounts/reset", account_reset, frozenset({SEC}), ("POST",)),
    Page("/accounts/disable", account_disable, frozenset({SEC}), ("POST",)),
    Page("/accounts/enable", account_enable, frozenset({SEC}), ("POST",)),
    Page("/accounts/unlock", account_unlock, frozenset({SEC}), ("POST",)),
    Page("/settings", settings, frozenset({SYS}), nav="nav_settings"),
    Page("/settings", settings_save, frozenset({SYS}), ("POST",)),
    Page("/audit", audit_log, frozenset({AUD}), nav="nav_audit"),
    Page("/reports", reports, frozenset({AUD}), nav="nav_reports"),
    Page("/reports/generate", report_generate, frozenset({AUD}), ("POST",)),
    Page("/reports/{rid:id}", report_download, frozenset({AUD})),
    Page("/audit/verify", audit_verify, frozenset({AUD}), ("POST",)),
    Page("/password", password, ALL, ("GET", "POST")),
    Page("/logout", logout, ALL, ("POST",)),
]

PUBLIC: list[tuple[str, Handler, tuple[str, ...]]] = [
    ("/login", login, ("GET", "POST")),
    ("/lang", switch_lang, ("GET",)),
    ("/metrics", metrics_text, ("GET",)),
]


def nav_for(role: str) -> list[tuple[str, str]]:
    """Menu entries (path, message key) of the pages ``role`` may open."""
    return [(p.path, p.nav) for p in ROUTES if p.nav and role in p.roles]
