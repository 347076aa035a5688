"""The live panel of a sweep: the map panel plus a metric chart and a trials table.

The chart (:class:`~htcml_jupyter.views.sweep_chart.SweepChart`) draws the chosen
metric over steps for every trial; the trials table gives each trial the same colour
key.  Where no widget front end exists, the panel's HTML carries the curves as a static
SVG and the same table.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..engine.usage import JobUsage, hours_text, seconds_text, size_text
from ..training.trials import rank_trials
from .curves import TrialStyle, curves_svg, format_value, metric_series, swatch_html, trial_styles
from .panel import MapPanel
from .progress import MapProgress, render_html, snapshot

if TYPE_CHECKING:
    from ..training.sweeps import Sweep
    from ..training.trials import Mode, TrialRow

#: Rows shown in the trials table (best first); the rest are counted.
TABLE_ROWS = 25


def trials_table_html(rows: list[TrialRow], metric: str | None, mode: Mode,
                      styles: Mapping[int, TrialStyle] | None = None) -> str:
    """The trials, best first by ``metric``, as an escaped HTML table; each trial's
    number follows its colour key in the chart (``styles``, by default
    :func:`~htcml_jupyter.views.curves.trial_styles`)."""
    styles = trial_styles(rows, metric, mode) if styles is None else styles
    ranked = rank_trials(rows, metric, mode, include_running=True) if metric else []
    ordered = ranked + [r for r in rows if r not in ranked]
    params = sorted({k for r in rows for k in r.params})
    gpus = any(r.usage is not None and (r.usage.gpus_allocated or r.usage.gpus_requested)
               for r in rows)
    head = "".join(f"<th>{html.escape(p)}</th>" for p in params)
    metric_head = f"<th>{html.escape(metric)}</th>" if metric else ""
    body = []
    for r in ordered[:TABLE_ROWS]:
        cells = "".join(f"<td>{html.escape(format_value(r.params.get(p)))}</td>"
                        for p in params)
        value = (f"<td>{html.escape(format_value(r.metrics.get(metric)))}</td>"
                 if metric else "")
        resumed = f" (resumed from {html.escape(format_value(r.resumed_from))})" \
            if r.evictions and r.resumed_from is not None else ""
        key = swatch_html(styles[r.trial]) if r.trial in styles else ""
        used = "".join(f"<td>{html.escape(text)}</td>" for text in usage_cells(r.usage, gpus))
        body.append(f'<tr class="htcml-trial htcml-{html.escape(r.status.value.split()[0])}" '
                    f'data-trial="{r.trial}">'
                    f"<td>{key}{r.trial}</td>{cells}{value}<td>{html.escape(r.status.value)}</td>"
                    f"<td>{r.steps}</td><td>{r.evictions}{resumed}</td>{used}</tr>")
    more = (f"<tr><td colspan='99'>... {len(rows) - TABLE_ROWS} more trials "
            f"(sweep.table())</td></tr>" if len(rows) > TABLE_ROWS else "")
    table = ('<table class="htcml-trials"><tr><th>trial</th>' + head + metric_head
             + "<th>status</th><th>steps</th><th>evictions</th>"
             + "".join(f"<th>{h}</th>" for h in USAGE_HEADS[:4 if gpus else 3])
             + "</tr>" + "".join(body) + more
             + "</table>")
    return (table.replace("<td>", f'<td style="{_CELL}">')
            .replace("<th>", f'<th style="{_CELL};text-align:left">'))


_CELL = "padding:1px 10px 1px 0;white-space:nowrap"
#: The usage columns of the trials table (GPU-hours only when a trial has GPUs).
USAGE_HEADS = ("CPU time", "memory", "disk", "GPU-h")


def usage_cells(usage: JobUsage | None, gpus: bool = False) -> list[str]:
    """A trial's usage cells: CPU time, peak memory and disk against what was asked
    (``"218 MB / 1 GB"``), and GPU-hours with ``gpus``; blank before its job ran."""
    n = 4 if gpus else 3
    if usage is None:
        return [""] * n

    def against(used: float | None, asked: float | None) -> str:
        if used is None:
            return ""
        return size_text(used) + (f" / {size_text(asked)}" if asked else "")

    cells = [seconds_text(usage.cpu_seconds) if usage.cpu_seconds is not None else "",
             against(usage.memory_mb, usage.memory_requested_mb),
             against(usage.disk_mb, usage.disk_requested_mb),
             hours_text(usage.gpu_hours)]
    return cells[:n]


class SweepPanel(MapPanel):
    """A :class:`MapPanel` with a live chart of a chosen metric and the trials table."""

    def __init__(self, sweep: Sweep, interval: float = 1.0, start: bool = True):
        import ipywidgets as w

        from .sweep_chart import SweepChart

        self.sweep = sweep
        self.metric_choice = w.Dropdown(description="metric", options=[], value=None,
                                        layout=w.Layout(width="260px"))
        self.chart = SweepChart()
        self.trials = w.HTML()
        self._choosing = False
        super().__init__(sweep, interval=interval, start=False)
        controls = w.HBox([self.metric_choice, self.chart.scale_choice],
                          layout=w.Layout(align_items="center"))
        self.chart.scale_choice.layout.margin = "0 0 0 24px"
        self.widget.children = (*self.widget.children[:-1], controls, self.chart.figure,
                                self.trials, self.widget.children[-1])
        self.metric_choice.observe(self._metric_chosen, names="value")
        if start:
            self.start()

    @property
    def metric(self) -> str | None:
        """The metric the chart and table show."""
        return self.metric_choice.value or self.sweep.metric

    def _metric_chosen(self, _change: dict[str, Any]) -> None:
        if not self._choosing:
            with self._lock:
                self._draw_sweep()

    def _draw(self, p: MapProgress) -> None:
        super()._draw(p)
        self._draw_sweep()

    def _draw_sweep(self) -> None:
        sweep = self.sweep
        rows = sweep.rows(with_results=False)
        names = sweep.metric_names()
        if list(self.metric_choice.options) != names:
            keep = self.metric_choice.value
            preferred = sweep.metric if sweep.metric in names else (names[0] if names else None)
            self._choosing = True
            try:
                self.metric_choice.options = names
                self.metric_choice.value = keep if keep in names else preferred
            finally:
                self._choosing = False
        metric = self.metric
        styles = trial_styles(rows, metric, sweep.mode)
        if metric:
            ranked = [r.trial for r in rank_trials(rows, metric, sweep.mode,
                                                   include_running=True)]
            self.chart.update(metric_series(sweep.all_reports(), metric), styles, metric,
                              order=ranked, mode=sweep.mode)
        self.trials.value = trials_table_html(rows, metric, sweep.mode, styles)

    def static_html(self) -> str:
        """The panel as self-contained HTML: the map's summary, the curves of the chosen
        metric as SVG, and the trials table."""
        sweep = self.sweep
        rows = sweep.rows(with_results=False)
        metric = self.metric
        styles = trial_styles(rows, metric, sweep.mode)
        curves = (curves_svg(sweep.all_reports(), metric, styles)
                  if metric else "")
        return (render_html(self.last or snapshot(sweep)) + curves
                + trials_table_html(rows, metric, sweep.mode, styles))

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = super()._repr_mimebundle_(**kwargs)
        bundle["text/html"] = self.static_html()
        return bundle

    def close(self) -> None:
        super().close()
        self.chart.close()
