"""The host simulator: N enrolled hosts streaming realistic events to real collectors.

``python -m bench.fleet --hosts 1000 --collector ADDR[,ADDR...] --enroll ADDR[,ADDR...]
--ca CA.pem --store URL`` makes one enrolment token per host through the collector's
store API (as ``baomi-collector token create`` does), enrols every host through the real
``Enroll`` RPC with a fresh ECDSA P-256 key (what the agent uses), then streams each
host's chain over its own mTLS channel from a few worker processes (asyncio, many
channels each). Hosts behave as the agent does (:mod:`agent.stream`): at most
``--window`` batches await an Ack, every Ack is checked against the host's own chain,
events are forgotten only once acknowledged, and after a fault a host reconnects to the
next address and sends again what was not acknowledged. With ``--policy-versions N``
each host also follows the collector's policy stream (``WatchPolicy``, on its stream's
connection), checks each bundle's signature with the key enrolment gave it and reports
``policy_applied`` in its chain, as :class:`agent.policy.PolicyKeeper` does; a host is
done once it has applied N versions.

One JSON line goes to stdout: events/s, p50/p99 Ack latency (from a batch's write to
the Ack that covers it), errors by kind and reconnects; with ``--verify`` it also says
whether the store holds every host's seq 1..N exactly once, ending in the hash the host
made. Operators sizing a deployment can run it against a test installation: every
figure comes from real TLS, gRPC and the real store.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import multiprocessing
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import grpc
from baomi import chain
from baomi.meeting.signature import sign_meeting_check
from baomi.v1 import collector_pb2, events_pb2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from agent.policy import signed_bytes
from collector.enrollment import create_token
from collector.store import open_store

STREAM = "/baomi.v1.Collector/Stream"
WATCH_POLICY = "/baomi.v1.Collector/WatchPolicy"
ENROLL = "/baomi.v1.Collector/Enroll"
T0_NS = 1_780_000_000 * 1_000_000_000  # event times start here (2026)
ENROLL_TIMEOUT_S = 30.0  # seconds per Enroll RPC
ENROLL_CONCURRENCY = 32  # Enroll RPCs in flight at once
CONNECT_TIMEOUT_S = 20.0  # seconds a stream may take to give its first Ack
BACKOFF_INITIAL_S = 0.2  # first reconnect pause; doubles per failure, with full jitter
BACKOFF_MAX_S = 5.0  # longest reconnect pause
BATCH_SECONDS = 0.2  # how long a partial batch may wait at a given --rate (as the agent)
KEEP_ACKED = 1000  # acknowledged events kept per host, to resend if a collector loses them
POLICY_RETRY_S = 5.0  # pause before a policy watch that ended is opened again (as the agent)


class FleetError(Exception):
    """The simulator cannot run as asked; the message says what to change."""


class ChainMismatchError(Exception):
    """An Ack that cannot be true for this host's chain (forged, foreign or lost)."""


class LostEventsError(ChainMismatchError):
    """The collector lost acknowledged events; the host sends them again."""


# -- the events ----------------------------------------------------------------------

# (kind, weight): the mix of a secret computer's working day, per 100 events.
MIX = (
    ("file_allow", 58),
    ("file_deny", 6),
    ("file_change", 12),
    ("process", 9),
    ("network", 4),
    ("usb", 3),
    ("heartbeat", 7),
    ("meeting", 1),
)
_MIX_TABLE = [kind for kind, weight in MIX for _ in range(weight)]
PROJECTS = ("falcon", "heron", "osprey", "kestrel", "merlin")
PROGRAMS = ("/usr/lib/libreoffice/program/soffice.bin", "/usr/bin/evince", "/usr/bin/cp")


def event_kind(host_index: int, seq: int) -> str:
    """The kind of a host's event ``seq``: the mix, spread evenly and the same every run."""
    return _MIX_TABLE[(seq * 37 + host_index * 11) % len(_MIX_TABLE)]


