"""Attacker-chosen strings in reports: a right-to-left override, terminal escapes, a
newline and BEL in a USB name, serial and file path come out of the PDF (read back
with pdftotext) and HTML as visible escapes (baomi.display; issue 13)."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.reports import build_host, build_inspection, build_leaver, render_html, render_pdf
from collector.store import Store
from tests.collector_harness import init_pki
from tests.integration.reports import pdf, seed

NAME = "Backup\u202egnp.exe"
SERIAL = "SN\u202e10\x1b[2J\x07"
PATH = "/srv/secret/\u2067plan\u2069\x1b[31m\n.docx"
SHOWN = (
    "Backup\\u202egnp.exe",
    "SN\\u202e10\\x1b[2J\\x07",
    "/srv/secret/\\u2067plan\\u2069\\x1b[31m\\n.docx",
)
RAW = ("\u202e", "\u2067", "\u2069", "\x1b", "\x07")


@pytest.fixture
def hostile(store: Store, tmp_path: Path) -> tuple[Store, Path, Path]:
    pki_dir = tmp_path / "pki"
    init_pki(pki_dir)
    policies_dir, version = seed.policies(tmp_path / "policies")
    specs = [
        seed.status("sec-pc-01", "2026-10-01 08:00", version),
        seed.device("sec-pc-01", "2026-10-01 09:00", "storage", SERIAL, NAME, seed.DENY),
        seed.access("sec-pc-01", "2026-10-01 10:00", "zhang", 1001, PATH, 3, seed.ALLOW),
        seed.access("sec-pc-01", "2026-10-01 11:00", "li", 1002, PATH, 3, seed.DENY, "no need"),
    ]
    seed.write(store, pki_dir, specs)
    return store, policies_dir, pki_dir / "signing.pub"


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_reports_show_escapes(
    hostile: tuple[Store, Path, Path], tmp_path: Path, poppler: None
) -> None:
    store, policies_dir, key = hostile
    where = {"policies_dir": policies_dir, "verify_key_path": key, "now": seed.NOW}
    reports = {
        "host": build_host(store, "sec-pc-01", "2026-H2", **where),
        "inspection": build_inspection(store, "2026-H2", **where),
        "leaver": build_leaver(store, "zhang", period="2026-H2", **where),
    }
    for name, report in reports.items():
        html = render_html(report, "en")
        out = tmp_path / f"{name}.pdf"
        out.write_bytes(render_pdf(report, "en"))
        text = pdf.squash(pdf.pdftotext(out, mode="raw"))
        for raw in RAW:
            assert raw not in html and raw not in text, (name, f"U+{ord(raw):04X}")
        wanted = [SHOWN[2]] if name == "leaver" else list(SHOWN)
        for shown in wanted:
            assert shown in html, (name, shown)
            assert pdf.squash(shown) in text, (name, shown)
