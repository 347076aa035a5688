"""The live panel of a multi-node torchrun, and its text and HTML renderings.

A header (run, cluster, nodes x processes, node 0's rendezvous address once known), a
table of nodes (state, host, slot, GPUs, global ranks, what the launcher is doing),
rank 0's latest reports with a curve of one metric, its checkpoint, and the first
failure's remote traceback.  Data (:class:`RunSnapshot`) is kept apart from drawing;
everything put into HTML is escaped.  While shown, the panel's updates also end the
whole run when one node fails (:meth:`TorchrunRun.done`).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..engine.monitor import MONITOR, Watch
from .curves import TrialStyle, curves_svg, metric_series
from .sweep_chart import SweepChart

if TYPE_CHECKING:
    from ..multinode.run import NodeStatus, TorchrunRun

#: Colours of the node states.
STATE_COLOURS = {"idle": "#b0bec5", "running": "#1e88e5", "done": "#2e7d32",
                 "failed": "#c62828", "held": "#f9a825", "removed": "#6d4c41"}
#: Seconds between two updates of a live panel.
UPDATE_INTERVAL = 0.5


@dataclass(frozen=True)
class RunSnapshot:
    """What the panel shows, read once."""

    name: str
    cluster: int | None
    nodes: int
    procs_per_node: int
    rendezvous: str | None
    node_rows: list[NodeStatus]
    reports: list[dict[str, Any]]
    checkpoint: dict[str, Any] | None
    finished: bool
    failure: str | None

    @property
    def headline(self) -> str:
        counts: dict[str, int] = {}
        for row in self.node_rows:
            counts[row.state] = counts.get(row.state, 0) + 1
        states = ", ".join(f"{v} {k}" for k, v in counts.items())
        return (f"torchrun {self.name} (cluster {self.cluster}): {self.nodes} nodes x "
                f"{self.procs_per_node} procs; {states}; rendezvous "
                f"{self.rendezvous or 'not yet published'}")


def run_snapshot(run: TorchrunRun) -> RunSnapshot:
    """Read a run's state for display."""
    finished = run.done
    failure = run.error() if finished else None
    return RunSnapshot(name=run.name, cluster=run.cluster, nodes=run.shape.nodes,
                       procs_per_node=run.shape.procs_per_node, rendezvous=run.rendezvous,
                       node_rows=run.nodes(), reports=run.reports(0),
                       checkpoint=run.checkpoints().get(0), finished=finished,
                       failure="\n".join(failure._render_traceback_()) if failure else None)


def _gpus(row: NodeStatus) -> str:
    return row.assigned_gpus or "-"


def _metrics(reports: list[dict[str, Any]]) -> dict[str, Any]:
    last = reports[-1] if reports else {}
    return {k: v for k, v in last.items() if k not in ("step", "time")}


def render_text(s: RunSnapshot) -> str:
    """The snapshot as plain text (terminals, nbclient)."""
    lines = [s.headline]
    for row in s.node_rows:
        lines.append(f"  node {row.node}: {row.state:8} {row.host or '-':12} "
                     f"slot {row.slot or '-'}  GPUs {_gpus(row)}  ranks "
                     f"{list(row.ranks) or '-'}  {row.activity or ''}".rstrip())
    if s.reports:
        metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in _metrics(s.reports).items())
        lines.append(f"  rank 0, step {s.reports[-1].get('step')}: {metrics}")
    if s.checkpoint:
        lines.append(f"  rank 0 checkpoint: saved step {s.checkpoint.get('saved')}, "
                     f"evictions {s.checkpoint.get('evictions')}")
    if s.failure:
        lines.append(f"  failed: {s.failure}")
    return "\n".join(lines)


def _first_metric(reports: list[dict[str, Any]]) -> str | None:
    for key, value in _metrics(reports).items():
        if isinstance(value, (int, float)) and math.isfinite(float(value)):
            return key
    return None


#: How rank 0's curve is drawn, live and in the static HTML.
RANK0_STYLE = TrialStyle(colour="#1e88e5", dashed=False, width=2.0, opacity=1.0,
                         label="rank 0", best=False)


