"""USBGuard rule language: USBGuard's own parser corpus, escapes, evaluation tables."""

from __future__ import annotations

from pathlib import Path

import pytest
from baomi.devices.rules import (
    Condition,
    DeviceIdPattern,
    Rule,
    RuleError,
    RuleSet,
    device_bytes,
    quote,
)

from agent.errors import ConfigError

from .fakes import usb

# USBGuard's parser test corpus, shipped beside the repository (never copied into it).
CORPUS = Path(__file__).parents[4] / ".." / "shared" / "testdata" / "usbguard"
GOOD = CORPUS / "test-rules.good"
BAD = CORPUS / "test-rules.bad"

needs_corpus = pytest.mark.skipif(
    not (GOOD.is_file() and BAD.is_file()),
    reason=f"USBGuard rule corpus not found at {CORPUS.resolve()} (shared/testdata/usbguard)",
)


def _lines(path: Path) -> list[tuple[int, str]]:
    return [(n, line) for n, line in enumerate(path.read_text().split("\n"), 1) if line]


# --------------------------------------------------------------------------- corpus


@needs_corpus
def test_every_good_line_parses_and_round_trips() -> None:
    lines = _lines(GOOD)
    assert len(lines) == 770
    refused, not_round_trip, rules = [], [], 0
    for number, line in lines:
        try:
            ruleset = RuleSet.parse(line, path="test-rules.good")
        except RuleError as e:
            refused.append(f"{number}: {e.reason}: {line}")
            continue
        for rule in ruleset:
            rules += 1
            if Rule.parse(str(rule)) != rule:
                not_round_trip.append(f"{number}: {line}\n  -> {rule}")
    assert refused == []
    assert not_round_trip == []
    comments = sum(1 for _, line in lines if line.lstrip().startswith("#"))
    assert comments == 3
    assert rules == 770 - comments


@needs_corpus
def test_good_file_parses_as_a_whole() -> None:
    ruleset = RuleSet.parse(GOOD.read_text(), path=str(GOOD))
    assert len(ruleset) == 767
    assert ruleset.entries[0].line == 1
    assert str(ruleset.rules[0]) == "allow"


@needs_corpus
def test_every_bad_line_is_refused() -> None:
    lines = _lines(BAD)
    assert len(lines) == 75
    accepted = []
    for number, line in lines:
        try:
            RuleSet.parse(line, path="test-rules.bad")
        except RuleError as e:
            assert e.file == "test-rules.bad"
            assert e.line == 1
            assert e.reason
        else:
            accepted.append(f"{number}: {line}")
    assert accepted == []


# --------------------------------------------------------------------------- syntax


