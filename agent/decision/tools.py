"""Operator tools over a policy set: explain one decision, run a table of expected ones.

Both decide with the engine and also ask reference Casbin, so a disagreement between the
two (which the differential tests rule out) could never go unnoticed in the field.
"""

from __future__ import annotations

import csv
import os
import pwd
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from baomi.clitext import lang, pad, t
from baomi.labels import (
    Label,
    invalid_label,
    parse_label_id,
    parse_level,
    parse_scope,
    parse_until,
    policy_path,
    read_label,
)
from baomi.policy.errors import PolicyError
from baomi.policy.policyset import ACTIONS, ENFORCED_BY, PolicySet
from baomi.policy.predicates import Resource, level
from baomi.policy.subjects import CLEARANCE_NAMES

from agent.decision.engine import Engine, Verdict

_SPEC_KEYS = frozenset({"path", "level", "until", "scope", "id", "problem"})
#: Cells the labels of explain's lines are padded to: the Chinese labels all fit; English
#: keeps the layout scripts have read since before Chinese ("enforced:" sticks out).
LABEL_CELLS = {"en": 8, "zh": 10}


def resolve_uid(policyset: PolicySet, user: str) -> int:
    """The uid of a login name (subjects.toml first, then the system), ``N`` or ``uid:N``."""
    person = policyset.subjects.find(user)
    if person is not None:
        return person.uid
    text = user.strip().removeprefix("uid:")
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise PolicyError(
            policyset.subjects.path,
            0,
            f"no person or system user {user!r}: give a login name or a uid",
        ) from None


def _casbin_verdict(enforcer: Any, policyset: PolicySet, request: tuple[Any, ...]) -> Verdict:
    uid, exe, path, label, action, today = request
    allowed, explain = enforcer.enforce_ex(
        *policyset.request(uid=uid, exe=exe, path=path, label=label, action=action, today=today)
    )
    rule = ", ".join(["p", *explain]) if explain else ""
    return Verdict(bool(allowed), rule, "")


def enforcement(
    engine: Engine,
    *,
    uid: int,
    path: str,
    home: str,
    label: Label | None,
    action: str,
    verdict: Verdict,
    today: date,
    key: bytes | None = None,
) -> tuple[bool | None, str]:
    """What the kernel of an agent's host does with this access, and by which mechanism.

    Returns (allowed, a line saying how) -- allowed is None when nothing enforces the
    action. read and execute are the file guard's fanotify decision (``verdict``);
    write and delete are the DAC the agent keeps, which knows uids, not programs, and
    for delete is the directory's ACL (see ``with_pre_content`` for writes on hosts
    with pre-content events).
    """
    mechanism = ENFORCED_BY.get(action, "")
    if action == "export":
        return verdict.allow, (
            "export: decided by fanotify when a process that has read a labelled file "
            "opens a file for writing in a place an export rule names (a mount there), at "
            "the level of what it read; recorded (a write it opened before its read is "
            "recorded, not refused)"
        )
    if mechanism == "fanotify":
        return verdict.allow, f"{action}: enforced by fanotify, decided per open and recorded"
    if not mechanism:
        return None, f"{action}: not enforced on this host; the policy's answer is advisory"
    if uid == 0:
        return True, f"{action}: DAC does not bind root (CAP_DAC_OVERRIDE); not refused"
    if action == "write":
        target, target_label, perm = path, label, "rw-"
        target_home = home
    else:  # delete: an entry goes when its directory is writable (create, rename, link too)
        target, perm = str(Path(path).parent), "rwx"
        try:
            target_label = read_label(target, key)
        except OSError:
            target_label = None
        target_home = policy_path(target_label, target)
    holders = engine.holders(path=target_home, label=target_label, action=action, today=today)
    on = f" on the directory {target}" if action == "delete" else ""
    if uid not in holders:
        refused = f"{action}: enforced by DAC{on} (no ACL entry for uid {uid})"
        return False, f"{refused}; a refusal is recorded"
    how = f"{action}: enforced by DAC{on} (ACL user:{uid}:{perm}); others' refusals are recorded"
    if holders[uid]:
        how += f"; any program of uid {uid} (the policy needs {holders[uid]}: DAC cannot tell)"
    return True, how


def with_pre_content(
    enforced: tuple[bool | None, str], *, action: str, label: Label | None, verdict: Verdict
) -> tuple[bool | None, str]:
    """``enforcement()`` on a host with pre-content events: a write of a labelled file
    must pass the file guard's decision as well as DAC."""
    kernel, how = enforced
    if action != "write" or label is None:
        return kernel, how
    decided = "decided per write by fanotify pre-content events and recorded"
    return bool(kernel) and verdict.allow, f"{how}; {decided}"


