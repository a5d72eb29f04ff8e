"""A checked policy set: ``model.conf``, ``policy.csv`` and ``subjects.toml`` of one directory.

:meth:`PolicySet.load` reads all three and refuses (PolicyError with file, line and how to
fix it) anything the engine would not enforce exactly as reference Casbin does:

* ``model.conf`` must be the Baomi model (:data:`MODEL_TEXT`): the engine compiles that
  one model, so another matcher is an error rather than a silent difference;
* each ``policy.csv`` line is tokenised as Casbin's file adapter does and must be
  ``p, SUBJECT, PATH-GLOB, ACTION, allow|deny`` or ``g, role:SENIOR, role:JUNIOR``;
  subjects are ``role:NAME`` or a person of subjects.toml, actions one of
  :data:`ACTIONS`; the role hierarchy has no cycle and stays within Casbin's depth;
* ``subjects.toml`` is checked by :mod:`baomi.policy.subjects`; it is also what puts
  people in roles (``g, NAME, role:ROLE`` for each listed role).

``version`` is a SHA-256 digest over the three files, reported by the agent and used to
invalidate decision caches.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import wcmatch.glob as wcglob

from baomi.labels import Label
from baomi.policy.errors import PolicyError
from baomi.policy.predicates import FUNCTIONS, Requester, Resource
from baomi.policy.subjects import Subjects

_logger = logging.getLogger(__name__)

MODEL_FILE = "model.conf"
POLICY_FILE = "policy.csv"
SUBJECTS_FILE = "subjects.toml"

#: Actions a rule may name; the file guard maps opens and operations onto them.
ACTIONS = ("read", "write", "execute", "delete", "export")

#: What refuses each action on an agent's host (policies/README.md has the table); ""
#: means nothing does: rules for it load (with a warning) and ``explain`` answers them,
#: but the answer is advisory.
ENFORCED_BY = {
    "read": "fanotify",  # each open decided by the file guard and recorded
    "execute": "fanotify",
    # file mode and ACL kept by the agent (agent/sensors/files/dac.py); on kernels with
    # pre-content events (6.14+) a write of a labelled file is also decided and recorded
    "write": "DAC",
    "delete": "DAC",  # the directory's ACL: create, unlink, rename and link entries
    # a process that read a labelled file opening a file for writing in a place the
    # export rules name (agent/sensors/files/export.py, taint.py)
    "export": "fanotify",
}
EFFECTS = ("allow", "deny")

#: Casbin's default role manager follows at most this many links from a user
#: (``max_hierarchy_level``): user -> role is one, so role chains may be 8 links long.
MAX_HIERARCHY_LEVEL = 10
MAX_ROLE_CHAIN = MAX_HIERARCHY_LEVEL - 2

MAX_POLICY_BYTES = 16 * 1024 * 1024  # larger files are refused before parsing
MAX_PATTERN_CHARS = 4096  # PATH_MAX

ROLE_RE = re.compile(r"role:[^,\s:()\[\]]{1,64}")

#: The one model the engine implements. ``policies/model.conf`` must say the same
#: (comments and line breaks aside); :meth:`PolicySet.load` checks it.
MODEL_TEXT = """\
[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act, eft

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))

[matchers]
m = g(r.sub.name, p.sub) && globMatch(r.obj.path, p.obj) && r.act == p.act \\
    && (p.eft == "deny" \\
        || (r.obj.valid && r.sub.status == "active" \\
            && (level(r.obj, r.sub.today) == 0 \\
                || (r.sub.trained_until >= r.sub.today \\
                    && r.sub.clearance >= level(r.obj, r.sub.today) \\
                    && inScope(r.sub, r.obj) \\
                    && appApproved(r.sub, level(r.obj, r.sub.today))))))
"""

_SECTIONS = {
    "r": "request_definition",
    "p": "policy_definition",
    "g": "role_definition",
    "e": "policy_effect",
    "m": "matchers",
}


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``p`` line of policy.csv."""

    index: int  # position among the p rules: Casbin's evaluation order
    line: int
    sub: str
    obj: str
    act: str
    eft: str

    @property
    def text(self) -> str:
        """The rule as a policy line: ``p, role:analyst, /srv/secret/**, read, allow``."""
        return f"p, {self.sub}, {self.obj}, {self.act}, {self.eft}"


@dataclass(frozen=True, slots=True)
class RoleLink:
    """One ``g`` link: ``member`` has every rule of ``role``."""

    line: int  # 0 for links that subjects.toml implies
    member: str
    role: str


