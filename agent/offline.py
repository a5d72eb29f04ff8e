"""An offline secret computer (涉密单机): no collector, no network; files on a stick.

The host records into the same spool, journal and hash chain as a connected agent;
nothing leaves the spool until the collector has stored it. What travels, always on a
registered stick and always as a file:

1. ``baomi-collector enroll-file token`` -> token file (host id, single-use token, the
   collector's CA and signing key, where the collector's copy of the chain stands);
2. ``baomi-agent enroll --token-file F --csr-out R`` -> request file (the token and a
   CSR of this host's key; the key itself never leaves the host);
3. ``baomi-collector enroll-file sign R --out C`` -> certificate file;
4. ``baomi-agent enroll --cert-file C`` installs it; from then on
5. ``baomi-agent export --out E`` -> a signed export (``baomi.exportfile``) that
   ``baomi-collector import E`` stores once; ``export --forget-through SEQ`` then lets
   the spool drop what the import said it stored.

A host may record before it is enrolled (``run --offline``): its key is made on first
need and the later CSR carries the same key, so exports made then verify too.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import socket
from dataclasses import dataclass
from pathlib import Path

from baomi import chain
from baomi.exportfile import ExportFile
from baomi.v1 import events_pb2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.errors import AgentError, SpoolError
from agent.identity import write_whole
from agent.spool import Spool

TOKEN_FORMAT = "baomi-enroll-token/1"  # noqa: S105 - a format name, not a secret
REQUEST_FORMAT = "baomi-enroll-request/1"
HOST_KEY = "host.key"
HOST_CERT = "host.pem"
SPOOL = "spool.db"
INFO = "agent.json"


class OfflineError(AgentError):
    """An offline step that cannot be done; the message says how to fix it."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise OfflineError(f"cannot read the {what} {path}: {e.strerror}") from e


def host_id_of(state_dir: Path) -> str | None:
    """The host id this state directory records under, if it has one yet."""
    try:
        info = json.loads((state_dir / INFO).read_text())
        return str(info["host_id"])
    except (OSError, ValueError, KeyError):
        pass
    if (state_dir / SPOOL).exists():
        spool = Spool(state_dir / SPOOL)
        try:
            return spool.host_id
        finally:
            spool.close()
    return None


def default_host_id() -> str:
    """This machine's name, as a host id (lowercase, first label)."""
    return socket.gethostname().split(".")[0].lower()


def prepare(state_dir: Path, host_id: str | None = None) -> str:
    """Make what an offline host records with (state directory, spool, host key) when
    missing; its host id. A host id given must be the one it records under already."""
    have = host_id_of(state_dir)
    if have is not None and host_id is not None and host_id != have:
        raise OfflineError(
            f"this host records as {have!r} (in {state_dir}); it cannot become {host_id!r}"
        )
    host_id = have or host_id or default_host_id()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not (state_dir / SPOOL).exists():
        Spool.create(state_dir / SPOOL, host_id, 0, chain.GENESIS).close()
    host_key(state_dir)
    return host_id


def host_key(state_dir: Path) -> ec.EllipticCurvePrivateKey:
    """This host's key, made (0600) the first time it is needed."""
    path = state_dir / HOST_KEY
    if not path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_whole(path, pem, 0o600)
    loaded = serialization.load_pem_private_key(_read(path, "host key"), None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise OfflineError(f"{path} is not an EC key; move it aside to make a new one")
    return loaded


# -- enrolment by file ------------------------------------------------------------


def request_from_token(state_dir: Path, token_file: Path, out: Path) -> str:
    """Read the collector's token file; write a request file (token and CSR) to
    ``out``, keep the collector's CA and signing key; the host id."""
    try:
        doc = json.loads(_read(token_file, "token file"))
        if doc.get("format") != TOKEN_FORMAT:
            raise ValueError(f"format is not {TOKEN_FORMAT!r}")  # noqa: TRY301 - one message
        host_id, token = str(doc["host_id"]), str(doc["token"])
        ca_pem, signing_pem = str(doc["ca_pem"]).encode(), str(doc["signing_key_pem"]).encode()
        head_seq, head_hash = int(doc["head_seq"]), bytes.fromhex(doc["head_hash"])
        x509.load_pem_x509_certificate(ca_pem)
    except (ValueError, KeyError, TypeError) as e:
        raise OfflineError(
            f"{token_file} is not a token file of 'baomi-collector enroll-file token' ({e})"
        ) from e
    have = host_id_of(state_dir)
    if have is not None and have != host_id:
        raise OfflineError(
            f"the token is for host {host_id!r}, but this host records as {have!r}: ask "
            f"for a token with 'baomi-collector enroll-file token --host {have} --out FILE'"
        )
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not (state_dir / SPOOL).exists():  # continue where the collector's copy stands
        Spool.create(state_dir / SPOOL, host_id, head_seq, head_hash).close()
    key = host_key(state_dir)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host_id)]))
        .sign(key, hashes.SHA256())
    )
    request = {
        "format": REQUEST_FORMAT,
        "host_id": host_id,
        "token": token,
        "csr_pem": csr.public_bytes(serialization.Encoding.PEM).decode(),
    }
    write_whole(state_dir / "ca.pem", ca_pem, 0o644)
    write_whole(state_dir / "signing.pub", signing_pem, 0o644)
    write_whole(state_dir / INFO, json.dumps({"host_id": host_id, "collector": ""}).encode(), 0o644)
    write_whole(out, json.dumps(request, indent=1).encode() + b"\n", 0o644)
    return host_id


