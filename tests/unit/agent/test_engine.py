"""The engine decides as reference Casbin does, rule by rule, and refuses bad policies.

Table-driven cases on the shipped policy cover every condition of the model; the
differential tests then put 10,000 random requests to the engine and to pycasbin on the
shipped model and policy, and more on the generated policy the benchmark uses.
"""

from __future__ import annotations

import itertools
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from baomi.labels import Label, invalid_label
from baomi.policy.policyset import ACTIONS, MODEL_TEXT

from agent.decision.engine import Engine, PolicyError, PolicySet, Verdict
from bench import decision as bench_decision

POLICIES = Path(__file__).resolve().parents[3] / "policies"
TODAY = date(2026, 11, 27)

WPS, CAT, EVINCE = "/usr/bin/wps", "/usr/bin/cat", "/usr/bin/evince"
# What the file guard gives for a process that is not running the approved file
# (agent/sensors/files/opener.py): never equal to a listed path.
OTHER_AT_WPS = "(unapproved: /usr/bin/wps)"
TAINTED_WPS = "(unapproved: /usr/bin/wps; LD_PRELOAD in its environment)"
# uids of the shipped register
ZHANG, LI, WANG, ZHAO, CHEN, LIU, SUN, ZHOU, WU = range(1001, 1010)

FIN = "/srv/secret/finance/q3-budget.xlsx"
RD = "/srv/secret/rd/design/radar.doc"


@pytest.fixture(scope="module")
def shipped() -> PolicySet:
    return PolicySet.load(POLICIES)


@pytest.fixture(scope="module")
def reference(shipped: PolicySet) -> Any:
    return shipped.reference_enforcer()


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    """A copy of the shipped policies to break."""
    d = tmp_path / "policies"
    shutil.copytree(POLICIES, d)
    return d


def casbin_verdict(
    policyset: PolicySet,
    enforcer: Any,
    uid: int,
    exe: str,
    path: str,
    label: Label | None,
    action: str,
    today: date,
) -> tuple[bool, str]:
    """(allowed, rule) from pycasbin's enforce_ex, the rule as the engine writes it."""
    allowed, explain = enforcer.enforce_ex(
        *policyset.request(uid=uid, exe=exe, path=path, label=label, action=action, today=today)
    )
    return bool(allowed), ", ".join(["p", *explain]) if explain else ""


@dataclass(frozen=True)
class Case:
    """One row: who does what to which file, and what must come of it."""

    name: str
    uid: int
    path: str
    label: Label | None
    action: str
    allow: bool
    reason: str  # substring of Verdict.reason
    rule: str = ""  # substring of Verdict.rule ("" -> must be empty when denied)
    exe: str = WPS
    today: date = TODAY


