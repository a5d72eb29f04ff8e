"""Destruction orders and records at the collector, and the leaver handover: steps in
the collector's chain (a real SQLite store), the register rebuilt from them, the
destruction register's rows, and sign-off refused while items are held."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from baomi.v1 import events_pb2

from collector import handover
from collector.destruction import destructions, find_destruction, request_destruction
from collector.ingest import CollectorChain, Writer
from collector.register import Register, RegisterError, RegisterService, drift
from collector.reports.destruction import build_destruction
from collector.store.sqlite import SQLiteStore
from tests.unit.collector.test_register import _file, _host_event, _request, _run


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "c.db")
    s.add_host("ws-01", b"\x01" * 32, 1)  # the register takes requests for enrolled hosts
    try:
        yield s
    finally:
        s.close()


def _in_force(store: SQLiteStore) -> str:
    """An entry of ws-01 in force, requested by zhang and approved by sue."""

    async def steps(service: RegisterService) -> str:
        rid = await service.request(_request(), actor="zhang@ws-01")
        order_id = await service.approve(rid, actor="sue")
        result = events_pb2.LabelOrderResult(order_id=order_id, register_id=rid, ok=True)
        _host_event(store, 1, label_order_result=result)
        await service.take_host_events()
        return rid

    return _run(store, steps)  # type: ignore[return-value]


def _destroyed_event(store: SQLiteStore, seq: int, rid: str, order_id: str) -> None:
    detail = json.dumps({"sha256": "cd" * 32, "order": order_id, "by": "alice"})
    home = "/srv/secret/plan.txt"
    change = events_pb2.FileChange(
        path=home, change="destroyed", level=2, label_id=rid, home=home, detail=detail
    )
    _host_event(store, seq, file_change=change)
    result = events_pb2.LabelOrderResult(order_id=order_id, register_id=rid, ok=True)
    _host_event(store, seq + 1, label_order_result=result)


def test_a_destruction_order_names_the_person_and_the_report_marks_it_destroyed(
    store: SQLiteStore,
) -> None:
    rid = _in_force(store)

    async def order(service: RegisterService) -> str:
        with pytest.raises(RegisterError, match="login name"):
            await request_destruction(service, rid, person="", actor="sue")
        with pytest.raises(RegisterError, match="no register entry"):
            await request_destruction(service, "DM-nope", person="alice", actor="sue")
        await request_destruction(service, rid, person="alice", actor="sue")
        assert service.orders_for("ws-01") == []  # nothing before an approval
        with pytest.raises(RegisterError, match="in progress"):  # one at a time
            await request_destruction(service, rid, person="bob", actor="sue")
        order_id = await service.approve(rid, actor="tom")
        (signed,) = service.orders_for("ws-01")
        assert (signed.order_id, signed.action, list(signed.scope)) == (
            order_id, "destroy", ["user:alice"],
        )  # fmt: skip
        assert (signed.level, signed.home, signed.register_id) == (2, "/srv/secret/plan.txt", rid)
        return order_id

    order_id: str = _run(store, order)  # type: ignore[assignment]
    entry = Register.load(store).entries[rid]
    # Until the host reports it, the entry stays in force (its label is still there).
    assert entry.status == "in_force" and entry.level == 2 and entry.approver == "sue"
    assert [h.step for h in entry.history][-2:] == ["requested", "approved"]
    assert drift(Register.load(store), "ws-01", [_file(register_id=rid)]) == []

    _destroyed_event(store, 2, rid, order_id)
    _run(store, lambda service: service.take_host_events())
    register = Register.load(store)
    assert register.entries[rid].status == "destroyed"
    assert drift(register, "ws-01", []) == []  # destroyed: not missing on the host
    (done,) = destructions(store, register)
    assert (done.register_id, done.person, done.approver, done.order_id, done.title) == (
        rid, "alice", "tom", order_id, "年度计划",
    )  # fmt: skip
    assert find_destruction(store, register, "ws-01/2") == done
    with pytest.raises(RegisterError, match="not a recorded destruction"):
        find_destruction(store, register, "ws-01/3")
    with pytest.raises(RegisterError, match="HOST/SEQ"):
        find_destruction(store, register, "ws-01")
    (row,) = build_destruction(store, "1970").figures["rows"]  # the test events are of 1970
    assert (row["register_id"], row["sha256"], row["record"]) == (rid, "cd" * 32, "ws-01/2")
    assert build_destruction(store, "2026").figures["rows"] == []


def test_a_leaver_review_signs_off_only_when_nothing_is_held(store: SQLiteStore) -> None:
    rid = _in_force(store)
    access = events_pb2.FileAccess(path="/srv/secret/plan.txt", user="alice", label_id=rid,
                                   decision=events_pb2.DECISION_ALLOW, level=2)  # fmt: skip
    _host_event(store, 5, file_access=access)
    denied = events_pb2.FileAccess(path="/srv/secret/plan.txt", user="bob", label_id=rid,
                                   decision=events_pb2.DECISION_DENY, level=2)  # fmt: skip
    _host_event(store, 6, file_access=denied)
    register = Register.load(store)
    (zhang,) = handover.items(store, register, "zhang")
    assert (zhang.entry.register_id, zhang.why, zhang.state) == (rid, ("requester",), "held")
    (alice,) = handover.items(store, register, "alice")
    assert alice.why == ("reader",)
    assert handover.items(store, register, "bob") == []  # refused: never held it
    with pytest.raises(RegisterError, match=f"still held \\({rid}\\)"):
        handover.check_signoff([zhang])

    async def close() -> None:
        writer = Writer(store)
        chain = CollectorChain(writer)
        common = {"login": "zhang", "register_id": rid, "actor": "sue"}
        with pytest.raises(RegisterError, match="returned or destroyed"):
            await handover.close_item(store, register, chain, how="lost", record="", **common)
        with pytest.raises(RegisterError, match="point at the destruction record"):
            await handover.close_item(store, register, chain, how="destroyed", record="", **common)
        with pytest.raises(RegisterError, match="holds no register item"):
            await handover.close_item(store, register, chain, how="returned", record="",
                                      **{**common, "login": "bob"})  # fmt: skip
        await handover.close_item(store, register, chain, how="returned", record="", **common)
        await asyncio.to_thread(writer.close)

    asyncio.run(close())
    register = Register.load(store)
    (zhang,) = handover.items(store, register, "zhang")
    assert zhang.state == "returned"
    handover.check_signoff([zhang])
    assert handover.items(store, register, "alice")[0].state == "held"  # hers is her own
    assert register.entries[rid].history[-1].detail == "returned: leaver zhang"
