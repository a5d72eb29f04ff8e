"""``explain``, ``policy test`` and the ``baomi-agent label/explain/policy`` commands."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from baomi.labels import (
    LABEL_KEY_FILE,
    XATTR_LEVEL,
    Label,
    load_label_key,
    read_label,
    set_label,
)
from baomi.policy.errors import PolicyError
from baomi.policy.policyset import MODEL_TEXT, PolicySet

from agent.decision.engine import Engine
from agent.decision.tools import (
    enforcement,
    explain,
    parse_target,
    policy_test,
    with_pre_content,
)
from tests.cells import ZH, C, cell_at, locale_env

REPO = Path(__file__).resolve().parents[3]
TODAY = date(2026, 11, 27)
CLI_TIMEOUT_S = 60  # the CLI imports grpc; generous for slow CI machines


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A policy directory whose rules protect ``tmp_path/secret`` (user xattrs needed)."""
    secret = tmp_path / "secret"
    (secret / "finance").mkdir(parents=True)
    probe = secret / "probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.baomi.probe", b"1")
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            pytest.skip(f"{tmp_path} does not support user extended attributes")
        raise
    probe.unlink()
    d = tmp_path / "policies"
    d.mkdir()
    (d / "model.conf").write_text(MODEL_TEXT, encoding="utf-8")
    (d / "policy.csv").write_text(
        f"g, role:head, role:analyst\n"
        f"p, role:analyst, {secret}/finance/**, read, allow\n"
        f"p, role:head, {secret}/finance/**, export, allow\n"
        f"p, role:analyst, {secret}/finance/keys/**, export, deny\n",
        encoding="utf-8",
    )
    (d / "subjects.toml").write_text(
        """\
[people.wang]
display = "王芳"
uid = 1003
department = "finance"
roles = ["analyst"]
clearance = "重要"
trained_until = 2099-01-01

[people.li]
uid = 1002
department = "finance"
roles = ["head"]
clearance = "核心"
trained_until = 2099-01-01
apps = { "绝密" = ["/usr/bin/wps"] }
""",
        encoding="utf-8",
    )
    return d


def _secret(site: Path) -> Path:
    return site.parent / "secret"


def test_explain_reads_the_label_and_names_the_rule(site: Path) -> None:
    doc = _secret(site) / "finance" / "q3.xlsx"
    doc.write_bytes(b"")
    set_label(doc, "绝密", scope="dept:finance")
    ps = PolicySet.load(site)
    text = explain(ps, "wang", str(doc), "read", "/usr/bin/wps", today=TODAY)
    assert text.splitlines()[0] == f"DENY  read {doc}"
    assert "reason:  read up: clearance 2 < level 3" in text
    assert f"label:   绝密 (3); scope dept:finance; home {doc}; level today 3" in text
    assert "wang 王芳 (uid 1003)" in text
    assert "casbin:  deny, agrees" in text
    # A link elsewhere is decided where the file was labelled, and says so.
    elsewhere = site / "link.xlsx"
    os.link(doc, elsewhere)
    text = explain(ps, "wang", str(elsewhere), "read", "/usr/bin/wps", today=TODAY)
    assert f"home:    {doc} (the rules match the file's home)" in text
    assert "read up: clearance 2 < level 3" in text
    assert ps.version[:12] in text

    text = explain(ps, "li", str(doc), "read", "/usr/bin/wps", today=TODAY)
    assert text.startswith("ALLOW")
    assert f"rule:    p, role:analyst, {_secret(site)}/finance/**, read, allow" in text
    assert "casbin:  allow, agrees" in text


def test_explain_missing_file_and_unknown_users(site: Path) -> None:
    ps = PolicySet.load(site)
    path = str(_secret(site) / "finance" / "nope")
    text = explain(ps, "wang", path, "read", today=TODAY)
    assert "ALLOW" in text
    assert "unlabelled: unclassified (no file" in text
    text = explain(ps, "root", path, "read", today=TODAY)
    assert "uid 0: not in subjects.toml" in text
    assert "reason:  unknown user uid 0" in text
    assert "unknown user uid 31337" in explain(ps, "31337", path, "read", today=TODAY)
    with pytest.raises(PolicyError, match="no person or system user 'no-such-user-x'"):
        explain(ps, "no-such-user-x", path, "read")