def test_rule_error_names_file_line_and_column() -> None:
    text = 'allow id 0781:5581\n# a comment\nallow nmae "x"\n'
    with pytest.raises(RuleError) as info:
        RuleSet.parse(text, path="/etc/baomi/devices.rules")
    err = info.value
    assert isinstance(err, ConfigError)
    assert (err.file, err.line) == ("/etc/baomi/devices.rules", 3)
    assert "column 7" in err.reason and "'nmae'" in err.reason
    assert str(err).startswith("/etc/baomi/devices.rules:3: ")


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("allow", "allow"),
        ("allow\t # note", "allow"),
        ("allow\t0781:5581\t# stick", "allow id 0781:5581"),
        ("allow#comment", "allow"),
        ("block 0781:*", "block id 0781:*"),
        ("reject *:*", "reject id *:*"),
        ("allow id { 0781:5581 }", "allow id 0781:5581"),
        ("allow id equals { 0781:5581 }", "allow id 0781:5581"),
        ("allow id one-of {0781:5581 0951:*}", "allow id one-of { 0781:5581 0951:* }"),
        ("allow id 0781:55AA", "allow id 0781:55aa"),
        ("allow with-interface 08:*:*", "allow with-interface 08:*:*"),
        ("allow with-interface { 08:06:50  03:01:* }", "allow with-interface { 08:06:50 03:01:* }"),
        ("allow with-interface match-all { 0E:*:* }", "allow with-interface match-all { 0e:*:* }"),
        (
            'allow label "x" with-connect-type "hotplug" if true via-port "1-2" hash "h" '
            'parent-hash "p" name "n" serial "s" id 0781:5581',
            'allow id 0781:5581 serial "s" name "n" hash "h" parent-hash "p" via-port "1-2" '
            'if true with-connect-type "hotplug" label "x"',
        ),
        ("allow if equals { true !false }", "allow if { true !false }"),
        ("allow if !localtime(09:00-17:30)", "allow if !localtime(09:00-17:30)"),
        ("allow if random(0.25)", "allow if random(0.25)"),
        ("allow if rule-applied(30)", "allow if rule-applied(30)"),
        ("allow if rule-evaluated(01:00:00)", "allow if rule-evaluated(01:00:00)"),
        (
            "allow if allowed-matches(with-interface one-of { 03:00:01 03:01:01 })",
            "allow if allowed-matches(with-interface one-of { 03:00:01 03:01:01 })",
        ),
        ("match", "match"),
        ("device 1d6b:0002", "device id 1d6b:0002"),
        ('allow name "ab#c"  # trailing', 'allow name "ab#c"'),
    ],
)
def test_canonical_form(text: str, canonical: str) -> None:
    rule = Rule.parse(text)
    assert str(rule) == canonical
    assert Rule.parse(canonical) == rule


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("Allow", "target"),
        ("allow id 0781:558", "device id"),
        ("allow id 12345:1234", "device id"),
        ("allow with-interface 08:6:50", "interface"),
        ("allow with-interface 08:*:50", "protocol must be *"),
        ('allow name "a""b"', "unexpected"),
        ('allow name { "a""b" }', "blank"),
        ('allow name { "a" "b"', "not closed"),
        ("allow name {}", "empty set"),
        ('allow name equals "x"', "expected '{'"),
        ('allow name "\\n"', "not supported"),
        ('allow name "\\t"', "not supported"),
        ('allow name "\\101"', "not supported"),
        ('allow name "\\q"', "invalid escape"),
        ('allow name "\\x4"', "two hex digits"),
        ('allow name "\\xZZ"', "two hex digits"),
        ('allow name "a\rb"', "not closed"),
        ("allow if true(1)", "no argument"),
        ("allow if random(1.5)", "probability"),
        ("allow if random(x)", "probability"),
        ("allow if random()", "empty condition argument"),
        ("allow if localtime", "localtime needs"),
        ("allow if localtime(25:00)", "HH:MM"),
        ("allow if localtime(10:00-09:00)", "begin <= end"),
        ("allow if localtime(1:00xyz)", "HH:MM"),
        ("allow if rule-applied(yesterday)", "past duration"),
        ("allow if allowed-matches(if nope)", "allowed-matches query"),
        ("allow if allowed-matches(allowed)", "allowed-matches query"),
        ("allow if if", "unknown condition"),
        ('allow label "a" label "b"', "given twice"),
        ("allow if true if false", "given twice"),
        ("allow if { " + " ".join(["true"] * 65) + " }", "at most 64"),
        ("allow # only a comment is fine\nallow name", "expected a blank"),
    ],
)
def test_refused(text: str, why: str) -> None:
    with pytest.raises(RuleError) as info:
        RuleSet.parse(text)
    assert why in info.value.reason


def test_comments_and_blank_lines() -> None:
    text = "\n# comment\n  # indented comment\r\nallow id 0781:5581 # pinned\r\nblock\n"
    ruleset = RuleSet.parse(text, path="r")
    assert [(e.line, str(e.rule)) for e in ruleset.entries] == [
        (4, "allow id 0781:5581"),
        (5, "block"),
    ]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("allow\nblock\r\n", "r:2: column 6: a carriage return ends the line (a CRLF file)"),
        (" allow", "r:1: column 1: blanks before the rule: start it in column 1"),
        ("allow id 0781:5581\t", "r:1: column 19: blanks after the rule: remove them"),
        ("allow\n \t\n", "r:2: column 1: a line of only blanks: make it empty"),
    ],
)
def test_blanks_and_carriage_returns_usbguard_refuses(text: str, why: str) -> None:
    with pytest.raises(RuleError) as info:
        RuleSet.parse(text, path="r")
    assert why in str(info.value)


def test_empty_text_is_an_empty_rule_set() -> None:
    assert len(RuleSet.parse("")) == 0
    with pytest.raises(RuleError, match="no rule"):
        Rule.parse("# nothing")


