"""The register: steps recorded in the collector's chain (a real SQLite store), the table
rebuilt from them, signed orders, hosts' events taken once, and drift."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from baomi.v1 import events_pb2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from collector import cli
from collector.ingest import COLLECTOR_HOST, CollectorChain, Writer, to_row
from collector.register import (
    Register,
    RegisterError,
    RegisterService,
    check_request,
    drift,
    order_signed_bytes,
)
from collector.store import EventQuery, register_table
from collector.store.base import EventRow
from collector.store.sqlite import SQLiteStore

KEY = ed25519.Ed25519PrivateKey.generate()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "c.db")
    s.add_host("ws-01", b"\x01" * 32, 1)
    try:
        yield s
    finally:
        s.close()


def _request(**values: object) -> events_pb2.LabelRequest:
    fields: dict[str, object] = {
        "action": "classify",
        "host": "ws-01",
        "path": "/srv/secret/plan.txt",
        "level": events_pb2.LEVEL_SECRET,
        "until": "2099-12-31",
        "scope": ["dept:finance"],
        "basis": "保密事项范围 第3条",
        "title": "年度计划",
        "requester": "zhang",
        "content_hash": "ab" * 32,
    }
    fields.update(values)
    return events_pb2.LabelRequest(**fields)  # type: ignore[arg-type]


def _run(store: SQLiteStore, steps: object) -> object:
    """Run ``steps(service)`` with a service over ``store``; close the writer after."""

    async def main() -> object:
        writer = Writer(store)
        try:
            service = RegisterService(store, CollectorChain(writer), KEY)
            return await steps(service)  # type: ignore[operator]
        finally:
            await asyncio.to_thread(writer.close)

    return asyncio.run(main())


def _host_event(store: SQLiteStore, seq: int, **kind: object) -> None:
    event = events_pb2.Event(host_id="ws-01", seq=seq, severity=events_pb2.SEVERITY_INFO, **kind)  # type: ignore[arg-type]
    event.time.FromMicroseconds(1_000_000 * seq)
    store.append([to_row(event, str(event.WhichOneof("kind")), 0)])


def _file(**values: object) -> events_pb2.LabelledFile:
    fields: dict[str, object] = {"home": "/srv/secret/plan.txt", "level": 2, "until": "2099-12-31",
                                 "scope": ["dept:finance"]}  # fmt: skip
    fields.update(values)
    return events_pb2.LabelledFile(**fields)  # type: ignore[arg-type]


def test_request_approve_apply_recorded_in_the_chain_and_rebuilt(store: SQLiteStore) -> None:
    async def steps(service: RegisterService) -> tuple[str, list[object]]:
        rid = await service.request(_request(), actor="zhang@ws-01")
        assert service.orders_for("ws-01") == []  # nothing before an approval
        await service.approve(rid, actor="sue")
        return rid, service.orders_for("ws-01")

    rid, orders = _run(store, steps)  # type: ignore[misc]
    (order,) = orders
    KEY.public_key().verify(order.signature, order_signed_bytes(order))
    assert (order.host_id, order.home, order.level, order.register_id, order.action) == (
        "ws-01", "/srv/secret/plan.txt", 2, rid, "classify",
    )  # fmt: skip
    assert order.content_hash == "ab" * 32 and list(order.scope) == ["dept:finance"]
    order.level = 0  # an altered order no longer verifies
    with pytest.raises(InvalidSignature):
        KEY.public_key().verify(order.signature, order_signed_bytes(order))

    # The host reports it applied; the service takes that event once.
    result = events_pb2.LabelOrderResult(order_id=order.order_id, register_id=rid, ok=True,
                                         content_hash="ab" * 32)  # fmt: skip
    _host_event(store, 1, label_order_result=result)
    _host_event(store, 2, label_order_result=result)  # sent twice: recorded once

    async def take(service: RegisterService) -> None:
        await service.take_host_events()
        await service.take_host_events()

    _run(store, take)
    entry = Register.load(store).entries[rid]  # rebuilt from the chain alone
    assert (entry.status, entry.approver, entry.level, entry.until) == (
        "in_force", "sue", 2, "2099-12-31",
    )  # fmt: skip
    assert [(h.step, h.actor) for h in entry.history] == [
        ("requested", "zhang@ws-01"), ("approved", "sue"), ("applied", "host:ws-01"),
    ]  # fmt: skip
    kinds = {r.seq: r.kind for r in store.chain(COLLECTOR_HOST)}
    assert [kinds[h.seq] for h in entry.history] == ["register_step"] * 3
    (row,) = register_table.entries(store)  # the table for queries, kept step by step
    assert row == entry.row() and (row.status, row.approver) == ("in_force", "sue")


def test_rejection_and_decisions_that_cannot_be_taken(store: SQLiteStore) -> None:
    async def steps(service: RegisterService) -> str:
        rid = await service.request(_request(), actor="zhang@ws-01")
        with pytest.raises(RegisterError, match="say why"):
            await service.reject(rid, actor="sue", reason="  ")
        await service.reject(rid, actor="sue", reason="不属于国家秘密")
        with pytest.raises(RegisterError, match="no request waiting"):
            await service.approve(rid, actor="sue")
        with pytest.raises(RegisterError, match="only an entry in force"):
            await service.request(_request(action="change", register_id=rid), actor="zhang@ws-01")
        with pytest.raises(RegisterError, match="no register entry"):
            await service.approve("DM-nope", actor="sue")
        with pytest.raises(RegisterError, match="zhang made this request and cannot approve"):
            await service.approve(
                await service.request(_request(path="/srv/b.txt"), actor="zhang"), actor="zhang"
            )
        with pytest.raises(RegisterError, match="'ws-77' is not enrolled here"):
            await service.request(_request(host="ws-77"), actor="sue")
        return rid

    rid = _run(store, steps)
    entry = Register.load(store).entries[str(rid)]
    assert entry.status == "rejected" and entry.order is None
    assert entry.history[-1].detail == "不属于国家秘密"


def test_a_hosts_request_is_taken_once_and_bad_ones_are_alerted(store: SQLiteStore) -> None:
    _host_event(store, 1, label_request=_request(request_id="req-1", host="ws-99"))
    _host_event(store, 2, label_request=_request(request_id="req-1"))  # the same, again
    _host_event(store, 3, label_request=_request(request_id="req-2", basis=""))

    async def take(service: RegisterService) -> None:
        await service.take_host_events()

    _run(store, take)
    _run(store, take)  # a restarted collector takes nothing twice
    (entry,) = Register.load(store).entries.values()
    assert entry.host == "ws-01"  # a host asks for its own files, whatever it claims
    assert entry.status == "pending" and entry.pending is not None
    (refused,) = Register.load(store).refused
    assert "needs its basis" in refused.reason and refused.source == "ws-01/3"


def test_drift_from_an_inventory_is_a_finding_once(store: SQLiteStore) -> None:
    async def steps(service: RegisterService) -> str:
        rid = await service.request(_request(), actor="zhang@ws-01")
        order_id = await service.approve(rid, actor="sue")
        result = events_pb2.LabelOrderResult(order_id=order_id, register_id=rid, ok=True)
        _host_event(store, 1, label_order_result=result)
        await service.take_host_events()
        inventory = events_pb2.LabelInventory(
            files=[_file(register_id=rid, level=3), _file(home="/srv/secret/hand.txt")]
        )
        _host_event(store, 2, label_inventory=inventory)
        await service.take_host_events()
        _host_event(store, 3, label_inventory=inventory)  # the same drift again
        await service.take_host_events()
        titles = sorted(f.title for f in store.findings())
        assert titles == [
            "密级标志与台账不符 (label differs from the register): ws-01:/srv/secret/plan.txt",
            "未登记的密级标志 (label not in the register): ws-01:/srv/secret/hand.txt",
        ]
        assert all(f.host_id == COLLECTOR_HOST and f.status == "open" for f in store.findings())
        # Put right on the host: the hand-set label removed, the level as registered.
        _host_event(
            store, 4, label_inventory=events_pb2.LabelInventory(files=[_file(register_id=rid)])
        )
        await service.take_host_events()
        return rid

    _run(store, steps)
    assert {f.status for f in store.findings()} == {"closed"}
    resolved = [
        events_pb2.Event.FromString(r.body).tamper
        for r in store.chain(COLLECTOR_HOST)
        if r.kind == "tamper"
    ]
    assert [t.kind for t in resolved].count("drift_resolved") == 2


def test_drift_kinds() -> None:
    register = Register()
    rid = "DM-1"
    register.apply(
        events_pb2.RegisterStep(register_id=rid, step="requested", request=_request()), 1, 1
    )
    assert drift(register, "ws-01", []) == []  # pending: nothing expected on the host yet
    register.apply(
        events_pb2.RegisterStep(
            register_id=rid, step="approved", order_id="o1", request=_request()
        ),
        2,
        2,
    )
    register.apply(events_pb2.RegisterStep(register_id=rid, step="applied", order_id="o1"), 3, 3)
    assert register.entries[rid].status == "in_force"
    assert drift(register, "ws-01", [_file(register_id=rid)]) == []
    assert [d.kind for d in drift(register, "ws-01", [])] == ["register_missing"]
    differs = drift(register, "ws-01", [_file(register_id=rid, until="2030-01-01")])
    assert [d.kind for d in differs] == ["label_differs"] and "2030-01-01" in differs[0].detail
    assert [
        d.kind for d in drift(register, "ws-01", [_file(register_id=rid), _file(home="/x")])
    ] == ["unapproved_label"]
    assert drift(register, "ws-02", []) == []  # the entry is ws-01's


def test_drift_is_listed_by_home_whatever_order_the_host_lists_its_files() -> None:
    register = Register()
    homes = ["/srv/b/2.txt", "/srv/a.txt", "/srv/b/1.txt", "/srv/a/z.txt"]
    found = drift(register, "ws-01", [_file(home=h) for h in homes])
    assert [d.home for d in found] == sorted(homes)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"action": "shred"}, "action 'shred' is not one of"),
        ({"action": "destroy", "register_id": "DM-1"}, "names the person to carry it out"),
        ({"path": "relative.txt"}, "absolute path"),
        ({"title": ""}, "needs its title"),
        ({"level": 0}, "内部 needs no register entry"),
        ({"until": "31.12.2099"}, "not a date YYYY-MM-DD"),
        ({"scope": ["finance"]}, "not user:NAME"),
        ({"action": "change"}, "names the register entry"),
    ],
)
def test_a_bad_request_says_what_to_fix(values: dict[str, object], message: str) -> None:
    with pytest.raises(RegisterError, match=message):
        check_request(_request(**values))


def test_a_collector_sharing_the_store_sees_the_others_steps(store: SQLiteStore) -> None:
    async def steps(one: RegisterService) -> None:
        other = RegisterService(store, one._chain, KEY)  # started before anything was asked
        rid = await one.request(_request(), actor="zhang@ws-01")
        await other.approve(rid, actor="sue")  # decided on the newest register
        assert await one.refresh()
        assert not await one.refresh()  # nothing new: nothing taken twice
        assert one.register.entries[rid].status == "approved"
        assert [o.register_id for o in one.orders_for("ws-01")] == [rid]

    _run(store, steps)


def test_the_command_line_lists_and_shows_entries(
    store: SQLiteStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def steps(service: RegisterService) -> str:
        rid = await service.request(_request(), actor="zhang@ws-01")
        await service.approve(rid, actor="sue")
        return rid

    rid = str(_run(store, steps))
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert cli.main(["register", "list", "--store", url]) == 0
    out = capsys.readouterr().out
    assert rid in out and "机密" in out and "approved" in out
    assert cli.main(["register", "list", "--store", url, "--status", "in_force", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert cli.main(["register", "show", rid, "--store", url, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [h["step"] for h in shown["history"]] == ["requested", "approved"]
    assert shown["approver"] == "sue" and shown["title"] == "年度计划"
    assert cli.main(["register", "show", "DM-nope", "--store", url]) == 2
    assert "no register entry 'DM-nope'" in capsys.readouterr().err


def test_steps_of_one_chain_are_taken_in_seq_order_whatever_the_clock_did() -> None:
    def row(seq: int, time_s: int, step: events_pb2.RegisterStep) -> EventRow:
        event = events_pb2.Event(host_id=COLLECTOR_HOST, seq=seq, register_step=step)
        event.time.FromSeconds(time_s)
        return to_row(event, "register_step", 0)

    requested = events_pb2.RegisterStep(register_id="DM-1", step="requested", request=_request())
    approved = events_pb2.RegisterStep(
        register_id="DM-1", step="approved", order_id="o1", request=_request(), actor="sue"
    )
    register = Register()
    # The collector's clock went back between the two steps.
    assert register.take([row(2, 50, approved), row(1, 100, requested)]) == 2
    assert register.entries["DM-1"].status == "approved"
    assert register.take([row(1, 100, requested)]) == 0  # taken once


def test_a_look_with_nothing_new_reads_no_event_body(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The register looks for hosts' events every second; an inventory is up to ~1.5 MB:
    only new events are read whole, once each."""
    _host_event(store, 1, label_inventory=events_pb2.LabelInventory(files=[_file()]))
    _host_event(store, 2, label_request=_request(request_id="req-1"))
    read: list[tuple[str, int]] = []
    event = store.event

    def counted(host_id: str, seq: int) -> object:
        read.append((host_id, seq))
        return event(host_id, seq)

    queried: list[str | None] = []
    query = store.query

    def recorded(q: EventQuery) -> object:
        queried.append(q.kind)
        return query(q)

    monkeypatch.setattr(store, "event", counted)
    monkeypatch.setattr(store, "query", recorded)

    async def take_three_times(service: RegisterService) -> None:
        for _ in range(3):
            await service.take_host_events()

    _run(store, take_three_times)
    assert sorted(read) == [("ws-01", 1), ("ws-01", 2)]
    assert set(queried) <= {"register_step"}  # hosts' events are never read in bulk
    (entry,) = Register.load(store).entries.values()
    assert entry.status == "pending"