def test_parse_target() -> None:
    assert parse_target("/a/b") == ("/a/b", None, False)
    assert parse_target("/a;level=机密;scope=dept:finance|user:wang;until=2030-01-01;id=X") == (
        "/a",
        Label(2, date(2030, 1, 1), ("dept:finance", "user:wang"), "X"),
        True,
    )
    assert parse_target("level=secret;path=/a;scope=dept:a,user:b")[1] == Label(
        2, scope=("dept:a", "user:b")
    )
    _, label, given = parse_target("/a;problem=bad level")
    assert given and label is not None and not label.valid
    for bad, msg in [
        ("level=机密", "absolute path"),
        ("/a;scope=dept:a", "needs level"),
        ("/a;colour=red", "KEY=VALUE"),
        ("/a;level=high", "not a level"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_target(bad)


def _table(site: Path, rows: list[str]) -> Path:
    t = site.parent / "cases.csv"
    t.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return t


def test_policy_test_lists_mismatches(site: Path) -> None:
    s = _secret(site)
    labelled = s / "finance" / "plan.doc"
    labelled.write_bytes(b"")
    set_label(labelled, "机密")
    table = _table(
        site,
        [
            "user, target, action, expected, exe, date",
            "# comments and blank lines are skipped",
            "",
            f"wang, {s}/finance/a.doc;level=机密;scope=dept:finance, read, allow",
            f"wang, {s}/finance/a.doc;level=绝密, read, deny",
            f'wang, "{s}/finance/a.doc;level=机密;scope=dept:rd,user:li", read, deny',
            f"wang, {s}/finance/a.doc;level=秘密;until=2020-01-01, read, allow, /usr/bin/cat",
            f"li, {s}/finance/a.doc;level=绝密, read, allow, /usr/bin/wps",
            f"li, {s}/finance/a.doc;level=绝密, read, deny, /usr/bin/cat",
            f"li, {s}/finance/keys/k;level=秘密, export, deny",
            f"wang, {labelled}, read, allow",
            f"wang, {s}/finance/a.doc;level=机密, read, deny, , 2100-01-01",
            f"0, {s}/finance/a.doc, read, deny",
            # the two wrong expectations:
            f"wang, {s}/finance/a.doc;level=绝密, read, allow",
            f"li, {s}/finance/b.doc, export, deny",
        ],
    )
    mismatches = policy_test(PolicySet.load(site), table, today=TODAY)
    assert [m.line for m in mismatches] == [14, 15]
    first = str(mismatches[0])
    assert first.startswith(f"{table}:14: wang, ")
    assert "expected allow, got deny (read up: clearance 2 < level 3)" in first
    assert f"got allow (allowed: unclassified; rule p, role:head, {s}" in str(mismatches[1])
    assert all("disagree" not in m.note for m in mismatches)  # the engine and Casbin agree
    assert mismatches[1].note == ""  # export is enforced: the answer is the kernel's


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("wang, /x, read", "a row is"),
        ("wang, /x, read, maybe", "must be allow or deny"),
        ("wang, /x, peek, allow", "action 'peek'"),
        ("wang, /x;level=high, read, allow", "not a level"),
        ("wang, /x, read, allow, /usr/bin/wps, tomorrow", "YYYY-MM-DD"),
    ],
)
def test_policy_test_bad_rows(site: Path, row: str, reason: str) -> None:
    table = _table(site, ["# header-less", row])
    with pytest.raises(PolicyError) as err:
        policy_test(PolicySet.load(site), table)
    assert err.value.line == 2
    assert reason in err.value.reason


