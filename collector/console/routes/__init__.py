"""The console's route table: every page, who may use it, and its menu entry.

Roles (三员分立):
- sysadmin: hosts and agents (enrolment tokens, decommission), accounts (create, never
  seeing a password of them),
  collector settings;
- secadmin: policy (editor, history, rollback), devices (approve a registered stick),
  findings, the classification register (requests, approve, reject), meeting checks,
  accounts (grant and revoke a role, reset, disable, enable,
  unlock; see collector/console/accounts.py), and the events behind them;
- auditor: every event, export, the console's audit log, chain verification,
  findings, the register and meeting checks to read; nothing else.

The pages themselves are grouped by what the user does, one module each: overview,
events, hosts, policy, devices, findings, register, meetings, accounts, session (login, logout,
password, language), settings, audit, reports, metrics.
"""

from __future__ import annotations

from collector.console.app import ALL, AUD, SEC, SYS, Page, PublicPage
from collector.console.routes import (
    accounts,
    audit,
    devices,
    events,
    findings,
    hosts,
    leavers,
    meetings,
    metrics,
    overview,
    policy,
    register,
    reports,
    session,
    settings,
)

ROUTES: list[Page] = [
    Page("/", overview.overview, ALL, nav="nav_overview"),
    Page("/events", events.events, frozenset({SEC, AUD}), nav="nav_events"),
    Page("/events/stream", events.events_stream, frozenset({SEC, AUD})),
    Page("/events/export.csv", events.events_export, frozenset({AUD})),
    Page("/events/{host}/{seq:id}", events.event_detail, frozenset({SEC, AUD})),
    Page("/hosts", hosts.hosts, frozenset({SYS, SEC}), nav="nav_hosts"),
    Page("/hosts/token", hosts.token_create, frozenset({SYS}), ("POST",)),
    Page("/hosts/decommission", hosts.decommission, frozenset({SYS}), ("POST",)),
    Page("/devices", devices.devices_page, frozenset({SEC}), nav="nav_devices"),
    Page("/devices/approve", devices.device_approve, frozenset({SEC}), ("POST",)),
    Page("/policy", policy.policy, frozenset({SEC}), nav="nav_policy"),
    Page("/policy/preview", policy.policy_preview, frozenset({SEC}), ("POST",)),
    Page("/policy/save", policy.policy_save, frozenset({SEC}), ("POST",)),
    Page("/policy/history", policy.policy_history, frozenset({SEC}), nav="nav_history"),
    Page("/policy/versions/{number:id}", policy.policy_version, frozenset({SEC})),
    Page("/policy/rollback", policy.policy_rollback, frozenset({SEC}), ("POST",)),
    Page("/findings", findings.findings, frozenset({SEC, AUD}), nav="nav_findings"),
    Page("/findings/new", findings.finding_create, frozenset({SEC}), ("POST",)),
    Page("/findings/{fid:id}", findings.finding_update, frozenset({SEC}), ("POST",)),
    Page("/register", register.register_page, frozenset({SEC, AUD}), nav="nav_register"),
    Page("/register/entry", register.register_entry, frozenset({SEC, AUD})),
    Page("/register/request", register.register_request, frozenset({SEC}), ("POST",)),
    Page("/register/approve", register.register_approve, frozenset({SEC}), ("POST",)),
    Page("/register/reject", register.register_reject, frozenset({SEC}), ("POST",)),
    Page("/register/destroy", register.register_destroy, frozenset({SEC}), ("POST",)),
    Page("/leavers", leavers.leavers_page, frozenset({SEC, AUD}), nav="nav_leavers"),
    Page("/leavers/close", leavers.leaver_close, frozenset({SEC}), ("POST",)),
    Page("/leavers/signoff", leavers.leaver_signoff, frozenset({SEC}), ("POST",)),
    Page("/meetings", meetings.meetings, frozenset({SEC, AUD}), nav="nav_meetings"),
    Page("/accounts", accounts.accounts, frozenset({SYS, SEC}), nav="nav_accounts"),
    Page("/accounts/new", accounts.account_create, frozenset({SYS}), ("POST",)),
    Page("/accounts/grant", accounts.account_grant, frozenset({SEC}), ("POST",)),
    Page("/accounts/revoke", accounts.account_revoke, frozenset({SEC}), ("POST",)),
    Page("/accounts/reset", accounts.account_reset, frozenset({SEC}), ("POST",)),
    Page("/accounts/disable", accounts.account_disable, frozenset({SEC}), ("POST",)),
    Page("/accounts/enable", accounts.account_enable, frozenset({SEC}), ("POST",)),
    Page("/accounts/unlock", accounts.account_unlock, frozenset({SEC}), ("POST",)),
    Page("/settings", settings.settings, frozenset({SYS}), nav="nav_settings"),
    Page("/settings", settings.settings_save, frozenset({SYS}), ("POST",)),
    Page("/audit", audit.audit_log, frozenset({AUD}), nav="nav_audit"),
    Page("/reports", reports.reports, frozenset({AUD}), nav="nav_reports"),
    Page("/reports/generate", reports.report_generate, frozenset({AUD}), ("POST",)),
    Page("/reports/{rid:id}", reports.report_download, frozenset({AUD})),
    Page("/audit/verify", audit.audit_verify, frozenset({AUD}), ("POST",)),
    Page("/password", session.password, ALL, ("GET", "POST")),
    Page("/logout", session.logout, ALL, ("POST",)),
]

PUBLIC: list[PublicPage] = [
    ("/login", session.login, ("GET", "POST")),
    ("/lang", session.switch_lang, ("GET",)),
    ("/metrics", metrics.metrics_text, ("GET",)),
]
