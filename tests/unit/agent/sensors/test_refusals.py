"""The audit record parser of the refusal recorder, on records taken from a real run.

The records below were read from the ``AUDIT_NLGRP_READLOG`` socket on kernel 6.18 while
uid 2001 tried writes and deletions in ``/tmp/exp/tree`` (root:root 0755, file ``f``
0644): each is (netlink type, text), as the socket gives them.
"""

from __future__ import annotations

import errno

import pytest

from agent.sensors.files import refusals
from agent.sensors.files.refusals import Assembler, Refusal

ROOTS = ["/tmp/exp/tree"]
SYSCALLS = {
    ("b64", 49): "bind",
    ("b64", 197): "removexattr",
    ("b64", 257): "openat",
    ("b64", 263): "unlinkat",
    ("b64", 265): "linkat",
    ("b64", 268): "fchmodat",
    ("b64", 316): "renameat2",
}
TAIL = "cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0 cap_frootid=0"
IDS = "auid=4294967295 uid=2001 gid=2001 euid=2001 suid=2001 fsuid=2001 egid=2001 sgid=2001 fsgid=2001 tty=(none) ses=4294967295"  # noqa: E501

APPEND = [  # sh -c 'echo x >> f', in /tmp/exp/tree
    (1300, f'audit(1796209676.143:7): arch=c000003e syscall=257 success=no exit=-13 a0=ffffff9c a1=563018a6d908 a2=441 a3=1b6 items=1 ppid=12824 pid=12992 {IDS} comm="sh" exe="/usr/bin/dash" key="baomi-refusals"'),  # noqa: E501
    (1307, 'audit(1796209676.143:7): cwd="/tmp/exp/tree"'),
    (1302, f'audit(1796209676.143:7): item=0 name="f" inode=2229076 dev=fe:00 mode=0100644 ouid=0 ogid=0 rdev=00:00 nametype=NORMAL {TAIL}'),  # noqa: E501
    (1327, "audit(1796209676.143:7): proctitle=7368002D63006563686F2078203E3E2066"),
    (1320, "audit(1796209676.143:7): "),
]  # fmt: skip
MOVE = [  # mv f /tmp/exp/out/g
    (1300, f'audit(1796209676.171:10): arch=c000003e syscall=316 success=no exit=-13 a0=ffffff9c a1=7ffc4f002ad6 a2=ffffff9c a3=7ffc4f002ad8 items=3 ppid=12824 pid=12999 {IDS} comm="mv" exe="/usr/bin/mv" key="baomi-refusals"'),  # noqa: E501
    (1307, 'audit(1796209676.171:10): cwd="/tmp/exp/tree"'),
    (1302, f'audit(1796209676.171:10): item=0 name="/tmp/exp/out/" inode=2229092 dev=fe:00 mode=040777 ouid=0 ogid=0 rdev=00:00 nametype=PARENT {TAIL}'),  # noqa: E501
    (1302, f'audit(1796209676.171:10): item=1 name="/tmp/exp/tree" inode=2229057 dev=fe:00 mode=040755 ouid=0 ogid=0 rdev=00:00 nametype=PARENT {TAIL}'),  # noqa: E501
    (1302, f'audit(1796209676.171:10): item=2 name="f" inode=2229076 dev=fe:00 mode=0100644 ouid=0 ogid=0 rdev=00:00 nametype=DELETE {TAIL}'),  # noqa: E501
    (1327, "audit(1796209676.171:10): proctitle=6D760066002F746D702F6578702F6F75742F67"),
    (1320, "audit(1796209676.171:10): "),
]  # fmt: skip
LINK_OUT = [  # ln /tmp/exp/tree/f /tmp/exp/out/x: fs.protected_hardlinks
    (1702, 'audit(1796209676.179:11): op=linkat ppid=12824 pid=13000 auid=4294967295 uid=2001 gid=2001 euid=2001 suid=2001 fsuid=2001 egid=2001 sgid=2001 fsgid=2001 tty=(none) ses=4294967295 comm="ln" exe="/usr/bin/ln" res=0'),  # noqa: E501
    (1300, f'audit(1796209676.179:11): arch=c000003e syscall=265 success=no exit=-1 a0=ffffff9c a1=7ffe1bbb0ac8 a2=ffffff9c a3=7ffe1bbb0ad8 items=2 ppid=12824 pid=13000 {IDS} comm="ln" exe="/usr/bin/ln" key="baomi-refusals"'),  # noqa: E501
    (1307, 'audit(1796209676.179:11): cwd="/tmp/exp/tree"'),
    (1302, f'audit(1796209676.179:11): item=0 name="/tmp/exp/out/" inode=2229092 dev=fe:00 mode=040777 ouid=0 ogid=0 rdev=00:00 nametype=PARENT {TAIL}'),  # noqa: E501
    (1302, f'audit(1796209676.179:11): item=1 name="/tmp/exp/tree/f" inode=2229076 dev=fe:00 mode=0100644 ouid=0 ogid=0 rdev=00:00 nametype=NORMAL {TAIL}'),  # noqa: E501
    (1327, "audit(1796209676.179:11): proctitle=6C6E002F746D702F6578702F747265652F66002F746D702F6578702F6F75742F78"),  # noqa: E501
    (1320, "audit(1796209676.179:11): "),
]  # fmt: skip
CHMOD = [  # chmod 777 f
    (1300, f'audit(1796209676.187:12): arch=c000003e syscall=268 success=no exit=-1 a0=ffffff9c a1=55fed0788c20 a2=1ff a3=7f49d287efb8 items=1 ppid=12824 pid=13005 {IDS} comm="chmod" exe="/usr/bin/chmod" key="baomi-refusals"'),  # noqa: E501
    (1307, 'audit(1796209676.187:12): cwd="/tmp/exp/tree"'),
    (1302, f'audit(1796209676.187:12): item=0 name="f" inode=2229076 dev=fe:00 mode=0100644 ouid=0 ogid=0 rdev=00:00 nametype=NORMAL {TAIL}'),  # noqa: E501
    (1327, "audit(1796209676.187:12): proctitle=63686D6F64003737370066"),
    (1320, "audit(1796209676.187:12): "),
]  # fmt: skip
CREATE = [  # touch tree/new, in /tmp/exp: only the directory is named
    (1300, f'audit(1796209793.031:29): arch=c000003e syscall=257 success=no exit=-13 a0=ffffff9c a1=7ffda1d02ae0 a2=941 a3=1b6 items=1 ppid=28992 pid=29137 {IDS} comm="touch" exe="/usr/bin/touch" key="baomi-refusals"'),  # noqa: E501
    (1307, 'audit(1796209793.031:29): cwd="/tmp/exp"'),
    (1302, f'audit(1796209793.031:29): item=0 name="tree/" inode=2229057 dev=fe:00 mode=040755 ouid=0 ogid=0 rdev=00:00 nametype=PARENT {TAIL}'),  # noqa: E501
    (1327, "audit(1796209793.031:29): proctitle=746F75636800747265652F6E6577"),
    (1320, "audit(1796209793.031:29): "),
]  # fmt: skip
UNLINK_AT_FD = [  # os.unlink("f", dir_fd=open("/tmp/exp/tree")), in /tmp/exp/tree
    (1300, f'audit(1796209793.139:38): arch=c000003e syscall=263 success=no exit=-13 a0=3 a1=a5ee10 a2=0 a3=0 items=2 ppid=28992 pid=29147 {IDS} comm="python3" exe="/usr/bin/python3.11" key="baomi-refusals"'),  # noqa: E501
    (1307, 'audit(1796209793.139:38): cwd="/tmp/exp/tree"'),
    (1302, f'audit(1796209793.139:38): item=0 name="/tmp/exp/tree" inode=2229057 dev=fe:00 mode=040755 ouid=0 ogid=0 rdev=00:00 nametype=PARENT {TAIL}'),  # noqa: E501
    (1302, f'audit(1796209793.139:38): item=1 name="f" inode=2229076 dev=fe:00 mode=0100644 ouid=0 ogid=0 rdev=00:00 nametype=DELETE {TAIL}'),  # noqa: E501
    (1320, "audit(1796209793.139:38): "),
]  # fmt: skip
OWN_SOCKET = [  # the reader's own bind(): a record of no rule of ours
    (1335, 'audit(1796209675.831:6): pid=12827 uid=0 auid=4294967295 tty=(none) ses=4294967295 comm="python3" exe="/root/.pyenv/versions/3.11.7/bin/python3.11" nl-mcgrp=1 op=connect res=1'),  # noqa: E501
    (1300, 'audit(1796209675.831:6): arch=c000003e syscall=49 success=yes exit=0 a0=3 a1=7ffd5fb3daa0 a2=c a3=10 items=0 ppid=12824 pid=12827 auid=4294967295 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=4294967295 comm="python3" exe="/root/.pyenv/versions/3.11.7/bin/python3.11" key=(null)'),  # noqa: E501
    (1306, "audit(1796209675.831:6): saddr=1000F7B30000000001000000"),
    (1320, "audit(1796209675.831:6): "),
]  # fmt: skip


