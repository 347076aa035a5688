"""The maps under one user's map root, as the JupyterLab sidebar shows them.

:class:`MapCatalog` lists the maps with :func:`htcml_jupyter.api.list_maps`, follows
each through a map attached once with :func:`htcml_jupyter.api.attach_map` (re-attached
when another process adds jobs to it, e.g. a retry), and cancels or retries a map
through a fresh ``attach_map(name)`` (the map on the backend its record names: a
torchrun run's nodes are queued again with their launcher).  It reads nothing outside
its root: a name is checked like every map name
(:func:`~htcml_jupyter.engine.store.check_map_name`), and an entry that is a symbolic
link, or that resolves outside the root, is neither listed nor acted on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..api import MapInfo, attach_map, list_maps
from ..engine.errors import HTCMLError, MapNotFound
from ..engine.mapping import Map
from ..engine.state import ItemState
from ..engine.store import MapStore, check_map_name
from ..training.sweeps import Sweep

#: Item states that still need waiting for.
_UNSETTLED = tuple(s.value for s in ItemState if not s.settled)


class MapBusy(HTCMLError):
    """The map's jobs are being submitted by another process; act on it a moment later."""


@dataclass(frozen=True)
class MapSummary:
    """One row of the sidebar: a map or sweep and the counts of its items per state."""

    name: str
    kind: str  # "map" or "sweep"
    function: str
    pool: str
    n_items: int
    created: float
    age: float  # seconds since the map was created
    counts: dict[str, int] = field(default_factory=dict)
    running: bool = False  # True while any item is idle or running
    submitting: bool = False  # True while another process is queueing its jobs
    error: str | None = None  # why the map could not be read, when it could not
    usage: str = ""  # what its jobs used, in one line, once any finished (Map.usage)

    def as_json(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict."""
        return asdict(self)


def summarize(info: MapInfo, m: Map | None, error: str | None = None,
              submitting: bool = False) -> MapSummary:
    """The summary of a map from its listing entry and, when attached, its state."""
    counts = m.status() if m is not None else {}
    used = m.usage(live=False) if m is not None else None
    kind = "sweep" if isinstance(m, Sweep) else "map"
    return MapSummary(name=info.name, kind=kind, function=info.function, pool=info.pool,
                      n_items=info.n_items, created=info.created,
                      age=max(0.0, time.time() - info.created), counts=counts,
                      running=submitting or any(counts.get(s, 0) for s in _UNSETTLED),
                      submitting=submitting, error=error,
                      usage=used.summary() if used is not None and used.finished else "")


def submitting(path: Path) -> bool:
    """True while the map at ``path`` has a submission note whose process still runs on
    this machine (it may confirm the note any moment; ``attach`` leaves it alone too)."""
    store = MapStore(path)
    pending = store.pending_submissions()
    return bool(set(pending) - set(store.pending_submissions(abandoned_only=True)))


def _observe_only(m: Map) -> Map:
    """A sweep attached here shows progress but leaves early aborts to its notebook
    (its watcher finds no policy to apply)."""
    if isinstance(m, Sweep):
        m.policy = None
    return m


@dataclass
class _Attached:
    map: Map
    signature: tuple[int, int]


class MapCatalog:
    """The maps of one map root; safe to use from several threads."""

    def __init__(self, root: Path):
        self.root = root
        self._lock = threading.Lock()
        self._listing = threading.Lock()  # one listing at a time (several open pages)
        self._attached: dict[str, _Attached] = {}

    # ------------------------------------------------------------------ checks
    def folder_of(self, name: str) -> Path:
        """The folder of map ``name`` under the root.

        Raises ``ValueError`` for a name that is not a map name (``..``, ``/``, NUL, ...)
        and :class:`MapNotFound` when no map of that name lives directly under the root.
        """
        check_map_name(name)
        path = self.root / name
        if not self._is_own(path):
            raise MapNotFound(f"no map named {name!r} in {self.root} "
                              f"(htcml_jupyter.list_maps() lists them)")
        return path

    def _is_own(self, path: Path) -> bool:
        """True for a real map folder directly under the root (no link leads elsewhere;
        links inside it are never followed by the store, and are listed as the reason
        the map cannot be read)."""
        try:
            return (not path.is_symlink() and path.is_dir()
                    and path.resolve().parent == self.root.resolve())
        except OSError:
            return False

    # ----------------------------------------------------------------- listing
    def summaries(self) -> list[MapSummary]:
        """Every map and sweep under the root, oldest first, with its item counts."""
        with self._listing:
            infos = [i for i in list_maps(self.root) if self._is_own(i.path)]
            self._forget_except({i.name for i in infos})
            return [self._summary(info) for info in infos]

    def _summary(self, info: MapInfo) -> MapSummary:
        if info.problem is not None:
            return summarize(info, None, info.problem)
        try:
            if submitting(info.path):  # the last counts known, if any
                with self._lock:
                    held = self._attached.get(info.name)
                return summarize(info, held.map if held else None, submitting=True)
            return summarize(info, self._map(info))
        except Exception as exc:  # one damaged or hostile map never hides the others
            return summarize(info, None, f"{type(exc).__name__}: {exc}")

    def _map(self, info: MapInfo) -> Map:
        signature = _signature(info.path)
        with self._lock:
            held = self._attached.get(info.name)
            if held is not None and held.signature == signature:
                return held.map
        fresh = _observe_only(attach_map(info.name, self.root))
        with self._lock:
            old = self._attached.pop(info.name, None)
            self._attached[info.name] = _Attached(fresh, signature)
        if old is not None:
            old.map.close()
        return fresh

    def _forget_except(self, names: set[str]) -> None:
        with self._lock:
            gone = [self._attached.pop(n) for n in list(self._attached) if n not in names]
        for held in gone:
            held.map.close()

    def forget(self, name: str) -> None:
        """Drop the attached copy of ``name``; the next listing attaches it again."""
        with self._lock:
            held = self._attached.pop(name, None)
        if held is not None:
            held.map.close()

    # ----------------------------------------------------------------- actions
    def cancel(self, name: str) -> MapSummary:
        """Remove every unfinished job of map ``name`` (``attach(name).cancel()``)."""
        return self._act(name, lambda m: m.cancel())

    def retry(self, name: str) -> tuple[MapSummary, list[int]]:
        """Run the failed, held and removed items of ``name`` again; returns them too."""
        items: list[int] = []
        summary = self._act(name, lambda m: items.extend(m.retry()))
        return summary, items

    def _act(self, name: str, action: Callable[[Map], object]) -> MapSummary:
        if submitting(self.folder_of(name)):
            raise MapBusy(f"the jobs of {name!r} are being submitted by another process; "
                          f"try again once they are queued")
        m = _observe_only(attach_map(name, self.root))
        try:
            action(m)
            info = next((i for i in list_maps(self.root) if i.name == name), None)
            if info is None:
                raise MapNotFound(f"the map {name!r} left {self.root} while it was changed")
            summary = summarize(info, m)
        finally:
            m.close()
            self.forget(name)
        return summary

    def close(self) -> None:
        """Stop following every attached map (their jobs and folders are untouched)."""
        self._forget_except(set())


def _signature(path: Path) -> tuple[int, int]:
    """What changes when a process adds jobs to the map (its ``tasks.jsonl``)."""
    try:
        st = (path / "tasks.jsonl").stat()
    except FileNotFoundError:
        return (0, 0)
    return (st.st_size, st.st_mtime_ns)
