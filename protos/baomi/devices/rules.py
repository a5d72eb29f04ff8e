"""USBGuard's rule language (``usbguard-rules.conf(5)``), parsed and evaluated in Python.

A rule is ``TARGET [vvvv:pppp] [ATTRIBUTE VALUE | ATTRIBUTE [OPERATOR] { VALUE ... }]...``
with the targets ``allow``, ``block``, ``reject``, ``match`` and ``device`` and the
attributes ``id``, ``name``, ``serial``, ``hash``, ``parent-hash``, ``via-port``,
``with-interface``, ``with-connect-type``, ``label`` and ``if`` (conditions). The parser
follows USBGuard's PEG grammar (``src/Library/RuleParser/Grammar.hpp``) and the checks its
actions make, so a file USBGuard refuses is refused here and the other way round, with
these deliberate differences:

* ``vvvv:pppp`` is compared case-insensitively (USBGuard compares the hex strings as
  written, so ``id 0781:55A1`` never matches a device that sysfs reports as ``55a1``).
* ``match-all`` means what the manual says, "every value of the device is among the
  rule's values", for every attribute (USBGuard's string attributes answer true always).
* ``true`` and ``false`` take no argument (USBGuard ignores one silently), ``random(p)``
  needs ``0 <= p <= 1`` and times must be whole ``HH:MM[:SS]`` values.
* ``label`` may be given once (USBGuard takes two without saying which one holds).

Blanks before or after a rule, a line of only blanks and a carriage return at the end
(CRLF files) are refused, as USBGuard refuses them. ``make usbguard-oracle`` unpacks
USBGuard's own ``usbguard-rule-parser``, and a test holds this parser to it.

Strings are byte strings, as in USBGuard: the only escapes are ``\\"``, ``\\\\`` and
``\\xHH``; other characters stand for their UTF-8 bytes. A device string is compared by
its bytes too (see :func:`device_bytes`), and :func:`quote` writes any byte string back
as pure printable ASCII, so a rule generated from hostile device strings re-parses to
exactly the same values.

**Conditions.** ``true`` and ``false`` are evaluated. ``localtime``, ``random``,
``rule-applied``, ``rule-evaluated`` and ``allowed-matches`` are parsed and checked but
depend on a clock, chance, rule history or the other devices present, which a secret
host must not let decide; they evaluate to *unknown*. Unknown values combine by
three-valued logic (``one-of { true random }`` is still true), and a rule whose
conditions stay unknown fails closed: an ``allow`` rule does not apply, a ``block`` or
``reject`` rule does. So no condition Baomi cannot evaluate ever lets a device in.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, Generic, Literal, TypeVar, cast

from baomi.devices.model import UsbDevice, UsbInterface
from baomi.errors import ConfigError

Target = Literal["allow", "block", "reject", "match", "device"]
Decision = Literal["allow", "block", "reject"]
SetOperator = Literal["all-of", "one-of", "none-of", "equals", "equals-ordered", "match-all"]

TARGETS: Final[tuple[Target, ...]] = ("allow", "block", "reject", "match", "device")
DECISIONS: Final[tuple[Decision, ...]] = ("allow", "block", "reject")
# equals-ordered before equals: the grammar tries them in this order and both are
# followed by a blank, so the longer one must be tried first.
SET_OPERATORS: Final[tuple[SetOperator, ...]] = (
    "all-of", "one-of", "none-of", "equals-ordered", "equals", "match-all",
)  # fmt: skip
CONDITIONS: Final = frozenset(
    {"allowed-matches", "localtime", "true", "false", "random", "rule-applied",
     "rule-evaluated"}
)  # fmt: skip

MAX_LINE_CHARS = 1 << 20  # characters of one rule line; generated rules stay far below
MAX_CONDITIONS = 64  # USBGuard keeps condition results in a 64-bit mask
_ALLOWED_MATCHES_DEPTH = 4  # nesting of allowed-matches(...) queries inside each other

_BLANKS = " \t"
_HEX4 = r"[0-9A-Fa-f]{4}"
_DEVICE_ID_RE = re.compile(rf"({_HEX4}|\*):({_HEX4}|\*)")
_INTERFACE_RE = re.compile(r"([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2}|\*):([0-9A-Fa-f]{2}|\*)")
_KEYWORD_RE = re.compile(r"[a-z][a-z-]*")
_CONDITION_ID_RE = re.compile(r"[a-zA-Z-][a-zA-Z0-9-]*")
_STRING_RUN_RE = re.compile(r'[^"\\\r\n]+')
_ARGUMENT_RUN_RE = re.compile(r"[^)\\\r\n]+")
_TIME_RE = re.compile(r"(\d{1,2}):(\d{1,2})(?::(\d{1,2}))?")
_SECONDS_RE = re.compile(r"\d{1,9}")
# Escapes the grammar accepts after a backslash (besides \xHH and \NNN); USBGuard's
# unescaping then refuses all of them inside strings, see _string().
_GRAMMAR_SINGLE_ESCAPES = frozenset("abfnrtv\\'0\n")
_STRING_ATTRIBUTES: Final = (
    "name", "serial", "hash", "parent-hash", "via-port", "with-connect-type", "label",
)  # fmt: skip
_ATTRIBUTE_NAMES: Final = ("id", *_STRING_ATTRIBUTES, "with-interface", "if")


class RuleError(ConfigError):
    """A rule line that USBGuard's grammar (or Baomi's stricter checks) refuses."""

    def __init__(self, file: str, line: int, reason: str) -> None:
        super().__init__(
            f"{file}:{line}: {reason} (rule syntax: usbguard-rules.conf(5); fix or "
            "comment out the line with '#')"
        )
        self.file = file
        self.line = line
        self.reason = reason


class _ParseError(Exception):
    """Internal: the text at ``column`` (0-based) cannot be parsed."""

    def __init__(self, column: int, reason: str) -> None:
        super().__init__(reason)
        self.column = column
        self.reason = reason


# --------------------------------------------------------------------------- strings


def device_bytes(text: str) -> bytes:
    """The bytes a device string stands for.

    Strings read with ``errors="surrogateescape"`` carry undecodable bytes as lone
    surrogates U+DC80..U+DCFF; those become the bytes again. Any other lone surrogate is
    kept as its (invalid) UTF-8 form: nothing a device sent is ever dropped, so a rule
    cannot match a device whose string differs from the one it names.
    """
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        pass
    out = bytearray()
    for char in text:
        point = ord(char)
        if 0xDC80 <= point <= 0xDCFF:
            out.append(point - 0xDC00)
        else:
            out += char.encode("utf-8", "surrogatepass")
    return bytes(out)


def quote(value: bytes) -> str:
    """``value`` as a USBGuard string literal: printable ASCII only, like USBGuard writes."""
    out = ['"']
    for byte in value:
        if byte == 0x22:
            out.append('\\"')
        elif byte == 0x5C:
            out.append("\\\\")
        elif 0x20 <= byte <= 0x7E:
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    out.append('"')
    return "".join(out)


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class DeviceIdPattern:
    """``vvvv:pppp``, ``vvvv:*`` or ``*:*`` (lowercase hex)."""

    vendor: str
    product: str

    def matches(self, vendor: str, product: str) -> bool:
        """Whether a device with this (lowercase) vendor and product id is in the pattern."""
        if self.vendor == "*":
            return True
        if self.vendor != vendor:
            return False
        return self.product in ("*", product)

    def __str__(self) -> str:
        return f"{self.vendor}:{self.product}"


@dataclass(frozen=True, slots=True)
class InterfacePattern:
    """``cc:ss:pp``, ``cc:ss:*`` or ``cc:*:*``; ``None`` stands for ``*``."""

    cls: int
    subclass: int | None = None
    protocol: int | None = None

    def matches(self, interface: UsbInterface) -> bool:
        """Whether ``interface`` has this class (and subclass and protocol where given)."""
        return (
            self.cls == interface.cls
            and self.subclass in (None, interface.subclass)
            and self.protocol in (None, interface.protocol)
        )

    def __str__(self) -> str:
        sub = "*" if self.subclass is None else f"{self.subclass:02x}"
        proto = "*" if self.protocol is None else f"{self.protocol:02x}"
        return f"{self.cls:02x}:{sub}:{proto}"


@dataclass(frozen=True, slots=True)
class Condition:
    """One ``[!]identifier[(argument)]`` of an ``if`` attribute.

    ``argument`` is kept exactly as written (USBGuard does not unescape it either).
    """

    identifier: str
    argument: str | None = None
    negated: bool = False

    def evaluate(self) -> bool | None:
        """True or false where Baomi can tell, ``None`` (unknown) otherwise."""
        if self.identifier == "true":
            value: bool | None = True
        elif self.identifier == "false":
            value = False
        else:
            # Clock, chance, rule history or other devices: see the module docstring.
            return None
        return (not value) if self.negated else value

    def __str__(self) -> str:
        text = ("!" if self.negated else "") + self.identifier
        return text if self.argument is None else f"{text}({self.argument})"


V = TypeVar("V", DeviceIdPattern, InterfacePattern, Condition, bytes)


def _value_text(value: DeviceIdPattern | InterfacePattern | Condition | bytes) -> str:
    return quote(value) if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class Attribute(Generic[V]):
    """The values of one attribute and the set operator that combines them."""

    values: tuple[V, ...]
    operator: SetOperator = "equals"

    def rule_text(self, name: str) -> str:
        """``name value`` or ``name [operator] { value ... }`` as USBGuard writes it."""
        values = [_value_text(v) for v in self.values]
        if len(values) == 1 and self.operator == "equals":
            return f"{name} {values[0]}"
        operator = "" if self.operator == "equals" else f"{self.operator} "
        return f"{name} {operator}{{ {' '.join(values)} }}"


def _solve(
    operator: SetOperator,
    rule_values: Sequence[V],
    device_values: Sequence[object],
    matches: Callable[[V, object], bool],
) -> bool:
    """USBGuard's set semantics: does the device's value set satisfy the rule's?"""

    def found(rule_value: V) -> bool:
        return any(matches(rule_value, d) for d in device_values)

    if operator == "all-of":
        return all(found(r) for r in rule_values)
    if operator == "one-of":
        return any(found(r) for r in rule_values)
    if operator == "none-of":
        return not any(found(r) for r in rule_values)
    if operator == "equals":
        return len(rule_values) == len(device_values) and all(found(r) for r in rule_values)
    if operator == "equals-ordered":
        return len(rule_values) == len(device_values) and all(
            matches(r, d) for r, d in zip(rule_values, device_values, strict=True)
        )
    # match-all: every device value is one the rule names.
    return all(any(matches(r, d) for r in rule_values) for d in device_values)


