"""The public API: map a function over inputs, attach to a map, run a sweep, list maps.

Every magic is a thin layer over these functions; they work the same in scripts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .paths import default_map_root

if TYPE_CHECKING:
    from .backends.resources import PoolResources
    from .engine.mapping import Chunksize, Map
    from .multinode.run import TorchrunRun
    from .training.sweeps import Sweep

def map(
    function: Callable[..., Any],
    inputs: Iterable[Any],
    *,
    kwargs: dict[str, Any] | None = None,
    setup: Callable[[], Any] | None = None,
    batch_size: int | None = None,
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
        Called as ``function(item, **kwargs)`` for each item, on an execute node
        (``function(item, resource, **kwargs)`` with ``setup``; a list of items in,
        a list of as many results out, with ``batch_size``).  It is cloudpickled
        once; it and what it refers to must be picklable.
    inputs
        Any iterable, read one job at a time (a generator of millions of items is
        never held in memory); each element is one item.  An item that is, or holds,
        an :class:`htcml_jupyter.File` (a path or a URL such as ``https://`` or
        ``osdf://``) has that file transferred to its job; the function receives a
        local :class:`pathlib.Path` in its place.
    kwargs
        Constant keyword arguments for every call.  ``File`` values among them go
        once to every job (model weights), never into each job's pickle.
    setup
        A function without arguments that runs once per job before its items, e.g.
        to load a model; its value is passed to every call after the item.  Its runs
        and their durations: ``m.setup_stats()``.  If it raises, every item of that
        job fails with its traceback.
    batch_size
        Hand ``function`` lists of up to this many items (one GPU batch); it returns
        a list with one result per item.  A batch that raises fails all its items
        with that error.
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
    from .backends.pools import resolve_backend
    from .engine.creation import create_map

    chosen = resolve_backend(pool, backend)
    return create_map(function, inputs, kwargs=kwargs, backend=chosen,
                      root=Path(root) if root is not None else default_map_root(),
                      name=name, chunksize=chunksize, options=options, setup=setup,
                      batch_size=batch_size)


def attach(name: str, root: str | Path | None = None,
           watch: bool = True) -> Map | TorchrunRun:
    """The map called ``name``, rebuilt from its folder (in any process, at any time).

    The handle is that of the map's kind (its record's ``kind``): a :class:`Map`; a
    :class:`Sweep` for a sweep, whose early-abort watcher resumes unless ``watch=False``
    (progress only: the sweep's policy is then never unpickled); a chain stage's map; a
    :class:`~htcml_jupyter.multinode.TorchrunRun` for a torchrun run, whose nodes a retry
    starts with the torchrun launcher again."""
    m = attach_map(name, root, watch)
    if m.store.read_record().kind == "torchrun":
        from .multinode.run import TorchrunRun

        return TorchrunRun(m)
    return m


def attach_map(name: str, root: str | Path | None = None, watch: bool = True) -> Map:
    """The map called ``name`` as a :class:`Map` of its kind (a torchrun run: the map of
    its nodes, on the run's backend); :func:`attach` without the run's handle."""
    from .backends.pools import backend_from_record
    from .engine.mapping import Map
    from .engine.store import MapStore

    store = MapStore.open(Path(root) if root is not None else default_map_root(), name)
    record = store.read_record()
    backend = backend_from_record(record)
    if record.kind == "stage":
        from .workflows.node import StageMap

        return StageMap(store, backend)
    if record.kind == "sweep":
        from .training.adaptive import open_sweep

        return open_sweep(store, backend, watch=watch)
    if record.kind == "torchrun":
        from .multinode.run import run_map

        return run_map(store, backend)
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
    watcher: str = "pool",
    sampler: Any = None,
    pruner: Any = None,
    max_concurrent: int | None = None,
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
    watcher
        Where ``early_stop`` is applied: ``"pool"`` (default) also in a local-universe
        job on the submit host, so trials are still stopped when this process ends;
        ``"kernel"``, in this process only.
    sampler, pruner, max_concurrent
        An adaptive sweep: an Optuna study asks for each trial from the finished ones
        (``sampler``: ``"tpe"``, ``"random"``, ``"qmc"``, ``"cmaes"`` seeded with ``seed``,
        or an ``optuna.samplers`` object), at most ``max_concurrent`` at once (default:
        the pool's slots), ``n_trials`` in all; ``metric`` reports go to the study and
        ``pruner`` (``"hyperband"``, ``"median"``, ``"successive_halving"``, ``"none"``
        or an ``optuna.pruners`` object) aborts trials early.  ``s.study`` is the
        ``optuna.Study``, kept in the map folder (``study.log``).
    **options
        Resources and policy as for :func:`map` (``request_gpus=1``...).
    """
    from .backends.pools import resolve_backend
    from .training.sweeps import create_sweep

    chosen = resolve_backend(pool, backend)
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
    if watcher not in ("pool", "kernel"):
        raise ValueError(f"watcher must be 'pool' or 'kernel', not {watcher!r}")
    if sampler is None and (pruner is not None or max_concurrent is not None):
        raise ValueError("pruner= and max_concurrent= go with an adaptive sweep: add "
                         "sampler='tpe' (or 'random', or an optuna sampler)")
    if sampler is not None:
        from .training.adaptive import create_adaptive_sweep

        return create_adaptive_sweep(
            function, space=space, n_trials=n_trials, grid=grid, early_stop=early_stop,
            repeat=repeat, sampler=sampler, pruner=pruner, max_concurrent=max_concurrent,
            seed=seed, metric=metric, mode=mode, kwargs=kwargs,  # type: ignore[arg-type]
            backend=chosen, root=Path(root) if root is not None else default_map_root(),
            name=name, options=options, watcher=watcher)  # type: ignore[arg-type]
    return create_sweep(function, grid=grid, space=space, n_trials=n_trials, repeat=repeat,
                        seed=seed, metric=metric, mode=mode,  # type: ignore[arg-type]
                        early_stop=early_stop, kwargs=kwargs, backend=chosen,
                        root=Path(root) if root is not None else default_map_root(),
                        name=name, options=options,
                        watcher=watcher)  # type: ignore[arg-type]


def pool_resources(pool: str | None = None) -> PoolResources:
    """What the pool new maps would use offers: slots, CPUs, memory and GPUs, in total
    and free now (``pool`` as for :func:`map`)."""
    from .backends.pools import resolve_backend

    return resolve_backend(pool).resources()


@dataclass(frozen=True)
class MapInfo:
    """A map found on disk: enough to list it without reading its event log."""

    name: str
    function: str
    n_items: int
    created: float
    pool: str
    path: Path
    #: Why the map's record could not be read (then the other fields are placeholders).
    problem: str | None = None

    def __repr__(self) -> str:
        if self.problem is not None:
            return f"<MapInfo {self.name!r}: unreadable: {self.problem}>"
        return (f"<MapInfo {self.name!r}: {self.function}, {self.n_items} items, "
                f"created {self.created_text}, on {self.pool}>")

    @property
    def created_text(self) -> str:
        """The creation time as ``YYYY-MM-DD HH:MM`` (local time)."""
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.created))

    def row(self) -> dict[str, str]:
        """This map as one row of the maps table (:data:`MAP_COLUMNS`)."""
        return {"name": self.name, "function": self.function, "items": str(self.n_items),
                "created": self.created_text, "pool": self.pool}


