"""Scheduled reports: made once per period, stored with their documents, listed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from collector.reports.schedule import (
    ScheduleConfig,
    generate_due,
    list_reports,
    report_document,
    run_scheduler,
)
from tests.integration.reports.conftest import Seeded
from tests.integration.reports.seed import NOW


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_due_reports_are_made_once_and_listed(seeded: Seeded, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    made = generate_due(
        seeded.store,
        out,
        NOW,
        policies_dir=seeded.policies_dir,
        verify_key_path=seeded.key_path,
        unit="某某研究所",
    )
    # 2027-01-05, a day's grace: December 2026 and the second half of 2026 are due
    assert sorted((r.subject, r.fmt) for r in made) == [
        ("2026-12", "html"), ("2026-12", "pdf"), ("2026-H2", "html"), ("2026-H2", "pdf"),
    ]  # fmt: skip
    for row in made:
        assert row.scheduled and row.kind == "inspection" and row.lang == "zh"
        document = report_document(seeded.store, row.id)
        assert document is not None and len(document) == row.size
        assert Path(row.path).read_bytes() == document
        assert document.startswith(b"%PDF" if row.fmt == "pdf" else b"<!DOCTYPE html>")
        assert len(row.digest) == 64
    # the same figures in both formats of one period
    assert len({r.digest for r in made if r.subject == "2026-H2"}) == 1

    assert generate_due(seeded.store, out, NOW, policies_dir=seeded.policies_dir) == []
    listed = list_reports(seeded.store)
    assert {r.id for r in listed} == {r.id for r in made}
    assert [r.created_us for r in listed] == sorted((r.created_us for r in listed), reverse=True)
    assert list_reports(seeded.store, "leaver") == []
    assert report_document(seeded.store, 10_000) is None


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_the_scheduler_runs_in_the_background(seeded: Seeded, tmp_path: Path) -> None:
    cfg = ScheduleConfig(
        out_dir=tmp_path / "r", policies_dir=seeded.policies_dir, formats=("html",)
    )

    async def run() -> int:
        task = asyncio.create_task(run_scheduler(seeded.store, cfg, check_seconds=0.05))
        try:
            for _ in range(600):
                if len(seeded.store.reports()) >= 2:
                    break
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        return len(seeded.store.reports())

    # whatever today is, the last month and the last half-year are due once each
    assert asyncio.run(run()) == 2
    assert sorted(p.suffix for p in (tmp_path / "r").iterdir()) == [".html", ".html"]
