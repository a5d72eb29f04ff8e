"""``baomi-collector report ...`` as an operator runs it: a real subprocess."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.reports import pdf
from tests.integration.reports.conftest import Seeded

TIMEOUT_S = 120  # seconds per CLI run (a report of the small seeded record takes ~3 s)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the collector's CLI."""
    return subprocess.run(
        [sys.executable, "-m", "collector.cli", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_report_commands(seeded: Seeded, tmp_path: Path, poppler: None) -> None:
    common = [
        "--store", seeded.store_url,
        "--pki", str(seeded.key_path.parent),
        "--policies", str(seeded.policies_dir),
    ]  # fmt: skip
    out, figures = tmp_path / "h2.pdf", tmp_path / "h2.json"
    run = cli(
        "report", "inspection", "--period", "2026-H2", "--out", str(out), "--json", str(figures),
        "--keep", "--unit", "某某研究所", *common,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    digest = hashlib.sha256(figures.read_bytes()).hexdigest()
    assert f"digest {digest}" in run.stdout and "record OK" in run.stdout
    assert out.read_bytes().startswith(b"%PDF")
    assert digest in pdf.pdftotext(out, page=1)
    assert json.loads(figures.read_text())["period"] == "2026-H2"

    listed = cli("report", "list", "--store", seeded.store_url)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["kind"], r["subject"], r["format"], r["digest"]) for r in rows] == [
        ("inspection", "2026-H2", "pdf", digest)
    ]
    copy = tmp_path / "copy.pdf"
    got = cli(
        "report", "get", "--id", str(rows[0]["id"]), "--out", str(copy), "--store", seeded.store_url
    )
    assert got.returncode == 0, got.stderr
    assert copy.read_bytes() == out.read_bytes()

    host = tmp_path / "host.html"  # the format follows the suffix
    run = cli(
        "report", "host", "--host", "sec-pc-01", "--period", "2026-Q3", "--out", str(host), *common
    )
    assert run.returncode == 0, run.stderr
    assert "涉密计算机保密检查记录" in host.read_text(encoding="utf-8")

    leaver = tmp_path / "chen.pdf"
    run = cli("report", "leaver", "--user", "chen", "--lang", "en", "--out", str(leaver), *common)
    assert run.returncode == 0, run.stderr
    assert "Leaver secrecy review" in pdf.pdftotext(leaver)

    scheduled = cli("report", "scheduled", "--out-dir", str(tmp_path / "sched"), *common)
    assert scheduled.returncode == 0, scheduled.stderr
    assert "inspection" in scheduled.stdout


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_mistakes_are_explained(seeded: Seeded, tmp_path: Path) -> None:
    out = str(tmp_path / "x.pdf")
    bad = cli(
        "report", "inspection", "--period", "2026-H3", "--out", out, "--store", seeded.store_url
    )
    assert bad.returncode == 2 and "2026-H2" in bad.stderr
    bad = cli(
        "report",
        "host",
        "--host",
        "nope",
        "--period",
        "2026",
        "--out",
        out,
        "--store",
        seeded.store_url,
    )
    assert bad.returncode == 2 and "unknown host" in bad.stderr
    bad = cli("report", "get", "--id", "99", "--out", out, "--store", seeded.store_url)
    assert bad.returncode == 2 and "report list" in bad.stderr
