"""Which pool a map uses.

In order: an explicit ``pool=``/``backend=`` argument; the ``HTCML_POOL`` setting;
``CONDOR_CONFIG`` or a system HTCondor configuration (the local schedd); the
project's own pool when it is up (when its isolated pool is up too, the map's header
says so), else the project's isolated pool when that is the one up; otherwise local
subprocesses, with a notice
(``HTCML_LOCAL_FALLBACK=0`` turns the fallback into an error).

A pool is named by ``"local"``, ``"project"`` (the project's pool, see ``htcml pool
up``), ``"isolated"`` (the project's isolated pool, whose execute nodes share no files
with this machine, see ``htcml pool up --isolated``) or the path of an HTCondor client
configuration file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from .. import devpool
from ..engine.errors import PoolUnavailable
from ..engine.record import TORCHRUN_LAUNCHER, MapRecord
from .condor import CondorBackend
from .local import LocalBackend
from .protocol import Backend

SYSTEM_CONFIG = "/etc/condor/condor_config"
_HOW_TO = ("start the project's pool with `htcml pool up`, point CONDOR_CONFIG at your "
           "pool's configuration, or pass backend='local' to run in local processes")


class LocalFallbackNotice(UserWarning):
    """No HTCondor pool was found, so a map runs in local processes."""


def _notice(message: str) -> None:
    """Warn with :class:`LocalFallbackNotice` every time, not once per place: the
    warning goes through :func:`warnings.warn_explicit` without a registry (so it is not
    deduplicated) and the process's warning filters are left alone."""
    import sys

    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(
            "htcml_jupyter"):
        frame = frame.f_back
    warnings.warn_explicit(message, LocalFallbackNotice, frame.f_code.co_filename,
                           frame.f_lineno, module=frame.f_globals.get("__name__"))

def project_backend() -> CondorBackend | None:
    """The project's pool when ``htcml pool up`` started it, else None."""
    state = devpool.running_state()
    if state is None:
        return None
    return CondorBackend(state.client_config, description="the project's pool",
                         job_uid=state.job_uid if state.mode == "rootfs" else None,
                         shared_paths=state.shared_paths)


def isolated_backend() -> CondorBackend | None:
    """The project's isolated pool when ``htcml pool up --isolated`` started it, else None.

    Returns
    -------
    CondorBackend or None
        A backend for its client configuration; map folders must lie under a folder
        its submit side sees (``/tmp``, ``/home``, ``$HTCML_HOME``).
    """
    state = devpool.running_state(isolated=True)
    if state is None:
        return None
    return CondorBackend(state.client_config, description="the project's isolated pool",
                         job_uid=state.job_uid if os.geteuid() == 0 else None,
                         shared_paths=state.shared_paths)


def _named(pool: str) -> Backend:
    if pool == "local":
        return LocalBackend()
    if pool == "project":
        backend = project_backend()
        if backend is None:
            raise PoolUnavailable("the project's pool is not up: start it with `htcml pool up`")
        return backend
    if pool == "isolated":
        backend = isolated_backend()
        if backend is None:
            raise PoolUnavailable("the project's isolated pool is not up: start it with "
                                  "`htcml pool up --isolated`")
        return backend
    path = Path(pool).expanduser()
    if not path.is_file():
        raise PoolUnavailable(f"pool {pool!r} is neither 'local', 'project', 'isolated' nor "
                              f"an HTCondor configuration file; {_HOW_TO}")
    for own in (project_backend(), isolated_backend()):
        if own is not None and os.path.realpath(path) == os.path.realpath(str(own.config)):
            return own
    return CondorBackend(str(path))


def _fallback_allowed(fallback: bool | None) -> bool:
    if fallback is not None:
        return fallback
    return os.environ.get("HTCML_LOCAL_FALLBACK", "1").lower() not in ("0", "false", "no")


def resolve_backend(pool: str | None = None, backend: str | None = None,
                    fallback: bool | None = None) -> Backend:
    """Pick where a new map's jobs run (see the module's docstring for the order)."""
    if backend not in (None, "local", "condor"):
        raise ValueError(f"backend must be 'condor' or 'local', not {backend!r}")
    if backend == "local":
        return LocalBackend()
    chosen = pool or os.environ.get("HTCML_POOL")
    if chosen:
        found = _named(chosen)
        if backend == "condor" and found.kind != "condor":
            raise PoolUnavailable(f"backend='condor' but pool {chosen!r} is local")
        return found
    config = os.environ.get("CONDOR_CONFIG")
    if config and config != os.devnull:  # the bindings set /dev/null when none exists
        return _named(config)
    if Path(SYSTEM_CONFIG).is_file():
        return CondorBackend(None, description="the local HTCondor pool")
    project, isolated = project_backend(), isolated_backend()
    if project is not None:
        try:
            project.check_reachable()
            if isolated is not None:  # both are up: say which one, and how to pick the other
                project.description = ("the project's pool (the isolated pool is up too: "
                                       "pool='isolated' uses it)")
            return project
        except PoolUnavailable:
            pass
    if isolated is not None:  # the one of the project's pools that the user started
        try:
            isolated.check_reachable()
            return isolated
        except PoolUnavailable:
            pass
    if backend == "condor" or not _fallback_allowed(fallback):
        raise PoolUnavailable(f"no HTCondor pool is reachable: {_HOW_TO}")
    _notice("no HTCondor pool found, so this map runs in local processes. To use a pool, "
            "start the project's pool with `htcml pool up` or point CONDOR_CONFIG at your "
            "pool's configuration (HTCML_LOCAL_FALLBACK=0 makes this an error).")
    return LocalBackend()


