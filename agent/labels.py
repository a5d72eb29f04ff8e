"""Classification labels (密级标志) kept as extended attributes on the labelled file.

A label is four ``user.baomi.*`` attributes:

``user.baomi.level``     绝密/机密/秘密/内部 (or top-secret/secret/confidential/internal,
                         or 3/2/1/0); written as the Chinese term
``user.baomi.until``     保密期限, ISO date ``YYYY-MM-DD``; after it the file is
                         declassified by itself (自行解密) and counts as level 0
``user.baomi.scope``     知悉范围, comma list of ``user:NAME``, ``dept:NAME``, ``role:NAME``;
                         empty or absent means any subject cleared for the level
``user.baomi.label_id``  the classification record (定密依据) the label comes from

No ``user.baomi.*`` attribute at all means "not labelled": unclassified. Anything else
that is not a well-formed label (unknown attribute, missing level, bad value, a value
over its size bound) reads as a *fail-closed* label: level 3 with ``problem`` saying what
is wrong, which the decision model denies.

Attribute values are attacker-controlled: anyone with write permission on a file may
set ``user.*`` attributes on it. So every value is bounded in length and validated
before it is believed, and protected trees must not be writable by ordinary users at
the Unix permission level (see ``policies/README.md``).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date

from agent.decision.errors import LabelError

XATTR_PREFIX = "user.baomi."
XATTR_LEVEL = "user.baomi.level"
XATTR_UNTIL = "user.baomi.until"
XATTR_SCOPE = "user.baomi.scope"
XATTR_ID = "user.baomi.label_id"
_KNOWN = frozenset({XATTR_LEVEL, XATTR_UNTIL, XATTR_SCOPE, XATTR_ID})

# Size bounds of attribute values, bytes. A real level is at most 12 bytes (top-secret,
# 绝密 is 6), a date 10, a scope of 64 entries of 64 characters fits in 4 KiB.
MAX_LEVEL_BYTES = 32
MAX_UNTIL_BYTES = 32
MAX_SCOPE_BYTES = 4096
MAX_SCOPE_ENTRIES = 64
MAX_ID_BYTES = 128

TOP_SECRET, SECRET, CONFIDENTIAL, UNCLASSIFIED = 3, 2, 1, 0

#: Canonical name of each level, as written to ``user.baomi.level``.
LEVEL_NAMES: Mapping[int, str] = {3: "绝密", 2: "机密", 1: "秘密", 0: "内部"}

_LEVEL_WORDS: Mapping[str, int] = {
    "绝密": 3, "机密": 2, "秘密": 1, "内部": 0, "公开": 0,
    "top-secret": 3, "secret": 2, "confidential": 1, "internal": 0,
    "unclassified": 0, "public": 0,
    "3": 3, "2": 2, "1": 1, "0": 0,
}  # fmt: skip

#: Written to ``user.baomi.level`` while a label is rewritten, so that a reader in the
#: middle of the update (or after a crash in it) sees a fail-closed label rather than a
#: mix of the old and new attributes (a new level with the old, wider scope, say).
_UPDATING = "updating"

SCOPE_ENTRY_RE = re.compile(r"(user|dept|role):[^,\s]{1,64}")
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_ID_RE = re.compile(r"[\w.:/#-]{1,128}")

# errno values meaning "the file itself is not there": the caller's problem, not a
# label's, so they propagate instead of reading as a fail-closed label.
_NO_FILE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EBADF})
_NO_XATTRS = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP})

#: A file by path or by open descriptor (os.*xattr accept both).
FileRef = int | str | os.PathLike[str]


@dataclass(frozen=True, slots=True)
class Label:
    """One file's classification. ``problem`` set means the label is invalid (fail-closed)."""

    level: int
    until: date | None = None
    scope: tuple[str, ...] = ()
    label_id: str | None = None
    problem: str | None = None

    @property
    def valid(self) -> bool:
        """False when the attributes on the file did not form a well-formed label."""
        return self.problem is None

    def describe(self) -> str:
        """One line for people: ``机密 (2) until 2031-06-30; scope dept:finance; id X``."""
        if self.problem is not None:
            return f"invalid label (treated as 绝密, denied): {self.problem}"
        parts = [f"{LEVEL_NAMES[self.level]} ({self.level})"]
        if self.until is not None:
            parts[0] += f" until {self.until.isoformat()}"
        parts.append("scope " + (",".join(self.scope) if self.scope else "any cleared subject"))
        if self.label_id is not None:
            parts.append(f"id {self.label_id}")
        return "; ".join(parts)


def parse_level(value: str | int) -> int:
    """A level word or number as 3/2/1/0; ValueError naming the accepted words."""
    word = str(value).strip().lower().replace("_", "-")
    try:
        return _LEVEL_WORDS[word]
    except KeyError:
        raise ValueError(
            f"{str(value)[:40]!r} is not a level: use 绝密/机密/秘密/内部, "
            "top-secret/secret/confidential/internal or 3/2/1/0"
        ) from None


