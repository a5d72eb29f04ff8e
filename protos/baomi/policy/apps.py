"""Approved applications by identity, not by path.

``apps = { "绝密" = ["/opt/wps/wps"] }`` in subjects.toml names a program by a path; a
path proves nothing about the process that opens a file (a bind mount in a user
namespace puts any program at that path). When the file guard puts a policy in force,
:meth:`ApprovedApps.resolve` turns each listed path into the identity of the file it
names now: filesystem (``st_dev``), inode and a SHA-256 of the content. An opener runs
an approved application only when its executable (``/proc/PID/exe``, which the kernel
links to the inode it ran, whatever path it used) has that inode and that content.

Interpreters and the dynamic loader are never approved applications: they run whatever
script or program they are handed, so approving one approves everything
(:func:`interpreter_name`). Nor is a script (it runs as its interpreter), nor a program
inside a protected tree.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from baomi.policy.errors import PolicyError

if TYPE_CHECKING:  # subjects.py imports interpreter_name from here
    from baomi.policy.subjects import Subjects

_logger = logging.getLogger(__name__)

HASH_CHUNK = 1024 * 1024  # bytes read per step while hashing a program
MAX_APP_BYTES = 2 * 1024**3  # an approved program larger than this (bytes) is refused
HASHES_KEPT = 1024  # content hashes remembered by file version

#: Names of programs that run code they read: shells, language interpreters, the
#: dynamic loader. Matched against the basename of a path (and of its target).
INTERPRETER_RE = re.compile(
    r"(?:ld-linux.*|ld\.so.*|ld-musl.*"
    r"|(?:a|ba|rba|da|z|k|mk|pdk|c|tc|fi|y|lk)?sh|busybox|toybox"
    r"|python.*|pypy.*|perl.*|ruby.*|irb.*|node(?:js)?|deno|bun|lua.*|php.*"
    r"|tclsh.*|wish.*|expect|guile.*|R|Rscript|[gmn]?awk|java|jshell|osascript|pwsh)"
)
#: Directories whose interpreters and loaders are known by identity too, so that one
#: bind-mounted or hard-linked under another name is still recognised.
SYSTEM_DIRS = ("/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin")
LOADER_GLOBS = ("/lib64/ld-*", "/lib/ld-*", "/lib/*/ld-*", "/usr/lib/*/ld-*", "/usr/lib64/ld-*")

FileVersion = tuple[int, int, int, int, int]  # dev, ino, size, mtime_ns, ctime_ns


def interpreter_name(path: str) -> str | None:
    """The interpreter or loader ``path`` names by its basename (None: not one)."""
    name = path.rpartition("/")[2]
    return name if INTERPRETER_RE.fullmatch(name) else None


def is_loader_name(name: str) -> bool:
    """Whether an interpreter name (:func:`interpreter_name`) is the dynamic loader's."""
    return name.startswith(("ld-", "ld."))