def test_nested_allowed_matches_is_bounded() -> None:
    deep = "true"
    for _ in range(6):
        deep = f"allowed-matches(if {deep})"
    with pytest.raises(RuleError):
        Rule.parse(f"allow if {deep}")


# --------------------------------------------------------------------------- strings


def test_escapes_decode_to_bytes() -> None:
    rule = Rule.parse('allow name "a\\"b\\\\c\\x41\\xe4\\xb8\\xad 中"')
    assert rule.name is not None
    assert rule.name.values == (b'a"b\\cA\xe4\xb8\xad ' + "中".encode(),)
    # Written back as printable ASCII only.
    assert str(rule) == 'allow name "a\\"b\\\\cA\\xe4\\xb8\\xad \\xe4\\xb8\\xad"'


def test_condition_argument_is_kept_raw() -> None:
    rule = Rule.parse('allow if allowed-matches(name "x\\x29")')
    assert rule.conditions is not None
    assert rule.conditions.values == (Condition("allowed-matches", 'name "x\\x29"'),)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", b"plain"),
        ("中文", "中文".encode()),
        ("bad\udcff\udc80", b"bad\xff\x80"),  # surrogateescape from invalid UTF-8
        ("lone\ud800", b"lone\xed\xa0\x80"),  # kept, never dropped
    ],
)
def test_device_bytes(text: str, expected: bytes) -> None:
    assert device_bytes(text) == expected


def test_quote_is_printable_ascii_and_reparses() -> None:
    every_byte = bytes(range(256))
    literal = quote(every_byte)
    assert literal.isascii() and literal.isprintable()
    assert "\n" not in literal
    rule = Rule.parse(f"allow name {literal}")
    assert rule.name is not None and rule.name.values == (every_byte,)


# --------------------------------------------------------------------------- evaluation

STICK = usb(
    "08:06:50",
    usb_id="0781:5581",
    serial="S1",
    name="Ultra",
    descriptor_hash="H=",
    parent_hash="P=",
    port="1-2",
    connect_type="hotplug",
)
COMBO = usb("03:01:01", "08:06:50", usb_id="05ac:12a8", serial="", name="Combo")


@pytest.mark.parametrize(
    ("rule", "stick", "combo"),
    [
        ("allow", True, True),
        # id, with wildcards and set operators
        ("allow 0781:5581", True, False),
        ("allow 0781:*", True, False),
        ("allow *:*", True, True),
        ("allow 0781:5582", False, False),
        ("allow id 05AC:12A8", False, True),
        ("allow id one-of { 1234:* 0781:* }", True, False),
        ("allow id none-of { 0781:* }", False, True),
        ("allow id all-of { 0781:* 0781:5581 }", True, False),
        ("allow id equals { 0781:5581 }", True, False),
        ("allow id equals { 0781:5581 0781:* }", False, False),
        ("allow id equals-ordered { 0781:* }", True, False),
        ("allow id match-all { 0781:* 05ac:* }", True, True),
        # string attributes: exact bytes, case-sensitive
        ('allow serial "S1"', True, False),
        ('allow serial "s1"', False, False),
        ('allow serial ""', False, True),
        ('allow serial one-of { "x" "S1" }', True, False),
        ('allow serial none-of { "S1" }', False, True),
        ('allow serial match-all { "S1" "" }', True, True),
        ('allow serial all-of { "S1" "x" }', False, False),
        ('allow name "Ultra"', True, False),
        ('allow name "Ultr"', False, False),
        ('allow hash "H="', True, False),
        ('allow parent-hash "P="', True, False),
        ('allow parent-hash "Q="', False, False),
        ('allow via-port "1-2"', True, True),
        ('allow via-port "1-2.1"', False, False),
        ('allow with-connect-type "hotplug"', True, True),
        ('allow with-connect-type one-of { "hardwired" "unknown" }', False, False),
        ('allow label "only a note"', True, True),
        # interfaces
        ("allow with-interface 08:*:*", True, False),
        ("allow with-interface 08:06:*", True, False),
        ("allow with-interface 08:05:*", False, False),
        ("allow with-interface 08:06:50", True, False),
        ("allow with-interface all-of { 08:*:* 03:*:* }", False, True),
        ("allow with-interface one-of { 03:*:* 0e:*:* }", False, True),
        ("allow with-interface none-of { 03:*:* }", True, False),
        ("allow with-interface equals { 08:*:* 03:01:01 }", False, True),
        ("allow with-interface equals-ordered { 08:*:* 03:*:* }", False, False),
        ("allow with-interface equals-ordered { 03:*:* 08:*:* }", False, True),
        ("allow with-interface match-all { 08:*:* }", True, False),
        ("allow with-interface match-all { 08:*:* 03:*:* 0e:*:* }", True, True),
        # several attributes: all must match
        ('allow 0781:5581 serial "S1" with-interface 08:*:*', True, False),
        ('allow 0781:5581 serial "S2" with-interface 08:*:*', False, False),
        # conditions Baomi evaluates
        ("allow if true", True, True),
        ("allow if false", False, False),
        ("allow if !true", False, False),
        ("allow if !false", True, True),
        ("allow if one-of { false true }", True, True),
        ("allow if all-of { true false }", False, False),
        ("allow if none-of { false !true }", True, True),
        ("allow if equals-ordered { true !false }", True, True),
        ("allow if match-all { true true }", True, True),
        # unknown conditions: three-valued
        ("allow if random", None, None),
        ("allow if !localtime(00:00-23:59)", None, None),
        ("allow if one-of { true random }", True, True),
        ("allow if one-of { false random }", None, None),
        ("allow if all-of { false random }", False, False),
        ("allow if none-of { true rule-applied }", False, False),
        ("allow if none-of { false rule-evaluated }", None, None),
        ("allow 0781:5582 if random", False, False),
    ],
)
def test_applies_to(rule: str, stick: bool | None, combo: bool | None) -> None:
    parsed = Rule.parse(rule)
    assert parsed.applies_to(STICK) is stick
    assert parsed.applies_to(COMBO) is combo