def parse_until(value: str | date) -> date:
    """An ISO ``YYYY-MM-DD`` date (nothing looser: no week dates, no times)."""
    if isinstance(value, date):
        return value
    text = value.strip()
    if not _DATE_RE.fullmatch(text):
        raise ValueError(f"{value[:40]!r} is not a date: write it as YYYY-MM-DD")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a calendar date") from None


def parse_scope(value: str | Iterable[str]) -> tuple[str, ...]:
    """A need-to-know scope (comma list or sequence) as a tuple of unique entries."""
    entries = value.split(",") if isinstance(value, str) else list(value)
    if isinstance(value, str) and not value.strip():
        return ()
    if len(entries) > MAX_SCOPE_ENTRIES:
        raise ValueError(f"scope has {len(entries)} entries; at most {MAX_SCOPE_ENTRIES}")
    out: list[str] = []
    for raw in entries:
        entry = raw.strip()
        if not SCOPE_ENTRY_RE.fullmatch(entry):
            raise ValueError(
                f"scope entry {entry[:80]!r} is not user:NAME, dept:NAME or role:NAME "
                "(1 to 64 characters, no commas or spaces)"
            )
        if entry not in out:
            out.append(entry)
    return tuple(out)


def parse_label_id(value: str) -> str:
    """A label id: 1 to 128 word characters or ``. : / # -``."""
    text = value.strip()
    if not _ID_RE.fullmatch(text):
        raise ValueError(f"label id {value[:40]!r} must be 1 to 128 letters, digits or . : / # - _")
    return text


def effective_level(label: Label | None, today: date) -> int:
    """The level in force on ``today``: 0 when unlabelled or past ``until`` (自行解密).

    An invalid label keeps its fail-closed level 3 whatever its dates say.
    """
    if label is None:
        return UNCLASSIFIED
    if label.problem is None and label.until is not None and label.until < today:
        return UNCLASSIFIED
    return label.level


def invalid_label(problem: str) -> Label:
    """The fail-closed label standing in for attributes that do not form a label."""
    return Label(level=TOP_SECRET, problem=problem)


def _text(raw: bytes, name: str, limit: int) -> str:
    if len(raw) > limit:
        raise ValueError(f"{name} is {len(raw)} bytes; at most {limit}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{name} is not UTF-8 text") from None
    if any(ord(c) < 0x20 and c not in "\t\n\r" for c in text):
        raise ValueError(f"{name} holds control characters")
    return text


def parse_label(raw: Mapping[str, bytes]) -> Label | None:
    """The label that ``user.baomi.*`` attribute values form (name -> raw value).

    None when there is no attribute at all; a fail-closed label when they are not a
    well-formed label.
    """
    ours = {k: v for k, v in raw.items() if k.startswith(XATTR_PREFIX)}
    if not ours:
        return None
    unknown = sorted(set(ours) - _KNOWN)
    if unknown:
        return invalid_label(f"unknown attribute {unknown[0][:80]}: remove it or set the label")
    if XATTR_LEVEL not in ours:
        return invalid_label(f"{XATTR_LEVEL} is missing: set the label again")
    try:
        level_text = _text(ours[XATTR_LEVEL], XATTR_LEVEL, MAX_LEVEL_BYTES)
        if level_text.strip() == _UPDATING:
            return invalid_label("label update in progress or interrupted: set the label again")
        level = parse_level(level_text)
        until = None
        if XATTR_UNTIL in ours:
            until = parse_until(_text(ours[XATTR_UNTIL], XATTR_UNTIL, MAX_UNTIL_BYTES))
        scope: tuple[str, ...] = ()
        if XATTR_SCOPE in ours:
            scope = parse_scope(_text(ours[XATTR_SCOPE], XATTR_SCOPE, MAX_SCOPE_BYTES))
        label_id = None
        if XATTR_ID in ours:
            label_id = parse_label_id(_text(ours[XATTR_ID], XATTR_ID, MAX_ID_BYTES))
    except ValueError as e:
        return invalid_label(str(e))
    return Label(level=level, until=until, scope=scope, label_id=label_id)


def _describe_ref(target: FileRef) -> str:
    return f"fd {target}" if isinstance(target, int) else os.fspath(target)


def _read_raw(target: FileRef) -> dict[str, bytes] | Label:
    """The ``user.baomi.*`` attributes of ``target``, or a fail-closed label if unreadable.

    Raises OSError when the file is not there; an empty dict when the filesystem has no
    extended attributes (nothing can be labelled there).
    """
    try:
        names = os.listxattr(target)
    except OSError as e:
        if e.errno in _NO_XATTRS:
            return {}
        if e.errno in _NO_FILE:
            raise
        return invalid_label(f"cannot list extended attributes: {e.strerror}")
    raw: dict[str, bytes] = {}
    for name in names:
        if not name.startswith(XATTR_PREFIX):
            continue
        try:
            raw[name] = os.getxattr(target, name)
        except OSError as e:
            if e.errno == errno.ENODATA:  # removed since listxattr: read what is left
                continue
            if e.errno in _NO_FILE:
                raise
            return invalid_label(f"cannot read {name[:80]}: {e.strerror}")
    return raw


