"""Recorded destruction (销毁) of a classified file: ``baomi-agent destroy PATH --order ID --by P``.

A destruction order is a label order of action ``destroy`` for one register entry,
asked for by a secadmin in the register console, approved by another approver and
signed by the collector; its ``scope`` is the one person who may carry it out
(``user:NAME``). The agent keeps the orders it
receives in ``destroy_orders/`` of its state directory (verified on arrival and again
on use, so an order edited there is refused).

The file guard decides even root's opens, so only the agent (whose own pid is exempt)
can overwrite a guarded file while it runs: the command hands the request over a unix
socket in the state directory that only root may use (checked with SO_PEERCRED), and
the agent does it. With no agent running, the command does it itself.

Destroying: the order must verify, name this host, the file's register id (its label's
``label_id``) and home, and the person given; the policy must allow that person
``delete`` on the file's home. Then the content hash (SHA-256) is taken, the file's
blocks overwritten once with random data and synced, the file truncated and unlinked,
and its directory synced. A ``file_change`` (change ``destroyed``) records it with the
register id, home, hash, order and person; a ``label_order_result`` closes the order,
which marks the register entry destroyed at the collector. A refusal is recorded as a
``file_change`` of change ``destroy_refused``.

What overwriting achieves is limited (policies/README.md says it in full): on SSDs and
flash the controller writes elsewhere (wear levelling) and TRIM decides when old blocks
are erased; journalling, copy-on-write filesystems, snapshots and backups keep copies
the overwrite never reaches. This is a record of the destruction of the live copy, not
a guarantee that nothing can be recovered; 绝密 media are destroyed physically.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from baomi import labels
from baomi.policy.errors import LabelError, PolicyError
from baomi.policy.policyset import PolicySet
from baomi.v1 import collector_pb2, events_pb2

from agent.errors import AgentError
from agent.identity import Identity
from agent.label_orders import DONE_FILE, content_hash, order_signed_bytes
from agent.signing import SigningKey

_logger = logging.getLogger(__name__)

SOCKET_NAME = "destroy.sock"  # in the state directory; root only
ORDERS_DIR = "destroy_orders"  # in the state directory: verified destruction orders
ACTION = "destroy"
OVERWRITE_CHUNK = 1024 * 1024  # bytes of random data written at a time
REQUEST_BYTES = 16 * 1024  # the most one request over the socket may carry
SOCKET_TIMEOUT = 120.0  # seconds the command waits for the agent (a large file takes long)
_ORDER_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")


class DestroyError(AgentError):
    """A destruction that is refused or failed; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Destroyed:
    """One file destroyed."""

    path: str
    home: str
    register_id: str
    level: int
    content_hash: str
    order_id: str
    person: str

    def describe(self) -> str:
        """One line for the operator."""
        return (
            f"{self.path}: destroyed (register {self.register_id}, SHA-256 "
            f"{self.content_hash}, order {self.order_id}, by {self.person})"
        )


def order_person(order: collector_pb2.LabelOrder) -> str:
    """The one person a destruction order names (its scope ``user:NAME``), "" if none."""
    users = [s.removeprefix("user:") for s in order.scope if s.startswith("user:")]
    return users[0] if len(users) == 1 and len(order.scope) == 1 else ""


def _order_file(state_dir: Path, order_id: str) -> Path:
    if not _ORDER_ID_RE.fullmatch(order_id):
        raise DestroyError(f"order id {order_id[:40]!r} is not an order id (order-...)")
    return state_dir / ORDERS_DIR / f"{order_id}.pb"


def keep_order(state_dir: Path, order: collector_pb2.LabelOrder) -> None:
    """Keep a verified destruction order until it is used."""
    path = _order_file(state_dir, order.order_id)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(order.SerializeToString())
    tmp.chmod(0o600)
    tmp.replace(path)


def load_order(state_dir: Path, order_id: str) -> collector_pb2.LabelOrder:
    """The destruction order ``order_id`` as received; DestroyError when this host has none."""
    try:
        return collector_pb2.LabelOrder.FromString(_order_file(state_dir, order_id).read_bytes())
    except FileNotFoundError:
        raise DestroyError(
            f"this host has no destruction order {order_id!r}: a secadmin issues one for the "
            "register entry in the console, and the agent receives it while connected"
        ) from None
    except Exception as e:  # a truncated or garbled file: as good as forged
        raise DestroyError(f"destruction order {order_id!r} is unreadable: {e}") from e


