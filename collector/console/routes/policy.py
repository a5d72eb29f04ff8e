"""The policy (secadmin): the editor with validation and diff, publishing to every agent,
the version history and rollback."""

from __future__ import annotations

import difflib

from starlette.responses import HTMLResponse, RedirectResponse, Response

from collector.console.app import Ctx, form_id
from collector.console.errors import ConsoleError
from collector.console.eventview import format_time
from collector.ingest import now_us
from collector.policy import PolicyProblem, bundle_digest, validate
from collector.store.base import PolicyVersionRow


def current_files(c: Ctx) -> dict[str, bytes]:
    current = c.console.backend.policy.current
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
    name = c.account.name
    version = bundle_digest(files)
    created = now_us()
    number = await c.run(c.store.add_policy_version, version, name, created, note[:500], files)
    await c.console.backend.policy.publish(files, author=name)
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
    current = c.console.backend.policy.current
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
    return _policy_page(c, current_files(c))


async def policy_preview(c: Ctx) -> Response:
    """Validation and a diff against what is in force, without saving."""
    files, note = await _edited_files(c)
    problems = await c.run(validate, files)
    return _policy_page(c, files, note=note, problems=problems, diff=_diff(current_files(c), files))


async def policy_save(c: Ctx) -> Response:
    """Save and push; a policy that does not load is refused with the reason."""
    files, note = await _edited_files(c)
    if files == current_files(c):
        raise ConsoleError(c.t("policy_unchanged"))
    result = await publish(c, files, note=note or c.t("policy_edit"), action="policy_change")
    if isinstance(result, list):
        return _policy_page(
            c, files, note=note, problems=result, diff=_diff(current_files(c), files), status=422
        )
    return RedirectResponse("/policy/history", status_code=303)


async def policy_history(c: Ctx) -> Response:
    """Every published version with author and note."""
    versions = await c.run(c.store.policy_versions)
    current = c.console.backend.policy.current
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
