"""Multi-node training: ``htc.torchrun(fn, nodes=N, procs_per_node=P)``.

One HTCondor cluster with one job per node; every node runs ``torchrun`` with the
c10d rendezvous, and the address of node 0 travels only through HTCondor (chirp).
See :func:`torchrun` and ARCHITECTURE.md, "Multi-node training".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..paths import default_map_root
from .run import NodeStatus, RankInfo, TorchrunError, TorchrunRun
from .submit import DEFAULT_JOIN_TIMEOUT, RunShape

__all__ = ["NodeStatus", "RankInfo", "RunShape", "TorchrunError", "TorchrunRun",
           "attach_run", "torchrun"]


def torchrun(
    function: Callable[..., Any],
    *,
    nodes: int = 2,
    procs_per_node: int = 1,
    kwargs: dict[str, Any] | None = None,
    join_timeout: float = DEFAULT_JOIN_TIMEOUT,
    name: str | None = None,
    pool: str | None = None,
    root: str | Path | None = None,
    **options: Any,
) -> TorchrunRun:
    """Run ``function(**kwargs)`` in every process of a multi-node torchrun; returns at once.

    Parameters
    ----------
    function
        Called once per process with ``kwargs``; torchrun has set ``RANK``,
        ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``, so
        ``torch.distributed.init_process_group("gloo")`` (or ``"nccl"``) needs no
        arguments.  Its return value comes back per rank (:meth:`TorchrunRun.results`).
        ``htc.report()`` and ``htc.checkpoint()`` work in it as in a map.
    nodes, procs_per_node
        How many jobs (one per node) and processes in each: world size
        ``nodes * procs_per_node``.
    kwargs
        Keyword arguments of every call.
    join_timeout
        Seconds a node waits for node 0's address, and torchrun for every node to join.
    name, pool, root
        As for :func:`htcml_jupyter.map`.
    **options
        Resources per node (``request_gpus=1``, ``gpus_minimum_memory="16GB"``,
        ``gpus_minimum_capability=8.0``, ``requirements=...``, ``request_cpus``,
        ``request_memory``, ``environment``...); see :func:`describe_options`.

    Returns
    -------
    TorchrunRun
        ``run.wait()``, ``run.results()`` (one value per global rank, in rank order),
        ``run.nodes()``, ``run.rendezvous``, ``run.reports(rank=0)``, ``run.panel()``.

    Examples
    --------
    >>> def train(epochs=3):
    ...     import torch.distributed as dist
    ...     dist.init_process_group("gloo")
    ...     ...
    ...     return {"rank": dist.get_rank(), "loss": loss}
    >>> run = htc.torchrun(train, nodes=2, kwargs={"epochs": 3})
    >>> run.results()        # [{'rank': 0, ...}, {'rank': 1, ...}]
    """
    from ..backends.condor import CondorBackend
    from ..backends.pools import resolve_backend
    from ..engine.options import OptionError
    from .submit import create_run

    shape = RunShape(nodes, procs_per_node, join_timeout)
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise OptionError(f"kwargs must be a dict of keyword arguments, not {kwargs!r}")
    if options.get("chirp") is False:
        raise OptionError("htc.torchrun cannot run with chirp=False: its nodes find each "
                          "other through chirp (the relay files in the run's folder); "
                          "leave chirp on")
    backend = resolve_backend(pool, "condor")
    if not isinstance(backend, CondorBackend):
        raise OptionError("htc.torchrun needs an HTCondor pool (its nodes meet through "
                          "chirp); start one with `htcml pool up` or pass pool=")
    m = create_run(function, shape=shape, kwargs=kwargs, backend=backend,
                   root=Path(root) if root is not None else default_map_root(), name=name,
                   options=options)
    return TorchrunRun(m)


def attach_run(name: str, root: str | Path | None = None) -> TorchrunRun:
    """The run called ``name``, rebuilt from its folder (any process, any time)."""
    from ..backends.pools import backend_from_record
    from ..engine.errors import MapNotFound
    from ..engine.store import MapStore
    from .run import run_map

    store = MapStore.open(Path(root) if root is not None else default_map_root(), name)
    record = store.read_record()
    if record.kind != "torchrun":
        raise MapNotFound(f"{name!r} is a {record.kind}, not a torchrun run; use "
                          f"htc.attach({name!r})")
    return TorchrunRun(run_map(store, backend_from_record(record)))