def _cli(
    *args: str, cwd: Path = REPO, state: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``baomi-agent ARGS``; with ``state``, its --state-dir (where the label key is)."""
    options = ["--state-dir", str(state)] if state is not None else []
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *options, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def test_cli_label_set_show_clear(site: Path) -> None:
    state = site.parent / "state"
    doc = _secret(site) / "finance" / "q3.xlsx"
    doc.write_bytes(b"")
    r = _cli(
        "label", "set", str(doc), "--level", "机密", "--until", "2031-06-30",
        "--scope", "dept:finance,user:wang", "--id", "BM-2026-7", state=state,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "机密 (2) until 2031-06-30; scope dept:finance,user:wang; id BM-2026-7" in r.stdout
    key_file = state / LABEL_KEY_FILE
    assert key_file.stat().st_mode & 0o777 == 0o600  # made by the first label set
    key = load_label_key(key_file)
    assert read_label(doc, key) == Label(
        2, date(2031, 6, 30), ("dept:finance", "user:wang"), "BM-2026-7", home=str(doc)
    )
    r = _cli("label", "show", str(doc), state=state)
    assert r.returncode == 0
    assert (
        r.stdout.strip()
        == f"{doc}: 机密 (2) until 2031-06-30; scope dept:finance,user:wang; id BM-2026-7; "
        f"home {doc}"
    )
    # The file's writer lowers the level: the seal no longer matches, so it counts as 绝密.
    os.setxattr(doc, XATTR_LEVEL, "内部".encode())
    r = _cli("label", "show", str(doc), state=state)
    assert "invalid label (treated as 绝密, denied): the seal does not match" in r.stdout
    r = _cli("label", "clear", str(doc), state=state)
    assert (r.returncode, r.stdout.strip()) == (0, f"{doc}: label removed")
    r = _cli("label", "show", str(doc), state=state)
    assert r.stdout.strip() == f"{doc}: unlabelled (unclassified)"


def test_cli_label_set_recursive_labels_each_file_with_its_own_home(site: Path) -> None:
    state = site.parent / "state"
    top = _secret(site) / "finance"
    (top / "2026" / "q4").mkdir(parents=True)
    files = [top / "a.txt", top / "2026" / "b.txt", top / "2026" / "q4" / "c.txt"]
    for f in files:
        f.write_bytes(b"x")
    outside = site.parent / "outside.txt"
    outside.write_bytes(b"not labelled")
    (top / "2026" / "link").symlink_to(outside)  # never followed
    r = _cli("label", "set", "-r", str(top), "--level", "机密", "--id", "BM-9", state=state)
    assert r.returncode == 0, r.stderr
    assert f"{top}: 3 files and 3 directories labelled 机密" in r.stdout
    key = load_label_key(state / LABEL_KEY_FILE)
    for path in [top, top / "2026", top / "2026" / "q4", *files]:
        label = read_label(path, key)
        assert label is not None and label.valid, path
        assert (label.level, label.label_id, label.home) == (2, "BM-9", str(path))
    assert read_label(outside, key) is None
    r = _cli("label", "set", "-r", str(files[0]), "--level", "机密", state=state)
    assert r.returncode == 2
    assert "not a directory (label a single file without -r)" in r.stderr


def test_cli_label_show_without_the_key_says_seals_are_not_checked(site: Path) -> None:
    doc = _secret(site) / "finance" / "q3.xlsx"
    doc.write_bytes(b"")
    set_label(doc, "秘密")
    r = _cli("label", "show", str(doc), state=site.parent / "no-state")
    assert r.returncode == 0
    assert r.stdout.strip() == f"{doc}: 秘密 (1); scope any cleared subject; home {doc}"
    assert "note: label seals not checked" in r.stderr
    assert not (site.parent / "no-state").exists()  # reading never makes a key


def test_cli_label_errors(site: Path) -> None:
    doc = _secret(site) / "finance" / "q3.xlsx"
    doc.write_bytes(b"")
    r = _cli("label", "set", str(doc), "--level", "very-secret", state=site.parent / "state")
    assert r.returncode == 2
    assert "not a level: use 绝密/机密/秘密/内部" in r.stderr
    r = _cli("label", "show", str(doc.parent / "missing"))
    assert r.returncode == 2
    assert "No such file" in r.stderr


def test_cli_explain(site: Path) -> None:
    state = site.parent / "state"
    doc = _secret(site) / "finance" / "q3.xlsx"
    doc.write_bytes(b"")
    set_label(doc, "绝密", key=load_label_key(state / LABEL_KEY_FILE, create=True))
    args = ["explain", "--user", "li", "--path", str(doc), "--action", "read"]
    r = _cli(*args, "--exe", "/usr/bin/cat", "--policies", str(site), state=state)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("DENY  read")
    assert "application /usr/bin/cat not approved for 绝密" in r.stdout
    r = _cli(*args, "--exe", "/usr/bin/wps", cwd=site.parent, state=state)  # ./policies
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ALLOW  read")
    # Unsealed (written around baomi-agent label set): fail-closed, and explain says why.
    set_label(doc, "秘密")
    r = _cli(*args, "--exe", "/usr/bin/wps", cwd=site.parent, state=state)
    assert r.stdout.startswith("DENY  read")
    assert "user.baomi.seal is missing" in r.stdout


def test_cli_explain_speaks_the_locales_language(site: Path) -> None:
    state = site.parent / "state"
    doc = _secret(site) / "finance" / "q3.xlsx"
    doc.write_bytes(b"")
    set_label(doc, "绝密", key=load_label_key(state / LABEL_KEY_FILE, create=True))
    args = ["explain", "--user", "li", "--path", str(doc), "--action", "read"]
    denied = [*args, "--exe", "/usr/bin/cat", "--policies", str(site)]
    zh = _cli(*denied, state=state, env=locale_env(ZH))
    c = _cli(*denied, state=state, env=locale_env(C))
    assert zh.returncode == c.returncode == 0, zh.stderr + c.stderr
    assert zh.stdout.startswith(f"拒绝  read {doc}\n")
    assert c.stdout.startswith(f"DENY  read {doc}\n")
    allowed = _cli(*args, "--exe", "/usr/bin/wps", cwd=site.parent, state=state, env=locale_env(ZH))
    assert allowed.stdout.startswith("允许  read")
    labels = ["人员", "程序", "密级标识", "执行方式", "原因", "规则", "Casbin", "策略"]
    zh_lines = zh.stdout.splitlines()[1:]
    assert [line.split("：")[0].strip() for line in zh_lines] == labels  # noqa: RUF001
    # The values start at one cell, after labels of two to four Chinese characters.
    values = [line.split("：", 1)[1].lstrip() for line in zh_lines]  # noqa: RUF001
    assert {cell_at(line, value) for line, value in zip(zh_lines, values, strict=True)} == {13}
    # The values themselves are the same words in both languages.
    c_values = [line.split(":", 1)[1].lstrip() for line in c.stdout.splitlines()[1:]]
    assert values == c_values
    assert "application /usr/bin/cat not approved for 绝密" in zh.stdout
    assert c.stdout.splitlines()[1].startswith("  who:     li ")


def test_cli_explain_and_policy_test_refuse_to_judge_a_real_file_without_the_key(
    site: Path,
) -> None:
    """Without the label key a tampered seal would read as valid: exit 2, saying how."""
    state = site.parent / "state"
    doc = _secret(site) / "finance" / "q3.xlsx"
    doc.write_bytes(b"")
    set_label(doc, "机密", key=load_label_key(state / LABEL_KEY_FILE, create=True))
    no_key = site.parent / "no-state"
    r = _cli("explain", "--user", "wang", "--path", str(doc), "--action", "read",
             "--policies", str(site), state=no_key)  # fmt: skip
    assert r.returncode == 2
    assert r.stdout == ""
    assert "cannot check label seals" in r.stderr
    assert "baomi-agent --state-dir DIR explain" in r.stderr
    table = _table(site, [f"wang, {doc}, read, allow"])
    r = _cli("policy", "test", str(table), "--policies", str(site), state=no_key)
    assert r.returncode == 2
    assert "baomi-agent --state-dir DIR policy" in r.stderr
    # With the key both judge the file; rows and paths naming no file need none.
    r = _cli("policy", "test", str(table), "--policies", str(site), state=state)
    assert r.returncode == 0, r.stdout + r.stderr
    missing = str(doc.parent / "not-there")
    r = _cli("explain", "--user", "wang", "--path", missing, "--action", "read",
             "--policies", str(site), state=no_key)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert not no_key.exists()  # judging never makes a key


def test_cli_policy_test(site: Path) -> None:
    s = _secret(site)
    good = _table(site, [f"wang, {s}/finance/a;level=机密, read, allow"])
    r = _cli("policy", "test", str(good), "--policies", str(site))
    assert r.returncode == 0, r.stderr
    assert "every row decides as expected" in r.stdout
    bad = _table(site, [f"wang, {s}/finance/a;level=绝密, read, allow"])
    r = _cli("policy", "test", str(bad), "--policies", str(site))
    assert r.returncode == 1
    assert f"{bad}:1: " in r.stdout
    assert "1 row(s) of" in r.stdout


def test_cli_shipped_policies_and_errors(site: Path) -> None:
    r = _cli("explain", "--user", "wang", "--path", "/srv/secret/finance/x", "--action", "read")
    assert r.returncode == 0, r.stderr  # ./policies of the repository
    assert "casbin:  allow, agrees" in r.stdout
    (site / "policy.csv").write_text("p, role:analyst, /x/**, read, sometimes\n")
    r = _cli("policy", "test", str(_table(site, [])), "--policies", str(site))
    assert r.returncode == 2
    assert f"{site / 'policy.csv'}:1: effect 'sometimes' must be allow or deny" in r.stderr


def test_cli_shipped_cases() -> None:
    """The expected decisions shipped next to the policy hold (the rows carry their day)."""
    r = _cli("policy", "test", "policies/cases.csv")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "every row decides as expected" in r.stdout
    assert "casbin" not in r.stderr  # Casbin's own logging is silenced


SHIPPED = Path(__file__).resolve().parents[3] / "policies"
Q3 = "/srv/secret/finance/q3.xlsx"  # no such file here: unlabelled
TO_STICK = "/media/baomi/finance/q3.xlsx"  # export: where the data is written

ENFORCEMENT = [
    # (user, action, exe, first line, the enforced line)
    ("wang", "read", "", f"ALLOW  read {Q3}", "read: enforced by fanotify, decided per open"),
    ("wang", "write", "", f"ALLOW  write {Q3}", "write: enforced by DAC (ACL user:1003:rw-)"),
    (
        "zhou",
        "write",
        "",
        f"DENY  write {Q3}",
        "write: enforced by DAC (no ACL entry for uid 1008)",
    ),
    (
        "li",
        "delete",
        "",
        f"ALLOW  delete {Q3}",
        "delete: enforced by DAC on the directory /srv/secret/finance (ACL user:1002:rwx)",
    ),
    ("wang", "delete", "", f"DENY  delete {Q3}", "on the directory /srv/secret/finance (no ACL"),
    ("li", "export", "", f"ALLOW  export {TO_STICK}", "export: decided by fanotify when a process"),
    ("root", "write", "", f"ALLOW  write {Q3}", "DAC does not bind root"),
]


@pytest.mark.parametrize(("user", "action", "exe", "first", "how"), ENFORCEMENT)
def test_explain_says_what_enforces_the_action(
    user: str, action: str, exe: str, first: str, how: str
) -> None:
    target = TO_STICK if action == "export" else Q3
    text = explain(PolicySet.load(SHIPPED), user, target, action, exe or None, today=TODAY)
    assert text.splitlines()[0] == first
    assert f"  enforced: {action}: " in text and how in text


def test_explain_names_a_dac_grant_wider_than_the_program(tmp_path: Path) -> None:
    """liu may write 机密 rd files only with wps or libreoffice; DAC cannot tell programs
    apart, so the kernel lets cat write too, and explain says so rather than DENY."""
    doc = "/srv/secret/rd/design/radar.doc;level=机密"
    path, label, _ = parse_target(doc)
    assert label is not None
    ps = PolicySet.load(SHIPPED)
    engine = Engine(ps)
    assert not engine.decide_cold(
        uid=1006, exe="/usr/bin/cat", path=path, label=label, action="write", today=TODAY
    ).allow
    assert engine.holders(path=path, label=label, action="write", today=TODAY)[1006]
    table = tmp_path / "cases.csv"
    table.write_text(f'liu, "{doc}", write, deny, /usr/bin/cat\nli, {TO_STICK}, export, deny\n')
    mismatches = policy_test(ps, table, today=TODAY)
    assert [m.line for m in mismatches] == [2]  # the policy allows li's export
    assert mismatches[0].note == ""  # ... and the kernel path decides it the same


def test_with_pre_content_a_labelled_write_is_also_decided() -> None:
    """On a kernel with pre-content events the guard decides writes of labelled files:
    liu's write with cat, which DAC lets through, is denied; with wps it is allowed;
    root's write is decided like anyone's; an unlabelled file stays DAC's alone."""
    path, label, _ = parse_target("/srv/secret/rd/design/radar.doc;level=机密")
    engine = Engine(PolicySet.load(SHIPPED))

    def enforced(uid: int, exe: str, *, labelled: bool = True) -> tuple[bool | None, str]:
        lab = label if labelled else None
        verdict = engine.decide_cold(
            uid=uid, exe=exe, path=path, label=lab, action="write", today=TODAY
        )
        dac = enforcement(
            engine, uid=uid, path=path, home=path, label=lab, action="write",
            verdict=verdict, today=TODAY,
        )  # fmt: skip
        return with_pre_content(dac, action="write", label=lab, verdict=verdict)

    allowed, how = enforced(1006, "/usr/bin/cat")
    assert allowed is False and "DAC cannot tell" in how and "pre-content events" in how
    assert enforced(1006, "/usr/bin/wps")[0] is True
    assert enforced(0, "/usr/bin/cat")[0] is False
    allowed, how = enforced(1006, "/usr/bin/cat", labelled=False)
    assert "pre-content" not in how


def test_export_rules_load_without_a_not_enforced_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every action now has a mechanism (export: the export path of the file guard)."""
    d = tmp_path / "p"
    d.mkdir()
    for name in ("model.conf", "subjects.toml"):
        (d / name).write_bytes((SHIPPED / name).read_bytes())
    (d / "policy.csv").write_text(
        "p, role:staff, /srv/x/**, read, allow\np, role:staff, /srv/x/**, export, deny\n"
    )
    with caplog.at_level("WARNING"):
        PolicySet.load(d)
    assert not [r.getMessage() for r in caplog.records if "not enforced" in r.getMessage()]


def test_an_export_is_decided_where_the_data_goes_at_the_level_of_the_data(site: Path) -> None:
    """As the file guard's export path decides it: the engine asked with the place
    written to as path and the taint's label (agent/sensors/files/sensor.py); explain
    and policy test take the data's level as a label spec, and never the home of a
    label found on the destination."""
    s = _secret(site)
    ps = PolicySet.load(site)
    engine = Engine(ps)
    dest = f"{s}/finance/out.doc"
    for user, uid, allowed in (("li", 1002, True), ("wang", 1003, False)):
        kernel = engine.decide_cold(
            uid=uid, exe="", path=dest, label=Label(2), action="export", today=TODAY
        )
        text = explain(ps, user, f"{dest};level=机密", "export", today=TODAY)
        assert kernel.allow is allowed
        assert text.splitlines()[0] == f"{'ALLOW' if allowed else 'DENY'}  export {dest}"
        assert "export: decided by fanotify when a process that has read a labelled file" in text
    keys = f"{s}/finance/keys/k.doc"
    assert explain(ps, "li", f"{keys};level=秘密", "export", today=TODAY).startswith("DENY")
    # A labelled file at the destination whose home is keys/: decided at its path.
    there = s / "finance" / "labelled.doc"
    there.write_bytes(b"")
    set_label(there, "机密", home=keys)
    table = _table(site, [f"li, {there}, export, allow", f"li, {keys};level=机密, export, deny"])
    assert policy_test(ps, table, today=TODAY) == []
    assert "give the level of what it read" in explain(ps, "li", dest, "export", today=TODAY)
