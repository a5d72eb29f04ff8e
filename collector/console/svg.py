"""Charts as inline SVG, drawn on the server: no script, nothing to load.

Every text that goes into the SVG is escaped here; the result is marked safe for
Jinja because it is built only from numbers and these escaped labels.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

# Severity colours (fill attributes, not style: the CSP allows no inline style).
COLOURS = {"medium": "#e0a030", "high": "#d0502a", "critical": "#8e1b1b"}


def stacked_bars(
    labels: Sequence[str],
    series: Sequence[tuple[str, str, Sequence[int]]],
    *,
    title: str,
    width: int = 720,
    height: int = 240,
) -> Markup:
    """A stacked bar chart: ``labels`` along x; ``series`` are (key, legend, values)."""
    left, right, top, bottom = 40, 10, 24, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(s[2][i] for s in series) for i in range(len(labels))]
    peak = max([*totals, 1])
    step = plot_w / max(len(labels), 1)
    bar_w = max(step * 0.7, 1.0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" '
        'stroke="#888"/>',
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end" font-size="11">{peak}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end" font-size="11">0</text>',
    ]
    for i, label in enumerate(labels):
        x = left + i * step + (step - bar_w) / 2
        y: float = top + plot_h
        for key, legend, values in series:
            n = values[i]
            if not n:
                continue
            h = plot_h * n / peak
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'fill="{COLOURS.get(key, "#777")}"><title>{escape(label)} {escape(legend)}: '
                f"{n}</title></rect>"
            )
        if len(labels) <= 16 or i % max(len(labels) // 8, 1) == 0:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h + 14}" text-anchor="middle" '
                f'font-size="10">{escape(label)}</text>'
            )
    lx = left
    for key, legend, _ in series:
        parts.append(
            f'<rect x="{lx}" y="{height - 14}" width="10" height="10" '
            f'fill="{COLOURS.get(key, "#777")}"/>'
            f'<text x="{lx + 14}" y="{height - 5}" font-size="11">{escape(legend)}</text>'
        )
        lx += 110
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - built from numbers and escaped labels
