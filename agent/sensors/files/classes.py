"""Classes of labelled files: files that every decision treats alike.

The engine decides an open of a labelled file by the opener (euid and program), the
action, the day, the label's level, period and scope, and which of the policy's path
patterns match the label's home -- nothing else of the file (``Engine.home_signature``).
Two files alike in those are one *class*: a plain answer Python gave a program and
euid for one of them holds for all of them. The C read loop (``_answers.c``) uses that
for a vouched process's first open of a classed file, so a ``grep -r``, a backup or an
indexer over a labelled tree is decided in Python once, not once per file; each file
is still recorded, by the path it was opened by (``FileGuard._class_event``).

A file version is classed only with the label read from it, seal checked, for exactly
that version (dev, inode, ctime): any change of its label changes its ctime, and the
file is asked again. Class numbers are never reused: a new policy numbers afresh from
where the last stopped, so an answer kept for a class of the old policy is never given
to a file classed under the new one.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable, Iterable

from baomi.labels import Label

from agent.sensors.files.inodes import inode_key, split_inode_key

#: One entry of ``Answers.set_classes``: dev, inode, ctime_ns, class, padding.
ENTRY = struct.Struct("=QQqII")
MAX_FILES = 262_144  # labelled files kept classed (~250 bytes each); more are decided
SLACK = 4096  # old versions the C loop may hold beyond the files known, before a resend
FileVersion = tuple[int, int, int]  # dev, inode, ctime_ns


class FileClasses:
    """The labelled files known, by version, and their classes under the policy in force."""

    def __init__(self, limit: int = MAX_FILES) -> None:
        self._limit = limit
        self._next = 1
        self._numbers: dict[tuple[object, ...], int] = {}  # class key -> number
        # inode_key -> the version's ctime, its label, class number and a path it had
        self._files: dict[int, tuple[int, Label, int, str]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._files)

    def add(
        self, version: FileVersion, label: Label, signature: tuple[object, ...], path: str
    ) -> int:
        """Class ``version`` carrying ``label`` (read from it, seal checked), whose home
        the policy in force sees as ``signature`` (its version and the patterns that
        match); its class number, 0 when it cannot be classed (an invalid label, or too
        many files). ``path``: where it was found, to look at it again (``revalidate``)."""
        if not label.valid or label.home is None:
            return 0
        dev, ino, ctime_ns = version
        at = inode_key(dev, ino)
        key = (signature, label.level, label.until, label.scope)
        with self._lock:
            if at not in self._files and len(self._files) >= self._limit:
                return 0
            number = self._numbers.get(key)
            if number is None:
                number = self._numbers[key] = self._next
                self._next += 1
            self._files[at] = (ctime_ns, label, number, path)
        return number

    def number_of(self, version: FileVersion) -> int:
        """The class of ``version`` (0: not classed, or changed since)."""
        dev, ino, ctime_ns = version
        known = self._files.get(inode_key(dev, ino))
        return known[2] if known is not None and known[0] == ctime_ns else 0

    def label_of(self, version: FileVersion) -> Label | None:
        """The label ``version`` was classed with; None when not classed (or changed)."""
        dev, ino, ctime_ns = version
        known = self._files.get(inode_key(dev, ino))
        return known[1] if known is not None and known[0] == ctime_ns else None

    def current(self) -> bytes:
        """``set_classes`` entries of every file version known now, in its class."""
        with self._lock:
            files = list(self._files.items())
        return pack(
            ((*split_inode_key(at), ctime_ns), number) for at, (ctime_ns, _, number, _) in files
        )

    def reclassify(self, signature: Callable[[str], tuple[object, ...]]) -> bytes:
        """Number every known file afresh under a new policy (whose patterns give
        ``signature``); the entries for ``Answers.set_classes(replace=True)``."""
        with self._lock:
            self._numbers = {}
            files = list(self._files.items())
        entries = []
        for at, (ctime_ns, label, _old, path) in files:
            if label.home is not None:
                version = (*split_inode_key(at), ctime_ns)
                entries.append((version, self.add(version, label, signature(label.home), path)))
        return pack(entries)

    def revalidate(self, read: Callable[[int], Label | None]) -> bytes:
        """Look again at every known file whose ctime changed since it was classed
        (the DAC keeper's chmod and ACLs change it too): still the same file at its
        path, with the same label read afresh (``read(fd)``, seal checked) and no change
        while it was read, it is classed again as it is now; else forgotten. The
        entries for ``Answers.set_classes(replace=True)``."""
        with self._lock:
            files = list(self._files.items())
        entries = []
        for at, (ctime_ns, label, number, path) in files:
            dev, ino = split_inode_key(at)
            try:
                st = os.lstat(path)
                unchanged = (st.st_dev, st.st_ino, st.st_ctime_ns) == (dev, ino, ctime_ns)
            except OSError:
                unchanged = False
            found = (ctime_ns, label) if unchanged else label_at(path, dev, ino, read)
            with self._lock:
                if self._files.get(at, (0,))[0] != ctime_ns:
                    continue  # classed again meanwhile (a decision): that one stands
                if found is None or found[1] != label:
                    del self._files[at]
                    continue
                self._files[at] = (found[0], label, number, path)
            entries.append(((dev, ino, found[0]), number))
        return pack(entries)


def label_at(
    path: str, dev: int, ino: int, read: Callable[[int], Label | None]
) -> tuple[int, Label | None] | None:
    """(ctime, label) of the file at ``path`` when it is still (dev, ino): the label
    read afresh (``read(fd)``, seal checked) and no change while it was read; None when
    another file is there, or none."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        before = os.fstat(fd)
        if (before.st_dev, before.st_ino) != (dev, ino):
            return None
        label = read(fd)
        after = os.fstat(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    return (after.st_ctime_ns, label) if after.st_ctime_ns == before.st_ctime_ns else None


def pack(entries: Iterable[tuple[FileVersion, int]]) -> bytes:
    """``set_classes`` entries of (file version, class) pairs; unclassed ones left out."""
    return b"".join(
        ENTRY.pack(dev, ino, ctime_ns, number, 0)
        for (dev, ino, ctime_ns), number in entries
        if number
    )
