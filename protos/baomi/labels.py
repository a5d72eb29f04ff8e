"""Classification labels (密级标志) kept as extended attributes on the labelled file.

A label is four ``user.baomi.*`` attributes:

``user.baomi.level``     绝密/机密/秘密/内部 (or top-secret/secret/confidential/internal,
                         or 3/2/1/0); written as the Chinese term
``user.baomi.until``     保密期限, ISO date ``YYYY-MM-DD``; after it the file is
                         declassified by itself (自行解密) and counts as level 0
``user.baomi.scope``     知悉范围, comma list of ``user:NAME``, ``dept:NAME``, ``role:NAME``;
                         empty or absent means any subject cleared for the level
``user.baomi.label_id``  the classification record (定密依据) the label comes from
``user.baomi.home``      the file's *home*: the absolute path where it was labelled.
                         Policy rules are matched against the home, never against the
                         path a file was reached through, so a hard link, a rename, a
                         bind mount or another mount namespace changes nothing

``user.baomi.derived``  on a *derived* file only (a copy or anything else written by a
                         process that had read a labelled file): the label id, else the
                         home, of the file its level came from
``user.baomi.seal``     HMAC-SHA256 of the attributes above and of the file's identity
                         (filesystem id, inode, birth time), under the host's label key

No ``user.baomi.*`` attribute at all means "not labelled": unclassified. Anything else
that is not a well-formed label (unknown attribute, missing level, bad value, a value
over its size bound) reads as a *fail-closed* label: level 3 with ``problem`` saying what
is wrong, which the decision model denies.

Attribute values are attacker-controlled: anyone with write permission on a file may
set ``user.*`` attributes on it. So every value is bounded in length and validated
before it is believed, and -- where a label key is given, as the file guard always
gives it -- a label is believed only with a seal made by that key for that very file.
A level lowered or a scope widened by the file's writer, a label (with its seal)
copied from another file, or one left on an inode number that was reused, reads as
fail-closed. The key (``label.key`` in the agent's state directory, 32 random bytes,
root-only) is made on first use; labels are set through ``baomi-agent label set``,
which seals them. A labelled file copied to another host, or restored from a backup as
a new inode, must be labelled again there.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import hmac
import os
import re
import secrets
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from baomi.policy.errors import LabelError

XATTR_PREFIX = "user.baomi."
XATTR_LEVEL = "user.baomi.level"
XATTR_UNTIL = "user.baomi.until"
XATTR_SCOPE = "user.baomi.scope"
XATTR_ID = "user.baomi.label_id"
XATTR_SEAL = "user.baomi.seal"
XATTR_HOME = "user.baomi.home"
XATTR_DERIVED = "user.baomi.derived"
_KNOWN = frozenset(
    {XATTR_LEVEL, XATTR_UNTIL, XATTR_SCOPE, XATTR_ID, XATTR_SEAL, XATTR_HOME, XATTR_DERIVED}
)

LABEL_KEY_FILE = "label.key"  # in the agent's state directory
LABEL_KEY_BYTES = 32
_SEAL_CONTEXT = b"baomi label seal v1\0"

# Size bounds of attribute values, bytes. A real level is at most 12 bytes (top-secret,
# 绝密 is 6), a date 10, a scope of 64 entries of 64 characters fits in 4 KiB.
MAX_LEVEL_BYTES = 32
MAX_UNTIL_BYTES = 32
MAX_SCOPE_BYTES = 4096
MAX_SCOPE_ENTRIES = 64
MAX_ID_BYTES = 128
MAX_HOME_BYTES = 4096  # PATH_MAX

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
#: The problem of a label read in the middle of a rewrite (or after a crash in one).
UPDATING_PROBLEM = "label update in progress or interrupted: set the label again"

# No control character and no undecodable byte (a surrogate from surrogateescape): a
# scope that is set must read back (see _text).
SCOPE_ENTRY_RE = re.compile(r"(user|dept|role):[^,\s\x00-\x1f\ud800-\udfff]{1,64}")
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
    #: Where the file was labelled (absolute path); policy rules match against it.
    home: str | None = None
    #: A derived file's source: its label id, else its home (None: labelled directly).
    derived_from: str | None = None

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
        if self.home is not None:
            parts.append(f"home {self.home}")
        if self.derived_from is not None:
            parts.append(f"derived from {self.derived_from}")
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


def parse_home(value: str | os.PathLike[str]) -> str:
    """A home: an absolute, normalised path (no ``.``/``..`` parts, no empty parts)."""
    text = os.fspath(value)
    try:
        size = len(text.encode())
    except UnicodeEncodeError:  # a path of undecodable bytes (surrogateescape)
        raise ValueError(f"home {text[:80]!r} is not UTF-8: rename the file first") from None
    if _CONTROL_RE.search(text):  # a label holding them reads as invalid (see _text)
        raise ValueError(f"home {text[:80]!r} holds control characters: rename the file first")
    if not text.startswith("/") or size > MAX_HOME_BYTES:
        raise ValueError(f"home {text[:80]!r} must be an absolute path of at most 4096 bytes")
    parts = text[1:].split("/")
    if text != "/" and any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"home {text[:80]!r} must be a normalised path (no //, . or ..)")
    return text


def parse_derived(value: str) -> str:
    """A derived file's source: a label id or a home."""
    if value.startswith("/"):
        return parse_home(value)
    return parse_label_id(value)