def explain(
    policyset: PolicySet,
    user: str,
    path: str,
    action: str,
    exe: str | None = None,
    *,
    today: date | None = None,
    key: bytes | None = None,
    pre_content: bool = False,
    language: str | None = None,
) -> str:
    """A few lines saying what the agent decides for this access, and why, labelled in
    ``language`` (default: the environment's, :func:`baomi.clitext.lang`).

    The label is read from ``path`` when the file exists (its seal checked with ``key``
    when one is given, as the agent checks it); otherwise the file counts as
    unlabelled (unclassified). An ``export`` is decided at the place written to, at
    the level of the data: ``path`` may then be a label spec (``parse_target``), e.g.
    ``/media/usb/x;level=机密``.
    """
    day = today or date.today()
    uid = resolve_uid(policyset, user)
    label: Label | None = None
    label_note = ""
    given = False
    if action == "export" and ";" in path:
        try:
            path, label, given = parse_target(path)
        except ValueError as e:
            raise PolicyError(path, 0, str(e)) from e
    if not given:
        try:
            label = read_label(path, key)
        except OSError as e:
            label_note = f" (no file: {e.strerror}; decided as unlabelled)"
    if action == "export" and not given:
        label_note += (
            "; an export is asked only of a process that read a labelled file: give the "
            "level of what it read as PATH;level=LEVEL"
        )
    engine = Engine(policyset)
    # Rules match where the file was labelled; an export, where the data goes.
    home = path if action == "export" else policy_path(label, path)
    verdict = engine.decide_cold(
        uid=uid, exe=exe or "", path=home, label=label, action=action, today=day
    )
    reference = _casbin_verdict(
        policyset.reference_enforcer(), policyset, (uid, exe or "", home, label, action, day)
    )

    person = policyset.subjects.by_uid.get(uid)
    if person is None:
        who = f"uid {uid}: not in subjects.toml (unknown user; root is not exempt)"
    else:
        trained = person.trained_until.isoformat() if person.trained_until else "never"
        display = f" {person.display}" if person.display else ""
        who = (
            f"{person.name}{display} (uid {uid}), dept {person.department}, "
            f"roles {', '.join(person.roles) or '-'}; clearance "
            f"{CLEARANCE_NAMES[person.clearance]} ({person.clearance}), trained until "
            f"{trained}, status {person.status}"
        )
    if label is None:
        what = "unlabelled: unclassified" + label_note
    else:
        what = f"{label.describe()}; level today {level(Resource.of(home, label), day)}"
    agree = (reference.allow, reference.rule) == (verdict.allow, verdict.rule)
    casbin = "allow" if reference.allow else "deny"
    enforced = enforcement(
        engine,
        uid=uid,
        path=path,
        home=home,
        label=label,
        action=action,
        verdict=verdict,
        today=day,
        key=key,
    )
    if pre_content:
        enforced = with_pre_content(enforced, action=action, label=label, verdict=verdict)
    kernel, how = enforced
    # The first word is what the host's kernel does, never a decision it does not make.
    language = language or lang()
    word = t(
        "explain.not_enforced"
        if kernel is None
        else ("explain.allow" if kernel else "explain.deny"),
        language,
    )
    policy_word = "allows" if verdict.allow else "denies"

    def line(label: str, value: str) -> str:
        # Labels padded in terminal cells: Chinese labels line up with each other too.
        name = t(f"explain.{label}", language) + t("explain.label_end", language)
        return f"  {pad(name, LABEL_CELLS[language])} {value}"

    lines = [
        f"{word}  {action} {path}",
        line("who", who),
        line("with", exe or "(executable not given)"),
        *([line("home", f"{home} (the rules match the file's home)")] if home != path else []),
        line("label", what),
        line("enforced", how),
        *(
            [
                line(
                    "note",
                    f"the policy {policy_word} it ({'with ' + exe if exe else 'any program'})",
                )
            ]
            if kernel is not None and kernel != verdict.allow
            else []
        ),
        line("reason", verdict.reason),
        line("rule", verdict.rule or "(none)"),
        line(
            "casbin", f"{casbin}, {'agrees' if agree else 'DISAGREES: ' + (reference.rule or '')}"
        ),
        line("policy", f"{policyset.version[:12]} from {policyset.directory}, day {day}"),
    ]
    if action not in ACTIONS:
        lines.insert(1, line("note", f"{action!r} is not an action ({', '.join(ACTIONS)})"))
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A row of a policy test table whose decision is not the expected one."""

    file: str
    line: int
    row: str
    expected: str
    verdict: Verdict
    note: str = ""

    def __str__(self) -> str:
        got = "allow" if self.verdict.allow else "deny"
        rule = f"; rule {self.verdict.rule}" if self.verdict.rule else ""
        note = f" [{self.note}]" if self.note else ""
        return (
            f"{self.file}:{self.line}: {self.row}: expected {self.expected}, got {got} "
            f"({self.verdict.reason}{rule}){note}"
        )


def parse_target(spec: str) -> tuple[str, Label | None, bool]:
    """``PATH`` or ``PATH;level=机密;scope=dept:a|user:b;until=2030-01-01;id=X``.

    Returns (path, label, whether the label was given). ``path=`` may be one of the
    ``key=value`` items instead of the first item; ``problem=TEXT`` gives an invalid
    (fail-closed) label; scope entries may be separated by ``|`` to avoid CSV quoting.
    """
    items = [s.strip() for s in spec.split(";") if s.strip()]
    values: dict[str, str] = {}
    path = ""
    for n, item in enumerate(items):
        if n == 0 and item.startswith("/"):
            path = item
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in _SPEC_KEYS:
            raise ValueError(f"{item!r} is not KEY=VALUE with KEY one of {sorted(_SPEC_KEYS)}")
        values[key] = value.strip()
    path = values.pop("path", path)
    if not path.startswith("/"):
        raise ValueError("the target needs an absolute path (first item or path=...)")
    if not values:
        return path, None, False
    if "problem" in values:
        return path, invalid_label(values["problem"] or "invalid"), True
    if "level" not in values:
        raise ValueError("a label spec needs level=...")
    label = Label(
        level=parse_level(values["level"]),
        until=parse_until(values["until"]) if "until" in values else None,
        scope=parse_scope(values.get("scope", "").replace("|", ",")),
        label_id=parse_label_id(values["id"]) if "id" in values else None,
    )
    return path, label, True


def policy_test(
    policyset: PolicySet,
    table_csv_path: str | Path,
    *,
    today: date | None = None,
    key: bytes | None = None,
    load_key: Callable[[], bytes] | None = None,
) -> list[Mismatch]:
    """Decide every row of a test table; the rows whose decision differs from expected.

    Rows: ``user, path-or-label-spec, action, allow|deny[, exe[, YYYY-MM-DD]]``; ``#``
    comments, blank lines and a header row starting with ``user`` are skipped. Labels
    read from files have their seals checked with ``key``, or with what ``load_key``
    gives when the first row names an existing file (it raises when it cannot). A row
    where the engine and reference Casbin disagree is a mismatch too. A malformed row
    raises PolicyError with its line.
    """
    table = Path(table_csv_path)
    try:
        text = table.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(table, 0, f"cannot read the test table: {e}") from e
    engine = Engine(policyset)
    enforcer = policyset.reference_enforcer()
    out: list[Mismatch] = []
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        row = [c.strip() for c in next(csv.reader([raw], skipinitialspace=True))]
        if row[0].lower() == "user":
            continue
        if not 4 <= len(row) <= 6:
            raise PolicyError(
                table, n, "a row is: user, path-or-label-spec, action, allow|deny[, exe[, date]]"
            )
        user, target, action, expected = row[:4]
        exe = row[4] if len(row) > 4 else ""
        if expected not in ("allow", "deny"):
            raise PolicyError(table, n, f"expected {expected!r} must be allow or deny")
        if action not in ACTIONS:
            raise PolicyError(table, n, f"action {action!r} must be one of {', '.join(ACTIONS)}")
        try:
            day = parse_until(row[5]) if len(row) > 5 and row[5] else (today or date.today())
            path, label, given = parse_target(target)
        except ValueError as e:
            raise PolicyError(table, n, str(e)) from e
        if not given:
            if key is None and load_key is not None and os.path.lexists(path):
                key = load_key()
            try:
                label = read_label(path, key)
            except OSError:
                label = None  # no such file: unlabelled
        uid = resolve_uid(policyset, user)
        if action != "export":  # an export is decided at the place written to
            path = policy_path(label, path)
        verdict = engine.decide_cold(
            uid=uid, exe=exe, path=path, label=label, action=action, today=day
        )
        reference = _casbin_verdict(enforcer, policyset, (uid, exe, path, label, action, day))
        note = ""
        if (reference.allow, reference.rule) != (verdict.allow, verdict.rule):
            note = f"engine and Casbin disagree: Casbin {reference.allow} {reference.rule}"
        wrong = verdict.allow != (expected == "allow")
        if wrong and not note and not ENFORCED_BY[action]:
            note = f"{action} is not enforced on this host: the policy's answer only"
        if wrong or note:
            out.append(Mismatch(str(table), n, raw.strip(), expected, verdict, note))
    return out