def verify_order(order: collector_pb2.LabelOrder, key: SigningKey, host_id: str) -> None:
    """DestroyError unless ``order`` is a destruction order the collector signed for us."""
    if not key.verifies(order.signature, order_signed_bytes(order)):
        raise DestroyError(
            f"destruction order {order.order_id[:40]!r}: the signature does not verify "
            "(forged or altered); ask for a new order"
        )
    if order.host_id != host_id:
        raise DestroyError(f"order {order.order_id} is for host {order.host_id[:64]!r}")
    if order.action != ACTION or not order_person(order):
        raise DestroyError(f"order {order.order_id} is not a destruction order naming a person")


def overwrite_and_remove(path: Path) -> None:
    """Overwrite the file's blocks once with random data, truncate, unlink, sync the dir."""
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        written = 0
        while written < size:
            written += os.write(fd, os.urandom(min(OVERWRITE_CHUNK, size - written)))
        os.fsync(fd)
        os.ftruncate(fd, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()
    dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


class Destroyer:
    """Checks and carries out destruction requests; records each outcome."""

    def __init__(
        self,
        state_dir: Path,
        *,
        host_id: str,
        verify_key: SigningKey,
        label_key: Callable[[], bytes | None],
        policies: Callable[[], PolicySet | None],
        emit: Callable[[events_pb2.Event], None],
    ) -> None:
        self._state_dir = state_dir
        self._host_id = host_id
        self._verify_key = verify_key
        self._label_key = label_key
        self._policies = policies
        self._emit = emit

    def destroy(self, path: str, order_id: str, person: str) -> Destroyed:
        """Destroy ``path`` under ``order_id`` by ``person``; DestroyError when refused."""
        try:
            done = self._destroy(Path(path), order_id, person)
        except DestroyError as e:
            _logger.warning("destruction of %s refused: %s", path, e)
            self._emit(
                events_pb2.Event(
                    severity=events_pb2.SEVERITY_MEDIUM,
                    file_change=events_pb2.FileChange(
                        path=path[:4096],
                        change="destroy_refused",
                        pid=os.getpid(),
                        detail=f"order {order_id[:128]}; by {person[:64]}: {e}"[:2000],
                    ),
                )
            )
            raise
        self._emit(
            events_pb2.Event(
                # 绝密 destroyed is for the officer's eyes at once; the rest is routine.
                severity=events_pb2.SEVERITY_HIGH
                if done.level == events_pb2.LEVEL_TOP_SECRET
                else events_pb2.SEVERITY_INFO,
                file_change=events_pb2.FileChange(
                    path=done.path,
                    change="destroyed",
                    pid=os.getpid(),
                    level=done.level,  # type: ignore[arg-type]
                    label_id=done.register_id,
                    home=done.home,
                    detail=json.dumps(
                        {"sha256": done.content_hash, "order": done.order_id, "by": done.person},
                        ensure_ascii=False,
                    ),
                ),
            )
        )
        self._emit(
            events_pb2.Event(
                severity=events_pb2.SEVERITY_INFO,
                label_order_result=events_pb2.LabelOrderResult(
                    order_id=done.order_id,
                    register_id=done.register_id,
                    ok=True,
                    home=done.home,
                    content_hash=done.content_hash,
                    level=done.level,  # type: ignore[arg-type]
                ),
            )
        )
        self._used(order_id)
        _logger.info("%s", done.describe())
        return done

    def _used(self, order_id: str) -> None:
        """An order carried out is done: the collector's resending it changes nothing."""
        with (self._state_dir / DONE_FILE).open("a") as f:
            f.write(order_id + "\n")
        _order_file(self._state_dir, order_id).unlink(missing_ok=True)

    def _destroy(self, path: Path, order_id: str, person: str) -> Destroyed:
        if not path.is_absolute():
            raise DestroyError(f"{path}: give the file's absolute path")
        try:
            st = path.lstat()
        except OSError as e:
            raise DestroyError(f"{path}: {e.strerror}") from e
        if not stat.S_ISREG(st.st_mode):
            raise DestroyError(f"{path}: not a regular file (symlinks are not followed)")
        order = load_order(self._state_dir, order_id)
        verify_order(order, self._verify_key, self._host_id)
        try:
            label = labels.read_label(path, self._label_key())
        except (OSError, LabelError) as e:
            raise DestroyError(f"{path}: cannot read its label: {e}") from e
        if label is None or not label.valid or label.label_id != order.register_id:
            raise DestroyError(
                f"{path}: carries no valid label of register {order.register_id}; "
                "the order destroys that entry's file only"
            )
        home = labels.policy_path(label, str(path))
        if home != order.home:
            raise DestroyError(f"{path}: its home is {home}, the order's is {order.home}")
        named = order_person(order)
        if person != named:
            raise DestroyError(f"order {order_id} names {named!r} to destroy it, not {person!r}")
        self._check_policy(person, home, label)
        try:
            digest = content_hash(path)
            overwrite_and_remove(path)
        except OSError as e:
            raise DestroyError(f"{path}: not destroyed: {e.strerror}") from e
        return Destroyed(str(path), home, order.register_id, label.level, digest, order_id, person)

    def _check_policy(self, person: str, home: str, label: labels.Label) -> None:
        from agent.decision.engine import Engine  # noqa: PLC0415 - compiled on use

        policyset = self._policies()
        if policyset is None:
            raise DestroyError("no file policy is in force: nobody can be allowed to delete")
        someone = policyset.subjects.find(person)
        if someone is None:
            raise DestroyError(f"{person!r} is not a person of subjects.toml")
        verdict = Engine(policyset).decide_cold(
            uid=someone.uid, exe="", path=home, label=label, action="delete"
        )
        if not verdict.allow:
            raise DestroyError(
                f"the policy does not allow {person} to delete {home}: {verdict.reason}"
            )


# -- the socket: the command hands the request to the running agent -----------------
def socket_path(state_dir: Path) -> Path:
    """Where the running agent listens for destruction requests."""
    return state_dir / SOCKET_NAME


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return int(uid)


async def serve(state_dir: Path, destroyer: Destroyer) -> None:
    """Answer destruction requests from root on the state directory's socket until cancelled."""
    path = socket_path(state_dir)
    path.unlink(missing_ok=True)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if _peer_uid(writer.get_extra_info("socket")) != 0:
                answer = {"ok": False, "message": "only root may ask for a destruction"}
            else:
                answer = await asyncio.to_thread(_answer, destroyer, await reader.readline())
            writer.write(json.dumps(answer, ensure_ascii=False).encode() + b"\n")
            await writer.drain()
        finally:
            writer.close()

    old = os.umask(0o177)  # the socket is root's alone from its first moment
    try:
        server = await asyncio.start_unix_server(handle, path, limit=REQUEST_BYTES)
    except OSError as e:  # e.g. a state directory path too long for a unix socket
        _logger.error(
            "no destruction socket at %s (%s): baomi-agent destroy cannot reach this agent, "
            "and the file guard refuses the command's own writes",
            path,
            e,
        )
        return
    finally:
        os.umask(old)
    try:
        async with server:
            await server.serve_forever()
    finally:
        path.unlink(missing_ok=True)


def _answer(destroyer: Destroyer, line: bytes) -> dict[str, object]:
    try:
        request = json.loads(line)
        path, order, person = (str(request[k]) for k in ("path", "order", "by"))
    except (ValueError, KeyError, TypeError):
        return {"ok": False, "message": "a request is one JSON line with path, order and by"}
    try:
        return {"ok": True, "message": destroyer.destroy(path, order, person).describe()}
    except DestroyError as e:
        return {"ok": False, "message": str(e)}


def ask_agent(state_dir: Path, path: str, order_id: str, person: str) -> str | None:
    """Hand the request to the running agent; its answer, None when no agent listens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(SOCKET_TIMEOUT)
        try:
            sock.connect(str(socket_path(state_dir)))
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        request = {"path": path, "order": order_id, "by": person}
        sock.sendall(json.dumps(request, ensure_ascii=False).encode() + b"\n")
        with sock.makefile("rb") as f:
            reply = f.readline(REQUEST_BYTES)
    try:
        answer = json.loads(reply)
    except ValueError:
        raise DestroyError("the agent gave no answer; see its log") from None
    if not answer.get("ok"):
        raise DestroyError(str(answer.get("message")))
    return str(answer.get("message"))


def signing_key(identity: Identity) -> SigningKey:
    """The collector's order-signing key, received at enrolment."""
    return SigningKey(identity.signing_pub_pem)


def load_policies(directory: Path) -> Callable[[], PolicySet | None]:
    """The policy of ``directory``, loaded when asked (None when there is none)."""

    def load() -> PolicySet | None:
        if not directory.is_dir():
            return None
        try:
            return PolicySet.load(directory)
        except PolicyError as e:
            raise DestroyError(f"the file policy in {directory} does not load: {e}") from e

    return load
