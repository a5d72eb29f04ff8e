"""Whether a process may be writing a file: what a pre-content event is asking.

A ``FAN_PRE_ACCESS`` event (Linux 6.14 and later, on ext4, xfs and btrfs) comes
before a read, a write or a truncation of a marked file, and says neither which
nor through which descriptor: the kernel reports the same event for ``read(2)``,
``write(2)``, ``ftruncate(2)``, ``truncate(2)`` by path and a page fault. The
file guard tells them apart by what the process holds, as ``/proc`` shows it:

* a descriptor of the file open for writing (``O_WRONLY``/``O_RDWR``, from
  ``/proc/PID/fdinfo``) or a shared writable mapping of it (``/proc/PID/maps``):
  it may be writing -- decided by the ``write`` rules;
* only read-only descriptors or private mappings: a read, already decided when
  the file was opened;
* nothing at all: ``truncate(2)`` by path (or a process whose files cannot be
  read) -- decided as a write.

What this cannot tell: a process holding the file open read-only that truncates
it by path is taken for a reader. ``truncate(2)`` needs write permission on the
file, which the DAC keeper gives only to holders of ``write``, so only root (or
modes loosened by hand, which the keeper reverts) could use that.
"""

from __future__ import annotations

import os

#: Descriptors looked at per process; past this many the access is decided as a
#: write (the answer must come within the guard's deadline).
MAX_DESCRIPTORS = 4096


def may_write(pid: int, dev: int, ino: int) -> bool:
    """True unless ``pid`` holds the file ``(dev, ino)`` for reading only."""
    proc = f"/proc/{pid}"
    readable = False
    try:
        with os.scandir(f"{proc}/fd") as entries:
            for n, entry in enumerate(entries):
                if n >= MAX_DESCRIPTORS:
                    return True
                try:
                    st = os.stat(entry.path)  # noqa: PTH116 - through the link: the file
                except OSError:
                    continue  # closed meanwhile, or not a file
                if st.st_ino != ino or st.st_dev != dev:
                    continue
                flags = _flags(proc, entry.name)
                if flags is None or flags & os.O_ACCMODE != os.O_RDONLY:
                    return True
                readable = True
        mapped = _mappings(proc, dev, ino)
    except OSError:
        return True  # gone, or hidden from us: decided as a write
    if any(perms[1] == "w" and perms[3] == "s" for perms in mapped):
        return True
    return not (readable or mapped)


def _flags(proc: str, fd: str) -> int | None:
    """The open flags of one descriptor (``flags:`` of its fdinfo, octal)."""
    try:
        with open(f"{proc}/fdinfo/{fd}", encoding="ascii") as info:  # noqa: PTH123
            for line in info:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _mappings(proc: str, dev: int, ino: int) -> list[str]:
    """The permissions (``rw-s``) of each mapping of the file in the process."""
    device = f"{os.major(dev):02x}:{os.minor(dev):02x}"
    inode = str(ino)
    found = []
    with open(f"{proc}/maps", encoding="utf-8", errors="replace") as maps:  # noqa: PTH123
        for line in maps:
            # start-end perms offset dev inode [path]
            fields = line.split(maxsplit=5)
            if len(fields) >= 5 and fields[4] == inode and fields[3] == device:
                found.append(fields[1])
    return found
