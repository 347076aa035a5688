"""Building a map: validate, write its folder, submit its jobs."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from itertools import chain, islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .chunking import items_per_job
from .inputs import shared_files
from .mapping import Chunksize, Map
from .options import OptionError, SubmitOptions
from .payload import code_locations, dump_function
from .store import MapStore, new_map_name
from .submission import submission_lock, submit_tasks, write_task_stream

if TYPE_CHECKING:
    from ..backends.protocol import Backend


#: ``chunksize="auto"`` over inputs of unknown length looks this many items ahead to
#: size the jobs (the rest are read one job at a time).
LOOKAHEAD = 100_000


def _length(iterable: Iterable[Any]) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def write_map_folder(root: Path, name: str, meta: dict[str, Any],
                     function: Callable[..., Any], kwargs: dict[str, Any], *,
                     setup: Callable[[], Any] | None = None,
                     batch_size: int | None = None) -> MapStore:
    """Create the folder of a new map (``map.json`` from ``meta``, the pickled function)
    and return its store; the jobs' input files follow through
    :func:`~.submission.write_task_stream`.

    The function is pickled before anything exists, so a function that cannot be
    pickled leaves nothing behind.  Maps, sweeps, torchrun runs and chain stages all
    start their folder here.
    """
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "function.pkl"
        dump_function(function, kwargs, probe, setup=setup, batch_size=batch_size)
        store = MapStore.create(root, name, meta)
        try:
            os.replace(probe, store.function_file)
        except OSError:  # another filesystem: pickle it again in place
            dump_function(function, kwargs, store.function_file, setup=setup,
                          batch_size=batch_size)
    return store


def create_map(function: Callable[..., Any], iterable: Iterable[Any], *,
               kwargs: dict[str, Any] | None, backend: Backend, root: Path,
               name: str | None, chunksize: Chunksize, options: dict[str, Any],
               extra_meta: dict[str, Any] | None = None,
               setup: Callable[[], Any] | None = None,
               batch_size: int | None = None) -> Map:
    """Validate, write the map's folder, submit its jobs, and return the handle.

    The inputs are read one job at a time: a generator of millions of items is never
    held in memory, and each job's items go into one input file.
    """
    submit_options = SubmitOptions.from_kwargs(options)
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise OptionError(f"kwargs must be a dict of keyword arguments, not {kwargs!r}")
    if chunksize != "auto" and (isinstance(chunksize, bool) or not isinstance(chunksize, int)
                                or chunksize < 1):
        raise OptionError(f"chunksize must be a whole number >= 1 or 'auto', not {chunksize!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or
                                   not isinstance(batch_size, int) or batch_size < 1):
        raise OptionError(f"batch_size must be a whole number >= 1 (or None: one item per "
                          f"call), not {batch_size!r}")
    if isinstance(iterable, (str, bytes)):
        raise TypeError("map over a list of strings, not one string (which would map over "
                        "its characters); wrap it: [text]")
    try:
        iterator = iter(iterable)
    except TypeError:
        raise TypeError(f"the inputs must be iterable (a list, range, generator...), not "
                        f"{type(iterable).__name__}") from None
    length = _length(iterable)
    head = list(islice(iterator, LOOKAHEAD if length is None else 1))
    if not head:
        raise ValueError("the inputs are empty: there is nothing to map")
    if length is None and len(head) < LOOKAHEAD:
        length = len(head)  # it ended within the look-ahead
    shared = shared_files(kwargs)
    fn_name = getattr(function, "__name__", "map")
    name = name or new_map_name(fn_name)
    backend.check_visible(root / name)
    size = items_per_job(chunksize, length if length is not None else LOOKAHEAD, batch_size,
                         lambda: backend.capacity(submit_options))
    meta = {  # extra_meta: a sweep's or a run's kind and part
        "kind": "map", "name": name, "function": fn_name, "created": time.time(),
        "n_items": length,
        "chunksize": chunksize, "chunk_items": size, "options": submit_options.asdict(),
        "pool": backend.describe(), "batch_name": name,
        "code_locations": code_locations(function),
        "batch_size": batch_size, "setup": getattr(setup, "__name__", None) if setup else None,
        **(extra_meta or {}),
    }
    store = write_map_folder(root, name, meta, function, kwargs, setup=setup,
                             batch_size=batch_size)
    try:
        with submission_lock(store):  # a retry from elsewhere waits for the first jobs
            tasks = write_task_stream(store, enumerate(chain(head, iterator)), size,
                                      first_task=0, shared_files=shared)
            n_items = sum(len(items) for _, items in tasks)
            if n_items != meta["n_items"]:
                store.write_record(store.read_record().replace(n_items=n_items))
            submit_tasks(store, backend, tasks, submit_options, name)
    except BaseException:
        shutil.rmtree(store.path, ignore_errors=True)  # nothing was queued: leave nothing
        raise
    return Map(store, backend)
