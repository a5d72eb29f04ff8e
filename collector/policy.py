"""Policy distribution: the current signed bundle and the agents watching for it.

The current bundle comes from the newest policy version stored by the console (see
``collector.console``), or from a policy directory when the store holds none. Before a
change is published, :func:`validate` loads the files exactly as an agent would, so a
policy that an agent would refuse is never pushed. Collectors sharing a database look up
the newest stored version every ``POLICY_POLL_SECONDS`` (``follow_store``), so a policy
or meeting schedule saved on any collector's console reaches the agents of every one.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import logging
import re
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from baomi.errors import ConfigError
from baomi.policy import SAFE_NAME
from baomi.policy.errors import PolicyError
from baomi.policy.policyset import PolicySet
from baomi.v1 import collector_pb2
from cryptography.hazmat.primitives.asymmetric import ed25519

from collector.store.base import Store

_logger = logging.getLogger(__name__)

MAX_POLICY_FILE_BYTES = 1024 * 1024  # bytes per policy file
MAX_POLICY_FILES = 64  # files per bundle
DEVICE_RULES = "devices.rules"  # USBGuard rule syntax, parsed by baomi.devices.rules
MEETINGS = "meetings.toml"  # the meeting schedule room agents check ahead of each meeting
ROOMS = "rooms.toml"
POLICY_POLL_SECONDS = 1.0  # a version stored by another collector is pushed this late at most


def bundle_digest(files: dict[str, bytes]) -> str:
    """A version name derived from content: the first 16 hex of SHA-256 over the files."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()[:16]


def signed_bytes(bundle: collector_pb2.PolicyBundle) -> bytes:
    """What a bundle's signature covers: the bundle with an empty signature."""
    unsigned = collector_pb2.PolicyBundle()
    unsigned.CopyFrom(bundle)
    unsigned.signature = b""
    return unsigned.SerializeToString(deterministic=True)


class PolicyService:
    """The current bundle, and a way for agents to wait for the next one."""

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key
        self._changed = asyncio.Condition()
        self.current: collector_pb2.PolicyBundle | None = None
        #: The newest stored policy version seen; a newer one is published (catch_up).
        self.stored_number = 0

    def load_directory(
        self, directory: Path, author: str = "collector"
    ) -> collector_pb2.PolicyBundle:
        """Publish every regular file directly in ``directory`` as the current bundle."""
        return self._set(read_directory(directory), author)

    def load_files(self, files: dict[str, bytes], author: str) -> collector_pb2.PolicyBundle:
        """Make ``files`` the current bundle without waking watchers (at start)."""
        return self._set(files, author)

    async def publish(self, files: dict[str, bytes], author: str) -> collector_pb2.PolicyBundle:
        """Make ``files`` the current bundle and wake every watching agent. Store them as
        a policy version first (``Store.add_policy_version``): that is how the other
        collectors sharing the store learn of them."""
        bundle = self._set(files, author)
        async with self._changed:
            self._changed.notify_all()
        return bundle

    def _set(self, files: dict[str, bytes], author: str) -> collector_pb2.PolicyBundle:
        bundle = collector_pb2.PolicyBundle(
            version=bundle_digest(files), files=files, author=author
        )
        bundle.signature = self._key.sign(signed_bytes(bundle))
        self.current = bundle
        return bundle

    async def catch_up(self, store: Store) -> bool:
        """Publish the newest version in ``store`` if it was stored since the last look
        and is not the current bundle (another collector stored it); whether it was."""
        newest = await asyncio.to_thread(store.policy_versions, 1)
        if not newest or newest[0].number <= self.stored_number:
            return False
        self.stored_number = newest[0].number
        if self.current is not None and newest[0].version == self.current.version:
            return False  # stored and published here
        row = await asyncio.to_thread(store.policy_version, newest[0].number)
        if row is None:
            return False
        _logger.info("policy version %d (%s) from the store is published", row.number, row.version)
        await self.publish(row.files, row.author)
        return True

    async def follow_store(self, store: Store, seconds: float = POLICY_POLL_SECONDS) -> None:
        """Publish what any collector stores, looking every ``seconds``, until cancelled.
        Polling rather than LISTEN/NOTIFY: it works on every store, one small query a
        second costs nothing, and a notification lost in a database restart cannot
        leave agents on an old policy."""
        while True:
            await asyncio.sleep(seconds)
            try:
                await self.catch_up(store)
            except Exception:
                _logger.exception("looking up the newest policy failed; retrying")

    async def next_after(self, version: str) -> collector_pb2.PolicyBundle:
        """Wait until the current bundle differs from ``version`` and return it."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: self.current is not None and self.current.version != version
            )
            return self.current  # type: ignore[return-value]  # wait_for saw it set


def read_directory(directory: Path) -> dict[str, bytes]:
    """Every regular file directly in ``directory`` (up to the size limit), by name."""
    return {
        p.name: p.read_bytes()
        for p in sorted(directory.iterdir())
        if p.is_file() and p.stat().st_size <= MAX_POLICY_FILE_BYTES
    }


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """Why a policy would be refused: which file, which line (0: the whole file), why."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return (
            f"{self.file}:{self.line}: {self.reason}"
            if self.line
            else f"{self.file}: {self.reason}"
        )


_TOML_LINE = re.compile(r"at line (\d+)")