def _arrived(store: SQLiteStore, host: str, seq: int, at_us: int, **kind: object) -> None:
    """A host's event received at ``at_us`` (the collector's clock)."""
    event = events_pb2.Event(host_id=host, seq=seq, severity=events_pb2.SEVERITY_INFO, **kind)  # type: ignore[arg-type]
    event.time.FromMicroseconds(1_000_000 * seq)
    store.append([to_row(event, str(event.WhichOneof("kind")), at_us)])


def test_every_request_that_arrived_between_two_looks_is_taken_however_many(
    store: SQLiteStore,
) -> None:
    """A burst (a directory's files asked for at once, or a host flooding the collector)
    must not push other hosts' requests out of a look."""
    store.add_host("ws-02", b"\x02" * 32, 1)

    async def steps(service: RegisterService) -> None:
        await service.take_host_events()
        for seq in range(1, 1051):  # a look once read the newest 1,000 only
            _arrived(
                store, "ws-01", seq, 10_000 + seq, label_request=_request(request_id=f"r{seq}")
            )
        other = _request(request_id="other", host="ws-02")
        _arrived(store, "ws-02", 1, 10_000, label_request=other)
        await service.take_host_events()

    _run(store, steps)
    requests = {e.pending.request_id for e in Register.load(store).entries.values() if e.pending}
    assert len(requests) == 1051 and "other" in requests


