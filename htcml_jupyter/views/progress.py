"""Progress of a map as data, and its text and HTML renderings.

The data (:class:`MapProgress`) is kept apart from how it is drawn: the ipywidgets
panel (:mod:`htcml_jupyter.panel`), the text shown in a terminal, and the HTML shown
where no widget front end exists all draw the same snapshot.  Everything put into
HTML is escaped.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..engine.errors import ItemHeld, RemoteError
from ..engine.state import ItemState

if TYPE_CHECKING:
    from ..engine.mapping import Map

#: Colours of the state bar, per state.
COLOURS = {
    ItemState.DONE: "#2e7d32",
    ItemState.RUNNING: "#1e88e5",
    ItemState.IDLE: "#b0bec5",
    ItemState.HELD: "#f9a825",
    ItemState.FAILED: "#c62828",
    ItemState.REMOVED: "#6d4c41",
}

#: At most this many problem items are listed in a snapshot (the rest are counted).
MAX_LISTED = 50
#: The latest notes of a map that a snapshot carries.
NOTES_SHOWN = 3


@dataclass(frozen=True)
class ItemProblem:
    """One failed, held or removed item, summarised for display."""

    item: int
    state: ItemState
    summary: str


@dataclass(frozen=True)
class MapProgress:
    """A snapshot of a map for display."""

    name: str
    clusters: list[int]
    pool: str
    resources: str
    total: int
    counts: dict[ItemState, int]
    elapsed: float
    eta: float | None
    problems: list[ItemProblem] = field(default_factory=list)
    #: How the jobs get Python, in words ("" before the first submission chose it).
    environment: str = ""
    #: What the jobs used, in one line, once any job finished (``Map.usage().summary()``).
    usage: str = ""
    #: Once the map finished: the requests every job used under a third of, with the
    #: value to ask for instead (``Map.usage().advice()``).
    advice: list[str] = field(default_factory=list)
    #: The map's latest notes (how its environment was chosen, packing), oldest first.
    notes: list[str] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.counts[ItemState.DONE]

    @property
    def finished(self) -> bool:
        return sum(n for s, n in self.counts.items() if s.settled) == self.total

    @property
    def succeeded(self) -> bool:
        return self.done == self.total

    @property
    def headline(self) -> str:
        """E.g. ``'37 / 40 done'``: the figure every rendering shows first."""
        return f"{self.done} / {self.total} done"


def _resources(m: Map) -> str:
    o = m.options
    parts = [f"{o.request_cpus} CPU", o.request_memory]
    if o.request_gpus:
        parts.append(f"{o.request_gpus} GPU")
    return ", ".join(parts)


def snapshot(m: Map) -> MapProgress:
    """Read the map's latest state and summarise it."""
    states = m.item_states()
    counts = {s: 0 for s in ItemState}
    for s in states:
        counts[s] += 1
    created = m.record.created or time.time()
    elapsed = time.time() - created
    # an adaptive sweep counts the trials it has yet to ask for: not finished before them
    total = max(len(states), int(getattr(m, "planned_items", 0)))
    counts[ItemState.IDLE] += total - len(states)
    done = counts[ItemState.DONE] + counts[ItemState.FAILED]
    pending = total - sum(n for s, n in counts.items() if s.settled)
    eta = None
    if 0 < done and pending:
        eta = elapsed / done * pending
    elif not pending:
        eta = 0.0
    problems: list[ItemProblem] = []
    for i, s in enumerate(states):  # only the listed items' errors are built
        if len(problems) >= MAX_LISTED:
            break
        if s in (ItemState.FAILED, ItemState.HELD, ItemState.REMOVED):
            err = m.error(i)
            if isinstance(err, RemoteError):
                summary = f"{err.short_type}: {err.message}"
            elif isinstance(err, ItemHeld):
                summary = err.reason
            else:
                summary = "removed"
            problems.append(ItemProblem(i, s, summary))
    finished = not pending
    usage = m.usage(live=False)
    return MapProgress(m.name, m.clusters, m.backend.description, _resources(m), total,
                       counts, elapsed, eta, problems, environment_text(m.environment),
                       usage=usage.summary() if usage.finished else "",
                       advice=usage.advice() if finished else [],
                       notes=m.notes(last=NOTES_SHOWN))


