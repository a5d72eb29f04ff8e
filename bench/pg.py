"""A throwaway PostgreSQL cluster for the benchmark (Debian ``postgresql``): ``initdb``
and ``pg_ctl`` on a temporary directory and a free loopback port, removed afterwards.
Durable like a real one (fsync on); as root, run as the ``postgres`` user, since
``initdb`` refuses root."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from bench.proc import BenchError

PG_ROOT = Path("/usr/lib/postgresql")  # Debian layout: PG_ROOT/<major>/bin
START_TIMEOUT_S = 60  # seconds pg_ctl waits for the server to accept connections


def _bin_dir() -> Path:
    dirs = [p for p in PG_ROOT.glob("*/bin") if (p / "initdb").is_file()]
    if not dirs:
        raise BenchError(f"no PostgreSQL server in {PG_ROOT}/*/bin: apt-get install postgresql")
    return max(dirs, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1)


class Cluster:
    """A running throwaway cluster; ``url`` is its superuser's ``postgres`` database."""

    def __init__(self) -> None:
        self._bin = _bin_dir()
        self._owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        # Not under the caller's work directory: the postgres user must reach it.
        self.base = Path(tempfile.mkdtemp(prefix="baomi-bench-pg-"))
        self._data, sock = self.base / "data", self.base / "sock"
        sock.mkdir()
        if self._owner is not None:
            for p in (self.base, sock):
                os.chown(p, self._owner.pw_uid, self._owner.pw_gid)
        self._run(
            "initdb", "-D", str(self._data), "-U", "postgres", "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self._run(
            "pg_ctl", "-D", str(self._data), "-l", str(self.base / "server.log"),
            "-o", f"-p {self.port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=on "
            "-c max_connections=200",
            "-w", "-t", str(START_TIMEOUT_S), "start",
        )  # fmt: skip
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        cmd = [str(self._bin / program), *args]
        if self._owner is not None:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(
            cmd, cwd=self.base, capture_output=True, text=True, timeout=120, check=False
        )
        if result.returncode != 0:
            raise BenchError(f"{program} failed: {result.stdout}{result.stderr}")

    def database(self, name: str) -> str:
        """A new empty database; its URL."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def stop(self) -> None:
        """Stop the server and remove its files."""
        try:
            self._run("pg_ctl", "-D", str(self._data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