CASES = [
    # --- clearance dominates the level (no read up) -------------------------------------
    Case("equal level allowed", WANG, FIN, Label(2, scope=("dept:finance",)), "read", True,
         "clearance 2 >= level 2", "role:finance-analyst, /srv/secret/finance/**, read"),
    Case("lower level allowed", WANG, FIN, Label(1), "read", True, "clearance 2 >= level 1",
         "finance-analyst"),
    Case("read up denied", WANG, FIN, Label(3), "read", False, "read up: clearance 2 < level 3"),
    Case("write up denied too", WANG, FIN, Label(3), "write", False, "clearance 2 < level 3"),
    Case("uncleared level", ZHOU, "/srv/secret/rd/projects/p1/contractor/spec.doc",
         Label(2), "read", False, "read up: clearance 1 < level 2"),
    # --- need-to-know scope --------------------------------------------------------------
    Case("outside scope denied", WANG, FIN, Label(2, scope=("dept:rd",)), "read", False,
         "outside need-to-know scope"),
    Case("user in scope", WANG, FIN, Label(2, scope=("dept:rd", "user:wang")), "read", True,
         "in scope", "finance-analyst"),
    Case("direct role in scope", LIU, RD, Label(1, scope=("role:engineer",)), "read", True,
         "in scope", "role:engineer"),
    Case("inherited role is not need-to-know", ZHANG, RD, Label(1, scope=("role:engineer",)),
         "read", False, "outside need-to-know scope"),
    Case("empty scope admits any cleared", ZHANG, RD, Label(3), "read", True, "level 3"),
    # --- training, status ------------------------------------------------------------------
    Case("expired training denied", ZHAO, RD, Label(1), "read", False,
         "training expired 2025-03-31"),
    Case("training still valid on its last day", WANG, FIN, Label(2), "read", True,
         "clearance", "finance-analyst", today=date(2027, 1, 31)),
    Case("training expired the day after", WANG, FIN, Label(2), "read", False,
         "training expired 2027-01-31", today=date(2027, 2, 1)),
    Case("leaving denied", CHEN, RD, Label(1), "read", False, "status leaving"),
    Case("leaving denied unclassified too", CHEN, RD, None, "read", False, "status leaving"),
    Case("left denied", WU, RD, Label(1), "read", False, "status left"),
    # --- approved applications ---------------------------------------------------------------
    Case("绝密 with unapproved app denied", LI, FIN, Label(3), "read", False,
         "application /usr/bin/cat not approved for 绝密", exe=CAT),
    Case("绝密 with approved app allowed", LI, FIN, Label(3), "read", True, "level 3",
         "finance-analyst", exe=WPS),
    Case("绝密 with unknown executable denied", LI, FIN, Label(3), "read", False,
         "application (unknown) not approved", exe=""),
    Case("机密 without an app list: any app", WANG, FIN, Label(2), "read", True, "clearance",
         "finance-analyst", exe=CAT),
    Case("机密 list restricts when given", LIU, RD, Label(2), "read", False,
         "application /usr/bin/cat not approved for 机密", exe=CAT),
    Case("机密 list admits its apps", LIU, RD, Label(2), "read", True, "clearance", "engineer",
         exe="/usr/bin/libreoffice"),
    Case("秘密 not in liu's list: any app", LIU, RD, Label(1), "read", True, "clearance",
         "engineer", exe=CAT),
    # the file guard gives a program that is not the approved file, or is tainted, so
    Case("绝密 with another program at the approved path", LI, FIN, Label(3), "read", False,
         "application (unapproved: /usr/bin/wps) not approved for 绝密", exe=OTHER_AT_WPS),
    Case("绝密 with a tainted approved program", LI, FIN, Label(3), "read", False,
         f"application {TAINTED_WPS} not approved for 绝密", exe=TAINTED_WPS),
    Case("机密 without an app list: tainted too", WANG, FIN, Label(2), "read", True,
         "clearance", "finance-analyst", exe=TAINTED_WPS),
    # --- expiry and invalid labels -------------------------------------------------------------
    Case("expired label is level 0", WANG, FIN, Label(3, until=date(2020, 1, 1)), "read", True,
         "declassified after 2020-01-01", "finance-analyst", exe=CAT),
    Case("label valid through its until day", WANG, FIN, Label(3, until=TODAY), "read", False,
         "read up"),
    Case("invalid label denied", LI, FIN, invalid_label("bad level"), "read", False,
         "invalid label: bad level"),
    Case("invalid label even with past dates", LI, FIN, Label(3, date(2000, 1, 1), (), None, "x"),
         "read", False, "invalid label"),
    Case("unlabelled is unclassified", WANG, FIN, None, "read", True, "unclassified",
         "finance-analyst", exe=CAT),
    # --- rules: deny wins, nothing matching is deny -------------------------------------------
    Case("deny beats allow (inherited)", ZHANG, "/media/baomi/rd/keys/k.pem", Label(1), "export",
         False, "denied by rule p, role:engineer, /media/baomi/rd/keys/**, export, deny",
         "p, role:engineer, /media/baomi/rd/keys/**, export, deny"),
    Case("allow where no deny", ZHANG, "/media/baomi/rd/x/plan.doc", Label(1), "export", True,
         "clearance", "p, role:chief-engineer, /media/baomi/rd/**, export, allow"),
    Case("deny on retained records", LI, "/srv/secret/finance/retained/2019.pdf", None,
         "delete", False, "denied by rule", "finance/retained/**, delete, deny"),
    Case("delete allowed elsewhere", LI, FIN, None, "delete", True, "unclassified",
         "finance-head, /srv/secret/finance/**, delete"),
    Case("deny rule applies to unclassified", WANG, FIN, None, "execute", False,
         "denied by rule", "role:staff, /srv/secret/finance/**, execute, deny"),
    Case("contractor export denied", ZHOU, "/media/usb0/a", None,
         "export", False, "denied by rule", "role:contractor, /media/**, export, deny"),
    Case("no rule: other department", WANG, RD, None, "read", False, "no rule allows"),
    Case("no rule: outside protected tree", ZHANG, "/home/zhang/notes.txt", None, "read", False,
         "no rule allows"),
    Case("no rule: dot files need explicit patterns", WANG, "/srv/secret/finance/.~lock.q3#",
         None, "read", False, "no rule allows"),
    Case("no rule: not an action", WANG, FIN, None, "chmod", False, "no rule allows"),
    Case("trailing /** matches the directory", SUN, "/srv/secret/archive", None, "read", True,
         "unclassified", "archivist"),
    Case("last matching allow is reported", SUN, "/srv/secret/archive/1990/box.pdf", Label(2),
         "read", True, "clearance", "p, role:archivist, /srv/secret/archive/**, read, allow"),
    # --- unknown users ---------------------------------------------------------------------------
    Case("root is not exempt", 0, FIN, None, "read", False, "unknown user uid 0"),
    Case("unknown uid", 4242, "/srv/secret/shared/a.doc", None, "read", False,
         "unknown user uid 4242"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_table(shipped: PolicySet, reference: Any, case: Case) -> None:
    engine = Engine(shipped)
    v = engine.decide_cold(
        uid=case.uid,
        exe=case.exe,
        path=case.path,
        label=case.label,
        action=case.action,
        today=case.today,
    )
    assert v.allow is case.allow, v
    assert case.reason in v.reason, v
    if case.rule:
        assert case.rule in v.rule, v
    elif not case.allow:
        assert v.rule == "", v
    ref = casbin_verdict(
        shipped, reference, case.uid, case.exe, case.path, case.label, case.action, case.today
    )
    assert ref == (v.allow, v.rule)


# --- the differential test ---------------------------------------------------------------

_SEGMENTS = [
    "finance", "rd", "shared", "archive", "retained", "tools", "projects", "p1",
    "contractor", "keys", "2019", "sub", ".hidden", "财务", "a b", "[x]", "x.doc",
]  # fmt: skip
_PATHS = [
    "/srv/secret", "/srv/secret/", "/srv/secret/shared/a.doc", FIN, RD,
    "/srv/secret/finance", "/srv/secret/finance/retained/2019.pdf",
    "/srv/secret/finance/sub/dir/x", "/srv/secret/rd/tools/build.sh",
    "/srv/secret/rd/tools/sub/x", "/srv/secret/rd/projects/p1/contractor/spec.doc",
    "/srv/secret/rd/projects/p1/contractor", "/srv/secret/rd/projects/p1/keys/k.pem",
    "/srv/secret/rd/a/keys/b/c", "/srv/secret/archive/1990/box.pdf", "/srv/secret/archive",
    "/srv/secret/.hidden", "/srv/secret/finance/.~lock.q3#", "/srv/public/x", "/home/wang/x",
    "/srv/secret//finance/x", "/srv/secret/finance/../rd/x", "/srv/secret/finance/a\nb",
    "/srv/secret/财务/报表.xlsx", "/srv/secret/finance/[x].doc", "/srv/secret/rd/keys",
    "/media/baomi/rd/x.doc", "/media/baomi/rd/keys/k.pem", "/media/usb0/a",
]  # fmt: skip
_EXES = [WPS, EVINCE, CAT, "/usr/bin/libreoffice", "/usr/bin/shred", "", OTHER_AT_WPS, TAINTED_WPS]


def _random_path(rng: random.Random) -> str:
    if rng.random() < 0.6:
        return rng.choice(_PATHS)
    return "/srv/secret/" + "/".join(rng.choice(_SEGMENTS) for _ in range(rng.randint(1, 4)))


def _random_label(rng: random.Random, scope_pool: list[str]) -> Label | None:
    x = rng.random()
    if x < 0.2:
        return None
    if x < 0.27:
        return invalid_label("bad level")
    until = TODAY + timedelta(days=rng.randint(-900, 900)) if rng.random() < 0.4 else None
    scope = tuple(rng.sample(scope_pool, rng.randint(1, 3))) if rng.random() < 0.5 else ()
    return Label(level=rng.randint(0, 3), until=until, scope=scope)


def _path_under(rng: random.Random, pattern: str) -> str:
    """A path the rule's glob matches (most of the time: '*' may meet a '/')."""
    tail = rng.choice(["x.doc", "a/b.doc", "2019/box.pdf", "财务/报表.xlsx"])
    return pattern.replace("**", tail).replace("*", rng.choice(["p1", "q"]))


def _shipped_requests(policyset: PolicySet, count: int, seed: int) -> list[tuple[Any, ...]]:
    """Half anything at all, half plausible: a rule's own path and action, milder labels,
    days when most training is valid, so both outcomes are common."""
    rng = random.Random(seed)
    people = policyset.subjects.people
    uids = [p.uid for p in people] + [0, 4242, 65534]
    scope_pool = sorted({k for p in people for k in p.keys} | {"dept:nowhere", "user:ghost"})
    holders: dict[str, list[int]] = {}  # rule subject -> uids that hold it (any depth)
    for person in people:
        held, todo = {person.name}, [person.name]
        while todo:
            name = todo.pop()
            for link in policyset.role_links():
                if link.member == name and link.role not in held:
                    held.add(link.role)
                    todo.append(link.role)
        for name in held:
            holders.setdefault(name, []).append(person.uid)
    out = []
    for _ in range(count):
        uid = rng.choice(uids)
        if rng.random() < 0.5:
            action = rng.choice(ACTIONS) if rng.random() < 0.98 else "chmod"
            today = date(2024, 1, 1) + timedelta(days=rng.randint(0, 6 * 365))
            path, label = _random_path(rng), _random_label(rng, scope_pool)
            exe = rng.choice(_EXES)
        else:
            rule = rng.choice(policyset.rules)
            action, path = rule.act, _path_under(rng, rule.obj)
            if rule.sub in holders and rng.random() < 0.8:
                uid = rng.choice(holders[rule.sub])
            today = date(2026, 1, 1) + timedelta(days=rng.randint(0, 365))
            label = _random_label(rng, scope_pool)
            if label is not None and label.valid and rng.random() < 0.5:
                label = Label(
                    rng.randint(0, 2), label.until, () if rng.random() < 0.5 else label.scope
                )
            exe = WPS if rng.random() < 0.5 else rng.choice(_EXES)
        out.append((uid, exe, path, label, action, today))
    return out


def _differential(
    policyset: PolicySet, requests: list[tuple[Any, ...]]
) -> tuple[int, int, list[str]]:
    """(allowed, differences, examples) of the engine against pycasbin on ``requests``."""
    engine = Engine(policyset)
    enforcer = policyset.reference_enforcer()
    allowed = 0
    diffs: list[str] = []
    for uid, exe, path, label, action, today in requests:
        v = engine.decide_cold(uid=uid, exe=exe, path=path, label=label, action=action, today=today)
        ref = casbin_verdict(policyset, enforcer, uid, exe, path, label, action, today)
        allowed += v.allow
        if ref != (v.allow, v.rule):
            diffs.append(f"{(uid, exe, path, label, action, today)}: engine {v} casbin {ref}")
    return allowed, len(diffs), diffs[:5]


def test_differential_shipped_policy(shipped: PolicySet) -> None:
    requests = _shipped_requests(shipped, 10_000, seed=20261127)
    allowed, differences, examples = _differential(shipped, requests)
    print(
        f"\ndifferential, shipped policy: {len(requests)} requests, {allowed} allowed, "
        f"{differences} differences between engine and pycasbin"
    )
    assert differences == 0, examples
    assert 1_000 < allowed < 9_000  # both outcomes well exercised


def test_differential_generated_policy(tmp_path: Path) -> None:
    org = bench_decision.write_organisation(tmp_path / "policies", people=300, files=2000)
    policyset = PolicySet.load(org.directory)
    requests = [
        (q.uid, q.exe, q.path, q.label, q.action, q.today)
        for q in bench_decision.requests(org, 1500, seed=5)
    ]
    allowed, differences, examples = _differential(policyset, requests)
    print(
        f"\ndifferential, generated policy ({len(policyset.rules)} rules, 300 people, "
        f"100 roles): {len(requests)} requests, {allowed} allowed, {differences} differences"
    )
    assert differences == 0, examples
    assert allowed > 50


def test_deepest_hierarchy_casbin_follows(tmp_path: Path) -> None:
    """A chain of 8 role links is the most Casbin's role manager follows; both agree."""
    d = tmp_path / "p"
    d.mkdir()
    (d / "model.conf").write_text(MODEL_TEXT)
    chain = [f"role:l{i}" for i in range(9)]
    links = [f"g, {a}, {b}" for a, b in itertools.pairwise(chain)]
    rules = [f"p, {r}, /s/{r[5:]}/**, read, allow" for r in chain]
    (d / "policy.csv").write_text("\n".join(links + rules) + "\n")
    (d / "subjects.toml").write_text(
        '[people.a]\nuid = 1\ndepartment = "x"\nroles = ["l0"]\n'
        'clearance = "核心"\ntrained_until = 2030-01-01\n'
    )
    ps = PolicySet.load(d)
    requests = [(1, "", f"/s/l{i}/f", None, "read", TODAY) for i in range(9)]
    allowed, differences, _ = _differential(ps, requests)
    assert (allowed, differences) == (9, 0)

    (d / "policy.csv").write_text("\n".join([*links, "g, role:l8, role:l9", *rules]) + "\n")
    with pytest.raises(PolicyError, match="role chain from role:l0 is 9 links long"):
        PolicySet.load(d)


def test_person_rules_and_untrained(tmp_path: Path) -> None:
    d = tmp_path / "p"
    d.mkdir()
    (d / "model.conf").write_text(MODEL_TEXT)
    (d / "policy.csv").write_text("p, a, /s/**, read, allow\n")
    (d / "subjects.toml").write_text('[people.a]\nuid = 7\ndepartment = "x"\nclearance = 3\n')
    engine = Engine(PolicySet.load(d))
    assert engine.decide_cold(
        uid=7, exe="", path="/s/x", label=None, action="read", today=TODAY
    ) == Verdict(True, "p, a, /s/**, read, allow", "allowed: unclassified")
    v = engine.decide_cold(uid=7, exe="", path="/s/x", label=Label(1), action="read", today=TODAY)
    assert v == Verdict(False, "", "not trained (保密培训)")


# --- the cache ---------------------------------------------------------------------------


def _decide(engine: Engine, label: Label | None, key: object = (1, 2, 3)) -> Verdict:
    return engine.decide(
        uid=WANG, exe=CAT, path=FIN, file_key=key, label=label, action="read", today=TODAY
    )


def test_cache_returns_the_cold_verdict(shipped: PolicySet) -> None:
    engine = Engine(shipped)
    first = _decide(engine, Label(2))
    assert _decide(engine, Label(2)) is first
    cold = engine.decide_cold(
        uid=WANG, exe=CAT, path=FIN, label=Label(2), action="read", today=TODAY
    )
    assert cold == first


def test_cache_key_follows_label_path_and_day(shipped: PolicySet) -> None:
    engine = Engine(shipped)
    assert _decide(engine, Label(2)).allow
    assert not _decide(engine, Label(3)).allow  # relabelled, same ctime tick
    assert not engine.decide(
        uid=WANG, exe=CAT, path=RD, file_key=(1, 2, 3), label=Label(2), action="read", today=TODAY
    ).allow  # a second link to the same inode
    assert not engine.decide(
        uid=WANG,
        exe=CAT,
        path=FIN,
        file_key=(1, 2, 3),
        label=Label(2),
        action="read",
        today=date(2027, 2, 1),  # training lapsed overnight
    ).allow


def test_reload_empties_the_cache(shipped: PolicySet, policy_dir: Path) -> None:
    engine = Engine(shipped)
    assert _decide(engine, Label(2)).allow
    toml = policy_dir / "subjects.toml"
    toml.write_text(
        toml.read_text().replace(
            'trained_until = 2027-01-31\nstatus = "active"',
            'trained_until = 2027-01-31\nstatus = "leaving"',
        )
    )
    new = PolicySet.load(policy_dir)
    assert new.version != shipped.version
    engine.reload(new)
    assert engine.version == new.version
    assert _decide(engine, Label(2)) == Verdict(False, "", "status leaving")


def test_bad_policy_keeps_the_last_good(shipped: PolicySet, policy_dir: Path) -> None:
    engine = Engine(shipped)
    (policy_dir / "policy.csv").write_text("p, role:x, /s/**, read, maybe\n")
    with pytest.raises(PolicyError):
        engine.reload(PolicySet.load(policy_dir))
    assert engine.version == shipped.version
    assert _decide(engine, Label(2)).allow


def test_cache_is_bounded(shipped: PolicySet) -> None:
    engine = Engine(shipped, cache_entries=10)
    for i in range(50):
        _decide(engine, Label(2), key=i)
    assert len(engine._state.cache) == 10


def test_decide_defaults_to_today(shipped: PolicySet) -> None:
    engine = Engine(shipped)
    v = engine.decide(uid=0, exe="", path=FIN, file_key=1, label=None, action="read")
    assert v == Verdict(False, "", "unknown user uid 0")
    assert engine._today() == date.today()


# --- policy errors name file, line and the fix ----------------------------------------------


def _edit(path: Path, change: Callable[[str], str]) -> None:
    path.write_text(change(path.read_text(encoding="utf-8")), encoding="utf-8")


def _line(path: Path, needle: str) -> int:
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if needle in line:
            return n
    raise AssertionError(needle)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("p, role:staff, /srv/secret/x/**, read", "4 fields after 'p'"),
        ("p, role:staff, /srv/secret/{a,b}/**, read, allow", "4 fields after 'p'"),
        ("p, role:staff, /srv/secret/x/**, read, allow, extra", "4 fields after 'p'"),
        ("p, role:staff, /srv/secret/x/**, copy, allow", "action 'copy' must be one of"),
        ("p, role:staff, /srv/secret/x/**, read, permit", "effect 'permit' must be allow or deny"),
        ("p, nobody, /srv/secret/x/**, read, allow", "neither role:NAME nor a person"),
        ("p, staff, /srv/secret/x/**, read, allow", "neither role:NAME nor a person"),
        ("p, role:staff, srv/secret/x/**, read, allow", "must be an absolute glob"),
        ("p2, role:staff, /srv/secret/x/**, read, allow", "unknown line type 'p2'"),
        ("g, wang, role:staff", "people are put in roles in subjects.toml"),
        ("g, role:staff, staff", "is not role:NAME"),
        ("g, role:staff, role:staff", "linked to itself"),
        ("g, role:staff, role:leader", "role cycle"),
        ("g, role:a, role:b, domain", "this has 3 fields"),
        ("p, role:staff, /srv/secret/x]/**, read, allow", "unbalanced"),
    ],
)
def test_policy_errors(policy_dir: Path, line: str, reason: str) -> None:
    csv = policy_dir / "policy.csv"
    _edit(csv, lambda t: t + line + "\n")
    with pytest.raises(PolicyError) as err:
        PolicySet.load(policy_dir)
    assert reason in err.value.reason, err.value
    assert err.value.file == str(csv)
    if "cycle" not in reason:
        assert err.value.line == _line(csv, line)
    assert str(err.value).startswith(f"{csv}:{err.value.line}: ")


