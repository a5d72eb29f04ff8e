"""Identity: only enrolled hosts stream, and only as themselves."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from baomi.v1 import events_pb2

from collector.server import create_token
from tests.collector_harness import (
    RunningCollector,
    batch,
    enroll_call,
    enroll_host,
    init_pki,
    new_csr,
    send_batches,
    stream_rpc,
)


def _alerts(running: RunningCollector, kind: str) -> list[events_pb2.Event]:
    rows = running.store.chain("_collector")
    evs = [events_pb2.Event.FromString(r.body) for r in rows]
    return [e for e in evs if e.tamper.kind == kind]


def test_enrolled_host_streams(collector: RunningCollector) -> None:
    host = enroll_host(collector, "ws-01")
    acks = send_batches(host, collector.address, [batch(host.events(3))])
    assert acks[0].up_to_seq == 0
    assert acks[-1].up_to_seq == 3
    assert collector.store.head("ws-01") == (3, host.head)


def test_certificate_from_another_ca_fails_handshake(
    collector: RunningCollector, tmp_path: Path
) -> None:
    host = enroll_host(collector, "ws-01")
    other = init_pki(tmp_path / "other")
    key_pem, csr_pem = new_csr()
    from cryptography import x509

    forged = other.issue_host_certificate(csr_pem, "ws-01")
    assert (
        x509.load_pem_x509_certificate(forged).subject
        == x509.load_pem_x509_certificate(host.cert_pem).subject
    )
    host.key_pem, host.cert_pem = key_pem, forged
    with pytest.raises(grpc.RpcError) as err:
        send_batches(host, collector.address, [batch(host.events(1))])
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake itself failed
    assert collector.store.head("ws-01") is None


def test_no_client_certificate_fails_handshake(collector: RunningCollector) -> None:
    ca = (collector.pki_dir / "ca.pem").read_bytes()
    with grpc.secure_channel(collector.address, grpc.ssl_channel_credentials(ca)) as ch:
        call = stream_rpc(ch)(iter([]), timeout=10)
        with pytest.raises(grpc.RpcError) as err:
            next(call)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_enrolment_port_does_not_accept_streams(collector: RunningCollector) -> None:
    ca = (collector.pki_dir / "ca.pem").read_bytes()
    with grpc.secure_channel(collector.enroll_address, grpc.ssl_channel_credentials(ca)) as ch:
        call = stream_rpc(ch)(iter([]), timeout=10)
        with pytest.raises(grpc.RpcError) as err:
            next(call)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_reused_token_is_refused(collector: RunningCollector) -> None:
    token = create_token(collector.store, "ws-02")
    ca = (collector.pki_dir / "ca.pem").read_bytes()
    enroll_call(collector.enroll_address, ca, token, new_csr()[1])
    with pytest.raises(grpc.RpcError) as err:
        enroll_call(collector.enroll_address, ca, token, new_csr()[1])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "already used" in (err.value.details() or "")
    assert len(_alerts(collector, "enrollment_refused")) == 1


def test_a_refused_csr_leaves_the_token_usable(collector: RunningCollector) -> None:
    token = create_token(collector.store, "ws-04")
    ca = (collector.pki_dir / "ca.pem").read_bytes()
    with pytest.raises(grpc.RpcError) as err:
        enroll_call(collector.enroll_address, ca, token, b"-----BEGIN CERTIFICATE REQUEST-----")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert enroll_call(collector.enroll_address, ca, token, new_csr()[1]).host_id == "ws-04"


def test_re_enrolment_retires_the_earlier_certificate(collector: RunningCollector) -> None:
    old = enroll_host(collector, "ws-05")
    assert send_batches(old, collector.address, [batch(old.events(2))])[-1].up_to_seq == 2
    new = enroll_host(collector, "ws-05")  # the host was re-imaged and enrolled again
    new.seq, new.head = old.seq, old.head
    with pytest.raises(grpc.RpcError) as err:
        send_batches(old, collector.address, [batch(old.events(1))])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert send_batches(new, collector.address, [batch(new.events(1))])[-1].up_to_seq == 3


def test_expired_token_is_refused(collector: RunningCollector) -> None:
    token = create_token(collector.store, "ws-03", seconds=1)
    time.sleep(1.2)
    ca = (collector.pki_dir / "ca.pem").read_bytes()
    with pytest.raises(grpc.RpcError) as err:
        enroll_call(collector.enroll_address, ca, token, new_csr()[1])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_foreign_host_id_is_refused_and_alerted(collector: RunningCollector) -> None:
    mallory = enroll_host(collector, "ws-mallory")
    enroll_host(collector, "ws-victim")
    forged = mallory.events(1)
    forged[0].host_id = "ws-victim"
    with pytest.raises(grpc.RpcError) as err:
        send_batches(mallory, collector.address, [batch(forged)])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert collector.store.head("ws-victim") is None
    assert collector.store.head("ws-mallory") is None
    alerts = _alerts(collector, "foreign_host")
    assert len(alerts) == 1
    assert alerts[0].tamper.subject_host == "ws-mallory"
    assert alerts[0].severity == events_pb2.SEVERITY_HIGH


def test_certificate_not_issued_by_enrolment_is_refused(
    collector: RunningCollector,
) -> None:
    """A certificate signed by the right CA but outside enrolment (e.g. a stolen CA
    key used offline, or the server's own) does not name an enrolled host."""
    host = enroll_host(collector, "ws-04")
    from collector import pki as pki_mod

    authority = pki_mod.load_authority(collector.pki_dir)
    key_pem, csr_pem = new_csr()
    host.key_pem, host.cert_pem = key_pem, authority.issue_host_certificate(csr_pem, "ws-04")
    with pytest.raises(grpc.RpcError) as err:
        send_batches(host, collector.address, [batch(host.events(1))])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
