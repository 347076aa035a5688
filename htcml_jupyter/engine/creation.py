"""Building a map: validate, write its folder, submit its jobs."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .chunking import auto_chunksize
from .mapping import Chunksize, Map
from .options import OptionError, SubmitOptions
from .payload import code_locations, dump_function
from .store import MapStore, new_map_name
from .submission import submit_tasks, write_tasks

if TYPE_CHECKING:
    from ..backends.protocol import Backend


def create_map(function: Callable[..., Any], iterable: Iterable[Any], *,
               kwargs: dict[str, Any] | None, backend: Backend, root: Path,
               name: str | None, chunksize: Chunksize, options: dict[str, Any],
               extra_meta: dict[str, Any] | None = None) -> Map:
    """Validate, write the map's folder, submit its jobs, and return the handle."""
    submit_options = SubmitOptions.from_kwargs(options)
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise OptionError(f"kwargs must be a dict of keyword arguments, not {kwargs!r}")
    if chunksize != "auto" and (isinstance(chunksize, bool) or not isinstance(chunksize, int)
                                or chunksize < 1):
        raise OptionError(f"chunksize must be a whole number >= 1 or 'auto', not {chunksize!r}")
    if isinstance(iterable, (str, bytes)):
        raise TypeError("map over a list of strings, not one string (which would map over "
                        "its characters); wrap it: [text]")
    try:
        iterator = iter(iterable)
    except TypeError:
        raise TypeError(f"the inputs must be iterable (a list, range, generator...), not "
                        f"{type(iterable).__name__}") from None
    arguments = list(iterator)
    if not arguments:
        raise ValueError("the inputs are empty: there is nothing to map")
    fn_name = getattr(function, "__name__", "map")
    name = name or new_map_name(fn_name)
    backend.check_visible(root / name)
    size = (auto_chunksize(len(arguments), backend.capacity(submit_options))
            if chunksize == "auto" else chunksize)
    meta = {
        "name": name, "function": fn_name, "created": time.time(), "n_items": len(arguments),
        "chunksize": chunksize, "chunk_items": size, "options": submit_options.asdict(),
        "pool": backend.describe(), "batch_name": name,
        "code_locations": code_locations(function),
        **(extra_meta or {}),
    }
    # Pickle the function before anything exists, so a bad function leaves nothing behind.
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "function.pkl"
        dump_function(function, kwargs, probe)
        store = MapStore.create(root, name, meta)
        try:
            os.replace(probe, store.function_file)
        except OSError:
            dump_function(function, kwargs, store.function_file)
    try:
        tasks = write_tasks(store, dict(enumerate(arguments)), list(range(len(arguments))),
                            size, first_task=0)
        submit_tasks(store, backend, tasks, submit_options, name)
    except BaseException:
        shutil.rmtree(store.path, ignore_errors=True)  # nothing was queued: leave nothing
        raise
    return Map(store, backend)