def test_policy_without_allow_rules(policy_dir: Path) -> None:
    (policy_dir / "policy.csv").write_text("# nothing\np, role:x, /s/**, read, deny\n")
    with pytest.raises(PolicyError, match="no allow rule"):
        PolicySet.load(policy_dir)


def test_policy_not_utf8(policy_dir: Path) -> None:
    (policy_dir / "policy.csv").write_bytes(b"p, role:x, /s/**, read, allow\np, role:x, /\xff\n")
    with pytest.raises(PolicyError, match=r"policy.csv:2: not UTF-8"):
        PolicySet.load(policy_dir)


def test_changed_matcher_is_refused(policy_dir: Path) -> None:
    conf = policy_dir / "model.conf"
    _edit(conf, lambda t: t.replace('r.sub.status == "active"', 'r.sub.status != "left"'))
    with pytest.raises(PolicyError) as err:
        PolicySet.load(policy_dir)
    assert err.value.line == _line(conf, "m = g(")
    assert "differs from the model the agent enforces" in err.value.reason


def test_changed_effect_is_refused(policy_dir: Path) -> None:
    conf = policy_dir / "model.conf"
    _edit(conf, lambda t: t.replace("e = some(where (p.eft == allow)) && !", "e = !"))
    with pytest.raises(PolicyError) as err:
        PolicySet.load(policy_dir)
    assert err.value.line == _line(conf, "e = ")


