"""The agent's identity: enrolment with a single-use token, and the files it keeps.

State directory (keys 0600):
    host.key, host.pem   this host's TLS identity, issued by the collector's CA
    ca.pem               the collector's CA; the only one the agent trusts
    signing.pub          the collector's key for policy bundles
    agent.json           host id and collector addresses (the first is tried first)
    spool.db             the durable spool
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from baomi.v1 import collector_pb2

from agent.errors import ConfigError, EnrollError
from agent.spool import Spool

ENROLL_TIMEOUT = 30.0  # seconds


@dataclass(frozen=True)
class Identity:
    """What the agent needs to reach the collector as itself."""

    host_id: str
    collector: str  # host:port of the mTLS port tried first
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes
    signing_pub_pem: bytes
    # Every collector (or load balancer) address, ``collector`` first: the agent moves to
    # the next one when a stream fails. Empty: ``collector`` alone.
    collectors: tuple[str, ...] = field(default=())

    @property
    def addresses(self) -> tuple[str, ...]:
        """The collector addresses in the order they are tried."""
        return self.collectors or (self.collector,)

    def credentials(self) -> grpc.ChannelCredentials:
        """mTLS credentials: this host's certificate, trusting only the collector's CA."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem,
            private_key=self.key_pem,
            certificate_chain=self.cert_pem,
        )


def write_whole(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` whole and durably, or not at all: a crash or a pulled stick
    leaves the old file or none, never a cut key or certificate."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.chmod(mode)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def default_enroll_address(collector: str) -> str:
    """The collector serves enrolment on the port after the agents' port."""
    host, _, port = collector.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"collector address {collector!r} must be HOST:PORT")
    return f"{host}:{int(port) + 1}"


def check_addresses(addresses: Sequence[str], what: str) -> tuple[str, ...]:
    """``addresses`` without repeats, each HOST:PORT; ConfigError naming the bad one."""
    if not addresses:
        raise ConfigError(f"give at least one {what} address, HOST:PORT")
    for a in addresses:
        host, _, port = a.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{what} address {a!r} must be HOST:PORT, e.g. 10.0.0.5:7443")
    return tuple(dict.fromkeys(addresses))


def enroll(
    state_dir: Path,
    collector: str | Sequence[str],
    token: str,
    ca_pem: bytes,
    enroll_address: str | Sequence[str] | None = None,
) -> Identity:
    """Send a CSR with ``token`` to the first enrolment address that answers (default:
    each collector's port + 1); store the certificate, key, every collector address and
    a fresh spool."""
    collectors = check_addresses(
        [collector] if isinstance(collector, str) else collector, "collector"
    )
    if enroll_address is None or not enroll_address:
        enroll_addresses = tuple(default_enroll_address(c) for c in collectors)
    else:
        given = [enroll_address] if isinstance(enroll_address, str) else enroll_address
        enroll_addresses = check_addresses(given, "enrolment")
    # Here, not at the top: ``run`` never makes a CSR, and cryptography's X.509 layer
    # would be some 8 MB of the idle agent's memory.
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "baomi-agent")]))
        .sign(key, hashes.SHA256())
    )
    request = collector_pb2.EnrollRequest(
        token=token, csr_pem=csr.public_bytes(serialization.Encoding.PEM)
    )
    response = _enroll_at_first_answering(enroll_addresses, request, ca_pem)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_whole(
        state_dir / "host.key",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    write_whole(state_dir / "host.pem", response.certificate_pem, 0o644)
    write_whole(state_dir / "ca.pem", response.ca_pem, 0o644)
    write_whole(state_dir / "signing.pub", response.signing_key_pem, 0o644)
    write_whole(
        state_dir / "agent.json",
        json.dumps(
            {"host_id": response.host_id, "collector": collectors[0], "collectors": collectors}
        ).encode(),
        0o644,
    )
    spool = state_dir / "spool.db"
    if not spool.exists():
        Spool.create(spool, response.host_id, response.head.seq, response.head.hash).close()
    return load_identity(state_dir)


def _enroll_at_first_answering(
    addresses: tuple[str, ...], request: collector_pb2.EnrollRequest, ca_pem: bytes
) -> collector_pb2.EnrollResponse:
    """The first answer to ``request``; an address that is down passes it to the next,
    a refusal (bad token, bad CSR) or a timeout ends it."""
    down = []
    for address in addresses:
        channel = grpc.secure_channel(
            address, grpc.ssl_channel_credentials(root_certificates=ca_pem)
        )
        try:
            call = channel.unary_unary(
                "/baomi.v1.Collector/Enroll",
                request_serializer=collector_pb2.EnrollRequest.SerializeToString,
                response_deserializer=collector_pb2.EnrollResponse.FromString,
            )
            response: collector_pb2.EnrollResponse = call(request, timeout=ENROLL_TIMEOUT)
        except grpc.RpcError as e:
            # Only a collector that is down passes it on: one that timed out may have
            # used the token already, and the next would refuse it as used.
            if e.code() != grpc.StatusCode.UNAVAILABLE:
                raise EnrollError(f"enrolment at {address} failed: {e.details()}") from e
            down.append(f"{address}: {e.details()}")
        else:
            return response
        finally:
            channel.close()
    raise EnrollError(
        "no enrolment address answered (" + "; ".join(down) + "); check that a collector "
        "runs there, or give --enroll-address"
    )


def load_identity(state_dir: Path) -> Identity:
    """Load what ``enroll`` stored."""
    try:
        info = json.loads((state_dir / "agent.json").read_text())
        return Identity(
            host_id=info["host_id"],
            collector=info["collector"],
            collectors=tuple(info.get("collectors") or [info["collector"]]),
            key_pem=(state_dir / "host.key").read_bytes(),
            cert_pem=(state_dir / "host.pem").read_bytes(),
            ca_pem=(state_dir / "ca.pem").read_bytes(),
            signing_pub_pem=(state_dir / "signing.pub").read_bytes(),
        )
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(
            f"this host is not enrolled ({e}); run 'baomi-agent --state-dir {state_dir} "
            "enroll --collector HOST:PORT --token TOKEN --ca CA.pem'"
        ) from e
