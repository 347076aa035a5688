"""How each trial's metric curve looks, and the curves as a static SVG.

One style per trial (:func:`trial_styles`) is shared by the live chart
(:mod:`htcml_jupyter.views.sweep_chart`), the colour keys of the trials table and the
static SVG (:func:`curves_svg`) that notebooks executed without a widget front end show.
A trial keeps its colour for the whole sweep; trials stopped by the early-abort policy
are dashed and grey-ish, and the best trial by the chosen metric is drawn thick.
Everything put into SVG is escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..training.trials import Mode, TrialRow, TrialStatus, rank_trials

#: One colour per trial, by trial number (cycled).
PALETTE = ["#1e88e5", "#43a047", "#fb8c00", "#8e24aa", "#00acc1", "#e53935", "#6d4c41",
           "#3949ab", "#c0ca33", "#d81b60", "#00897b", "#f4511e", "#5e35b1", "#7cb342",
           "#039be5", "#ffb300", "#546e7a", "#ad1457", "#26a69a", "#8d6e63"]
#: The grey that aborted trials' colours are mixed with.
ABORTED_GREY = "#b0bec5"
#: Longest trial label (legend, tooltip); longer parameter lists end in an ellipsis.
LABEL_CHARS = 48


@dataclass(frozen=True)
class TrialStyle:
    """How one trial is drawn: in the chart, the static SVG and the trials table."""

    colour: str
    dashed: bool
    width: float
    opacity: float
    label: str
    best: bool


def trial_label(row: TrialRow) -> str:
    """The trial's name in legends and tooltips: ``"trial 3: lr=0.1, depth=2"``."""
    params = ", ".join(f"{k}={format_value(v)}" for k, v in sorted(row.params.items()))
    text = f"trial {row.trial}" + (f": {params}" if params else "")
    return text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 1] + "\u2026"


def format_value(value: Any) -> str:
    """A parameter or metric value, short (floats to four significant digits)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _mix(colour: str, other: str, share: float) -> str:
    """``colour`` with ``share`` of ``other`` mixed in (both ``#rrggbb``)."""
    a = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
    b = [int(other[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(x + (y - x) * share):02x}" for x, y in zip(a, b, strict=True))


def trial_styles(rows: Sequence[TrialRow], metric: str | None,
                 mode: Mode) -> dict[int, TrialStyle]:
    """The style of every trial: its own colour, dashed and grey-ish when aborted early,
    thick when it is the best so far by ``metric`` (finished or running trials)."""
    ranked = rank_trials(rows, metric, mode, include_running=True) if metric else []
    best = ranked[0].trial if ranked else None
    styles = {}
    for row in rows:
        colour = PALETTE[row.trial % len(PALETTE)]
        aborted = row.status is TrialStatus.ABORTED
        if aborted:
            colour = _mix(colour, ABORTED_GREY, 0.75)
        is_best = row.trial == best
        styles[row.trial] = TrialStyle(
            colour=colour, dashed=aborted, width=3.5 if is_best else 1.5,
            opacity=1.0 if is_best else (0.7 if aborted else 0.85),
            label=trial_label(row), best=is_best)
    return styles


def metric_series(histories: Mapping[int, Sequence[Mapping[str, Any]]],
                  metric: str) -> dict[int, list[tuple[float, float]]]:
    """Per trial, its finite ``(step, value)`` reports of ``metric``, by step."""
    series: dict[int, list[tuple[float, float]]] = {}
    for trial, reports in sorted(histories.items()):
        points = []
        for r in reports:
            step, value = r.get("step"), r.get(metric)
            if step is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(float(value)):
                points.append((float(step), float(value)))
        if points:
            series[trial] = sorted(points)
    return series


def swatch_html(style: TrialStyle) -> str:
    """A short line in the trial's colour and dash, for the trials table."""
    border = "dashed" if style.dashed else "solid"
    thick = 4 if style.best else 3
    return (f'<span class="htcml-swatch" title="{html.escape(style.label)}" '
            f'style="display:inline-block;width:18px;height:0;vertical-align:middle;'
            f'border-top:{thick}px {border} {style.colour};margin-right:6px"></span>')


def curves_svg(histories: Mapping[int, Sequence[Mapping[str, Any]]], metric: str,
               styles: Mapping[int, TrialStyle] | None = None, width: int = 560,
               height: int = 220, max_trials: int = 60) -> str:
    """One polyline per trial (``histories``: its reports) of ``metric`` against
    ``step``, styled as in the live chart (``styles``; by default one colour each).
    Returns an ``<svg>`` element as text (for output without a widget front end)."""
    styles = styles or {}
    drawn = dict(list(metric_series(histories, metric).items())[:max_trials])
    if not drawn:
        return (f'<svg class="htcml-curves" width="{width}" height="40"><text x="8" y="24" '
                f'font-size="12" fill="#607d8b">no reports of {html.escape(metric)} yet'
                f"</text></svg>")
    xs = [x for pts in drawn.values() for x, _ in pts]
    ys = [y for pts in drawn.values() for _, y in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    x1 = x1 if x1 != x0 else x0 + 1
    y1 = y1 if y1 != y0 else y0 + 1
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
    for n, (trial, pts) in enumerate(drawn.items()):
        style = styles.get(trial) or TrialStyle(PALETTE[n % len(PALETTE)], False, 1.5, 0.85,
                                                f"trial {trial}", False)
        dash = ' stroke-dasharray="4 3"' if style.dashed else ""
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(f'<polyline class="htcml-curve" data-trial="{trial}" points="{coords}" '
                     f'fill="none" stroke="{style.colour}" stroke-width="{style.width:g}" '
                     f'stroke-opacity="{style.opacity:g}"{dash}>'
                     f"<title>{html.escape(style.label)}</title></polyline>")
    parts.append("</svg>")
    return "".join(parts)