def test_extra_model_definition_is_refused(policy_dir: Path) -> None:
    conf = policy_dir / "model.conf"
    _edit(conf, lambda t: t.replace("g = _, _", "g = _, _\ng2 = _, _"))
    with pytest.raises(PolicyError, match="extra definition 'g2'"):
        PolicySet.load(policy_dir)


def test_missing_file(policy_dir: Path) -> None:
    (policy_dir / "subjects.toml").unlink()
    with pytest.raises(PolicyError, match=r"subjects.toml: cannot read it"):
        PolicySet.load(policy_dir)


def test_subjects_errors_surface_with_line(policy_dir: Path) -> None:
    toml = policy_dir / "subjects.toml"
    _edit(
        toml,
        lambda t: t.replace(
            'clearance = "一般"\ntrained_until = 2025', 'clearance = "x"\ntrained_until = 2025'
        ),
    )
    with pytest.raises(PolicyError) as err:
        PolicySet.load(policy_dir)
    assert err.value.file == str(toml)
    assert err.value.line == _line(toml, 'clearance = "x"')


def test_version_is_a_digest_of_the_files(policy_dir: Path, shipped: PolicySet) -> None:
    assert PolicySet.load(policy_dir).version == shipped.version
    _edit(policy_dir / "policy.csv", lambda t: t + "# a comment changes the version\n")
    assert PolicySet.load(policy_dir).version != shipped.version


