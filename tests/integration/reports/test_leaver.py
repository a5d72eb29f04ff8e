"""The leaver review (离职审查) of a seeded person, rendered and read back."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from collector.reports import build_leaver, render_html, render_pdf
from tests.integration.reports import pdf
from tests.integration.reports.conftest import Seeded
from tests.integration.reports.seed import ALLOW, DENY, FINDINGS, NOW


def _days_used(seeded: Seeded, user: str) -> set[tuple[str, str]]:
    return {
        (s.host, s.time.date().isoformat())
        for s in seeded.specs
        if s.kind == "file_access" and s.fields["user"] == user
    }


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_leaver_sheet_lists_what_the_person_knew(
    seeded: Seeded, tmp_path: Path, artifacts: Path, poppler: None
) -> None:
    report = build_leaver(
        seeded.store,
        "chen",
        policies_dir=seeded.policies_dir,
        verify_key_path=seeded.key_path,
        unit="某某研究所",
        now=NOW,
    )
    out = tmp_path / "leaver.pdf"
    out.write_bytes(render_pdf(report, "zh"))
    text = pdf.pdftotext(out)
    assert "离职保密审查表" in text and "陈静" in text and "离岗审查中" in text
    assert "通过" in pdf.pdftotext(out, page=1)

    # 1. classified files opened: per (path, label), with count, first and last access
    opened = [
        s
        for s in seeded.specs
        if s.kind == "file_access"
        and s.fields["user"] == "chen"
        and s.fields["decision"] == ALLOW
        and s.fields["level"] >= 1
    ]
    files = pdf.section(text, "1. 本人打开过的涉密文件", "2. ")
    for s in opened:
        assert s.fields["path"] in files
        assert s.fields["label_id"] in files
    total = sum(s.fields["count"] or 1 for s in opened)
    # first access, last access (the folded event's last repeat), count
    assert re.search(rf"2026-07-02 16:00:00\s+2026-07-02 16:05:00\s+{total}\s", files)

    # 2. denied
    denied = [
        s
        for s in seeded.specs
        if s.kind == "file_access" and s.fields["user"] == "chen" and s.fields["decision"] == DENY
    ]
    refused = pdf.section(text, "2. 被拒绝的访问", "3. ")
    assert "离岗/离职人员" in refused
    assert str(sum(s.fields["count"] for s in denied)) in refused

    # 3. devices attached to the computers chen used on those days
    days = _days_used(seeded, "chen")
    attached = [
        s
        for s in seeded.specs
        if s.kind == "device"
        and s.fields["action"] == "add"
        and (s.host, s.time.date().isoformat()) in days
    ]
    devices = pdf.section(text, "3. 本人使用计算机当日接入的外接设备", "4. ")
    assert [s.fields["serial"] for s in attached] == ["BM0002"]
    assert "BM0002" in devices and "BM0001" not in devices

    # 4. meetings whose attendee check names chen
    meetings = pdf.section(text, "4. 参加或检查的涉密会议", "5. ")
    assert "M-002" in meetings and "M-001" not in meetings and "参会人员" in meetings

    # 5. open findings naming chen, and the sign-off block
    findings = pdf.section(text, "5. 涉及本人的未关闭问题", "审查签字")
    named = [f[0] for f in FINDINGS if f[2] == "chen" and f[4] != "closed"]
    assert named == ["陈静离职交接未完成"]
    assert named[0] in findings and "U盘违规接入" not in findings
    assert "本人签字" in text and "保密管理员" in text and "部门负责人" in text

    pages = pdf.render_pages(out, tmp_path / "leaver", dpi=80, first=1, last=2)
    assert pdf.ink(pages[0]) > 0.01
    shutil.copy(pages[0], artifacts / "leaver-page1.png")
    shutil.copy(pages[-1], artifacts / "leaver-page2.png")

    html = render_html(report, "zh")
    assert report.digest in html


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_uid_outside_the_register_is_searched_by_uid(
    seeded: Seeded, tmp_path: Path, poppler: None
) -> None:
    report = build_leaver(seeded.store, "4242", policies_dir=seeded.policies_dir, now=NOW)
    assert report.figures["known"] is False
    assert report.figures["files_total"] == 0
    assert report.figures["denied_total"] == 1
    out = tmp_path / "uid.pdf"
    out.write_bytes(render_pdf(report, "en"))
    text = pdf.pdftotext(out)
    assert "Not in the register" in text and "/srv/secret/rd/spec.pdf" in text


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_period_limits_the_search(seeded: Seeded) -> None:
    h1 = build_leaver(seeded.store, "zhang", period="2026-H1", policies_dir=seeded.policies_dir)
    everything = build_leaver(seeded.store, "zhang", policies_dir=seeded.policies_dir)
    assert h1.figures["accesses"] == 2
    assert everything.figures["accesses"] == 2 + 3 + 1