def validate(files: dict[str, bytes]) -> list[PolicyProblem]:
    """Load ``files`` the way an agent will; what is wrong with them (empty: nothing).

    The file guard's model, rules and register are loaded by the agent's own
    ``PolicySet.load``; device rules by the agent's USBGuard rule parser (and its device
    policy loader, when it exists); the meeting schedule by the room agents' loader,
    every meeting naming a room of rooms.toml and attendees of subjects.toml (when the
    bundle has them); any other ``.toml`` file must at least parse.
    """
    problems: list[PolicyProblem] = []
    if len(files) > MAX_POLICY_FILES:
        problems.append(PolicyProblem("-", 0, f"{len(files)} files; at most {MAX_POLICY_FILES}"))
    for name, data in sorted(files.items()):
        if not name or set(name) - SAFE_NAME or name.startswith("."):
            problems.append(
                PolicyProblem(
                    name[:100],
                    0,
                    "a file name may hold only letters, digits, '.', '_' and "
                    "'-', and may not start with '.'",
                )
            )
        elif len(data) > MAX_POLICY_FILE_BYTES:
            problems.append(PolicyProblem(name, 0, f"larger than {MAX_POLICY_FILE_BYTES} bytes"))
    if problems:
        return problems
    with tempfile.TemporaryDirectory(prefix="baomi-policy-") as tmp:
        root = Path(tmp)
        for name, data in files.items():
            (root / name).write_bytes(data)
        problems.extend(_check_file_guard(root))
        problems.extend(_check_devices(root, files))
        problems.extend(_check_meetings(root, files))
    for name, data in sorted(files.items()):
        if name.endswith(".toml"):
            try:
                tomllib.loads(data.decode("utf-8"))
            except UnicodeDecodeError as e:
                problems.append(PolicyProblem(name, 0, f"not UTF-8 text: {e}"))
            except tomllib.TOMLDecodeError as e:
                m = _TOML_LINE.search(str(e))
                problems.append(PolicyProblem(name, int(m.group(1)) if m else 0, str(e)))
    # The file guard and the TOML check may both name one broken subjects.toml.
    return list(dict.fromkeys(problems))


def _where(root: Path, file: str) -> str:
    """A problem's file as the bundle names it, not the temporary path."""
    path = Path(file)
    return path.name if root in (path.parent, path) else file


def _check_file_guard(root: Path) -> list[PolicyProblem]:
    try:
        PolicySet.load(root)
    except PolicyError as e:
        return [PolicyProblem(_where(root, e.file), e.line, e.reason)]
    return []


def _check_meetings(root: Path, files: dict[str, bytes]) -> list[PolicyProblem]:
    """The meeting schedule as room agents load it; rooms and attendees it names."""
    if MEETINGS not in files:
        return []
    from baomi.meeting.rooms import RoomsError, load_meetings  # noqa: PLC0415
    from baomi.policy.subjects import Subjects  # noqa: PLC0415 - agent side

    try:
        meetings = load_meetings(root / MEETINGS)
    except RoomsError as e:
        return [PolicyProblem(_where(root, e.file), e.line, e.reason)]
    rooms: set[str] | None = None
    if ROOMS in files:
        # Only the names: a room's baselines and keys live beside its agent, not here.
        try:
            tables = tomllib.loads(files[ROOMS].decode("utf-8")).get("rooms")
        except (UnicodeDecodeError, tomllib.TOMLDecodeError):
            tables = None  # the TOML check reports it
        rooms = set(tables) if isinstance(tables, dict) else None
    people: set[str] | None = None
    if "subjects.toml" in files:
        try:
            people = {p.name for p in Subjects.load(root / "subjects.toml").people}
        except PolicyError:
            people = None  # the file guard's check reports it
    problems = []
    for m in meetings.values():
        if rooms is not None and m.room not in rooms:
            known = ", ".join(sorted(rooms)) or "none"
            problems.append(
                PolicyProblem(MEETINGS, m.line, f"meeting {m.id}: no room {m.room!r} ({known})")
            )
        unknown = [a for a in m.attendees if people is not None and a not in people]
        if unknown:
            problems.append(
                PolicyProblem(
                    MEETINGS,
                    m.line,
                    f"meeting {m.id}: attendees not in subjects.toml: {', '.join(unknown[:5])}",
                )
            )
    return problems


def _check_devices(root: Path, files: dict[str, bytes]) -> list[PolicyProblem]:
    """Device rules through the agent's parser; the whole device policy when it exists."""
    problems: list[PolicyProblem] = []
    if DEVICE_RULES in files:
        from baomi.devices.rules import RuleError, RuleSet  # noqa: PLC0415 - agent side

        try:
            RuleSet.parse(files[DEVICE_RULES].decode("utf-8"), path=DEVICE_RULES)
        except UnicodeDecodeError as e:
            problems.append(PolicyProblem(DEVICE_RULES, 0, f"not UTF-8 text: {e}"))
        except RuleError as e:
            problems.append(PolicyProblem(DEVICE_RULES, e.line, e.reason))
    # The device sensor's loader (rules and the registered-stick registry together) is
    # used when the agent has one, so the collector refuses exactly what agents refuse.
    try:
        module = importlib.import_module("baomi.devices.policy")
    except ImportError:
        return problems
    loader = getattr(module, "DevicePolicy", None)
    if problems or loader is None or DEVICE_RULES not in files:
        return problems
    try:
        loader.load(root)
    except ConfigError as e:
        file, line = getattr(e, "file", DEVICE_RULES), getattr(e, "line", 0)
        reason = getattr(e, "reason", str(e))
        problems.append(PolicyProblem(_where(root, str(file)), int(line), str(reason)))
    return problems
