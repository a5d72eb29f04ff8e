"""Approved applications by identity: resolving subjects.toml paths, refusals, matching."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from baomi.policy.apps import (
    ApprovedApps,
    ContentHashes,
    Interpreters,
    interpreter_name,
    version_of,
)
from baomi.policy.errors import PolicyError
from baomi.policy.subjects import Subjects

NO_INTERPRETERS = Interpreters({})


def _subjects(*apps: str, more: str = "") -> Subjects:
    listed = ", ".join(f'"{a}"' for a in apps)
    text = f'[people.alice]\nuid = 2001\ndepartment = "x"\napps = {{ "绝密" = [{listed}] }}\n{more}'
    return Subjects.parse(text, "site/subjects.toml")


def _resolve(
    *apps: str, interpreters: Interpreters = NO_INTERPRETERS, **kw: object
) -> ApprovedApps:
    return ApprovedApps.resolve(
        _subjects(*apps),
        hashes=ContentHashes(),
        interpreters=interpreters,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def viewer(tmp_path: Path) -> Path:
    """A small real program at a path of the test's own."""
    (tmp_path / "bin").mkdir()
    path = tmp_path / "bin" / "viewer"
    shutil.copy("/usr/bin/cat", path)
    return path


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/bin/sh", "sh"),
        ("/usr/bin/bash", "bash"),
        ("/usr/bin/rbash", "rbash"),
        ("/usr/bin/dash", "dash"),
        ("/usr/bin/zsh", "zsh"),
        ("/usr/bin/python3", "python3"),
        ("/usr/bin/python3.11", "python3.11"),
        ("/usr/bin/perl", "perl"),
        ("/usr/bin/ruby3.1", "ruby3.1"),
        ("/usr/bin/node", "node"),
        ("/usr/bin/lua5.4", "lua5.4"),
        ("/usr/bin/php8.2", "php8.2"),
        ("/usr/bin/tclsh", "tclsh"),
        ("/bin/busybox", "busybox"),
        ("/lib64/ld-linux-x86-64.so.2", "ld-linux-x86-64.so.2"),
        ("/lib/ld.so", "ld.so"),
        ("/usr/bin/wps", None),
        ("/usr/bin/cat", None),
        ("/usr/bin/shred", None),
        ("/usr/bin/ssh", None),
        ("/usr/bin/evince", None),
    ],
)
def test_interpreter_names(path: str, name: str | None) -> None:
    assert interpreter_name(path) == name


@pytest.mark.parametrize("path", ["/usr/bin/python3", "/bin/sh", "/lib64/ld-linux-x86-64.so.2"])
def test_the_register_refuses_interpreters_by_name(path: str) -> None:
    with pytest.raises(PolicyError) as err:
        _subjects(path)
    assert err.value.line == 4
    assert "interpreters are not approved applications" in err.value.reason


def test_an_approved_path_becomes_the_identity_of_its_file(viewer: Path) -> None:
    apps = _resolve(str(viewer))
    st = viewer.stat()
    app = apps.by_inode[(st.st_dev, st.st_ino)]
    assert app.path == str(viewer)
    assert app.sha256 == hashlib.sha256(viewer.read_bytes()).digest()
    assert app.version == version_of(st)
    assert apps.identify(st, ContentHashes()) == (app, "")


@pytest.mark.parametrize(
    ("arrange", "reason"),
    [
        (lambda p: p.unlink(), "cannot open it"),
        (lambda p: p.chmod(0o644), "not a regular executable file"),
        (lambda p: (p.unlink(), p.mkdir()), "not a regular executable file"),
        (lambda p: p.write_text('#!/bin/sh\nexec cat "$@"\n'), "a script ('#!/bin/sh')"),
    ],
)
def test_paths_that_name_no_program_are_refused(viewer: Path, arrange: object, reason: str) -> None:
    arrange(viewer)  # type: ignore[operator]
    with pytest.raises(PolicyError) as err:
        _resolve(str(viewer))
    assert err.value.file == "site/subjects.toml"
    assert err.value.line == 1  # alice's table
    assert err.value.reason.startswith(f"alice: application {viewer}: ")
    assert reason in err.value.reason


