"""The host simulator's chains and Ack handling (bench.fleet), without a network."""

from __future__ import annotations

import collections
import dataclasses
import datetime

import pytest
from baomi import chain
from baomi.meeting.signature import signature_problem
from baomi.v1 import collector_pb2, events_pb2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from bench import fleet
from collector import policy, validate


def _key_and_cert() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sim-00000")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def test_events_form_a_chain_the_collector_accepts() -> None:
    c = fleet.HostChain("sim-00000", 0, total=300)
    c.make(300)
    bodies = [body for _, body in c.after(0, 300)]
    prev = chain.GENESIS
    for seq, body in enumerate(bodies, start=1):
        ev = events_pb2.Event.FromString(body)
        assert (ev.host_id, ev.seq, ev.prev_hash) == ("sim-00000", seq, prev)
        kind = ev.WhichOneof("kind")
        assert kind is not None
        assert validate.event_problem(ev, kind) is None
        prev = chain.event_hash(ev)
    assert prev == c.last_hash


def test_the_mix_has_every_kind_and_signed_meeting_checks() -> None:
    key_pem, cert_pem = _key_and_cert()
    c = fleet.HostChain("sim-00000", 3, total=1000, key_pem=key_pem)
    c.make(1000)
    events = [events_pb2.Event.FromString(b) for _, b in c.after(0, 1000)]
    kinds = collections.Counter(ev.WhichOneof("kind") for ev in events)
    assert set(kinds) == {
        "file_access", "file_change", "process", "network", "device", "agent_status",
        "meeting_check",
    }  # fmt: skip
    denied = [ev for ev in events if ev.HasField("file_access") and ev.file_access.decision == 2]
    assert denied
    checks = [ev.meeting_check for ev in events if ev.HasField("meeting_check")]
    assert all(signature_problem(mc, cert_pem) is None for mc in checks)


def test_without_a_key_no_meeting_check_is_made() -> None:
    c = fleet.HostChain("sim-00000", 3, total=1000)
    c.make(1000)
    kinds = {events_pb2.Event.FromString(b).WhichOneof("kind") for _, b in c.after(0, 1000)}
    assert "meeting_check" not in kinds


def test_an_ack_forgets_what_it_covers_and_the_rest_is_sent_again() -> None:
    c = fleet.HostChain("sim-00000", 0, total=20)
    assert c.acknowledge(0, chain.GENESIS) == 0  # a fresh host's first Ack
    c.make(10)
    head5 = events_pb2.Event.FromString(c.after(4, 1)[0][1])
    assert c.acknowledge(5, chain.event_hash(head5)) == 5
    assert c.acked == (5, chain.event_hash(head5))
    # After a reconnect the collector's head says 5: what follows is sent again.
    assert [seq for seq, _ in c.after(5, 100)] == [6, 7, 8, 9, 10]
    assert c.acknowledge(5, chain.event_hash(head5)) == 0  # the same word again
    assert not c.done
    c.make(20)
    assert c.acknowledge(20, c.last_hash) == 15
    assert c.done
    assert c.after(20, 100) == []


def test_only_the_last_acknowledged_events_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet, "KEEP_ACKED", 3)
    c = fleet.HostChain("sim-00000", 0, total=20)
    c.make(10)
    c.acknowledge(6, _hash(c, 6))
    assert [s for s, _ in c.after(0, 100)] == [4, 5, 6, 7, 8, 9, 10]


def test_after_sent_but_unacknowledged_continues_after_what_was_sent() -> None:
    c = fleet.HostChain("sim-00000", 0, total=20)
    c.make(12)
    assert [seq for seq, _ in c.after(8, 3)] == [9, 10, 11]


@pytest.mark.parametrize(
    ("seq", "why"),
    [(5, "foreign"), (11, "made 10"), (3, "foreign")],
)
def test_an_ack_that_cannot_be_true_is_refused(seq: int, why: str) -> None:
    c = fleet.HostChain("sim-00000", 0, total=20)
    c.make(10)
    head4 = events_pb2.Event.FromString(c.after(3, 1)[0][1])
    c.acknowledge(4, chain.event_hash(head4))
    with pytest.raises(fleet.ChainMismatchError, match=why) as info:
        c.acknowledge(seq, b"\x01" * 32)
    assert not isinstance(info.value, fleet.LostEventsError)
    assert c.acked == (4, chain.event_hash(head4))  # nothing forgotten
    assert [s for s, _ in c.after(4, 100)] == [5, 6, 7, 8, 9, 10]


