# The labels are the report's Chinese headings, full-width punctuation and all.
# ruff: noqa: RUF001
"""The half-year inspection report over a seeded record, rendered and read back.

Runs on SQLite and on PostgreSQL (the ``store`` fixture). Figures are checked in the PDF
with pdftotext against expectations computed from the seed (tests/.../expect.py); fonts
with pdffonts; pages with pdftoppm (kept under test-artifacts/reports/).
"""

from __future__ import annotations

import hashlib
import html as html_lib
import json
import re
import shutil
from pathlib import Path

import pytest

from collector.reports import build_inspection, content_digest, render_html, render_pdf
from collector.reports.common import canonical_json
from tests.integration.reports import expect, pdf
from tests.integration.reports.conftest import Seeded
from tests.integration.reports.seed import ATTACK_CSV, ATTACK_IMG, NOW

BLUE = (0x3B, 0x6E, 0xA5)  # charts.ALLOWED: the bars of the access chart


def _backend(seeded: Seeded) -> str:
    return "postgres" if seeded.store_url.startswith("postgres") else "sqlite"


@pytest.fixture
def report_files(seeded: Seeded, tmp_path: Path, poppler: None) -> tuple[Path, str, object]:
    """The zh inspection report of 2026-H2 as PDF and HTML."""
    report = build_inspection(
        seeded.store,
        "2026-H2",
        policies_dir=seeded.policies_dir,
        verify_key_path=seeded.key_path,
        unit="某某研究所",
        now=NOW,
    )
    out = tmp_path / "inspection.pdf"
    out.write_bytes(render_pdf(report, "zh"))
    return out, render_html(report, "zh"), report


def test_figures_in_the_pdf_equal_the_seeded_history(
    seeded: Seeded, report_files: tuple[Path, str, object]
) -> None:
    out, _, _ = report_files
    text = pdf.pdftotext(out)
    specs = seeded.specs

    # cover
    cover = pdf.pdftotext(out, page=1)
    assert "保密工作定期检查报告" in cover
    assert "某某研究所" in cover
    assert "2026年下半年" in cover
    assert "记录完整性校验" in cover and "通过" in cover and "未通过" not in cover

    # 1. summary, this period and the previous one
    this, before = expect.summary(specs, expect.H2), expect.summary(specs, expect.H1)
    for label, value in this.items():
        assert pdf.row(text, label)[:2] == [value, before[label]], label
    assert this["涉密文件访问（次）"] == "23"  # a hand check of the arithmetic above

    # 2. hosts: 4 known (one enrolled but silent), 3 reporting, 2 online at the end, 1 drift
    assert pdf.kpis(text, "登记主机", "本期有上报", "期末在线", "本期无上报", "策略版本不一致") == [
        "4", "3", "2", "1", "1",
    ]  # fmt: skip
    assert seeded.expected_policy in text
    assert re.search(r"sec-pc-03\s+0\s", text)

    # 3. access by level, denials by reason, top users and files
    levels = expect.by_level(specs)
    for level, name in ((3, "绝密"), (2, "机密"), (1, "秘密"), (0, "非密")):
        allowed, denied = levels[level]
        assert pdf.row(text, name)[:3] == [str(allowed), str(denied), str(allowed + denied)]
    for heading, n in expect.denials(specs).items():
        assert pdf.row(text, heading)[0] == str(n), heading
    for user in ("zhang", "li", "chen"):
        assert pdf.row(text, user)[:4] == [str(n) for n in expect.user_levels(specs, user)], user
    assert re.search(r"/srv/secret/finance/budget\.xlsx\s+机密\s+7\s+0\s+2\s+1", text)

    # 4. devices: blocked by class, the registered stick, the blocked list
    devices = pdf.section(text, "四、外接设备", "五、违规外联")
    for name in ("手机", "音频设备"):
        assert pdf.row(devices, name)[0] == "1"
    assert re.search(r"BM0001\s+保密U盘 Kingston\s+2\s+2\s", devices)
    assert "BM0002" in devices and "CAM1" not in devices  # CAM1 was blocked in H1

    # 5. links
    links = pdf.section(text, "五、违规外联", "六、")
    assert "wlan0" in links and "usb0" in links and "enp3s0" not in links

    # 6. meetings: per room, failed items
    meetings = pdf.section(text, "六、涉密会议会前检查", "七、")
    assert pdf.row(meetings, "第一会议室")[:3] == ["2", "1", "50.0%"]
    assert pdf.row(meetings, "保密会议室")[:3] == ["1", "0", "0.0%"]
    assert pdf.row(meetings, "C4")[1:3] == ["2", "0"]  # C4 检查项4 failed twice
    assert pdf.row(meetings, "C9")[1:3] == ["1", "0"]

    # 7. findings
    findings = pdf.section(text, "七、问题整改跟踪", "八、")
    wanted = expect.findings_figures()
    assert pdf.kpis(findings, *wanted) == [str(n) for n in wanted.values()]
    assert re.search(r"U盘违规接入.*2026-11-30 \(已逾期\)", findings)
    assert "旧问题" not in findings  # closed before the period

    # 8. declassified: three events, two files
    assert "本期自行解密文件 2 个" in text

    # 9. training: li lapses on day 30, wang on day 31 (not listed), zhao lapsed
    training = pdf.section(text, "九、保密培训即将到期人员", "十、")
    assert pdf.row(training, "li")[-1] == "30"
    assert "已过期" in pdf.section(training, "zhao", "\n")
    assert "wang" not in training and "zhang" not in training

    # 10. leavers: chen (leaving) and wu (left)
    leavers = pdf.section(text, "十、本期离岗离职人员", "十一、")
    assert pdf.row(leavers, "chen")[:2] == ["2", "3"]
    assert pdf.row(leavers, "wu")[:2] == ["1", "0"]
    assert "离岗审查中" in leavers and "已离职" in leavers

    # 11. how the figures were obtained
    method = pdf.section(text, "十一、数据来源与统计方法", None)
    assert "2026-07-01T00:00:00+08:00" in method and "kind = file_access" in method