def environment_text(record: dict[str, object]) -> str:
    """The map's environment in a few words: ``"packed environment, 382 MB, 12508 files,
    packed in 15.8 s; 3.1 GB sent to 8 jobs, each ready in 9.8 s"``, ``"reused packed
    environment, 382 MB"``, ``"shared interpreter"``."""
    kind = record.get("kind")
    if not kind:
        return ""
    size = record.get("size")
    size_text = f", {int(size) / 1e6:.0f} MB" if isinstance(size, (int, float)) else ""
    files = record.get("files")
    files_text = f", {files} files" if isinstance(files, int) else ""
    if kind == "pack":
        how = ("reused packed environment" if record.get("cached")
               else "packed environment")
        seconds = record.get("pack_seconds")
        when = (f", packed in {seconds:.1f} s" if isinstance(seconds, (int, float))
                and not record.get("cached") else "")
        return f"{how}{size_text}{files_text}{when}{_cost_text(record)}"
    if kind == "archive":
        return f"staged archive{size_text}{files_text}{_cost_text(record)}"
    return {"shared": "shared interpreter",
            "container": "container image"}.get(str(kind), str(kind))


def _cost_text(record: dict[str, object]) -> str:
    """``"; 3.1 GB sent to 8 jobs, each ready in 9.8 s"``: what the archive costs."""
    sent, jobs, ready = record.get("bytes_sent"), record.get("jobs"), \
        record.get("job_start_seconds")
    parts = []
    if record.get("route") == "url":
        parts.append("fetched by the execute points from its URL")
    elif record.get("route") == "common":
        parts.append("sent once per execute point")
    elif isinstance(sent, int) and isinstance(jobs, int) and jobs:
        parts.append(f"{sent / 1e9:.1f} GB sent to {jobs} job{'s' if jobs != 1 else ''}")
    if isinstance(ready, (int, float)):
        parts.append(f"each ready in {ready:.1f} s")
    return "; " + ", ".join(parts) if parts else ""


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def count_line(p: MapProgress) -> str:
    return ", ".join(f"{s.value} {n}" for s, n in p.counts.items() if n)


def render_text(p: MapProgress, width: int = 40) -> str:
    """Plain text for terminals and logs."""
    filled = int(width * p.done / p.total) if p.total else 0
    bar = "#" * filled + "-" * (width - filled)
    when = (f"elapsed {format_seconds(p.elapsed)}"
            + ("" if p.finished or p.eta is None else f", about {format_seconds(p.eta)} left"))
    lines = [f"{p.name}  [{bar}] {p.headline}  ({count_line(p)}; {when})"]
    if p.environment:
        lines.append(f"  environment: {p.environment}")
    if p.usage:
        lines.append(f"  used: {p.usage}")
    lines.extend(f"  {line}" for line in p.advice)
    for prob in p.problems[:10]:
        lines.append(f"  item {prob.item} {prob.state.value}: {prob.summary}")
    hidden = sum(p.counts[s] for s in (ItemState.FAILED, ItemState.HELD, ItemState.REMOVED))
    if hidden > 10:
        lines.append(f"  ... {hidden - 10} more")
    return "\n".join(lines)


#: The order of the state bar's segments, left to right.
BAR_ORDER = (ItemState.DONE, ItemState.FAILED, ItemState.HELD, ItemState.REMOVED,
             ItemState.RUNNING, ItemState.IDLE)


def outcome(p: MapProgress) -> str:
    """How the map stands, in one word: ``"success"`` (finished, every item done),
    ``"danger"`` (finished otherwise), ``"warning"`` (failed or held items, still going)
    or ``"info"`` (going)."""
    if p.finished:
        return "success" if p.succeeded else "danger"
    if p.counts[ItemState.FAILED] or p.counts[ItemState.HELD]:
        return "warning"
    return "info"


