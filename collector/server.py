"""The collector's gRPC servers: mTLS for agents, server-only TLS for enrolment.

Two ports, because a host that has no certificate yet cannot pass a handshake that
requires one. Both serve the same ``baomi.v1.Collector`` service; on the enrolment port
only ``Enroll`` succeeds, since the others need a client certificate to name the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from baomi.v1 import collector_pb2, events_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from collector import checkpoint, cli_audit, pki
from collector.enrollment import (  # noqa: F401 - moved there; still found here
    TOKEN_SECONDS,
    create_token,
)
from collector.errors import CollectorError, EnrollmentError
from collector.health import HealthServer
from collector.ingest import MAX_MESSAGE_BYTES, Ingest, now_us
from collector.offline import IMPORT_ACTION
from collector.policy import PolicyService, read_directory
from collector.register import RegisterService
from collector.rpc import abort
from collector.store import Store

if TYPE_CHECKING:
    from collector.console import Backend, ConsoleConfig, ConsoleServer
    from collector.reports.schedule import ScheduleConfig

_logger = logging.getLogger(__name__)

SERVICE = "baomi.v1.Collector"
HEALTH_FOLLOW_SECONDS = 0.2  # how soon health follows the store going away or coming back


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Where the collector listens and what it serves."""

    listen: str = "127.0.0.1:7443"  # mTLS, agents
    enroll_listen: str = "127.0.0.1:7444"  # TLS, enrolment only
    pki_dir: Path
    policies_dir: Path | None = None
    checkpoint_seconds: float = 10.0
    witness: Path | None = None  # every signed checkpoint is also appended here
    console: ConsoleConfig | None = None  # the web console; None: not served
    reports: ScheduleConfig | None = None  # scheduled inspection reports; None: none made
    # Plain-HTTP ``GET /health`` for load balancers, on the host of ``listen``; None: none.
    health_port: int | None = None


def peer_identity(context: grpc.aio.ServicerContext) -> tuple[str, bytes] | None:
    """The host id and certificate fingerprint from the verified peer certificate."""
    auth = context.auth_context()
    names = auth.get("x509_common_name") or []
    pems = auth.get("x509_pem_cert") or []
    if len(names) != 1 or len(pems) != 1:
        return None
    return names[0].decode(), pki.fingerprint(pems[0])