def _feed(records: list[tuple[int, str]], **kwargs: object) -> list[Refusal]:
    assembler = Assembler(ROOTS, SYSCALLS, resolve_dirfd=lambda _pid, _fd: None, **kwargs)  # type: ignore[arg-type]
    out = [assembler.feed(rtype, text) for rtype, text in records]
    return [r for r in out if r is not None]


def test_an_append_refused() -> None:
    [r] = _feed(APPEND)
    assert r == Refusal(
        time_ns=1796209676_143_000_000,
        syscall="openat",
        errno=errno.EACCES,
        flags=0x441,
        pid=12992,
        uid=2001,
        auid=-1,
        executable="/usr/bin/dash",
        cmdline="sh -c echo x >> f",
        path="/tmp/exp/tree/f",
        nametype="NORMAL",
    )
    assert refusals.action_and_why(r)[0] == "write"
    assert refusals.reason(r) == (
        "refused by file permissions: openat(O_WRONLY|O_CREAT|O_APPEND) EACCES — "
        "no write right on this file (DAC kept by the agent)"
    )


@pytest.mark.parametrize(
    ("records", "syscall", "code", "path", "action", "why"),
    [
        (MOVE, "renameat2", errno.EACCES, "/tmp/exp/tree/f", "delete", "no delete right"),
        (LINK_OUT, "linkat", errno.EPERM, "/tmp/exp/tree/f", "delete", "protected_hardlinks"),
        (CHMOD, "fchmodat", errno.EPERM, "/tmp/exp/tree/f", "write", "only the owner"),
        (CREATE, "openat", errno.EACCES, "/tmp/exp/tree", "write", "create entries"),
    ],
)
def test_the_file_in_the_tree_is_named(
    records: list[tuple[int, str]], syscall: str, code: int, path: str, action: str, why: str
) -> None:
    [r] = _feed(records)
    assert (r.syscall, r.errno, r.path) == (syscall, code, path)
    assert refusals.action_and_why(r)[0] == action
    assert why in refusals.reason(r)
    assert f" {errno.errorcode[code]} — " in refusals.reason(r)