def casbin_glob(pattern: str) -> Callable[[str], bool]:
    """A compiled matcher equal to Casbin's ``globMatch(path, pattern)``.

    Casbin rewrites the pattern on every call (a leading ``*/`` dropped, runs of ``*``
    inside a component folded, a trailing ``/**`` also matching the directory itself)
    and hands it to wcmatch; this does the same rewriting once.
    """
    while pattern.startswith("*/"):
        pattern = pattern[1:]
    parts = [p if p == "**" else re.sub(r"\*{2,}", "*", p) for p in pattern.split("/")]
    rewritten = "/".join(parts)
    if rewritten.endswith("/**"):
        rewritten = "{" + rewritten[:-3] + "," + rewritten + "}"
    matcher = wcglob.compile(rewritten, flags=wcglob.GLOBSTAR | wcglob.BRACE)

    def match(path: str) -> bool:
        return bool(matcher.match(path))

    return match


def _norm(text: str) -> str:
    return " ".join(text.split())


def _line_of(text: str, pattern: str) -> int:
    rx = re.compile(pattern)
    for n, line in enumerate(text.splitlines(), 1):
        if rx.match(line):
            return n
    return 0


# Casbin (~2 MB resident, a running agent's largest library after gRPC and protobuf) is
# imported only where a policy needs it: a model.conf that is not plainly the engine's
# own, a policy.csv line with brackets, the reference enforcer. The shipped files need
# none of it, so an agent guarding files does not carry it.
_NESTING = re.compile(r"[\[\]()]")  # what makes Casbin's tokeniser more than a comma split


def _content_lines(text: str) -> list[str] | None:
    """The stripped lines Casbin's config parser reads statements from (blank and
    ``#``/``;`` comment lines left out); None when such a line ends a statement continued
    with ``\\`` (Casbin ends the statement there, so leaving the line out would change it)."""
    lines: list[str] = []
    for raw in text.split("\n"):  # as Casbin reads it (StringIO.readline), not splitlines()
        line = raw.strip()
        if not line or line[0] in "#;":
            if lines and lines[-1].endswith("\\"):
                return None
            continue
        lines.append(line)
    return lines


_MODEL_LINES = _content_lines(MODEL_TEXT)


def _check_model(path: Path, text: str) -> None:
    """Refuse a model.conf that is not the model the engine compiles."""
    if _content_lines(text) == _MODEL_LINES:
        return  # statement for statement the engine's own: Casbin would read the same
    from casbin.model import Model  # noqa: PLC0415 - see _NESTING

    try:
        got = Model()
        got.load_model_from_text(text)
    except Exception as e:  # Casbin raises bare RuntimeError/KeyError on bad models
        raise PolicyError(path, 0, f"Casbin cannot load the model: {e}") from e
    want = Model()
    want.load_model_from_text(MODEL_TEXT)
    # Casbin's Model is dict-like through .model only (no __contains__ or __iter__).
    got_sections: dict[str, dict[str, Any]] = got.model
    for sec, section in _SECTIONS.items():
        key = sec
        want_value = _norm(want.model[sec][key].value)
        if key not in got_sections.get(sec, {}):
            raise PolicyError(
                path, 0, f"[{section}] has no '{key} = ...': restore it from the shipped model"
            )
        if _norm(got_sections[sec][key].value) != want_value:
            line = _line_of(text, rf"\s*{key}\s*=")
            raise PolicyError(
                path,
                line,
                f"'{key} = ...' in [{section}] differs from the model the agent enforces "
                f"(protos/baomi/policy/policyset.py MODEL_TEXT); expected: {_norm(want_value)}",
            )
    for sec, assertions in got_sections.items():
        for key in assertions:
            if key != sec:
                raise PolicyError(
                    path,
                    _line_of(text, rf"\s*{key}\s*="),
                    f"extra definition {key!r}: the agent enforces one r, p, g, e and m only",
                )


def _policy_lines(path: Path, data: bytes) -> Iterator[tuple[int, str]]:
    """Non-empty, non-comment lines with numbers, split and stripped as Casbin does."""
    for n, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise PolicyError(path, n, "not UTF-8 text: save the file as UTF-8") from e
        if line and not line.startswith("#"):
            yield n, line


