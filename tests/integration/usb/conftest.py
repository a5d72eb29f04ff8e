"""USB tests against a umockdev testbed: real libudev, real pyudev monitor, fake sysfs.

umockdev works by ``LD_PRELOAD`` (``umockdev-wrapper``), which must be in place before
the process starts. So when pytest runs without it, the tests of this directory are run
once more in a child ``umockdev-wrapper python -m pytest <the selected tests>``, and each
test here reports the outcome its twin had in the child (failures with the child's
traceback). A plain ``pytest`` (and ``make test``) thus runs them with nothing skipped;
``umockdev-wrapper .venv/bin/python -m pytest tests/integration/usb`` runs them directly.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from baomi.v1 import events_pb2

HERE = Path(__file__).resolve().parent
ASSETS = HERE.parent.parent / "assets" / "usb"
SHARED = HERE.parents[3] / "shared" / "testdata"  # ../shared/testdata from the repo root
UNDER_UMOCKDEV = "libumockdev-preload" in os.environ.get("LD_PRELOAD", "")
REPORT_ENV = "BAOMI_UMOCKDEV_REPORT"  # where the child writes each test's outcome
CHILD_TIMEOUT_S = 900  # the whole directory under umockdev-wrapper
WAIT_S = 10.0  # longest a test waits for the sensor to report a device


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker (pyproject's list belongs to the whole suite)."""
    config.addinivalue_line("markers", "umockdev: runs under umockdev-wrapper (a USB testbed)")


# --------------------------------------------------------------------------- the parent


