"""Metric curves of a sweep's trials as a small, self-contained SVG (escaped)."""

from __future__ import annotations

import html
import math
from typing import Any

from ..training.trials import TrialStatus

PALETTE = ["#1e88e5", "#43a047", "#fb8c00", "#8e24aa", "#00acc1", "#e53935", "#6d4c41",
           "#3949ab", "#c0ca33", "#d81b60"]


def curves_svg(histories: dict[int, list[dict[str, Any]]], metric: str,
               status: dict[int, str] | None = None, best: int | None = None,
               width: int = 560, height: int = 220, max_trials: int = 60) -> str:
    """One polyline per trial of ``metric`` against ``step``; aborted trials dashed grey,
    the best trial thick.  Returns an ``<svg>`` element as text."""
    status = status or {}
    series: dict[int, list[tuple[float, float]]] = {}
    for trial, rows in sorted(histories.items())[:max_trials]:
        points = [(float(r["step"]), float(r[metric])) for r in rows
                  if r.get("step") is not None and metric in r
                  and math.isfinite(float(r[metric]))]
        if points:
            series[trial] = sorted(points)
    if not series:
        return (f'<svg class="htcml-curves" width="{width}" height="40"><text x="8" y="24" '
                f'font-size="12" fill="#607d8b">no reports of {html.escape(metric)} yet'
                f"</text></svg>")
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    x0, x1 = min(xs), max(xs) or 1.0
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    left, right, top, bottom = 48, 12, 10, 26

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * (height - top - bottom)

    parts = [f'<svg class="htcml-curves" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" style="font-family:sans-serif">',
             f'<rect x="{left}" y="{top}" width="{width - left - right}" '
             f'height="{height - top - bottom}" fill="none" stroke="#cfd8dc"/>',
             f'<text x="4" y="{top + 10}" font-size="11" fill="#455a64">{y1:.3g}</text>',
             f'<text x="4" y="{height - bottom}" font-size="11" fill="#455a64">{y0:.3g}</text>',
             f'<text x="{left}" y="{height - 8}" font-size="11" fill="#455a64">step {x0:g}'
             f"</text>",
             f'<text x="{width - right - 60}" y="{height - 8}" font-size="11" '
             f'fill="#455a64">step {x1:g}</text>',
             f'<text x="{width // 2 - 30}" y="{height - 8}" font-size="11" fill="#263238">'
             f"{html.escape(metric)}</text>"]
    for n, (trial, pts) in enumerate(series.items()):
        aborted = status.get(trial, "") == TrialStatus.ABORTED.value
        colour = "#b0bec5" if aborted else PALETTE[n % len(PALETTE)]
        width_px = 3 if trial == best else 1.5
        dash = ' stroke-dasharray="4 3"' if aborted else ""
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(f'<polyline class="htcml-curve" data-trial="{trial}" points="{coords}" '
                     f'fill="none" stroke="{colour}" stroke-width="{width_px}"{dash}>'
                     f"<title>trial {trial}: {html.escape(status.get(trial, ''))}</title>"
                     f"</polyline>")
    parts.append("</svg>")
    return "".join(parts)