def test_a_late_event_of_an_offline_host_is_taken_behind_many_newer_ones(
    store: SQLiteStore,
) -> None:
    """Its event time is weeks old, and 1,001 events of the kind are newer by that
    clock; it arrived now, and is taken by when it arrived."""

    async def steps(service: RegisterService) -> None:
        for seq in range(1, 1002):
            _arrived(store, "ws-01", 100 + seq, 5_000 + seq,
                     label_request=_request(request_id=f"r{seq}"))  # fmt: skip
        await service.take_host_events()
        _arrived(store, "ws-01", 1, 9_000, label_request=_request(request_id="late"))
        await service.take_host_events()

    _run(store, steps)
    assert "late" in Register.load(store).requests


def test_a_starting_collector_reads_each_hosts_newest_inventory_only(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for seq in (1, 2, 3):
        _arrived(store, "ws-01", seq, seq, label_inventory=events_pb2.LabelInventory(
            files=[_file(home=f"/srv/secret/v{seq}")]))  # fmt: skip
    read: list[tuple[str, int]] = []
    event = store.event

    def counted(host_id: str, seq: int) -> object:
        read.append((host_id, seq))
        return event(host_id, seq)

    monkeypatch.setattr(store, "event", counted)

    async def take(service: RegisterService) -> None:
        await service.take_host_events()
        await service.take_host_events()

    _run(store, take)
    assert read == [("ws-01", 3)]
    titles = [f.title for f in store.findings()]
    assert titles == ["未登记的密级标志 (label not in the register): ws-01:/srv/secret/v3"]
