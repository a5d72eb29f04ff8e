"""Policy editing: refused with file:line:reason and nothing pushed; versions, rollback,
persistence; approving a USB stick adds its rule to the bundle agents receive."""

from __future__ import annotations

import threading
from pathlib import Path

from baomi.devices.model import UsbDevice, UsbInterface
from baomi.devices.policy import DevicePolicy
from baomi.v1 import collector_pb2, events_pb2
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from collector.console import ConsoleConfig
from collector.console.auth import create_account
from collector.policy import signed_bytes
from collector.store import Store
from tests.collector_harness import RunningCollector, batch, enroll_host, send_batches
from tests.integration.console.conftest import PASSWORD, ROLE_ACCOUNTS, Console, start_console

GOOD_LINE = "p, role:staff, /srv/secret/shared/**, write, deny\n"


def _policy_csv(console: Console) -> str:
    bundle = console.running.collector.policy.current
    assert bundle is not None
    return bundle.files["policy.csv"].decode()


def _form(console: Console, **changes: str) -> dict[str, str]:
    bundle = console.running.collector.policy.current
    assert bundle is not None
    form = {f"file:{n}": d.decode() for n, d in bundle.files.items()}
    for name, text in changes.items():
        form[f"file:{name.replace('_', '.')}"] = text
    return form


def test_policy_that_does_not_load_is_refused_with_reason_and_not_pushed(
    console: Console,
) -> None:
    sue = console.as_role("secadmin")
    before = console.running.collector.policy.current
    csv = _policy_csv(console)
    lines = csv.count("\n")
    bad = csv + "p, role:staff, /srv/secret/**, fly, allow\n"
    resp = sue.post("/policy/save", _form(console, policy_csv=bad))
    assert resp.status == 422
    assert f"policy.csv:{lines + 1}:" in resp.text
    assert console.running.collector.policy.current is before
    assert [v.number for v in console.store.policy_versions()] == [1]
    refused = [
        e.console_action for e in console.audit() if e.console_action.action == "policy_change"
    ]
    assert len(refused) == 1 and not refused[0].ok
    assert "nothing published" in refused[0].detail and "policy.csv" in refused[0].detail
    # The preview says the same without saving.
    preview = sue.post("/policy/preview", _form(console, policy_csv=bad))
    assert preview.status == 200 and f"policy.csv:{lines + 1}:" in preview.text
    # Browsers send CRLF; that alone is not a change.
    crlf = _form(console)
    crlf["file:policy.csv"] = csv.replace("\n", "\r\n")
    assert sue.post("/policy/save", crlf).status == 400
    # A broken TOML file names its line too.
    toml = sue.post("/policy/save", _form(console, subjects_toml="[people.x]\nuid = \n"))
    assert toml.status == 422 and "subjects.toml:2" in toml.text


def test_a_meeting_schedule_naming_unknown_rooms_or_people_is_refused(
    console: Console,
) -> None:
    """Room agents check meetings from the bundle: the collector refuses a schedule they
    could not use (a room no agent serves, an attendee the register does not know)."""
    sue = console.as_role("secadmin")
    before = console.running.collector.policy.current
    assert before is not None and "meetings.toml" in before.files
    meetings = before.files["meetings.toml"].decode()
    bad = meetings + (
        '\n[meetings.m-x]\nroom = "r999"\nlevel = "秘密"\n'
        'start = 2026-12-24T09:00:00+08:00\nattendees = ["zhang", "nobody"]\n'
    )
    line = bad.splitlines().index("[meetings.m-x]") + 1
    resp = sue.post("/policy/save", _form(console, meetings_toml=bad))
    assert resp.status == 422
    assert f"meetings.toml:{line}: meeting m-x: no room &#39;r999&#39;" in resp.text
    assert f"meetings.toml:{line}: meeting m-x: attendees not in subjects.toml: nobody" in (
        resp.text
    )
    assert console.running.collector.policy.current is before
    good = bad.replace('"r999"', '"r301"').replace('"nobody"', '"li"')
    assert sue.post("/policy/save", _form(console, meetings_toml=good)).status in (200, 303)
    current = console.running.collector.policy.current
    assert current is not before and current is not None
    assert b"[meetings.m-x]" in current.files["meetings.toml"]