def _tokens(line: str) -> list[str]:
    """``line`` split into tokens as Casbin's file adapter splits it: without brackets or
    parentheses, at every comma (IndexError on unbalanced ones, as Casbin)."""
    if not _NESTING.search(line):
        return [token.strip() for token in line.split(",")]
    from casbin.persist.adapter import _extract_tokens  # noqa: PLC0415 - see _NESTING

    tokens: list[str] = _extract_tokens(line)
    return tokens


def _parse_policy(
    path: Path, data: bytes, subjects: Subjects
) -> tuple[tuple[Rule, ...], tuple[RoleLink, ...]]:
    rules: list[Rule] = []
    links: list[RoleLink] = []
    for n, line in _policy_lines(path, data):
        try:
            tokens = _tokens(line)
        except IndexError:
            raise PolicyError(
                path, n, "unbalanced ] or ): quote nothing, balance brackets"
            ) from None
        ptype, values = tokens[0], tokens[1:]
        if ptype == "p":
            rules.append(_rule(path, n, len(rules), values, subjects))
        elif ptype == "g":
            links.append(_link(path, n, values))
        else:
            raise PolicyError(
                path,
                n,
                f"unknown line type {ptype[:20]!r}: use 'p, SUBJECT, PATH, ACTION, EFFECT' "
                "or 'g, role:SENIOR, role:JUNIOR'",
            )
    if not any(r.eft == "allow" for r in rules):
        raise PolicyError(
            path, 0, "no allow rule: an empty policy would deny everything; add p lines"
        )
    _check_hierarchy(path, links)
    return tuple(rules), tuple(links)


def _rule(path: Path, n: int, index: int, values: list[str], subjects: Subjects) -> Rule:
    if len(values) != 4:
        raise PolicyError(
            path,
            n,
            f"a rule has 4 fields after 'p' (SUBJECT, PATH, ACTION, EFFECT), this has "
            f"{len(values)}; commas cannot appear inside a field (no {{a,b}} braces)",
        )
    sub, obj, act, eft = values
    if not ROLE_RE.fullmatch(sub) and sub not in subjects.by_name:
        raise PolicyError(
            path,
            n,
            f"subject {sub[:80]!r} is neither role:NAME nor a person in subjects.toml",
        )
    if not obj.startswith("/") or len(obj) > MAX_PATTERN_CHARS or "\x00" in obj:
        raise PolicyError(
            path, n, f"path {obj[:80]!r} must be an absolute glob such as /srv/secret/**"
        )
    try:
        casbin_glob(obj)
    except Exception as e:  # wcmatch raises assorted errors on bad patterns
        raise PolicyError(path, n, f"path pattern {obj[:80]!r} is not a valid glob: {e}") from e
    if act not in ACTIONS:
        raise PolicyError(path, n, f"action {act[:40]!r} must be one of {', '.join(ACTIONS)}")
    if eft not in EFFECTS:
        raise PolicyError(path, n, f"effect {eft[:40]!r} must be allow or deny")
    return Rule(index=index, line=n, sub=sub, obj=obj, act=act, eft=eft)


def _link(path: Path, n: int, values: list[str]) -> RoleLink:
    if len(values) != 2:
        raise PolicyError(
            path, n, f"a role link is 'g, role:SENIOR, role:JUNIOR'; this has {len(values)} fields"
        )
    member, role = values
    if not ROLE_RE.fullmatch(member):
        raise PolicyError(
            path,
            n,
            f"{member[:80]!r} is not role:NAME: people are put in roles in subjects.toml "
            "(roles = [...]), policy.csv links roles to roles",
        )
    if not ROLE_RE.fullmatch(role):
        raise PolicyError(path, n, f"{role[:80]!r} is not role:NAME")
    if member == role:
        raise PolicyError(path, n, f"{member} is linked to itself")
    return RoleLink(line=n, member=member, role=role)


def _check_hierarchy(path: Path, links: Sequence[RoleLink]) -> None:
    """No cycles, and no chain longer than Casbin's role manager follows."""
    parents: dict[str, list[RoleLink]] = {}
    for link in links:
        parents.setdefault(link.member, []).append(link)
    depth: dict[str, int] = {}  # longest chain of links above a role
    visiting: set[str] = set()

    def walk(role: str, via: RoleLink | None) -> int:
        if role in depth:
            return depth[role]
        if role in visiting:
            line = via.line if via else 0
            raise PolicyError(path, line, f"role cycle through {role}: remove one of its links")
        visiting.add(role)
        best = 0
        for link in parents.get(role, []):
            best = max(best, 1 + walk(link.role, link))
        visiting.discard(role)
        depth[role] = best
        return best

    for link in links:
        if walk(link.member, link) > MAX_ROLE_CHAIN:
            raise PolicyError(
                path,
                link.line,
                f"role chain from {link.member} is {depth[link.member]} links long; Casbin "
                f"follows {MAX_ROLE_CHAIN} at most (flatten the hierarchy)",
            )


