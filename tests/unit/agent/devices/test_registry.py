"""The register of 涉密专用U盘: who may plug which stick, and refusals with line numbers."""

from __future__ import annotations

import dataclasses
from datetime import date
from pathlib import Path

import pytest
from baomi.devices.registry import RegistryError, StickRegistry

from agent.errors import ConfigError

from . import fakes

REPO = Path(__file__).parents[4]

REGISTER = """\
# test register
[[stick]]
label = "BM-U-2026-001"
owner = "wang"
level = "机密"
serial = "4C530001230815117313"
id = "0781:5581"
hash = "Xb1Ck6bZk0VdJQhLw+5W7fJk3Zr1mZ0d8mP1tR2v9sA="
status = "active"
registered = 2026-01-15

[[stick]]
label = "BM-U-2026-002"
owner = "li"
level = "秘密"
serial = "60A44C4252F0E1A0B9160C85"
id = "0951:1666"
status = "active"
registered = 2026-02-03

[[stick]]
label = "BM-U-2024-017"
owner = "zhao"
level = "绝密"
serial = "AA00000000012345"
id = "090C:1000"
status = "lost"
registered = 2024-06-10

[[stick]]
label = "BM-U-2023-004"
owner = "sun"
level = "秘密"
serial = "RETIRED0001"
id = "0781:5567"
status = "retired"
registered = 2023-03-01
"""

KINGSTON = fakes.usb("08:06:50", usb_id="0951:1666", serial="60A44C4252F0E1A0B9160C85")


@pytest.fixture
def registry() -> StickRegistry:
    return StickRegistry.parse(REGISTER, path="usb-registry.toml")


def test_entries(registry: StickRegistry) -> None:
    first, second, lost, _ = registry.sticks
    assert (first.label, first.owner, first.level, first.usb_id) == (
        "BM-U-2026-001", "wang", 2, "0781:5581",
    )  # fmt: skip
    assert first.registered == date(2026, 1, 15)
    assert first.line == 2
    assert second.descriptor_hash == ""
    assert lost.usb_id == "090c:1000"  # written in lowercase
    assert lost.level == 3


def test_registered_stick_with_matching_hash(registry: StickRegistry) -> None:
    verdict = registry.check(fakes.STICK)
    assert verdict.allowed
    assert verdict.stick is not None and verdict.stick.label == "BM-U-2026-001"
    assert "BM-U-2026-001" in verdict.reason and "机密" in verdict.reason


def test_registered_stick_without_hash_matches_on_serial_and_id(registry: StickRegistry) -> None:
    assert registry.check(KINGSTON).allowed
    assert registry.check(dataclasses.replace(KINGSTON, descriptor_hash="anything")).allowed


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"serial": "4C530001230815117314"}, "not in the register"),
        ({"serial": "4c530001230815117313"}, "not in the register"),  # exact bytes
        ({"product_id": "5583"}, "not in the register"),
        ({"descriptor_hash": "another="}, "hash differs"),
        ({"descriptor_hash": ""}, "hash differs"),
    ],
)
def test_refused(registry: StickRegistry, change: dict[str, str], words: str) -> None:
    verdict = registry.check(dataclasses.replace(fakes.STICK, **change))  # type: ignore[arg-type]
    assert not verdict.allowed
    assert words in verdict.reason


@pytest.mark.parametrize(
    ("usb_id", "serial", "label", "status"),
    [
        ("090c:1000", "AA00000000012345", "BM-U-2024-017", "lost"),
        ("0781:5567", "RETIRED0001", "BM-U-2023-004", "retired"),
    ],
)
def test_lost_and_retired_sticks_are_refused(
    registry: StickRegistry, usb_id: str, serial: str, label: str, status: str
) -> None:
    verdict = registry.check(fakes.usb("08:06:50", usb_id=usb_id, serial=serial))
    assert not verdict.allowed
    assert verdict.stick is not None and verdict.stick.label == label
    assert label in verdict.reason and status in verdict.reason