def test_saved_policy_is_signed_pushed_versioned_and_can_be_rolled_back(
    console: Console,
) -> None:
    sue = console.as_role("secadmin")
    first = console.running.collector.policy.current
    assert first is not None
    preview = sue.post(
        "/policy/preview", _form(console, policy_csv=_policy_csv(console) + GOOD_LINE)
    )
    assert "+p, role:staff, /srv/secret/shared/**, write, deny" in preview.text
    assert console.store.policy_versions()[0].number == 1
    resp = sue.post(
        "/policy/save",
        {**_form(console, policy_csv=_policy_csv(console) + GOOD_LINE), "note": "deny writes"},
    )
    assert resp.status == 303
    second = console.running.collector.policy.current
    assert second is not None and second.version != first.version
    assert second.author == "sue" and GOOD_LINE.encode() in second.files["policy.csv"]
    key = load_pem_public_key(console.running.collector.authority.signing_public_pem)
    key.verify(second.signature, signed_bytes(second))  # type: ignore[union-attr]
    versions = console.store.policy_versions()
    assert (versions[0].number, versions[0].author, versions[0].note) == (2, "sue", "deny writes")
    history = sue.get("/policy/history").text
    assert "deny writes" in history and second.version in history
    assert GOOD_LINE.strip() in sue.get("/policy/versions/2").text
    # Roll back to version 1: a new version with the old files.
    assert sue.post("/policy/rollback", {"number": "1"}).status == 303
    third = console.running.collector.policy.current
    assert third is not None and dict(third.files) == dict(first.files)
    assert console.store.policy_versions()[0].note == "rollback to version 1"
    actions = [
        (a.action, a.actor, a.role, a.ok)
        for a in (e.console_action for e in console.audit())
        if a.action.startswith("policy")
    ]
    assert actions == [
        ("policy_change", "sue", "secadmin", True),
        ("policy_rollback", "sue", "secadmin", True),
    ]


def test_current_policy_survives_a_restart(console: Console, store: Store, pki_dir: Path) -> None:
    sue = console.as_role("secadmin")
    sue.post("/policy/save", _form(console, policy_csv=_policy_csv(console) + GOOD_LINE))
    version = console.running.collector.policy.current.version  # type: ignore[union-attr]
    console.running.stop()
    # Started again with the same --policies directory: the stored version stays in force.
    again = start_console(store, pki_dir)
    try:
        current = again.collector.policy.current
        assert current is not None and current.version == version
    finally:
        again.stop()
    console.running = start_console(store, pki_dir)  # for the fixture's teardown


HOSTILE_SERIAL = 'AA01"\n[[stick]]\nlabel = "X"'
STICK_HASH = "jEP/6WzviqdJ5VSeTUY8PatCNBKeaREvo2OqdplND/o="


def _stick(name: str = "<img src=x onerror=alert(1)>") -> events_pb2.Device:
    return events_pb2.Device(
        action="add",
        device_class="storage",
        vendor_id="0781",
        product_id="5567",
        serial=HOSTILE_SERIAL,
        name=name,
        descriptor_hash=STICK_HASH,
        interfaces="08:06:50",
        decision=events_pb2.DECISION_DENY,
    )


def _usb_device() -> UsbDevice:
    return UsbDevice(
        sys_path="/sys/devices/x",
        port="1-1",
        vendor_id="0781",
        product_id="5567",
        serial=HOSTILE_SERIAL,
        interfaces=(UsbInterface(8, 6, 0x50),),
        descriptor_hash=STICK_HASH,
    )


