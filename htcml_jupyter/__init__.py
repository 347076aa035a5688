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
from typing import Any

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
from .mapping import Chunksize, Map, auto_chunksize
from .options import OPTIONS, OptionError, describe_options
from .paths import default_map_root
from .payload import PickleError
from .resources import pool_resources
from .state import ItemState
from .store import MapStore, list_map_names

__version__ = "0.1.0"

__all__ = [
    "OPTIONS",
    "HTCMLError",
    "ItemHeld",
    "ItemRemoved",
    "ItemState",
    "Map",
    "MapError",
    "MapInfo",
    "MapNotFound",
    "OptionError",
    "PickleError",
    "PoolUnavailable",
    "RemoteError",
    "WaitTimeout",
    "attach",
    "auto_chunksize",
    "describe_options",
    "grid_points",
    "list_maps",
    "map",
    "pool_resources",
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
    from .mapping import create_map
    from .pools import resolve_backend

    chosen = resolve_backend(pool, backend)
    return create_map(function, inputs, kwargs=kwargs, backend=chosen,
                      root=Path(root) if root is not None else default_map_root(),
                      name=name, chunksize=chunksize, options=options)


def attach(name: str, root: str | Path | None = None) -> Map:
    """The map called ``name``, rebuilt from its folder (in any process, at any time)."""
    from .pools import backend_from_meta

    store = MapStore.open(Path(root) if root is not None else default_map_root(), name)
    return Map(store, backend_from_meta(store.read_meta()["pool"]))


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