def test_device_strings_compare_as_bytes() -> None:
    device = usb("08:06:50", name="bad\udcff", serial="中")
    assert Rule.parse('allow name "bad\\xff" serial "\\xe4\\xb8\\xad"').applies_to(device)
    assert Rule.parse('allow name "bad\\xfe"').applies_to(device) is False


def test_device_id_pattern() -> None:
    assert DeviceIdPattern("*", "*").matches("0781", "5581")
    assert DeviceIdPattern("0781", "*").matches("0781", "0001")
    assert not DeviceIdPattern("0781", "5581").matches("0781", "5582")


# --------------------------------------------------------------------------- rule sets


@pytest.mark.parametrize(
    ("text", "target", "line"),
    [
        ("block 0781:5581\nallow", "block", 1),
        ("allow 0951:*\nreject 0781:*\nallow", "reject", 2),
        ("match\ndevice\nallow 0781:*\nblock", "allow", 3),  # match/device never decide
        ("allow if false\nblock", "block", 2),
        ("allow if random\nallow if !false", "allow", 2),  # unknown allow: skipped
        ("block 1234:*", "block", 0),  # nothing matches: implicit target
        ("", "block", 0),
    ],
)
def test_first_match_wins(text: str, target: str, line: int) -> None:
    ruleset = RuleSet.parse(text, path="rules.conf")
    decision = ruleset.evaluate(STICK)
    assert decision.target == target
    found = ruleset.first_match(STICK)
    if line:
        assert found is not None and found.entry.line == line
        assert decision.rule == str(found.entry.rule)
        assert f"rules.conf:{line}" in decision.reason
    else:
        assert found is None
        assert decision.rule == ""
        assert "implicit target block" in decision.reason


def test_implicit_target_can_be_set() -> None:
    assert RuleSet.parse("", implicit_target="reject").evaluate(STICK).target == "reject"
    with pytest.raises(RuleError):
        RuleSet.parse("", implicit_target="maybe")  # type: ignore[arg-type]


@pytest.mark.parametrize("target", ["block", "reject"])
def test_unknown_condition_on_a_deny_rule_applies(target: str) -> None:
    ruleset = RuleSet.parse(f"{target} 0781:* if localtime(09:00-17:00)\nallow", path="r")
    decision = ruleset.evaluate(STICK)
    assert decision.target == target
    assert "fail closed" in decision.reason
    found = ruleset.first_match(STICK)
    assert found is not None and found.fail_closed


def test_condition_evaluate() -> None:
    assert Condition("true").evaluate() is True
    assert Condition("true", negated=True).evaluate() is False
    assert Condition("random", "0.5").evaluate() is None
    assert Condition("random", "0.5", negated=True).evaluate() is None
