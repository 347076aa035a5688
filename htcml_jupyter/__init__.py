"""htcml_jupyter: throughput machine learning on HTCondor, driven from a notebook.

>>> import htcml_jupyter as htc
>>> m = htc.map(score, range(100), kwargs={"scale": 3}, request_memory="512MB")
>>> m.wait(); m.results()

In IPython or Jupyter, ``%load_ext htcml_jupyter`` adds the magics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .job import checkpoint, device, report
from .paths import default_map_root

if TYPE_CHECKING:  # the rest loads on first use, so a job that imports us starts fast
    from .chunking import auto_chunksize
    from .errors import (
        HTCMLError,
        ItemHeld,
        ItemRemoved,
        MapError,
        MapNotFound,
        PoolUnavailable,
        RemoteError,
        WaitTimeout,
    )
    from .grid import grid_points, unpack
    from .mapping import Chunksize, Map
    from .options import OPTIONS, OptionError, describe_options
    from .payload import PickleError
    from .policies import MedianStopping, SuccessiveHalving, Threshold
    from .resources import pool_resources
    from .state import ItemState
    from .sweeps import (
        Choice,
        IntUniform,
        LogUniform,
        Sweep,
        Uniform,
        choice,
        loguniform,
        randint,
        uniform,
    )

__version__ = "0.1.0"

_LAZY = {
    "HTCMLError": "errors", "ItemHeld": "errors", "ItemRemoved": "errors",
    "MapError": "errors", "MapNotFound": "errors", "PoolUnavailable": "errors",
    "RemoteError": "errors", "WaitTimeout": "errors",
    "grid_points": "grid", "unpack": "grid",
    "Map": "mapping", "auto_chunksize": "chunking", "Chunksize": "mapping",
    "OPTIONS": "options", "OptionError": "options", "describe_options": "options",
    "PickleError": "payload", "pool_resources": "resources", "ItemState": "state",
    "Sweep": "sweeps", "uniform": "sweeps", "loguniform": "sweeps", "randint": "sweeps",
    "choice": "sweeps", "Uniform": "sweeps", "LogUniform": "sweeps", "IntUniform": "sweeps",
    "Choice": "sweeps",
    "MedianStopping": "policies", "SuccessiveHalving": "policies", "Threshold": "policies",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'htcml_jupyter' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "OPTIONS",
    "Choice",
    "HTCMLError",
    "IntUniform",
    "ItemHeld",
    "ItemRemoved",
    "ItemState",
    "LogUniform",
    "Map",
    "MapError",
    "MapInfo",
    "MapNotFound",
    "MedianStopping",
    "OptionError",
    "PickleError",
    "PoolUnavailable",
    "RemoteError",
    "SuccessiveHalving",
    "Sweep",
    "Threshold",
    "Uniform",
    "WaitTimeout",
    "attach",
    "auto_chunksize",
    "checkpoint",
    "choice",
    "describe_options",
    "device",
    "grid_points",
    "list_maps",
    "loguniform",
    "map",
    "pool_resources",
    "randint",
    "report",
    "sweep",
    "uniform",
    "unpack",
]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext htcml_jupyter``: register the magics (``%%htc_map`` and friends)."""
    from .magics import HTCMagics

    ipython.register_magics(HTCMagics)


def map(
    function: Callable[..., Any],
    inputs: Iterable[Any],
    *,
    kwargs: dict[str, Any] | None = None,
    name: str | None = None,
    chunksize: Chunksize = "auto",
    pool: str | None = None,
    backend: str | None = None,
    root: str | Path | None = None,
    **options: Any,
) -> Map:
    """Map ``function`` over ``inputs`` as HTCondor jobs; returns at once.

    Parameters
    ----------
    function
        Called as ``function(item, **kwargs)`` for each item, on an execute node.
        It is cloudpickled once; it and what it refers to must be picklable.
    inputs
        Any iterable; each element is one item (pickled into the job's input file).
    kwargs
        Constant keyword arguments for every call.
    name
        The map's name (its folder's name); a readable unique one by default.
    chunksize
        Items per job.  ``"auto"`` (default) gives each item its own job when there
        are at most twice as many items as matching slots, and otherwise packs items
        so that each slot gets about one job.  Each item keeps its own result, error
        and retry either way.
    pool
        ``"project"``, ``"local"`` or an HTCondor client configuration file.  See
        :mod:`htcml_jupyter.pools` for the order used when it is not given.
    backend
        ``"local"`` to run in local subprocesses; ``"condor"`` to insist on a pool.
    root
        Folder under which the map's folder is made (default ``~/.htcml/maps``,
        ``$HTCML_HOME/maps``).
    **options
        Resources and policy, e.g. ``request_memory="4GB"``, ``request_gpus=1``,
        ``max_idle=100``, ``submit_extra={...}``; see :func:`describe_options`.
    """
    from .creation import create_map
    from .pools import resolve_backend

    chosen = resolve_backend(pool, backend)
    return create_map(function, inputs, kwargs=kwargs, backend=chosen,
                      root=Path(root) if root is not None else default_map_root(),
                      name=name, chunksize=chunksize, options=options)