# Parsed labels by raw attribute values. A server holds few distinct labels, and parsing
# (decode, regexes, dates) costs about as much as the five syscalls that read them.
_PARSED: dict[tuple[tuple[str, bytes], ...], Label | None] = {}
_PARSED_MAX_ENTRIES = 4096
_PARSED_MAX_BYTES = 1024  # larger label values are parsed every time, never kept


def read_label(target: FileRef) -> Label | None:
    """The label on a file (path or fd); None when unlabelled (unclassified).

    Unreadable or malformed attributes give a fail-closed label (level 3, ``problem``
    set). OSError propagates only when the file itself is not there.
    """
    raw = _read_raw(target)
    if isinstance(raw, Label):
        return raw
    if not raw:
        return None
    key = tuple(raw.items())
    try:
        return _PARSED[key]
    except KeyError:
        pass
    label = parse_label(raw)
    if sum(len(v) for v in raw.values()) <= _PARSED_MAX_BYTES:
        if len(_PARSED) >= _PARSED_MAX_ENTRIES:
            _PARSED.clear()  # crude, bounded and rare: labels are few
        _PARSED[key] = label
    return label


def _write_raw(target: FileRef, raw: Mapping[str, bytes]) -> None:
    """Make the ``user.baomi.*`` attributes of ``target`` exactly ``raw`` (empty: none).

    The level is first set to the fail-closed "updating" marker and written last, so a
    reader never sees a half-written label as a valid one.
    """
    try:
        try:
            present = [n for n in os.listxattr(target) if n.startswith(XATTR_PREFIX)]
        except OSError as e:
            if e.errno in _NO_XATTRS and not raw:
                return  # nothing can be labelled there, so nothing is to clear
            raise
        if not present and not raw:
            return
        os.setxattr(target, XATTR_LEVEL, _UPDATING.encode())
        for name in present:
            if name != XATTR_LEVEL and name not in raw:
                os.removexattr(target, name)
        for name, value in raw.items():
            if name != XATTR_LEVEL:
                os.setxattr(target, name, value)
        if XATTR_LEVEL in raw:
            os.setxattr(target, XATTR_LEVEL, raw[XATTR_LEVEL])
        elif not raw:
            os.removexattr(target, XATTR_LEVEL)
    except OSError as e:
        if e.errno in _NO_XATTRS:
            raise LabelError(
                f"{_describe_ref(target)}: the filesystem does not support user extended "
                "attributes; keep protected files on ext4/xfs/btrfs/tmpfs (user_xattr)"
            ) from e
        raise LabelError(f"cannot write the label of {_describe_ref(target)}: {e.strerror}") from e


def set_label(
    target: FileRef,
    level: str | int,
    *,
    until: str | date | None = None,
    scope: str | Iterable[str] = (),
    label_id: str | None = None,
) -> Label:
    """Label a file; attributes not given are removed. Returns the label written.

    Raises LabelError when a value is invalid or the attributes cannot be written.
    """
    try:
        label = Label(
            level=parse_level(level),
            until=None if until is None else parse_until(until),
            scope=parse_scope(scope),
            label_id=None if label_id is None else parse_label_id(label_id),
        )
    except ValueError as e:
        raise LabelError(f"invalid label for {_describe_ref(target)}: {e}") from e
    raw = {XATTR_LEVEL: LEVEL_NAMES[label.level].encode()}
    if label.until is not None:
        raw[XATTR_UNTIL] = label.until.isoformat().encode()
    if label.scope:
        raw[XATTR_SCOPE] = ",".join(label.scope).encode()
    if label.label_id is not None:
        raw[XATTR_ID] = label.label_id.encode()
    _write_raw(target, raw)
    return label


def clear_label(target: FileRef) -> bool:
    """Remove every ``user.baomi.*`` attribute; False when there was none."""
    raw = _read_raw(target)
    had = isinstance(raw, Label) or bool(raw)
    _write_raw(target, {})
    return had


def inherit_label(directory: FileRef, new_file: FileRef) -> Label | None:
    """Give a new file in a labelled directory the directory's label.

    The attributes are copied as they are, so an invalid directory label makes an
    equally fail-closed file label. A file that already carries a label keeps it.
    Returns the label the file ends up with (None: neither is labelled).
    """
    existing = _read_raw(new_file)
    if isinstance(existing, Label) or existing:
        return read_label(new_file)
    raw = _read_raw(directory)
    if isinstance(raw, Label):
        # The directory's attributes cannot be read: mark the file fail-closed too.
        raw = {XATTR_LEVEL: _UPDATING.encode()}
    if not raw:
        return None
    _write_raw(new_file, raw)
    return read_label(new_file)
