"""Shared fixtures: a throwaway PostgreSQL cluster and a fresh store of each backend."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.store import Store, open_store
from tests.command_child import children  # noqa: F401 - a fixture for every test
from tests.procs import free_port

# The CLIs speak Chinese or English by LC_ALL, LC_MESSAGES and LANG (baomi.clitext), and
# CLIs run in-process or as children inherit this process's environment: tests that read
# English output must not depend on the runner's locale. Messages are English for the
# whole suite (LC_ALL, which would override that, becomes LANG so character types stay
# as they were); tests of the Chinese output set the variables themselves.
if os.environ.get("LC_ALL"):
    os.environ["LANG"] = os.environ.pop("LC_ALL")
os.environ["LC_MESSAGES"] = "C"

PG_ROOT = Path("/usr/lib/postgresql")  # Debian/Ubuntu layout: PG_ROOT/<major>/bin
PG_START_TIMEOUT_S = 60  # seconds pg_ctl waits for the server to accept connections
PG_START_ATTEMPTS = 3  # another process may grab the free port between probe and bind


def _pg_bin_dir() -> Path | None:
    """The newest installed PostgreSQL server bin dir, or None."""

    def major(p: Path) -> int:
        m = re.fullmatch(r"\d+", p.parent.name)
        return int(m.group()) if m else -1

    dirs = [
        p for p in PG_ROOT.glob("*/bin") if (p / "initdb").is_file() and (p / "pg_ctl").is_file()
    ]
    return max(dirs, key=major) if dirs else None


def _as_cluster_owner(
    cmd: list[str], cwd: Path, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` as the ``postgres`` user when we are root (initdb refuses root)."""
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, cwd=cwd, check=check, capture_output=True, text=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL cluster for this test session; yields its superuser URL."""
    bin_dir = _pg_bin_dir()
    if bin_dir is None:
        pytest.skip(f"no PostgreSQL server binaries in {PG_ROOT}/*/bin (apt install postgresql)")
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run initdb as")
    # Not under pytest's tmp_path: its parents are 0700 root, which the postgres user
    # cannot traverse. A short path also keeps the socket under the 107-byte limit.
    base = Path(tempfile.mkdtemp(prefix="baomi-pg-"))
    data, sock, log = base / "data", base / "sock", base / "server.log"
    sock.mkdir()
    if owner is not None:
        for p in (base, sock):
            os.chown(p, owner.pw_uid, owner.pw_gid)
    started = False
    try:
        _as_cluster_owner(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",  # throwaway: skip initdb fsyncs
            ],
            base,
        )
        for _ in range(PG_START_ATTEMPTS):
            # Outside the ephemeral range: some tests restart PostgreSQL on its port
            # with many connections open (tests.procs.free_port).
            port = free_port()
            options = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=on"
            # -l: the server must not inherit our pipes, or capturing output never ends.
            result = _as_cluster_owner(
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(log),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    str(PG_START_TIMEOUT_S),
                    "start",
                ],
                base,
                check=False,
            )
            if result.returncode == 0:
                started = True
                break
        if not started:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            pytest.fail(f"PostgreSQL did not start:\n{result.stderr}\n{tail}")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    except subprocess.CalledProcessError as e:
        pytest.fail(f"{' '.join(e.cmd)} failed:\n{e.stdout}\n{e.stderr}")
    finally:
        if started:
            _as_cluster_owner(
                [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                base,
                check=False,
            )
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def _fresh_database(server_url: str) -> Iterator[str]:
    """A new, empty database on ``server_url``; dropped (connections and all) afterwards."""
    import psycopg

    name = f"test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            # FORCE: a collector CLI a test started may still hold a connection.
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh, empty store of each backend (a new file or a new database)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'events.db'}"
        return
    server_url: str = request.getfixturevalue("postgres_server")
    with _fresh_database(server_url) as url:
        yield url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A fresh, empty store opened from ``store_url``; closed after the test."""
    s = open_store(store_url)
    try:
        yield s
    finally:
        s.close()