def make_event(
    host_id: str, host_index: int, seq: int, prev_hash: bytes, key_pem: bytes | None
) -> events_pb2.Event:
    """Host ``host_id``'s event ``seq`` after ``prev_hash``; meeting checks are signed with
    ``key_pem`` (the collector alerts on an unsigned one), or become heartbeats without it."""
    ev = events_pb2.Event(host_id=host_id, seq=seq, prev_hash=prev_hash)
    ev.time.FromNanoseconds(T0_NS + seq * 1_000_000)
    ev.severity = events_pb2.SEVERITY_INFO
    kind = event_kind(host_index, seq)
    k = seq % 997
    project = PROJECTS[k % len(PROJECTS)]
    user, uid = f"user{k % 40:04d}", 1000 + k % 40
    if kind in ("file_allow", "file_deny"):
        fa = ev.file_access
        fa.path = f"/srv/projects/{project}/design/rev-{k % 50:04d}/section-{k:03d}.docx"
        fa.action = ("read", "read", "write", "execute", "export")[k % 5]
        fa.uid, fa.user, fa.pid = uid, user, 20000 + seq % 30000
        fa.executable = PROGRAMS[k % len(PROGRAMS)]
        fa.level = events_pb2.LEVEL_SECRET
        fa.label_id = f"lbl-{k:08x}"
        if kind == "file_deny":
            fa.decision = events_pb2.DECISION_DENY
            fa.reason = f"clearance 1 below level 2 of group {project}"
            ev.severity = events_pb2.SEVERITY_MEDIUM
        else:
            fa.decision = events_pb2.DECISION_ALLOW
            fa.reason = f"clearance 2, group {project}"
    elif kind == "file_change":
        fc = ev.file_change
        fc.path = f"/srv/projects/{project}/notes/{k:03d}.odt"
        fc.change = ("write", "create", "rename")[k % 3]
        fc.uid, fc.pid, fc.level = uid, 20000 + seq % 30000, events_pb2.LEVEL_CONFIDENTIAL
    elif kind == "process":
        pr = ev.process
        pr.pid, pr.uid, pr.name = 30000 + seq % 20000, uid, "cheese"
        pr.executable, pr.cmdline = "/usr/bin/cheese", "cheese"
        pr.reason = "opened a camera"
        pr.devices.append("/dev/video0")
    elif kind == "network":
        nw = ev.network
        nw.action, nw.interface, nw.link_kind = "link_new", f"usb{k % 3}", "usb"
        nw.violation, nw.enforced = True, True
        nw.reason = "USB tethering is not allowed on a secret computer"
        ev.severity = events_pb2.SEVERITY_HIGH
    elif kind == "usb":
        dv = ev.device
        dv.action, dv.device_class = "add", "storage"
        dv.vendor_id, dv.product_id, dv.serial = "0781", "5581", f"4C53{k:08d}"
        dv.name, dv.port = "SanDisk Ultra", f"1-{1 + k % 4}"
        dv.decision = events_pb2.DECISION_DENY
        dv.rule, dv.reason = "baomi:block-storage", "unregistered storage device"
        ev.severity = events_pb2.SEVERITY_HIGH
    elif kind == "heartbeat" or key_pem is None:  # an unsigned check would be alerted
        st = ev.agent_status
        st.version, st.policy_version, st.state = "0.1", "1", "running"
        st.heartbeat_seconds = 30
        st.sensors.add(name="files", state="ok")
        st.sensors.add(name="usb", state="ok")
    else:  # meeting
        mc = ev.meeting_check
        mc.room, mc.meeting, mc.phase, mc.cleared = "room-301", f"m-{k}", "check", True
        mc.inspector = user
        mc.items.add(id="phones", title="phones in the cabinet", result="pass", mandatory=True)
        sign_meeting_check(mc, key_pem)
    return ev


# -- one host's chain, as the agent's spool keeps it ------------------------------------


