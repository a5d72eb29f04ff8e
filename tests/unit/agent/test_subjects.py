"""The register of cleared staff: parsing, unknown users, errors that point at a line."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from baomi.policy.errors import PolicyError
from baomi.policy.predicates import NEVER
from baomi.policy.subjects import Subjects

SHIPPED = Path(__file__).resolve().parents[3] / "policies" / "subjects.toml"
TODAY = date(2026, 11, 27)

GOOD = """\
[people.wang]
display = "王芳"
uid = 1003
department = "finance"
roles = ["analyst", "role:auditor"]
clearance = "重要"
trained_until = 2027-01-31
status = "active"
apps = { "绝密" = ["/usr/bin/wps"], "secret" = ["/usr/bin/evince"] }

[people.li]
uid = 1002
department = "finance"
clearance = "core"
trained_until = "2027-03-31"

[people.new]
uid = 1010
department = "rd"
"""


def test_shipped_register_loads() -> None:
    subjects = Subjects.load(SHIPPED)
    assert {p.name for p in subjects.people} >= {"zhang", "li", "wang", "zhao", "chen", "wu"}
    assert subjects.by_name["chen"].status == "leaving"
    assert subjects.by_name["wu"].status == "left"


def test_fields_are_parsed() -> None:
    s = Subjects.parse(GOOD)
    wang = s.by_name["wang"]
    assert wang.uid == 1003
    assert wang.display == "王芳"
    assert wang.roles == ("analyst", "auditor")
    assert wang.casbin_roles == ("role:analyst", "role:auditor")
    assert wang.clearance == 2
    assert wang.trained_until == date(2027, 1, 31)
    assert wang.apps == {3: frozenset({"/usr/bin/wps"}), 2: frozenset({"/usr/bin/evince"})}
    assert wang.keys == {"user:wang", "dept:finance", "role:analyst", "role:auditor"}
    assert wang.line == 1
    li = s.by_name["li"]
    assert (li.clearance, li.trained_until, li.status, li.roles) == (
        3,
        date(2027, 3, 31),
        "active",
        (),
    )
    new = s.by_name["new"]
    assert (new.clearance, new.trained_until, new.apps) == (0, None, {})


@pytest.mark.parametrize(
    ("word", "level"),
    [("核心", 3), ("重要", 2), ("一般", 1), ("core", 3), ("Important", 2), ("general", 1), (2, 2)],
)
def test_clearance_words(word: str | int, level: int) -> None:
    value = f'"{word}"' if isinstance(word, str) else str(word)
    text = f'[people.a]\nuid = 1\ndepartment = "x"\nclearance = {value}\n'
    assert Subjects.parse(text).by_name["a"].clearance == level


def test_requester_of_a_listed_person() -> None:
    sub = Subjects.parse(GOOD).requester(1003, "/usr/bin/wps", TODAY)
    assert (sub.name, sub.uid, sub.clearance, sub.status) == ("wang", 1003, 2, "active")
    assert (sub.exe, sub.today) == ("/usr/bin/wps", TODAY)
    untrained = Subjects.parse(GOOD).requester(1010, "", TODAY)
    assert untrained.trained_until == NEVER


@pytest.mark.parametrize("uid", [0, 4242, 65534])
def test_unknown_uids_root_included_have_nothing(uid: int) -> None:
    sub = Subjects.parse(GOOD).requester(uid, "/usr/bin/wps", TODAY)
    assert sub.name == f"uid:{uid}"
    assert sub.status == "unknown"
    assert sub.clearance == 0
    assert not sub.keys
    assert not sub.apps


def test_find_by_name_or_uid() -> None:
    s = Subjects.parse(GOOD)
    assert s.find("wang") is s.find("1003") is s.find("uid:1003") is s.by_name["wang"]
    assert s.find("nobody") is None


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("[people.a]\nuid = \n", 2, "not valid TOML"),
        ('[people.a]\nuid = 1\ndepartment = "x"\napps = { 绝密 = ["/x"] }\n', 4, '"绝密"'),
        ("", 0, "no people"),
        ('[staff.a]\nuid = 1\ndepartment = "x"\n', 1, "unknown top-level key 'staff'"),
        ('[people.Wang]\nuid = 1\ndepartment = "x"\n', 1, "login name"),
        ('[people.a]\nuid = 1\ndepartment = "x"\nclearence = "核心"\n', 4, "unknown key"),
        ('[people.a]\ndepartment = "x"\n', 1, "uid = N is required"),
        ('[people.a]\nuid = -1\ndepartment = "x"\n', 2, "uid = N is required"),
        ("[people.a]\nuid = 1\n", 1, "department"),
        ('[people.a]\nuid = 1\ndepartment = "x y"\n', 3, "department"),
        ('[people.a]\nuid = 1\ndepartment = "x"\nroles = "analyst"\n', 4, "must be a list"),
        ('[people.a]\nuid = 1\ndepartment = "x"\nroles = ["a,b"]\n', 4, "role 'a,b'"),
        ('[people.a]\nuid = 1\ndepartment = "x"\nclearance = "绝密"\n', 4, "核心/重要/一般"),
        ('[people.a]\nuid = 1\ndepartment = "x"\ntrained_until = "soon"\n', 4, "a date"),
        (
            '[people.a]\nuid = 1\ndepartment = "x"\ntrained_until = 2027-01-01T00:00:00\n',
            4,
            "a date",
        ),
        ('[people.a]\nuid = 1\ndepartment = "x"\nstatus = "retired"\n', 4, "status 'retired'"),
        (
            '[people.a]\nuid = 1\ndepartment = "x"\napps = { "绝密" = ["wps"] }\n',
            4,
            "absolute, normalised",
        ),
        (
            '[people.a]\nuid = 1\ndepartment = "x"\napps = { "五" = ["/x"] }\n',
            4,
            "not a level",
        ),
        (
            '[people.a]\nuid = 1\ndepartment = "x"\n\n[people.b]\nuid = 1\ndepartment = "y"\n',
            6,
            "uid 1 of 'b' is also the uid of 'a'",
        ),
        (
            '[people.a]\nuid = 1\ndepartment = "x"\n\n[people.a.apps]\n"绝密" = "/usr/bin/wps"\n',
            5,
            "must be a list of executable paths",
        ),
    ],
)
def test_errors_name_file_line_and_fix(text: str, line: int, reason: str) -> None:
    with pytest.raises(PolicyError) as err:
        Subjects.parse(text, "policies/subjects.toml")
    assert err.value.file == "policies/subjects.toml"
    assert err.value.line == line, err.value
    assert reason in err.value.reason
    prefix = f"policies/subjects.toml:{line}: " if line else "policies/subjects.toml: "
    assert str(err.value).startswith(prefix)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        Subjects.load(tmp_path / "subjects.toml")
