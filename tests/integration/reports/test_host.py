"""One computer's inspection record, rendered and read back."""

from __future__ import annotations

import datetime as dt
import itertools
import re
import shutil
from pathlib import Path

import pytest

from collector.reports import ReportError, build_host, render_pdf
from tests.integration.reports import expect, pdf
from tests.integration.reports.conftest import Seeded
from tests.integration.reports.seed import NOW, Spec

SILENCE = dt.timedelta(minutes=15)


def _silences(specs: list[Spec], host: str) -> int:
    """Gaps of more than 15 min between a host's events in H2 that no stop explains."""
    mine = sorted(
        (s for s in specs if s.host == host and expect.within(s, expect.H2)), key=lambda s: s.time
    )
    count = 0
    for before, after in itertools.pairwise(mine):
        unclean = after.kind == "tamper" and after.fields["kind"] == "unclean_stop"
        stopped = before.kind == "agent_status" and before.fields["state"] == "stopping"
        if after.time - before.time > SILENCE and not unclean and not stopped:
            count += 1
    return count


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_host_record(seeded: Seeded, tmp_path: Path, artifacts: Path, poppler: None) -> None:
    report = build_host(
        seeded.store,
        "sec-pc-02",
        "2026-H2",
        policies_dir=seeded.policies_dir,
        verify_key_path=seeded.key_path,
        now=NOW,
    )
    out = tmp_path / "host.pdf"
    out.write_bytes(render_pdf(report, "zh"))
    text = pdf.pdftotext(out)
    mine = [s for s in seeded.specs if s.host == "sec-pc-02" and expect.within(s, expect.H2)]
    assert "涉密计算机保密检查记录" in text and "sec-pc-02" in text

    overview = pdf.section(text, "1. 概况", "2. USB设备记录")
    assert pdf.kpis(overview, "本期事件")[0] == str(len(mine))
    assert seeded.expected_policy in overview and "0000000000000old" in overview
    assert re.search(r"策略一致\s+否", overview)

    usb = pdf.section(text, "2. USB设备记录", "3. 违规外联")
    devices = [s for s in mine if s.kind == "device"]
    for s in devices:
        assert s.fields["serial"] in usb
    assert len(re.findall(r"^\s*2026-\d\d-\d\d", usb, re.MULTILINE)) == len(devices)

    links = pdf.section(text, "3. 违规外联", "4. 被拒绝的访问")
    assert "usb0" in links and "enp3s0" not in links and "wlan0" not in links

    denied = pdf.section(text, "4. 被拒绝的访问", "5. 传感器异常时段")
    assert pdf.row(denied, "离岗/离职人员")[0] == "3"
    assert "/srv/secret/rd/design.dwg" in denied

    sensors = pdf.section(text, "5. 传感器异常时段", "6. 无防护时段")
    assert re.search(
        r"usb\s+degraded\s+monitor lost\s+2026-10-10 10:31:00\s+2026-10-10 12:00:00\s+1小时29分",
        sensors,
    )
    assert re.search(r"2026-12-31 23:58:00\s+—\s+—", sensors)  # still degraded at the end

    gaps = pdf.section(text, "6. 无防护时段", "审查签字")
    assert re.search(
        r"代理非正常停止\s+2026-10-10 08:00:00\s+2026-10-10 10:30:00\s+2小时30分", gaps
    )
    assert len(re.findall(r"无心跳上报", gaps)) == _silences(seeded.specs, "sec-pc-02")
    assert "unclean_stop" in gaps  # the tamper alert itself is listed

    pages = pdf.render_pages(out, tmp_path / "host", dpi=80, first=1, last=2)
    shutil.copy(pages[0], artifacts / "host-page1.png")
    shutil.copy(pages[-1], artifacts / "host-page2.png")
    assert pdf.colour_pixels(pages[-1], (0x3B, 0x6E, 0xA5)) > 100  # the activity chart


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_clean_stop_is_a_period_without_enforcement(seeded: Seeded) -> None:
    report = build_host(seeded.store, "meet-room-1", "2026-12", policies_dir=seeded.policies_dir)
    gaps = report.figures["no_enforcement"]
    assert {"cause": "stopped", "start": "2026-12-20 18:00:00", "end": "2026-12-21 08:00:00",
            "seconds": 14 * 3600} in gaps  # fmt: skip


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_unknown_host_is_refused(seeded: Seeded) -> None:
    with pytest.raises(ReportError, match="unknown host"):
        build_host(seeded.store, "no-such-pc", "2026-H2", policies_dir=seeded.policies_dir)
    with pytest.raises(ReportError):
        build_host(seeded.store, "_collector", "2026-H2", policies_dir=seeded.policies_dir)