class HostChain:
    """A host's events from seq 1: made on demand, kept until the collector acknowledges
    them (and the last ``KEEP_ACKED`` after), every Ack checked against what this host
    made -- as the agent's spool (``Spool.acknowledge`` and ``rebase``)."""

    def __init__(
        self, host_id: str, host_index: int, total: int, key_pem: bytes | None = None
    ) -> None:
        self.host_id = host_id
        self.host_index = host_index
        self.total = total  # events this host makes in all (grows with each report)
        self._key_pem = key_pem
        self.made = 0  # seq of the last event made
        self.last_hash = chain.GENESIS  # hash of event ``made``
        self.acked = (0, chain.GENESIS)  # (seq, hash) the collector acknowledged
        # (seq, body, hash) with consecutive seqs: acknowledged ones, then the rest.
        self._kept: collections.deque[tuple[int, bytes, bytes]] = collections.deque()
        self._reports: collections.deque[events_pb2.PolicyApplied] = collections.deque()

    @property
    def done(self) -> bool:
        """Every event made and acknowledged."""
        return self.acked[0] == self.total and not self._reports

    def report(self, applied: events_pb2.PolicyApplied) -> None:
        """Add a ``policy_applied`` event to the chain: made next, before the mix goes on
        (the agent emits it as soon as the bundle is offered)."""
        self._reports.append(applied)

    def make(self, up_to: int) -> None:
        """Make the reports waiting, then events up to seq ``up_to`` (at most ``total``)."""
        while self._reports:
            ev = events_pb2.Event(host_id=self.host_id, seq=self.made + 1, prev_hash=self.last_hash)
            ev.time.FromNanoseconds(T0_NS + ev.seq * 1_000_000)
            applied = self._reports.popleft()
            ev.severity = events_pb2.SEVERITY_INFO if applied.ok else events_pb2.SEVERITY_HIGH
            ev.policy_applied.CopyFrom(applied)
            self.total += 1
            self._keep(ev)
        for seq in range(self.made + 1, min(up_to, self.total) + 1):
            self._keep(
                make_event(self.host_id, self.host_index, seq, self.last_hash, self._key_pem)
            )

    def _keep(self, ev: events_pb2.Event) -> None:
        self.last_hash = chain.event_hash(ev)
        self._kept.append((ev.seq, chain.canonical_bytes(ev), self.last_hash))
        self.made = ev.seq

    def _first_kept(self) -> int:
        return self._kept[0][0] if self._kept else self.made + 1

    def _hash_at(self, seq: int) -> bytes | None:
        """This host's event hash at ``seq`` (GENESIS at 0); None if no longer kept."""
        if seq == 0:
            return chain.GENESIS
        first = self._first_kept()
        return self._kept[seq - first][2] if first <= seq <= self.made else None

    def after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` kept events after ``seq``, as (seq, body)."""
        start = max(0, seq + 1 - self._first_kept())
        return [
            (s, body)
            for s, body, _ in itertools.islice(
                self._kept, start, min(start + limit, len(self._kept))
            )
        ]

    def acknowledge(self, up_to_seq: int, head_hash: bytes) -> int:
        """Take the collector's word that it stores this chain up to ``up_to_seq``;
        returns how many events it newly covers. ChainMismatchError when it cannot be
        true; LostEventsError when it is below an earlier Ack but this host still keeps
        what follows: then the collector's head is the acknowledged one again, and what
        follows is sent again on the next stream."""
        acked_seq = self.acked[0]
        if up_to_seq > self.made:
            raise ChainMismatchError(
                f"{self.host_id}: the collector holds seq {up_to_seq}, this host made {self.made}"
            )
        mine = self._hash_at(up_to_seq)
        if mine is not None and head_hash != mine:
            raise ChainMismatchError(f"{self.host_id}: head at seq {up_to_seq} is foreign")
        if up_to_seq < acked_seq:
            lost = (
                f"{self.host_id}: the collector's chain ends at seq {up_to_seq}, below seq "
                f"{acked_seq} it acknowledged before: it lost events"
            )
            if mine is None:
                raise ChainMismatchError(f"{lost}, older than this host keeps")
            self.acked = (up_to_seq, mine)
            raise LostEventsError(lost)
        self.acked = (up_to_seq, head_hash)
        while self._kept and self._kept[0][0] <= up_to_seq - KEEP_ACKED:
            self._kept.popleft()
        return up_to_seq - acked_seq


# -- streaming -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class StreamSettings:
    """How every simulated host streams."""

    addresses: tuple[str, ...]
    ca_pem: bytes
    events: int  # per host
    batch: int  # events per batch at most
    window: int  # batches awaiting an Ack at most
    rate: float  # events/s per host; 0: as fast as Acks allow
    server_name: str | None  # TLS name to expect, when the addresses do not carry it
    deadline_s: float  # the run ends after this many seconds whatever happened
    policy_versions: int = 0  # policy versions a host applies before it is done; 0: no watch


@dataclass
class Stats:
    """What one worker saw."""

    acked: int = 0
    reconnects: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)  # seconds, one per batch
    first_send: float = 0.0  # time.monotonic(), system-wide on Linux
    last_ack: float = 0.0
    # host -> (acknowledged seq, its hex hash, events made in all)
    heads: dict[str, tuple[int, str, int]] = field(default_factory=dict)
    # policy version -> hosts that applied it
    policy: collections.Counter[str] = field(default_factory=collections.Counter)


@dataclass
class Host:
    """One simulated host: its identity and its chain."""

    chain: HostChain
    key_pem: bytes
    cert_pem: bytes
    address_index: int  # which of the addresses it uses now
    signing_key_pem: bytes = b""  # the collector's Ed25519 key (PEM), from enrolment
    policy_version: str = ""  # the version in force, as the agent's PolicyKeeper
    applied: list[str] = field(default_factory=list)  # versions applied, in order

    def finished(self, settings: StreamSettings) -> bool:
        """Every event acknowledged and the policy versions asked for applied."""
        return self.chain.done and len(set(self.applied)) >= settings.policy_versions

    def offer(self, bundle: collector_pb2.PolicyBundle) -> None:
        """Take a bundle as the agent does: applied (and reported ok) only if the
        collector's key signed it, else reported refused."""
        key = serialization.load_pem_public_key(self.signing_key_pem)
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise FleetError("the collector's signing key from enrolment is not Ed25519")
        try:
            key.verify(bundle.signature, signed_bytes(bundle))
        except InvalidSignature:
            self.chain.report(
                events_pb2.PolicyApplied(
                    version=bundle.version, ok=False, error="signature does not verify"
                )
            )
            return
        self.policy_version = bundle.version
        self.applied.append(bundle.version)
        self.chain.report(events_pb2.PolicyApplied(version=bundle.version, ok=True))

    def credentials(self, ca_pem: bytes) -> grpc.ChannelCredentials:
        """mTLS as the agent: its own certificate, trusting only the collector's CA."""
        return grpc.ssl_channel_credentials(
            root_certificates=ca_pem, private_key=self.key_pem, certificate_chain=self.cert_pem
        )


class SessionEndedError(Exception):
    """The collector ended the stream (or never answered it)."""


class Session:
    """One stream of a host to one address."""

    def __init__(self, host: Host, settings: StreamSettings) -> None:
        self.host = host
        self.settings = settings
        self.address = settings.addresses[host.address_index % len(settings.addresses)]
        options: list[tuple[str, Any]] = [
            ("grpc.use_local_subchannel_pool", 1),  # one connection per host, as agents
            ("grpc.keepalive_time_ms", 30_000),
        ]
        if settings.server_name:
            options.append(("grpc.ssl_target_name_override", settings.server_name))
        self.channel = grpc.aio.secure_channel(
            self.address, host.credentials(settings.ca_pem), options=options
        )
        self.call: Any = None
        self.watch: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Start the stream and take the collector's head from its first Ack; follow
        the policy on the same connection if asked."""
        if self.settings.policy_versions:
            self.watch = asyncio.create_task(self._watch_policy())
        self.call = self.channel.stream_stream(
            STREAM, request_serializer=None, response_deserializer=events_pb2.Ack.FromString
        )()
        first = await asyncio.wait_for(self.call.read(), CONNECT_TIMEOUT_S)
        if not isinstance(first, events_pb2.Ack):
            raise SessionEndedError(f"{self.address} ended the stream before its first Ack")
        self.host.chain.acknowledge(first.up_to_seq, first.head_hash)

    async def _watch_policy(self) -> None:
        """Offer every bundle the collector sends until the session closes; when the
        watch ends, open it again after a pause (as ``PolicyKeeper.watch``)."""
        while True:
            call = self.channel.unary_stream(
                WATCH_POLICY,
                request_serializer=collector_pb2.WatchPolicyRequest.SerializeToString,
                response_deserializer=collector_pb2.PolicyBundle.FromString,
            )(collector_pb2.WatchPolicyRequest(current_version=self.host.policy_version))
            with contextlib.suppress(grpc.aio.AioRpcError):
                async for bundle in call:
                    self.host.offer(bundle)
            await asyncio.sleep(POLICY_RETRY_S)

    async def run(self, stats: Stats, started: float) -> bool:
        """Send until every event is acknowledged; True if anything was acknowledged."""
        chain_, s, call = self.host.chain, self.settings, self.call
        in_flight: collections.deque[tuple[int, float]] = collections.deque()
        slots = asyncio.Semaphore(s.window)
        progress = False

        async def receive() -> None:
            nonlocal progress
            while not self.host.finished(s):
                ack = await call.read()
                if not isinstance(ack, events_pb2.Ack):
                    raise SessionEndedError(f"{self.address} ended the stream")
                if ack.HasField("rejection"):
                    raise RejectedError(ack.rejection.reason)
                stats.acked += chain_.acknowledge(ack.up_to_seq, ack.head_hash)
                progress = True
                now = time.monotonic()
                stats.last_ack = now
                while in_flight and in_flight[0][0] <= ack.up_to_seq:
                    stats.latencies.append(now - in_flight.popleft()[1])
                    slots.release()

        receiver = asyncio.create_task(receive())
        try:
            sent = chain_.acked[0]
            while not receiver.done():
                chain_.make(self._due(sent, started))
                rows = chain_.after(sent, s.batch)
                if len(rows) < s.batch and chain_.made < chain_.total:
                    # At a given rate, let a partial batch fill for a moment (as the agent).
                    await asyncio.wait([receiver], timeout=BATCH_SECONDS)
                    chain_.make(self._due(sent, started))
                    rows = chain_.after(sent, s.batch)
                if not rows:  # everything made is sent: wait for Acks or new events
                    await asyncio.wait([receiver], timeout=BATCH_SECONDS)
                    continue
                if not await _take_slot(slots, receiver):
                    break
                await call.write(chain.batch_of([body for _, body in rows]))
                now = time.monotonic()
                if not stats.first_send:
                    stats.first_send = now
                sent = rows[-1][0]
                in_flight.append((sent, now))
            await receiver  # raises what ended it
        finally:
            receiver.cancel()
        return progress

    def _due(self, sent: int, started: float) -> int:
        """The seq up to which events should exist by now."""
        if self.settings.rate <= 0:
            return sent + self.settings.batch  # as fast as the window allows
        return int((time.monotonic() - started) * self.settings.rate)

    async def close(self) -> None:
        """End the stream, the policy watch and the connection."""
        if self.watch is not None:
            self.watch.cancel()
        if self.call is not None:
            self.call.cancel()
        await self.channel.close(grace=None)


class RejectedError(Exception):
    """The collector refused a batch."""


async def _take_slot(slots: asyncio.Semaphore, receiver: asyncio.Task[None]) -> bool:
    """Wait for room in the window; False if the stream ended meanwhile."""
    while not receiver.done():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(slots.acquire(), 0.5)
            return True
    return False


def _error_kind(e: BaseException) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return str(e.code().name)
    return type(e).__name__


async def run_host(
    host: Host,
    *,
    settings: StreamSettings,
    stats: Stats,
    first: Session | None,
    started: float,
    end_at: float,
) -> None:
    """Stream ``host``'s chain until done or ``end_at``; after a fault, move to the next
    address and resend what was not acknowledged, with backoff (jittered like the agent)."""
    attempt = 0
    session = first
    while not host.finished(settings) and time.monotonic() < end_at:
        try:
            if session is None:
                session = Session(host, settings)
                await session.open()
            if await session.run(stats, started):
                attempt = 0
            continue
        except LostEventsError as e:  # the agent records a tamper event and resends
            stats.errors["collector_lost_events"] += 1
            print(f"fleet: {e}", file=sys.stderr)
        except ChainMismatchError as e:
            stats.errors["chain_mismatch"] += 1
            print(f"fleet: {e}", file=sys.stderr)
            return  # the agent records a tamper event; nothing it can send would help
        except Exception as e:  # noqa: BLE001 - as the agent: whatever ended it, stream on
            kind = _error_kind(e)
            if not stats.errors[kind]:  # the first of each kind, for the operator
                print(f"fleet: {host.chain.host_id}: {kind}: {e}", file=sys.stderr)
            stats.errors[kind] += 1
        finally:
            if session is not None:
                await session.close()
                session = None
        stats.reconnects += 1
        host.address_index += 1
        cap = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2**attempt)
        attempt = min(attempt + 1, 16)
        await asyncio.sleep(random.uniform(0, cap))  # jitter, not crypto
    if not host.chain.done:
        stats.errors["unfinished"] += 1
    elif not host.finished(settings):
        stats.errors["policy_versions_missing"] += 1


async def _connect(host: Host, settings: StreamSettings, stats: Stats) -> Session | None:
    """Open ``host``'s first stream (its TLS handshake and first Ack), or None."""
    session = Session(host, settings)
    try:
        await session.open()
    except (grpc.aio.AioRpcError, SessionEndedError, TimeoutError, OSError) as e:
        stats.errors[f"connect_{_error_kind(e)}"] += 1
        stats.reconnects += 1
        host.address_index += 1  # its first stream goes to the next address
        await session.close()
        return None
    return session


async def run_worker_async(
    hosts: list[Host], settings: StreamSettings, connected: Any, go: Any
) -> Stats:
    """Connect every host, report, wait for ``go``, then stream them all."""
    stats = Stats()
    sessions = await asyncio.gather(*(_connect(h, settings, stats) for h in hosts))
    connected(sum(1 for s in sessions if s is not None))
    await go()
    started = time.monotonic()
    end_at = started + settings.deadline_s
    await asyncio.gather(
        *(
            run_host(h, settings=settings, stats=stats, first=s, started=started, end_at=end_at)
            for h, s in zip(hosts, sessions, strict=True)
        )
    )
    stats.heads = {
        h.chain.host_id: (h.chain.acked[0], h.chain.acked[1].hex(), h.chain.total) for h in hosts
    }
    stats.policy.update(v for h in hosts for v in set(h.applied))
    return stats


def _worker(
    hosts: list[tuple[str, int, bytes, bytes, bytes]],
    settings: StreamSettings,
    results: Any,
    go: MpEvent,
) -> None:
    """A worker process: its share of the hosts, results put on ``results``."""
    sims = [
        Host(HostChain(name, index, settings.events, key), key, cert, index, signing)
        for name, index, key, cert, signing in hosts
    ]

    async def wait_go() -> None:
        await asyncio.get_running_loop().run_in_executor(None, go.wait)

    try:
        stats = asyncio.run(
            run_worker_async(sims, settings, lambda n: results.put(("connected", n)), wait_go)
        )
    except Exception as e:  # noqa: BLE001 - the parent reports it
        results.put(("error", f"{type(e).__name__}: {e}"))
        return
    results.put(
        (
            "done",
            {
                "acked": stats.acked,
                "reconnects": stats.reconnects,
                "errors": dict(stats.errors),
                "latencies": stats.latencies,
                "first_send": stats.first_send,
                "last_ack": stats.last_ack,
                "heads": stats.heads,
                "policy": dict(stats.policy),
            },
        )
    )


# -- enrolment -------------------------------------------------------------------------


@dataclass(frozen=True)
class Enrolled:
    """One enrolled simulated host."""

    host_id: str
    key_pem: bytes
    cert_pem: bytes
    signing_key_pem: bytes  # the collector's policy and checkpoint key


def host_names(prefix: str, count: int) -> list[str]:
    """The ids of ``count`` simulated hosts."""
    return [f"{prefix}{i:05d}" for i in range(count)]


def make_tokens(store_url: str, names: list[str]) -> list[str]:
    """One single-use enrolment token per host, made as ``baomi-collector token create``."""
    store = open_store(store_url)
    try:
        return [create_token(store, name) for name in names]
    finally:
        store.close()


def _csr() -> tuple[bytes, bytes]:
    """A key and CSR as ``agent.identity.enroll`` makes them."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "baomi-agent")]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


async def enroll_all(
    tokens: list[str], addresses: tuple[str, ...], ca_pem: bytes, server_name: str | None
) -> list[Enrolled]:
    """Enrol one host per token through the ``Enroll`` RPC, trying the next address when
    one fails to answer."""
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    channels = [grpc.aio.secure_channel(a, creds, options=options) for a in addresses]
    limit = asyncio.Semaphore(ENROLL_CONCURRENCY)

    async def one(i: int, token: str) -> Enrolled:
        key_pem, csr_pem = _csr()
        request = collector_pb2.EnrollRequest(token=token, csr_pem=csr_pem)
        failures = []
        async with limit:
            for k in range(len(channels)):
                channel = channels[(i + k) % len(channels)]
                call = channel.unary_unary(
                    ENROLL,
                    request_serializer=collector_pb2.EnrollRequest.SerializeToString,
                    response_deserializer=collector_pb2.EnrollResponse.FromString,
                )
                try:
                    r = await call(request, timeout=ENROLL_TIMEOUT_S)
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.UNAVAILABLE:
                        raise FleetError(f"enrolment refused: {e.details()}") from e
                    failures.append(f"{addresses[(i + k) % len(addresses)]}: {e.details()}")
                    continue
                if r.head.seq != 0:
                    raise FleetError(
                        f"{r.host_id} already has events (seq {r.head.seq}) in the store; "
                        "simulate fresh hosts with another --prefix"
                    )
                return Enrolled(r.host_id, key_pem, r.certificate_pem, r.signing_key_pem)
        raise FleetError("no enrolment address answered: " + "; ".join(failures))

    try:
        return await asyncio.gather(*(one(i, t) for i, t in enumerate(tokens)))
    finally:
        for c in channels:
            await c.close()


# -- the run ---------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def _shares(
    enrolled: list[Enrolled], procs: int
) -> Iterator[list[tuple[str, int, bytes, bytes, bytes]]]:
    for p in range(procs):
        share = [
            (e.host_id, i, e.key_pem, e.cert_pem, e.signing_key_pem)
            for i, e in enumerate(enrolled)
            if i % procs == p
        ]
        if share:
            yield share


def stream_fleet(
    enrolled: list[Enrolled],
    settings: StreamSettings,
    procs: int,
    on_connected: Any = None,
) -> dict[str, Any]:
    """Stream every host from ``procs`` worker processes; the merged result.

    ``on_connected(n)`` runs once every worker has connected its hosts (n of them did),
    before any event is sent; the streams start when it returns.
    """
    ctx = multiprocessing.get_context("spawn")  # no forked gRPC state in the workers
    results = ctx.Queue()
    go = ctx.Event()
    workers = [
        ctx.Process(target=_worker, args=(share, settings, results, go), daemon=True)
        for share in _shares(enrolled, procs)
    ]
    connect_start = time.monotonic()
    for w in workers:
        w.start()
    try:
        connected = 0
        for _ in workers:
            kind, value = _get(results, workers, settings.deadline_s)
            if kind == "error":
                raise FleetError(f"a worker failed: {value}")
            connected += int(value)
        connect_s = time.monotonic() - connect_start
        if on_connected is not None:
            on_connected(connected)
        go.set()
        done = []
        for _ in workers:
            kind, value = _get(results, workers, settings.deadline_s + 60)
            if kind == "error":
                raise FleetError(f"a worker failed: {value}")
            done.append(value)
    finally:
        go.set()
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.kill()
    return _merge(done, len(enrolled), settings, connected, connect_s)


def _get(results: Any, workers: list[Any], timeout: float) -> tuple[str, Any]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(Exception):
            item: tuple[str, Any] = results.get(timeout=1.0)
            return item
        if any(not w.is_alive() and w.exitcode not in (0, None) for w in workers):
            raise FleetError("a worker process died; see its output above")
    raise FleetError(f"the workers said nothing for {timeout:.0f} s")


def _merge(
    done: list[dict[str, Any]],
    hosts: int,
    settings: StreamSettings,
    connected: int,
    connect_s: float,
) -> dict[str, Any]:
    latencies = [x for d in done for x in d["latencies"]]
    errors: collections.Counter[str] = collections.Counter()
    for d in done:
        errors.update(d["errors"])
    starts = [d["first_send"] for d in done if d["first_send"]]
    ends = [d["last_ack"] for d in done if d["last_ack"]]
    seconds = max(ends) - min(starts) if starts and ends else 0.0
    taken = sum(d["acked"] for d in done)  # with what was sent again after a loss
    heads: dict[str, tuple[int, str, int]] = {}
    policy: collections.Counter[str] = collections.Counter()
    for d in done:
        heads.update(d["heads"])
        policy.update(d["policy"])
    return {
        "hosts": hosts,
        "connected": connected,
        "connect_s": round(connect_s, 3),
        "events": sum(total for _, _, total in heads.values()),
        "policy_events": sum(total for _, _, total in heads.values()) - hosts * settings.events,
        "acked": sum(seq for seq, _, _ in heads.values()),
        "seconds": round(seconds, 3),
        "events_per_s": round(taken / seconds, 1) if seconds else 0.0,
        "ack_p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "ack_p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "errors": dict(errors),
        "reconnects": sum(d["reconnects"] for d in done),
        "heads": heads,
        "policy": dict(policy),
    }


def verify(store_url: str, heads: dict[str, tuple[int, str, int]]) -> dict[str, Any]:
    """Whether the store holds every host's seq 1..N (the events it made) exactly once,
    its last event the one the host made; the hosts where it does not (at most 20 named)."""
    bad: list[str] = []
    store = open_store(store_url)
    try:
        for host_id, (acked, last_hex, events) in sorted(heads.items()):
            stored = store.hashes(host_id, 1, events)
            head = store.head(host_id)
            if acked != events:
                bad.append(f"{host_id}: acknowledged up to {acked} of {events}")
            elif sorted(stored) != list(range(1, events + 1)):
                bad.append(f"{host_id}: {len(stored)} of seq 1..{events} stored")
            elif head is None or head[0] != events or head[1].hex() != last_hex:
                bad.append(f"{host_id}: stored head {head and head[0]} is not the host's last")
    finally:
        store.close()
    return {"hosts_ok": len(heads) - len(bad), "bad": bad[:20], "exact": not bad}


def _addresses(text: str) -> list[str]:
    """HOST:PORT[,HOST:PORT...]"""
    out = []
    for part in text.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise argparse.ArgumentTypeError(f"{part!r} is not HOST:PORT (e.g. 10.0.0.5:7443)")
        out.append(part.strip())
    return out


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def _not_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The simulator's command line."""
    p = argparse.ArgumentParser(
        prog="python -m bench.fleet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--hosts", type=_positive, default=100, help="simulated hosts (default 100)")
    p.add_argument(
        "--collector",
        type=_addresses,
        action="extend",
        required=True,
        metavar="HOST:PORT[,...]",
        help="the collectors' (or the load balancer's) mTLS agent port; several: a host "
        "starts on one (spread by host) and moves to the next after a fault",
    )
    p.add_argument(
        "--enroll",
        type=_addresses,
        action="extend",
        required=True,
        metavar="HOST:PORT[,...]",
        help="the enrolment port(s); tried in turn when one does not answer",
    )
    p.add_argument("--ca", type=Path, required=True, help="the collector's CA certificate (PEM)")
    p.add_argument(
        "--store",
        required=True,
        help="the collectors' store URL (sqlite:///PATH or postgresql://...): enrolment "
        "tokens are made there, and --verify reads it",
    )
    p.add_argument("--prefix", default="sim-", help="host ids are PREFIX00000, PREFIX00001, ...")
    p.add_argument("--events", type=_positive, default=200, help="events per host (default 200)")
    p.add_argument("--batch", type=_positive, default=50, help="events per batch at most")
    p.add_argument("--window", type=_positive, default=4, help="batches awaiting an Ack at most")
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="events/s each host makes (a busy secret computer: 0.1 to 2); "
        "0 (default): as fast as the collectors acknowledge, to measure capacity",
    )
    p.add_argument("--procs", type=_positive, default=2, help="worker processes (default 2)")
    p.add_argument(
        "--server-name", help="TLS name of the collectors' certificate, if not in the addresses"
    )
    p.add_argument("--deadline", type=float, default=600.0, help="seconds the streaming may take")
    p.add_argument(
        "--policy-versions",
        type=_not_negative,
        default=0,
        metavar="N",
        help="follow the collector's policy stream as the agent does (one watch per host, "
        "on its stream's connection) and report policy_applied for each version; a host "
        "is done once it has applied N versions (default 0: no policy stream)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="afterwards, check in --store that every host's seq 1..N is stored exactly once",
    )
    p.add_argument(
        "--hold",
        action="store_true",
        help='once every host is connected print {"connected": N} and wait for a line on '
        "stdin before sending (to measure the collectors with every host connected)",
    )
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Enrol, stream and (with ``--verify``) check; the result."""
    try:
        ca_pem = args.ca.read_bytes()
    except OSError as e:
        raise FleetError(f"cannot read --ca {args.ca}: {e.strerror}") from e
    names = host_names(args.prefix, args.hosts)
    t = time.monotonic()
    tokens = make_tokens(args.store, names)
    enrolled = asyncio.run(enroll_all(tokens, tuple(args.enroll), ca_pem, args.server_name))
    enroll_s = time.monotonic() - t
    settings = StreamSettings(
        addresses=tuple(args.collector),
        ca_pem=ca_pem,
        events=args.events,
        batch=args.batch,
        window=args.window,
        rate=args.rate,
        server_name=args.server_name,
        deadline_s=args.deadline,
        policy_versions=args.policy_versions,
    )

    def hold(connected: int) -> None:
        print(json.dumps({"connected": connected}), flush=True)
        sys.stdin.readline()

    result = stream_fleet(enrolled, settings, args.procs, hold if args.hold else None)
    result["enroll_s"] = round(enroll_s, 3)
    heads = result.pop("heads")
    if args.verify:
        result["verified"] = verify(args.store, heads)
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 when every event was acknowledged (and verified, if asked)."""
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except FleetError as e:
        print(json.dumps({"error": str(e)}), flush=True)
        return 1
    print(json.dumps(result), flush=True)
    errors = result["errors"]
    ok = result["acked"] == result["events"]
    ok = ok and not errors.get("chain_mismatch") and not errors.get("collector_lost_events")
    ok = ok and not errors.get("policy_versions_missing")
    if "verified" in result:
        ok = ok and result["verified"]["exact"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
