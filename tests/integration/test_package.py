"""The Debian package (``make deb``): built with dpkg-buildpackage, installed, upgraded,
removed and purged by dpkg in a fresh root.

The root is a chroot made from this machine's own ``/usr`` under an overlay (the host's
``/usr`` is the read-only lower layer; what dpkg writes lands in the test's upper
layer), with a fresh ``/etc`` (Debian's base users and groups from base-passwd) and a
copy of the host's dpkg database, which describes exactly that ``/usr``. debootstrap
cannot run here (no mirror offline), and a ``dpkg --instdir`` tree without ``/usr``
could not run the maintainer scripts (adduser, deb-systemd-helper) or the programs.
``systemctl`` and ``deb-systemd-invoke`` are replaced in the overlay by scripts that
log their calls: nothing may be started inside the chroot, and once the root looks
booted with systemd (``/run/systemd/system``), an upgrade restarts what runs and a
removal stops both services.

The two builds (0.1.0~t1, then 0.1.0~t2 for the upgrade) are made once per content of
the checkout and kept under ``.cache/deb-test/``; building takes a minute or two each.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "deb-test"
OLD, NEW = "0.1.0~t1", "0.1.0~t2"
BUILD_TIMEOUT_S = 900  # both builds, run side by side, on a busy 2-core machine
DPKG_TIMEOUT_S = 300
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
SPIED = ("systemctl", "deb-systemd-invoke")

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (overlay mount, chroot, dpkg)"),
    pytest.mark.skipif(
        shutil.which("dpkg-buildpackage") is None or not Path("/usr/bin/dh").exists(),
        reason="needs dpkg-dev and debhelper ('make apt' installs them)",
    ),
    pytest.mark.timeout(BUILD_TIMEOUT_S + 4 * DPKG_TIMEOUT_S),
]


# What never goes into the package: a change there does not call for a new build.
NOT_PACKAGED = (b"tests/", b"bench/", b"fuzz/", b".ci/")


def _source_digest() -> str:
    """A digest of the files the build copies (tracked, or new and not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.split(b"\0")
    digest = hashlib.sha256()
    for name in sorted(n for n in listed if n and not n.startswith(NOT_PACKAGED)):
        path = REPO / os.fsdecode(name)
        if path.is_file():
            digest.update(name + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def debs() -> dict[str, Path]:
    """The package built at two versions, from the checkout as it is."""
    out = CACHE / _source_digest()
    wanted = {v: out / f"baomi_{v}_amd64.deb" for v in (OLD, NEW)}
    for stale in CACHE.glob("*"):  # builds of earlier contents: 200 MB each
        if stale != out:
            shutil.rmtree(stale)
    builds = {
        v: subprocess.Popen(
            [str(REPO / "deploy" / "build-deb.sh"), str(out / v), v],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for v, deb in wanted.items()
        if not deb.exists()
    }
    for version, build in builds.items():
        output, _ = build.communicate(timeout=BUILD_TIMEOUT_S)
        assert build.returncode == 0, output.decode(errors="replace")[-4000:]
        (out / version / wanted[version].name).rename(wanted[version])
        (out / version).rmdir()
    return wanted


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload,no-any-return]
        cmd,
        capture_output=True,
        text=True,
        timeout=DPKG_TIMEOUT_S,
        check=False,
        env={"PATH": PATH, "LANG": "C.UTF-8"},
        **kwargs,
    )


def _mount(*args: str) -> None:
    result = _run(["mount", *args])
    assert result.returncode == 0, result.stderr


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """A fresh Debian root: the host's /usr (overlay), base /etc, the host's dpkg database."""
    r = tmp_path / "root"
    layers = tmp_path / "layers"
    for d in ("usr", "etc", "tmp", "run", "dev", "var/lib", "var/log", "var/cache", "root"):
        (r / d).mkdir(parents=True, exist_ok=True)
    (r / "tmp").chmod(0o1777)
    for link in ("bin", "sbin", "lib", "lib64"):
        (r / link).symlink_to(f"usr/{link}")
    (layers / "upper").mkdir(parents=True)
    (layers / "work").mkdir()
    mounts: list[Path] = []
    try:
        _mount(
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir=/usr,upperdir={layers / 'upper'},workdir={layers / 'work'}",
            str(r / "usr"),
        )
        mounts.append(r / "usr")
        (r / "dev" / "null").touch()
        _mount("--bind", "/dev/null", str(r / "dev" / "null"))
        mounts.append(r / "dev" / "null")
        _base_etc(r / "etc")
        shutil.copytree("/var/lib/dpkg", r / "var/lib/dpkg", symlinks=True)
        for name in SPIED:  # in the overlay's upper layer, never the host's /usr
            spy = r / "usr" / "bin" / name
            spy.unlink(missing_ok=True)
            spy.write_text(f'#!/bin/sh\necho "{name} $*" >> /var/log/service-calls\n')
            spy.chmod(0o755)
        yield r
    finally:
        for mount in reversed(mounts):
            subprocess.run(["umount", str(mount)], check=False, timeout=60)
        for mount in mounts:  # never remove files through a mount still in place
            assert not os.path.ismount(mount), f"{mount} is still mounted"


def _base_etc(etc: Path) -> None:
    """Debian's base users and groups, and what the dynamic linker and tools read."""
    shutil.copy("/usr/share/base-passwd/passwd.master", etc / "passwd")
    shutil.copy("/usr/share/base-passwd/group.master", etc / "group")
    users = [line.split(":")[0] for line in (etc / "passwd").read_text().splitlines()]
    groups = [line.split(":")[0] for line in (etc / "group").read_text().splitlines()]
    (etc / "shadow").write_text("".join(f"{u}:*:20000:0:99999:7:::\n" for u in users))
    (etc / "gshadow").write_text("".join(f"{g}:*::\n" for g in groups))
    (etc / "shadow").chmod(0o640)
    (etc / "gshadow").chmod(0o640)
    for name in ("ld.so.cache", "ld.so.conf", "nsswitch.conf", "adduser.conf", "login.defs"):
        if Path("/etc", name).exists():
            shutil.copy(Path("/etc", name), etc / name)
    for tree in ("ld.so.conf.d", "alternatives", "pam.d", "security"):  # PAM: adduser's chfn
        shutil.copytree(Path("/etc", tree), etc / tree, symlinks=True)


def _dpkg(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = _run(["dpkg", f"--root={root}", "--force-unsafe-io", *args])
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _in_root(root: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    return _run(["chroot", str(root), *cmd])


def _status(root: Path) -> str:
    query = ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W"]
    result = _run([*query, "-f=${db:Status-Abbrev}${Version}", "baomi"])
    return result.stdout.strip() if result.returncode == 0 else "not known"


def test_package_installs_upgrades_keeping_state_and_purges(
    debs: dict[str, Path], root: Path
) -> None:
    """The whole life of the package in one root, as an administrator goes through it."""
    calls = root / "var/log/service-calls"
    _dpkg(root, "-i", str(debs[OLD]))
    assert _status(root) == f"ii {OLD}"
    assert not calls.exists(), calls.read_text()  # nothing started in a chroot

    # The programs run from the root, from the venv the package brought.
    for program, says in (("baomi-collector", "serve"), ("baomi-agent", "enroll")):
        result = _in_root(root, f"/usr/bin/{program}", "--help")
        assert result.returncode == 0, result.stderr
        assert program in result.stdout and says in result.stdout
    assert (root / "opt/baomi/bin/python3").resolve(strict=False).name == "python3.11"
    # `baomi-agent run` restarts itself under -OO; /opt is read-only to it: compiled here.
    packages = next((root / "opt/baomi/lib").glob("python3*/site-packages"))
    assert list((packages / "agent/__pycache__").glob("cli.*.opt-2.pyc"))
    assert list((packages / "grpc/__pycache__").glob("__init__.*.opt-2.pyc"))

    # The user, the state directories, the conffiles, units and policies.
    lines = (root / "etc/passwd").read_text().splitlines()
    passwd = {line.split(":")[0]: line.split(":") for line in lines}
    assert "baomi" in passwd and passwd["baomi"][6] == "/usr/sbin/nologin"
    uid = int(passwd["baomi"][2])
    assert uid < 1000  # a system user
    for path, owner, mode in (
        ("var/lib/baomi-collector", uid, 0o700),
        ("var/lib/baomi-witness", uid, 0o700),
        ("var/lib/baomi-agent", 0, 0o700),
        ("etc/baomi/pki", uid, 0o700),
    ):
        st = (root / path).stat()
        assert (st.st_uid, st.st_mode & 0o7777) == (owner, mode), path
    conffiles = (root / "var/lib/dpkg/info/baomi.conffiles").read_text().split()
    assert sorted(conffiles) == ["/etc/baomi/agent.toml", "/etc/baomi/collector.toml"]
    for unit in ("baomi-agent.service", "baomi-collector.service"):
        assert (root / "lib/systemd/system" / unit).read_bytes() == (
            REPO / "deploy/systemd" / unit
        ).read_bytes()
    assert (root / "usr/share/baomi/policies/model.conf").is_file()
    assert (root / "etc/baomi/policies/model.conf").is_file()

    # The README's first steps on a collector, as the user baomi: a PKI and an account.
    baomi = ("runuser", "-u", "baomi", "--", "/usr/bin/baomi-collector")
    for step in (
        ("pki", "init", "--dir", "/etc/baomi/pki", "--name", "collector.example"),
        ("user", "add", "admin", "--role", "sysadmin"),
    ):
        result = _in_root(root, *baomi, *step)
        assert result.returncode == 0, result.stdout + result.stderr
    record = root / "var/lib/baomi-collector/collector.db"  # collector.toml's store
    ca_key = root / "etc/baomi/pki/ca.key"
    assert record.stat().st_uid == uid and ca_key.stat().st_uid == uid
    kept = {path: path.read_bytes() for path in (record, ca_key)}

    # State and an administrator's edits survive the upgrade.
    spool = root / "var/lib/baomi-agent/spool"
    spool.write_bytes(b"unsent events\n")
    config = root / "etc/baomi/agent.toml"
    edited = config.read_text().replace('"10.0.0.1"', '"192.0.2.1"')
    config.write_text(edited)
    policy = root / "etc/baomi/policies/policy.csv"
    policy.write_text("p, the administrator's policy\n")
    # From here the root looks booted with systemd: running services are restarted after
    # the upgrade (try-restart: a stopped one stays stopped), never enabled or started.
    (root / "run/systemd/system").mkdir(parents=True)
    _dpkg(root, "-i", str(debs[NEW]))
    assert _status(root) == f"ii {NEW}"
    units = "baomi-agent.service baomi-collector.service"
    assert f"deb-systemd-invoke try-restart {units}" in calls.read_text().splitlines()
    assert " start" not in calls.read_text() and "enable" not in calls.read_text()
    calls.unlink()
    assert {path: path.read_bytes() for path in kept} == kept
    assert record.stat().st_uid == uid
    assert spool.read_bytes() == b"unsent events\n"
    assert config.read_text() == edited
    assert policy.read_text() == "p, the administrator's policy\n"
    assert _in_root(root, "/usr/bin/baomi-agent", "--help").returncode == 0

    # Removal keeps the configuration; purge takes it, and leaves the record and spool.
    _dpkg(root, "--remove", "baomi")
    assert _status(root) == f"rc {NEW}"
    assert f"deb-systemd-invoke stop {units}" in calls.read_text().splitlines()
    assert not (root / "usr/bin/baomi-agent").exists()
    assert not (root / "opt/baomi").exists()  # nothing written into the venv at run time
    assert not (root / "lib/systemd/system/baomi-agent.service").exists()
    assert config.exists()
    _dpkg(root, "--purge", "baomi")
    assert _status(root) == "not known"
    assert not (root / "etc/baomi/agent.toml").exists()
    assert not (root / "etc/baomi/policies").exists()
    assert not (root / "var/lib/baomi-witness").exists()  # empty: removed
    # Evidence and keys are never purged.
    assert {path: path.read_bytes() for path in kept} == kept
    assert spool.read_bytes() == b"unsent events\n"