def render_html(s: RunSnapshot, curve: bool = True) -> str:
    """The snapshot as self-contained, escaped HTML (with rank 0's curve as SVG unless
    ``curve`` is False: the live panel draws it as a chart)."""
    esc = html.escape
    head = (f"<b>torchrun {esc(s.name)}</b> &middot; cluster {esc(str(s.cluster))} "
            f"&middot; {s.nodes} nodes &times; {s.procs_per_node} procs &middot; "
            f"rendezvous <code>{esc(s.rendezvous or 'not yet published')}</code>")
    rows = "".join(
        f"<tr><td>{row.node}</td><td style='color:{STATE_COLOURS.get(row.state, '#000')}'>"
        f"<b>{esc(row.state)}</b></td><td>{esc(row.host or '-')}</td>"
        f"<td>{esc(row.slot or '-')}</td><td>{esc(_gpus(row))}</td>"
        f"<td>{esc(', '.join(map(str, row.ranks)) or '-')}</td>"
        f"<td>{esc(row.activity or '')}</td></tr>" for row in s.node_rows)
    table = ("<table class='htcml-nodes'><tr><th>node</th><th>state</th><th>host</th>"
             "<th>slot</th><th>GPUs</th><th>ranks</th><th>launcher</th></tr>"
             f"{rows}</table>")
    parts = [f"<div>{head}</div>", table]
    metric = _first_metric(s.reports)
    if s.reports:
        metrics = ", ".join(f"{esc(k)}={esc(str(v))}" for k, v in _metrics(s.reports).items())
        parts.append(f"<div>rank 0, step {esc(str(s.reports[-1].get('step')))}: "
                     f"{metrics}</div>")
    if metric is not None and curve:
        parts.append(curves_svg({0: s.reports}, metric, {0: RANK0_STYLE}, width=420,
                                height=140))
    if s.checkpoint:
        parts.append(f"<div>rank 0 checkpoint: saved step "
                     f"{esc(str(s.checkpoint.get('saved')))}, evictions "
                     f"{esc(str(s.checkpoint.get('evictions')))}</div>")
    if s.failure:
        parts.append(f"<pre style='color:#c62828'>{esc(s.failure)}</pre>")
    return f"<div class='htcml-torchrun'>{''.join(parts)}</div>"


class TorchrunPanel:
    """The live panel of one run (display it, or call :meth:`show`)."""

    def __init__(self, run: TorchrunRun, interval: float = UPDATE_INTERVAL,
                 start: bool = True):
        import ipywidgets as w

        self.run = run
        self.interval = interval
        self.body = w.HTML()
        self.chart = SweepChart()  # rank 0's curve, updated in place
        self.chart_box = w.VBox([self.chart.scale_choice, self.chart.figure],
                                layout=w.Layout(display="none"))
        self.cancel_button = w.Button(description="Cancel", icon="stop",
                                      tooltip="remove every node of this run")
        self.cancel_button.on_click(lambda _: self.run.cancel())
        self.widget = w.VBox([self.body, self.chart_box, self.cancel_button])
        self.widget.add_class("htcml-panel")
        self.last: RunSnapshot | None = None
        self._watch: Watch | None = None
        self.update()
        if start:
            self.start()

    def update(self) -> RunSnapshot:
        """Read the run once and redraw."""
        snap = run_snapshot(self.run)
        self.body.value = render_html(snap, curve=False)
        metric = _first_metric(snap.reports)
        if metric is not None:
            self.chart.update(metric_series({0: snap.reports}, metric), {0: RANK0_STYLE},
                              metric)
            self.chart_box.layout.display = None
        self.cancel_button.disabled = snap.finished
        self.last = snap
        return snap

    def start(self) -> None:
        """Update in the background (the process's monitor thread) until the run ends."""
        if self._watch is not None and self._watch.active:
            return
        self._watch = MONITOR.watch(self.run.map, lambda _changed: not self.update().finished,
                                    self.interval)

    @property
    def running(self) -> bool:
        """True while the panel is updated in the background."""
        return self._watch is not None and self._watch.active

    def close(self) -> None:
        """Stop updating (the run goes on)."""
        if self._watch is not None:
            self._watch.stop()

    def show(self) -> TorchrunPanel:
        from IPython.display import display

        display(self)
        return self

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        snap = self.last or self.update()
        bundle: dict[str, Any] = dict(self.widget._repr_mimebundle_(**kwargs) or {})
        bundle["text/plain"] = render_text(snap)
        bundle["text/html"] = render_html(snap)
        return bundle
