"""Submitting a multi-node torchrun: one cluster, one job per node, built on a map.

A run is a map whose items are the run's processes (``nodes * procs_per_node``) packed
``procs_per_node`` to a job, so each job is one node.  Everything a map has comes with
it: the map folder, the environment delivery (:func:`~htcml_jupyter.environment.job_launch`),
the submit description, the runner, the event log, outcomes, reports and checkpoints.
Only how a job starts differs: :class:`TorchrunBackend` puts the job-side launcher
(``jobside/torchrun_launch.py``) in front of the runner's arguments.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..backends.condor import CondorBackend
from ..engine.creation import create_map
from ..engine.mapping import Map
from ..engine.options import OptionError, SubmitOptions
from ..engine.payload import code_locations
from ..engine.store import MapStore
from ..engine.submission import submits_for_job_user
from ..environment.launch import JobLaunch
from ..jobside import torchrun_launch, torchrun_relay, torchrun_worker
from ..jobside.torchrun_relay import RELAY_DIR

#: Seconds a node waits for node 0's address, and torchrun for every node to join.
DEFAULT_JOIN_TIMEOUT = 600.0


@dataclasses.dataclass(frozen=True)
class RunShape:
    """How many nodes, processes per node, and how long nodes wait for each other."""

    nodes: int
    procs_per_node: int
    join_timeout: float = DEFAULT_JOIN_TIMEOUT

    def __post_init__(self) -> None:
        for name in ("nodes", "procs_per_node"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OptionError(f"{name} must be a whole number >= 1, not {value!r}")
        timeout = self.join_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise OptionError(f"join_timeout must be a number of seconds > 0, not "
                              f"{timeout!r}")

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    def asdict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def launcher_arguments(shape: RunShape) -> tuple[str, ...]:
    """What goes between the job's interpreter and the runner's own arguments."""
    return ("torchrun_launch.py", "--nodes", str(shape.nodes), "--procs",
            str(shape.procs_per_node), "--join-timeout", str(int(shape.join_timeout)), "--")


def launcher_files() -> tuple[str, ...]:
    """The job-side files a node needs besides a map job's own."""
    return tuple(str(Path(module.__file__ or "")) for module in (
        torchrun_launch, torchrun_relay, torchrun_worker))


class TorchrunBackend(CondorBackend):
    """An HTCondor pool whose jobs start as nodes of a torchrun (see the module)."""

    def __init__(self, base: CondorBackend, shape: RunShape):
        super().__init__(base.config, description=base.description, job_uid=base.job_uid,
                         shared_paths=base.shared_paths)
        self.shape = shape

    def launch(self, store: MapStore, options: SubmitOptions) -> JobLaunch:
        """The map's launch with the torchrun launcher in front of the runner."""
        launch = super().launch(store, options)
        return dataclasses.replace(
            launch, arguments_prefix=(*launch.arguments_prefix,
                                      *launcher_arguments(self.shape)),
            input_files=(*launch.input_files, *launcher_files()))

    def job_attributes(self) -> dict[str, str]:
        return {"My.HtcmlTorchrun": f'"{self.shape.nodes}x{self.shape.procs_per_node}"'}

    def submit(self, store: MapStore, tasks: list[int], options: SubmitOptions,
               batch_name: str) -> int:
        relay = store.path / RELAY_DIR  # the nodes' chirp files land here
        relay.mkdir(mode=0o700, exist_ok=True)
        uid = submits_for_job_user(self)
        if uid is not None:
            os.chown(relay, uid, -1, follow_symlinks=False)
        return super().submit(store, tasks, options, batch_name)


def create_run(function: Callable[..., Any], *, shape: RunShape, kwargs: dict[str, Any],
               backend: CondorBackend, root: Path, name: str | None,
               options: dict[str, Any]) -> Map:
    """Validate, write the run's folder, submit one job per node; returns the map."""
    if not callable(function):
        raise TypeError(f"the function to run must be callable, not "
                        f"{type(function).__name__}")
    if not isinstance(backend, CondorBackend):
        raise OptionError("htc.torchrun needs an HTCondor pool (its nodes meet through "
                          "chirp); start one with `htcml pool up` or pass pool=")
    if "chunksize" in options:
        raise OptionError("htc.torchrun places procs_per_node processes in each job; "
                          "chunksize cannot be set")
    wrapped = torchrun_launch.RankCall(function)
    meta = {"kind": "torchrun", "torchrun": shape.asdict(),
            "code_locations": code_locations(function)}
    root.mkdir(parents=True, exist_ok=True)
    # The wrapper carries the function's module name, so a module of the user's own
    # is pickled by value, as for a map.
    return create_map(wrapped, range(shape.world_size), kwargs=kwargs,
                      backend=TorchrunBackend(backend, shape), root=root, name=name,
                      chunksize=shape.procs_per_node, options=options, extra_meta=meta)