def _conditions_hold(attribute: Attribute[Condition]) -> bool | None:
    """The ``if`` attribute in three-valued logic: True, False or None (unknown)."""
    results = [c.evaluate() for c in attribute.values]
    if attribute.operator == "one-of":
        return True if True in results else (None if None in results else False)
    if attribute.operator == "none-of":
        return False if True in results else (None if None in results else True)
    # all-of, equals, equals-ordered and match-all all mean "every condition holds".
    return False if False in results else (None if None in results else True)


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """A device reduced to the value sets USBGuard's attributes are compared with."""

    vendor: str
    product: str
    serial: bytes
    name: bytes
    hash: bytes
    parent_hash: bytes
    via_port: bytes
    with_connect_type: bytes
    interfaces: tuple[UsbInterface, ...]

    @classmethod
    def of(cls, device: UsbDevice) -> DeviceFacts:
        """The facts of ``device``; every string as the bytes the device sent."""
        return cls(
            vendor=device.vendor_id.lower(),
            product=device.product_id.lower(),
            serial=device_bytes(device.serial),
            name=device_bytes(device.name),
            hash=device_bytes(device.descriptor_hash),
            parent_hash=device_bytes(device.parent_hash),
            via_port=device_bytes(device.port),
            with_connect_type=device_bytes(device.connect_type),
            interfaces=device.interfaces,
        )