def test_a_collector_that_lost_events_gets_them_again() -> None:
    c = fleet.HostChain("sim-00000", 0, total=20)
    c.make(10)
    c.acknowledge(8, _hash(c, 8))
    with pytest.raises(fleet.LostEventsError, match="below seq 8 it acknowledged before"):
        c.acknowledge(3, _hash(c, 3))
    assert c.acked == (3, _hash(c, 3))  # its head is the acknowledged one again
    assert [s for s, _ in c.after(3, 100)] == [4, 5, 6, 7, 8, 9, 10]
    assert c.acknowledge(10, c.last_hash) == 7


def test_a_loss_older_than_what_is_kept_cannot_be_resent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet, "KEEP_ACKED", 2)
    c = fleet.HostChain("sim-00000", 0, total=20)
    c.make(10)
    c.acknowledge(10, c.last_hash)
    assert [s for s, _ in c.after(0, 100)] == [9, 10]  # the last two acknowledged kept
    with pytest.raises(fleet.ChainMismatchError, match="older than this host keeps"):
        c.acknowledge(3, b"\x03" * 32)
    assert c.acked == (10, c.last_hash)


def _hash(c: fleet.HostChain, seq: int) -> bytes:
    return chain.event_hash(events_pb2.Event.FromString(c.after(seq - 1, 1)[0][1]))


def test_a_foreign_head_at_the_acknowledged_seq_is_refused() -> None:
    c = fleet.HostChain("sim-00000", 0, total=20)
    with pytest.raises(fleet.ChainMismatchError, match="foreign"):
        c.acknowledge(0, b"\x02" * 32)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert fleet.percentile(values, 0.5) == 50.0
    assert fleet.percentile(values, 0.99) == 99.0
    assert fleet.percentile([], 0.99) == 0.0


@pytest.mark.parametrize("bad", ["localhost", "host:", ":7443", "h:99999", "a:1,b"])
def test_bad_addresses_are_refused_with_the_form_expected(
    bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        fleet.build_parser().parse_args(
            ["--collector", bad, "--enroll", "h:1", "--ca", "ca.pem", "--store", "sqlite:///x"]
        )
    assert "is not HOST:PORT" in capsys.readouterr().err


def test_several_collectors_by_commas_and_repeats() -> None:
    common = ["--enroll", "a:4", "--ca", "ca.pem", "--store", "sqlite:///x"]
    args = fleet.build_parser().parse_args(
        ["--collector", "a:1,b:2", "--collector", "c:3", *common]
    )
    assert args.collector == ["a:1", "b:2", "c:3"]


def test_a_policy_report_is_the_next_event_and_the_mix_goes_on_after_it() -> None:
    c = fleet.HostChain("sim-00000", 0, total=5)
    c.make(2)
    c.report(events_pb2.PolicyApplied(version="v2", ok=True))
    assert not c.done
    c.make(2)  # a report is made at once, whatever the rate allows
    c.make(10)
    events = [events_pb2.Event.FromString(b) for _, b in c.after(0, 100)]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
    assert events[2].policy_applied == events_pb2.PolicyApplied(version="v2", ok=True)
    assert validate.event_problem(events[2], "policy_applied") is None
    assert all(e.WhichOneof("kind") != "policy_applied" for e in events[3:])
    assert c.total == 6
    c.acknowledge(6, c.last_hash)
    assert c.done


def _signed_bundle(key: ed25519.Ed25519PrivateKey, version: str) -> collector_pb2.PolicyBundle:
    bundle = collector_pb2.PolicyBundle(version=version, files={"policy.csv": b"p\n"})
    bundle.signature = key.sign(policy.signed_bytes(bundle))
    return bundle


def test_a_host_applies_signed_bundles_and_reports_a_forged_one_refused() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    host = fleet.Host(fleet.HostChain("sim-00000", 0, total=1), b"", b"", 0, pub)
    settings = fleet.StreamSettings(
        addresses=("127.0.0.1:1",), ca_pem=b"", events=1, batch=10, window=1, rate=0,
        server_name=None, deadline_s=1, policy_versions=2,
    )  # fmt: skip
    host.offer(_signed_bundle(key, "v1"))
    forged = _signed_bundle(ed25519.Ed25519PrivateKey.generate(), "v2")
    host.offer(forged)
    host.offer(_signed_bundle(key, "v2"))
    host.chain.make(10)
    reports = [events_pb2.Event.FromString(b).policy_applied for _, b in host.chain.after(0, 10)][
        :3
    ]
    assert [(r.version, r.ok, r.error) for r in reports] == [
        ("v1", True, ""),
        ("v2", False, "signature does not verify"),
        ("v2", True, ""),
    ]
    assert (host.policy_version, host.applied) == ("v2", ["v1", "v2"])
    assert not host.finished(settings)  # its events are not acknowledged yet
    host.chain.acknowledge(host.chain.made, host.chain.last_hash)
    assert host.finished(settings)
    assert not host.finished(dataclasses.replace(settings, policy_versions=3))
