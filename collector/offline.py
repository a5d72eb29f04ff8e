"""Offline hosts (涉密单机): enrolment by file, and the import of their exports.

A host that is never networked (:mod:`agent.offline`) exchanges files with the
collector on a registered stick: a token file out (``token_file``), a request file in
and a certificate file out (``sign_request``), then signed exports in (``import_file``).

An import passes the same checks as a streamed batch (``ingest.HostChain.check``: seq,
prev_hash, values; the replay check against what is stored) and more: the export's own
chain must be unbroken and signed by the key the collector certified for that host, and
it must continue the stored chain. Anything else is refused whole, naming the seq;
nothing of a refused file is stored. Events already stored are checked and skipped, so
importing a file twice, or overlapping exports, stores each event once.

The command line cannot append to the running collector's own chain (two writers would
fork it), so every import and signing is queued (``Store.queue_action``) and recorded by
the collector (:mod:`collector.cli_audit`), which then also signs the imported events
into its next checkpoint.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from baomi import chain, exportfile
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from collector import pki
from collector.enrollment import create_token
from collector.errors import CollectorError, EnrollmentError
from collector.ingest import MAX_BATCH_EVENTS, ForeignHost, HostChain, Rejected, now_us
from collector.store.base import EventRow, PendingAction, Store

TOKEN_FORMAT = "baomi-enroll-token/1"  # noqa: S105 - a format name, not a secret
REQUEST_FORMAT = "baomi-enroll-request/1"
IMPORT_ACTION = "import"  # the action recorded for an import; cli_audit follows its host
ENROLL_ACTION = "enroll_file"


class RefusedError(CollectorError):
    """An export (or request) the collector will not take; nothing of it was stored."""


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def _record(store: Store, action: str, target: str, detail: str, *, ok: bool = True) -> None:
    store.queue_action(PendingAction(0, now_us(), _actor(), action, target, detail, ok=ok))


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _read(path: Path, what: str, limit: int = 64 * 1024) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise CollectorError(f"{path} holds {size} bytes; a {what} has at most {limit}")
        return path.read_bytes()
    except OSError as e:
        raise CollectorError(f"cannot read the {what} {path}: {e.strerror}") from e


# -- enrolment by file ------------------------------------------------------------


def token_file(store: Store, pki_dir: Path, host_id: str, out: Path, seconds: int) -> None:
    """Write a token file for ``host_id``: a single-use token (only its hash stored)
    expiring in ``seconds``, this collector's CA and signing key, and where its copy of
    the host's chain stands (a new host starts at 0)."""
    authority = pki.load_authority(pki_dir)
    token = create_token(store, host_id, seconds)
    seq, head = store.head(host_id) or (0, chain.GENESIS)
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
    doc = {
        "format": TOKEN_FORMAT,
        "host_id": host_id,
        "token": token,
        "expires": expires.isoformat(timespec="seconds"),
        "ca_pem": authority.ca_pem.decode(),
        "signing_key_pem": authority.signing_public_pem.decode(),
        "head_seq": seq,
        "head_hash": head.hex(),
    }
    _write(out, json.dumps(doc, indent=1).encode() + b"\n", 0o600)
    _record(store, ENROLL_ACTION, host_id, f"token file made, valid {seconds} s")


