"""The register of cleared staff (涉密人员台账): ``policies/subjects.toml``.

One table per person, keyed by login name::

    [people.wang]
    display = "王伟"
    uid = 1001
    department = "finance"
    roles = ["analyst"]              # each becomes the Casbin role "role:analyst"
    clearance = "重要"               # 核心/重要/一般 (core/important/general); absent: none
    trained_until = 2026-12-31       # 保密培训 valid through this day
    status = "active"                # active, leaving (离职审查 under way), left
    apps = { "绝密" = ["/usr/bin/wps"] }   # TOML needs non-ASCII keys quoted

An approved application is matched by the identity of the file its path names when the
file guard loads the policy (``baomi.policy.apps``), not by the path a process shows;
interpreters and the dynamic loader are refused here by name.

This file is the only place that puts people in roles; ``policy.csv`` holds the role
hierarchy and the rules. A uid not listed here (root included) is an unknown user and is
granted nothing in protected trees.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from baomi.labels import LEVEL_NAMES, parse_level, parse_until
from baomi.policy.apps import interpreter_name
from baomi.policy.errors import PolicyError
from baomi.policy.predicates import NEVER, STATUSES, UNKNOWN_STATUS, Requester

#: Person names: Linux login names, so they can appear in ``user:NAME`` scope entries.
NAME_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
#: Department and role names: whatever fits in a ``dept:``/``role:`` scope entry.
TAG_RE = re.compile(r"[^,\s:()\[\]]{1,64}")
MAX_UID = 2**32 - 2  # (uid_t)-1 means "no uid"

CLEARANCES: Mapping[str, int] = {
    "核心": 3, "重要": 2, "一般": 1, "无": 0,
    "core": 3, "important": 2, "general": 1, "none": 0,
}  # fmt: skip
CLEARANCE_NAMES: Mapping[int, str] = {3: "核心", 2: "重要", 1: "一般", 0: "无"}

_PERSON_KEYS = frozenset(
    {"display", "uid", "department", "roles", "clearance", "trained_until", "status", "apps"}
)
_TOML_POS_RE = re.compile(r"\(at line (\d+), column \d+\)")


@dataclass(frozen=True, slots=True)
class Person:
    """One entry of the register."""

    name: str
    uid: int
    department: str
    roles: tuple[str, ...]  # bare role names, e.g. "analyst"
    clearance: int  # 3 核心, 2 重要, 1 一般, 0 none
    trained_until: date | None
    status: str
    apps: Mapping[int, frozenset[str]]
    display: str = ""
    line: int = 0  # line of the person's table in subjects.toml
    #: scope entries that name this person: ``user:``, ``dept:`` and ``role:`` entries
    keys: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # computed once: every cold decision hands it to the scope check
        keys = {f"user:{self.name}", f"dept:{self.department}"}
        keys.update(f"role:{r}" for r in self.roles)
        object.__setattr__(self, "keys", frozenset(keys))

    @property
    def casbin_roles(self) -> tuple[str, ...]:
        """The Casbin role names the person holds directly (``role:NAME``)."""
        return tuple(f"role:{r}" for r in self.roles)

    def requester(self, exe: str, today: date) -> Requester:
        """The person as the subject of a request made with ``exe`` on ``today``."""
        return Requester(
            name=self.name,
            uid=self.uid,
            clearance=self.clearance,
            dept=self.department,
            status=self.status,
            trained_until=self.trained_until or NEVER,
            keys=self.keys,
            apps=self.apps,
            exe=exe,
            today=today,
        )


def unknown_requester(uid: int, exe: str, today: date) -> Requester:
    """A uid nobody listed: no clearance, no roles, status ``unknown``."""
    return Requester(
        name=f"uid:{uid}",
        uid=uid,
        clearance=0,
        dept="",
        status=UNKNOWN_STATUS,
        trained_until=NEVER,
        keys=frozenset(),
        apps={},
        exe=exe,
        today=today,
    )


class _Locator:
    """Finds the line of a person's table or key, for error messages (best effort)."""

    _HEADER = re.compile(r"\s*\[\s*people\s*\.\s*(?:\"([^\"]+)\"|'([^']+)'|([^\s\].]+))\s*\]")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        # one pass over the headers: looking each person up by scanning is quadratic
        self.headers: dict[str, int] = {}
        for n, line in enumerate(self.lines, 1):
            m = self._HEADER.match(line)
            if m:
                self.headers.setdefault(next(g for g in m.groups() if g is not None), n)

    def _find(self, pattern: str, start: int = 0) -> int:
        rx = re.compile(pattern)
        for i in range(start, len(self.lines)):
            if rx.match(self.lines[i]):
                return i + 1
        return 0

    def person(self, name: str) -> int:
        if name in self.headers:
            return self.headers[name]
        q = re.escape(name)
        return self._find(rf"\s*(?:people\s*\.\s*)?(?:{q}|\"{q}\")\s*=")

    def key(self, name: str, key: str) -> int:
        start = self.person(name)
        if not start:
            return 0
        q = re.escape(key)
        for i in range(start, len(self.lines)):  # lines after the header, 0-based index
            text = self.lines[i]
            if re.match(r"\s*\[", text) and not re.match(
                rf"\s*\[\s*people\s*\.\s*\"?{re.escape(name)}\"?\s*\.", text
            ):
                break
            if re.match(rf"\s*(?:{q}|\"{q}\")\s*[=.]", text) or re.match(
                rf"\s*\[\s*people\s*\.\s*\"?{re.escape(name)}\"?\s*\.\s*{q}\s*\]", text
            ):
                return i + 1
        return start