def test_an_interpreter_under_another_name_is_refused(viewer: Path, tmp_path: Path) -> None:
    # The host's interpreters are known by inode: a link by another name is one too.
    system = tmp_path / "system"
    system.mkdir()
    python = system / "python3"
    shutil.copy("/usr/bin/cat", python)
    os.link(python, tmp_path / "bin" / "tool")
    interpreters = Interpreters.scan(dirs=[str(system)], loaders=())
    with pytest.raises(PolicyError, match="is python3: interpreters are not approved"):
        _resolve(str(tmp_path / "bin" / "tool"), interpreters=interpreters)
    # and a symlink with an innocent name to an interpreter, by the name of its target
    (tmp_path / "bin" / "shell").symlink_to("/usr/bin/dash")
    with pytest.raises(PolicyError, match="is dash: interpreters"):
        _resolve(str(tmp_path / "bin" / "shell"))


def test_the_hosts_interpreters_and_loader_are_known() -> None:
    names = set(Interpreters.scan().by_inode.values())
    assert any(n.startswith("ld-linux") for n in names), names
    assert {"dash", "bash"} <= names


def test_a_program_inside_a_protected_tree_is_refused(viewer: Path, tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="lies in the protected tree"):
        _resolve(str(viewer), protected=[tmp_path / "bin"])
    _resolve(str(viewer), protected=[tmp_path / "other"])


def test_two_paths_of_one_file_are_refused(viewer: Path) -> None:
    os.link(viewer, viewer.with_name("viewer2"))
    with pytest.raises(PolicyError, match=r"the same file as .*/viewer, listed too"):
        _resolve(str(viewer), str(viewer.with_name("viewer2")))


def test_a_symlink_is_the_file_it_names(viewer: Path) -> None:
    link = viewer.with_name("view")
    link.symlink_to(viewer)
    apps = _resolve(str(link))
    st = viewer.stat()
    assert apps.by_inode[(st.st_dev, st.st_ino)].path == str(link)


def test_a_copy_is_another_program(viewer: Path) -> None:
    apps = _resolve(str(viewer))
    copy = viewer.with_name("copy")
    shutil.copy(viewer, copy)
    assert apps.identify(copy.stat(), ContentHashes()) == (None, "")


def test_a_program_changed_in_place_is_no_longer_approved(viewer: Path) -> None:
    hashes = ContentHashes()
    apps = ApprovedApps.resolve(_subjects(str(viewer)), hashes=hashes, interpreters=NO_INTERPRETERS)
    # touched: a new version with the same content is hashed again and still approved
    os.utime(viewer, ns=(1, 1))
    app, why = apps.identify(viewer.stat(), hashes)
    assert app is not None and why == ""
    assert hashes.known(version_of(viewer.stat())) == app.sha256
    # written: same inode, other content
    with viewer.open("ab") as f:
        f.write(b"\0")
    app, why = apps.identify(viewer.stat(), hashes)
    assert app is None and "was changed since the policy was loaded" in why


def test_a_program_replaced_at_its_path(viewer: Path) -> None:
    hashes = ContentHashes()
    apps = ApprovedApps.resolve(_subjects(str(viewer)), hashes=hashes, interpreters=NO_INTERPRETERS)
    old = viewer.with_name("old")
    os.link(viewer, old)  # a process still runs the old inode
    viewer.unlink()
    shutil.copy("/usr/bin/cat", viewer)
    os.utime(old, ns=(1, 1))  # its version changed: it must be hashed again
    app, why = apps.identify(old.stat(), hashes)
    assert app is None and "was replaced since the policy was loaded" in why


def test_hashes_are_remembered_by_version(viewer: Path) -> None:
    hashes = ContentHashes()
    fd = os.open(viewer, os.O_RDONLY)
    try:
        version, digest = hashes.of_fd(fd)
    finally:
        os.close(fd)
    assert hashes.known(version) == digest == hashlib.sha256(viewer.read_bytes()).digest()
    os.utime(viewer, ns=(5, 5))
    assert hashes.known(version_of(viewer.stat())) is None