def _own_pool(state: devpool.PoolState | None, isolated: bool) -> CondorBackend | None:
    """A backend for one of the project's pools from its recorded state (up or not, so a
    finished map's results stay readable while the pool is down)."""
    if state is None:
        return None
    running = isolated_backend() if isolated else project_backend()
    if running is not None:
        return running
    description = "the project's isolated pool" if isolated else "the project's pool"
    uid_applies = os.geteuid() == 0 and (isolated or state.mode == "rootfs")
    return CondorBackend(state.client_config, description=description,
                         job_uid=state.job_uid if uid_applies else None,
                         shared_paths=state.shared_paths)


def configured_pools() -> dict[str, CondorBackend | None]:
    """``{real path of a client configuration: its backend}`` for every pool this process
    is configured for: the project's pools, ``HTCML_POOL`` and ``CONDOR_CONFIG`` when
    they name files, and the system configuration (None: rebuilt as named)."""
    found: dict[str, CondorBackend | None] = {}
    for state, isolated in ((devpool.PoolState.load(), False),
                            (devpool.PoolState.load(devpool.isolated_state_dir()), True)):
        if state is not None and state.client_config:
            found.setdefault(os.path.realpath(state.client_config), _own_pool(state, isolated))
    for name in (os.environ.get("HTCML_POOL"), os.environ.get("CONDOR_CONFIG"), SYSTEM_CONFIG):
        if name and name not in ("local", "project", "isolated", os.devnull) \
                and Path(name).expanduser().is_file():
            found.setdefault(os.path.realpath(Path(name).expanduser()), None)
    return found


def backend_from_meta(pool: Any) -> Backend:
    """Rebuild the backend a map was submitted to, from its ``map.json``'s ``pool``.

    The record comes from the map's folder, which jobs can write: a configuration file
    it names is used only when it is one this process is configured for
    (:func:`configured_pools`); anything else is :class:`PoolUnavailable`, never a
    file loaded into the bindings.  The job user and shared folders of the project's
    pools come from their own state, not from the record.
    """
    if not isinstance(pool, dict):
        raise PoolUnavailable(f"the map's record names no pool (its 'pool' is "
                              f"{type(pool).__name__}, not a record)")
    if pool.get("backend") == "local":
        workers = pool.get("workers")
        return LocalBackend(workers if isinstance(workers, int) and workers > 0 else None)
    config = pool.get("config")
    description = str(pool.get("description", ""))
    if config is None:  # this process's own configuration: CONDOR_CONFIG or the system's
        return CondorBackend(None, description=description or "the local HTCondor pool")
    if not isinstance(config, str):
        raise PoolUnavailable(f"the map's record names the pool configuration {config!r}, "
                              f"which is not a file name")
    real = os.path.realpath(Path(config).expanduser())
    known = configured_pools()
    if real not in known:
        raise PoolUnavailable(
            f"the map's record names the pool configuration {config!r}, which is not a "
            f"pool configured here (the project's pools, HTCML_POOL, CONDOR_CONFIG or "
            f"{SYSTEM_CONFIG}); a map folder cannot choose which configuration file is "
            f"loaded. If you trust that file, set HTCML_POOL={config} and attach again")
    own = known[real]
    if own is not None:
        return own
    shared = pool.get("shared_paths")
    return CondorBackend(config, description=description,
                         shared_paths=[str(p) for p in shared] if isinstance(shared, list)
                         else None)


def backend_from_record(record: MapRecord) -> Backend:
    """Rebuild the backend of the map whose record is ``record`` (its backend spec).

    The pool comes from :func:`backend_from_meta`.  A spec that names a launcher
    (``"torchrun"``: the nodes of a run) gives that pool's backend here; the run's own
    code puts the launcher in front (:func:`htcml_jupyter.multinode.run.run_map`, used by
    :func:`htcml_jupyter.attach`), as the layers go from ``multinode`` to ``backends``.
    A launcher this version does not know is :class:`PoolUnavailable`: its jobs must
    not be queued again without it.
    """
    launcher = record.launcher
    if launcher not in (None, TORCHRUN_LAUNCHER):
        raise PoolUnavailable(f"the map {record.name!r} starts its jobs with the launcher "
                              f"{launcher!r}, which this htcml_jupyter does not know: "
                              f"upgrade htcml_jupyter to act on it")
    if launcher == TORCHRUN_LAUNCHER and record.torchrun is None:
        raise PoolUnavailable(f"the map {record.name!r} is a torchrun run whose record "
                              f"has no shape (nodes, processes per node)")
    return backend_from_meta(record.backend or None)  # {}: the record names no pool