def version_of(st: os.stat_result) -> FileVersion:
    """What a content hash is cached by: a file's identity and when it last changed."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class ContentHashes:
    """SHA-256 of file contents, remembered by :func:`version_of` (bounded)."""

    def __init__(self, kept: int = HASHES_KEPT) -> None:
        self._kept = kept
        self._hashes: dict[FileVersion, bytes] = {}
        self._lock = threading.Lock()

    def known(self, version: FileVersion) -> bytes | None:
        """The hash of a version already read, else None (no I/O)."""
        return self._hashes.get(version)

    def of_fd(self, fd: int) -> tuple[FileVersion, bytes]:
        """The version and SHA-256 of the regular file open as ``fd`` (read from 0)."""
        before = version_of(os.fstat(fd))
        digest = self._hashes.get(before)
        if digest is not None:
            return before, digest
        h = hashlib.sha256()
        offset = 0
        while chunk := os.pread(fd, HASH_CHUNK, offset):
            h.update(chunk)
            offset += len(chunk)
        after = version_of(os.fstat(fd))
        if after != before:
            # written while read: the digest is of no one version; never cache it
            raise OSError(f"changed while its content was hashed ({offset} bytes read)")
        digest = h.digest()
        with self._lock:
            if len(self._hashes) >= self._kept:
                self._hashes.clear()
            self._hashes[before] = digest
        return before, digest


@dataclass(frozen=True, slots=True)
class ApprovedApp:
    """One program listed in ``apps``, as the file it named when the policy loaded."""

    path: str  # as listed in subjects.toml; what the engine compares
    real: str  # the path with symlinks resolved: where it is opened to re-hash
    dev: int
    ino: int
    version: FileVersion
    sha256: bytes


class Interpreters:
    """The interpreters and loaders of this host, by inode (see :data:`SYSTEM_DIRS`)."""

    def __init__(self, by_inode: Mapping[tuple[int, int], str]) -> None:
        self.by_inode = by_inode

    @classmethod
    def scan(
        cls, dirs: Iterable[str] = SYSTEM_DIRS, loaders: Iterable[str] = LOADER_GLOBS
    ) -> Interpreters:
        """List the interpreters in ``dirs`` and the loaders matching ``loaders``."""
        found: dict[tuple[int, int], str] = {}
        candidates: list[str] = []
        for d in dirs:
            try:
                with os.scandir(d) as it:
                    candidates.extend(e.path for e in it if INTERPRETER_RE.fullmatch(e.name))
            except OSError:
                continue
        for pattern in loaders:
            candidates.extend(str(p) for p in Path("/").glob(pattern.lstrip("/")))
        for path in candidates:
            try:
                st = Path(path).stat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                name = interpreter_name(os.path.realpath(path)) or Path(path).name
                found.setdefault((st.st_dev, st.st_ino), name)
        return cls(found)

    def name_of(self, path: str, st: os.stat_result) -> str | None:
        """The interpreter a program is: by the name it was run by, or by its inode."""
        return interpreter_name(path) or self.by_inode.get((st.st_dev, st.st_ino))


@dataclass(frozen=True, slots=True)
class ApprovedApps:
    """Every approved program of a policy, by inode."""

    by_inode: Mapping[tuple[int, int], ApprovedApp]

    @classmethod
    def resolve(
        cls,
        subjects: Subjects,
        *,
        hashes: ContentHashes,
        interpreters: Interpreters,
        protected: Iterable[Path] = (),
    ) -> ApprovedApps:
        """Each path of every person's ``apps`` as the file it names now.

        PolicyError (subjects.toml, the person's line, what to fix) when a path is
        missing, is not a regular executable file, is a script, an interpreter or the
        loader, lies inside a protected tree, or is the same file as another listed path.
        """
        roots = [os.path.realpath(r) for r in protected]
        by_path: dict[str, ApprovedApp] = {}
        by_inode: dict[tuple[int, int], ApprovedApp] = {}
        for person in subjects.people:
            for path in sorted({p for paths in person.apps.values() for p in paths}):
                where = f"{person.name}: application {path}"

                def fail(reason: str, where: str = where, line: int = person.line) -> PolicyError:
                    return PolicyError(subjects.path, line, f"{where}: {reason}")

                app = by_path.get(path)
                if app is None:
                    app = _resolve_one(path, hashes, interpreters, roots, fail)
                    other = by_inode.get((app.dev, app.ino))
                    if other is not None:
                        raise fail(
                            f"the same file as {other.path}, listed too: list one path for "
                            "one program (the agent reports the program by that path)"
                        )
                    by_path[path] = by_inode[(app.dev, app.ino)] = app
        _logger.info("%d approved programs known by inode and content", len(by_inode))
        return cls(by_inode)

    def identify(  # noqa: PLR0911 - one answer per way a program can fail to match
        self, st: os.stat_result, hashes: ContentHashes
    ) -> tuple[ApprovedApp | None, str]:
        """The approved program an executable is (``st``: its stat), or why it is none
        ("" when its inode is no approved program's).

        Same inode and unchanged since the policy loaded: approved without I/O. Same
        inode changed in place: hashed again (through the listed path, which lies
        outside the protected trees) and approved only with the approved content.
        """
        app = self.by_inode.get((st.st_dev, st.st_ino))
        if app is None:
            return None, ""
        version = version_of(st)
        if version == app.version:
            return app, ""
        digest = hashes.known(version)
        if digest is None:
            try:
                fd = os.open(app.real, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                return None, f"{app.path} is gone since the policy was loaded"
            try:
                now = os.fstat(fd)
                if (now.st_dev, now.st_ino) != (app.dev, app.ino):
                    return None, f"{app.path} was replaced since the policy was loaded"
                version, digest = hashes.of_fd(fd)
            except OSError as e:
                return None, f"cannot hash {app.path}: {e}"
            finally:
                os.close(fd)
        if digest != app.sha256:
            return None, f"{app.path} was changed since the policy was loaded"
        return app, ""


def _resolve_one(
    path: str,
    hashes: ContentHashes,
    interpreters: Interpreters,
    roots: list[str],
    fail: Callable[[str], PolicyError],
) -> ApprovedApp:
    real = os.path.realpath(path)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise fail(f"cannot open it ({e.strerror}): install it or remove it from apps") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
            raise fail("not a regular executable file: list the program's binary")
        name = interpreters.name_of(real, st) or interpreter_name(path)
        if name is not None:
            raise fail(
                f"is {name}: interpreters are not approved applications (one runs whatever "
                "script or program it is given); approve the program itself"
            )
        for root in roots:
            if real == root or real.startswith(root.rstrip("/") + "/"):
                raise fail(
                    f"lies in the protected tree {root}: keep approved programs where only "
                    "root can change them"
                )
        head = os.pread(fd, 256, 0)
        if head.startswith(b"#!"):
            shebang = head.split(b"\n", 1)[0].decode("utf-8", "backslashreplace")
            raise fail(
                f"a script ({shebang!a}), which runs as its interpreter: approve the program "
                "it starts (on LibreOffice installs /usr/lib/libreoffice/program/soffice.bin)"
            )
        if real != path:
            _logger.info("application %s is %s (a symbolic link): approved as %s", path, real, real)
        if st.st_size > MAX_APP_BYTES:
            raise fail(f"larger than {MAX_APP_BYTES} bytes")
        version, digest = hashes.of_fd(fd)
    except OSError as e:
        raise fail(f"cannot read it: {e}") from e
    finally:
        os.close(fd)
    return ApprovedApp(path, real, st.st_dev, st.st_ino, version, digest)