def test_a_name_relative_to_a_directory_fd() -> None:
    [gone] = _feed(UNLINK_AT_FD)  # the fd is gone: the name as given, never the cwd's
    assert gone.path == "f"
    assembler = Assembler(ROOTS, SYSCALLS, resolve_dirfd=lambda pid, fd: "/tmp/exp/tree")
    [r] = [x for x in (assembler.feed(t, s) for t, s in UNLINK_AT_FD) if x is not None]
    assert (r.path, r.syscall) == ("/tmp/exp/tree/f", "unlinkat")
    assert refusals.action_and_why(r)[0] == "delete"
    assert refusals.reason(gone).endswith("relative to a directory the process had open")


def test_records_of_other_events_and_interleaved_events() -> None:
    assert _feed(OWN_SOCKET) == []  # no key of ours, and a success
    assert _feed(APPEND, key="another-key") == []
    mixed = [m for pair in zip(APPEND, CHMOD, strict=True) for m in pair]  # two CPUs' records
    assert [r.syscall for r in _feed(mixed)] == ["openat", "fchmodat"]
    assert _feed(APPEND[:-1]) == []  # no EOE yet: nothing


def test_untrusted_strings_are_decoded_and_kept_clean() -> None:
    # The kernel hex-encodes a name with a space or a control character, unquoted.
    odd = b"/tmp/exp/tree/a b\n".hex().upper()
    exe = b"/usr/bin/my prog".hex().upper()
    records = [
        (APPEND[0][0], APPEND[0][1].replace('exe="/usr/bin/dash"', f"exe={exe}")),
        APPEND[1],
        (1302, APPEND[2][1].replace('name="f"', f"name={odd}")),
        (1327, "audit(1796209676.143:7): proctitle=" + b"rm\0-f\0a b\x1b[2J".hex().upper()),
        APPEND[4],
    ]
    [r] = _feed(records)
    assert r.path == "/tmp/exp/tree/a b\\x0a"
    assert r.executable == "/usr/bin/my prog"
    assert r.cmdline == "rm -f a b\\x1b[2J"
    assert refusals.decode_value("name", "(null)") == ""
    assert refusals.decode_value("exit", "-13") == "-13"


def test_rules_name_only_syscalls_the_abi_has() -> None:
    table = {2: "open", 257: "openat", 85: "creat", 87: "unlink", 452: "fchmodat2"}
    rules = refusals.rules("/srv/secret dir", "b64", table)
    assert rules[0] == [
        "always,exit", "-F", "arch=b64", "-S", "open", "-F", "a1&0x243", "-F", "exit=-EACCES",
        "-F", "dir=/srv/secret dir", "-F", "key=baomi-refusals",
    ]  # fmt: skip
    assert rules[1][3:7] == ["-S", "openat", "-F", "a2&0x243"]
    assert rules[2][3:9] == ["-S", "creat", "-S", "unlink", "-S", "452"]  # numbered: too new
    assert "creat" in rules[3] and "exit=-EPERM" in rules[3]
    assert refusals.rules("/srv", "b32", {}) == []  # never a rule without -S: all syscalls
