"""A live ipywidgets panel for a map.

Header (name, cluster, pool, resources, elapsed time and, once there is one, an
estimate of the time left), one progress bar with a segment per state in its colour and
the done count written on it (``12 / 12 done``), the colour key of the other states with
their counts, what the jobs used (once any finished) with advice on oversized requests
(once all finished), the map's latest notes, a short list of the failed, held and removed
items (clicking one shows its remote traceback, stderr tail or hold reason), and
Cancel / Retry failed / Release held buttons.

Updates come from the process's one monitor thread
(:mod:`htcml_jupyter.engine.monitor`), at most twice a second while jobs change and
more slowly while nothing does; they stop when the map is finished (Retry and Release
start them again).  Where no widget front end exists
the panel's display data also carries the same information as text and HTML.
"""

from __future__ import annotations

import html
import threading
from typing import TYPE_CHECKING, Any

from ..engine.monitor import MONITOR, Watch
from ..engine.state import ItemState
from .progress import (
    MapProgress,
    header_html,
    legend_html,
    notes_html,
    outcome,
    render_html,
    render_text,
    snapshot,
    state_bar_html,
    usage_html,
)

if TYPE_CHECKING:
    from ..engine.mapping import Map

#: Seconds between two updates of a live panel while its map's jobs change.
UPDATE_INTERVAL = 0.5


class MapPanel:
    """The live progress panel of one map (display it, or call :meth:`show`)."""

    def __init__(self, m: Map, interval: float = UPDATE_INTERVAL, start: bool = True):
        import ipywidgets as w

        self.map = m
        self.interval = interval
        self.header = w.HTML()
        #: The one progress bar: state colours and the done count.
        self.bar = w.HTML(layout=w.Layout(width="100%"))
        self.legend = w.HTML()
        #: What the jobs used (once any finished) and advice on requests (once finished).
        self.usage = w.HTML()
        #: The map's latest notes: how its environment was chosen, packing progress.
        self.notes = w.HTML()
        #: ``"info"`` while going, ``"warning"`` with failed or held items, and once
        #: finished ``"success"`` (every item done) or ``"danger"``.
        self.outcome = "info"
        self.items = w.Select(options=[], rows=5, layout=w.Layout(width="100%"),
                              description="problems")
        self.detail = w.HTML()
        self.cancel_button = w.Button(description="Cancel", icon="stop",
                                      tooltip="remove every unfinished job of this map")
        self.retry_button = w.Button(description="Retry failed", icon="redo",
                                     tooltip="run failed, held and removed items again")
        self.release_button = w.Button(description="Release held", icon="play",
                                       tooltip="let held jobs run again")
        self.message = w.HTML()
        self.cancel_button.on_click(lambda _: self._act("cancel"))
        self.retry_button.on_click(lambda _: self._act("retry"))
        self.release_button.on_click(lambda _: self._act("release"))
        self.items.observe(self._show_item, names="value")
        self.items_box = w.VBox([self.items, self.detail], layout=w.Layout(display="none"))
        self.widget = w.VBox([
            self.header, self.bar, self.legend, self.usage, self.notes,
            self.items_box,
            w.HBox([self.cancel_button, self.retry_button, self.release_button, self.message]),
        ])
        self.widget.add_class("htcml-panel")
        self.last: MapProgress | None = None
        self._watch: Watch | None = None
        self._lock = threading.RLock()
        self.update()
        if start:
            self.start()

    # ---------------------------------------------------------------- updates
    def update(self) -> MapProgress:
        """Read the map's state once and redraw what changed."""
        with self._lock:
            p = snapshot(self.map)
            self._draw(p)
            self.last = p
            return p

    @property
    def headline(self) -> str:
        """What the bar says, e.g. ``"12 / 12 done"`` (empty before the first update)."""
        return self.last.headline if self.last is not None else ""

    def _draw(self, p: MapProgress) -> None:
        self.header.value = header_html(p)
        self.bar.value = state_bar_html(p)
        self.legend.value = legend_html(p)
        self.usage.value = usage_html(p)
        self.notes.value = notes_html(p)
        self.outcome = outcome(p)
        options = [(f"item {q.item} {q.state.value}: {q.summary[:80]}", q.item)
                   for q in p.problems]
        if [o[1] for o in options] != [o[1] for o in self.items.options]:
            self.items.options = options
        self.items_box.layout.display = "flex" if options else "none"
        self.cancel_button.disabled = p.finished
        self.retry_button.disabled = not any(
            p.counts[s] for s in (ItemState.FAILED, ItemState.HELD, ItemState.REMOVED))
        self.release_button.disabled = not p.counts[ItemState.HELD]

    def _show_item(self, change: dict[str, Any]) -> None:
        item = change.get("new")
        if item is None:
            self.detail.value = ""
            return
        self.detail.value = item_detail_html(self.map, int(item))

    def _refreshed(self, _changed: bool) -> bool:
        """After each refresh of the map by the monitor: redraw; False once finished."""
        try:
            return not self.update().finished
        except Exception as exc:  # keep the kernel alive; show what went wrong
            self.message.value = f"<i>update failed: {html.escape(str(exc))}</i>"
            return True

    def start(self) -> None:
        """Start (or restart) the background updates."""
        if self._watch is not None and self._watch.active:
            MONITOR.wake(self.map)
            return
        self._watch = MONITOR.watch(self.map, self._refreshed, self.interval)

    def stop(self) -> None:
        """Stop the background updates (the final state stays visible)."""
        if self._watch is not None:
            self._watch.stop()

    def close(self) -> None:
        self.stop()
        self.widget.close()

    @property
    def running(self) -> bool:
        """True while the panel is updated in the background."""
        return self._watch is not None and self._watch.active

    # ---------------------------------------------------------------- actions
    def _act(self, action: str) -> None:
        try:
            if action == "cancel":
                self.map.cancel()
                text = "cancel sent: unfinished jobs are being removed"
            elif action == "retry":
                items = self.map.retry()
                text = f"retrying {len(items)} item{'s' if len(items) != 1 else ''}"
            else:
                n = self.map.release()
                text = f"released {n} held job{'s' if n != 1 else ''}"
        except Exception as exc:
            text = f"{action} failed: {exc}"
        self.message.value = f"<i>{html.escape(text)}</i>"
        self.update()
        self.start()

    # ---------------------------------------------------------------- display
    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle: dict[str, Any] = dict(self.widget._repr_mimebundle_(**kwargs) or {})
        p = self.last or snapshot(self.map)
        bundle["text/plain"] = render_text(p)
        bundle["text/html"] = render_html(p)
        return bundle

    def show(self) -> MapPanel:
        from IPython.display import display

        display(self)
        return self


def item_detail_html(m: Map, item: int) -> str:
    """What went wrong with one item: traceback, hold reason or removal, plus stderr."""
    state = m.item_states()[item]
    parts = [f"<b>item {item}</b>: {html.escape(state.value)}"]
    if state is ItemState.FAILED:
        err = m.errors.get(item)
        if err is not None:
            where = f" on {html.escape(err.host or '?')}, job {html.escape(err.job_id or '?')}"
            parts.append(f"{where}<pre>{html.escape(err.traceback_text)}</pre>")
    elif state is ItemState.HELD:
        parts.append(f"<pre>{html.escape(m.holds.get(item, 'held'))}</pre>")
    tail = m.stderr(item)[-2000:]
    if tail.strip():
        parts.append(f"stderr (last lines):<pre>{html.escape(tail)}</pre>")
    return "".join(parts)
