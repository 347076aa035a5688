"""The live panel of a sweep: the map panel plus a trials table and metric curves."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from ..training.trials import rank_trials
from .curves import curves_svg
from .panel import MapPanel
from .progress import MapProgress

if TYPE_CHECKING:
    from ..training.sweeps import Sweep
    from ..training.trials import TrialRow

#: Rows shown in the trials table (best first); the rest are counted.
TABLE_ROWS = 25


def trials_table_html(rows: list[TrialRow], metric: str | None, mode: str) -> str:
    """The trials, best first by ``metric``, as an escaped HTML table."""
    ranked = (rank_trials(rows, metric, mode, include_running=True)  # type: ignore[arg-type]
              if metric else [])
    ordered = ranked + [r for r in rows if r not in ranked]
    params = sorted({k for r in rows for k in r.params})
    head = "".join(f"<th>{html.escape(p)}</th>" for p in params)
    metric_head = f"<th>{html.escape(metric)}</th>" if metric else ""
    body = []
    for r in ordered[:TABLE_ROWS]:
        cells = "".join(f"<td>{html.escape(_fmt(r.params.get(p)))}</td>" for p in params)
        value = f"<td>{html.escape(_fmt(r.metrics.get(metric)))}</td>" if metric else ""
        resumed = f" (resumed from {html.escape(_fmt(r.resumed_from))})" \
            if r.evictions and r.resumed_from is not None else ""
        body.append(f'<tr class="htcml-trial htcml-{html.escape(r.status.value.split()[0])}">'
                    f"<td>{r.trial}</td>{cells}{value}<td>{html.escape(r.status.value)}</td>"
                    f"<td>{r.steps}</td><td>{r.evictions}{resumed}</td></tr>")
    more = (f"<tr><td colspan='99'>... {len(rows) - TABLE_ROWS} more trials "
            f"(sweep.table())</td></tr>" if len(rows) > TABLE_ROWS else "")
    table = ('<table class="htcml-trials"><tr><th>trial</th>' + head + metric_head
             + "<th>status</th><th>steps</th><th>evictions</th></tr>" + "".join(body) + more
             + "</table>")
    return (table.replace("<td>", f'<td style="{_CELL}">')
            .replace("<th>", f'<th style="{_CELL};text-align:left">'))


_CELL = "padding:1px 10px 1px 0"


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class SweepPanel(MapPanel):
    """A :class:`MapPanel` with the trials table and a plot of a chosen metric."""

    def __init__(self, sweep: Sweep, interval: float = 1.0, start: bool = True):
        import ipywidgets as w

        self.sweep = sweep
        self.metric_choice = w.Dropdown(description="metric", options=[], value=None)
        self.plot = w.HTML()
        self.trials = w.HTML()
        super().__init__(sweep, interval=interval, start=False)
        self.widget.children = (*self.widget.children[:-1], self.metric_choice, self.plot,
                                self.trials, self.widget.children[-1])
        self.metric_choice.observe(lambda _: self._draw_sweep(), names="value")
        if start:
            self.start()

    def _draw(self, p: MapProgress) -> None:
        super()._draw(p)
        self._draw_sweep()

    def _draw_sweep(self) -> None:
        sweep = self.sweep
        rows = sweep.rows(with_results=False)
        histories = sweep.all_reports()
        names = sweep.metric_names()
        if list(self.metric_choice.options) != names:
            keep = self.metric_choice.value
            self.metric_choice.options = names
            preferred = sweep.metric if sweep.metric in names else (names[0] if names else None)
            self.metric_choice.value = keep if keep in names else preferred
        metric = self.metric_choice.value or sweep.metric
        status = {r.trial: r.status.value for r in rows}
        ranked = rank_trials(rows, metric, sweep.mode, include_running=True) if metric else []
        best = ranked[0].trial if ranked else None
        self.plot.value = curves_svg(histories, metric, status, best) if metric else ""
        self.trials.value = trials_table_html(rows, metric, sweep.mode)
