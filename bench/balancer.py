"""HAProxy in front of collectors on loopback, as ``deploy/haproxy/haproxy.cfg`` sets it
up (TCP mode, mTLS passed through, ``GET /health`` checks), for the fleet benchmark and
the tests. Only the addresses, the check interval and a stats socket differ."""

from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

STATS_TIMEOUT_S = 5.0  # seconds the stats socket may take to answer


class BalancerError(Exception):
    """HAProxy is missing or its configuration was refused."""


@dataclass(frozen=True)
class Backend:
    """One collector behind the balancer."""

    name: str
    agents: str  # HOST:PORT of its mTLS agent port
    enroll: str  # HOST:PORT of its enrolment port
    health_port: int  # its --health-port, on the host of ``agents``


def haproxy_binary() -> str:
    """The haproxy program; BalancerError saying how to install it."""
    found = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )
    if found is None:
        raise BalancerError("haproxy is not installed: apt-get install haproxy (Debian)")
    return found


def write_config(
    path: Path,
    *,
    agents_port: int,
    enroll_port: int,
    backends: list[Backend],
    stats_socket: Path,
    check_ms: int = 2000,
) -> None:
    """A configuration like the shipped one, on loopback, for ``backends``."""
    check = f"check port {{port}} inter {check_ms} fall 3 rise 2"

    def servers(kind: str, extra: str) -> str:
        return "".join(
            f"    server {b.name} {getattr(b, kind)} {check.format(port=b.health_port)}{extra}\n"
            for b in backends
        )

    path.write_text(
        f"""global
    maxconn 5000
    stats socket {stats_socket} mode 600 level admin

defaults
    mode tcp
    timeout connect 5s
    timeout check 5s
    timeout client 1h
    timeout server 1h
    option tcpka

frontend baomi_agents
    bind 127.0.0.1:{agents_port}
    default_backend baomi_collectors

backend baomi_collectors
    balance leastconn
    option httpchk GET /health
    http-check expect status 200
{servers("agents", " on-marked-down shutdown-sessions")}
frontend baomi_enroll
    bind 127.0.0.1:{enroll_port}
    default_backend baomi_enrollers

backend baomi_enrollers
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
{servers("enroll", "")}"""
    )


def check_config(path: Path) -> None:
    """``haproxy -c``: BalancerError with its complaint when it refuses the file."""
    result = subprocess.run(
        [haproxy_binary(), "-c", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        raise BalancerError(f"haproxy refused {path}:\n{result.stdout}{result.stderr}")


def command(config: Path) -> list[str]:
    """Run haproxy in the foreground on ``config`` (the caller owns the process)."""
    return [haproxy_binary(), "-db", "-f", str(config)]


def server_status(stats_socket: Path, backend: str = "baomi_collectors") -> dict[str, str]:
    """Each server of ``backend`` and its state as HAProxy sees it (UP, DOWN, ...)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(STATS_TIMEOUT_S)
        s.connect(str(stats_socket))
        s.sendall(b"show stat\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    lines = b"".join(chunks).decode().splitlines()
    if not lines or not lines[0].startswith("# "):
        raise BalancerError(f"unexpected answer from the stats socket: {lines[:2]}")
    header = lines[0][2:].split(",")
    status: dict[str, str] = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == backend and row.get("svname") not in ("FRONTEND", "BACKEND"):
            status[row["svname"]] = row["status"]
    return status