def state_bar_html(p: MapProgress) -> str:
    """The map's one progress bar, as escaped HTML: a segment per state in its colour
    (done, failed, held, removed, running, idle), with the headline (``"12 / 12 done"``)
    written on it."""
    cells = []
    for state in BAR_ORDER:
        n = p.counts[state]
        if not n:
            continue
        pct = 100.0 * n / p.total
        cells.append(f'<div title="{html.escape(state.value)}: {n}" class="htcml-bar-{state.value}"'
                     f' style="width:{pct:.3f}%;background:{COLOURS[state]};height:100%"></div>')
    text = (f'<span class="htcml-headline" style="position:absolute;left:4px;top:2px;'
            f"line-height:16px;padding:0 6px;border-radius:3px;font-size:12px;font-weight:600;"
            f'color:#263238;background:rgba(255,255,255,0.85);white-space:nowrap">'
            f"{html.escape(p.headline)}</span>")
    return (f'<div class="htcml-state-bar htcml-outcome-{outcome(p)}" '
            'style="position:relative;display:flex;width:100%;height:20px;border-radius:4px;'
            'overflow:hidden;background:#eceff1">' + "".join(cells) + text + "</div>")


def legend_html(p: MapProgress) -> str:
    """The colour key of the bar's states other than done (whose count the bar shows)."""
    parts = []
    for state in BAR_ORDER:
        n = p.counts[state]
        if n and state is not ItemState.DONE:
            parts.append(f'<span style="color:{COLOURS[state]};font-weight:600">&#9632;</span>'
                         f" {html.escape(state.value)} {n}")
    return " &nbsp; ".join(parts)


def header_html(p: MapProgress) -> str:
    clusters = ", ".join(map(str, p.clusters)) or "-"
    status = f"elapsed {format_seconds(p.elapsed)}"
    if p.eta is not None:  # only once there is an estimate
        status += f", about {format_seconds(p.eta)} left"
    if p.finished:
        status = f"finished in {format_seconds(p.elapsed)}"
    return (f'<div class="htcml-header"><b>{html.escape(p.name)}</b> &middot; cluster '
            f"{html.escape(clusters)} &middot; {html.escape(p.pool)} &middot; "
            f"{html.escape(p.resources)}"
            + (f" &middot; {html.escape(p.environment)}" if p.environment else "")
            + f" &middot; {html.escape(status)}</div>")


def problems_html(p: MapProgress) -> str:
    if not p.problems:
        return ""
    rows = "".join(f"<tr><td>{prob.item}</td><td>{html.escape(prob.state.value)}</td>"
                   f"<td><code>{html.escape(prob.summary[:300])}</code></td></tr>"
                   for prob in p.problems[:20])
    return ('<table class="htcml-problems"><tr><th>item</th><th>state</th><th>why</th></tr>'
            f"{rows}</table>")


def usage_html(p: MapProgress) -> str:
    """The usage line and, once finished, the advice on requests (escaped HTML; empty
    before any job finished)."""
    if not p.usage:
        return ""
    advice = "".join(f'<div class="htcml-advice" style="color:#8d6e00">{html.escape(a)}</div>'
                     for a in p.advice)
    return f'<div class="htcml-usage">used: {html.escape(p.usage)}</div>{advice}'


def notes_html(p: MapProgress) -> str:
    """The map's latest notes, small and grey (escaped HTML)."""
    return "".join(f'<div class="htcml-note" style="color:#607d8b;font-size:11px">'
                   f"{html.escape(n)}</div>" for n in p.notes)


def render_html(p: MapProgress) -> str:
    """A self-contained HTML summary (no widgets needed)."""
    return (f'<div class="htcml-map">{header_html(p)}{state_bar_html(p)}'
            f"<div>{legend_html(p)}</div>{usage_html(p)}{notes_html(p)}{problems_html(p)}"
            "</div>")