@dataclass(frozen=True, slots=True)
class Subjects:
    """The loaded register: people by uid and by name."""

    path: str
    people: tuple[Person, ...]
    by_uid: Mapping[int, Person] = field(init=False, repr=False, compare=False)
    by_name: Mapping[str, Person] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # frozen: the indexes are set once here, through object.__setattr__
        object.__setattr__(self, "by_uid", {p.uid: p for p in self.people})
        object.__setattr__(self, "by_name", {p.name: p for p in self.people})

    def find(self, who: str) -> Person | None:
        """A person by login name, by uid (``1001``) or by ``uid:1001``."""
        text = who.strip()
        if text.startswith("uid:"):
            text = text[4:]
        if text.isdigit():
            return self.by_uid.get(int(text))
        return self.by_name.get(text)

    def requester(self, uid: int, exe: str, today: date) -> Requester:
        """The subject of a request by ``uid`` (unknown uids included)."""
        person = self.by_uid.get(uid)
        if person is None:
            return unknown_requester(uid, exe, today)
        return person.requester(exe, today)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Subjects:
        """Read and check a subjects file; PolicyError (file, line, reason) when wrong."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise PolicyError(p, 0, f"cannot read the register of cleared staff: {e}") from e
        return cls.parse(text, str(p))

    @classmethod
    def parse(cls, text: str, path: str = "subjects.toml") -> Subjects:
        """Check the text of a subjects file (see the module docstring for the layout)."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise _toml_error(path, text, e) from e
        loc = _Locator(text)
        extra = sorted(set(doc) - {"people"})
        if extra:
            raise PolicyError(
                path,
                loc._find(rf"\s*\[?\s*{re.escape(extra[0])}\b"),
                f"unknown top-level key {extra[0]!r}: people go in [people.NAME] tables",
            )
        table = doc.get("people")
        if not isinstance(table, dict) or not table:
            raise PolicyError(
                path,
                0,
                "no people: list the cleared staff as [people.NAME] tables "
                "(an empty register would grant nothing to anyone)",
            )
        people: list[Person] = []
        seen_uids: dict[int, str] = {}
        for name, entry in table.items():
            person = _person(path, loc, name, entry)
            if person.uid in seen_uids:
                raise PolicyError(
                    path,
                    loc.key(name, "uid"),
                    f"uid {person.uid} of {name!r} is also the uid of "
                    f"{seen_uids[person.uid]!r}: each uid belongs to one person",
                )
            seen_uids[person.uid] = name
            people.append(person)
        return cls(path=path, people=tuple(people))


def _toml_error(path: str, text: str, e: tomllib.TOMLDecodeError) -> PolicyError:
    msg = str(e)
    m = _TOML_POS_RE.search(msg)
    line = int(m.group(1)) if m else len(text.splitlines())
    reason = f"not valid TOML: {_TOML_POS_RE.sub('', msg).strip()}"
    lines = text.splitlines()
    if m and 0 < line <= len(lines) and not lines[line - 1].isascii():
        reason += ' (TOML keys that are not plain ASCII must be quoted: "绝密" = [...])'
    return PolicyError(path, line, reason)