#: The columns of the maps table that ``htcml maps`` and ``%htc_maps`` show.
MAP_COLUMNS = ("name", "function", "items", "created", "pool")


def maps_text(infos: list[MapInfo]) -> str:
    """The maps table as aligned text."""
    rows = [dict(zip(MAP_COLUMNS, (c.upper() for c in MAP_COLUMNS), strict=True)),
            *(i.row() for i in infos)]
    widths = {c: max(len(r[c]) for r in rows) for c in MAP_COLUMNS}
    return "\n".join("  ".join(r[c].ljust(widths[c]) for c in MAP_COLUMNS).rstrip()
                     for r in rows)


def list_maps(root: str | Path | None = None) -> list[MapInfo]:
    """Every map under ``root`` (default ``~/.htcml/maps``), oldest first.

    A map whose ``map.json`` cannot be read (damaged, not a map's record, a link) is
    listed too, with the reason in :attr:`MapInfo.problem`; nothing in it is run."""
    from .engine.store import MapStore, list_map_names

    base = Path(root) if root is not None else default_map_root()
    return [_map_info(MapStore(base / name)) for name in list_map_names(base)]


def _map_info(store: Any) -> MapInfo:
    """The listing entry of one map folder; never raises."""
    try:
        record = store.read_record()
        return MapInfo(store.name, record.function, record.n_items, record.created,
                       record.pool_description, store.path)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        try:
            created = store.path.lstat().st_mtime
        except OSError:
            created = 0.0
        return MapInfo(store.name, "?", 0, created, "?", store.path,
                       problem=f"{type(exc).__name__}: {exc}")
