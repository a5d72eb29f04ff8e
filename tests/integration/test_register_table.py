"""The register's table in both stores: upsert by register id, the newer state kept,
queries by status and host."""

from __future__ import annotations

import dataclasses

from collector.store import Store, register_table
from collector.store.register_table import RegisterRow

ROW = RegisterRow(
    register_id="DM-20261207-000001",
    host="ws-01",
    home="/srv/secret/plan.txt",
    title="年度计划",
    level=2,
    until="2099-12-31",
    scope="dept:finance",
    basis="保密事项范围 第3条",
    responsible="li",
    requester="zhang",
    approver="",
    status="pending",
    content_hash="ab" * 32,
    created_at=1_000,
    approved_at=0,
    updated_at=1_000,
)


def test_rows_are_written_by_id_and_the_newer_state_is_kept(store: Store) -> None:
    other = dataclasses.replace(
        ROW, register_id="DM-20261207-000002", host="ws-02", created_at=2_000
    )
    assert register_table.put(store, [ROW, other])
    approved = dataclasses.replace(ROW, status="in_force", approver="sue", updated_at=3_000)
    register_table.put(store, [approved])
    register_table.put(store, [dataclasses.replace(ROW, status="pending", updated_at=2_000)])
    assert register_table.entries(store) == [other, approved]  # newest first
    assert register_table.entries(store, status="in_force") == [approved]
    assert register_table.entries(store, host="ws-02") == [other]
    assert register_table.entries(store, status="in_force", host="ws-02") == []