def policy_path(label: Label | None, opened: str) -> str:
    """The path policy rules are matched against: the label's home, else the path opened.

    Only an unlabelled file (or a label read without seal checks, which has no home
    when it predates homes) is decided by the path it was reached through.
    """
    if label is not None and label.home is not None:
        return label.home
    return opened


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
    if _CONTROL_RE.search(text):
        raise ValueError(f"{name} holds control characters")
    return text


_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")  # C0 controls but tab, LF, CR


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
            return invalid_label(UPDATING_PROBLEM)
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
        home = None
        if XATTR_HOME in ours:
            home = parse_home(_text(ours[XATTR_HOME], XATTR_HOME, MAX_HOME_BYTES))
        derived = None
        if XATTR_DERIVED in ours:
            derived = parse_derived(_text(ours[XATTR_DERIVED], XATTR_DERIVED, MAX_HOME_BYTES))
    except ValueError as e:
        return invalid_label(str(e))
    return Label(
        level=level, until=until, scope=scope, label_id=label_id, home=home, derived_from=derived
    )


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


def _parse_cached(raw: dict[str, bytes]) -> Label | None:
    """parse_label(raw), from the cache when the same values were seen: by everything
    but the home, which differs from file to file (it is parsed and added each time)."""
    home_raw = raw.get(XATTR_HOME)
    rest = raw if home_raw is None else {k: v for k, v in raw.items() if k != XATTR_HOME}
    cache_key = tuple(rest.items())
    try:
        label = _PARSED[cache_key]
    except KeyError:
        label = parse_label(rest)
        if sum(len(v) for v in rest.values()) <= _PARSED_MAX_BYTES:
            if len(_PARSED) >= _PARSED_MAX_ENTRIES:
                _PARSED.clear()  # crude, bounded and rare: labels are few
            _PARSED[cache_key] = label
    if home_raw is None or (label is not None and not label.valid):
        return label
    if label is None:
        return parse_label(raw)  # a home and nothing else: not a label (says why)
    try:
        home = parse_home(_text(home_raw, XATTR_HOME, MAX_HOME_BYTES))
    except ValueError as e:
        return invalid_label(str(e))
    return Label(
        label.level, label.until, label.scope, label.label_id, None, home, label.derived_from
    )


def read_label(  # noqa: PLR0911 - one return per way a label can fail
    target: FileRef, key: bytes | None = None, *, identity: bytes | None = None
) -> Label | None:
    """The label on a file (path or fd); None when unlabelled (unclassified).

    Unreadable or malformed attributes give a fail-closed label (level 3, ``problem``
    set); so does, when ``key`` is given, a label without a seal by ``key`` for this
    file. ``identity``: the file's ``file_identity()`` when the caller has it already.
    OSError propagates only when the file itself is not there.
    """
    raw = _read_raw(target)
    if isinstance(raw, Label):
        return raw
    if not raw:
        return None
    seal = raw.pop(XATTR_SEAL, None)
    label = _parse_cached(raw)
    if key is None or label is None or not label.valid:
        return label
    if seal is None:
        return invalid_label(
            f"{XATTR_SEAL} is missing: the label was not set with baomi-agent label set"
        )
    if not hmac.compare_digest(seal, _seal(key, target, raw, identity)):
        return invalid_label(
            "the seal does not match: the label was changed outside baomi-agent label set, "
            "or it belongs to another file; set it again"
        )
    if label.home is None:
        # Without a home the rules would match whatever path the file was reached by.
        return invalid_label(
            f"{XATTR_HOME} is missing (a label from before homes): set the label again"
        )
    return label