def _person(path: str, loc: _Locator, name: str, entry: Any) -> Person:
    line = loc.person(name)

    def fail(key: str | None, reason: str) -> PolicyError:
        return PolicyError(path, loc.key(name, key) if key else line, f"{name}: {reason}")

    if not NAME_RE.fullmatch(name):
        raise fail(None, "a person's name must be a login name (a-z, 0-9, _ . -; 32 at most)")
    if not isinstance(entry, dict):
        raise fail(None, "write each person as a [people.NAME] table")
    unknown = sorted(set(entry) - _PERSON_KEYS)
    if unknown:
        raise fail(
            unknown[0], f"unknown key {unknown[0]!r}; known keys: {', '.join(sorted(_PERSON_KEYS))}"
        )

    uid = entry.get("uid")
    if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid <= MAX_UID:
        raise fail("uid" if "uid" in entry else None, "uid = N is required (0 to 4294967294)")

    dept = entry.get("department")
    if not isinstance(dept, str) or not TAG_RE.fullmatch(dept):
        raise fail(
            "department" if "department" in entry else None,
            'department = "NAME" is required (1 to 64 characters, no spaces, commas or colons)',
        )

    raw_roles = entry.get("roles", [])
    if not isinstance(raw_roles, list):
        raise fail("roles", 'roles must be a list: roles = ["analyst"]')
    roles: list[str] = []
    for r in raw_roles:
        bare = r.removeprefix("role:") if isinstance(r, str) else ""
        if not TAG_RE.fullmatch(bare):
            raise fail("roles", f"role {r!r} must be 1 to 64 characters without spaces or commas")
        if bare not in roles:
            roles.append(bare)

    clearance = 0
    if "clearance" in entry:
        raw = entry["clearance"]
        word = str(raw).strip().lower()
        if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw <= 3:
            clearance = raw
        elif isinstance(raw, str) and word in CLEARANCES:
            clearance = CLEARANCES[word]
        else:
            raise fail(
                "clearance", f"clearance {raw!r} must be 核心/重要/一般 or core/important/general"
            )

    trained: date | None = None
    if "trained_until" in entry:
        raw = entry["trained_until"]
        if isinstance(raw, date) and not isinstance(raw, datetime):
            trained = raw
        elif isinstance(raw, str):
            try:
                trained = parse_until(raw)
            except ValueError:
                trained = None
        if trained is None:
            raise fail("trained_until", "trained_until must be a date: trained_until = 2026-12-31")

    status = entry.get("status", "active")
    if status not in STATUSES:
        raise fail("status", f"status {status!r} must be one of {', '.join(STATUSES)}")

    apps: dict[int, frozenset[str]] = {}
    raw_apps = entry.get("apps", {})
    if not isinstance(raw_apps, dict):
        raise fail("apps", 'apps must be a table: apps = { "绝密" = ["/usr/bin/wps"] }')
    for lvl_word, paths in raw_apps.items():
        try:
            lvl = parse_level(lvl_word)
        except ValueError as e:
            raise fail("apps", f"apps: {e}") from None
        if lvl == 0:
            raise fail("apps", f"apps for {lvl_word!r}: unclassified files need no approval")
        if lvl in apps:
            raise fail("apps", f"apps lists {LEVEL_NAMES[lvl]} twice")
        if not isinstance(paths, list) or not all(isinstance(x, str) for x in paths):
            raise fail("apps", f"apps for {lvl_word!r} must be a list of executable paths")
        for exe in paths:
            if not exe.startswith("/") or os.path.normpath(exe) != exe or "\x00" in exe:
                raise fail(
                    "apps", f"application {exe!r} must be an absolute, normalised executable path"
                )
            interpreter = interpreter_name(exe)
            if interpreter is not None:
                raise fail(
                    "apps",
                    f"application {exe!r} is {interpreter}: interpreters are not approved "
                    "applications (one runs whatever script or program it is given); "
                    "approve the program itself",
                )
        apps[lvl] = frozenset(paths)

    display = entry.get("display", "")
    if not isinstance(display, str) or len(display) > 64:
        raise fail("display", "display must be a name of at most 64 characters")

    return Person(
        name=name,
        uid=uid,
        department=dept,
        roles=tuple(roles),
        clearance=clearance,
        trained_until=trained,
        status=status,
        apps=apps,
        display=display,
        line=line,
    )