def sign_request(store: Store, pki_dir: Path, request: Path, out: Path) -> str:
    """Use up the request's token and write the host's certificate to ``out``; the host
    id. Refused (RefusedError, recorded) when the token is unknown, used or expired,
    or names another host than the request."""
    try:
        doc = json.loads(_read(request, "request file"))
        if doc.get("format") != REQUEST_FORMAT:
            raise ValueError(f"format is not {REQUEST_FORMAT!r}")  # noqa: TRY301 - one message
        claimed, token, csr = str(doc["host_id"]), str(doc["token"]), str(doc["csr_pem"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CollectorError(
            f"{request} is not a request file of 'baomi-agent enroll --token-file' ({e})"
        ) from e
    token_hash = hashlib.sha256(token.encode()).digest()
    host_id = store.token_host(token_hash, now_us())
    if host_id is None or host_id != claimed:
        why = (
            "its token is unknown, already used or expired"
            if host_id is None
            else f"its token is for host {host_id!r}, not {claimed!r}"
        )
        _record(store, ENROLL_ACTION, claimed, f"request refused: {why}", ok=False)
        raise RefusedError(
            f"request of host {claimed!r} refused: {why}; make a new token file with "
            f"'baomi-collector enroll-file token --host {claimed} --out FILE'"
        )
    authority = pki.load_authority(pki_dir)
    try:
        cert = authority.issue_host_certificate(csr.encode(), host_id)
    except EnrollmentError as e:
        raise RefusedError(f"request of host {host_id!r} refused: {e}") from e
    if store.use_token(token_hash, now_us()) != host_id:
        raise RefusedError("the token was used meanwhile; make a new token file")
    store.add_host(host_id, pki.fingerprint(cert), now_us())
    _write(out, cert, 0o644)
    _record(store, ENROLL_ACTION, host_id, "certificate issued for a request file")
    return host_id


# -- import -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Imported:
    """What an import stored."""

    host_id: str
    first_seq: int  # the export's range
    last_seq: int
    stored: int  # events new to the store (0: all were stored before)
    head_seq: int  # the host's chain in the store ends here now


def import_file(store: Store, ca_pem: bytes, path: Path) -> Imported:
    """Store the events of an offline host's export once; RefusedError naming what is
    wrong (and the seq) when it is not this collector's host's unchanged export."""
    try:
        raw = _read(path, "export", exportfile.MAX_FILE_BYTES)
        export = exportfile.loads(raw)
        rows = _checked_rows(store, ca_pem, export)
    except RefusedError as e:
        _record(store, IMPORT_ACTION, "", f"{path.name} refused: {e}", ok=False)
        raise
    except exportfile.ExportFormatError as e:
        _record(store, IMPORT_ACTION, "", f"{path.name} refused: {e}", ok=False)
        raise RefusedError(f"{path}: {e}") from e
    host = export.host_id
    if rows and store.append(rows) != len(rows):
        stored = store.hashes(host, rows[0].seq, rows[-1].seq)
        if any(stored.get(r.seq) != r.hash for r in rows):
            raise RefusedError(f"host {host}: another import stored other events meanwhile")
    head = store.head(host) or (0, chain.GENESIS)
    digest = hashlib.sha256(raw).hexdigest()[:16]
    _record(
        store,
        IMPORT_ACTION,
        host,
        f"{path.name} (sha256 {digest}…): seq {export.first_seq}..{export.last_seq}, "
        f"{len(rows)} new, stored through seq {head[0]}",
    )
    return Imported(host, export.first_seq, export.last_seq, len(rows), head[0])


def _refuse(export: exportfile.ExportFile, reason: str) -> RefusedError:
    return RefusedError(f"export of host {export.host_id!r} refused: {reason}; nothing stored")


def _checked_rows(store: Store, ca_pem: bytes, export: exportfile.ExportFile) -> list[EventRow]:
    """The export's events the store does not hold yet, each checked."""
    key = _host_key(store, ca_pem, export)
    if (problem := exportfile.chain_problem(export)) is not None:
        raise _refuse(export, problem[1])
    if not export.signature_ok(key):
        raise _refuse(export, "the signature is not the host key's: the file was changed")
    host = export.host_id
    stored_seq, stored_hash = store.head(host) or (0, chain.GENESIS)
    state = HostChain(host, stored_seq, stored_hash)
    received = now_us()
    rows: list[EventRow] = []
    for at in range(0, len(export.bodies), MAX_BATCH_EVENTS):
        try:
            rows += state.check(export.bodies[at : at + MAX_BATCH_EVENTS], received)
        except Rejected as e:
            raise _refuse(export, e.reason) from e
        except ForeignHost as e:
            raise _refuse(export, f"an event names host {e.args[0]!r}") from e
        if state.breaks:
            seq, why = state.breaks[0]
            raise _refuse(
                export,
                f"seq {seq} does not continue the stored chain, which ends at seq "
                f"{stored_seq} ({why}): import the earlier export first, or make one that "
                "starts after it on the host ('baomi-agent export --again --out FILE')",
            )
    _check_replays(store, export, stored_seq)
    return rows


def _check_replays(store: Store, export: exportfile.ExportFile, stored_seq: int) -> None:
    """Events the store holds already must be the same events (as a replay in a stream)."""
    last = min(export.last_seq, stored_seq)
    if export.first_seq > last:
        return
    stored = store.hashes(export.host_id, export.first_seq, last)
    for seq, body in zip(range(export.first_seq, last + 1), export.bodies, strict=False):
        if stored.get(seq) != chain.bytes_hash(body):
            raise _refuse(export, f"seq {seq} is not the event stored for it")


def _host_key(
    store: Store, ca_pem: bytes, export: exportfile.ExportFile
) -> ec.EllipticCurvePublicKey:
    """The public key this collector certified for the export's host."""
    host = export.host_id
    try:
        cert = x509.load_pem_x509_certificate(export.certificate.encode())
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    except (ValueError, TypeError, InvalidSignature) as e:
        raise _refuse(export, "its certificate was not issued by this collector") from e
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names or names[0].value != host:
        raise _refuse(export, "its certificate names another host")
    if pki.fingerprint(export.certificate.encode()) not in store.host_certificates(host):
        raise _refuse(
            export,
            f"host {host!r} was not enrolled here (enrol it by file: "
            f"'baomi-collector enroll-file token --host {host} --out FILE')",
        )
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise _refuse(export, "its certificate does not carry an EC key")
    return key
