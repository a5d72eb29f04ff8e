"""The labelled-inode set on disk (``<state>/labelled.db``): what reading it back at
start leaves resident in an idle agent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.sensors.files.inodes import LabelledInodes, inode_key, split_inode_key
from tests.procs import SQLITE_MEMORY, fresh_python

FILES = 4000
HOME_PAD = "长" * 200  # 600 bytes of home per entry: the set is larger than SQLite's 2 MB cache


def test_reading_the_set_back_at_start_does_not_keep_its_pages_cached(tmp_path: Path) -> None:
    """The start reads every entry once (``reopen_known``) and then writes in batches:
    SQLite's default cache (up to 2 MB per connection) would keep the pages read for as
    long as the agent runs."""
    tree = tmp_path / "tree"
    tree.mkdir()
    db = tmp_path / "labelled.db"
    inodes = LabelledInodes(db)
    inodes.open()
    for i in range(FILES):
        path = tree / f"f{i:05d}"
        path.write_bytes(b"")
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            inodes.add(fd, f"/srv/secret/{HOME_PAD}/f{i:05d}")
        finally:
            os.close(fd)
    inodes.close()
    assert db.stat().st_size > 2 * 1024 * 1024
    printed = fresh_python(
        SQLITE_MEMORY + "import os\n"
        "from pathlib import Path\n"
        "from agent.sensors.files.inodes import LabelledInodes\n"
        f"inodes = LabelledInodes(Path({str(db)!r}))\n"
        "inodes.open()\n"
        f"root = os.open({str(tree)!r}, os.O_RDONLY | os.O_DIRECTORY)\n"
        "fsid = os.fstatvfs(root).f_fsid & (2**63 - 1)\n"
        "found = 0\n"
        "for fd, _home in inodes.reopen_known({fsid: root}):\n"
        "    os.close(fd)\n"
        "    found += 1\n"
        "print(found, used())\n"
    )
    found, used = (int(n) for n in printed.split())
    if found < 0:
        pytest.skip("Python's sqlite3 is not linked to a shared libsqlite3 here")
    assert found == FILES
    assert used < 1024 * 1024, f"SQLite holds {used} bytes after the set was read back"


@pytest.mark.parametrize(
    ("dev", "ino"),
    [(0, 0), (64769, 12), (2**32 - 1, 2**64 - 1), (1, 2**64 - 1), (2**64 - 1, 1)],
)
def test_an_inode_key_gives_back_its_device_and_inode(dev: int, ino: int) -> None:
    assert split_inode_key(inode_key(dev, ino)) == (dev, ino)


def test_inode_keys_of_different_inodes_differ() -> None:
    """No inode of one device takes another's key: the inode number has 64 bits to itself."""
    keys = {inode_key(dev, ino) for dev in (0, 1, 2**32 - 1) for ino in (0, 1, 2**64 - 1)}
    assert len(keys) == 9