def test_every_page_footer_carries_the_digest(report_files: tuple[Path, str, object]) -> None:
    out, html, report = report_files
    digest = report.digest  # type: ignore[attr-defined]
    assert digest == content_digest(report.figures)  # type: ignore[attr-defined]
    pages = pdf.page_count(out)
    assert pages >= 5  # cover, then the eleven sections
    for page in range(1, pages + 1):
        footer = pdf.pdftotext(out, page=page).strip().splitlines()[-1]
        assert digest in footer, f"page {page}: {footer!r}"
        assert f"第{page}页/共{pages}页" in pdf.squash(footer)
    assert digest in html


def test_the_digest_depends_on_the_record_not_on_when_it_was_made(seeded: Seeded) -> None:
    def digest(now: object) -> str:
        return build_inspection(
            seeded.store,
            "2026-H2",
            policies_dir=seeded.policies_dir,
            verify_key_path=seeded.key_path,
            unit="某某研究所",
            now=now,  # type: ignore[arg-type]
        ).digest

    later = NOW.replace(month=3)
    assert digest(NOW) == digest(later)
    other_unit = build_inspection(
        seeded.store, "2026-H2", policies_dir=seeded.policies_dir, unit="另一单位", now=NOW
    )
    assert other_unit.digest != digest(NOW)
    # the digest is SHA-256 of the canonical JSON, so anyone can recompute it from --json
    assert other_unit.digest == hashlib.sha256(canonical_json(other_unit.figures)).hexdigest()
    assert content_digest(json.loads(canonical_json(other_unit.figures))) == other_unit.digest


def test_cjk_fonts_are_embedded(report_files: tuple[Path, str, object]) -> None:
    out, _, _ = report_files
    fonts = pdf.pdffonts(out)
    cjk = [f for f in fonts if "CJK" in f[0]]
    assert cjk, fonts
    # columns after the name: type (one or more words), encoding, emb, sub, uni, id, gen
    assert all(f[-5] == "yes" for f in cjk), cjk


def test_pages_render_a_cover_and_charts(
    seeded: Seeded, report_files: tuple[Path, str, object], tmp_path: Path, artifacts: Path
) -> None:
    out, _, _ = report_files
    pages = pdf.render_pages(out, tmp_path / "page")
    assert len(pages) == pdf.page_count(out)
    assert pdf.ink(pages[0]) > 0.01  # the cover is not blank
    blue = [pdf.colour_pixels(p, BLUE) for p in pages]
    chart_page = max(range(len(pages)), key=blue.__getitem__)
    assert blue[chart_page] > 2000, blue  # the stacked bars of the access chart
    backend = _backend(seeded)
    shutil.copy(pages[0], artifacts / f"inspection-{backend}-page1.png")
    shutil.copy(pages[chart_page], artifacts / f"inspection-{backend}-chart.png")
    # and a sharper copy of both for people to read
    for page, name in ((1, "page1"), (chart_page + 1, "chart")):
        sharp = pdf.render_pages(out, tmp_path / f"sharp{page}", dpi=100, first=page, last=page)
        shutil.copy(sharp[0], artifacts / f"inspection-{backend}-{name}-100dpi.png")


