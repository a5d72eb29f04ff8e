"""The fast decision engine: reference Casbin's answers without Casbin's linear scan.

Reference pycasbin evaluates the matcher of ``policies/model.conf`` against every rule
of policy.csv for every request. The engine compiles the policy set once instead:

* each person's role closure (the names ``g(name, p.sub)`` is true for, following at
  most as many links as Casbin's role manager does);
* per person and action, the deny rules in policy order and the allow rules in reverse
  policy order, each with its glob precompiled exactly as Casbin's ``globMatch``;
* the attribute part of the matcher (label validity, status, level, training,
  clearance, scope, application) evaluated once per request with the same functions
  the model registers, since it does not depend on the rule.

Casbin's effect ``some(allow) && !some(deny)`` then gives: the first matching deny rule
decides (Casbin stops there); otherwise the request is allowed when an allow rule
matches on subject, path and action and the attribute part holds, and Casbin's explain
names the *last* such allow rule. The engine reports the same rule.

:meth:`Engine.decide` caches verdicts by everything they depend on; the cache belongs
to the compiled policy, so a reload (new ``version``) starts an empty one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from baomi.labels import LEVEL_NAMES, Label
from baomi.policy.errors import PolicyError
from baomi.policy.policyset import (
    ACTIONS,
    MAX_HIERARCHY_LEVEL,
    PolicySet,
    Rule,
    casbin_glob,
)
from baomi.policy.predicates import Requester, Resource, app_approved, in_scope, level
from baomi.policy.subjects import Person

__all__ = ["Engine", "PolicyError", "PolicySet", "Verdict"]

_logger = logging.getLogger(__name__)

DEFAULT_CACHE_ENTRIES = 65_536  # verdicts kept per policy version (~200 bytes each)


@dataclass(frozen=True, slots=True)
class Verdict:
    """An access decision: ``rule`` is the policy line that decided ("" when none did)."""

    allow: bool
    rule: str
    reason: str


@dataclass(frozen=True, slots=True)
class _Compiled:
    rule: Rule
    text: str
    match: Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class _Entry:
    """What the engine needs of one person, precomputed."""

    person: Person
    deny: Mapping[str, tuple[_Compiled, ...]]  # action -> deny rules in policy order
    allow: Mapping[str, tuple[_Compiled, ...]]  # action -> allow rules, reverse order


class _State:
    """One compiled policy version and its verdict cache."""

    def __init__(self, policyset: PolicySet) -> None:
        self.policyset = policyset
        self.version = policyset.version
        self.cache: dict[Hashable, Verdict] = {}
        matchers: dict[str, Callable[[str], bool]] = {}
        compiled: list[_Compiled] = []
        for rule in policyset.rules:
            if rule.obj not in matchers:
                matchers[rule.obj] = casbin_glob(rule.obj)
            compiled.append(_Compiled(rule, rule.text, matchers[rule.obj]))
        self.patterns = tuple(matchers.values())  # every path pattern, once

        by_sub_act: dict[tuple[str, str], list[_Compiled]] = {}
        for c in compiled:
            by_sub_act.setdefault((c.rule.sub, c.rule.act), []).append(c)

        parents: dict[str, list[str]] = {}
        for link in policyset.role_links():
            parents.setdefault(link.member, []).append(link.role)

        self.people: dict[int, _Entry] = {}
        for person in policyset.subjects.people:
            names = _closure(person.name, parents)
            deny: dict[str, tuple[_Compiled, ...]] = {}
            allow: dict[str, tuple[_Compiled, ...]] = {}
            for act in ACTIONS:
                mine = [c for n in names for c in by_sub_act.get((n, act), ())]
                # a rule reachable through two roles is still one rule
                unique = {c.rule.index: c for c in mine}
                ordered = sorted(unique.values(), key=lambda c: c.rule.index)
                d = tuple(c for c in ordered if c.rule.eft == "deny")
                a = tuple(c for c in reversed(ordered) if c.rule.eft == "allow")
                if d:
                    deny[act] = d
                if a:
                    allow[act] = a
            self.people[person.uid] = _Entry(person, deny, allow)


def _closure(name: str, parents: Mapping[str, list[str]]) -> frozenset[str]:
    """Names ``g(name, X)`` is true for: ``name`` and roles within Casbin's link depth.

    Casbin's role manager (``has_link``) searches breadth first and gives up after
    ``max_hierarchy_level`` levels, the user itself being the first.
    """
    seen = {name}
    frontier = [name]
    for _ in range(MAX_HIERARCHY_LEVEL - 1):
        nxt = [r for n in frontier for r in parents.get(n, ()) if r not in seen]
        if not nxt:
            break
        seen.update(nxt)
        frontier = list(dict.fromkeys(nxt))
    return frozenset(seen)


def refusal(sub: Requester, obj: Resource, action: str) -> str | None:  # noqa: PLR0911 - one per condition
    """Why the attribute part of the matcher is false for this request (None: it holds).

    Mirrors, in order, the matcher's
    ``r.obj.valid && r.sub.status == "active" && (level(...) == 0 || (training &&
    clearance && inScope && appApproved))``.
    """
    if not obj.valid:
        return f"invalid label: {obj.problem}"
    if sub.status != "active":
        return f"status {sub.status}"
    lvl = level(obj, sub.today)
    if lvl == 0:
        return None
    if not sub.trained_until >= sub.today:
        if sub.trained_until == date.min:
            return "not trained (保密培训)"
        return f"training expired {sub.trained_until.isoformat()}"
    if not sub.clearance >= lvl:
        up = "read up: " if action == "read" else ""
        return f"{up}clearance {sub.clearance} < level {lvl}"
    if not in_scope(sub, obj):
        return "outside need-to-know scope"
    if not app_approved(sub, lvl):
        return f"application {sub.exe or '(unknown)'} not approved for {LEVEL_NAMES[lvl]}"
    return None


class Engine:
    """Decides (uid, executable, path, label, action) exactly as reference Casbin would."""

    def __init__(self, policyset: PolicySet, *, cache_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        self._cache_entries = cache_entries
        self._lock = threading.Lock()  # serialises cache eviction, not lookups
        self._state = _State(policyset)
        self._day = date.min
        self._day_ends = 0.0  # time.time() at which _day must be recomputed

    @property
    def version(self) -> str:
        """Digest of the policy files in force."""
        return self._state.version

    @property
    def policyset(self) -> PolicySet:
        """The policy set in force."""
        return self._state.policyset

    def reload(self, policyset: PolicySet) -> None:
        """Enforce a new (already checked) policy set; its verdict cache starts empty.

        Load with :meth:`PolicySet.load` first: when that raises PolicyError the engine
        keeps enforcing the last good set.
        """
        state = _State(policyset)
        old = self._state.version
        self._state = state  # one reference swap: a decision in flight uses either set
        _logger.info("policy %s in force (was %s)", state.version[:12], old[:12])

    def _today(self) -> date:
        now = time.time()
        if now >= self._day_ends:  # date.today() costs a localtime() call; once a day
            today = date.today()
            midnight = datetime.combine(today + timedelta(days=1), datetime.min.time())
            self._day, self._day_ends = today, midnight.timestamp()
        return self._day

    def decide(
        self,
        *,
        uid: int,
        exe: str,
        path: str,
        file_key: Hashable,
        label: Label | None,
        action: str,
        today: date | None = None,
    ) -> Verdict:
        """The verdict for one access, from the cache when the same question was asked.

        ``file_key`` identifies the file version, e.g. ``(st_dev, st_ino, st_ctime_ns)``.
        The path and label are part of the key as well: two links to one inode may fall
        under different rules, and ctime ticks are coarse enough that two label writes
        can share one.
        """
        day = today or self._today()
        state = self._state
        key = (uid, exe, path, file_key, label, action, day)
        verdict = state.cache.get(key)
        if verdict is None:
            verdict = self._decide(state, uid, exe, path, label, action, day)
            with self._lock:
                if len(state.cache) >= self._cache_entries:
                    # evict the oldest entry (dicts keep insertion order)
                    state.cache.pop(next(iter(state.cache)), None)
                state.cache[key] = verdict
        return verdict

    def decide_cold(
        self,
        *,
        uid: int,
        exe: str,
        path: str,
        label: Label | None,
        action: str,
        today: date | None = None,
    ) -> Verdict:
        """The verdict for one access, computed afresh (no cache)."""
        return self._decide(self._state, uid, exe, path, label, action, today or self._today())

    def home_signature(self, home: str) -> tuple[bool, ...]:
        """Which of the policy's path patterns match ``home``: all that a decision sees
        of a labelled file's path (``_decide`` matches rules to it and nothing else), so
        two files alike in it and in their labels are decided alike (classes.py)."""
        return tuple(match(home) for match in self._state.patterns)

    def holders(
        self, *, path: str, label: Label | None, action: str, today: date | None = None
    ) -> dict[int, str]:
        """The listed people allowed ``action`` on ``path`` whatever program they use.

        For the file guard's DAC keeper: mode bits and ACLs know uids, not programs.
        Maps uid -> "" when the person is allowed with any program, else the first
        approved program that is allowed -- the kernel then lets *every* program of
        that uid do it, which fanotify cannot narrow for writes and deletions.
        """
        day = today or self._today()
        state = self._state
        out: dict[int, str] = {}
        for uid, entry in state.people.items():
            approved = sorted(set().union(*entry.person.apps.values()))
            for exe in ("", *approved):
                if self._decide(state, uid, exe, path, label, action, day).allow:
                    out[uid] = exe
                    break
        return out

    @staticmethod
    def _decide(  # noqa: PLR0917 - the hot path; positional calls are the cheapest
        state: _State,
        uid: int,
        exe: str,
        path: str,
        label: Label | None,
        action: str,
        today: date,
    ) -> Verdict:
        entry = state.people.get(uid)
        if entry is None:
            # No rule can name an unlisted uid (policy.csv subjects are checked), and the
            # matcher requires status "active": Casbin matches nothing.
            return Verdict(False, "", f"unknown user uid {uid}")
        for rule in entry.deny.get(action, ()):
            if rule.match(path):
                return Verdict(False, rule.text, f"denied by rule {rule.text}")
        decided = None
        for rule in entry.allow.get(action, ()):
            if rule.match(path):
                decided = rule
                break
        if decided is None:
            return Verdict(False, "", "no rule allows")
        sub = entry.person.requester(exe, today)
        obj = Resource.of(path, label)
        why = refusal(sub, obj, action)
        if why is not None:
            return Verdict(False, "", why)
        lvl = level(obj, today)
        if lvl == 0:
            what = "unclassified" if obj.level == 0 else f"declassified after {obj.until}"
            return Verdict(True, decided.text, f"allowed: {what}")
        return Verdict(
            True, decided.text, f"allowed: clearance {sub.clearance} >= level {lvl}, in scope"
        )
