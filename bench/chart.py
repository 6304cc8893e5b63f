"""The benchmark's figures as one SVG (bench/results.svg): latency percentiles and CPU per
request, one bar per target, drawn from the same rows as the results page.

Plain SVG text, no plotting library: the page must render on GitHub and in any browser,
and the harness must not pull a plotting stack into the image's dependencies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from xml.sax.saxutils import escape

from bench.stats import Summary

WIDTH = 760
ROW = 22
LABEL_WIDTH = 250
BAR_WIDTH = WIDTH - LABEL_WIDTH - 90
PERCENTILES = (("p50", "#4c78a8"), ("p90", "#f58518"), ("p99", "#e45756"))
CPU_COLOUR = "#54a24b"


def _bars(
    top: int, title: str, rows: Sequence[tuple[str, list[tuple[float, str, str]]]]
) -> tuple[list[str], int]:
    """A titled block of horizontal bars; ``rows`` are (label, [(value, text, colour)])."""
    values = [value for _, bars in rows for value, _, _ in bars if not math.isnan(value)]
    scale = BAR_WIDTH / max(values) if values and max(values) > 0 else 0.0
    parts = [f'<text x="8" y="{top + 16}" font-weight="bold">{escape(title)}</text>']
    y = top + 28
    for label, bars in rows:
        parts.append(f'<text x="8" y="{y + 14}">{escape(label)}</text>')
        for value, text, colour in bars:
            if math.isnan(value):
                continue
            width = max(1.0, value * scale)
            parts.append(
                f'<rect x="{LABEL_WIDTH}" y="{y + 3}" width="{width:.1f}" height="{ROW - 8}"'
                f' fill="{colour}"><title>{escape(text)}</title></rect>'
            )
            parts.append(
                f'<text x="{LABEL_WIDTH + width + 4:.1f}" y="{y + 14}" font-size="11">'
                f"{escape(text)}</text>"
            )
            y += ROW - 4
        y += 8
    return parts, y


def results_svg(rows: Sequence[Summary], title: str) -> str:
    """Latency p50/p90/p99 (64 connections) and CPU µs per request, per target."""
    latency = [
        (
            row.label,
            [
                (getattr(row, f"{name}_ms"), f"{name} {getattr(row, f'{name}_ms'):.2f} ms", colour)
                for name, colour in PERCENTILES
            ],
        )
        for row in rows
    ]
    cpu = [
        (row.label, [(row.cpu_us, f"{row.cpu_us:.0f} µs CPU/req", CPU_COLOUR)])
        for row in rows
        if not math.isnan(row.cpu_us)
    ]
    head, y = _bars(28, "Latency at 64 connections (ms, lower is better)", latency)
    tail, end = _bars(y + 8, "CPU per request (µs, lower is better)", cpu)
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{end + 12}"'
            ' font-family="sans-serif" font-size="12">',
            f'<rect width="{WIDTH}" height="{end + 12}" fill="white"/>',
            f'<text x="8" y="18" font-size="14">{escape(title)}</text>',
            *head,
            *tail,
            "</svg>",
            "",
        ]
    )