def test_attacker_strings_are_text(report_files: tuple[Path, str, object]) -> None:
    out, html, _ = report_files
    # HTML: escaped, never markup
    assert html_lib.escape(ATTACK_IMG) in html
    assert "<img src=x" not in html
    assert html_lib.escape(ATTACK_CSV, quote=True).replace("&#x27;", "&#39;") in html
    assert re.search(r"<img(?![^>]*src=\"data:image/svg\+xml;base64,)", html) is None
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    # PDF: the very characters, as text (a narrow column may wrap them)
    text = pdf.squash(pdf.pdftotext(out, mode="raw"))
    assert pdf.squash(ATTACK_IMG) in text
    assert pdf.squash(ATTACK_CSV) in text


def test_english_report(seeded: Seeded, tmp_path: Path, poppler: None) -> None:
    report = build_inspection(
        seeded.store, "2026-Q4", policies_dir=seeded.policies_dir, unit="Institute", now=NOW
    )
    out = tmp_path / "en.pdf"
    out.write_bytes(render_pdf(report, "en"))
    text = pdf.pdftotext(out)
    assert "Periodic secrecy inspection report" in text
    assert "Q4 2026" in text
    assert "not verified" in text  # no key given
    specs = seeded.specs
    q4 = (expect.H2[1].replace(year=2026, month=10), expect.H2[1])
    denied = sum(expect.count(s) for s in expect.accesses(specs, q4) if s.fields["decision"] == 2)
    assert pdf.row(text, "Denied accesses")[0] == str(denied)
    assert "page 1 of" in text


def test_a_damaged_record_fails_verification_on_the_cover(
    seeded: Seeded, tmp_path: Path, poppler: None
) -> None:
    from baomi.v1 import events_pb2

    from collector.ingest import to_row

    # An event slipped in below the signed checkpoint's heads' time but not covered by it:
    # audit verify calls it inserted.
    head_seq, head_hash = seeded.store.head("sec-pc-01") or (0, b"")
    forged = events_pb2.Event(
        host_id="sec-pc-01",
        seq=head_seq + 1,
        prev_hash=head_hash,
        file_access=events_pb2.FileAccess(path="/srv/secret/x", decision=1, level=3, count=1),
    )
    forged.time.FromDatetime(expect.H2[0].replace(month=12))
    seeded.store.append([to_row(forged, "file_access", 1_000_000)])
    report = build_inspection(
        seeded.store,
        "2026-H2",
        policies_dir=seeded.policies_dir,
        verify_key_path=seeded.key_path,
        now=NOW,
    )
    verdict = report.meta["verification"]
    assert not verdict["ok"] and verdict["damage"] == 1 and verdict["damage_in_period"] == 1
    out = tmp_path / "damaged.pdf"
    out.write_bytes(render_pdf(report, "zh"))
    assert "未通过" in pdf.pdftotext(out, page=1)


def test_the_cover_verifies_against_the_witness_file(seeded: Seeded, tmp_path: Path) -> None:
    """With the collector's witness file, a checkpoint witnessed but gone from the store
    fails the cover's verification."""
    from collector import checkpoint
    from collector.store.base import CheckpointRow

    witness = tmp_path / "checkpoints.witness"
    rows = seeded.store.checkpoints()
    for row in rows:
        checkpoint.append_witness(witness, row)

    def verdict() -> dict[str, object]:
        report = build_inspection(
            seeded.store,
            "2026-H2",
            policies_dir=seeded.policies_dir,
            verify_key_path=seeded.key_path,
            witness_path=witness,
            now=NOW,
        )
        return report.meta["verification"]  # type: ignore[no-any-return]

    assert verdict()["ok"]
    last = rows[-1]
    checkpoint.append_witness(
        witness, CheckpointRow(last.id + 1000, last.created_us, last.body, last.signature)
    )
    found = verdict()
    assert not found["ok"] and found["damage"] == 1
    assert f"witnessed checkpoint {last.id + 1000} is not in the store" in str(found["examples"])
