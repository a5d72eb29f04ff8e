"""An in-process collector on loopback, run on its own event loop in a thread.

Tests talk to it with ordinary (synchronous) gRPC clients, exactly as agents do.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import psycopg
from baomi import chain
from baomi.v1 import collector_pb2, events_pb2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from collector import pki
from collector.server import Collector, ServerConfig, create_token
from collector.store import Store

T = TypeVar("T")


class RunningCollector:
    """A started ``Collector`` and the loop that runs it."""

    def __init__(self, store: Store, pki_dir: Path, **config: Any) -> None:
        self.store = store
        self.pki_dir = pki_dir
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        cfg = ServerConfig(
            listen="127.0.0.1:0", enroll_listen="127.0.0.1:0", pki_dir=pki_dir, **config
        )

        async def start() -> Collector:
            c = Collector(store, cfg)
            await c.start()
            return c

        self.collector = self.call(start)
        self.address = f"127.0.0.1:{self.collector.ports['agents']}"
        self.enroll_address = f"127.0.0.1:{self.collector.ports['enroll']}"

    def call(self, make: Callable[[], Any]) -> Any:
        """Run a coroutine made by ``make`` on the collector's loop and wait for it."""
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(make(), self._loop)
        return fut.result(timeout=30)

    def checkpoint(self) -> None:
        """Sign a checkpoint now."""
        self.call(self.collector.ingest.checkpoint_once)

    def stop(self) -> None:
        """Stop servers, flush, sign the last checkpoint, end the loop."""
        self.call(self.collector.stop)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@dataclass
class Host:
    """An enrolled test host: its key, certificate and chain position."""

    host_id: str
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes
    seq: int = 0
    head: bytes = chain.GENESIS

    def channel(self, address: str) -> grpc.Channel:
        """An mTLS channel as this host."""
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem,
            private_key=self.key_pem,
            certificate_chain=self.cert_pem,
        )
        return grpc.secure_channel(address, creds)

    def events(self, n: int, **kind: Any) -> list[events_pb2.Event]:
        """``n`` correctly chained events of this host (file_access unless told)."""
        out = []
        for i in range(n):
            self.seq += 1
            ev = events_pb2.Event(
                host_id=self.host_id,
                seq=self.seq,
                prev_hash=self.head,
                severity=events_pb2.SEVERITY_INFO,
                **(
                    kind
                    or {
                        "file_access": events_pb2.FileAccess(
                            path=f"/srv/secret/{self.seq}-{i}.docx",
                            action="read",
                            uid=1000,
                            decision=events_pb2.DECISION_ALLOW,
                        )
                    }
                ),
            )
            ev.time.FromNanoseconds(time.time_ns())
            self.head = chain.event_hash(ev)
            out.append(ev)
        return out


def new_csr() -> tuple[bytes, bytes]:
    """A fresh EC key and a CSR for it, both PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def enroll_call(
    address: str, ca_pem: bytes, token: str, csr_pem: bytes
) -> collector_pb2.EnrollResponse:
    """Call Enroll over server-authenticated TLS."""
    with grpc.secure_channel(address, grpc.ssl_channel_credentials(ca_pem)) as ch:
        rpc = ch.unary_unary(
            "/baomi.v1.Collector/Enroll",
            request_serializer=collector_pb2.EnrollRequest.SerializeToString,
            response_deserializer=collector_pb2.EnrollResponse.FromString,
        )
        response: collector_pb2.EnrollResponse = rpc(
            collector_pb2.EnrollRequest(token=token, csr_pem=csr_pem), timeout=10
        )
        return response


def enroll_host(running: RunningCollector, host_id: str) -> Host:
    """Enrol ``host_id`` through the real Enroll RPC."""
    token = create_token(running.store, host_id)
    ca_pem = (running.pki_dir / "ca.pem").read_bytes()
    key_pem, csr_pem = new_csr()
    resp = enroll_call(running.enroll_address, ca_pem, token, csr_pem)
    return Host(host_id, key_pem, resp.certificate_pem, ca_pem)


def stream_rpc(channel: grpc.Channel) -> Callable[..., Any]:
    """The Stream method, taking raw batch bytes."""
    return channel.stream_stream(
        "/baomi.v1.Collector/Stream",
        request_serializer=None,
        response_deserializer=events_pb2.Ack.FromString,
    )


def send_batches(host: Host, address: str, batches: list[bytes]) -> list[events_pb2.Ack]:
    """Open one stream, send ``batches`` one at a time, return every Ack received."""
    import queue

    outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

    def requests() -> Any:
        while (item := outbox.get()) is not None:
            yield item

    with host.channel(address) as ch:
        call = stream_rpc(ch)(requests(), timeout=30)
        acks = [next(call)]  # the head, sent before any batch
        for b in batches:
            outbox.put(b)
            acks.append(next(call))
        outbox.put(None)
        acks.extend(call)
        return acks


def batch(events: list[events_pb2.Event]) -> bytes:
    """Serialized EventBatch."""
    return events_pb2.EventBatch(events=events).SerializeToString()


class Stream:
    """One open Stream call as ``host``, fed batch by batch from the test thread; its
    Acks (or the status that ended it) are collected by a thread of its own."""

    def __init__(self, host: Host, address: str, settle: float = 10.0) -> None:
        self._settle = settle  # seconds next() and close() wait at most
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.acks: queue.SimpleQueue[events_pb2.Ack | grpc.RpcError | None] = queue.SimpleQueue()
        self._channel = host.channel(address)
        self._call = stream_rpc(self._channel)(self._requests(), timeout=60)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _requests(self) -> Iterator[bytes]:
        while (item := self._outbox.get()) is not None:
            yield item

    def _read(self) -> None:
        try:
            for ack in self._call:
                self.acks.put(ack)
        except grpc.RpcError as e:
            self.acks.put(e)
        self.acks.put(None)

    def send(self, *events: Sequence[events_pb2.Event]) -> None:
        for group in events:
            self._outbox.put(batch(list(group)))

    def next(self, timeout: float | None = None) -> events_pb2.Ack | grpc.RpcError | None:
        return self.acks.get(timeout=self._settle if timeout is None else timeout)

    def close(self) -> list[events_pb2.Ack | grpc.RpcError]:
        """End the stream; the Acks and errors not yet taken."""
        self._outbox.put(None)
        self._thread.join(self._settle)
        self._channel.close()
        rest = []
        while not self.acks.empty():
            item = self.acks.get()
            if item is not None:
                rest.append(item)
        return rest


def init_pki(directory: Path) -> pki.Authority:
    """A fresh CA for a test."""
    return pki.init_authority(directory, ["localhost", "127.0.0.1"])


def raw_sql(url: str, sql: str, *params: Any) -> None:
    """Run one statement as the attacker, append-only triggers disabled."""
    if url.startswith("sqlite:///"):
        db = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            db.execute("DROP TRIGGER IF EXISTS events_no_update")
            db.execute("DROP TRIGGER IF EXISTS events_no_delete")
            db.execute(sql, params)
        finally:
            db.close()
    else:
        with psycopg.connect(url, autocommit=True) as db:
            db.execute("ALTER TABLE events DISABLE TRIGGER USER")
            db.execute(sql.replace("?", "%s"), params)