def attach(name: str, root: str | Path | None = None) -> Map:
    """The map called ``name``, rebuilt from its folder (in any process, at any time).

    A sweep comes back as a :class:`Sweep` (its early-abort watcher resumes)."""
    from .mapping import Map
    from .pools import backend_from_meta
    from .store import MapStore

    store = MapStore.open(Path(root) if root is not None else default_map_root(), name)
    meta = store.read_meta()
    backend = backend_from_meta(meta["pool"])
    if "sweep" in meta:
        from .sweeps import Sweep

        return Sweep(store, backend)
    return Map(store, backend)


def sweep(
    function: Callable[..., Any],
    *,
    grid: dict[str, Any] | None = None,
    space: dict[str, Any] | None = None,
    n_trials: int | None = None,
    repeat: int = 1,
    seed: int = 0,
    metric: str | None = None,
    mode: str = "min",
    early_stop: Callable[..., Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    name: str | None = None,
    pool: str | None = None,
    backend: str | None = None,
    root: str | Path | None = None,
    **options: Any,
) -> Sweep:
    """Run ``function(**params)`` for every trial, each its own job; returns at once.

    Parameters
    ----------
    grid
        A dict of lists: every combination is one trial.
    space, n_trials
        A dict of distributions (:func:`uniform`, :func:`loguniform`, :func:`randint`,
        :func:`choice`) or constants, and how many random trials to draw (seeded).
    repeat
        Run each point ``repeat`` times (ensembles, seeds); then each trial gets a
        ``seed`` parameter (``seed``, ``seed + 1``, ...) unless the grid has one.
    metric, mode
        The metric that ranks trials (``best()``), and whether lower or higher wins.
    early_stop
        A policy (:class:`Threshold`, :class:`MedianStopping`, :class:`SuccessiveHalving`,
        or a function ``(trial, history, histories) -> reason or None``) applied to the
        live reports; a stopped trial's job is removed and it is marked *aborted early*.
    **options
        Resources and policy as for :func:`map` (``request_gpus=1``...).
    """
    from .pools import resolve_backend
    from .sweeps import create_sweep

    chosen = resolve_backend(pool, backend)
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
    return create_sweep(function, grid=grid, space=space, n_trials=n_trials, repeat=repeat,
                        seed=seed, metric=metric, mode=mode,  # type: ignore[arg-type]
                        early_stop=early_stop, kwargs=kwargs, backend=chosen,
                        root=Path(root) if root is not None else default_map_root(),
                        name=name, options=options)


@dataclass(frozen=True)
class MapInfo:
    """A map found on disk: enough to list it without reading its event log."""

    name: str
    function: str
    n_items: int
    created: float
    pool: str
    path: Path


def list_maps(root: str | Path | None = None) -> list[MapInfo]:
    """Every map under ``root`` (default ``~/.htcml/maps``), oldest first."""
    from .store import MapStore, list_map_names

    base = Path(root) if root is not None else default_map_root()
    out = []
    for name in list_map_names(base):
        try:
            meta = MapStore(base / name).read_meta()
        except (OSError, ValueError):
            continue
        out.append(MapInfo(name, str(meta.get("function", "?")), int(meta.get("n_items", 0)),
                           float(meta.get("created", 0)),
                           str(meta.get("pool", {}).get("description", "?")), base / name))
    return out