# --- seals ----------------------------------------------------------------------------
def load_label_key(path: Path, *, create: bool = False) -> bytes:
    """The label key kept at ``path``; with ``create``, made (0600) if there is none.

    Raises LabelError saying what to do when it cannot be read or is malformed.
    """
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        if not create:
            raise LabelError(
                f"{path}: no label key yet; the agent makes it when it starts "
                "(or label a file with baomi-agent label set as root)"
            ) from None
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            return load_label_key(path)  # made meanwhile by another process
        except OSError as e:
            raise LabelError(f"{path}: cannot make the label key: {e.strerror}") from e
        try:
            os.write(fd, secrets.token_bytes(LABEL_KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        return load_label_key(path)
    except OSError as e:
        raise LabelError(
            f"{path}: cannot read the label key ({e.strerror}); labels are sealed with it, "
            "so label files as root"
        ) from e
    if len(key) != LABEL_KEY_BYTES:
        raise LabelError(
            f"{path}: a label key is {LABEL_KEY_BYTES} bytes, this one {len(key)}; restore it "
            "from backup (a new key makes every sealed label fail-closed until relabelled)"
        )
    return key


class _StatxTimestamp(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_uint32), ("_pad", ctypes.c_int32))


class _Statx(ctypes.Structure):
    """``struct statx`` (linux/stat.h) up to the timestamps, padded to its 256 bytes."""

    _fields_ = (
        ("stx_mask", ctypes.c_uint32),
        ("stx_blksize", ctypes.c_uint32),
        ("stx_attributes", ctypes.c_uint64),
        ("stx_nlink", ctypes.c_uint32),
        ("stx_uid", ctypes.c_uint32),
        ("stx_gid", ctypes.c_uint32),
        ("stx_mode", ctypes.c_uint16),
        ("_spare0", ctypes.c_uint16),
        ("stx_ino", ctypes.c_uint64),
        ("stx_size", ctypes.c_uint64),
        ("stx_blocks", ctypes.c_uint64),
        ("stx_attributes_mask", ctypes.c_uint64),
        ("stx_atime", _StatxTimestamp),
        ("stx_btime", _StatxTimestamp),
        ("_rest", ctypes.c_uint8 * 160),
    )


_STATX_INO = 0x100
_STATX_BTIME = 0x800
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_libc = ctypes.CDLL(None, use_errno=True)
_libc.statx.argtypes = (
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_int,
    ctypes.c_uint,
    ctypes.POINTER(_Statx),
)


def file_identity(target: FileRef) -> bytes:
    """What makes a file this file: filesystem id, inode and birth time.

    The birth time (ext4, xfs, btrfs and tmpfs keep one; nobody can set it) tells a
    reused inode number from the file that had it; where there is none it is 0.
    Symlinks are followed, as the attribute calls follow them.
    """
    buf = _Statx()
    if isinstance(target, int):
        rc = _libc.statx(target, b"", _AT_EMPTY_PATH, _STATX_INO | _STATX_BTIME, buf)
        fsid = os.fstatvfs(target).f_fsid
    else:
        raw = os.fsencode(target)
        rc = _libc.statx(_AT_FDCWD, raw, 0, _STATX_INO | _STATX_BTIME, buf)
        fsid = os.statvfs(target).f_fsid
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), _describe_ref(target))
    born = buf.stx_btime if buf.stx_mask & _STATX_BTIME else _StatxTimestamp()
    return struct.pack("=QQqI", fsid & (2**64 - 1), buf.stx_ino, born.tv_sec, born.tv_nsec)


def _seal(
    key: bytes, target: FileRef, raw: Mapping[str, bytes], identity: bytes | None = None
) -> bytes:
    """The seal of label attributes ``raw`` (no seal among them) on ``target``, as hex."""
    message = [_SEAL_CONTEXT, file_identity(target) if identity is None else identity]
    for name in sorted(raw):
        message.append(name.encode() + b"\0" + struct.pack("=I", len(raw[name])) + raw[name])
    mac = _keyed(key).copy()  # a keyed HMAC copied: half the cost of hmac.new per seal
    mac.update(b"".join(message))
    return mac.hexdigest().encode()