def _id_matches(pattern: DeviceIdPattern, value: object) -> bool:
    vendor, product = cast("tuple[str, str]", value)
    return pattern.matches(vendor, product)


def _interface_matches(pattern: InterfacePattern, value: object) -> bool:
    return pattern.matches(cast("UsbInterface", value))


def _bytes_equal(pattern: bytes, value: object) -> bool:
    return pattern == value


@dataclass(frozen=True, slots=True)
class Rule:
    """One parsed rule; ``str(rule)`` writes it back in USBGuard's canonical order."""

    target: Target
    id: Attribute[DeviceIdPattern] | None = None
    serial: Attribute[bytes] | None = None
    name: Attribute[bytes] | None = None
    hash: Attribute[bytes] | None = None
    parent_hash: Attribute[bytes] | None = None
    via_port: Attribute[bytes] | None = None
    with_interface: Attribute[InterfacePattern] | None = None
    conditions: Attribute[Condition] | None = None
    with_connect_type: Attribute[bytes] | None = None
    label: Attribute[bytes] | None = None

    @classmethod
    def parse(cls, text: str, *, path: str = "<rule>", line: int = 1) -> Rule:
        """The rule in ``text`` (one line); a comment or blank line is an error here."""
        rule = _parse_line(text, path, line)
        if rule is None:
            raise RuleError(path, line, "no rule on this line, only blanks or a comment")
        return rule

    def applies_to(self, device: UsbDevice | DeviceFacts) -> bool | None:
        """Whether the rule matches ``device``: True, False, or None when the attributes
        match but the conditions cannot be evaluated (see the module docstring)."""
        facts = device if isinstance(device, DeviceFacts) else DeviceFacts.of(device)
        if self.id is not None and not _solve(
            self.id.operator, self.id.values, ((facts.vendor, facts.product),), _id_matches
        ):
            return False
        for attribute, value in (
            (self.serial, facts.serial),
            (self.name, facts.name),
            (self.hash, facts.hash),
            (self.parent_hash, facts.parent_hash),
            (self.via_port, facts.via_port),
            (self.with_connect_type, facts.with_connect_type),
        ):
            # A device has exactly one value of each string attribute ("" when absent).
            if attribute is not None and not _solve(
                attribute.operator, attribute.values, (value,), _bytes_equal
            ):
                return False
        if self.with_interface is not None and not _solve(
            self.with_interface.operator,
            self.with_interface.values,
            facts.interfaces,
            _interface_matches,
        ):
            return False
        # label is a note for people; USBGuard never matches on it either.
        return True if self.conditions is None else _conditions_hold(self.conditions)

    def __str__(self) -> str:
        parts: list[str] = [self.target]
        for name, attribute in (
            ("id", self.id),
            ("serial", self.serial),
            ("name", self.name),
            ("hash", self.hash),
            ("parent-hash", self.parent_hash),
            ("via-port", self.via_port),
            ("with-interface", self.with_interface),
            ("if", self.conditions),
            ("with-connect-type", self.with_connect_type),
            ("label", self.label),
        ):
            if attribute is not None:
                parts.append(attribute.rule_text(name))
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class DeviceDecision:
    """What to do with a device, the rule that decided (``""`` for a default) and why."""

    target: Decision
    rule: str
    reason: str
    classes: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class RuleEntry:
    """A rule and the line of the file it came from."""

    line: int
    rule: Rule