def test_reissued_serial_prefers_the_active_entry() -> None:
    retired_first = """\
[[stick]]
label = "BM-U-2020-001"
owner = "zhou"
level = "秘密"
serial = "60A44C4252F0E1A0B9160C85"
id = "0951:1666"
status = "retired"
registered = 2020-05-05
"""
    registry = StickRegistry.parse(retired_first + "\n" + REGISTER)
    verdict = registry.check(KINGSTON)
    assert verdict.allowed
    assert verdict.stick is not None and verdict.stick.label == "BM-U-2026-002"
    assert not StickRegistry.parse(retired_first).check(KINGSTON).allowed


def _without(key: str) -> str:
    return "\n".join(line for line in REGISTER.splitlines() if not line.startswith(f"{key} ="))


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (REGISTER.replace('level = "机密"', 'level = "top"'), 5, "level 'top'"),
        (REGISTER.replace('id = "0781:5581"', 'id = "781:5581"'), 7, "vendor:product"),
        (REGISTER.replace('status = "lost"', 'status = "missing"'), 27, "status 'missing'"),
        (
            REGISTER.replace("registered = 2026-01-15", 'registered = "2026-01-15"'),
            10,
            "YYYY-MM-DD",
        ),
        (
            REGISTER.replace("registered = 2026-01-15", "registered = 2026-01-15T10:00:00"),
            10,
            "YYYY-MM-DD",
        ),
        (REGISTER.replace('owner = "li"', "owner = 7"), 14, "quoted string"),
        (REGISTER.replace('owner = "li"', 'owner = " "'), 14, "owner is empty"),
        (REGISTER.replace('serial = "AA00000000012345"', 'serial = ""'), 25, "serial is empty"),
        (REGISTER.replace('owner = "wang"', 'owner = "wang"\ncolour = "red"'), 5, "unknown key"),
        (REGISTER.replace('label = "BM-U-2026-002"', 'label = "BM-U-2026-001"'), 12, "unique"),
        (
            REGISTER.replace('label = "BM-U-2026-001"', 'label = "bad label!"'),
            3,
            "label 'bad label!'",
        ),
        (
            REGISTER.replace(
                'serial = "60A44C4252F0E1A0B9160C85"', 'serial = "4C530001230815117313"'
            ).replace('id = "0951:1666"', 'id = "0781:5581"'),
            12,
            "retire one",
        ),
        (_without("owner"), 2, "no 'owner'"),
        (REGISTER.replace('[[stick]]\nlabel = "BM-U-2026-002"', "[[stick]\nlabel = 1"), 12, "TOML"),
        ("version = 1\n" + REGISTER, 1, "unknown top-level key"),
        ('stick = "no"\n', 1, "array of tables"),
    ],
)
def test_bad_entries_name_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(RegistryError) as info:
        StickRegistry.parse(text, path="usb-registry.toml")
    err = info.value
    assert isinstance(err, ConfigError)
    assert err.file == "usb-registry.toml"
    assert err.line == line, err
    assert words in err.reason


def test_load(tmp_path: Path) -> None:
    missing = StickRegistry.load(tmp_path / "usb-registry.toml")
    assert missing.sticks == ()
    assert not missing.check(fakes.STICK).allowed

    path = tmp_path / "usb-registry.toml"
    path.write_text(REGISTER, encoding="utf-8")
    assert len(StickRegistry.load(path).sticks) == 4

    path.write_bytes(REGISTER.encode() + b"\n# \xff\n")
    with pytest.raises(RegistryError, match="UTF-8") as info:
        StickRegistry.load(path)
    assert info.value.line == REGISTER.count("\n") + 2


def test_shipped_register_loads() -> None:
    registry = StickRegistry.load(REPO / "policies" / "usb-registry.toml")
    assert len(registry.sticks) == 3
    assert registry.check(fakes.STICK).allowed
