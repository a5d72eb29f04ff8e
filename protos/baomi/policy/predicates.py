"""What the Casbin matcher sees of a request, and the functions it calls.

``r.sub`` is a :class:`Requester` (the person behind a uid, with the executable and the
day of the request), ``r.obj`` a :class:`Resource` (a path and its label). The model in
``policies/model.conf`` reads their attributes and calls the functions in
:data:`FUNCTIONS`; the reference Casbin enforcer registers exactly these, and the fast
engine calls the same Python functions, so both sides share one definition of each
domain rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from baomi.labels import Label

#: Status of a person; only ``active`` people are granted anything.
STATUSES = ("active", "leaving", "left")
#: Status given to a uid nobody listed in subjects.toml (root included).
UNKNOWN_STATUS = "unknown"
#: Training date of a person never trained: earlier than any request day.
NEVER = date.min


@dataclass(frozen=True, slots=True)
class Requester:
    """The subject of a request: who (resolved from the uid), with what, on which day."""

    name: str  # subjects.toml name; "uid:N" for a uid nobody listed
    uid: int
    clearance: int  # 3 核心, 2 重要, 1 一般, 0 none
    dept: str
    status: str  # active, leaving, left; "unknown" for an unlisted uid
    trained_until: date  # NEVER when not trained
    #: need-to-know identities: user:NAME, dept:DEPT and role:ROLE for each direct role
    keys: frozenset[str]
    #: approved applications per level (3 绝密 ...): level -> absolute executable paths
    apps: Mapping[int, frozenset[str]]
    exe: str  # the executable opening the file ("" when unknown)
    today: date


@dataclass(frozen=True, slots=True)
class Resource:
    """The object of a request: a path and the label its file carries."""

    path: str
    level: int  # 0 when unlabelled; 3 for an invalid (fail-closed) label
    until: date | None
    scope: tuple[str, ...]
    valid: bool
    problem: str = field(default="")

    @classmethod
    def of(cls, path: str, label: Label | None) -> Resource:
        """The resource for ``path`` carrying ``label`` (None: unlabelled)."""
        if label is None:
            return cls(path=path, level=0, until=None, scope=(), valid=True)
        return cls(
            path=path,
            level=label.level,
            until=label.until,
            scope=label.scope,
            valid=label.problem is None,
            problem=label.problem or "",
        )


def level(obj: Resource, today: date) -> int:
    """``level(r.obj, r.sub.today)``: the file's level in force today (0 once expired)."""
    if obj.valid and obj.until is not None and obj.until < today:
        return 0
    return obj.level


def in_scope(sub: Requester, obj: Resource) -> bool:
    """``inScope(r.sub, r.obj)``: empty scope admits anyone; else one identity is listed."""
    return not obj.scope or not sub.keys.isdisjoint(obj.scope)


def app_approved(sub: Requester, lvl: int) -> bool:
    """``appApproved(r.sub, lvl)``: the executable may open files of this level.

    绝密 (3) needs the executable in the person's approved list; for lower levels a list,
    when the person has one, restricts too, and no list means any application.
    """
    approved = sub.apps.get(lvl)
    if lvl >= 3:
        return approved is not None and sub.exe in approved
    return approved is None or sub.exe in approved


def _level_fn(*args: Any) -> int:
    return level(args[0], args[1])


def _in_scope_fn(*args: Any) -> bool:
    return in_scope(args[0], args[1])


def _app_approved_fn(*args: Any) -> bool:
    return app_approved(args[0], args[1])


#: Name in the matcher -> function. Registered on the reference enforcer with
#: ``add_function``; keep in step with the matcher in policies/model.conf.
FUNCTIONS: Mapping[str, Callable[..., Any]] = {
    "level": _level_fn,
    "inScope": _in_scope_fn,
    "appApproved": _app_approved_fn,
}
