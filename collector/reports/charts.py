"""Charts as SVG, from matplotlib, ready to embed as ``data:`` images.

Text is drawn as glyph outlines (``svg.fonttype = path``) with Noto Sans CJK, so Chinese
labels look the same in a browser and in WeasyPrint whatever fonts either has. Charts
are embedded through ``<img src="data:...">`` rather than inline ``<svg>``: an image
cannot run script or restyle the page, whatever text its labels carry.

Only the object-oriented API is used (no pyplot): nothing global changes and nothing
opens a window; settings apply inside ``rc_context`` only.
"""

from __future__ import annotations

import base64
import functools
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
from matplotlib import font_manager
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, StrMethodFormatter

_logger = logging.getLogger(__name__)

#: Debian fonts-noto-cjk; the first that exists is registered with matplotlib.
CJK_FONT_FILES = (
    Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"),
    Path("/usr/share/fonts/opentype/noto/NotoSansCJKsc-Regular.otf"),
    Path("/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc"),
)
CJK_FAMILY = "Noto Sans CJK SC"
ALLOWED = "#3b6ea5"  # muted blue: what was allowed
DENIED = "#b8312f"  # document red: what was denied or failed
NEUTRAL = "#6b7b8c"
WIDTH_IN = 6.6  # inches: the text width of an A4 page with 2 cm margins
MAX_BARS = 15  # categories per chart; the tables beside them list everything
_THOUSANDS = StrMethodFormatter("{x:,.0f}")


def _counts_axis(axis: Any) -> None:
    """Whole numbers with thousands separators: these axes count events."""
    axis.set_major_locator(MaxNLocator(integer=True))
    axis.set_major_formatter(_THOUSANDS)


@functools.cache
def _font_family() -> list[str]:
    """Register the CJK font once; the family list charts use."""
    for path in CJK_FONT_FILES:
        if path.is_file():
            font_manager.fontManager.addfont(str(path))
            return [CJK_FAMILY, "DejaVu Sans"]
    _logger.warning(
        "no Noto CJK font found (%s): Chinese chart labels will be missing; "
        "install the Debian package fonts-noto-cjk",
        ", ".join(str(p) for p in CJK_FONT_FILES),
    )
    return ["DejaVu Sans"]


def _rc() -> dict[Any, Any]:  # matplotlib types keys as a Literal of every rc name
    return {
        "font.family": _font_family(),
        "font.size": 9,
        "svg.fonttype": "path",
        "svg.hashsalt": "baomi-report",  # stable ids: the same figures give the same SVG
        "axes.unicode_minus": False,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.titlesize": 10,
        "axes.titleweight": "bold",
    }


def _data_uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _shorten(label: str, limit: int = 24) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def bar_chart(
    categories: Sequence[str],
    series: Sequence[tuple[str, Sequence[int], str]],
    *,
    title: str,
    horizontal: bool = False,
    stacked: bool = False,
    height_in: float = 2.6,
) -> str:
    """Bars per category (``series``: name, values, colour); a data: URI of the SVG."""
    cats = [_shorten(c) for c in categories[:MAX_BARS]]
    with mpl.rc_context(_rc()):
        fig = Figure(figsize=(WIDTH_IN, height_in), layout="constrained")
        ax = fig.subplots()
        positions = list(range(len(cats)))
        width = 0.7 if stacked or len(series) == 1 else 0.8 / len(series)
        bottom: list[float] = [0.0] * len(cats)
        for i, (name, values, colour) in enumerate(series):
            vals = list(values[: len(cats)])
            shift = 0.0 if stacked else (i - (len(series) - 1) / 2) * width
            offset = [p + shift for p in positions]
            if horizontal:
                bars = ax.barh(offset, vals, height=width, left=bottom, color=colour, label=name)
            else:
                bars = ax.bar(offset, vals, width=width, bottom=bottom, color=colour, label=name)
            if not stacked or i == len(series) - 1:
                totals = [b + v for b, v in zip(bottom, vals, strict=True)] if stacked else vals
                ax.bar_label(
                    bars, labels=[f"{round(v):,}" if v else "" for v in totals], fontsize=7
                )
            if stacked:
                bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        if horizontal:
            ax.set_yticks(positions, cats)
            ax.invert_yaxis()
            ax.margins(x=0.12)
            _counts_axis(ax.xaxis)
        else:
            ax.set_xticks(positions, cats)
            ax.margins(y=0.15)
            _counts_axis(ax.yaxis)
        ax.set_title(title, loc="left")
        if len(series) > 1:
            ax.legend(frameon=False, fontsize=8)
        return _data_uri(fig)


def line_chart(
    days: Sequence[str],
    series: Sequence[tuple[str, Sequence[int], str]],
    *,
    title: str,
    height_in: float = 2.4,
) -> str:
    """Values per day (``series``: name, values, colour); a data: URI of the SVG."""
    with mpl.rc_context(_rc()):
        fig = Figure(figsize=(WIDTH_IN, height_in), layout="constrained")
        ax = fig.subplots()
        x = list(range(len(days)))
        for name, values, colour in series:
            ax.plot(x, list(values), color=colour, linewidth=1.2, label=name)
        if days:
            step = max(1, len(days) // 8)
            ticks = x[::step]
            ax.set_xticks(ticks, [days[i][5:] for i in ticks])  # MM-DD
        ax.set_ylim(bottom=0)
        _counts_axis(ax.yaxis)
        ax.set_title(title, loc="left")
        ax.grid(axis="y", linewidth=0.4, alpha=0.5)
        if len(series) > 1:
            ax.legend(frameon=False, fontsize=8)
        return _data_uri(fig)
