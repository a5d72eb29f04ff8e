"""A meeting room for tests: rooms/meetings files, sweeps, the cabinet simulator, the CLI.

Kept out of ``conftest.py`` so the umockdev tests in ``tests/integration/usb/`` can use
the same room.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import agent
from tests.procs import free_port

REPO = Path(agent.__file__).resolve().parent.parent
SIM = [
    sys.executable,
    "-c",
    "import sys; from agent.meeting.cabinet_sim import main; sys.exit(main())",
]
START_S = 10.0  # the simulator has this long to listen
CLI_TIMEOUT_S = 60  # one run of the CLI
NOISE_DB = -62.5  # the baseline's floor
JAMMER_MHZ = (925, 965)  # what the simulated jammer raises
#: A healthy cabinet's JSON state (HTTP adapter, attestation): two doors closed.
GOOD = {
    "doors": 2,
    "doors_open": [],
    "powered": True,
    "shielding_ok": True,
    "slots_total": 10,
    "slots_occupied": 3,
}


@contextmanager
def cabinet_sim(*args: str) -> Iterator[int]:
    """``baomi-cabinet-sim`` on a free port with ``args``; yields the port."""
    port = free_port()
    proc = subprocess.Popen(
        [*SIM, "--listen", f"127.0.0.1:{port}", *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + START_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read() if proc.stderr else ""
                    raise AssertionError(f"cabinet simulator did not start: {err}") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def sweep_csv(carriers: dict[float, float] | None = None, *, raise_db: float = 0.0) -> str:
    """``rtl_power`` rows 470-1000 MHz at 1 MHz bins: the noise floor, ``raise_db`` added
    in the jammer's band 925-965 MHz, and ``carriers`` (MHz -> dB above the floor)."""
    carriers = carriers or {}
    rows = []
    for low in range(470, 1000, 10):
        values = []
        for i in range(10):
            mhz = low + i
            jammer = raise_db if JAMMER_MHZ[0] <= mhz <= JAMMER_MHZ[1] else 0.0
            values.append(f"{NOISE_DB + jammer + carriers.get(float(mhz), 0.0):.2f}")
        rows.append(
            f"2026-12-01, 08:30:00, {low * 10**6}, {(low + 10) * 10**6}, 1000000.00, 64, "
            + ", ".join(values)
        )
    return "\n".join(rows) + "\n"


@dataclass
class Room:
    """The files of one test room, rewritten by ``write`` after changing fields."""

    dir: Path
    cabinet: str = 'adapter = "modbus"\naddress = "127.0.0.1:1"\ntimeout = 1.0'
    jammer_expires: str = "2099-12-31"
    attendees: list[str] = field(default_factory=lambda: ["zhang", "li"])
    level: str = "机密"
    recordings: list[str] = field(default_factory=list)
    materials: list[str] = field(default_factory=lambda: ["JM-101", "JM-102"])
    pa: list[str] = field(default_factory=lambda: ["0d8c:0014"])
    extra: str = ""
    meeting_extra: str = ""  # more keys of meeting m1
    #: meeting m1's start: an hour from now, so a check run now is within its window
    start: str = field(
        default_factory=lambda: (datetime.now(UTC) + timedelta(hours=1)).isoformat("T", "seconds")
    )

    @property
    def dev(self) -> Path:
        """The fake /dev recorders hold capture devices of."""
        return self.dir / "dev"

    def modbus(self, port: int) -> None:
        """Point the cabinet at a simulator."""
        self.cabinet = f'adapter = "modbus"\naddress = "127.0.0.1:{port}"\ntimeout = 2.0'

    def write(self) -> Room:
        """Write rooms.toml, meetings.toml, subjects.toml, the baseline and a sweep."""
        (self.dev / "snd").mkdir(parents=True, exist_ok=True)
        (self.dev / "snd" / "pcmC0D0c").write_bytes(b"")
        (self.dir / "baseline.csv").write_text(sweep_csv())
        if not (self.dir / "sweep.csv").exists():
            self.sweep(raise_db=20.0)  # jammer on, nothing else
        shutil.copy(REPO / "policies" / "subjects.toml", self.dir / "subjects.toml")
        pa = "".join(f'[[rooms.r1.pa]]\nid = "{p}"\nserial = ""\n\n' for p in self.pa)
        (self.dir / "rooms.toml").write_text(
            f"""[rooms.r1]
allowed_software = ["pipewire"]
capture_devices = ["{self.dev}/snd/pcmC*D*c", "{self.dev}/video*"]
margin_db = 10.0
baseline = "baseline.csv"
jammer_bands = [[930, 960]]
{self.extra}

{pa}[rooms.r1.cabinet]
{self.cabinet}

[rooms.r1.jammer]
type_approval = "CMIIT ID: 2024DP0001"
licence = "京-2025-0042"
expires = {self.jammer_expires}
"""
        )
        (self.dir / "meetings.toml").write_text(
            f"""[meetings.m1]
room = "r1"
level = "{self.level}"
start = {self.start}
attendees = {json.dumps(self.attendees)}
recordings = {json.dumps(self.recordings)}
materials = {json.dumps(self.materials)}
{self.meeting_extra}
"""
        )
        return self

    def sweep(self, carriers: dict[float, float] | None = None, *, raise_db: float = 20.0) -> None:
        """Write the sweep taken "now"."""
        (self.dir / "sweep.csv").write_text(sweep_csv(carriers, raise_db=raise_db))

    def check_args(self, *extra: str) -> list[str]:
        """``meeting check`` arguments for this room and meeting m1."""
        d = self.dir
        return [
            "meeting", "check", "--room", "r1", "--meeting", "m1", "--json",
            "--rooms", str(d / "rooms.toml"), "--meetings", str(d / "meetings.toml"),
            "--subjects", str(d / "subjects.toml"), "--sweep", str(d / "sweep.csv"), *extra,
        ]  # fmt: skip


@dataclass
class Result:
    """One run of the CLI."""

    code: int
    out: str
    err: str

    @property
    def items(self) -> dict[str, dict[str, object]]:
        """The items of a ``--json`` run by id (sweep runs repeat C13: the last wins)."""
        return {i["id"]: i for i in json.loads(self.out)["items"]}

    def item(self, item_id: str) -> tuple[str, str]:
        """(result, evidence) of one item."""
        found = self.items[item_id]
        return str(found["result"]), str(found["evidence"])


def run_cli(*args: str, env: dict[str, str] | None = None) -> Result:
    """``baomi-agent ARGS`` as a subprocess (in ``env``, else this process's environment)."""
    done = subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr)
