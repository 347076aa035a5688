"""The stages of a chained workflow: what each runs, over what, and its map folder.

A stage is a function mapped over items, like :func:`htcml_jupyter.map`: the first
stage over given ``items`` (or every point of a ``grid``, as keyword arguments), each
later stage over what the stage before it returned: one item per result
(``over="each"``) or a single item, the list of all results (``over="all"``).  Each
stage's folder is an ordinary map folder, so ``htc.attach(name)`` reads its results.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..engine.creation import write_map_folder
from ..engine.grid import grid_points, unpack
from ..engine.inputs import shared_files
from ..engine.options import OptionError, SubmitOptions
from ..engine.payload import code_locations
from ..engine.store import MapStore, check_map_name
from ..engine.submission import write_task_stream

if TYPE_CHECKING:
    from ..backends.protocol import Backend

Over = Literal["items", "each", "all"]


@dataclass(frozen=True)
class Stage:
    """One step of a workflow (build it with :func:`stage`)."""

    function: Callable[..., Any]
    over: Over
    items: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    grid: bool = False

    @property
    def name(self) -> str:
        """The function's name."""
        return str(getattr(self.function, "__name__", "stage"))

    def count(self, before: int | None) -> int:
        """How many items this stage has, after a stage of ``before`` items."""
        if self.over == "items":
            return len(self.items)
        if before is None:
            raise ValueError(f"the first stage ({self.name}) needs items= or grid=; "
                             f"over='{self.over}' reads the results of a stage before it")
        return before if self.over == "each" else 1


def stage(function: Callable[..., Any], items: Sequence[Any] | None = None, *,
          grid: Mapping[str, Sequence[Any]] | None = None, over: str | None = None,
          kwargs: dict[str, Any] | None = None, **options: Any) -> Stage:
    """One stage of :func:`htcml_jupyter.chain`.

    Parameters
    ----------
    function
        Called once per item, as a job on the pool (``function(item, **kwargs)``; with
        ``grid=``, ``function(**point, **kwargs)``).
    items, grid
        The first stage's inputs: a list, or a dict of lists whose every combination
        is one item.  Later stages take neither.
    over
        For a later stage: ``"each"`` (default) calls ``function`` on each result of
        the stage before, in item order; ``"all"`` calls it once on the list of them.
    kwargs
        Constant keyword arguments for every call.
    **options
        Resources and policy as for :func:`htcml_jupyter.map` (``request_memory=``...).
    """
    if not callable(function):
        raise TypeError(f"a stage runs a function, not {type(function).__name__}")
    if items is not None and grid is not None:
        raise ValueError("give a stage items= or grid=, not both")
    SubmitOptions.from_kwargs(options)  # a bad option stops here, before anything runs
    if items is not None or grid is not None:
        if over is not None:
            raise ValueError("over= is for stages that read the stage before; a stage "
                             "with items= or grid= is the first")
        if isinstance(items, (str, bytes)):
            raise TypeError("items must be a list of inputs, not one string; wrap it: [text]")
        values = tuple(grid_points(grid)) if grid is not None else tuple(items or ())
        if not values:
            raise ValueError(f"the stage {function.__name__!r} has no items")
        return Stage(unpack(function) if grid is not None else function, "items", values,
                     dict(kwargs or {}), dict(options), grid=grid is not None)
    chosen = over or "each"
    if chosen not in ("each", "all"):
        raise ValueError(f"over must be 'each' (one call per result of the stage before) "
                         f"or 'all' (one call on the list of them), not {over!r}")
    return Stage(function, chosen, (), dict(kwargs or {}), dict(options))  # type: ignore[arg-type]


def stage_map_name(workflow: str, index: int, step: Stage) -> str:
    """The map name of stage ``index`` of ``workflow``: ``<workflow>.<index>-<function>``."""
    stem = "".join(c for c in step.name if c.isalnum() or c == "_")[:40] or "stage"
    return check_map_name(f"{workflow}.{index}-{stem}"[:100])


def write_stage_folder(step: Stage, *, root: Path, name: str, n_items: int,
                       backend: Backend, workflow: dict[str, Any]) -> MapStore:
    """Write the map folder of one stage, as a map's is written: the function, one job
    per item, and each job's input file with its ``File`` inputs recorded (the first
    stage's items; a later stage gets its inputs from :mod:`.node` when the stage
    before has finished).  ``File`` keyword arguments go to every job.  Nothing is
    queued here."""
    options = SubmitOptions.from_kwargs(step.options)
    shared = shared_files(step.kwargs)  # a missing file stops here, before any folder
    meta = {
        "name": name, "function": step.name, "created": time.time(), "n_items": n_items,
        "chunksize": 1, "chunk_items": 1, "options": options.asdict(),
        "pool": backend.describe(), "batch_name": name,
        "code_locations": code_locations(step.function),
        "kind": "stage", "workflow": workflow,
    }
    store = write_map_folder(root, name, meta, step.function, step.kwargs)
    try:
        # a later stage's inputs are placeholders until the stage before has finished
        items = step.items if step.over == "items" else (None,) * n_items
        write_task_stream(store, enumerate(items), 1, first_task=0, shared_files=shared)
    except BaseException:
        shutil.rmtree(store.path, ignore_errors=True)
        raise
    return store


def stage_inputs(over: str, results: list[Any], store: MapStore) -> None:
    """Write a later stage's input files (its jobs are recorded already) from the
    results of the stage before: one item per result (``"each"``), or one item holding
    them all (``"all"``)."""
    if over == "each":
        items: list[Any] = list(results)
    elif over == "all":
        items = [list(results)]
    else:
        raise OptionError(f"a stage over {over!r} takes no results of the stage before")
    write_task_stream(store, enumerate(items), 1, first_task=0, record=False)