@dataclass(frozen=True, slots=True)
class RuleMatch:
    """The first rule that decides about a device and how it applied."""

    entry: RuleEntry
    target: Decision
    fail_closed: bool  # the conditions were unknown and the rule applied to stay safe


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The rules of one file, evaluated first match wins as USBGuard does."""

    path: str
    entries: tuple[RuleEntry, ...]
    implicit_target: Decision = "block"

    @classmethod
    def parse(
        cls, text: str, *, path: str = "<rules>", implicit_target: Decision = "block"
    ) -> RuleSet:
        """Every rule of ``text``; the first bad line raises :class:`RuleError`."""
        if implicit_target not in DECISIONS:
            raise RuleError(
                path, 0, f"implicit target {implicit_target!r} is not allow, block or reject"
            )
        entries = []
        for number, line in enumerate(text.split("\n"), start=1):
            rule = _parse_line(line, path, number)
            if rule is not None:
                entries.append(RuleEntry(number, rule))
        return cls(path, tuple(entries), implicit_target)

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The rules in file order."""
        return tuple(e.rule for e in self.entries)

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.entries)

    def first_match(self, device: UsbDevice | DeviceFacts) -> RuleMatch | None:
        """The first ``allow``/``block``/``reject`` rule that applies, or None.

        ``match`` and ``device`` rules never decide. An ``allow`` rule with unknown
        conditions is skipped; a ``block`` or ``reject`` rule with unknown conditions
        applies (fail closed).
        """
        facts = device if isinstance(device, DeviceFacts) else DeviceFacts.of(device)
        for entry in self.entries:
            target = entry.rule.target
            if target == "match" or target == "device":  # noqa: PLR1714 (mypy narrows only this form)
                continue
            applies = entry.rule.applies_to(facts)
            if applies is None and target != "allow":
                return RuleMatch(entry, target, fail_closed=True)
            if applies:
                return RuleMatch(entry, target, fail_closed=False)
        return None

    def evaluate(self, device: UsbDevice) -> DeviceDecision:
        """The decision for ``device``: the first matching rule's target, else the implicit one."""
        found = self.first_match(device)
        if found is None:
            return DeviceDecision(
                self.implicit_target,
                "",
                f"no rule in {self.path} matches; implicit target {self.implicit_target}",
            )
        return DeviceDecision(found.target, str(found.entry.rule), self.describe(found))

    def describe(self, found: RuleMatch) -> str:
        """A one-line reason naming the file and line of the deciding rule."""
        where = f"{self.path}:{found.entry.line}"
        if found.fail_closed:
            return (
                f"rule at {where} applies: its conditions cannot be evaluated on this "
                f"host, so the {found.target} rule is taken (fail closed)"
            )
        return f"rule at {where} matches"


