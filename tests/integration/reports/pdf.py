"""Reading rendered reports back: poppler's text, fonts and page images."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?%?")


def pdftotext(pdf: Path, *, mode: str = "layout", page: int | None = None) -> str:
    """The text of ``pdf`` (or one page of it) as poppler extracts it: ``layout`` keeps
    table rows on one line, ``raw`` keeps each cell's text in content order."""
    cmd = ["pdftotext", "-enc", "UTF-8", f"-{mode}"]
    if page is not None:
        cmd += ["-f", str(page), "-l", str(page)]
    return subprocess.run(
        [*cmd, str(pdf), "-"], check=True, capture_output=True, text=True, timeout=60
    ).stdout


def page_count(pdf: Path) -> int:
    """Pages in ``pdf`` (pdfinfo is poppler too)."""
    out = subprocess.run(
        ["pdfinfo", str(pdf)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return int(next(line.split()[-1] for line in out.splitlines() if line.startswith("Pages:")))


def pdffonts(pdf: Path) -> list[list[str]]:
    """pdffonts rows, split into columns (name, type ..., emb, sub, uni, ...)."""
    out = subprocess.run(
        ["pdffonts", str(pdf)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return [line.split() for line in out.splitlines()[2:] if line.strip()]


def render_pages(
    pdf: Path, prefix: Path, *, dpi: int = 50, first: int = 1, last: int = 0
) -> list[Path]:
    """PNG images of pages ``first``..``last`` (0: to the end), by pdftoppm."""
    cmd = ["pdftoppm", "-r", str(dpi), "-png", "-f", str(first)]
    if last:
        cmd += ["-l", str(last)]
    subprocess.run([*cmd, str(pdf), str(prefix)], check=True, timeout=120)
    return sorted(prefix.parent.glob(f"{prefix.name}-*.png"))


def ink(png: Path) -> float:
    """Share of pixels that are not (near) white."""
    with Image.open(png) as im:
        gray = im.convert("L")
        hist = gray.histogram()
    total = sum(hist)
    return sum(hist[:240]) / total


def colour_pixels(png: Path, rgb: tuple[int, int, int], tolerance: int = 24) -> int:
    """How many pixels are close to ``rgb`` (a chart's bar colour)."""
    with Image.open(png) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.int16)
    near = np.abs(pixels - np.array(rgb, dtype=np.int16)) <= tolerance
    return int(near.all(axis=2).sum())


def squash(text: str) -> str:
    """``text`` without any whitespace: a string wrapped over lines compares equal."""
    return re.sub(r"\s+", "", text)


def row(text: str, label: str) -> list[str]:
    """Number tokens of the first line that begins with ``label`` (after spaces)."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(label):
            return NUMBER.findall(stripped[len(label) :])
    raise AssertionError(f"no line begins with {label!r}")


def section(text: str, start: str, end: str | None) -> str:
    """The text from heading ``start`` to heading ``end`` (or the end)."""
    i = text.index(start)
    j = text.index(end, i) if end else len(text)
    return text[i:j]


def kpis(text: str, *labels: str) -> list[str]:
    """The values printed above a row of key-figure boxes labelled ``labels``."""
    lines = text.splitlines()
    for n, line in enumerate(lines):
        if all(label in line for label in labels):
            for above in reversed(lines[:n]):
                if above.strip():
                    values = NUMBER.findall(above)
                    assert len(values) >= len(labels), (above, labels)
                    return values[: len(labels)]
    raise AssertionError(f"no key figures labelled {labels}")