def test_approving_a_stick_pushes_its_registration_to_watching_agents(
    console: Console, tmp_path: Path
) -> None:
    host = enroll_host(console.running, "ws-01")
    send_batches(host, console.running.address, [batch(host.events(1, device=_stick()))])
    before = console.running.collector.policy.current
    assert before is not None
    # An agent watching for policy, through the real WatchPolicy RPC.
    received: list[collector_pb2.PolicyBundle] = []
    channel = host.channel(console.running.address)
    watch = channel.unary_stream(
        "/baomi.v1.Collector/WatchPolicy",
        request_serializer=collector_pb2.WatchPolicyRequest.SerializeToString,
        response_deserializer=collector_pb2.PolicyBundle.FromString,
    )(collector_pb2.WatchPolicyRequest(current_version=before.version), timeout=30)
    reader = threading.Thread(target=lambda: received.append(next(watch)))
    reader.start()

    sue = console.as_role("secadmin")
    page = sue.get("/devices")
    assert "&lt;img src=x onerror=alert(1)&gt;" in page.text
    assert "<img src=x" not in page.text
    assert "decision-block" in page.text  # what the policy in force decides now
    resp = sue.post(
        "/devices/approve",
        {"host": "ws-01", "seq": "1", "label": "BM-2026-007", "owner": "wang", "level": "机密"},
    )
    assert resp.status == 303, resp.text
    reader.join(timeout=20)
    watch.cancel()
    channel.close()
    assert received, "the watching agent got no bundle"
    bundle = received[0]
    assert bundle.version == console.running.collector.policy.current.version  # type: ignore[union-attr]
    # The agent's own device policy, loaded from the bundle, now allows the stick as a
    # registered one; the hostile serial made no entry of its own.
    for name, data in bundle.files.items():
        (tmp_path / name).write_bytes(data)
    policy = DevicePolicy.load(tmp_path)
    labels = [s.label for s in policy.registry.sticks]
    assert labels.count("BM-2026-007") == 1 and "X" not in labels
    stick = next(s for s in policy.registry.sticks if s.label == "BM-2026-007")
    assert (stick.serial, stick.owner, stick.status) == (HOSTILE_SERIAL, "wang", "active")
    decision = policy.evaluate(_usb_device())
    assert decision.target == "allow" and "BM-2026-007" in decision.reason
    # The explicit rules are untouched: the BadUSB reject rules still come first.
    assert bundle.files["devices.rules"] == before.files["devices.rules"]
    assert "decision-allow" in sue.get("/devices").text
    approvals = [
        e.console_action for e in console.audit() if e.console_action.action == "approve_device"
    ]
    assert len(approvals) == 1 and approvals[0].actor == "sue" and approvals[0].ok
    # The same label twice is refused by the agent's register, and nothing is pushed.
    again = sue.post(
        "/devices/approve",
        {"host": "ws-01", "seq": "1", "label": "BM-2026-007", "owner": "li", "level": "秘密"},
    )
    assert again.status == 422 and "usb-registry.toml:" in again.text
    assert console.running.collector.policy.current.version == bundle.version  # type: ignore[union-attr]


def test_a_stick_without_serial_or_with_more_than_storage_cannot_be_registered(
    console: Console,
) -> None:
    host = enroll_host(console.running, "ws-01")
    device = events_pb2.Device(action="add", vendor_id="0781", product_id="5567", serial="")
    combo = events_pb2.Device(
        action="add",
        device_class="badusb,hid,storage",
        vendor_id="0781",
        product_id="5567",
        serial="X1",
    )
    send_batches(
        host,
        console.running.address,
        [batch(host.events(1, device=device) + host.events(1, device=combo))],
    )
    sue = console.as_role("secadmin")
    resp = sue.post(
        "/devices/approve",
        {"host": "ws-01", "seq": "1", "label": "BM-1", "owner": "wang", "level": "秘密"},
    )
    assert resp.status == 400 and "serial" in resp.text
    resp = sue.post(
        "/devices/approve",
        {"host": "ws-01", "seq": "2", "label": "BM-1", "owner": "wang", "level": "秘密"},
    )
    assert resp.status == 400 and "mass storage and nothing else" in resp.text
    assert [v.number for v in console.store.policy_versions()] == [1]


def test_without_a_policy_in_force_approval_is_hidden_with_the_reason(
    store: Store, pki_dir: Path
) -> None:
    """A collector started without --policies has nothing to add an approval to: the
    page says so instead of offering a button that answers 422 "model.conf"."""
    for role, name in ROLE_ACCOUNTS.items():
        create_account(store, name, role=role, by="cli:test", password=PASSWORD)
    running = RunningCollector(
        store, pki_dir, checkpoint_seconds=3600, policies_dir=None,
        console=ConsoleConfig(listen="127.0.0.1:0"),
    )  # fmt: skip
    console = Console(running, f"http://127.0.0.1:{running.collector.ports['console']}")
    try:
        host = enroll_host(running, "ws-01")
        send_batches(host, running.address, [batch(host.events(1, device=_stick("stick")))])
        sue = console.as_role("secadmin")
        page = sue.get("/devices").text
        assert 'id="no-policy"' in page and "--policies" in page
        assert 'action="/devices/approve"' not in page
        resp = sue.post(
            "/devices/approve",
            {"host": "ws-01", "seq": "1", "label": "BM-1", "owner": "wang", "level": "秘密"},
        )
        assert resp.status == 400 and "--policies" in resp.text
        assert store.policy_versions() == []
    finally:
        running.stop()