@functools.lru_cache(maxsize=4)
def _keyed(key: bytes) -> hmac.HMAC:
    return hmac.new(key, digestmod=hashlib.sha256)


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
    key: bytes | None = None,
    home: str | os.PathLike[str] | None = None,
    derived_from: str | None = None,
) -> Label:
    """Label a file, sealed with ``key``; attributes not given are removed.

    ``home`` defaults to the file's present path (symlinks resolved; for an fd, the
    path the kernel gives for it). Returns the label written. Without ``key`` no seal
    is written, and a reader that checks seals (the file guard) takes the label for
    fail-closed. Raises LabelError when a value is invalid or the attributes cannot be
    written.
    """
    try:
        label = Label(
            level=parse_level(level),
            until=None if until is None else parse_until(until),
            scope=parse_scope(scope),
            label_id=None if label_id is None else parse_label_id(label_id),
            home=parse_home(_present_path(target) if home is None else home),
            derived_from=None if derived_from is None else parse_derived(derived_from),
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
    assert label.home is not None  # noqa: S101 - set above
    raw[XATTR_HOME] = label.home.encode()
    if label.derived_from is not None:
        raw[XATTR_DERIVED] = label.derived_from.encode()
    _write_raw(target, _sealed(raw, target, key))
    return label


def derive_label(target: FileRef, source: Label, key: bytes, *, home: str) -> Label | None:
    """Give ``target`` -- written by a process that had read a file labelled ``source``
    -- the source's level, period and scope, sealed with ``key``, its own ``home``, and
    the source's id (else home) as ``derived_from``. A file whose label is already as
    high or higher (or invalid: fail-closed already) keeps it. Returns the label written,
    None when the file kept its own; LabelError when it cannot be labelled.
    """
    present = read_label(target, key)
    if present is not None and (not present.valid or present.level >= source.level):
        return None
    return set_label(
        target,
        source.level,
        until=source.until,
        scope=source.scope,
        label_id=source.label_id,
        key=key,
        home=home,
        derived_from=source.label_id or source.home,
    )


def set_label_tree(
    directory: str | os.PathLike[str],
    level: str | int,
    *,
    until: str | date | None = None,
    scope: str | Iterable[str] = (),
    label_id: str | None = None,
    key: bytes | None = None,
) -> tuple[int, int]:
    """Label ``directory`` and every directory and regular file below it, each with
    its own home (its present path); symlinks and other files are left alone, and
    never followed. Returns (files, directories) labelled; LabelError on the first
    file that cannot be labelled (those before it keep their new labels).
    """
    top = Path(directory).resolve()
    if not top.is_dir():
        raise LabelError(f"{directory}: not a directory (label a single file without -r)")
    label = functools.partial(
        set_label, level=level, until=until, scope=scope, label_id=label_id, key=key
    )
    files, dirs = 0, 1
    label(top, home=top)
    for parent, dirnames, filenames in os.walk(top, onerror=_walk_error):
        for name in dirnames:
            path = Path(parent, name)
            if not path.is_symlink():
                label(path, home=path)
                dirs += 1
        for name in filenames:
            path = Path(parent, name)
            if path.is_file() and not path.is_symlink():
                label(path, home=path)
                files += 1
    return files, dirs


def _walk_error(e: OSError) -> None:
    raise LabelError(f"cannot list {e.filename}: {e.strerror}") from e


def _present_path(target: FileRef) -> str:
    """Where a file is now: its resolved path (an fd's from ``/proc/self/fd``)."""
    if isinstance(target, int):
        return str(Path(f"/proc/self/fd/{target}").readlink())
    return str(Path(target).resolve())


def _sealed(raw: dict[str, bytes], target: FileRef, key: bytes | None) -> dict[str, bytes]:
    if key is None:
        return raw
    try:
        return {**raw, XATTR_SEAL: _seal(key, target, raw)}
    except OSError as e:
        raise LabelError(f"cannot seal the label of {_describe_ref(target)}: {e.strerror}") from e


def clear_label(target: FileRef) -> bool:
    """Remove every ``user.baomi.*`` attribute; False when there was none."""
    raw = _read_raw(target)
    had = isinstance(raw, Label) or bool(raw)
    _write_raw(target, {})
    return had


def inherit_label(
    directory: FileRef, new_file: FileRef, key: bytes | None = None, *, name: str = ""
) -> Label | None:
    """Give a new file in a labelled directory the directory's label.

    With ``key`` the directory's seal is checked and the file's label sealed for the
    file; a directory label that is invalid (or, with ``key``, not sealed for it) is
    copied without a seal, so the file is equally fail-closed. The file's home is the
    directory's home joined with the file's ``name`` (default: the last part of
    ``new_file``), so a file made in a directory reached through another path is still
    decided by the directory's rules. A file that already carries a label keeps it.
    Returns the label the file ends up with (None: neither is labelled).
    """
    existing = _read_raw(new_file)
    if isinstance(existing, Label) or existing:
        return read_label(new_file, key)
    raw = _read_raw(directory)
    if isinstance(raw, Label):
        # The directory's attributes cannot be read: mark the file fail-closed too.
        raw = {XATTR_LEVEL: _UPDATING.encode()}
    if not raw:
        return None
    label = read_label(directory, key)
    raw.pop(XATTR_SEAL, None)
    base = name
    if not base and not isinstance(new_file, int):
        base = Path(new_file).name
    if label is not None and label.valid and label.home is not None and base and "/" not in base:
        raw[XATTR_HOME] = f"{label.home.rstrip('/')}/{base}".encode()
    else:
        raw.pop(XATTR_HOME, None)  # no trustworthy home: the file stays fail-closed
    _write_raw(new_file, _sealed(raw, new_file, key if label and label.valid else None))
    return read_label(new_file, key)
