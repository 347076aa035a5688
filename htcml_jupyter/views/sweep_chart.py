"""A live bqplot chart of one metric over steps, one line per trial of a sweep.

Each trial is one ``bqplot.Lines`` mark, in its colour and style from
:func:`~htcml_jupyter.views.curves.trial_styles` (its label in the legend; hovering the
line shows the trial and its parameters).  One ``bqplot.Scatter`` mark holds every
reported point; hovering a point shows the trial, its parameters, the step and the value.
A toggle switches the y axis between a linear and a logarithmic scale.

Updates change marks in place: only the traits whose values changed are set, so the
front end moves the lines it has instead of drawing the chart again.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .curves import TrialStyle

if TYPE_CHECKING:
    import bqplot

#: At most this many trials get a line (the best ones first); the rest are left out.
MAX_LINES = 60
#: At most this many trials are named in the legend (the best ones first).
LEGEND_ENTRIES = 12
#: The y axis scales the toggle offers.
SCALES = ("linear", "log")


def _assign(widget: Any, name: str, value: Any) -> bool:
    """Set ``widget.name`` to ``value`` only if it differs; True when it was set."""
    import numpy as np

    current = getattr(widget, name)
    if isinstance(current, np.ndarray) or isinstance(value, np.ndarray):
        new = np.asarray(value)
        same = (current is not None and np.shape(current) == new.shape
                and bool(np.array_equal(current, new)))
    else:
        same = bool(current == value)
    if not same:
        setattr(widget, name, value)
    return not same


def log_ticks(low: float, high: float, most: int = 8) -> list[float]:
    """Tick values for a logarithmic axis from ``low`` to ``high`` (both > 0): 1 to 9,
    1-2-3-5-7 or 1-2-5 times each power of ten, the finest that gives at most ``most``
    ticks, or whole decades when even those would be too many."""
    if not (0 < low <= high) or not math.isfinite(high):
        return []
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    for multiples in ((1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 3, 5, 7), (1, 2, 5), (1,)):
        ticks = [m * 10.0 ** e for e in range(first, last + 1) for m in multiples]
        ticks = [float(f"{t:.12g}") for t in ticks if low * (1 - 1e-9) <= t <= high * (1 + 1e-9)]
        if 2 <= len(ticks) <= most or (multiples == (1,) and ticks):
            if len(ticks) > most:  # many decades: every n-th one
                ticks = ticks[::math.ceil(len(ticks) / most)]
            return ticks
    return [low, high] if low != high else [low]


def step_ticks(low: float, high: float, most: int = 10) -> list[float]:
    """Whole-number tick values from ``low`` to ``high`` in steps of 1, 2 or 5 times a
    power of ten, at most ``most`` of them."""
    if not (math.isfinite(low) and math.isfinite(high)) or high < low:
        return []
    span = max(high - low, 1.0)
    step = next(m * 10 ** e for e in range(16) for m in (1, 2, 5) if span / (m * 10 ** e) < most)
    start = math.ceil(low / step) * step
    return [float(start + i * step) for i in range(int((high - start) // step) + 1)]


class SweepChart:
    """A bqplot figure of one metric over steps for every trial, with a y scale toggle.

    Call :meth:`update` with the points and styles of each trial; display
    :attr:`figure` (and :attr:`scale_choice` beside it).
    """

    def __init__(self) -> None:
        import bqplot as bq
        import ipywidgets as w

        self._bq = bq
        self._lock = threading.RLock()
        self.x_scale = bq.LinearScale()
        self.y_scales: dict[str, bqplot.Scale] = {"linear": bq.LinearScale(),
                                                  "log": bq.LogScale()}
        self.x_axis = bq.Axis(scale=self.x_scale, label="step", grid_lines="dashed",
                              tick_format="d")
        self.y_axes = {
            "linear": bq.Axis(scale=self.y_scales["linear"], side="left",
                              grid_lines="dashed", label_offset="48px"),
            "log": bq.Axis(scale=self.y_scales["log"], side="left",
                           grid_lines="dashed", tick_format=".3~g", label_offset="48px"),
        }
        self.line_tooltip = bq.Tooltip(fields=["name"], show_labels=False)
        self.points = bq.Scatter(
            x=[], y=[], names=[], display_names=False, names_unique=False, default_size=20,
            colors=["#607d8b"], scales={"x": self.x_scale, "y": self.y_scales["linear"]},
            tooltip=bq.Tooltip(fields=["name", "x", "y"], labels=["", "step", "value"],
                               formats=["", ".6~g", ".4~g"]))
        #: The line of each trial that has one, by trial number.
        self.lines: dict[int, bqplot.Lines] = {}
        self.figure = bq.Figure(
            marks=[self.points], axes=[self.x_axis, self.y_axes["linear"]],
            legend_location="top-right", animation_duration=0, title="",
            fig_margin={"top": 16, "bottom": 42, "left": 64, "right": 16},
            legend_style={"fill": "white", "fill-opacity": "0.85", "stroke": "#cfd8dc"},
            layout=w.Layout(width="100%", height="320px"))
        self.figure.add_class("htcml-sweep-chart")
        self.scale_choice = w.ToggleButtons(
            options=list(SCALES), value="linear", description="y axis",
            tooltips=["linear y axis", "logarithmic y axis (values <= 0 are left out)"],
            style={"button_width": "64px", "description_width": "initial"})
        self.scale_choice.observe(lambda _: self.redraw(), names="value")
        self.metric = ""
        self._series: dict[int, list[tuple[float, float]]] = {}
        self._styles: dict[int, TrialStyle] = {}
        self._order: list[int] = []

    @property
    def scale(self) -> str:
        """The y scale in use: ``"linear"`` or ``"log"``."""
        return str(self.scale_choice.value)

    def update(self, series: Mapping[int, Sequence[tuple[float, float]]],
               styles: Mapping[int, TrialStyle], metric: str,
               order: Sequence[int] | None = None, mode: str = "min") -> None:
        """Show ``series`` (per trial, its ``(step, value)`` points) of ``metric``.

        ``order`` ranks the trials (best first) for the legend and for which trials get a
        line when there are more than :data:`MAX_LINES`; by default, by trial number.
        The legend sits where curves of a metric to minimise (``mode``) or maximise
        rarely go: top right, or bottom right.
        """
        with self._lock:
            self.metric = metric
            _assign(self.figure, "legend_location",
                    "bottom-right" if mode == "max" else "top-right")
            self._series = {t: list(p) for t, p in series.items() if p}
            self._styles = dict(styles)
            self._order = list(order) if order is not None else sorted(self._series)
            self.redraw()

    def redraw(self) -> None:
        """Bring the marks, axes and scales up to date with the last :meth:`update`."""
        with self._lock:
            log = self.scale == "log"
            y_scale = self.y_scales[self.scale]
            ranked = [t for t in self._order if t in self._series]
            ranked += [t for t in sorted(self._series) if t not in ranked]
            shown = sorted(ranked[:MAX_LINES])
            in_legend = set(ranked[:LEGEND_ENTRIES])
            scales = {"x": self.x_scale, "y": y_scale}
            ys_all: list[float] = []
            px: list[float] = []
            py: list[float] = []
            names: list[str] = []
            colours: list[str] = []
            for trial in shown:
                points = [(x, y) for x, y in self._series[trial] if y > 0 or not log]
                style = self._styles.get(trial) or TrialStyle(
                    "#607d8b", False, 1.5, 0.85, f"trial {trial}", False)
                line = self.lines.get(trial)
                if line is None:
                    line = self.lines[trial] = self._bq.Lines(
                        x=[], y=[], scales=scales, tooltip=self.line_tooltip,
                        labels=[style.label])
                self._style_line(line, style, trial in in_legend, scales)
                _assign(line, "x", [x for x, _ in points])
                _assign(line, "y", [y for _, y in points])
                ys_all += [y for _, y in points]
                px += [x for x, _ in points]
                py += [y for _, y in points]
                names += [style.label] * len(points)
                colours += [style.colour] * len(points)
            marks = [self.lines[t] for t in shown] + [self.points]
            if list(self.figure.marks) != marks:
                self.figure.marks = marks
            _assign(self.points, "scales", scales)
            with self.points.hold_sync():
                _assign(self.points, "x", px)
                _assign(self.points, "y", py)
                _assign(self.points, "names", names)
                _assign(self.points, "colors", colours or ["#607d8b"])
            self._draw_axes(log, px, ys_all)

    def _style_line(self, line: bqplot.Lines, style: TrialStyle, legend: bool,
                    scales: dict[str, Any]) -> None:
        with line.hold_sync():
            _assign(line, "scales", scales)
            _assign(line, "labels", [style.label])
            _assign(line, "colors", [style.colour])
            _assign(line, "opacities", [style.opacity])
            _assign(line, "stroke_width", style.width)
            _assign(line, "line_style", "dashed" if style.dashed else "solid")
            _assign(line, "display_legend", legend)

    def _draw_axes(self, log: bool, xs: list[float], ys: list[float]) -> None:
        axis = self.y_axes[self.scale]
        _assign(axis, "label", self.metric)
        _assign(self.points.tooltip, "labels", ["", "step", self.metric or "value"])
        _assign(self.x_axis, "tick_values", step_ticks(min(xs), max(xs)) if xs else [])
        if log:
            _assign(axis, "tick_values", log_ticks(min(ys), max(ys)) if ys else [])
        axes = [self.x_axis, axis]
        if list(self.figure.axes) != axes:
            self.figure.axes = axes
        empty = (f"no reports of {self.metric} yet" if not self._series
                 else f"no values of {self.metric} above 0 for a log scale" if not ys else "")
        _assign(self.figure, "title", empty)

    def legend_labels(self) -> list[str]:
        """The labels the legend shows, in its order."""
        return [str(m.labels[0]) for m in self.figure.marks
                if isinstance(m, self._bq.Lines) and m.display_legend]

    def close(self) -> None:
        """Close the figure, its marks and the toggle."""
        for line in self.lines.values():
            line.close()
        self.points.close()
        self.figure.close()
        self.scale_choice.close()