class _Child:
    """The one child run of this directory's selected tests, started on first need."""

    def __init__(self, config: pytest.Config, nodeids: list[str]) -> None:
        self.config = config
        self.nodeids = nodeids
        self.results: dict[str, dict[str, str]] | None = None
        self.output = ""

    def result(self, nodeid: str) -> dict[str, str] | None:
        if self.results is None:
            self._run()
        assert self.results is not None
        return self.results.get(nodeid)

    def _run(self) -> None:
        self.results = {}
        wrapper = shutil.which("umockdev-wrapper")
        if wrapper is None:
            self.output = "umockdev-wrapper not found (apt install umockdev gir1.2-umockdev-1.0)"
            return
        with tempfile.TemporaryDirectory(prefix="baomi-umockdev-") as tmp:
            report = Path(tmp) / "report.json"
            env = {**os.environ, REPORT_ENV: str(report)}
            cmd = [wrapper, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
            try:
                done = subprocess.run(
                    [*cmd, *self.nodeids],
                    cwd=self.config.rootpath,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=CHILD_TIMEOUT_S,
                    check=False,
                )
                self.output = (done.stdout + done.stderr)[-20_000:]
            except subprocess.TimeoutExpired as e:
                self.output = f"the umockdev child run timed out after {e.timeout} s"
            if report.exists():
                self.results = json.loads(report.read_text())


class _Twin(pytest.Item):
    """Stands for a test of this directory and reports what it did in the child run."""

    def __init__(self, *, child: _Child, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.child = child

    def runtest(self) -> None:
        """Take the outcome of the child's run of the same test."""
        result = self.child.result(self.nodeid)
        if result is None:
            if self.child.output.startswith("umockdev-wrapper not found"):
                pytest.skip(self.child.output)
            pytest.fail(f"no result from the umockdev child run:\n{self.child.output}", False)
        if result["outcome"] == "skipped":
            pytest.skip(result["longrepr"])
        if result["outcome"] == "failed":
            pytest.fail(f"under umockdev-wrapper:\n{result['longrepr']}", False)

    def reportinfo(self) -> tuple[Path, int, str]:
        """Where the test is, as pytest prints it."""
        return self.path, 0, self.name


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Outside umockdev, replace this directory's tests by twins fed by one child run."""
    if UNDER_UMOCKDEV:
        return
    mine = [i for i in items if HERE in i.path.parents]
    if not mine:
        return
    child = _Child(config, [i.nodeid for i in mine])
    for index, item in enumerate(items):
        if item in mine and item.parent is not None:
            twin = _Twin.from_parent(item.parent, name=item.name, child=child)
            twin.own_markers = list(item.own_markers)
            items[index] = twin


# --------------------------------------------------------------------------- the child


_outcomes: dict[str, dict[str, str]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """In the child: remember each test's outcome (the worst of its phases)."""
    if not UNDER_UMOCKDEV or REPORT_ENV not in os.environ:
        return
    seen = _outcomes.get(report.nodeid)
    if seen is not None and seen["outcome"] != "passed":
        return
    if report.when != "call" and report.outcome == "passed":
        _outcomes.setdefault(report.nodeid, {"outcome": "passed", "longrepr": ""})
        return
    longrepr = ""
    if report.skipped and isinstance(report.longrepr, tuple):
        longrepr = str(report.longrepr[2]).removeprefix("Skipped: ")  # (file, line, reason)
    elif report.longrepr is not None:
        longrepr = str(report.longrepr)
    _outcomes[report.nodeid] = {"outcome": report.outcome, "longrepr": longrepr}


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In the child: hand the outcomes to the parent."""
    path = os.environ.get(REPORT_ENV)
    if UNDER_UMOCKDEV and path:
        Path(path).write_text(json.dumps(_outcomes))


# --------------------------------------------------------------------------- fixtures


class Testbed:
    """A umockdev testbed: devices added from recordings, uevents, the sysfs it fakes."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self, umockdev: Any) -> None:
        self.umockdev = umockdev
        self.tb = umockdev.Testbed.new()
        self.sys_dir = Path(self.tb.get_sys_dir())

    def add_file(self, path: Path) -> list[str]:
        """Add every device of a recording (an ``add`` uevent each); their sysfs paths."""
        text = path.read_text()
        self.add_text(text)
        return ["/sys" + line[3:].strip() for line in text.splitlines() if line.startswith("P: ")]

    def add_text(self, text: str) -> None:
        """Add the devices of umockdev text."""
        self.tb.add_from_string(text)

    def uevent(self, sys_path: str, action: str) -> None:
        """Send a uevent for a device (``add``, ``remove``, ``change``)."""
        self.tb.uevent(sys_path, action)

    def attribute(self, sys_path: str, name: str) -> str | None:
        """An attribute as the testbed holds it (what the sensor wrote), or None."""
        path = self.sys_dir.parent / sys_path.lstrip("/") / name
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            return None

    def set_attribute(self, sys_path: str, name: str, value: str) -> None:
        """Change an attribute without a uevent (as a write behind the agent's back)."""
        self.tb.set_attribute(sys_path, name, value)


@pytest.fixture
def testbed() -> Iterator[Testbed]:
    """A fresh umockdev testbed (only under umockdev-wrapper; see the module docstring)."""
    if not UNDER_UMOCKDEV:
        pytest.skip("needs umockdev-wrapper (the conftest re-runs these tests under it)")
    gi = pytest.importorskip("gi", reason="PyGObject missing: pip install 'PyGObject<3.51'")
    try:
        gi.require_version("UMockdev", "1.0")
        from gi.repository import UMockdev
    except (ImportError, ValueError) as e:
        pytest.skip(f"UMockdev typelib missing ({e}): apt install gir1.2-umockdev-1.0")
    bed = Testbed(UMockdev)
    try:
        yield bed
    finally:
        # The testbed removes its directory when collected; the next one must not see it.
        del bed.tb
        gc.collect()


def shared(name: str) -> Path:
    """A file of ../shared/testdata; the test is skipped when it is absent."""
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} not found: real recordings live in ../shared/testdata")
    return path


def asset(name: str) -> Path:
    """A recording of tests/assets/usb."""
    return ASSETS / name


class Events:
    """The sensor's sink: collects events; tests wait for the one they expect."""

    def __init__(self) -> None:
        self.events: list[events_pb2.Event] = []
        self._cond = threading.Condition()
        self.notified = 0

    def __call__(self, event: events_pb2.Event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def notify(self) -> None:
        """``on_device_event``: counted, as the process sensor's ``check_now`` would be."""
        with self._cond:
            self.notified += 1

    def devices(
        self, port: str | None = None, action: str | None = None
    ) -> list[events_pb2.Device]:
        """Device events so far, optionally of one port and action."""
        with self._cond:
            return [
                e.device
                for e in self.events
                if e.WhichOneof("kind") == "device"
                and (port is None or e.device.port == port)
                and (action is None or e.device.action == action)
            ]

    def wait(
        self,
        predicate: Callable[[events_pb2.Event], bool],
        timeout: float = WAIT_S,
        since: int = 0,
    ) -> events_pb2.Event:
        """The first event from index ``since`` on (seen or to come) that ``predicate``
        holds for."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events[since:]:
                    if predicate(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = "\n".join(str(e).replace("\n", " ") for e in self.events)
                    raise AssertionError(f"no matching event within {timeout} s; seen:\n{seen}")
                self._cond.wait(left)

    def device(
        self, port: str, action: str = "add", timeout: float = WAIT_S, since: int = 0
    ) -> events_pb2.Event:
        """Wait for the ``action`` event of the device at ``port``."""
        return self.wait(
            lambda e: (
                e.WhichOneof("kind") == "device"
                and e.device.port == port
                and e.device.action == action
            ),
            timeout,
            since,
        )

    def __len__(self) -> int:
        with self._cond:
            return len(self.events)


@pytest.fixture
def events() -> Events:
    """A fresh event collector."""
    return Events()


@dataclass
class Policies:
    """A policy directory of the test's own."""

    path: Path

    def rules(self, text: str) -> None:
        """Write ``devices.rules``."""
        (self.path / "devices.rules").write_text(text)


REGISTERED_STICK = """\
[[stick]]
label = "BM-U-TEST-001"
owner = "wang"
level = "机密"
serial = "4C530001230101111111"
id = "0781:5567"
hash = "Vc00hi7eITXZxbW+zfm+JWvkJb+rB0cXFsBgsmcife0="
status = "active"
registered = 2026-01-15
"""


@pytest.fixture
def policies(tmp_path: Path) -> Policies:
    """A policy directory registering ``stick-registered.umockdev`` (by serial, id, hash)."""
    path = tmp_path / "policies"
    path.mkdir()
    (path / "usb-registry.toml").write_text(REGISTERED_STICK)
    return Policies(path)