def rule_for_device(device: UsbDevice, target: Target = "allow") -> Rule:
    """A rule pinning exactly ``device``, in the shape of ``usbguard generate-policy``.

    It names id, serial, name, hash and parent-hash (when known), via-port, the
    interfaces with ``equals`` and the connect type (when known). Empty serial and name
    are written as ``""`` so that they pin too.
    """

    def one(text: str) -> Attribute[bytes]:
        return Attribute((device_bytes(text),))

    return Rule(
        target=target,
        id=Attribute((DeviceIdPattern(device.vendor_id.lower(), device.product_id.lower()),)),
        serial=one(device.serial),
        name=one(device.name),
        hash=one(device.descriptor_hash) if device.descriptor_hash else None,
        parent_hash=one(device.parent_hash) if device.parent_hash else None,
        via_port=one(device.port) if device.port else None,
        with_interface=(
            Attribute(
                tuple(InterfacePattern(i.cls, i.subclass, i.protocol) for i in device.interfaces)
            )
            if device.interfaces
            else None
        ),
        with_connect_type=one(device.connect_type) if device.connect_type else None,
    )


# --------------------------------------------------------------------------- parser


def _parse_line(text: str, path: str, line: int) -> Rule | None:
    """The rule on one line, None for a blank or comment line; RuleError otherwise."""
    if len(text) > MAX_LINE_CHARS:
        raise RuleError(path, line, f"line is {len(text)} characters; at most {MAX_LINE_CHARS}")
    try:
        return _Parser(text).line()
    except _ParseError as e:
        column, reason = e.column, e.reason
        if text.endswith("\r") and _parses(text[:-1]):
            column = len(text) - 1
            reason = (
                "a carriage return ends the line (a CRLF file): convert the file with "
                "dos2unix (USBGuard refuses it)"
            )
        raise RuleError(path, line, f"column {column + 1}: {reason}") from None


def _parses(text: str) -> bool:
    try:
        _Parser(text).line()
    except _ParseError:
        return False
    return True


@dataclass(slots=True)
class _Fields:
    """The attributes of a rule while it is parsed."""

    id: Attribute[DeviceIdPattern] | None = None
    with_interface: Attribute[InterfacePattern] | None = None
    conditions: Attribute[Condition] | None = None
    strings: dict[str, Attribute[bytes]] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)