def test_reference_refuses_files_changed_since_load(policy_dir: Path) -> None:
    ps = PolicySet.load(policy_dir)
    _edit(policy_dir / "policy.csv", lambda t: t + "p, role:staff, /x/**, read, allow\n")
    with pytest.raises(PolicyError, match="changed since loaded"):
        ps.reference_enforcer()


HOLDER_CASES = [
    # (path, label, action, uid -> program the right needs; "" = any program)
    (FIN, Label(level=2), "write", {ZHANG: "", LI: "", WANG: ""}),
    (FIN, Label(level=3), "write", {ZHANG: EVINCE, LI: WPS}),  # wang: 重要 < 绝密
    (RD, Label(level=2), "write", {ZHANG: "", LIU: "/usr/bin/libreoffice"}),  # liu's 机密 list
    ("/srv/secret/finance", None, "delete", {ZHANG: "", LI: "", SUN: ""}),
    ("/srv/secret/finance/retained", None, "delete", {SUN: ""}),  # finance-head denied
    (FIN, invalid_label("bad"), "write", {}),
]


@pytest.mark.parametrize(("path", "label", "action", "want"), HOLDER_CASES)
def test_holders_are_whoever_some_program_lets(
    shipped: PolicySet, path: str, label: Label | None, action: str, want: dict[int, str]
) -> None:
    """DAC cannot tell programs apart: a person allowed with some approved program holds
    the right (and the engine names that program)."""
    engine = Engine(shipped)
    got = engine.holders(path=path, label=label, action=action, today=TODAY)
    assert got == want
    for uid, exe in got.items():
        assert engine.decide_cold(
            uid=uid, exe=exe, path=path, label=label, action=action, today=TODAY
        ).allow