def install_certificate(state_dir: Path, cert_file: Path) -> str:
    """Check the certificate file the collector signed and keep it as this host's;
    the host id it names."""
    pem = _read(cert_file, "certificate file")
    try:
        cert = x509.load_pem_x509_certificate(pem)
        ca = x509.load_pem_x509_certificate(_read(state_dir / "ca.pem", "collector CA"))
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as e:
        raise OfflineError(
            f"{cert_file} is not a certificate the collector of the token file issued ({e})"
        ) from e
    mine = (
        host_key(state_dir)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    theirs = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if mine != theirs:
        raise OfflineError(
            f"{cert_file} certifies another key than this host's: it answers a request "
            "made elsewhere (or before the key was replaced); make a new request"
        )
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    host_id = str(names[0].value) if names else ""
    if host_id != host_id_of(state_dir):
        raise OfflineError(f"{cert_file} names host {host_id!r}, not this host")
    write_whole(state_dir / HOST_CERT, pem, 0o644)
    return host_id


# -- export ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Exported:
    """What one export wrote."""

    host_id: str
    first_seq: int
    last_seq: int
    path: Path


def _cli_action(action: str, target: str, detail: str, *, ok: bool = True) -> events_pb2.Event:
    """An event of this host's record saying what the command line did here."""
    return events_pb2.Event(
        severity=events_pb2.SEVERITY_INFO if ok else events_pb2.SEVERITY_MEDIUM,
        console_action=events_pb2.ConsoleAction(
            actor=f"cli:{getpass.getuser()}",
            action=action,
            target=target[:500],
            detail=detail[:2000],
            ok=ok,
            client="cli",
        ),
    )


def export(state_dir: Path, out: Path, *, again: bool = False) -> Exported:
    """Write the events not exported yet (``again``: every event the collector has not
    been said to store) to ``out``, signed; the export is recorded first, as the
    last event it carries."""
    cert = state_dir / HOST_CERT
    if not cert.exists():
        raise OfflineError(
            "this host has no certificate yet, so the collector could not tell its export "
            "from a forged one: enrol it by file first ('baomi-agent enroll --token-file' "
            "and '--cert-file'); nothing recorded meanwhile is lost"
        )
    certificate = _read(cert, "host certificate").decode()
    key = host_key(state_dir)
    spool = Spool(state_dir / SPOOL)
    try:
        start = spool.acked[0] if again else spool.exported
        head = spool.head[0]
        (event,) = spool.append(
            [_cli_action("export", str(out), f"seq {start + 1}..{head + 1} (this event included)")]
        )
        rows = spool.read_range(start, event.seq)
        if not rows or rows[0][0] != start + 1:
            raise OfflineError(f"the spool no longer holds seq {start + 1}; nothing was written")
        first = events_pb2.Event.FromString(rows[0][1])
        bodies = [body for _, body in rows]
        document = ExportFile(
            host_id=spool.host_id,
            first_seq=start + 1,
            last_seq=event.seq,
            prev_hash=first.prev_hash,
            head_hash=chain.bytes_hash(bodies[-1]),
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            certificate=certificate,
            bodies=bodies,
        ).signed(key)
        try:
            write_whole(out, document.dumps(), 0o644)
        except OSError as e:
            spool.append([_cli_action("export", str(out), f"not written: {e.strerror}", ok=False)])
            raise OfflineError(f"cannot write the export {out}: {e.strerror}") from e
        spool.set_exported(event.seq)
        return Exported(spool.host_id, start + 1, event.seq, out)
    finally:
        spool.close()


def forget_through(state_dir: Path, seq: int) -> int:
    """Let the spool drop the exported events up to ``seq``, which an import at the
    collector said it stored (recorded as an event); how many were forgotten."""
    spool = Spool(state_dir / SPOOL)
    try:
        try:
            forgotten = spool.forget_through(seq)
        except SpoolError as e:
            raise OfflineError(str(e)) from e
        done = f"{forgotten} events confirmed imported"
        spool.append([_cli_action("forget", f"seq {seq}", done)])
        return forgotten
    finally:
        spool.close()
