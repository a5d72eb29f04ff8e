"""The policy the agent enforces: signed bundles from the collector, the last good on disk.

A bundle is applied only if its Ed25519 signature verifies with the collector's key
(received at enrolment) and the files load; otherwise it is refused with the reason and
the last good policy stays in force. Either way a ``policy_applied`` event says so.
Policy files live in ``STATE/policy/``; a bundle is written beside it and swapped in
with one rename, so a crash never leaves a half-written policy.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import grpc
from baomi.policy import SAFE_NAME
from baomi.v1 import collector_pb2, events_pb2

from agent.errors import AgentError
from agent.identity import Identity
from agent.signing import SigningKey

_logger = logging.getLogger(__name__)


#: Loads a policy directory and puts it in force; raises AgentError if it is bad.
Apply = Callable[[Path], None]
VERSION_FILE = ".version"  # the collector's name for the bundle; bundle files never start with "."


def signed_bytes(bundle: collector_pb2.PolicyBundle) -> bytes:
    """What the collector signed: the bundle with an empty signature."""
    unsigned = collector_pb2.PolicyBundle()
    unsigned.CopyFrom(bundle)
    unsigned.signature = b""
    return unsigned.SerializeToString(deterministic=True)


class PolicyKeeper:
    """Verifies, stores and applies bundles; remembers the version in force."""

    def __init__(
        self,
        state_dir: Path,
        identity: Identity,
        apply: Apply,
        emit: Callable[[events_pb2.Event], None],
    ) -> None:
        self._key = SigningKey(identity.signing_pub_pem)
        self._identity = identity
        self._dir = state_dir / "policy"
        self._apply = apply
        self._emit = emit
        self.version = ""

    def load_last_good(self) -> None:
        """Apply the policy kept on disk, if any (at start, before the collector answers)."""
        if not self._dir.is_dir():
            return
        try:
            self._apply(self._dir)
            self.version = (self._dir / VERSION_FILE).read_text().strip()
        except (AgentError, OSError) as e:
            _logger.error("the stored policy in %s does not load: %s", self._dir, e)
            self._report(self.version, ok=False, error=str(e))

    def _report(self, version: str, *, ok: bool, error: str = "") -> None:
        self._emit(
            events_pb2.Event(
                severity=events_pb2.SEVERITY_INFO if ok else events_pb2.SEVERITY_HIGH,
                policy_applied=events_pb2.PolicyApplied(version=version, ok=ok, error=error[:2000]),
            )
        )

    def offer(self, bundle: collector_pb2.PolicyBundle) -> bool:
        """Apply ``bundle`` if it is signed and loads; report the outcome as an event."""
        if not self._key.verifies(bundle.signature, signed_bytes(bundle)):
            self._report(bundle.version, ok=False, error="signature does not verify")
            return False
        bad = [n for n in bundle.files if not n or set(n) - SAFE_NAME or n.startswith(".")]
        if bad:
            self._report(bundle.version, ok=False, error=f"unsafe file names {bad[:5]!r}")
            return False
        staged = self._dir.with_name("policy.new")
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir(parents=True, mode=0o700)
        for name, data in bundle.files.items():
            (staged / name).write_bytes(data)
        (staged / VERSION_FILE).write_text(bundle.version)
        try:
            self._apply(staged)
        except AgentError as e:
            shutil.rmtree(staged, ignore_errors=True)
            _logger.error(
                "policy %s refused: %s; %s stays in force",
                bundle.version,
                e,
                self.version or "no policy",
            )
            self._report(bundle.version, ok=False, error=str(e))
            return False
        old = self._dir.with_name("policy.old")
        shutil.rmtree(old, ignore_errors=True)
        if self._dir.exists():
            self._dir.rename(old)
        staged.rename(self._dir)
        shutil.rmtree(old, ignore_errors=True)
        self.version = bundle.version
        self._report(bundle.version, ok=True)
        return True

    async def watch(self, retry_seconds: float = 5.0) -> None:
        """Follow the collector's WatchPolicy stream until cancelled; when it ends, try
        the next collector address."""
        turn = 0
        while True:
            addresses = self._identity.addresses
            address = addresses[turn % len(addresses)]
            turn += 1
            channel = grpc.aio.secure_channel(address, self._identity.credentials())
            try:
                call = channel.unary_stream(
                    "/baomi.v1.Collector/WatchPolicy",
                    request_serializer=collector_pb2.WatchPolicyRequest.SerializeToString,
                    response_deserializer=collector_pb2.PolicyBundle.FromString,
                )(collector_pb2.WatchPolicyRequest(current_version=self.version))
                async for bundle in call:
                    await asyncio.to_thread(self.offer, bundle)
            except grpc.aio.AioRpcError as e:
                _logger.info("policy watch at %s ended (%s); retrying", address, e.code().name)
            finally:
                await channel.close(grace=None)
            await asyncio.sleep(retry_seconds)