class _Parser:
    """Recursive descent over one line, mirroring USBGuard's PEG grammar."""

    def __init__(self, text: str, depth: int = 0) -> None:
        self.text = text
        self.depth = depth  # allowed-matches(...) nesting

    # -- helpers

    def _blanks(self, i: int) -> int:
        text, n = self.text, len(self.text)
        while i < n and text[i] in _BLANKS:
            i += 1
        return i

    def _at_boundary(self, i: int) -> bool:
        """End of line, a blank or a comment: where a token may end."""
        return i >= len(self.text) or self.text[i] in " \t#"

    def _shown(self, i: int) -> str:
        """A short, printable excerpt of the text at ``i`` for messages."""
        end = i
        while end < len(self.text) and self.text[end] not in _BLANKS and end - i < 24:
            end += 1
        return repr(self.text[i:end]) if end > i else "end of line"

    # -- line and rule

    def line(self) -> Rule | None:
        text = self.text
        i = self._blanks(0)
        if not text or (i < len(text) and text[i] == "#"):
            return None
        # USBGuard's grammar allows blanks around a rule only before a comment, and its
        # loader refuses a line of blanks; refusing them here too keeps a file that
        # passes here loadable by usbguard-daemon.
        if i == len(text):
            raise _ParseError(0, "a line of only blanks: make it empty (USBGuard refuses it)")
        if i > 0:
            raise _ParseError(
                0, "blanks before the rule: start it in column 1 (USBGuard refuses them)"
            )
        for target in TARGETS:
            if text.startswith(target, i) and self._at_boundary(i + len(target)):
                i += len(target)
                break
        else:
            raise _ParseError(
                i,
                "expected a target (allow, block, reject, match or device), "
                f"found {self._shown(i)}",
            )
        fields = _Fields()
        j = self._blanks(i)
        if j > i and _DEVICE_ID_RE.match(text, j):
            pattern, i = self._device_id(j)
            fields.id = Attribute((pattern,))
            fields.seen.add("id")
        while True:
            j = self._blanks(i)
            if j == i or j == len(text) or text[j] == "#":
                break
            i = self._attribute(j, fields)
        j = self._blanks(i)
        if j < len(text) and text[j] != "#":
            raise _ParseError(j, f"unexpected {self._shown(j)}; values are separated by blanks")
        if j == len(text) and j > i:
            raise _ParseError(i, "blanks after the rule: remove them (USBGuard refuses them)")
        strings = fields.strings
        return Rule(
            target=target,
            id=fields.id,
            serial=strings.get("serial"),
            name=strings.get("name"),
            hash=strings.get("hash"),
            parent_hash=strings.get("parent-hash"),
            via_port=strings.get("via-port"),
            with_interface=fields.with_interface,
            conditions=fields.conditions,
            with_connect_type=strings.get("with-connect-type"),
            label=strings.get("label"),
        )

    def _attribute(self, i: int, fields: _Fields) -> int:
        text = self.text
        m = _KEYWORD_RE.match(text, i)
        keyword = m.group() if m else ""
        if keyword not in _ATTRIBUTE_NAMES:
            raise _ParseError(
                i,
                f"unknown attribute {self._shown(i)}; expected one of "
                f"{', '.join(_ATTRIBUTE_NAMES)}",
            )
        k = i + len(keyword)
        if k >= len(text) or text[k] not in _BLANKS:
            raise _ParseError(k, f"{keyword}: expected a blank and a value")
        if keyword in fields.seen:
            raise _ParseError(
                i, f"{keyword} given twice; write one {keyword} with a set: {keyword} {{ ... }}"
            )
        fields.seen.add(keyword)
        start = self._blanks(k)
        if keyword == "id":
            fields.id, end = self._values(start, keyword, self._device_id)
        elif keyword == "with-interface":
            fields.with_interface, end = self._values(start, keyword, self._interface)
        elif keyword == "if":
            fields.conditions, end = self._values(start, keyword, self._condition)
            if len(fields.conditions.values) > MAX_CONDITIONS:
                raise _ParseError(
                    start,
                    f"if: {len(fields.conditions.values)} conditions; at most {MAX_CONDITIONS}",
                )
        else:
            fields.strings[keyword], end = self._values(start, keyword, self._string)
        return end

    def _values(
        self, i: int, keyword: str, one: Callable[[int], tuple[V, int]]
    ) -> tuple[Attribute[V], int]:
        """``value`` or ``[operator] { value ... }``."""
        text = self.text
        operator: SetOperator = "equals"
        for name in SET_OPERATORS:
            end = i + len(name)
            if text.startswith(name, i) and end < len(text) and text[end] in _BLANKS:
                operator = name
                i = self._blanks(end)
                if i >= len(text) or text[i] != "{":
                    raise _ParseError(i, f"{keyword} {name}: expected '{{' and a set of values")
                break
        if i >= len(text) or text[i] != "{":
            value, end = one(i)
            return Attribute((value,)), end
        values: list[V] = []
        i = self._blanks(i + 1)
        while True:
            if i < len(text) and text[i] == "}" and not values:
                raise _ParseError(i, f"{keyword}: empty set; give at least one value")
            value, end = one(i)
            values.append(value)
            i = self._blanks(end)
            if i < len(text) and text[i] == "}":
                return Attribute(tuple(values), operator), i + 1
            if i >= len(text):
                raise _ParseError(i, f"{keyword}: set not closed; add '}}'")
            if i == end:
                raise _ParseError(i, f"{keyword}: expected a blank or '}}' after a value")

    # -- value kinds

    def _device_id(self, i: int) -> tuple[DeviceIdPattern, int]:
        m = _DEVICE_ID_RE.match(self.text, i)
        if m is None:
            raise _ParseError(
                i, f"expected a device id vvvv:pppp (4 hex digits or *), found {self._shown(i)}"
            )
        vendor, product = m.group(1).lower(), m.group(2).lower()
        if vendor == "*" and product != "*":
            raise _ParseError(i, f"device id {m.group()}: with vendor * the product must be * too")
        return DeviceIdPattern(vendor, product), m.end()

    def _interface(self, i: int) -> tuple[InterfacePattern, int]:
        m = _INTERFACE_RE.match(self.text, i)
        if m is None:
            raise _ParseError(
                i,
                "expected an interface type cc:ss:pp (hex, ss and pp may be *), "
                f"found {self._shown(i)}",
            )
        sub, proto = m.group(2), m.group(3)
        if sub == "*" and proto != "*":
            raise _ParseError(
                i, f"interface {m.group()}: with subclass * the protocol must be * too"
            )
        return (
            InterfacePattern(
                int(m.group(1), 16),
                None if sub == "*" else int(sub, 16),
                None if proto == "*" else int(proto, 16),
            ),
            m.end(),
        )

    def _string(self, i: int) -> tuple[bytes, int]:
        text, n = self.text, len(self.text)
        if i >= n or text[i] != '"':
            raise _ParseError(i, f'expected a "quoted string", found {self._shown(i)}')
        out = bytearray()
        i += 1
        while True:
            m = _STRING_RUN_RE.match(text, i)
            if m is not None:
                out += device_bytes(m.group())
                i = m.end()
            if i >= n or text[i] in "\r\n":
                raise _ParseError(i, 'string not closed; add the closing "')
            if text[i] == '"':
                return bytes(out), i + 1
            # A backslash. The grammar allows more escapes than USBGuard's unescaping
            # accepts; USBGuard refuses the rule for those, and so do we.
            escape = text[i + 1 : i + 2]
            if escape in ('"', "\\"):
                out.append(ord(escape))
                i += 2
            elif escape == "x":
                digits = text[i + 2 : i + 4]
                if len(digits) != 2 or not all(c in "0123456789abcdefABCDEF" for c in digits):
                    raise _ParseError(i, "\\x must be followed by two hex digits")
                out.append(int(digits, 16))
                i += 4
            elif escape in _GRAMMAR_SINGLE_ESCAPES or escape.isdigit():
                raise _ParseError(
                    i,
                    f"escape \\{escape} is not supported; write the byte as \\xHH "
                    '(USBGuard strings know only \\", \\\\ and \\xHH)',
                )
            else:
                raise _ParseError(i, f'invalid escape {text[i : i + 2]!r}; use \\", \\\\ or \\xHH')

    def _condition(self, i: int) -> tuple[Condition, int]:
        text = self.text
        negated = text.startswith("!", i)
        j = i + 1 if negated else i
        m = _CONDITION_ID_RE.match(text, j)
        if m is None:
            raise _ParseError(
                j,
                f"expected a condition (true, false, localtime(...), ...), found {self._shown(j)}",
            )
        identifier = m.group()
        j = m.end()
        argument: str | None = None
        if text.startswith("(", j):
            argument, j = self._argument(j)
        self._check_condition(i, identifier, argument)
        return Condition(identifier, argument, negated), j

    def _argument(self, i: int) -> tuple[str, int]:
        """The raw text of ``(...)``; escapes are checked as the grammar does, not decoded."""
        text, n = self.text, len(self.text)
        start = i + 1
        i = start
        while True:
            m = _ARGUMENT_RUN_RE.match(text, i)
            if m is not None:
                i = m.end()
            if i >= n or text[i] in "\r\n":
                raise _ParseError(i, "condition argument not closed; add ')'")
            if text[i] == ")":
                if i == start:
                    raise _ParseError(i, "empty condition argument; drop the parentheses")
                return text[start:i], i + 1
            escape = text[i + 1 : i + 2]
            if escape == "x":
                digits = text[i + 2 : i + 4]
                if len(digits) != 2 or not all(c in "0123456789abcdefABCDEF" for c in digits):
                    raise _ParseError(i, "\\x must be followed by two hex digits")
                i += 4
            elif escape.isdigit() and escape.isascii():
                i += 2
                for _ in range(2):
                    if text[i : i + 1].isdigit() and text[i].isascii():
                        i += 1
            elif escape in _GRAMMAR_SINGLE_ESCAPES or escape == ")":
                i += 2
            else:
                raise _ParseError(i, f"invalid escape {text[i : i + 2]!r} in a condition argument")

    def _check_condition(self, i: int, identifier: str, argument: str | None) -> None:
        """USBGuard builds each condition while parsing and refuses bad arguments then."""
        if identifier not in CONDITIONS:
            raise _ParseError(
                i, f"unknown condition {identifier!r}; known: {', '.join(sorted(CONDITIONS))}"
            )
        if identifier in ("true", "false"):
            if argument is not None:
                raise _ParseError(i, f"{identifier} takes no argument")
        elif identifier == "random":
            if argument is not None:
                try:
                    p = float(argument)
                except ValueError:
                    p = -1.0
                if not 0.0 <= p <= 1.0:
                    raise _ParseError(
                        i, f"random({argument}): the argument is a probability from 0 to 1"
                    )
        elif identifier == "localtime":
            if argument is None:
                raise _ParseError(
                    i, "localtime needs a time or range: localtime(HH:MM[:SS][-HH:MM[:SS]])"
                )
            begin, _, end = argument.partition("-")
            first = _daytime(begin)
            last = _daytime(end) if end else first
            if first is None or last is None or first > last:
                raise _ParseError(
                    i, f"localtime({argument}): write HH:MM[:SS][-HH:MM[:SS]] with begin <= end"
                )
        elif identifier in ("rule-applied", "rule-evaluated"):
            if (
                argument is not None
                and _daytime(argument) is None
                and not _SECONDS_RE.fullmatch(argument)
            ):
                raise _ParseError(
                    i, f"{identifier}({argument}): write the past duration as HH:MM:SS, HH:MM or SS"
                )
        elif argument is not None:  # allowed-matches: the argument is a rule without target
            if self.depth >= _ALLOWED_MATCHES_DEPTH:
                raise _ParseError(i, "allowed-matches queries nested too deeply")
            try:
                _Parser("allow " + argument, self.depth + 1).line()
            except _ParseError as e:
                raise _ParseError(i, f"allowed-matches query: {e.reason}") from None


def _daytime(text: str) -> int | None:
    """Seconds since midnight of ``HH:MM[:SS]``, or None."""
    m = _TIME_RE.fullmatch(text)
    if m is None:
        return None
    hours, minutes, seconds = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    if hours > 23 or minutes > 59 or seconds > 60:
        return None
    return hours * 3600 + minutes * 60 + seconds