class CollectorService:
    """Handlers of the ``baomi.v1.Collector`` RPCs."""

    def __init__(
        self,
        store: Store,
        authority: pki.Authority,
        ingest: Ingest,
        policy: PolicyService,
        register: RegisterService | None = None,
    ) -> None:
        self._store = store
        self._authority = authority
        self._ingest = ingest
        self._policy = policy
        self._register = register

    async def enroll(
        self, request: collector_pb2.EnrollRequest, context: grpc.aio.ServicerContext
    ) -> collector_pb2.EnrollResponse:
        """Trade a single-use token and a CSR for a host certificate.

        The token is used up only by an enrolment that succeeds (a CSR refused leaves
        it usable); the certificate issued retires the host's earlier ones.
        """
        token_hash = hashlib.sha256(request.token.encode()).digest()
        host_id = await asyncio.to_thread(self._store.token_host, token_hash, now_us())
        if host_id is None:
            await self._ingest.alerts.alert(
                "enrollment_refused",
                "an unknown, used or expired enrolment token was presented",
                severity=events_pb2.SEVERITY_MEDIUM,
            )
            await abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "the enrolment token is unknown, already used or expired; "
                "ask for a new one with 'baomi-collector token create --host HOST'",
            )
        try:
            cert = self._authority.issue_host_certificate(request.csr_pem, host_id)
        except EnrollmentError as e:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if await asyncio.to_thread(self._store.use_token, token_hash, now_us()) != host_id:
            await abort(  # another enrolment used it meanwhile
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "the enrolment token was used meanwhile; ask for a new one",
            )
        await asyncio.to_thread(self._store.add_host, host_id, pki.fingerprint(cert), now_us())
        head = await asyncio.to_thread(self._store.head, host_id)
        seq, last = head or (0, b"\0" * 32)
        _logger.info("enrolled host %s", host_id)
        return collector_pb2.EnrollResponse(
            host_id=host_id,
            certificate_pem=cert,
            ca_pem=self._authority.ca_pem,
            signing_key_pem=self._authority.signing_public_pem,
            head=collector_pb2.ChainHead(seq=seq, hash=last),
        )

    async def _host(self, context: grpc.aio.ServicerContext) -> str:
        identity = peer_identity(context)
        if identity is None:
            await abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                "a client certificate is required; enrol with 'baomi-agent enroll'",
            )
        host_id, fp = identity
        try:
            known = await asyncio.to_thread(self._store.host_certificates, host_id)
        except Exception as e:  # noqa: BLE001 - whatever the store raises; logged, not shown
            _logger.error("host %s: certificates not read: %r", host_id, e)
            await abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "the collector cannot reach its database; keep the events and retry",
            )
        if fp not in known:
            await abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"certificate for {host_id!r} was not issued by enrolment here",
            )
        return host_id

    async def stream(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[events_pb2.Ack]:
        """Authenticate the host, then hand its batches to ingest."""
        host_id = await self._host(context)
        async for ack in self._ingest.stream(host_id, requests, context):
            yield ack

    async def watch_policy(
        self, request: collector_pb2.WatchPolicyRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[collector_pb2.PolicyBundle]:
        """Send the current bundle whenever it differs from what the agent enforces."""
        await self._host(context)
        version = request.current_version
        while True:
            bundle = await self._policy.next_after(version)
            version = bundle.version
            yield bundle

    async def watch_orders(
        self, request: collector_pb2.WatchOrdersRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[collector_pb2.LabelOrder]:
        """Send the calling host the label orders approved for it (issue 15)."""
        host_id = await self._host(context)
        if self._register is None:
            await abort(context, grpc.StatusCode.UNIMPLEMENTED, "this collector keeps no register")
        async for order in self._register.watch_orders(host_id):
            yield order

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's method table. Stream takes raw bytes so that a batch that
        does not parse is answered with a rejection rather than ending the stream."""
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Enroll": grpc.unary_unary_rpc_method_handler(
                    self.enroll,
                    request_deserializer=collector_pb2.EnrollRequest.FromString,
                    response_serializer=collector_pb2.EnrollResponse.SerializeToString,
                ),
                "Stream": grpc.stream_stream_rpc_method_handler(
                    self.stream,
                    request_deserializer=None,
                    response_serializer=events_pb2.Ack.SerializeToString,
                ),
                "WatchPolicy": grpc.unary_stream_rpc_method_handler(
                    self.watch_policy,
                    request_deserializer=collector_pb2.WatchPolicyRequest.FromString,
                    response_serializer=collector_pb2.PolicyBundle.SerializeToString,
                ),
                "WatchOrders": grpc.unary_stream_rpc_method_handler(
                    self.watch_orders,
                    request_deserializer=collector_pb2.WatchOrdersRequest.FromString,
                    response_serializer=collector_pb2.LabelOrder.SerializeToString,
                ),
            },
        )


def _server_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]


def _check_witness(path: Path) -> None:
    """Refuse to start with a witness file that cannot be appended to."""
    try:
        fd = checkpoint.open_witness(path)
    except OSError as e:
        raise CollectorError(
            f"cannot append to the witness file {path}: {e.strerror}; give --witness a "
            "file in a directory the collector may write (ideally on other storage)"
        ) from e
    os.close(fd)


class Collector:
    """A running collector: servers, ingest and policy over one store."""

    def __init__(self, store: Store, config: ServerConfig) -> None:
        self.store = store
        self.config = config
        self.authority = pki.load_authority(config.pki_dir)
        if config.witness is not None:
            _check_witness(config.witness)
        self.ingest = Ingest(
            store,
            self.authority.signing_key,
            checkpoint_seconds=config.checkpoint_seconds,
            witness=config.witness,
        )
        self.policy = PolicyService(self.authority.signing_key)
        self._load_policy()
        self.register = RegisterService(store, self.ingest.alerts, self.authority.signing_key)
        self.service = CollectorService(
            store, self.authority, self.ingest, self.policy, self.register
        )
        self.console: ConsoleServer | None = None
        self._servers: list[grpc.aio.Server] = []
        self._checkpoints: asyncio.Task[None] | None = None
        self._reports: asyncio.Task[None] | None = None
        self._cli_audit: asyncio.Task[None] | None = None
        self._register_task: asyncio.Task[None] | None = None
        self._leases: asyncio.Task[None] | None = None
        self._policy_follow: asyncio.Task[None] | None = None
        self._grpc_health: list[health.aio.HealthServicer] = []
        self._health_follow: asyncio.Task[None] | None = None
        self.ports: dict[str, int] = {}
        self.serving = False  # True from start until stop begins: what health reports
        self._health: HealthServer | None = None

    async def start(self) -> None:
        """Bind both ports and start serving."""
        # Before any stream: what was there at start (imports run while it was down too).
        pending = await asyncio.to_thread(self.store.pending_actions)
        await self.ingest.note_uncovered(
            frozenset(a.target for a in pending if a.action == IMPORT_ACTION and a.ok)
        )
        d = self.config.pki_dir
        key, cert, ca = (
            (d / "server.key").read_bytes(),
            (d / "server.pem").read_bytes(),
            (d / "ca.pem").read_bytes(),
        )
        for name, address, require in (
            ("agents", self.config.listen, True),
            ("enroll", self.config.enroll_listen, False),
        ):
            server = grpc.aio.server(options=_server_options())
            server.add_generic_rpc_handlers((self.service.handler(),))
            health_servicer = health.aio.HealthServicer()
            await health_servicer.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
            await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
            self._grpc_health.append(health_servicer)
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
            reflection.enable_server_reflection(
                (SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
            )
            creds = grpc.ssl_server_credentials(
                [(key, cert)],
                root_certificates=ca if require else None,
                require_client_auth=require,
            )
            self.ports[name] = server.add_secure_port(address, creds)
            await server.start()
            self._servers.append(server)
        self.serving = True
        if self.config.health_port is not None:
            self._health = HealthServer(self.store, lambda: self.serving)
            host = self.config.listen.rpartition(":")[0].strip("[]")
            self.ports["health"] = await self._health.start(host, self.config.health_port)
        self._checkpoints = asyncio.create_task(self.ingest.run_checkpoints())
        self._leases = asyncio.create_task(self.ingest.watch_leases())
        self._policy_follow = asyncio.create_task(self.policy.follow_store(self.store))
        self._health_follow = asyncio.create_task(self._follow_store_health())
        self._cli_audit = asyncio.create_task(
            cli_audit.run_forever(self.store, self.ingest.alerts, self.ingest.lead)
        )
        self._register_task = asyncio.create_task(self.register.run())
        _logger.info(
            "collector serving agents on port %d, enrolment on port %d",
            self.ports["agents"],
            self.ports["enroll"],
        )
        if self.config.console is not None:
            from collector.console import ConsoleServer  # noqa: PLC0415 - web stack on use

            self.console = ConsoleServer(self.console_backend(), self.config.console)
            self.ports["console"] = await self.console.start()
        if self.config.reports is not None:
            from collector.reports.schedule import run_scheduler  # noqa: PLC0415 - on use

            self._reports = asyncio.create_task(
                run_scheduler(self.store, self.config.reports, leads=self.ingest.lead)
            )

    async def _follow_store_health(self) -> None:
        """NOT_SERVING on both ports while the store does not answer, so a load balancer
        sends agents elsewhere; SERVING again when it does."""
        serving = True
        while True:
            await asyncio.sleep(HEALTH_FOLLOW_SECONDS)
            if self.ingest.store_up == serving:
                continue
            serving = self.ingest.store_up
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for servicer in self._grpc_health:
                await servicer.set(SERVICE, status)
                await servicer.set("", status)

    def console_backend(self) -> Backend:
        """The parts of this collector its web console uses."""
        from collector.console import Backend  # noqa: PLC0415 - web stack on use

        return Backend(
            store=self.store,
            ingest=self.ingest,
            policy=self.policy,
            verify_key=self.config.pki_dir / "signing.pub",
            witness=self.config.witness,
            policies_dir=self.config.policies_dir,
            register=self.register,
        )

    def _load_policy(self) -> None:
        """The newest stored policy version, else the policy directory (stored as the first
        version, so that the console's history starts with what agents got)."""
        latest = self.store.policy_version()
        directory = self.config.policies_dir
        if latest is not None:
            self.policy.load_files(latest.files, latest.author)
            self.policy.stored_number = latest.number
            if directory is not None and read_directory(directory) != latest.files:
                _logger.warning(
                    "policy version %d from the store is in force; %s differs and is not "
                    "used (a policy directory seeds an empty store only; edit the policy "
                    "in the console)",
                    latest.number,
                    directory,
                )
            return
        if directory is not None:
            bundle = self.policy.load_directory(directory)
            self.policy.stored_number = self.store.add_policy_version(
                bundle.version, "collector", now_us(), f"from {directory}", dict(bundle.files)
            )

    async def stop(self, grace: float = 2.0) -> None:
        """Stop taking RPCs, commit what is queued and sign a final checkpoint."""
        self.serving = False  # the load balancer sends no one new meanwhile
        if self.console is not None:
            await self.console.stop()
        await asyncio.gather(*(s.stop(grace) for s in self._servers))
        for task in (
            self._checkpoints,
            self._reports,
            self._cli_audit,
            self._register_task,
            self._leases,
            self._policy_follow,
            self._health_follow,
        ):
            if task is not None:
                task.cancel()
        with contextlib.suppress(Exception):  # a last look: what the CLI did lately
            if await self.ingest.lead():
                await cli_audit.record_cli_work(self.store, self.ingest.alerts)
        await self.ingest.close()
        if self._health is not None:
            await self._health.stop()


async def serve(store: Store, config: ServerConfig) -> None:
    """Run a collector until SIGINT or SIGTERM."""
    collector = Collector(store, config)
    await collector.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    _logger.info("stopping")
    await collector.stop()
