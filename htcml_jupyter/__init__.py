"""htcml_jupyter: throughput machine learning on HTCondor, driven from a notebook.

>>> import htcml_jupyter as htc
>>> m = htc.map(score, range(100), kwargs={"scale": 3}, request_memory="512MB")
>>> m.wait(); m.results()

In IPython or Jupyter, ``%load_ext htcml_jupyter`` adds the magics.

The package is laid out by where code runs and what it is for (see ARCHITECTURE.md):
:mod:`.api` (the public functions), :mod:`.engine` (map state, folder, payload,
options), :mod:`.backends` (HTCondor and local processes), :mod:`.jobside` (what runs
on the execute node), :mod:`.views` (magics and panels), :mod:`.training` (sweeps and
early-abort policies) and :mod:`.devpool` (the project's own pool).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from .jobside.calls import File
from .jobside.job import checkpoint, device, output_dir, report

if TYPE_CHECKING:  # the rest loads on first use, so a job that imports us starts fast
    from .api import MapInfo, attach, list_maps, map, pool_resources, sweep
    from .engine.chunking import auto_chunksize
    from .engine.errors import (
        HTCMLError,
        ItemHeld,
        ItemRemoved,
        MapError,
        MapNotFound,
        PoolUnavailable,
        RemoteError,
        WaitTimeout,
    )
    from .engine.grid import grid_points, unpack
    from .engine.mapping import Chunksize as Chunksize
    from .engine.mapping import Map
    from .engine.options import OPTIONS, OptionError, SubmitOptions, describe_options
    from .engine.payload import PickleError
    from .engine.state import ItemState
    from .executor import Executor, HTCFuture
    from .joblib_backend import register_joblib
    from .multinode import torchrun
    from .training.policies import MedianStopping, SuccessiveHalving, Threshold
    from .training.sweeps import (
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
    from .workflows.dag import Workflow, attach_workflow, chain
    from .workflows.stages import Stage, stage

__version__ = "0.1.0"

if "joblib" in sys.modules:  # joblib is in use: its "htcondor" backend is there at once
    from . import joblib_backend as _joblib_backend  # noqa: F401

_LAZY = {
    "map": "api", "attach": "api", "sweep": "api", "list_maps": "api", "MapInfo": "api",
    "HTCMLError": "engine.errors", "ItemHeld": "engine.errors",
    "ItemRemoved": "engine.errors", "MapError": "engine.errors",
    "MapNotFound": "engine.errors", "PoolUnavailable": "engine.errors",
    "RemoteError": "engine.errors", "WaitTimeout": "engine.errors",
    "grid_points": "engine.grid", "unpack": "engine.grid",
    "Map": "engine.mapping", "Chunksize": "engine.mapping",
    "auto_chunksize": "engine.chunking",
    "OPTIONS": "engine.options", "OptionError": "engine.options",
    "SubmitOptions": "engine.options", "describe_options": "engine.options",
    "PickleError": "engine.payload", "ItemState": "engine.state",
    "Executor": "executor", "HTCFuture": "executor", "register_joblib": "joblib_backend",
    "pool_resources": "api",
    "Sweep": "training.sweeps", "uniform": "training.sweeps",
    "loguniform": "training.sweeps", "randint": "training.sweeps",
    "choice": "training.sweeps", "Uniform": "training.sweeps",
    "LogUniform": "training.sweeps", "IntUniform": "training.sweeps",
    "Choice": "training.sweeps",
    "MedianStopping": "training.policies", "SuccessiveHalving": "training.policies",
    "Threshold": "training.policies",
    "torchrun": "multinode",
    "chain": "workflows.dag", "attach_workflow": "workflows.dag",
    "Workflow": "workflows.dag", "stage": "workflows.stages", "Stage": "workflows.stages",
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
    "Executor",
    "File",
    "HTCFuture",
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
    "Stage",
    "SubmitOptions",
    "SuccessiveHalving",
    "Sweep",
    "Threshold",
    "Uniform",
    "WaitTimeout",
    "Workflow",
    "attach",
    "attach_workflow",
    "auto_chunksize",
    "chain",
    "checkpoint",
    "choice",
    "describe_options",
    "device",
    "grid_points",
    "list_maps",
    "loguniform",
    "map",
    "output_dir",
    "pool_resources",
    "randint",
    "register_joblib",
    "report",
    "stage",
    "sweep",
    "torchrun",
    "uniform",
    "unpack",
]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext htcml_jupyter``: register the magics (``%%htc_map`` and friends)."""
    from .views.magics import HTCMagics
    from .views.torchrun_magic import TorchrunMagics

    ipython.register_magics(HTCMagics)
    ipython.register_magics(TorchrunMagics)