_WARNED: set[str] = set()  # policy versions whose unenforced rules were logged


def _warn_unenforced(path: Path, rules: Sequence[Rule]) -> None:
    """Say once per action that its rules decide nothing the kernel refuses."""
    first: dict[str, int] = {}
    for rule in rules:
        if not ENFORCED_BY[rule.act]:
            first.setdefault(rule.act, rule.line)
    for act, line in first.items():
        _logger.warning(
            "%s:%d: %r rules are not enforced on this host: nothing refuses an %s; they "
            "are kept for explain and reports only",
            path,
            line,
            act,
            act,
        )


def _digest(parts: Sequence[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for name, data in parts:
        h.update(name.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class PolicySet:
    """A model, its rules and the register of people, all checked."""

    directory: Path
    rules: tuple[Rule, ...]
    links: tuple[RoleLink, ...]  # from policy.csv; see role_links() for all of them
    subjects: Subjects
    version: str

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> PolicySet:
        """Read and check the three files of ``directory``; PolicyError when any is wrong."""
        d = Path(directory)
        blobs: list[tuple[str, bytes]] = []
        for name in (MODEL_FILE, POLICY_FILE, SUBJECTS_FILE):
            p = d / name
            try:
                if p.stat().st_size > MAX_POLICY_BYTES:
                    raise PolicyError(p, 0, f"larger than {MAX_POLICY_BYTES} bytes")
                blobs.append((name, p.read_bytes()))
            except OSError as e:
                raise PolicyError(p, 0, f"cannot read it: {e.strerror}") from e
        model_bytes, policy_bytes, subjects_bytes = (b for _, b in blobs)
        try:
            model_text = model_bytes.decode("utf-8")
            subjects_text = subjects_bytes.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PolicyError(d, 0, f"not UTF-8 text: {e}") from e
        _check_model(d / MODEL_FILE, model_text)
        subjects = Subjects.parse(subjects_text, str(d / SUBJECTS_FILE))
        rules, links = _parse_policy(d / POLICY_FILE, policy_bytes, subjects)
        version = _digest(blobs)
        if version not in _WARNED:  # once per policy version, not at every reload
            _WARNED.add(version)
            _warn_unenforced(d / POLICY_FILE, rules)
        return cls(
            directory=d,
            rules=rules,
            links=links,
            subjects=subjects,
            version=version,
        )

    def role_links(self) -> list[RoleLink]:
        """Every ``g`` link: the hierarchy of policy.csv, then person -> role from subjects."""
        implied = [
            RoleLink(line=0, member=p.name, role=role)
            for p in self.subjects.people
            for role in p.casbin_roles
        ]
        return [*self.links, *implied]

    def request(
        self, *, uid: int, exe: str, path: str, label: Label | None, action: str, today: date
    ) -> tuple[Requester, Resource, str]:
        """The ``(r.sub, r.obj, r.act)`` Casbin sees for this request."""
        return self.subjects.requester(uid, exe, today), Resource.of(path, label), action

    def reference_enforcer(self) -> Any:
        """Reference pycasbin: ``casbin.Enforcer(model.conf, policy.csv)``, the model's
        functions registered and the person -> role links of subjects.toml added.

        Slow (a linear scan per request); for tests, ``explain`` and benchmarks.
        Raises PolicyError when the files changed since this set was loaded.
        """
        current = PolicySet.load(self.directory)
        if current.version != self.version:
            raise PolicyError(self.directory, 0, "policy files changed since loaded: reload")
        import casbin  # noqa: PLC0415 - see _NESTING
        from casbin.util.log import disabled_logging  # noqa: PLC0415

        # Casbin logs the whole model and policy at INFO while constructing (and each
        # denial at WARNING), and silences its loggers only afterwards: silence them first.
        disabled_logging()
        enforcer = casbin.Enforcer(
            str(self.directory / MODEL_FILE), str(self.directory / POLICY_FILE)
        )
        for name, fn in FUNCTIONS.items():
            enforcer.add_function(name, fn)
        implied = [[link.member, link.role] for link in self.role_links() if link.line == 0]
        if implied:
            enforcer.add_grouping_policies(implied)
        return enforcer
